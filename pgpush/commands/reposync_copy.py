"""``repo-sync``'s per-file jobs: copy one archive or backup file from the source repository to the target.

Run by :mod:`pgpush.commands.forkpool` workers (``process-max``), each with its own connection to
the target (the pool's repository) and to the source (:data:`SOURCE`, set by the parent before the
pool forks; a worker's copy reconnects on first use, since no connection crosses a fork).

Every file is decoded from the source and checked against the checksum that names it (a WAL
file's SHA-1 in its stored name, a backup file's SHA-1 and size in its manifest) while it is
re-encoded for the target (its own compression and cipher): a mismatch aborts the target's write,
so a corrupt source file is never stored.  What was stored is then read back from the target
and decoded again (the verification of the write: the target's encoding and storage are
checked, not only the bytes sent).  A file already in the target is skipped: a WAL file by name
and SHA-1 (never overwritten), a backup file when it reads back whole (an earlier, interrupted
sync stored it).

A job's answer is ``(outcome, content bytes, stored bytes, error code, message)``, counted by the
parent in a :class:`Tally`; a file refused
(corrupt in the source, another content in the target) is an answer, not an exception, so one bad
file never stops the copy of the others.  A repository that cannot be used (103) raises: nothing
after it could be copied either.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field

from pgpush import wal
from pgpush.config import format_size
from pgpush.errors import FileReadError, FileWriteError, PgPushError, RepoInvalidError
from pgpush.log import LOG
from pgpush.repo import readahead, walarchive
from pgpush.repo.repository import Repository, sha1_hex
from pgpush.storage.base import CHUNK

SOURCE: Repository | None = None  # the repository copied from (set by the parent, inherited by the workers)
COPIED, SKIPPED, REFUSED = "copied", "skipped", "refused"
MARKER_MAX = 64 * 1024  # a dropped-segment marker is a line of JSON

# (what, kind, ...): kind "wal" (archive_id, name, path, sha1 or None, stored size),
# "dropped" (archive_id, marker name, path, stored size), "file" (source path, target path, sha1, size,
# resumed: its label directory was left by an interrupted sync, stored size)
Job = tuple
Answer = tuple  # (outcome, content bytes, stored bytes, code, message)


@dataclass
class Tally:
    """What a sync did, for its summary line."""

    copied: int = 0  # files
    copied_bytes: int = 0  # their content
    skipped: int = 0  # files already in the target
    backups: list[str] = field(default_factory=list)  # labels committed
    backups_skipped: int = 0
    problems: list[PgPushError] = field(default_factory=list)

    def count(self, answer: Answer) -> None:
        outcome, content = answer[0], answer[1]
        if outcome == COPIED:
            self.copied += 1
            self.copied_bytes += content
        elif outcome == SKIPPED:
            self.skipped += 1

    def refuse(self, problem: PgPushError) -> None:
        LOG.warn(problem.message)
        self.problems.append(problem)

    def summary(self, src: str, dst: str) -> str:
        return (f"repo-sync {src} -> {dst}: copied {self.copied} file(s), {format_size(self.copied_bytes)}, and "
                f"{len(self.backups)} backup(s); skipped {self.skipped} file(s) and {self.backups_skipped} "
                f"backup(s) already in {dst}" + (f"; {len(self.problems)} not copied" if self.problems else ""))


class _Source:
    """Decoded, checked chunks of one source file, with what they came to; an error is said of the source."""

    def __init__(self, src: Repository, path: str, what: str, sha1: str, size: int | None):
        self.src, self.path, self.what, self.sha1, self.size = src, path, what, sha1, size
        self.count = 0
        self.failed: PgPushError | None = None

    def chunks(self) -> Iterator[bytes]:
        self.count = 0
        try:
            for chunk in self.src.decode_verified(self.path, self.what, self.sha1, self.size):
                self.count += len(chunk)
                yield chunk
        except FileNotFoundError:
            self.failed = FileReadError(f"{self.what} vanished from the repository while it was copied "
                                        f"('{self.path}')").in_repo(self.src.label)
            raise self.failed from None
        except PgPushError as exc:
            self.failed = exc.in_repo(self.src.label)
            raise self.failed from None


def copy_job(dst: Repository, job: Job) -> Answer:
    """Copy one file (see the module docstring); the pool's worker function."""
    src = SOURCE
    if src is None:  # pragma: no cover - the parent always sets it
        raise RuntimeError("repo-sync: no source repository")
    kind = job[1]
    source: list[_Source] = []
    try:
        if kind == "wal":
            return _copy_wal(src, dst, job, source)
        if kind == "dropped":
            return _copy_marker(src, dst, job)
        return _copy_file(src, dst, job, source)
    except RepoInvalidError:
        raise  # a repository cannot be used: nothing after this file could be copied either
    except PgPushError as exc:
        problem = exc
        if source and source[0].failed is not None:
            problem = source[0].failed
        elif not exc.message.startswith(f"{src.label}: "):
            problem = exc.in_repo(dst.label)
        return REFUSED, 0, 0, problem.code, problem.message


