"""The files of a restore: one job per manifest file, fetched, decoded, checked and written.

Every file's size and SHA-1 are checked (small files before they are written,
big ones as they stream); a corrupt file in the repository fails the restore
(42), it is never silently restored.  Over SFTP small files are read in batches
with many in flight on one connection (``Storage.read_many``): a round trip per
request, ~1,000 catalog files in a small cluster, was most of the time.  Each
destination is opened from ``pg1-path`` or a tablespace location without
following a symbolic link (:mod:`pgpush.safepath`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
from collections.abc import Iterable, Iterator
from typing import NamedTuple

from pgpush import safepath
from pgpush.commands.restore.durability import WRITEBACK_EVERY, start_writeback
from pgpush.commands.restore.layout import Owner, id_args, locate, owner_ids
from pgpush.errors import FileReadError, PathCreateError
from pgpush.repo import readahead
from pgpush.repo.catalog import Catalog
from pgpush.repo.records import ManifestFile
from pgpush.repo.repository import Repository

SMALL_REPO_SIZE = 1024 * 1024  # a file stored in at most this many bytes ...
SMALL_SIZE = 2 * 1024 * 1024  # ... and at most this big once decoded is read in a batch, whole, in memory
BATCH_FILES = 64  # at most this many files ...
BATCH_BYTES = 16 * 1024 * 1024  # ... and about this many decoded bytes per batch (a unit of work for the pool)
SLICE = 32 * 1024  # stored bytes handed to the decoder at a time: its output stays well under a few MB
# A small file is decoded in memory: 1 KB at a time, so a decompression bomb (zstd turns 4 stored bytes into a
# 128 KB block) yields at most ~32 MB before it is found longer than the manifest says.
BOMB_SLICE = 1024


class FileJob(NamedTuple):
    name: str  # in the manifest (pg_data/...)
    root: str  # pg1-path or a tablespace location ...
    parts: tuple[str, ...]  # ... and the path below it, opened without following a link (safepath)
    path: str  # in the repository
    sha1: str
    size: int
    mode: int
    mtime: float
    uid: int | None
    gid: int | None
    compare: bool  # keep a local file whose size and SHA-1 match
    repo_size: int | None  # stored size, from the manifest (a hint for the reader)

    @property
    def dest(self) -> str:
        return os.path.join(self.root, *self.parts)


# -- the job list ---------------------------------------------------------------------------------


def file_jobs(cat: Catalog, label: str, files: dict[str, ManifestFile], pgdata: str, links: dict[str, str], root_owner: Owner,
              compare: bool) -> list[FileJob]:
    """One job per file; every repository path is found (a reference that is not a label is refused) before
    anything is written."""
    jobs: list[FileJob] = []
    for f in files.values():
        ref = f.get("reference") or label
        uid, gid = owner_ids(f, root_owner)
        root, parts = locate(pgdata, f["name"], links)
        jobs.append(FileJob(f["name"], root, tuple(parts), f"{cat.label_dir(ref)}/{f['name']}{f['ext']}",
                            f["sha1"], f["size"], int(f["mode"], 8), float(f["mtime"]), uid, gid, compare,
                            f.get("repo_size")))
    return jobs


def _small(job: FileJob) -> bool:
    return job.repo_size is not None and job.repo_size <= SMALL_REPO_SIZE and job.size <= SMALL_SIZE


def plan(jobs: list[FileJob]) -> list[list[FileJob]]:
    """Units of work for the pool: big files alone, largest first, then small files in batches.

    Largest first, so that at the end the workers are busy with small
    batches, not one waiting for a 1 GB segment started last.
    """
    big = sorted((j for j in jobs if not _small(j)), key=lambda j: -j.size)
    small = sorted((j for j in jobs if _small(j)), key=lambda j: -j.size)
    units: list[list[FileJob]] = [[j] for j in big]
    batch: list[FileJob] = []
    size = 0
    for job in small:
        if batch and (len(batch) >= BATCH_FILES or size + job.size > BATCH_BYTES):
            units.append(batch)
            batch, size = [], 0
        batch.append(job)
        size += job.size
    if batch:
        units.append(batch)
    return units


# -- one unit of work: fetch, decode, check, write ------------------------------------------------


def _sha1_file(job: FileJob) -> str:
    h = hashlib.sha1()
    with open(safepath.open_file(job.root, job.parts, os.O_RDONLY), "rb") as fh:
        while chunk := fh.read(1024 * 1024):
            h.update(chunk)
    return h.hexdigest()


def _unchanged(job: FileJob) -> bool:
    """--delta: does the local file already have the manifest's size and SHA-1?"""
    st = safepath.lstat(job.root, job.parts)
    return st is not None and stat.S_ISREG(st.st_mode) and st.st_size == job.size and _sha1_file(job) == job.sha1


def _corrupt(job: FileJob, sha1: str, size: int) -> FileReadError:
    return FileReadError(f"backup file '{job.path}' in the repository is corrupt: SHA1 {sha1} ({size} bytes) "
                         f"does not match the manifest's {job.sha1} ({job.size} bytes)")


