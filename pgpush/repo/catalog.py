"""The backup catalog: ``backup/STANZA/backup.info``, manifests, and the status rules
(docs/operations.md, "Backup status").

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

``backup.info`` is an index; each backup's manifest is the commit point and
the source of truth.  Writers that may race (a push refreshing statuses, a
backup adding itself, expire removing one) re-read ``backup.info`` right
before writing and apply only their own change, and :meth:`Catalog.reconciled`
repairs what a lost race could leave behind (a label with a manifest but no
entry, an entry whose directory is gone).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import cast

from pgpush import wal
from pgpush.errors import FileMissingError, FileReadError, PgPushError
from pgpush.log import LOG
from pgpush.repo.records import BackupRecord, Manifest, WalSpan
from pgpush.repo.repository import Repository
from pgpush.repo.walarchive import ARCHIVED_RE, DROPPED_SUFFIX, wal_dir
from pgpush.storage.base import FileInfo

DONE = "DONE"
WAITING = "WAITING_FOR_WALS"
FAILED = "FAILED"
BACKUP_INFO = "backup.info"
MANIFEST = "backup.manifest"
STARTED = "backup.started"  # in a label directory until its manifest is written: a backup in progress
LABEL_RE = re.compile(r"^\d{8}-\d{6}F(?:_\d{8}-\d{6}[DI])?$")


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


# -- status math (pure) ------------------------------------------------------------------------


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


# -- listing the archive -------------------------------------------------------------------------


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


# -- backup.info and manifests -------------------------------------------------------------------

_RECORD_FIELDS: dict[str, tuple[type, ...]] = {
    "label": (str,), "type": (str,), "status": (str,), "start_time": (str,), "stop_time": (str,),
    "wal_start": (str,), "wal_stop": (str,), "archive_id": (str,), "segment_size": (int,), "system_id": (int,),
}


def record_problem(entry: object) -> str | None:
    """What makes ``entry`` not a backup record every command can read; None when sound.

    ``backup.info`` and manifests are read from the repository: a wrong type anywhere must be
    "corrupt" (42) naming the entry, not an internal error deep in info, expire or restore.
    """
    if not isinstance(entry, dict):
        return f"a backup entry is {type(entry).__name__}, not an object"
    label = entry.get("label")
    if not isinstance(label, str) or not LABEL_RE.fullmatch(label):
        return f"backup entry {str(label)[:64]!r} has no valid label"
    for key, types in _RECORD_FIELDS.items():
        value = entry.get(key)
        if not isinstance(value, types) or isinstance(value, bool):
            return f"backup '{label}' has {key}={str(value)[:64]!r}"
    problem = None
    if entry["type"] not in ("full", "diff", "incr") or entry["status"] not in (DONE, WAITING, FAILED):
        problem = f"type={entry['type'][:16]!r} status={entry['status'][:32]!r}"
    elif not all(wal.is_segment(entry[k]) for k in ("wal_start", "wal_stop")):
        problem = f"wal_start={entry['wal_start'][:32]!r} wal_stop={entry['wal_stop'][:32]!r}"
    elif not _valid_segment_size(entry["segment_size"]):
        problem = f"segment_size={entry['segment_size']}"
    elif not isinstance(entry.get("prior"), (str, type(None))) or not _str_list(entry.get("reference", [])):
        problem = "prior or reference is not a label"
    else:
        try:
            parse_iso(entry["start_time"]), parse_iso(entry["stop_time"])
        except (ValueError, OverflowError):
            problem = f"start_time={entry['start_time'][:40]!r} stop_time={entry['stop_time'][:40]!r}"
    return f"backup '{label}' has {problem}" if problem else None


def checked_record(entry: object, where: str) -> BackupRecord:
    """``entry`` as a backup record, else FileReadError (42): ``where`` (in backup.info, a manifest) is corrupt."""
    if problem := record_problem(entry):
        raise FileReadError(f"{where} is corrupt: {problem}")
    return cast("BackupRecord", entry)


def _valid_segment_size(size: int) -> bool:
    """PostgreSQL's WAL segment sizes: a power of two from 1 MB to 1 GB."""
    return (1 << 20) <= size <= (1 << 30) and not size & (size - 1)


def _str_list(value: object) -> bool:
    return value is None or (isinstance(value, list) and all(isinstance(v, str) for v in value))


