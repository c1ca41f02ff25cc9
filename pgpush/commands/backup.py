"""``backup``: a base backup of ``pg1`` (a primary or a standby) into the repository.

The non-exclusive API in one session (``pg_backup_start``/``pg_backup_stop``
on 15+, ``pg_start_backup``/``pg_stop_backup`` with ``exclusive => false``
before), always stopped with ``wait_for_archive => false``: the stop never
hangs on a standby whose primary is idle.  Whether the WAL the backup needs
is archived is decided afterwards against the repository (docs/operations.md, "Backup status", see
:mod:`pgpush.repo.catalog`), so ``backup`` returns at once with
``WAITING_FOR_WALS``, or with ``--wait`` polls until ``DONE``.

Files are copied by ``process-max`` workers (:mod:`pgpush.commands.forkpool`), each
compressed and encrypted like WAL and stored as
``backup/STANZA/LABEL/pg_data/PATH[.ext]``.  ``global/pg_control`` is copied
last: for a standby backup its minimum recovery point is the end of the
backup, so it must not be older than any other file.  A diff or incr backup
stores only files whose size or SHA-1 differ from its prior backup and
references the backup holding each unchanged file.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from contextlib import ExitStack
from dataclasses import dataclass
from typing import cast

from pgpush import __version__, wal
from pgpush.commands import backup_files, forkpool
from pgpush.commands.backup_targets import Target, Targets, open_targets
from pgpush.commands.progress import Progress
from pgpush.config import Config
from pgpush.errors import (
    ArchiveDisabledError,
    BackupWaitTimeout,
    FileMissingError,
    OptionInvalidValueError,
    PgPushError,
    VersionNotSupportedError,
)
from pgpush.log import LOG
from pgpush.pg import pgconn, pgdata
from pgpush.pg.nudge import PrimaryNudge
from pgpush.repo import catalog, catalog_lock, manifest_check, status
from pgpush.repo.catalog import Catalog
from pgpush.repo.records import BackupRecord, Manifest, ManifestFile, ManifestPath
from pgpush.repo.repository import Repository
from pgpush.repo.status import DONE, FAILED, WAITING, ArchiveListing

TYPES = ("full", "diff", "incr")
POLL = 0.5
NUDGE_INTERVAL = 5.0
STARTED = catalog.STARTED
HEARTBEAT = 300.0  # seconds between refreshes of the in-progress marker (expire reads it, see expire.in_progress)
HOLE_GRACE = 5.0  # a hole may be an out-of-order asynchronous push that completes in a moment


# -- worker ---------------------------------------------------------------------------------------

backup_file = backup_files.backup_file  # the one-repository worker (tests call it by this name)


def store_bytes(repo: Repository, label_dir: str, name: str, data: bytes) -> ManifestFile:
    """Store a file produced by the stop call (``backup_label``, ``tablespace_map``)."""
    written = repo.storage.put(f"{label_dir}/{name}{repo.extension()}", repo.encode([data]), overwrite=True)
    return {"name": name, "size": len(data), "sha1": hashlib.sha1(data).hexdigest(), "ext": repo.extension(),
            "repo_size": written, "reference": None, "mode": "0600", "mtime": time.time()}


# -- planning -------------------------------------------------------------------------------------


def make_label(btype: str, full_label: str | None, now: float) -> str:
    """pgBackRest labels: ``YYYYMMDD-HHMMSSF``, ``FULL_YYYYMMDD-HHMMSSD`` / ``..I`` (local time)."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    if btype == "full":
        return stamp + "F"
    return f"{full_label}_{stamp}{'D' if btype == 'diff' else 'I'}"


def choose_prior(backups: list[BackupRecord], btype: str, archive_id: str, system_id: int) -> BackupRecord | None:
    """diff: the latest full; incr: the latest backup — of the same cluster, any status (files are what count)."""
    same = [b for b in backups if b["archive_id"] == archive_id and int(b["system_id"]) == system_id]
    if btype == "diff":
        same = [b for b in same if b["type"] == "full"]
    return same[-1] if same else None


