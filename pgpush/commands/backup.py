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
from collections.abc import Iterator
from typing import cast

from pgpush import __version__, wal
from pgpush.commands import forkpool
from pgpush.commands.progress import Progress
from pgpush.config import Config
from pgpush.errors import (
    ArchiveDisabledError,
    BackupWaitTimeout,
    FileMissingError,
    OptionInvalidValueError,
    VersionNotSupportedError,
)
from pgpush.log import LOG
from pgpush.pg import pgconn, pgdata
from pgpush.pg.nudge import PrimaryNudge
from pgpush.repo import catalog, catalog_lock, manifest_check, readahead, status
from pgpush.repo.catalog import Catalog
from pgpush.repo.records import BackupRecord, Manifest, ManifestFile, ManifestPath
from pgpush.repo.repository import Repository
from pgpush.repo.status import DONE, FAILED, WAITING, ArchiveListing
from pgpush.storage.base import CHUNK, StorageError

TYPES = ("full", "diff", "incr")
POLL = 0.5
NUDGE_INTERVAL = 5.0
STARTED = catalog.STARTED
HEARTBEAT = 300.0  # seconds between refreshes of the in-progress marker (expire reads it, see expire.in_progress)
HOLE_GRACE = 5.0  # a hole may be an out-of-order asynchronous push that completes in a moment


# -- worker ---------------------------------------------------------------------------------------


def sha1_file(path: str) -> tuple[str, int]:
    h = hashlib.sha1()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def backup_file(repo: Repository, job: tuple[str, str, str, ManifestFile | None]) -> ManifestFile | None:
    """Store one file (or reference the prior backup's copy); None when it vanished meanwhile.

    ``job`` = (manifest name, absolute path, label dir, prior entry or None).
    The SHA-1 recorded is of the bytes actually stored.  Only the source file vanishing
    means None: a "no such file" from the repository's side (a directory of the backup
    removed, a file where a directory should be) fails the backup, never drops the file.
    """
    name, path, label_dir, prior = job
    try:
        size = os.stat(path).st_size
        if prior is not None and prior["size"] == size:
            digest, read = sha1_file(path)
            if digest == prior["sha1"] and read == size:
                return {"name": name, "size": read, "sha1": digest, "ext": prior["ext"],
                        "repo_size": prior["repo_size"], "reference": prior["reference"]}
    except FileNotFoundError:
        return None  # removed while backed up (a dropped relation): WAL replay recreates what matters
    h = hashlib.sha1()
    counted = [0]
    vanished = [False]

    def chunks() -> Iterator[bytes]:
        try:
            fh = open(path, "rb")
        except FileNotFoundError:
            vanished[0] = True
            raise
        with fh:
            while chunk := fh.read(CHUNK):
                h.update(chunk)
                counted[0] += len(chunk)
                yield chunk

    ext = repo.extension()
    payload = repo.encode(chunks())
    if size > CHUNK:  # big file: compress in a thread while the storage sends
        payload = readahead.ahead(payload)
    target = f"{label_dir}/{name}{ext}"
    try:
        written = repo.storage.put(target, payload, overwrite=True)
    except Exception as exc:
        if vanished[0]:
            return None  # removed between the stat and the open (the storage may have wrapped the error)
        if isinstance(exc, FileNotFoundError):
            raise StorageError(f"unable to write '{target}': {exc} ({repo.storage.description})") from None
        raise
    return {"name": name, "size": counted[0], "sha1": h.hexdigest(), "ext": ext, "repo_size": written, "reference": None}


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


def check_cluster(cfg: Config, repo: Repository, db: pgconn.PgConn, pgdata_path: str) -> tuple[bool, int]:
    """pg1 must be the stanza's cluster, at ``pg1-path``, with WAL archived; returns (standby, system id)."""
    if db.version < 10:
        raise VersionNotSupportedError(f"PostgreSQL {db.version} is not supported (10 or later is required)")
    system_id = db.system_id()
    repo.check_cluster(system_id, db.version, "pg1")
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


def run(cfg: Config) -> BackupRecord:
    """Take the backup; returns its final record.  Raises BackupWaitTimeout (3) when ``--wait-timeout`` expires."""
    pgdata_path = os.path.abspath(str(cfg.require("pg1-path")))
    btype = cfg.get("type") or "full"
    if btype not in TYPES:
        raise OptionInvalidValueError(
            f"option 'type' has invalid value '{btype}' {cfg.sources.get('type', '')}: one of full, diff, incr is expected")
    repo = Repository.from_config(cfg)
    nudger: PrimaryNudge | None = None
    try:
        repo.load_archive_info()
        with pgconn.connect_pg1(cfg) as db:
            standby, system_id = check_cluster(cfg, repo, db, pgdata_path)
            segment_size = db.segment_size()
            if standby and cfg.get("primary-conninfo"):
                nudger = PrimaryNudge(cfg, system_id, segment_size)
            record = _take(cfg, repo, db, pgdata_path, btype, standby, system_id, segment_size, nudger)
        return settle(cfg, repo, record, nudger)
    finally:
        if nudger is not None:
            nudger.close()
        repo.storage.close()


