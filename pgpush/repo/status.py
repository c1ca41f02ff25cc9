"""A backup's status, decided by the archive (docs/operations.md, "Backup status").

A backup's status is a function of the archive, never a guess:

- ``DONE``: every segment from ``wal_start`` to ``wal_stop`` is archived;
- ``FAILED``: a segment of that range is missing and it can never come —
  it was dropped (a ``.dropped`` marker of ``archive-push-queue-max``), or a
  later segment is archived already (a hole);
- ``WAITING_FOR_WALS``: otherwise (the stop segment is still being written).

A segment counts as archived when it is there on the backup's timeline or on
a later one (after a promotion the next timeline carries a copy of the
switch segment).  ``FAILED`` because of a hole is re-evaluated by ``info``,
``backup`` and ``expire``: asynchronous workers may archive segments out of
order for a moment, and a late segment turns the backup ``DONE`` again.

These rules read the archive and the records; they write nothing.  Where a new
status is written into ``backup.info`` is :mod:`pgpush.repo.catalog`'s job.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from pgpush import wal
from pgpush.errors import PgPushError
from pgpush.log import LOG
from pgpush.repo.records import BackupRecord, WalSpan
from pgpush.repo.repository import Repository
from pgpush.repo.walarchive import ARCHIVED_RE, DROPPED_SUFFIX, wal_dir
from pgpush.storage.base import FileInfo

DONE = "DONE"
WAITING = "WAITING_FOR_WALS"
FAILED = "FAILED"


def iso_utc(ts: float, ceil: bool = False) -> str:
    """Seconds since the epoch as ISO-8601 UTC in whole seconds.

    Truncated by default; ``ceil`` rounds up, for a backup's stop time: a
    recovery target at or after it is never before the backup is consistent.
    """
    whole = int(ts)
    if ceil and ts > whole:
        whole += 1
    return dt.datetime.fromtimestamp(whole, dt.timezone.utc).isoformat()  # dt.UTC is 3.11+


def parse_iso(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class SegmentIndex:
    """Archived and dropped segments of one archive id: segment number -> timelines."""

    def __init__(self, archived: Iterable[str], dropped: Iterable[str], segment_size: int):
        self.segment_size = segment_size
        self.present: dict[int, set[int]] = {}
        self.dropped: dict[int, set[int]] = {}
        self.max_by_tli: dict[int, int] = {}
        for name in archived:
            n, tli = wal.segment_number(name, segment_size), wal.timeline_of(name)
            self.present.setdefault(n, set()).add(tli)
            self.max_by_tli[tli] = max(self.max_by_tli.get(tli, n), n)
        for name in dropped:
            self.dropped.setdefault(wal.segment_number(name, segment_size), set()).add(wal.timeline_of(name))

    def has(self, number: int, tli: int) -> bool:
        return any(t >= tli for t in self.present.get(number, ()))

    def is_dropped(self, number: int, tli: int) -> bool:
        return any(t >= tli for t in self.dropped.get(number, ()))

    def later(self, number: int, tli: int) -> bool:
        """Is any segment after ``number`` archived (on this timeline or a later one)?"""
        return any(m > number for t, m in self.max_by_tli.items() if t >= tli)


@dataclass
class Evaluation:
    status: str
    missing: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)

    def detail(self) -> str | None:
        if self.status == DONE:
            return None
        if self.dropped:
            return "WAL dropped by archive-push-queue-max: " + ", ".join(self.dropped[:5])
        if self.status == FAILED:
            return "WAL missing while later WAL is archived: " + ", ".join(self.missing[:5])
        return "waiting for " + ", ".join(self.missing[:5])


def with_status(record: BackupRecord, ev: Evaluation) -> BackupRecord:
    """A copy of ``record`` with the status (and its detail) of ``ev``."""
    out = record.copy()
    out["status"], out["status_detail"] = ev.status, ev.detail()
    return out


def evaluate(record: WalSpan, index: SegmentIndex) -> Evaluation:
    """The status of one backup against the archive (docs/operations.md, "Backup status")."""
    size = index.segment_size
    tli = wal.timeline_of(record["wal_start"])
    first = wal.segment_number(record["wal_start"], size)
    last = wal.segment_number(record["wal_stop"], size)
    missing = [n for n in range(first, last + 1) if not index.has(n, tli)]
    if not missing:
        return Evaluation(DONE)
    names = [wal.segment_name(tli, n, size) for n in missing]
    dropped = [wal.segment_name(tli, n, size) for n in missing if index.is_dropped(n, tli)]
    if dropped or index.later(missing[0], tli):
        return Evaluation(FAILED, names, dropped)
    return Evaluation(WAITING, names)


def contiguous_end(record: WalSpan, index: SegmentIndex) -> int:
    """Number of the last segment of the unbroken run of archived WAL starting at ``wal_start``."""
    tli = wal.timeline_of(record["wal_start"])
    n = wal.segment_number(record["wal_start"], index.segment_size)
    while index.has(n, tli):
        n += 1
    return n - 1


def gaps(archived: Iterable[str], dropped: Iterable[str], segment_size: int) -> list[list[str]]:
    """Runs of missing segments ``[first, last]`` per timeline.

    A segment is missing when it lies between two known segments of its
    timeline (archived or dropped) and is not archived; a dropped segment is
    always missing, even at the end of the archive.
    """
    by_tli: dict[int, tuple[set[int], set[int]]] = {}
    for name in archived:
        by_tli.setdefault(wal.timeline_of(name), (set(), set()))[0].add(wal.segment_number(name, segment_size))
    for name in dropped:
        by_tli.setdefault(wal.timeline_of(name), (set(), set()))[1].add(wal.segment_number(name, segment_size))
    out: list[list[str]] = []
    for tli in sorted(by_tli):
        have, drop = by_tli[tli]
        drop = drop - have
        points = sorted(have | drop)
        runs: list[list[int]] = []
        prev: int | None = None
        for p in points:
            lo = p if p in drop else None
            if prev is not None and p > prev + 1:
                lo = prev + 1
            if lo is not None:
                hi = p if p in drop else p - 1
                if runs and runs[-1][1] + 1 >= lo:
                    runs[-1][1] = max(runs[-1][1], hi)
                else:
                    runs.append([lo, hi])
            prev = p
        out += [[wal.segment_name(tli, lo, segment_size), wal.segment_name(tli, hi, segment_size)] for lo, hi in runs]
    return out


class ArchiveListing:
    """The segments of one archive id, listed directory by directory on demand.

    ``window`` lists only what the status of some backups depends on (the
    directories of their WAL range and the newest directory of each later
    timeline), so a push refreshing a waiting backup costs a few requests,
    not a listing of the whole archive.
    """

    def __init__(self, repo: Repository, archive_id: str):
        self.repo = repo
        self.archive_id = archive_id
        self.base = f"{repo.archive_root}/{archive_id}"
        self._dirs: list[str] | None = None
        self._files: dict[str, list[FileInfo]] = {}
        self.conflicts: set[str] = set()  # segments stored with two different SHA-1s (a split brain)

    def dirs(self) -> list[str]:
        if self._dirs is None:
            self._dirs = sorted(d for d in self.repo.storage.list_dirs(self.base) if wal.is_archive_dir(d))
        return self._dirs

    def files(self, directory: str) -> list[FileInfo]:
        if directory not in self._files:
            self._files[directory] = self.repo.storage.list(f"{self.base}/{directory}")
        return self._files[directory]

    def _scan(self, directories: Iterable[str]) -> tuple[dict[str, FileInfo], set[str]]:
        archived: dict[str, FileInfo] = {}
        shas: dict[str, str] = {}  # segment -> SHA-1 in the name of the copy in ``archived``
        dropped: set[str] = set()
        for d in directories:
            for f in self.files(d):
                m = ARCHIVED_RE.match(f.name)
                if m and len(m.group("wal")) == 24:
                    segment, sha = m.group("wal"), m.group("sha")
                    if shas.get(segment, sha) != sha:
                        self.conflicts.add(segment)
                    archived[segment], shas[segment] = f, sha
                elif f.name.endswith(DROPPED_SUFFIX) and wal.is_segment(f.name[: -len(DROPPED_SUFFIX)]):
                    dropped.add(f.name[: -len(DROPPED_SUFFIX)])
        return archived, dropped

    def full(self) -> tuple[dict[str, FileInfo], set[str]]:
        """Every archived segment (name -> stored file) and every dropped segment."""
        return self._scan(self.dirs())

    def window(self, records: Sequence[WalSpan], segment_size: int) -> SegmentIndex:
        per = wal.segments_per_log(segment_size)
        wanted: set[str] = set()
        min_tli = min(wal.timeline_of(r["wal_start"]) for r in records)
        for r in records:
            tli = wal.timeline_of(r["wal_start"])
            lo = wal.segment_number(r["wal_start"], segment_size) // per
            hi = wal.segment_number(r["wal_stop"], segment_size) // per
            wanted |= {d for d in self.dirs() if int(d[:8], 16) >= tli and lo <= int(d[8:], 16) <= hi}
        for tli in sorted({int(d[:8], 16) for d in self.dirs() if int(d[:8], 16) >= min_tli}):
            for d in reversed([d for d in self.dirs() if int(d[:8], 16) == tli]):
                wanted.add(d)
                if any(ARCHIVED_RE.match(f.name) for f in self.files(d)):
                    break
        archived, dropped = self._scan(sorted(wanted))
        return SegmentIndex(archived, dropped, segment_size)


@dataclass
class ArchiveState:
    """The whole archive of one archive id, for ``info``, ``expire`` and ``verify``."""

    archive_id: str
    segment_size: int | None
    archived: dict[str, FileInfo]
    dropped: set[str]
    conflicts: set[str] = field(default_factory=set)  # stored twice with different content: get refuses them

    def index(self, segment_size: int | None = None) -> SegmentIndex:
        return SegmentIndex(self.archived, self.dropped, segment_size or self.segment_size or wal_default_size())


def wal_default_size() -> int:
    return 16 * 1024 * 1024


def archive_state(repo: Repository, archive_id: str, backups: list[BackupRecord]) -> ArchiveState:
    """List the archive id fully and find its segment size (from a backup, else a segment header)."""
    listing = ArchiveListing(repo, archive_id)
    archived, dropped = listing.full()
    sizes = [int(b["segment_size"]) for b in backups if b.get("archive_id") == archive_id]
    size = sizes[-1] if sizes else segment_size_from_archive(repo, archive_id, archived)
    return ArchiveState(archive_id, size, archived, dropped, listing.conflicts)


def segment_size_from_archive(repo: Repository, archive_id: str, archived: dict[str, FileInfo]) -> int | None:
    """Read the WAL segment size from the page header of one archived segment (first chunk only)."""
    for name in sorted(archived)[:1]:
        path = f"{wal_dir(repo, archive_id, name)}/{archived[name].name}"
        head = b""
        try:
            for chunk in repo.decode_bounded(path, f"WAL file '{name}'"):
                head += chunk
                if len(head) >= wal.LONG_HEADER.size:
                    break
            return wal.parse_header(head, name).segment_size
        except (ValueError, FileNotFoundError, PgPushError) as exc:  # a corrupt segment: verify says which
            LOG.warn(f"unable to read the segment size from '{name}': {exc}")
    return None


def recoverable_to(record: BackupRecord, state: ArchiveState, backups: list[BackupRecord]) -> str | None:
    """The latest time a recovery from ``record`` can reach without crossing a gap (docs/operations.md).

    ``None`` unless the backup is ``DONE``.  Let L be the last segment of the
    unbroken run of archived WAL from ``wal_start``.  When L is the backup's
    own stop segment, the answer is its ``stop_time`` (exact).  Otherwise it is
    the time L reached the repository (the storage's modification time);
    where the storage reports none, the latest ``stop_time`` of a backup of
    the same archive whose WAL ends within the run.
    """
    if record["status"] != DONE:
        return None
    size = int(record["segment_size"])
    index = state.index(size)
    last = contiguous_end(record, index)
    stop_n = wal.segment_number(record["wal_stop"], size)
    best = parse_iso(record["stop_time"])
    if last <= stop_n:
        return record["stop_time"]
    tli = wal.timeline_of(record["wal_start"])
    stamps = [f.mtime for name, f in state.archived.items()
              if wal.segment_number(name, size) == last and wal.timeline_of(name) >= tli and f.mtime is not None]
    if stamps:
        best = max(best, min(stamps))
    else:
        for other in backups:
            if (other["archive_id"] == record["archive_id"] and int(other["segment_size"]) == size
                    and wal.segment_number(other["wal_stop"], size) <= last and other["start_time"] >= record["start_time"]):
                best = max(best, parse_iso(other["stop_time"]))
    return iso_utc(best)