class Catalog:
    """Read and write ``backup.info`` and the manifests of one stanza."""

    def __init__(self, repo: Repository):
        self.repo = repo
        self.storage = repo.storage
        self.path = f"{repo.backup_root}/{BACKUP_INFO}"

    def read(self) -> list[BackupRecord]:
        """The backups of ``backup.info`` (an empty list when it does not exist yet)."""
        try:
            raw = self.storage.read(self.path)
        except FileNotFoundError:
            return []
        try:
            data = json.loads(raw)
            backups = data["backups"]
        except (ValueError, KeyError, TypeError, RecursionError):
            raise FileReadError(f"{self.path} in the repository is corrupt") from None
        if not isinstance(backups, list):
            raise FileReadError(f"{self.path} in the repository is corrupt: 'backups' is not a list")
        records = [checked_record(entry, f"{self.path} in the repository") for entry in backups]
        return sorted(records, key=lambda b: (b["start_time"], b["label"]))

    def write(self, backups: list[BackupRecord]) -> None:
        body = {"format": 1, "backups": sorted(backups, key=lambda b: (b["start_time"], b["label"]))}
        self.storage.put(self.path, [json.dumps(body, indent=1).encode()], overwrite=True)

    def update(self, change: Callable[[list[BackupRecord]], bool]) -> list[BackupRecord]:
        """Read, apply ``change`` (True when it changed something), write: the race window is one round trip."""
        backups = self.read()
        if change(backups):
            self.write(backups)
        return backups

    def add(self, record: BackupRecord) -> None:
        def change(backups: list[BackupRecord]) -> bool:
            backups[:] = [b for b in backups if b["label"] != record["label"]] + [record.copy()]
            return True

        self.update(change)

    def remove(self, labels: set[str]) -> None:
        def change(backups: list[BackupRecord]) -> bool:
            before = len(backups)
            backups[:] = [b for b in backups if b["label"] not in labels]
            return len(backups) != before

        self.update(change)

    def set_statuses(self, evaluations: dict[str, tuple[str, Evaluation]]) -> None:
        """Persist new statuses: ``{label: (status seen before, evaluation)}``.

        Applied only where the entry still has the status it had when it was
        evaluated, so a concurrent writer's newer verdict is never overwritten.
        """
        def change(backups: list[BackupRecord]) -> bool:
            changed = False
            for b in backups:
                seen = evaluations.get(b["label"])
                if seen is not None and b["status"] == seen[0] and b["status"] != seen[1].status:
                    b["status"] = seen[1].status
                    b["status_detail"] = seen[1].detail()
                    changed = True
            return changed

        self.update(change)

    # -- manifests --

    def label_dir(self, label: str) -> str:
        """A label read from the repository is a path part: anything but a label (``../x``) is refused (42)."""
        if not isinstance(label, str) or not LABEL_RE.fullmatch(label):
            raise FileReadError(f"{self.path} names backup {label!r}, which is not a backup label: refused")
        return f"{self.repo.backup_root}/{label}"

    def manifest_path(self, label: str) -> str:
        return f"{self.label_dir(label)}/{MANIFEST}"

    def read_manifest(self, label: str) -> object:
        try:
            raw = self.storage.read(self.manifest_path(label))
        except FileNotFoundError:
            raise FileMissingError(f"backup '{label}' has no manifest in the repository") from None
        try:
            return json.loads(raw)
        except (ValueError, RecursionError):  # RecursionError: nested too deep ("[[[[...")
            raise FileReadError(f"manifest of backup '{label}' is corrupt") from None

    def mark_started(self, label: str, start: dict | None = None) -> None:
        """Write (or refresh) the in-progress marker of ``label`` with the time now.

        A backup refreshes it while it copies: ``expire`` judges a label directory without a
        manifest by this time, not by the label's start (a backup of a big cluster may run for
        more than a day, and its label is in the backup host's local time).  ``start`` (the
        backup's ``start_lsn``, ``segment_size`` and ``archive_id``, once PostgreSQL gave them)
        tells ``expire`` which WAL the running backup needs.
        """
        body = {"time": time.time(), "host": socket.gethostname(), "pid": os.getpid(), **(start or {})}
        self.storage.put(f"{self.label_dir(label)}/{STARTED}", [json.dumps(body).encode()], overwrite=True)

    def started_marker(self, label: str) -> dict | None:
        """The in-progress marker of ``label`` (see :meth:`mark_started`); None when there is none or it is garbage."""
        try:
            body = json.loads(self.storage.read(f"{self.label_dir(label)}/{STARTED}"))
        except FileNotFoundError:
            return None
        except (ValueError, RecursionError):  # a marker of an older version, or garbage
            return None
        return body if isinstance(body, dict) else None

    def started_at(self, label: str) -> float | None:
        """When the backup of ``label`` last refreshed its marker; None when there is none or it has no time."""
        try:
            when = float((self.started_marker(label) or {})["time"])
        except (KeyError, TypeError, ValueError):
            return None
        return when if when == when else None  # NaN is no time

    def write_manifest(self, label: str, manifest: Manifest) -> None:
        self.storage.put(self.manifest_path(label), [json.dumps(manifest, indent=1).encode()], overwrite=True)

    def reconciled(self) -> list[BackupRecord]:
        """``backup.info`` repaired against the label directories (see the module docstring)."""
        labels = {d for d in self.storage.list_dirs(self.repo.backup_root) if LABEL_RE.match(d)}
        backups = self.read()
        known = {b["label"] for b in backups}
        # An entry is dropped only when its manifest is gone too: a listing that misses a directory
        # (a symlink in a posix repository, a store whose listing lags) must not erase a backup.
        gone = {label for label in known - labels if self.storage.info(self.manifest_path(label)) is None}
        found = []
        for label in sorted(labels - known):
            try:
                manifest = self.read_manifest(label)
            except FileMissingError:
                continue  # a backup in progress, or one whose removal was interrupted
            where = f"manifest of backup '{label}'"
            record = checked_record(manifest.get("backup") if isinstance(manifest, dict) else None, where)
            if record["label"] != label:
                raise FileReadError(f"{where} is corrupt: it names backup {record['label']!r}")
            found.append(record)
        if not gone and not found:
            return backups

        def change(current: list[BackupRecord]) -> bool:
            have = {b["label"] for b in current}
            current[:] = [b for b in current if b["label"] not in gone] + [r for r in found if r["label"] not in have]
            return True

        for r in found:
            LOG.warn(f"backup '{r['label']}' was missing from backup.info: re-added from its manifest")
        return sorted(self.update(change), key=lambda b: (b["start_time"], b["label"]))