def _take(cfg: Config, repo: Repository, db: pgconn.PgConn, pgdata_path: str, btype: str, standby: bool,
          system_id: int, segment_size: int, nudger: PrimaryNudge | None) -> BackupRecord:
    cat = Catalog(repo)
    catalog.evaluate_all(repo, cat.reconciled())  # settle statuses before choosing (outside the lock)
    archive_id = repo.archive_id()
    with catalog_lock.catalog_lock(cfg, repo, "backup"):
        btype, prior, prior_index, label = _claim(cat, btype, archive_id, system_id)
    label_dir = cat.label_dir(label)
    LOG.info(f"{btype} backup {label} of {'standby' if standby else 'primary'} pg1 started"
             + (f", prior {prior['label']}" if prior else ""))
    try:
        start_time = time.time()
        start_lsn = _start(db, label)
        LOG.info(f"backup start LSN {start_lsn}")
        start = {"start_lsn": start_lsn, "segment_size": segment_size, "archive_id": archive_id}
        _check_still_ours(cat, label)
        cat.mark_started(label, start)  # expire keeps the WAL from here on
        files, dirs, links = _copy(cfg, repo, pgdata_path, label_dir, db.version, prior_index, start)
        stop_lsn, label_file, map_file = _stop(db)
        stop_time = time.time()
        LOG.info(f"backup stop LSN {stop_lsn}")
        files.append(store_bytes(repo, label_dir, f"{pgdata.PREFIX}/backup_label", label_file.encode()))
        if map_file:
            files.append(store_bytes(repo, label_dir, f"{pgdata.PREFIX}/tablespace_map", map_file.encode()))
        start_tli, stop_tli = _timelines(db, standby, label_file, stop_lsn)
        wal_start = wal.lsn_segment(start_tli, start_lsn, segment_size)
        wal_stop = wal.stop_segment(stop_tli, stop_lsn, segment_size)
        if wal.segment_number(wal_stop, segment_size) < wal.segment_number(wal_start, segment_size):
            wal_stop = wal.segment_name(stop_tli, wal.segment_number(wal_start, segment_size), segment_size)
        own = [f for f in files if not f.get("reference")]
        record: BackupRecord = {
            "label": label, "type": btype, "prior": prior["label"] if prior else None, "status": WAITING,
            "status_detail": None, "from_standby": standby, "timeline": start_tli, "stop_timeline": stop_tli,
            "start_lsn": start_lsn, "stop_lsn": stop_lsn, "wal_start": wal_start, "wal_stop": wal_stop,
            "start_time": status.iso_utc(start_time), "stop_time": status.iso_utc(stop_time, ceil=True),
            "size": sum(f["size"] for f in files), "repo_size": sum(f["repo_size"] for f in own),
            "backup_size": sum(f["size"] for f in own), "file_count": len(files),
            "reference": sorted({ref for f in files if (ref := f.get("reference"))}),
            "archive_id": archive_id, "pg_version": db.version, "system_id": system_id,
            "segment_size": segment_size, "pgpush_version": __version__,
        }
        if nudger is not None:
            nudger.nudge()
        ev = status.evaluate(record, ArchiveListing(repo, archive_id).window([record], segment_size))
        record = status.with_status(record, ev)
        manifest: Manifest = {"format": 1, "backup": record, "files": sorted(files, key=lambda f: f["name"]),
                    "dirs": dirs, "links": links}
        _commit(cfg, cat, label, manifest)
    except BaseException:
        try:
            repo.storage.delete_tree(label_dir)
        except Exception as exc:  # noqa: BLE001 - the original error matters more
            LOG.warn(f"unable to remove the incomplete backup '{label_dir}': {exc}")
        raise
    cat.add(record)
    LOG.info(f"backup {label} stored: {record['file_count']} files, WAL {wal_start} to {wal_stop}")
    return record


def _claim(cat: Catalog, btype: str, archive_id: str,
           system_id: int) -> tuple[str, BackupRecord | None, dict[str, ManifestFile], str]:
    """Choose the prior, read its files, take a free label and make its directory exist.

    Returns (type, prior, prior's files, label).

    Runs under the catalog lock: once the directory exists, ``expire`` sees the backup in
    progress and keeps its full's whole chain, so the prior chosen here is never removed.
    """
    backups = cat.reconciled()
    prior = None
    if btype != "full":
        prior = choose_prior(backups, btype, archive_id, system_id)
        if prior is None:
            LOG.warn(f"no prior backup exists, {btype} backup has been changed to full")
            btype = "full"
    prior_index = {}
    if prior is not None:
        checked = manifest_check.check(cat.read_manifest(prior["label"]), prior["label"], "no backup was taken")
        prior_index = prior_files(checked)
    labels = {b["label"] for b in backups} | set(cat.storage.list_dirs(cat.repo.backup_root))
    while True:
        label = make_label(btype, prior["label"][:16] if prior else None, time.time())
        if label not in labels:
            break
        time.sleep(0.2)
    cat.mark_started(label)
    return btype, prior, prior_index, label