def prior_files(manifest: Manifest) -> dict[str, ManifestFile]:
    """Prior manifest's files with the label that holds each one's content."""
    label = manifest["backup"]["label"]
    return {f["name"]: {"name": f["name"], "size": f["size"], "sha1": f["sha1"], "ext": f["ext"],
                        "repo_size": f["repo_size"], "reference": f.get("reference") or label}
            for f in manifest["files"]}


# -- the database side ------------------------------------------------------------------------------


def check_cluster(cfg: Config, targets: Targets, db: pgconn.PgConn, pgdata_path: str) -> tuple[bool, int]:
    """pg1 must be the stanza's cluster (in every repository), at ``pg1-path``, with WAL archived;
    returns (standby, system id)."""
    if db.version < 10:
        raise VersionNotSupportedError(f"PostgreSQL {db.version} is not supported (10 or later is required)")
    system_id = db.system_id()
    targets.each(lambda t: t.repo.check_cluster(system_id, db.version, "pg1"))
    data_dir = db.data_directory()
    if os.path.realpath(data_dir) != os.path.realpath(pgdata_path):
        raise OptionInvalidValueError(
            f"option 'pg1-path' is '{pgdata_path}' but the cluster on port {cfg['pg1-port']} runs in '{data_dir}'")
    standby = db.in_recovery()
    if not standby:
        command = db.setting("archive_command").strip()
        if db.setting("archive_mode") == "off" or not command:
            raise ArchiveDisabledError(
                "WAL is not archived on pg1 (archive_mode is off or archive_command is empty): a backup needs its "
                "WAL in the repository (archive_mode = on, archive_command = 'pgpush --stanza=... push %p')")
        if "pgpush" not in command:
            LOG.warn(f"archive_command '{command}' does not name pgpush: the backup stays WAITING_FOR_WALS unless "
                     "its WAL reaches this stanza")
    return standby, system_id


def _start(db: pgconn.PgConn, label: str) -> str:
    if db.version >= 15:
        return str(db.scalar("SELECT pg_backup_start(%s, true)::text", (label,)))
    return str(db.scalar("SELECT pg_start_backup(%s, true, false)::text", (label,)))


def _stop(db: pgconn.PgConn) -> tuple[str, str, str]:
    if db.version >= 15:
        row = db.execute("SELECT lsn::text, labelfile, spcmapfile FROM pg_backup_stop(false)")[0]
    else:
        row = db.execute("SELECT lsn::text, labelfile, spcmapfile FROM pg_stop_backup(false, false)")[0]
    return str(row[0]), row[1] or "", row[2] or ""


def _timelines(db: pgconn.PgConn, standby: bool, label_file: str, stop_lsn: str) -> tuple[int, int]:
    """(start, stop) timelines: the label's ``START TIMELINE``; the stop from pg_control (standby) or the insert TLI."""
    m = re.search(r"^START TIMELINE: (\d+)$", label_file, re.M)
    start = int(m.group(1)) if m else int(db.scalar("SELECT timeline_id FROM pg_control_checkpoint()"))
    if standby:
        stop = int(db.scalar("SELECT min_recovery_end_timeline FROM pg_control_recovery()") or 0) or start
    else:
        stop = int(str(db.scalar("SELECT pg_walfile_name(%s::pg_lsn)", (stop_lsn,)))[:8], 16)
    return start, max(start, stop)


# -- the command ------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What the backup left in each repository: the records of those that hold it, the errors of the others."""

    targets: Targets

    @property
    def several(self) -> bool:
        return len(self.targets) > 1

    @property
    def records(self) -> list[tuple[str, BackupRecord]]:
        """(repository, record) of every repository where the backup is complete, in priority order."""
        return [(t.name, t.record) for t in self.targets if t.error is None and t.record is not None]

    @property
    def failed(self) -> list[Target]:
        return self.targets.failed()


