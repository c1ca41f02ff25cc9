"""``check``: the configuration, the repository, the stanza and archiving all work, end to end.

On a primary it forces a WAL switch and waits up to ``archive-timeout`` for
that very segment to appear in the repository: only then is it known that
PostgreSQL's ``archive_command`` reaches this stanza.  On a standby a switch
is impossible; it checks what applies (stanza, cluster identity,
``archive_mode``) and, when ``primary-conninfo`` is set, switches WAL on the
primary and waits for that segment instead.
"""

from __future__ import annotations

import os
import time

from pgpush import wal
from pgpush.config import Config
from pgpush.errors import ArchiveDisabledError, ArchiveTimeoutError, OptionInvalidValueError
from pgpush.log import LOG
from pgpush.pg import pgconn
from pgpush.pg.nudge import PrimaryNudge
from pgpush.repo import walarchive
from pgpush.repo.repository import Repository

POLL = 0.2


def switch_and_name(db: pgconn.PgConn, segment_size: int) -> str:
    """Force a switch on a primary and return the name of the segment it completed.

    When nothing was written since the last switch the switch is a no-op,
    so a logical message is written first: there is always a fresh segment
    to wait for.
    """
    insert = wal.lsn_to_int(str(db.scalar("SELECT pg_current_wal_insert_lsn()::text")))
    if insert % segment_size <= wal.LONG_HEADER.size:
        try:
            db.execute("SELECT pg_logical_emit_message(false, 'pgpush', 'check')")
        except Exception:  # noqa: BLE001 - not allowed for this role: a checkpoint writes WAL too
            db.execute("CHECKPOINT")
    lsn = str(db.scalar("SELECT pg_switch_wal()::text"))
    tli = int(str(db.scalar("SELECT pg_walfile_name(pg_current_wal_insert_lsn())"))[:8], 16)
    return wal.stop_segment(tli, lsn, segment_size)


def wait_archived(repo: Repository, segment: str, timeout: float, db: pgconn.PgConn | None) -> float:
    """Poll the repository for ``segment``; returns the seconds it took."""
    archive_id = repo.archive_id()
    started = time.monotonic()
    while True:
        if walarchive.find_wal(repo, archive_id, segment):
            return time.monotonic() - started
        if time.monotonic() - started >= timeout:
            hint = ""
            if db is not None:
                row = db.execute("SELECT last_failed_wal, last_failed_time::text FROM pg_stat_archiver")[0]
                if row[0]:
                    hint = f"\nHINT: pg_stat_archiver shows archive_command last failed for {row[0]} at {row[1]}"
            raise ArchiveTimeoutError(
                f"WAL segment {segment} was not archived to the repository within {timeout:g} second(s) "
                "(archive-timeout)\nHINT: check that archive_command is pgpush push with this stanza and repository"
                + hint)
        time.sleep(POLL)


def run(cfg: Config) -> str:
    repo = Repository.from_config(cfg)
    try:
        info = repo.load_archive_info()
        timeout = float(cfg["archive-timeout"])
        with pgconn.connect_pg1(cfg) as db:
            system_id = db.system_id()
            repo.check_cluster(system_id, db.version, "pg1")
            if cfg.get("pg1-path"):
                data_dir = db.data_directory()
                if os.path.realpath(data_dir) != os.path.realpath(str(cfg["pg1-path"])):
                    raise OptionInvalidValueError(f"option 'pg1-path' is '{cfg['pg1-path']}' but pg1 runs in '{data_dir}'")
            segment_size = db.segment_size()
            mode = db.setting("archive_mode")
            standby = db.in_recovery()
            what = f"stanza '{cfg.stanza}' (system {system_id}, PostgreSQL {info['db']['version']}) in {repo.storage.description}"
            if standby:
                if not cfg.get("primary-conninfo"):
                    LOG.info("pg1 is a standby: a WAL switch cannot be forced; set primary-conninfo to check archiving")
                    return f"check of standby pg1 passed: {what}, archive_mode={mode} (archiving not tested)"
                primary = PrimaryNudge(cfg, system_id, segment_size)
                try:
                    segment = switch_and_name(primary.db, segment_size)
                    took = wait_archived(repo, segment, timeout, None)
                finally:
                    primary.close()
                return f"check of standby pg1 passed: {what}; WAL {segment} switched on the primary archived in {took:.1f}s"
            if mode == "off":
                raise ArchiveDisabledError("archive_mode is off on pg1: WAL is not archived")
            if not db.setting("archive_command").strip():
                raise ArchiveDisabledError("archive_command is empty on pg1: WAL is not archived")
            segment = switch_and_name(db, segment_size)
            LOG.info(f"switched WAL: waiting for {segment} in the repository")
            took = wait_archived(repo, segment, timeout, db)
            return f"check passed: {what}; WAL {segment} archived in {took:.1f}s"
    finally:
        repo.storage.close()
