"""The backup catalog: ``backup/STANZA/backup.info`` and manifests, read, checked and written.

What status a backup has is decided by :mod:`pgpush.repo.status` (docs/operations.md,
"Backup status"); this module records it.

``backup.info`` is an index; each backup's manifest is the commit point and
the source of truth.  Writers that may race (a push refreshing statuses, a
backup adding itself, expire removing one) re-read ``backup.info`` right
before writing and apply only their own change, and :meth:`Catalog.reconciled`
repairs what a lost race could leave behind (a label with a manifest but no
entry, an entry whose directory is gone).
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
from collections.abc import Callable
from typing import cast

from pgpush import wal
from pgpush.errors import FileMissingError, FileReadError
from pgpush.log import LOG
from pgpush.repo.records import BackupRecord, Manifest
from pgpush.repo.repository import Repository
from pgpush.repo.status import (
    DONE,
    FAILED,
    WAITING,
    ArchiveListing,
    ArchiveState,
    Evaluation,
    archive_state,
    evaluate,
    parse_iso,
    with_status,
)

BACKUP_INFO = "backup.info"
MANIFEST = "backup.manifest"
STARTED = "backup.started"  # in a label directory until its manifest is written: a backup in progress
LABEL_RE = re.compile(r"^\d{8}-\d{6}F(?:_\d{8}-\d{6}[DI])?$")


# -- status math (pure) ------------------------------------------------------------------------


# -- listing the archive -------------------------------------------------------------------------


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


