"""The WAL archive of a stanza: what its files are named, and how one is pushed or fetched.

Layout (docs/architecture.md, "Layers")::

    archive/STANZA/VER-N/TTTTTTTTLLLLLLLL/SEGMENT-SHA1[.EXT]
    archive/STANZA/VER-N/TIMELINE.history

``VER-N`` is an archive id of ``archive.info`` (:mod:`pgpush.repo.repository`).
A WAL file (segment, ``.partial``, backup history) is stored under its name,
the SHA-1 of its uncompressed content and the compression extension; a
timeline history file under its own name.  Every read verifies the SHA-1.
One WAL name holds one content: a second push of the same content is a
duplicate (acknowledged once a stored copy reads back whole), of another
content error 45, and two contents found stored under one name (a split
brain) are never chosen between.  Segments dropped by
``archive-push-queue-max`` leave a ``SEGMENT.dropped`` marker beside where
they would have been, so ``info`` can report the hole.

Functions over a :class:`~pgpush.repo.repository.Repository`: the archive
holds no state of its own beyond the stanza's.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import struct
import time
from collections.abc import Callable, Iterable, Iterator
from typing import IO, NamedTuple

from pgpush import wal
from pgpush.errors import (
    ArchiveDuplicateError,
    FileMissingError,
    FileReadError,
    FileWriteError,
    FormatError,
    PgPushError,
    WalNotFound,
)
from pgpush.repo import readahead
from pgpush.repo.repository import MAX_WAL_BYTES, Repository, sha1_hex

ARCHIVED_RE = re.compile(r"^(?P<wal>[0-9A-F]{24}(?:\.partial|\.[0-9A-F]{8}\.backup)?)-(?P<sha>[0-9a-f]{40})(?P<ext>\.gz|\.zst|\.lz4)?$")
DROPPED_SUFFIX = ".dropped"
HEADER_SIZE = struct.calcsize(wal.LONG_HEADER_FORMAT)


# -- names -----------------------------------------------------------------------------------------


def wal_dir(repo: Repository, archive_id: str, name: str) -> str:
    """The repository directory of WAL file ``name`` under ``archive_id``."""
    if wal.kind(name) == "history":
        return f"{repo.archive_root}/{archive_id}"
    return f"{repo.archive_root}/{archive_id}/{wal.archive_dir(name)}"


def stored_checksums(stored: Iterable[str]) -> set[str]:
    """The distinct SHA-1s among stored names of one WAL file (a compression change keeps the SHA-1)."""
    return {m.group("sha") for f in stored if (m := ARCHIVED_RE.fullmatch(f))}


def conflict_error(name: str, checksums: Iterable[str]) -> ArchiveDuplicateError:
    """One WAL name stored with different contents (a split brain): nothing may choose between them."""
    return ArchiveDuplicateError(
        f"WAL file '{name}' is stored in the archive with different checksums: SHA1 {', '.join(sorted(checksums))}\n"
        "HINT: two clusters (a split brain?) archived different WAL under one name; keep the right one, remove "
        "the other from the repository")


def history_problem(name: str, data: bytes) -> str | None:
    """What makes ``data`` not a timeline history file PostgreSQL could read as ``name``; None when sound.

    PostgreSQL's format: ``TLI<TAB>LSN<TAB>reason`` lines, blank lines and ``#`` comments; the
    timelines increase and stay below the file's own.  A garbage history archived once would
    make every later recovery through that timeline fail, so it is refused before it is stored.
    """
    try:
        rows = wal.parse_history(data.decode("utf-8", "replace"))
    except (ValueError, FormatError) as exc:
        return f"history file '{name}' is malformed: {exc}"
    if not rows:
        return f"history file '{name}' has no timeline switch line"
    own = wal.timeline_of(name)
    previous = 0
    for tli, _lsn, _reason in rows:
        if not previous < tli < own:
            return (f"history file '{name}' is malformed: timeline {tli} is not between {previous} and {own} "
                    "(timelines must increase and stay below the file's own)")
        previous = tli
    return None


# -- finding a stored WAL file ----------------------------------------------------------------------


class Stored(NamedTuple):
    """Where WAL file ``name`` is stored: one archive id's directory and the stored names there."""

    name: str
    directory: str
    files: list[str]  # normally one; more after a compression change (same SHA-1)

    @property
    def path(self) -> str:
        """The copy a reader takes (any: they hold one content, :func:`locate` made sure)."""
        return f"{self.directory}/{self.files[0]}"

    @property
    def sha1(self) -> str | None:
        """The SHA-1 in the stored name; None for a history file, stored under its own name."""
        m = ARCHIVED_RE.fullmatch(self.files[0])
        return m.group("sha") if m else None