def run(cfg: Config) -> Outcome:
    """Take the backup in every repository (``--repo``: in that one).

    With one repository its error is raised as it always was (BackupWaitTimeout, 3, when
    ``--wait-timeout`` expires).  With several, an error is raised only when every repository
    failed; otherwise the outcome says which hold the backup and which failed, with their errors.
    """
    pgdata_path = os.path.abspath(str(cfg.require("pg1-path")))
    btype = cfg.get("type") or "full"
    if btype not in TYPES:
        raise OptionInvalidValueError(
            f"option 'type' has invalid value '{btype}' {cfg.sources.get('type', '')}: one of full, diff, incr is expected")
    targets = open_targets(cfg)
    nudger: PrimaryNudge | None = None
    try:
        targets.each(lambda t: t.repo.load_archive_info())
        with pgconn.connect_pg1(cfg) as db:
            standby, system_id = check_cluster(cfg, targets, db, pgdata_path)
            segment_size = db.segment_size()
            if standby and cfg.get("primary-conninfo"):
                nudger = PrimaryNudge(cfg, system_id, segment_size)
            _take(cfg, targets, db, pgdata_path, btype, standby, system_id, segment_size, nudger)
        settle(cfg, targets, nudger)
        return Outcome(targets)
    finally:
        if nudger is not None:
            nudger.close()
        for t in targets:
            t.repo.storage.close()


def _take(cfg: Config, targets: Targets, db: pgconn.PgConn, pgdata_path: str, btype: str, standby: bool,
          system_id: int, segment_size: int, nudger: PrimaryNudge | None) -> None:
    def settle_statuses(t: Target) -> None:  # before choosing (outside the lock)
        catalog.evaluate_all(t.repo, t.cat.reconciled())
        t.archive_id = t.repo.archive_id()

    targets.each(settle_statuses)
    _claim(targets, btype, system_id)
    for t in targets.live():
        LOG.info(t.say(f"{t.btype} backup {t.label} of {'standby' if standby else 'primary'} pg1 started"
                       + (f", prior {t.prior['label']}" if t.prior else "")))
    try:
        start_time = time.time()
        start_lsn = _start(db, targets.live()[0].label)
        LOG.info(f"backup start LSN {start_lsn}")

        def begin(t: Target) -> None:  # expire keeps the WAL from here on
            _check_still_ours(t.cat, t.label)
            t.cat.mark_started(t.label, {"start_lsn": start_lsn, "segment_size": segment_size,
                                         "archive_id": t.archive_id})

        targets.each(begin)
        dirs, links = _copy(cfg, targets, pgdata_path, db.version, start_lsn, segment_size)
        stop_lsn, label_file, map_file = _stop(db)
        stop_time = time.time()
        LOG.info(f"backup stop LSN {stop_lsn}")

        def store_stop_files(t: Target) -> None:
            t.files.append(store_bytes(t.repo, t.label_dir, f"{pgdata.PREFIX}/backup_label", label_file.encode()))
            if map_file:
                t.files.append(store_bytes(t.repo, t.label_dir, f"{pgdata.PREFIX}/tablespace_map", map_file.encode()))

        targets.each(store_stop_files)
        start_tli, stop_tli = _timelines(db, standby, label_file, stop_lsn)
        wal_start = wal.lsn_segment(start_tli, start_lsn, segment_size)
        wal_stop = wal.stop_segment(stop_tli, stop_lsn, segment_size)
        if wal.segment_number(wal_stop, segment_size) < wal.segment_number(wal_start, segment_size):
            wal_stop = wal.segment_name(stop_tli, wal.segment_number(wal_start, segment_size), segment_size)
        common = {
            "from_standby": standby, "timeline": start_tli, "stop_timeline": stop_tli, "start_lsn": start_lsn,
            "stop_lsn": stop_lsn, "wal_start": wal_start, "wal_stop": wal_stop,
            "start_time": status.iso_utc(start_time), "stop_time": status.iso_utc(stop_time, ceil=True),
            "pg_version": db.version, "system_id": system_id, "segment_size": segment_size,
        }
        if nudger is not None:
            nudger.nudge()
        targets.each(lambda t: _finish(cfg, t, common, dirs, links))
    except BaseException:
        for t in targets:
            t.abandon()
        raise

    def record(t: Target) -> None:
        assert t.record is not None
        t.cat.add(t.record)
        LOG.info(t.say(f"backup {t.label} stored: {t.record['file_count']} files, WAL {t.record['wal_start']} to "
                       f"{t.record['wal_stop']}"))

    try:
        targets.each(record)
    finally:
        for t in targets.failed():  # last: a repository that is still down must not delay the others' entries
            t.abandon()