def _commit(cfg: Config, cat: Catalog, label: str, manifest: Manifest) -> None:
    """Write the manifest (the commit point), only if the label directory is still ours.

    Under the catalog lock, so ``expire`` either removed the directory before (the marker is
    gone: the backup fails instead of recording files that no longer exist) or sees the manifest.
    The same holds for the backups this one references (:func:`_check_references_kept`).
    """
    with catalog_lock.catalog_lock(cfg, cat.repo, "backup"):
        _check_still_ours(cat, label)
        _check_references_kept(cat, manifest["backup"])
        cat.write_manifest(label, manifest)
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


def _copy(cfg: Config, repo: Repository, pgdata_path: str, label_dir: str, major: int,
          prior_index: dict[str, ManifestFile], start: dict) -> tuple[list[ManifestFile], list[ManifestPath], list[ManifestPath]]:
    """Copy every file (pg_control last), refreshing the in-progress marker (``start``); returns manifest
    files, dirs and links."""
    entries = pgdata.scan(pgdata_path, major)
    by_name = {e.name: e for e in entries}
    regular = [e for e in entries if e.kind == "file" and e.name != pgdata.CONTROL]
    control = by_name.get(pgdata.CONTROL)
    if control is None:
        raise FileMissingError(f"'{pgdata_path}/global/pg_control' does not exist: is pg1-path a data directory?")
    regular.sort(key=lambda e: -e.size)
    progress = Progress(f"backup {label_dir.rsplit('/', 1)[-1]}", len(regular) + 1,
                        sum(e.size for e in regular) + control.size, str(cfg["log-level-console"]))
    files: list[ManifestFile] = []
    label = label_dir.rsplit("/", 1)[-1]
    beat = [time.monotonic()]

    def collect(job: tuple, result: ManifestFile | None) -> None:
        entry = by_name[job[0]]
        progress.advance(entry.size)
        if time.monotonic() - beat[0] >= HEARTBEAT:  # still alive: expire must not take it for a crashed one
            cat = Catalog(repo)
            _check_still_ours(cat, label)
            cat.mark_started(label, start)
            beat[0] = time.monotonic()
        if result is None:
            LOG.detail(f"file '{entry.path}' was removed during the backup")
            return
        result["mode"], result["mtime"] = f"{entry.mode:04o}", entry.mtime
        result["user"], result["group"] = entry.user, entry.group
        files.append(result)

    jobs = [(e.name, e.path, label_dir, prior_index.get(e.name)) for e in regular]
    try:
        forkpool.run(cfg, backup_file, jobs, collect, parent_repo=repo)
        job = (control.name, control.path, label_dir, None)
        collect(job, backup_file(repo, job))
    finally:
        progress.close()
    # as_dict builds ManifestPath entries; pg/ may not import repo/, so it cannot say so itself
    dirs = [cast("ManifestPath", e.as_dict()) for e in entries if e.kind == "dir"]
    links = [cast("ManifestPath", e.as_dict()) for e in entries if e.kind == "link"]
    return files, dirs, links


def settle(cfg: Config, repo: Repository, record: BackupRecord, nudger: PrimaryNudge | None) -> BackupRecord:
    """Report the status; with ``--wait`` poll (nudging the primary) until DONE or ``--wait-timeout``.

    Evaluated again right away: WAL archived between the backup's first
    evaluation and its entry in backup.info was seen by no push.
    """
    wait = bool(cfg["wait"])
    timeout = cfg.get("wait-timeout")
    started = time.monotonic()
    last_nudge = started
    hole_since: float | None = None
    cat = Catalog(repo)
    size = int(record["segment_size"])
    while True:
        ev = status.evaluate(record, ArchiveListing(repo, record["archive_id"]).window([record], size))
        if ev.status != record["status"]:
            cat.set_statuses({record["label"]: (record["status"], ev)})
            record = status.with_status(record, ev)
        if ev.status == DONE:
            return record
        now = time.monotonic()
        if ev.status == FAILED:
            hole_since = hole_since or now
            if ev.dropped or now - hole_since >= HOLE_GRACE:
                raise FileMissingError(f"backup {record['label']} is FAILED: {ev.detail()}")
        else:
            hole_since = None
            if not wait:
                return record
            if timeout is not None and now - started >= float(timeout):
                raise BackupWaitTimeout(
                    f"backup {record['label']} is still WAITING_FOR_WALS after {float(timeout):g} second(s): "
                    f"{ev.detail()}")
        if nudger is not None and now - last_nudge >= NUDGE_INTERVAL:
            nudger.nudge(None if timeout is None or not wait else started + float(timeout))
            last_nudge = now
        time.sleep(POLL)