def find_wal(repo: Repository, archive_id: str, name: str) -> list[str]:
    """Stored file names of WAL file ``name`` in ``archive_id`` (normally zero or one), as listed."""
    directory = wal_dir(repo, archive_id, name)
    if wal.kind(name) == "history":
        return [f.name for f in repo.storage.list(directory) if f.name == name]
    return [f.name for f in repo.storage.list(directory) if f.name.startswith(name + "-") and ARCHIVED_RE.fullmatch(f.name)]


def locate(repo: Repository, name: str, archive_ids: Iterable[str]) -> Stored | None:
    """WAL file ``name`` in the first of ``archive_ids`` that stores it; None when none does.

    The one lookup of push (the current archive id) and get (every archive id, newest
    first).  Two contents stored under the name are refused here (45): neither may pick one.
    """
    for archive_id in archive_ids:
        files = find_wal(repo, archive_id, name)
        if not files:
            continue
        if wal.kind(name) != "history":
            checksums = stored_checksums(files)
            if len(checksums) > 1:
                raise conflict_error(name, checksums)
        return Stored(name, wal_dir(repo, archive_id, name), files)
    return None


# -- push ------------------------------------------------------------------------------------------


def push_wal(repo: Repository, name: str, data: bytes) -> str | None:
    """Archive one WAL file given as bytes; see :func:`push_wal_file`."""
    return _push(repo, name, data[:8192], len(data), sha1_hex(data), lambda: iter([data]), lambda: data)


def push_wal_file(repo: Repository, name: str, path: str) -> str | None:
    """Archive the WAL file at ``path``, streamed: a worker never holds a whole segment in memory.

    One pass computes the SHA-1 (it names the file), a second streams it through compression
    to the repository while hashing again; a file that changed in between is removed and refused.
    """
    if wal.kind(name) in ("history", "backup"):
        with open(path, "rb") as fh:
            return push_wal(repo, name, fh.read())
    size = os.stat(path).st_size
    digest = hashlib.sha1()
    with open(path, "rb") as fh:  # the header is checked from this same read of the file
        head = fh.read(8192)
        digest.update(head)
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    sent = hashlib.sha1()
    streamed = []

    def chunks() -> Iterator[bytes]:
        streamed.append(True)
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                sent.update(chunk)
                yield chunk

    def whole() -> bytes:
        with open(path, "rb") as fh:
            return fh.read()

    warning = _push(repo, name, head, size, digest.hexdigest(), chunks, whole)
    if streamed and sent.hexdigest() != digest.hexdigest():  # stored now: a new copy or a repair
        repo.storage.delete(f"{wal_dir(repo, repo.archive_id(), name)}/{name}-{digest.hexdigest()}{repo.extension()}")
        raise FormatError(f"WAL file '{name}' changed while it was being archived")
    return warning


