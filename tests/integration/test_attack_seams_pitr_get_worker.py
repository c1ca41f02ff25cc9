"""Seams between the fixes: a get worker killed while recovery to a target waits for its segment.

An archive recovery (``recovery.signal``, a named target) runs on async get with ``process-max``
2; a get worker is killed (the OOM killer, ``kill -9``) while it writes a segment into the
spool.  PostgreSQL takes any failure of ``restore_command`` for the end of the archive: with a
target it stops with FATAL and must be restarted by hand, without one it ends recovery early.
A worker that died is not an answer about the segment: the parent asks another worker, and the
recovery reaches its target.
"""

from __future__ import annotations

import os
import time

import pytest
from harness import faults
from pgpush_env import Pgpush

pytestmark = pytest.mark.integration


def test_recovery_to_a_target_reaches_it_when_a_get_worker_is_killed_mid_file(pg_factory, pgpush_cmd, work_dir):
    pp = Pgpush(pgpush_cmd, work_dir, process_max=2, archive_timeout=30, archive_get_queue_max="16MB")
    pg = pg_factory("pg", conf={"archive_mode": "on", "archive_command": ""}, wal_segsize_mb=4)
    pp.stanza_create(pg)
    pg.set_conf({"archive_command": pp.archive_command(archive_async="n")})
    pg.reload()
    base = work_dir / "base"
    pg.run([pg.bin("pg_basebackup"), "-D", str(base), "-X", "none", "-c", "fast", *pg.conn_args()], check=True)
    pg.sql("create table marks(id int)")
    pg.generate_wal(4, random_payload=True, payload_bytes=3 << 20)
    pg.sql("insert into marks values (1)")
    pg.sql("select pg_create_restore_point('seams')")
    pg.sql("insert into marks values (2)")
    pg.wait_archived(pg.switch_wal(), timeout=60)
    pg.stop()

    restored = pg_factory("restored", init=False)
    restored._prepare_common()
    os.rename(base, restored.datadir)
    restored.set_conf({"port": restored.port, "unix_socket_directories": str(restored.socket_dir),
                       "archive_mode": "off", "restore_command": pp.restore_command(archive_async="y"),
                       "recovery_target_name": "seams", "recovery_target_action": "promote"})
    (restored.datadir / "recovery.signal").touch()
    strike = faults.MidFile(lambda: faults.pgpush_pids(work_dir, "worker"), pp.in_dir, lambda pid: faults.kill_process(None, pid),
                            timeout=60)
    try:
        restored.start(timeout=120)
        assert strike.result(60) is not None, "no get worker caught writing into the spool"
        deadline = time.monotonic() + 120
        while restored.is_running() and restored.sql("select pg_is_in_recovery()") == "t":
            assert time.monotonic() < deadline, restored.log_tail()
            time.sleep(0.3)
        log = restored.log_file.read_text(errors="replace")
        assert restored.is_running(), log[-3000:]
        assert "recovery ended before configured recovery target was reached" not in log
        assert restored.sql("select array_agg(id order by id) from marks") == "{1}"
    finally:
        strike.stop()
        faults.kill_leftovers(work_dir)