def _finish(cfg: Config, t: Target, c: dict, dirs: list[ManifestPath], links: list[ManifestPath]) -> None:
    """This repository's record (its own label, prior, files and archive id), its status, its manifest.

    ``c`` holds what is the same in every repository (the LSNs, timelines, times, cluster)."""
    files = t.files
    own = [f for f in files if not f.get("reference")]
    record: BackupRecord = {
        "label": t.label, "type": t.btype, "prior": t.prior["label"] if t.prior else None, "status": WAITING,
        "status_detail": None, "from_standby": c["from_standby"], "timeline": c["timeline"],
        "stop_timeline": c["stop_timeline"], "start_lsn": c["start_lsn"], "stop_lsn": c["stop_lsn"],
        "wal_start": c["wal_start"], "wal_stop": c["wal_stop"], "start_time": c["start_time"],
        "stop_time": c["stop_time"], "size": sum(f["size"] for f in files),
        "repo_size": sum(f["repo_size"] for f in own), "backup_size": sum(f["size"] for f in own),
        "file_count": len(files), "reference": sorted({ref for f in files if (ref := f.get("reference"))}),
        "archive_id": t.archive_id, "pg_version": c["pg_version"], "system_id": c["system_id"],
        "segment_size": c["segment_size"], "pgpush_version": __version__,
    }
    size = int(record["segment_size"])
    ev = status.evaluate(record, ArchiveListing(t.repo, t.archive_id).window([record], size))
    t.record = status.with_status(record, ev)
    manifest: Manifest = {"format": 1, "backup": t.record, "files": sorted(files, key=lambda f: f["name"]),
                          "dirs": dirs, "links": links}
    _commit(cfg, t, manifest)


def _claim(targets: Targets, btype: str, system_id: int) -> None:
    """In each repository: choose the prior, read its files, take a free label, make its directory exist.

    Runs under each repository's catalog lock (taken in index order, so two backups never wait
    for each other): once the directory exists, ``expire`` sees the backup in progress and keeps
    its full's whole chain, so the prior chosen here is never removed.  The labels share one time
    stamp; a repository whose prior differs (it missed a backup) has its own prefix, or a full's
    label when it has no prior at all.
    """
    with ExitStack() as locks:
        targets.each(lambda t: locks.enter_context(catalog_lock.catalog_lock(t.cfg, t.repo, "backup")))
        targets.each(lambda t: _choose(t, btype, system_id))
        while True:
            now = time.time()
            labels = {t.name: make_label(t.btype, t.prior["label"][:16] if t.prior else None, now)
                      for t in targets.live()}
            if all(labels[t.name] not in t.taken for t in targets.live()):
                break
            time.sleep(0.2)

        def mark(t: Target) -> None:
            t.label = labels[t.name]
            t.cat.mark_started(t.label)
            t.started = True

        targets.each(mark)


def _choose(t: Target, btype: str, system_id: int) -> None:
    """This repository's own prior for a diff/incr (its latest full / latest backup), or a full when it has none."""
    backups = t.cat.reconciled()
    t.btype, t.prior = btype, None
    if btype != "full":
        t.prior = choose_prior(backups, btype, t.archive_id, system_id)
        if t.prior is None:
            LOG.warn(t.say(f"no prior backup exists, {btype} backup has been changed to full"))
            t.btype = "full"
    if t.prior is not None:
        checked = manifest_check.check(t.cat.read_manifest(t.prior["label"]), t.prior["label"], "no backup was taken")
        t.prior_index = prior_files(checked)
    t.taken = {b["label"] for b in backups} | set(t.cat.storage.list_dirs(t.repo.backup_root))