def _push(repo: Repository, name: str, head: bytes, size: int, digest: str, chunks: Callable[[], Iterator[bytes]],
          whole: Callable[[], bytes]) -> str | None:
    """Archive one WAL file; returns a warning (duplicate) or None.

    The header of a segment is checked against the stanza before anything
    is written; a duplicate with the same SHA-1 succeeds once a stored copy
    reads back whole (a damaged one is replaced), a different one is error 45
    and nothing is replaced.
    """
    kind = wal.kind(name)
    if kind in ("segment", "partial"):
        if not size:
            raise FormatError(f"WAL file '{name}' is empty")
        header = wal.parse_header(head, name)
        wal.check_header_matches_name(header, name)
        if size != header.segment_size:
            raise FormatError(f"WAL file '{name}' has size {size} but its header says the segment size is "
                              f"{header.segment_size}")
        repo.check_cluster(header.system_id, header.version, f"WAL file '{name}'")
    else:
        repo.load_archive_info()
        if kind == "history" and (problem := history_problem(name, whole())):
            raise FormatError(problem)
    archive_id = repo.archive_id()
    directory = wal_dir(repo, archive_id, name)
    for _attempt in range(2):
        existing = locate(repo, name, [archive_id])
        if existing:
            warning = _duplicate(repo, name, digest, existing)
            if kind == "history":
                return warning
            # a writer killed between its rename and the removal of its temporary name
            repo.storage.remove_leftovers(f"{directory}/{name}-{digest}{repo.extension()}")
            return _check_stored_copies(repo, name, size, digest, existing, chunks) or warning
        if kind == "history":
            target, payload = f"{directory}/{name}", repo.encode([whole()], "none")
        else:
            # read + compress in a thread while the storage sends: both cores at work
            target, payload = f"{directory}/{name}-{digest}{repo.extension()}", readahead.ahead(repo.encode(chunks()))
            repo.storage.remove_leftovers(target)  # what earlier attempts killed mid-file left
        try:
            repo.storage.put(target, payload)
        except FileExistsError:
            continue  # pushed concurrently: compare with what is there now
        if kind != "history":
            _check_no_rival(repo, name, digest, target)
        return None
    raise FileReadError(f"WAL file '{name}': '{target}' exists in the repository but is not a file it lists "
                        "(a directory or a link?)\nHINT: remove it from the repository")


def _check_no_rival(repo: Repository, name: str, digest: str, target: str, archive_id: str | None = None) -> None:
    """Look again after the put: a concurrent push of other content under the same name loses both ways.

    The check before the put cannot see a push running at the same moment (the names differ
    by their SHA-1).  Listing after our own put closes it: of two racers, the one that lists
    second always sees the first's file unless the first already removed it, so at most one
    content is ever acknowledged; each one that sees a rival removes its own copy and fails.
    """
    rivals = stored_checksums(find_wal(repo, archive_id or repo.archive_id(), name)) - {digest}
    if not rivals:
        return
    repo.storage.delete(target)
    raise ArchiveDuplicateError(
        f"WAL file '{name}' already exists in the archive with a different checksum: archived SHA1 "
        f"{', '.join(sorted(rivals))}, new SHA1 {digest} (pushed concurrently; this copy was removed)")


def _duplicate(repo: Repository, name: str, digest: str, existing: Stored) -> str:
    """The warning for a push of what is already stored; 45 when the stored content differs."""
    old_digest: str | None = existing.sha1
    if wal.kind(name) == "history":
        old_digest = sha1_hex(repo.read_verified(existing.path, None, f"history file '{name}'"))
    if old_digest != digest:
        raise ArchiveDuplicateError(
            f"WAL file '{name}' already exists in the archive with a different checksum: archived SHA1 "
            f"{old_digest}, new SHA1 {digest}")
    return (f"WAL file '{name}' already exists in the archive with the same checksum\n"
            "HINT: this is valid in some recovery scenarios but may also indicate a problem.")