# -- refreshing statuses ---------------------------------------------------------------------------


def _report(label: str, old: str, ev: Evaluation) -> None:
    if ev.status == FAILED:
        LOG.warn(f"backup '{label}' is FAILED: {ev.detail()}")
    else:
        LOG.info(f"backup '{label}' is now {ev.status} (was {old})")


def refresh_status(repo: Repository) -> list[BackupRecord]:
    """Flip ``WAITING_FOR_WALS`` backups to ``DONE``/``FAILED`` once the archive decides (after a push).

    Cheap when nothing waits: one read of ``backup.info``.  Returns the
    records whose status changed (with the new status).
    """
    cat = Catalog(repo)
    try:
        waiting = [b for b in cat.read() if b["status"] == WAITING]
        if not waiting:
            return []
        return _refresh(repo, cat, waiting)
    except (KeyError, TypeError, ValueError) as exc:  # never fail a push over a malformed entry
        raise FileReadError(f"{cat.path} has a malformed backup entry: {type(exc).__name__}: {exc}") from None


def _refresh(repo: Repository, cat: Catalog, waiting: list[BackupRecord]) -> list[BackupRecord]:
    evaluations: dict[str, tuple[str, Evaluation]] = {}
    for archive_id in sorted({b["archive_id"] for b in waiting}):
        group = [b for b in waiting if b["archive_id"] == archive_id]
        for size in sorted({int(b["segment_size"]) for b in group}):
            sized = [b for b in group if int(b["segment_size"]) == size]
            index = ArchiveListing(repo, archive_id).window(sized, size)
            for b in sized:
                ev = evaluate(b, index)
                if ev.status != b["status"]:
                    evaluations[b["label"]] = (b["status"], ev)
    return _persist(cat, waiting, evaluations)


def _persist(cat: Catalog, records: list[BackupRecord],
             evaluations: dict[str, tuple[str, Evaluation]]) -> list[BackupRecord]:
    if not evaluations:
        return []
    cat.set_statuses(evaluations)
    changed: list[BackupRecord] = []
    for b in records:
        if b["label"] in evaluations:
            old, ev = evaluations[b["label"]]
            _report(b["label"], old, ev)
            changed.append(with_status(b, ev))
    return changed


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


def evaluate_all(repo: Repository, backups: list[BackupRecord],
                 states: dict[str, ArchiveState] | None = None) -> list[BackupRecord]:
    """Re-evaluate every backup against the full archive listing, persist changes, return fresh records.

    ``states`` (archive id -> :class:`ArchiveState`) is filled in and reused by the caller.
    """
    states = {} if states is None else states
    evaluations: dict[str, tuple[str, Evaluation]] = {}
    out: list[BackupRecord] = []
    for b in backups:
        aid = b["archive_id"]
        if aid not in states:
            states[aid] = archive_state(repo, aid, backups)
        ev = evaluate(b, states[aid].index(int(b["segment_size"])))
        if ev.status != b["status"]:
            evaluations[b["label"]] = (b["status"], ev)
            b = with_status(b, ev)
        out.append(b)
    _persist(Catalog(repo), backups, evaluations)
    return out


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
