"""``restore``: write a backup into ``pg1-path`` and configure recovery through pgpush ``get``.

- The data directory must be empty (or missing) unless ``--delta`` (files
  whose size and SHA-1 match the manifest are left untouched, others are
  rewritten, files not in the backup are removed) or ``--force`` (every file
  rewritten, whatever its size or checksum; with or without ``--delta``).
- A running PostgreSQL (``postmaster.pid`` naming a live process) is never
  written over.
- Every file's size and SHA-1 are checked (small files before they are
  written, big ones as they stream); a corrupt file in the repository fails
  the restore (42), it is never silently restored.
- Success is reported only once the restored files are on stable storage
  (``syncfs`` of each file system, or an fsync of every file and directory).
- Over SFTP small files are read in batches with many in flight on one
  connection (``Storage.read_many``): a round trip per request, ~1,000
  catalog files in a small cluster, was most of the time.
- The asynchronous get spool (``SPOOL/archive/STANZA/in/``) is emptied: WAL
  prefetched for an earlier restore must never be served to this one.
- The manifest comes from whoever can write the repository: it is checked
  whole before anything is written (``manifest_check.py``: clean names under
  ``pg_data``, tablespace links ``pg_tblspc/OID`` only; 42 otherwise), and
  every path is opened from ``pg1-path`` or a tablespace location without
  following a symbolic link (``safepath.py``, ``datadir.py``).
- Without ``--set`` the latest ``DONE`` backup is restored (for
  ``--type time`` the latest ``DONE`` backup that stopped before the
  target); the choice is logged and printed.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import hashlib
import os
import stat
from collections.abc import Iterable, Iterator
from typing import NamedTuple

from pgpush import safepath
from pgpush.commands import forkpool, recovery
from pgpush.commands.datadir import (
    check_locations,
    clean,
    clear_spool,
    locate,
    make_dirs,
    owner_ids,
    prepare,
    remap_tablespaces,
    rewrite_tablespace_map,
    tablespaces_in_use,
)
from pgpush.commands.progress import Progress
from pgpush.errors import (
    BackupSetInvalidError,
    FileReadError,
    OptionInvalidValueError,
    OptionRequiredError,
    PathCreateError,
)
from pgpush.log import LOG
from pgpush.repo import catalog, manifest_check, readahead
from pgpush.repo.catalog import DONE, WAITING, Catalog
from pgpush.repo.repository import Repository

PREFIX = "pg_data"


# -- worker -----------------------------------------------------------------------------------------

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


def _write_all(fd: int, data) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _open_dest(job: FileJob) -> int:
    return safepath.open_file(job.root, job.parts, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)


def _finish_dest(fd: int, job: FileJob) -> None:
    """Mode, owner and modification time on the open file (after its last write, which sets the time)."""
    os.fchmod(fd, job.mode)
    if job.uid is not None:
        os.fchown(fd, job.uid, job.gid)
    os.utime(fd, (job.mtime, job.mtime))


WRITEBACK_EVERY = 32 * 1024 * 1024  # a big file's written bytes handed to the kernel's writeback at a time
_sync_file_range = None  # libc's, resolved on first use; False where it does not exist


def _start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing a range out now (``sync_file_range(SYNC_FILE_RANGE_WRITE)``,
    as PostgreSQL's checkpointer does), so that the final sync finds little left to write: the disk
    works while we decode.  Only a hint: errors are ignored, durability comes from make_durable()."""
    global _sync_file_range
    if _sync_file_range is None:
        try:
            import ctypes

            fn = ctypes.CDLL(None, use_errno=True).sync_file_range
            fn.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
            _sync_file_range = fn
        except (OSError, AttributeError):
            _sync_file_range = False
    if _sync_file_range:
        _sync_file_range(fd, offset, length, 2)  # SYNC_FILE_RANGE_WRITE


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
                    _start_writeback(fd, flushed, written - flushed)
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


# -- durability -------------------------------------------------------------------------------------