def _check_stored_copies(repo: Repository, name: str, size: int, digest: str, existing: Stored,
                         chunks: Callable[[], Iterator[bytes]]) -> str | None:
    """A duplicate is acknowledged only when a stored copy is whole: else PostgreSQL recycles its only good one.

    Each stored copy with the same SHA-1 is read back and decoded (one read of the stored copy
    per duplicate push): a copy cut short by a lost write, or damaged on the backup host, is
    replaced by this one.  The good copy is written under a temporary name and renamed over
    the final one (``put`` with ``overwrite``), so a concurrent ``get`` always finds a file;
    damaged copies under other names (another compression type) are removed after.  A copy
    that cannot be read (the host is down) raises: the push fails rather than acknowledges.
    Returns the warning naming the damage, or None when every copy is whole.
    """
    directory = existing.directory
    damaged = {stored: problem for stored in existing.files
               if (problem := _stored_copy_problem(repo, name, f"{directory}/{stored}", digest, size))}
    if not damaged:
        return None
    target = f"{directory}/{name}-{digest}{repo.extension()}"
    rewrite = len(damaged) == len(existing.files) or target in (f"{directory}/{f}" for f in damaged)
    if rewrite:
        repo.storage.put(target, readahead.ahead(repo.encode(chunks())), overwrite=True)
        _check_no_rival(repo, name, digest, target)
    for stored in damaged:
        if f"{directory}/{stored}" != target:
            repo.storage.delete(f"{directory}/{stored}")
    done = "replaced by this one" if rewrite else "removed (a whole copy remains)"
    return (f"WAL file '{name}' already exists in the archive with the same checksum, but the stored copy was "
            f"damaged ({'; '.join(damaged.values())}): {done}")


class _ByteCounter:
    """A sink that keeps only how many bytes were written to it (a stored copy read back to be checked)."""

    def __init__(self) -> None:
        self.size = 0

    def write(self, data: bytes) -> None:
        self.size += len(data)


def _stored_copy_problem(repo: Repository, name: str, path: str, digest: str, size: int) -> str | None:
    """Why the stored copy at ``path`` is not a whole copy of the ``size`` bytes with SHA-1 ``digest``; None if it is."""
    counter = _ByteCounter()
    try:
        _stream_verified(repo, name, path, digest, counter)
    except FileNotFoundError:
        return f"'{path}' vanished"
    except FileReadError as exc:
        return str(exc)
    if counter.size != size:
        return f"'{path}' decodes to {counter.size} bytes, not {size}"
    return None


def store_copy(repo: Repository, archive_id: str, name: str, digest: str, chunks: Callable[[], Iterator[bytes]]) -> bool:
    """Store a copy of WAL file ``name`` (content SHA-1 ``digest``, given by ``chunks``) read from another
    repository, under ``archive_id``; False when it is there already (``repo-sync``).

    The rules of a push, without its checks of a file from PostgreSQL: never overwrite; the same
    content already there (pushed meanwhile by ``archive_command``) is skipped; another content is 45
    and nothing is replaced.  What is stored is read back and decoded before this returns: a copy
    that does not read back as ``digest`` is removed and refused (64).  A history file (no SHA-1 in
    its name) is compared by the SHA-1 of its stored content.
    """
    history = wal.kind(name) == "history"
    directory = wal_dir(repo, archive_id, name)
    target = f"{directory}/{name}" if history else f"{directory}/{name}-{digest}{repo.extension()}"
    for _attempt in range(2):
        existing = locate(repo, name, [archive_id])
        if existing:
            _duplicate(repo, name, digest, existing)  # 45 when the content differs
            if not history:
                repo.storage.remove_leftovers(target)
            return False
        if not history:
            repo.storage.remove_leftovers(target)
        payload = repo.encode(chunks(), "none") if history else readahead.ahead(repo.encode(chunks()))
        try:
            repo.storage.put(target, payload)
        except FileExistsError:
            continue  # pushed meanwhile: compare with what is there now
        if not history:
            _check_no_rival(repo, name, digest, target, archive_id)
        _check_copy(repo, name, target, digest)
        return True
    raise FileReadError(f"WAL file '{name}': '{target}' exists in the repository but is not a file it lists "
                        "(a directory or a link?)\nHINT: remove it from the repository")


