"""``check``: the configuration, the repository, the stanza and archiving all work, end to end.

On a primary it forces a WAL switch and waits up to ``archive-timeout`` for
that very segment to appear in the repository: only then is it known that
PostgreSQL's ``archive_command`` reaches this stanza.  On a standby a switch
is impossible; it checks what applies (stanza, cluster identity,
``archive_mode``) and, when ``primary-conninfo`` is set, switches WAL on the
primary and waits for that segment instead.

With several repositories every one is checked (``--repo=N``: that one): its
configuration, the stanza in it, the cluster's identity, and the switched
segment arriving in it, all within the one ``archive-timeout``.  A repository
that fails does not stop the others being checked; the command then fails
with the first failing repository's code, the message naming each that failed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TypeVar

from pgpush import wal
from pgpush.archive.push_state import combined
from pgpush.config import Config
from pgpush.errors import ArchiveDisabledError, ArchiveTimeoutError, OptionInvalidValueError, PgPushError
from pgpush.log import LOG
from pgpush.pg import pgconn
from pgpush.pg.nudge import PrimaryNudge
from pgpush.repo import walarchive
from pgpush.repo.repository import Repository

POLL = 0.2
T = TypeVar("T")


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


def wait_archived(repo: Repository, segment: str, timeout: float, db: pgconn.PgConn | None,
                  started: float | None = None) -> float:
    """Poll the repository for ``segment`` until ``timeout`` seconds after ``started`` (now when
    not given); returns the seconds it took since ``started``."""
    archive_id = repo.archive_id()
    started = time.monotonic() if started is None else started
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


class _Checked:
    """The repositories being checked, and what failed in each (with several, a failure is kept
    and the others go on; with one, it is raised at once, as ever)."""

    def __init__(self, cfg: Config):
        self.views = cfg.repos()
        self.several = len(self.views) > 1
        self.repos: list[Repository] = []
        self.failures: dict[int, PgPushError] = {}

    def attempt(self, index: int, step: Callable[..., T], *args: object) -> T | None:
        """``step(*args)``, or None when it fails in repository ``index`` (and there are several)."""
        try:
            return step(*args)
        except PgPushError as exc:
            if not self.several:
                raise
            self.failures.setdefault(index, exc.in_repo(f"repo{index}"))
            return None

    def healthy(self) -> list[Repository]:
        return [r for r in self.repos if r.index not in self.failures]

    def raise_failures(self) -> None:
        if self.failures:
            raise combined([self.failures[i] for i in sorted(self.failures)])

    def close(self) -> None:
        for repo in self.repos:
            repo.storage.close()


def run(cfg: Config) -> str:
    checked = _Checked(cfg)
    try:
        return _run(cfg, checked)
    finally:
        checked.close()


def _run(cfg: Config, checked: _Checked) -> str:
    infos: dict[int, dict] = {}
    for view in checked.views:
        repo = checked.attempt(view.repo_index, Repository.from_config, view)
        if isinstance(repo, Repository):
            checked.repos.append(repo)
            info = checked.attempt(repo.index, repo.load_archive_info)
            if isinstance(info, dict):
                infos[repo.index] = info
    if not checked.healthy():
        checked.raise_failures()
    timeout = float(cfg["archive-timeout"])
    with pgconn.connect_pg1(cfg) as db:
        system_id = db.system_id()
        for repo in checked.healthy():
            checked.attempt(repo.index, repo.check_cluster, system_id, db.version, "pg1")
        if cfg.get("pg1-path"):
            data_dir = db.data_directory()
            if os.path.realpath(data_dir) != os.path.realpath(str(cfg["pg1-path"])):
                raise OptionInvalidValueError(f"option 'pg1-path' is '{cfg['pg1-path']}' but pg1 runs in '{data_dir}'")
        segment_size = db.segment_size()
        mode = db.setting("archive_mode")
        standby = db.in_recovery()
        if not checked.healthy():
            checked.raise_failures()
        what = _describe(cfg, checked, system_id, infos)
        if standby:
            if not cfg.get("primary-conninfo"):
                checked.raise_failures()
                LOG.info("pg1 is a standby: a WAL switch cannot be forced; set primary-conninfo to check archiving")
                return f"check of standby pg1 passed: {what}, archive_mode={mode} (archiving not tested)"
            primary = PrimaryNudge(cfg, system_id, segment_size)
            try:
                segment = switch_and_name(primary.db, segment_size)
                took = _wait_all(checked, segment, timeout, None)
            finally:
                primary.close()
            return f"check of standby pg1 passed: {what}; WAL {segment} switched on the primary archived in {took}"
        if mode == "off":
            raise ArchiveDisabledError("archive_mode is off on pg1: WAL is not archived")
        if not db.setting("archive_command").strip():
            raise ArchiveDisabledError("archive_command is empty on pg1: WAL is not archived")
        segment = switch_and_name(db, segment_size)
        LOG.info(f"switched WAL: waiting for {segment} in the repository")
        took = _wait_all(checked, segment, timeout, db)
        return f"check passed: {what}; WAL {segment} archived in {took}"


def _describe(cfg: Config, checked: _Checked, system_id: int, infos: dict[int, dict]) -> str:
    repos = checked.healthy()
    version = infos[repos[0].index]["db"]["version"]
    where = (", ".join(f"{r.label} ({r.storage.description})" for r in repos) if checked.several
             else repos[0].storage.description)
    return f"stanza '{cfg.stanza}' (system {system_id}, PostgreSQL {version}) in {where}"


def _wait_all(checked: _Checked, segment: str, timeout: float, db: pgconn.PgConn | None) -> str:
    """Wait for ``segment`` in every repository still standing, all within one ``timeout``;
    how long each took.  Raises what failed (every failing repository named)."""
    started = time.monotonic()
    took: list[str] = []
    for repo in checked.healthy():
        seconds = checked.attempt(repo.index, wait_archived, repo, segment, timeout, db, started)
        if isinstance(seconds, float):
            took.append(f"{seconds:.1f}s" + (f" ({repo.label})" if checked.several else ""))
    checked.raise_failures()
    return ", ".join(took)