def _syncfs(path: str) -> bool:
    """syncfs(2) on the file system holding ``path``; False where the call does not exist."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        syncfs = libc.syncfs
    except (OSError, AttributeError):
        return False
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if syncfs(fd) != 0:
            err = ctypes.get_errno()
            if err == errno.ENOSYS:
                return False
            raise OSError(err, f"syncfs failed: {os.strerror(err)}", path)
    finally:
        os.close(fd)
    return True


def _fsync_tree(root: str) -> None:
    """fsync every file and directory below ``root`` (and ``root``'s parent, whose entry it may be new in)."""
    for directory, _dirs, names in os.walk(root):
        for name in names:
            path = os.path.join(directory, name)
            if os.path.islink(path):
                continue
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    for directory in [os.path.dirname(root) or "/", *(d for d, _, _ in os.walk(root))]:
        fd = os.open(directory, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def make_durable(paths: list[str]) -> None:
    """Flush the restored cluster to stable storage before the restore reports success.

    One ``syncfs`` per file system (as ``initdb --sync-method=syncfs`` does:
    measured 0.3 s for a 470 MB restore, against 1.5 s for an fsync of each
    of its 1,000 files); where it does not exist, an fsync of every file and
    directory.
    """
    synced: set[int] = set()
    for path in paths:
        dev = os.stat(path).st_dev
        if dev in synced:
            continue
        if _syncfs(path):
            synced.add(dev)
        else:
            _fsync_tree(path)


# -- choosing the backup ---------------------------------------------------------------------------


def parse_time(text: str) -> float | None:
    """A recovery_target_time as seconds since the epoch (a time without zone is taken as local time)."""
    try:
        return dt.datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:
        return None


def choose_backup(backups: list[dict], set_label: str | None, rtype: str, target: str | None) -> tuple[dict, str]:
    """(backup, why it was chosen)."""
    if set_label:
        for b in backups:
            if b["label"] == set_label:
                if b["status"] != DONE:
                    LOG.warn(f"backup {set_label} is {b['status']}: recovery may not reach consistency "
                             f"({b.get('status_detail')})")
                return b, "given by --set"
        raise BackupSetInvalidError(f"backup set {set_label} is not valid: it is not in the repository")
    done = [b for b in backups if b["status"] == DONE]
    if rtype == "time" and target:
        when = parse_time(target)
        if when is None:
            LOG.warn(f"unable to read recovery target time '{target}': the latest backup is chosen")
        else:
            before = [b for b in done if catalog.parse_iso(b["stop_time"]) <= when]
            if before:
                return before[-1], "latest DONE backup that stopped before the target time"
            LOG.warn("no DONE backup stopped before the target time: the latest one is chosen")
    if done:
        return done[-1], "latest DONE backup"
    waiting = [b for b in backups if b["status"] == WAITING]
    if waiting:
        LOG.warn(f"no DONE backup: restoring {waiting[-1]['label']}, which is still WAITING_FOR_WALS")
        return waiting[-1], "latest backup (none is DONE yet)"
    raise BackupSetInvalidError("no backup to restore: the stanza has no DONE or WAITING_FOR_WALS backup")


# -- the command ------------------------------------------------------------------------------------


def _options(cfg) -> tuple[str, str | None, str]:
    rtype = cfg.get("type") or "default"
    if rtype not in recovery.TYPES:
        raise OptionInvalidValueError(
            f"option 'type' has invalid value '{rtype}' {cfg.sources.get('type', '')}: one of "
            + ", ".join(recovery.TYPES) + " is expected")
    target = cfg.get("target")
    if rtype in recovery.TARGET_KEY and not target:
        raise OptionRequiredError(f"restore --type={rtype} requires option: target")
    if target and rtype not in recovery.TARGET_KEY:
        raise OptionInvalidValueError(f"option 'target' is only valid with --type time, lsn, name or xid (not {rtype})")
    return rtype, target, str(cfg["target-action"])


def run(cfg) -> str:
    try:
        return _run(cfg)
    except OSError as exc:
        raise forkpool.local_error(exc) from None
    except safepath.UnsafePath as exc:
        raise PathCreateError(f"unable to restore: {exc}") from None


def _run(cfg) -> str:
    pgdata = os.path.abspath(str(cfg.require("pg1-path")))
    rtype, target, action = _options(cfg)
    delta, force = bool(cfg["delta"]), bool(cfg["force"])
    repo = Repository.from_config(cfg)
    try:
        repo.load_archive_info()
        cat = Catalog(repo)
        backups = catalog.evaluate_all(repo, cat.reconciled())
        record, why = choose_backup(backups, cfg.get("set"), rtype, target)
        label = record["label"]
        LOG.info(f"restoring backup {label} ({why}) into '{pgdata}'")
        manifest = manifest_check.check(cat.read_manifest(label), label)
        remapped = remap_tablespaces(cfg, manifest)
        check_locations(pgdata, {ln["name"]: ln["destination"] for ln in manifest.get("links", [])})
        existing = prepare(pgdata, delta, force)
        existing = tablespaces_in_use(manifest, delta, force) or existing
        clear_spool(cfg)
        written, kept = _restore(cfg, repo, cat, label, manifest, pgdata, existing, compare=existing and not force)
        rewrite_tablespace_map(pgdata, remapped)
        pg_dir = next(d for d in manifest["dirs"] if d["name"] == PREFIX)
        uid, gid = owner_ids(pg_dir, (None, None))
        recovery.write(pgdata, manifest["backup"]["pg_version"], rtype, recovery.settings(cfg, rtype, target, action), uid, gid)
        make_durable([pgdata, *(link["destination"] for link in manifest.get("links", []))])
    finally:
        repo.storage.close()
    files = len(manifest["files"])
    goal = {"default": "to the end of the archived WAL", "standby": "as a standby",
            "immediate": f"to the end of the backup, then {action}"}.get(rtype, f"to {rtype} '{target}', then {action}")
    message = (f"restore of backup {label} ({why}) into '{pgdata}' complete: {files} files, "
               f"{written} rewritten, {kept} unchanged; recovery {goal}")
    return message + "\nHINT: start PostgreSQL to recover"


def _jobs(cat: Catalog, label: str, files: dict[str, dict], pgdata: str, links: dict[str, str], root_owner,
          compare: bool) -> list[FileJob]:
    """One job per file; every repository path is found (a reference that is not a label is refused) before
    anything is written."""
    jobs = []
    for f in files.values():
        ref = f.get("reference") or label
        uid, gid = owner_ids(f, root_owner)
        root, parts = locate(pgdata, f["name"], links)
        jobs.append(FileJob(f["name"], root, tuple(parts), f"{cat.label_dir(ref)}/{f['name']}{f['ext']}",
                            f["sha1"], f["size"], int(f["mode"], 8), float(f["mtime"]), uid, gid, compare,
                            f.get("repo_size")))
    return jobs


def _restore(cfg, repo: Repository, cat: Catalog, label: str, manifest: dict, pgdata: str, existing: bool,
             compare: bool) -> tuple[int, int]:
    """Directories, tablespace links and files; returns (files written, files kept)."""
    files = {f["name"]: f for f in manifest["files"]}
    dirs = sorted(manifest["dirs"], key=lambda d: d["name"])
    links = {ln["name"]: ln["destination"] for ln in manifest.get("links", [])}
    root_owner = owner_ids(next(d for d in dirs if d["name"] == PREFIX), (None, None))
    major = manifest["backup"]["pg_version"]
    jobs = _jobs(cat, label, files, pgdata, links, root_owner, compare)
    if existing:
        removed = clean(pgdata, set(files), {d["name"] for d in dirs}, links, major)
        LOG.info(f"removed {removed} file(s) or directorie(s) not in the backup")
    make_dirs(pgdata, dirs, links, root_owner)
    progress = Progress(f"restore {label}", len(jobs), sum(f["size"] for f in files.values()),
                        str(cfg["log-level-console"]))
    counts = [0, 0]

    def collect(unit: list[FileJob], results: list[tuple[int, bool]]) -> None:
        progress.advance(sum(job.size for job in unit), files=len(unit))
        for _written, kept in results:
            counts[1 if kept else 0] += 1

    try:
        forkpool.run(cfg, restore_files, plan(jobs), collect, parent_repo=repo)
    finally:
        progress.close()
    return counts[0], counts[1]