def _check_copy(repo: Repository, name: str, path: str, digest: str) -> None:
    """Read back a copy just stored: one that does not decode to ``digest`` is removed and refused (64)."""
    try:
        for _chunk in repo.decode_verified(path, f"WAL file '{name}'", digest):
            pass
    except FileReadError as exc:
        repo.storage.delete(path)
        raise FileWriteError(f"WAL file '{name}' was stored as '{path}' but does not read back whole ({exc}): "
                             "removed") from None


def record_dropped(repo: Repository, name: str, reason: str) -> None:
    """Leave a marker for a segment acknowledged without being archived."""
    marker = f"{wal_dir(repo, repo.archive_id(), name)}/{name}{DROPPED_SUFFIX}"
    body = json.dumps({"wal": name, "reason": reason, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    try:
        repo.storage.put(marker, [body.encode()])
    except FileExistsError:
        pass


# -- get -------------------------------------------------------------------------------------------


def get_wal(repo: Repository, name: str) -> bytes:
    """The verified content of WAL file ``name``; :class:`WalNotFound` when absent."""
    out = io.BytesIO()
    get_wal_into(repo, name, out)
    return out.getvalue()


def get_wal_into(repo: Repository, name: str, fh: IO[bytes]) -> None:
    """Write the content of WAL file ``name`` into ``fh``, streamed, and verify its SHA-1 at the end.

    The caller writes to a temporary name and renames only when this returns: a corrupt
    file raises :class:`FileReadError` and must never reach its destination.  A copy removed
    after it was found (a concurrent expire, a push replacing a damaged copy, seen again by a
    read retried after a lost connection) is :class:`FileMissingError`: an error PostgreSQL
    retries, never "not in the archive", and never taken for the caller's own file.
    """
    found = locate(repo, name, repo.archive_ids())
    if found is None:
        raise WalNotFound(name)
    try:
        if wal.kind(name) == "history":  # small, no SHA-1 in its name: read whole, checked as PostgreSQL will read it
            data = repo.read_verified(found.path, None, f"WAL file '{name}'")
            if problem := history_problem(name, data):
                raise FileReadError(f"{problem} (in the repository)")
            fh.write(data)
            return
        _stream_verified(repo, name, found.path, str(found.sha1), fh)
    except FileNotFoundError:  # only the repository's: ``fh`` is open already
        raise FileMissingError(f"WAL file '{name}' was removed from the repository while it was being read "
                               f"('{found.path}')") from None


def _segment_size(name: str, head: bytes) -> int:
    """The segment size in a stored segment's long page header (push checked it; a bad one is corruption)."""
    try:
        return wal.parse_header(head, name).segment_size
    except PgPushError as exc:
        raise FileReadError(f"WAL file '{name}' in the repository is corrupt: {exc}") from None


def _stream_verified(repo: Repository, name: str, path: str, expected: str, fh: IO[bytes] | _ByteCounter) -> None:
    """Decode ``path`` into ``fh``, never past the segment size its header gives (a hostile
    repository's decompression bomb must not fill ``pg_wal``), then check the SHA-1."""
    what = f"WAL file '{name}'"
    digest = hashlib.sha1()
    segment = wal.kind(name) in ("segment", "partial")
    limit, head, written = MAX_WAL_BYTES, b"", 0
    try:
        for chunk in repo.decode_bounded(path, what):
            if segment and len(head) < HEADER_SIZE:
                head += chunk[: HEADER_SIZE - len(head)]
                if len(head) == HEADER_SIZE:
                    limit = _segment_size(name, head)
            written += len(chunk)
            if written > limit:
                raise FileReadError(f"{what} in the repository is corrupt: it decodes to more than its "
                                    f"segment size ({limit} bytes)")
            digest.update(chunk)
            fh.write(chunk)
    except ValueError as exc:
        raise FileReadError(f"{what} in the repository is corrupt: {exc}") from None
    if digest.hexdigest() != expected:
        raise FileReadError(f"{what} in the repository is corrupt: SHA1 {digest.hexdigest()} "
                            f"does not match the expected {expected}")