def _commit(cfg: Config, t: Target, manifest: Manifest) -> None:
    """Write the manifest (the commit point), only if the label directory is still ours.

    Under the catalog lock, so ``expire`` either removed the directory before (the marker is
    gone: the backup fails instead of recording files that no longer exist) or sees the manifest.
    The same holds for the backups this one references (:func:`_check_references_kept`).
    """
    cat, label = t.cat, t.label
    with catalog_lock.catalog_lock(t.cfg, cat.repo, "backup"):
        _check_still_ours(cat, label)
        _check_references_kept(cat, manifest["backup"])
        cat.write_manifest(label, manifest)
        t.committed = True
        cat.storage.delete(f"{cat.label_dir(label)}/{STARTED}")


def _check_references_kept(cat: Catalog, record: BackupRecord) -> None:
    """The prior and every backup whose files this one references must still have their manifest.

    The lock taken in ``_claim`` keeps ``expire`` from removing them only while it is held by
    its live holder: a lock older than its stale limit is broken (a holder slowed by the retry
    layer's reconnects, or whose clock runs behind the waiter's), and an ``expire`` that broke it
    may have removed the prior before this backup's directory existed.  Checked here, under the
    lock again, a backup is never recorded with references to files that are gone; after the
    manifest is written, ``expire`` keeps what it references.
    """
    prior = record.get("prior")
    needed_labels = set(record.get("reference") or []) | ({prior} if prior else set())
    for needed in sorted(needed_labels):
        if cat.storage.info(cat.manifest_path(needed)) is None:
            raise FileMissingError(f"backup {record['label']}: backup {needed}, which it references, was removed "
                                   "from the repository while it ran (by expire, or by hand): nothing is recorded")


def _check_still_ours(cat: Catalog, label: str) -> None:
    """The marker must still be there: a put never recreates a label directory that expire removed
    (a backup that showed no sign of life for a day), and no manifest ever names its lost files."""
    if cat.storage.info(f"{cat.label_dir(label)}/{STARTED}") is None:
        raise FileMissingError(f"backup {label}: its directory was removed from the repository while the backup "
                               "ran (by expire, or by hand): nothing is recorded")


