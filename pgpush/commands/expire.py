"""``expire``: apply ``repo1-retention-full`` to backups and the WAL archive.

With several repositories each applies its own ``repoN-retention-full`` (:func:`run`): they
may keep different numbers of backups (a near one a few, an offsite one many), and one without
retention expires nothing, with a warning naming its option.

Rules (docs/operations.md, "Retention"):

- only ``DONE`` full backups count: the newest N of them are kept, and with
  them every backup that started after the oldest of them, whatever its type
  or status, every backup still ``WAITING_FOR_WALS`` (it may become the only
  restorable one), and every backup a kept one depends on (its prior chain
  and the backups its files reference);
- a backup in progress (a label directory without a manifest whose marker
  the backup refreshed less than a day ago) keeps its full's whole chain: it
  may reference any of it; an older one is an interrupted backup and its
  directory is removed (after the lock is released);
- every other backup is removed: first from ``backup.info``, then its
  manifest (so a half-removed directory is never taken for a backup), both
  under the catalog lock (:mod:`pgpush.repo.catalog_lock`) that a diff or incr backup
  holds while it chooses its prior; then, without the lock, its directory;
- archived WAL of the current archive id older than the oldest kept
  backup's ``wal_start``, and than the start of every backup in progress
  (its marker carries its start LSN; while one has none yet, no WAL is
  removed), is removed (segments, ``.partial``, ``.backup``
  files and ``.dropped`` markers); ``.history`` files are always kept.

Without ``repo1-retention-full`` nothing is removed (a warning says so);
without any kept backup no WAL is removed.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

from pgpush import wal
from pgpush.commands import multirepo
from pgpush.config import Config
from pgpush.errors import FormatError, OptionInvalidValueError, PgPushError, RepoInvalidError
from pgpush.log import LOG
from pgpush.repo import catalog, catalog_lock
from pgpush.repo.catalog import Catalog
from pgpush.repo.records import BackupRecord, WalStart
from pgpush.repo.repository import Repository
from pgpush.repo.status import DONE, WAITING
from pgpush.repo.walarchive import ARCHIVED_RE, DROPPED_SUFFIX

STALE_AFTER = 24 * 3600.0


def label_time(label: str) -> float | None:
    """When a backup with this label started (labels are local time: ``...YYYYMMDD-HHMMSS[FDI]``); None when
    the digits are no date (``20201399-...``: a name in the repository that no backup made)."""
    try:
        return time.mktime(time.strptime(label.rsplit("_", 1)[-1][:15], "%Y%m%d-%H%M%S"))
    except (ValueError, OverflowError):
        return None


def plan(backups: list[BackupRecord], retention: int,
         running: Iterable[str] = ()) -> tuple[list[BackupRecord], list[BackupRecord]]:
    """(kept, removed) backups, both oldest first.  Pure: ``backups`` sorted oldest first.

    ``running`` are labels of backups in progress: a diff or incr may already
    reference any backup of its full's chain, which its label names (the
    first 16 characters), so that whole chain is kept.
    """
    if retention < 1:
        raise OptionInvalidValueError("option 'repo1-retention-full' must be at least 1")
    fulls = [b for b in backups if b["type"] == "full" and b["status"] == DONE]
    if len(fulls) <= retention:
        return list(backups), []
    oldest = fulls[-retention]
    keep = {b["label"] for b in backups if (b["start_time"], b["label"]) >= (oldest["start_time"], oldest["label"])}
    keep |= {b["label"] for b in backups if b["status"] == WAITING}
    chains = {label[:16] for label in running}
    keep |= {b["label"] for b in backups if b["label"][:16] in chains}
    by_label = {b["label"]: b for b in backups}
    todo = list(keep)
    while todo:
        b = by_label.get(todo.pop())
        if b is None:
            continue
        for dep in [b.get("prior")] + list(b.get("reference") or []):
            if dep and dep not in keep:
                keep.add(dep)
                todo.append(dep)
    return [b for b in backups if b["label"] in keep], [b for b in backups if b["label"] not in keep]


def wal_boundary(kept: Sequence[WalStart], archive_id: str) -> tuple[str, int] | None:
    """(wal_start, segment size) of the kept backup of ``archive_id`` needing the oldest WAL; below it none is needed."""
    same = [b for b in kept if b["archive_id"] == archive_id]
    if not same:
        return None
    first = min(same, key=lambda b: wal.segment_number(b["wal_start"], int(b["segment_size"])))
    return first["wal_start"], int(first["segment_size"])


def _segment_of(filename: str) -> str | None:
    m = ARCHIVED_RE.match(filename)
    if m:
        return m.group("wal")[:24]
    if filename.endswith(DROPPED_SUFFIX) and wal.is_segment(filename[: -len(DROPPED_SUFFIX)]):
        return filename[:24]
    return None


def expire_wal(repo: Repository, archive_id: str, boundary: int, segment_size: int) -> int:
    """Remove archived WAL files below segment ``boundary``; returns how many."""
    base = f"{repo.archive_root}/{archive_id}"
    per = wal.segments_per_log(segment_size)
    removed = 0
    for d in sorted(repo.storage.list_dirs(base)):
        if not wal.is_archive_dir(d):
            continue
        first = int(d[8:], 16) * per
        if first >= boundary:
            continue
        files = repo.storage.list(f"{base}/{d}")
        doomed = [f.name for f in files
                  if (seg := _segment_of(f.name)) is not None and wal.segment_number(seg, segment_size) < boundary]
        if first + per <= boundary and len(doomed) == len(files):
            repo.storage.delete_tree(f"{base}/{d}")
        else:
            for name in doomed:
                repo.storage.delete(f"{base}/{d}/{name}")
        removed += len(doomed)
    return removed


def in_progress(cat: Catalog, known: set[str]) -> tuple[dict[str, dict | None], list[str]]:
    """Label directories without a manifest: (backups running now with their markers, directories left by a crash).

    A running backup refreshes its marker (:meth:`Catalog.mark_started`) while it copies; a
    directory whose marker was refreshed less than ``STALE_AFTER`` ago (or, without a readable
    marker, whose label is that recent) is reported as running.  Older ones are incomplete
    backups, returned to be removed once the catalog lock is released (removing a big one takes
    long, and a lock held that long would be broken as stale by a waiting backup).
    """
    running: dict[str, dict | None] = {}
    stale: list[str] = []
    for label in sorted(cat.storage.list_dirs(cat.repo.backup_root)):
        if label in known or not catalog.LABEL_RE.match(label) or cat.storage.info(cat.manifest_path(label)):
            continue
        marker = cat.started_marker(label)
        since = cat.started_at(label)
        since = label_time(label) if since is None else since
        if since is None:
            LOG.warn(f"directory '{cat.label_dir(label)}' is named like a backup but its date is not one: left alone")
        elif time.time() - since < STALE_AFTER:
            LOG.info(f"backup {label} is in progress: its chain is kept")
            running[label] = marker
        else:
            stale.append(label)
    return running, stale


def decide(cfg: Config, repo: Repository,
           retention: int) -> tuple[list[BackupRecord], list[BackupRecord], list[str], dict[str, dict | None]]:
    """Plan under the catalog lock and commit the removals (entries, then manifests) before releasing it.

    Returns (kept, removed, incomplete label directories, running backups with their markers).  Statuses are settled first, without
    the lock (a full listing of the archive may take a while); the catalog is read again under
    it, so a backup that started meanwhile is seen.  Directories are removed by the caller,
    after the lock: nothing can choose them any more.
    """
    cat = Catalog(repo)
    settled = {b["label"]: b for b in catalog.evaluate_all(repo, cat.reconciled())}
    with catalog_lock.catalog_lock(cfg, repo, "expire"):
        backups = [settled.get(b["label"], b) for b in cat.reconciled()]
        running, stale = in_progress(cat, {b["label"] for b in backups})
        kept, removed = plan(backups, retention, running)
        if removed:
            cat.remove({b["label"] for b in removed})
            for b in removed:
                cat.storage.delete(cat.manifest_path(b["label"]))
    return kept, removed, stale, running


def running_starts(running: dict[str, dict | None], archive_id: str) -> list[WalStart] | None:
    """Running backups of ``archive_id`` as records for :func:`wal_boundary`; None when one's start is not known yet.

    A backup's WAL starts at its start LSN, which may be older than every kept backup's (a standby
    starts from its last restartpoint; a long full started before a newer full finished): expire
    must keep it.  A backup that has not yet got its start LSN from PostgreSQL could start anywhere.
    """
    out: list[WalStart] = []
    for label, seen in running.items():
        marker = seen or {}  # no marker (yet): its start is not known
        try:
            if marker["archive_id"] != archive_id:
                continue
            size = int(marker["segment_size"])
            out.append({"label": label, "archive_id": archive_id, "segment_size": size,
                        "wal_start": wal.lsn_segment(1, str(marker["start_lsn"]), size)})
        except (KeyError, TypeError, ValueError, ArithmeticError, FormatError):
            LOG.info(f"backup {label} is in progress and its start is not known yet: WAL is not expired")
            return None
    return out


def _remove_incomplete(cat: Catalog, label: str) -> None:
    """Remove an interrupted backup's directory; one that cannot be removed is left for the next expire
    (a warning says why): it is garbage no backup needs, so it must not stop the WAL from expiring."""
    LOG.warn(f"removing incomplete backup {label} (no manifest, no sign of life for over a day)")
    try:
        cat.storage.delete_tree(cat.label_dir(label))
    except RepoInvalidError as exc:
        if getattr(exc, "transient", False):
            raise  # unreachable after the retry layer's budget: the next one would cost another
        LOG.warn(f"unable to remove incomplete backup {label}: {exc}")


def expire_repo(cfg: Config) -> str:
    """Apply the retention of the repository ``cfg`` views (its own ``repoN-retention-full``); the result line."""
    key = cfg.key("repo1-retention-full")
    retention = cfg.get("repo1-retention-full")
    if retention is None:
        LOG.warn(f"option '{key}' is not set: no backup and no WAL expired\n"
                 f"HINT: set {key} to the number of full backups to keep")
        return f"nothing expired: {key} is not set"
    if int(retention) < 1:
        raise OptionInvalidValueError(f"option '{key}' must be at least 1")
    repo = Repository.from_config(cfg)
    try:
        repo.load_archive_info()
        cat = Catalog(repo)
        kept, removed, stale, running = decide(cfg, repo, int(retention))
        for label in stale:
            _remove_incomplete(cat, label)
        for b in removed:
            LOG.info(f"expire {b['type']} backup {b['label']} ({b['status']})")
            cat.storage.delete_tree(cat.label_dir(b["label"]))
        archive_id = repo.archive_id()
        starts = running_starts(running, archive_id)
        boundary = None if starts is None else wal_boundary([*kept, *starts], archive_id)
        wal_removed = 0
        if boundary is None:
            if starts is not None:
                LOG.info("no backup is kept for the current database: WAL is not expired")
        else:
            start, size = boundary
            wal_removed = expire_wal(repo, archive_id, wal.segment_number(start, size), size)
            LOG.info(f"removed {wal_removed} WAL file(s) of {archive_id} older than {start}")
    finally:
        repo.storage.close()
    labels = ", ".join(b["label"] for b in removed) or "none"
    return (f"expire ({key}={retention}): {len(removed)} backup(s) removed ({labels}), "
            f"{len(kept)} kept; {wal_removed} WAL file(s) removed")


def run(cfg: Config) -> tuple[str, PgPushError | None]:
    """Expire every repository (or the one ``--repo`` names): (the result lines, the failure to raise).

    Each repository applies its own retention, and one that fails does not stop the others: its
    error (naming it) is logged when it happens and raised once every repository had its turn,
    after the others' results are printed.
    """
    named = multirepo.named(cfg)
    lines: list[str] = []
    failures: list[PgPushError] = []
    for view in cfg.repos():
        try:
            line = expire_repo(view)
        except PgPushError as exc:
            failures.append(exc.in_repo(view.repo_label) if named else exc)
            if named:
                LOG.warn(f"expire failed: {failures[-1]}")
            continue
        lines.append(multirepo.name(line, view.repo_label) if named else line)
    return "\n".join(lines), (multirepo.combined(failures) if failures else None)