def _too_long(job: FileJob, size: int) -> FileReadError:
    """A stored file that decodes past the manifest's size (a decompression bomb, or a lying manifest)
    is refused as soon as it does: decoding it whole could fill the memory or pg1-path's file system."""
    return FileReadError(f"backup file '{job.path}' in the repository is corrupt: it decodes to more than the "
                         f"manifest's {job.size} bytes (at least {size})")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _open_dest(job: FileJob) -> int:
    return safepath.open_file(job.root, job.parts, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)


def _finish_dest(fd: int, job: FileJob) -> None:
    """Mode, owner and modification time on the open file (after its last write, which sets the time)."""
    os.fchmod(fd, job.mode)
    if job.uid is not None:
        os.fchown(fd, *id_args(job.uid, job.gid))
    os.utime(fd, (job.mtime, job.mtime))


def _sliced(chunks: Iterable[bytes], size: int = SLICE) -> Iterator[bytes]:
    """The same bytes in pieces of at most ``size``: zstd at ~40x turns a 1 MB read into a 40 MB buffer,
    and fresh buffers that big cost page faults on every one (measured: twice the time of the whole file)."""
    for chunk in chunks:
        if len(chunk) <= size:
            yield chunk
        else:
            for i in range(0, len(chunk), size):
                yield chunk[i:i + size]


def restore_file(repo: Repository, job: FileJob) -> tuple[int, bool]:
    """Write one file from the repository, or keep a matching one: (bytes written, kept).

    Streams: a thread reads and decodes (zstd, zlib and hashlib release the
    GIL) while this one hashes and writes.  The SHA-1 is checked once the
    last byte is written; a mismatch fails the restore.
    """
    if job.compare and _unchanged(job):
        return 0, True
    h = hashlib.sha1()
    written = 0
    fd = _open_dest(job)
    try:
        try:
            flushed = 0
            for chunk in readahead.ahead(repo.decode(_sliced(repo.storage.read_chunks(job.path)), job.path), depth=8):
                written += len(chunk)
                if written > job.size:
                    raise _too_long(job, written)
                h.update(chunk)
                _write_all(fd, chunk)
                if written - flushed >= WRITEBACK_EVERY:
                    start_writeback(fd, flushed, written - flushed)
                    flushed = written
        except FileNotFoundError:
            raise FileReadError(f"backup file '{job.path}' is missing from the repository") from None
        except ValueError as exc:
            raise FileReadError(f"backup file '{job.path}' in the repository is corrupt: {exc}") from None
        if h.hexdigest() != job.sha1 or written != job.size:
            raise _corrupt(job, h.hexdigest(), written)
        _finish_dest(fd, job)
    finally:
        os.close(fd)
    return written, False


def _decode_whole(repo: Repository, job: FileJob, data: bytes) -> bytes:
    parts: list[bytes] = []
    size = 0
    try:
        for chunk in repo.decode(_sliced([data], BOMB_SLICE), job.path):
            size += len(chunk)
            if size > job.size:
                raise _too_long(job, size)
            parts.append(chunk)
        content = b"".join(parts)
    except ValueError as exc:
        raise FileReadError(f"backup file '{job.path}' in the repository is corrupt: {exc}") from None
    if len(content) != job.size or hashlib.sha1(content).hexdigest() != job.sha1:
        raise _corrupt(job, hashlib.sha1(content).hexdigest(), len(content))
    return content


def restore_files(repo: Repository, jobs: list[FileJob]) -> list[tuple[int, bool]]:
    """One job of the pool; a symbolic link met on the way to a file is refused (47), never followed."""
    try:
        return _restore_files(repo, jobs)
    except safepath.UnsafePath as exc:
        raise PathCreateError(f"unable to restore: {exc}") from None


def _restore_files(repo: Repository, jobs: list[FileJob]) -> list[tuple[int, bool]]:
    """Write a unit of files: a big file alone (streamed), or a batch of small ones; one result per file.

    A batch is read with ``Storage.read_many`` (sftp keeps many files in
    flight on the connection), each file decoded and checked in memory
    *before* it is written: a corrupt file never reaches the data directory.
    Reading and checking run in a thread while this one creates and writes
    the files: creating a file is kernel time (about 1 ms on this project's
    ext4 after many deletions, ext4 looking for a free inode), done here
    while the other core decodes and hashes the next ones.
    """
    if len(jobs) == 1 and not _small(jobs[0]):
        return [restore_file(repo, jobs[0])]
    results: dict[str, tuple[int, bool]] = {}
    fetch: dict[str, FileJob] = {}
    for job in jobs:
        if job.compare and _unchanged(job):
            results[job.name] = (0, True)
        else:
            fetch[job.path] = job

    def checked() -> Iterator[tuple[FileJob, bytes]]:
        with contextlib.closing(repo.storage.read_many((j.path, j.repo_size) for j in fetch.values())) as files:
            for path, data in files:
                job = fetch[path]
                yield job, _decode_whole(repo, job, data)

    try:
        for job, content in readahead.ahead(checked(), depth=16):
            fd = _open_dest(job)
            try:
                _write_all(fd, content)
                _finish_dest(fd, job)
            finally:
                os.close(fd)
            results[job.name] = (len(content), False)
    except FileNotFoundError as exc:
        if exc.filename not in fetch:
            raise  # a local path
        raise FileReadError(f"backup file '{exc.filename}' is missing from the repository") from None
    return [results[j.name] for j in jobs]