def _copy(cfg: Config, targets: Targets, pgdata_path: str, major: int, start_lsn: str,
          segment_size: int) -> tuple[list[ManifestPath], list[ManifestPath]]:
    """Copy every file (pg_control last) into every healthy repository, refreshing the in-progress
    markers; each repository's files go to its target, returns the manifest's dirs and links."""
    entries = pgdata.scan(pgdata_path, major)
    by_name = {e.name: e for e in entries}
    regular = [e for e in entries if e.kind == "file" and e.name != pgdata.CONTROL]
    control = by_name.get(pgdata.CONTROL)
    if control is None:
        raise FileMissingError(f"'{pgdata_path}/global/pg_control' does not exist: is pg1-path a data directory?")
    regular.sort(key=lambda e: -e.size)
    progress = Progress(f"backup {targets.live()[0].label}", len(regular) + 1,
                        sum(e.size for e in regular) + control.size, str(cfg["log-level-console"]))
    beat = [time.monotonic()]

    def heartbeat(t: Target) -> None:  # still alive: expire must not take it for a crashed one
        _check_still_ours(t.cat, t.label)
        t.cat.mark_started(t.label, {"start_lsn": start_lsn, "segment_size": segment_size, "archive_id": t.archive_id})

    def prepare(job: tuple[str, str]) -> backup_files.Job:
        """Sent as it is handed to a worker: only the repositories still healthy then."""
        name, path = job
        return name, path, {t.repo.index: (t.label_dir, t.prior_index.get(name)) for t in targets.live()}

    def collect(job: backup_files.Job, result: dict[int, backup_files.Outcome] | None) -> None:
        entry = by_name[job[0]]
        progress.advance(entry.size)
        if time.monotonic() - beat[0] >= HEARTBEAT:
            targets.each(heartbeat)
            beat[0] = time.monotonic()
        if result is None:
            LOG.detail(f"file '{entry.path}' was removed during the backup")
            return
        for t in targets.live():
            out = result.get(t.repo.index)
            if out is None:
                continue
            if isinstance(out, tuple):
                t.fail(PgPushError(out[1], out[0]))
                continue
            stored = cast("ManifestFile", dict(out))
            stored["mode"], stored["mtime"] = f"{entry.mode:04o}", entry.mtime
            stored["user"], stored["group"] = entry.user, entry.group
            t.files.append(stored)
        targets.check()

    repos = {t.repo.index: t.repo for t in targets}
    jobs = [(e.name, e.path) for e in regular]
    try:
        forkpool.run_all(cfg, backup_files.backup_everywhere, jobs, collect, repos, prepare)
        job = prepare((control.name, control.path))
        collect(job, forkpool.call(backup_files.backup_everywhere, repos, job))
    finally:
        progress.close()
    # as_dict builds ManifestPath entries; pg/ may not import repo/, so it cannot say so itself
    dirs = [cast("ManifestPath", e.as_dict()) for e in entries if e.kind == "dir"]
    links = [cast("ManifestPath", e.as_dict()) for e in entries if e.kind == "link"]
    return dirs, links


def settle(cfg: Config, targets: Targets, nudger: PrimaryNudge | None) -> None:
    """Report each repository's status; with ``--wait`` poll (nudging the primary) until every one is
    DONE or ``--wait-timeout``.

    Evaluated again right away: WAL archived between the backup's first evaluation and its
    entry in backup.info was seen by no push.  Each repository is judged against its own
    archive; one whose WAL is missing, or still waiting at the timeout, fails on its own.
    """
    wait = bool(cfg["wait"])
    given = cfg.get("wait-timeout")
    timeout = None if given is None else float(given)
    started = time.monotonic()
    last_nudge = started
    hole_since: dict[str, float] = {}
    pending = targets.live()
    while True:
        for t in list(pending):
            try:
                if _settled(t, wait, timeout, started, hole_since):
                    pending.remove(t)
            except PgPushError as exc:
                t.fail(exc)
                pending.remove(t)
        targets.check()
        if not pending:
            return
        now = time.monotonic()
        if nudger is not None and now - last_nudge >= NUDGE_INTERVAL:
            nudger.nudge(None if timeout is None or not wait else started + timeout)
            last_nudge = now
        time.sleep(POLL)


def _settled(t: Target, wait: bool, timeout: float | None, started: float, hole_since: dict[str, float]) -> bool:
    """One look at this repository's copy: True when it needs no more (DONE, or waiting without ``--wait``)."""
    record = t.record
    assert record is not None
    ev = status.evaluate(record, ArchiveListing(t.repo, record["archive_id"]).window([record],
                                                                                      int(record["segment_size"])))
    if ev.status != record["status"]:
        t.cat.set_statuses({record["label"]: (record["status"], ev)})
        t.record = record = status.with_status(record, ev)
    if ev.status == DONE:
        return True
    now = time.monotonic()
    if ev.status == FAILED:
        since = hole_since.setdefault(t.name, now)
        if ev.dropped or now - since >= HOLE_GRACE:
            raise FileMissingError(f"backup {record['label']} is FAILED: {ev.detail()}")
        return False
    hole_since.pop(t.name, None)
    if not wait:
        return True
    if timeout is not None and now - started >= timeout:
        raise BackupWaitTimeout(f"backup {record['label']} is still WAITING_FOR_WALS after {timeout:g} second(s): "
                                f"{ev.detail()}")
    return False