def _copy_wal(src: Repository, dst: Repository, job: Job, source: list[_Source]) -> Answer:
    what, _kind, archive_id, name, path, sha1, _stored = job
    if wal.kind(name) == "history":  # no SHA-1 in its name: checked as PostgreSQL will read it
        try:
            data = src.read_verified(path, None, f"WAL file '{name}'")
        except FileNotFoundError:
            return SKIPPED, 0, 0, 0, ""  # removed since it was listed (expire): nothing to copy
        except PgPushError as exc:
            raise exc.in_repo(src.label) from None
        if problem := walarchive.history_problem(name, data):
            raise FileReadError(f"{problem} (in the repository)").in_repo(src.label)
        stored = walarchive.store_copy(dst, archive_id, name, sha1_hex(data), lambda: iter([data]))
        return (COPIED if stored else SKIPPED), len(data), 0, 0, ""
    reader = _Source(src, path, what, sha1, None)
    source.append(reader)
    stored = walarchive.store_copy(dst, archive_id, name, sha1, reader.chunks)
    return (COPIED if stored else SKIPPED), reader.count, 0, 0, ""


def _copy_marker(src: Repository, dst: Repository, job: Job) -> Answer:
    """A dropped segment's marker: a hole in the source is a hole in the copy too (``info`` shows it)."""
    _what, _kind, archive_id, marker, path, _stored = job
    try:
        data = src.storage.read(path)
    except FileNotFoundError:
        return SKIPPED, 0, 0, 0, ""  # the segment arrived meanwhile (a late push replaces its marker)
    try:
        body = json.loads(data) if len(data) <= MARKER_MAX else None
    except (ValueError, RecursionError):
        body = None
    if not isinstance(body, dict):
        raise FileReadError(f"dropped-segment marker '{path}' in the repository is corrupt").in_repo(src.label)
    segment = marker[: -len(walarchive.DROPPED_SUFFIX)]
    try:
        dst.storage.put(f"{walarchive.wal_dir(dst, archive_id, segment)}/{marker}", [data])
    except FileExistsError:
        return SKIPPED, 0, 0, 0, ""
    return COPIED, len(data), len(data), 0, ""


def _copy_file(src: Repository, dst: Repository, job: Job, source: list[_Source]) -> Answer:
    """One file of a backup; its label directory in the target is this sync's (``reposync`` claimed it)."""
    what, _kind, src_path, dst_path, sha1, size, resumed, _stored = job
    if resumed:  # the directory was left by an interrupted sync: what it stored whole is kept
        found = dst.storage.info(dst_path)
        if found is not None and _reads_back(dst, dst_path, what, sha1, size) is None:
            return SKIPPED, size, found.size, 0, ""
        dst.storage.remove_leftovers(dst_path)  # the temporary copy a killed put left
    reader = _Source(src, src_path, what, sha1, size)
    source.append(reader)
    payload = dst.encode(reader.chunks())
    if size > CHUNK:  # big file: decode and encode in a thread while the storage sends
        payload = readahead.ahead(payload)
    written = dst.storage.put(dst_path, payload, overwrite=True)
    if problem := _reads_back(dst, dst_path, what, sha1, size):
        dst.storage.delete(dst_path)
        raise FileWriteError(f"{what} was stored as '{dst_path}' but does not read back whole ({problem}): removed")
    return COPIED, size, written, 0, ""


def _reads_back(repo: Repository, path: str, what: str, sha1: str, size: int) -> str | None:
    """Why ``path`` does not decode to ``size`` bytes with SHA-1 ``sha1``; None when it does."""
    try:
        for _chunk in repo.decode_verified(path, what, sha1, size):
            pass
    except FileNotFoundError:
        return f"'{path}' vanished"
    except FileReadError as exc:
        return str(exc)
    return None

