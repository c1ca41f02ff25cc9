"""Seams between the fixes: a standby fed by async get while the backup host goes down and comes back.

The primary archives over SFTP; a standby with no streaming replays only what ``get`` (async,
process-max 2) brings from the archive.  The backup host is killed (sshd and its sessions)
while both run, the primary produces WAL it cannot archive, then the host comes back.  The
standby must neither take the outage for the end of the archive (it would have to be rebuilt
had it been a recovery) nor stall: once the host is back it replays everything archived.
"""

from __future__ import annotations

import os
import re
import time

import pytest
from harness import faults
from pgpush_env import Pgpush

pytestmark = pytest.mark.integration

OUTAGE = 8  # seconds: longer than archive-timeout, so the standby's get calls fail meanwhile


def test_standby_on_async_get_rides_out_a_backup_host_outage_and_replays_what_is_archived_late(
        pg_factory, pgpush_cmd, work_dir, sshd):
    pp = Pgpush(pgpush_cmd, work_dir, repo=sshd.pgpush_options(), process_max=2, archive_timeout=3,
                repo1_host_timeout=1, archive_get_queue_max="4MB")
    pg = pg_factory("pg", conf={"archive_mode": "on", "archive_command": "", "wal_keep_size": "1GB"},
                    wal_segsize_mb=1)
    pp.stanza_create(pg)
    pg.set_conf({"archive_command": pp.archive_command(archive_async="n")})
    pg.reload()
    base = work_dir / "base"
    pg.run([pg.bin("pg_basebackup"), "-D", str(base), "-X", "none", "-c", "fast", *pg.conn_args()], check=True)
    pg.sql("create table marks(id int)")
    pg.generate_wal(3, payload_bytes=300_000)
    pg.sql("insert into marks values (0)")
    # Before the switch: a record written after it (a checkpoint's, the background writer's running-xacts
    # every 15 s) lands in a segment not yet archived, which the standby cannot replay yet.
    reached = pg.sql("select pg_current_wal_insert_lsn()")
    pg.wait_archived(pg.switch_wal(), timeout=60)

    standby = pg_factory("standby", init=False)
    standby._prepare_common()
    os.rename(base, standby.datadir)
    standby.set_conf({"port": standby.port, "unix_socket_directories": str(standby.socket_dir),
                      "archive_mode": "off", "hot_standby": True, "wal_retrieve_retry_interval": "1s",
                      "restore_command": pp.restore_command(archive_async="y")})
    (standby.datadir / "standby.signal").touch()
    try:
        _outage_and_back(pp, pg, standby, sshd, reached)
    finally:
        faults.kill_leftovers(work_dir)  # a lingering get parent and its workers


def _outage_and_back(pp, pg, standby, sshd, reached: str) -> None:
    standby.start(timeout=60)
    standby.wait_replayed(reached, timeout=60)

    sshd.stop()
    try:
        pg.sql("insert into marks values (1)")
        pg.generate_wal(3, payload_bytes=300_000)  # cannot be archived now
        time.sleep(OUTAGE)
        assert standby.sql("select pg_is_in_recovery()") == "t"
    finally:
        sshd.start()
    pg.sql("insert into marks values (2)")
    target = pg.sql("select pg_current_wal_insert_lsn()")
    pg.wait_archived(pg.switch_wal(), timeout=60)  # a new segment wakes the archiver from its back-off

    standby.wait_replayed(target, timeout=90)  # no stall once the host is back
    assert standby.sql("select array_agg(id order by id) from marks") == "{0,1,2}"
    log = standby.log_file.read_text(errors="replace")
    assert "Traceback" not in log
    bad = [line for line in log.splitlines() if line.startswith("ERROR") and not re.match(r"ERROR: \[\d{3}\]: ", line)]
    assert not bad, bad
    assert re.search(r"ERROR: \[103\]: ", log), "the outage was not reported with the repository's code"
    assert not list(pp.in_dir.glob("*.pgpush.tmp"))
