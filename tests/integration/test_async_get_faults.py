"""Asynchronous get under faults (SPEC §6): stale answers, other clusters, spool file modes."""

from __future__ import annotations

import os
import shutil
import time

import pytest
from pgpush_env import Pgpush

pytestmark = pytest.mark.integration


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_segment_archived_after_a_missing_answer_is_found_by_the_next_recovery(pg_factory, pgpush_cmd, work_dir):
    """A "not in the archive" marker written while prefetching for one request is never the answer to
    a later one: the segment archived in between is restored and recovery reaches the later mark."""
    pp = Pgpush(pgpush_cmd, work_dir, archive_get_queue_max="8MB", archive_timeout=30)
    pg = pg_factory("pg", conf={"archive_mode": "on", "archive_command": "", "wal_keep_size": "1GB"},
                    wal_segsize_mb=1)
    pp.stanza_create(pg)
    pg.set_conf({"archive_command": pp.archive_command(archive_async="n")})
    pg.reload()
    base = work_dir / "base"
    pg.run([pg.bin("pg_basebackup"), "-D", str(base), "-X", "none", "-c", "fast", "-h", str(pg.socket_dir),
            "-p", str(pg.port), "-U", "postgres"], check=True)
    pg.sql("create table marks(id int)")
    pg.generate_wal(2, payload_bytes=1024)
    pg.sql("insert into marks values (1)")
    first_target = pg.sql("select pg_current_wal_insert_lsn()")
    switched = pg.generate_wal(4, payload_bytes=600 * 1024)
    # two segments past the first target: beyond what recovery reads ahead of its replay
    # (wal_decode_buffer_size), inside the prefetch window
    withheld = switched[2]
    pg.sql("insert into marks values (2)")
    pg.wait_archived(pg.switch_wal(), timeout=60)
    pg.stop()
    stored = next((work_dir / "repo").rglob(f"{withheld}-*"))
    aside = work_dir / "withheld"
    shutil.move(str(stored), str(aside))  # not archived yet, as far as the first recovery can tell

    restored = pg_factory("restored", init=False)
    restored._prepare_common()
    os.rename(base, restored.datadir)
    restored.set_conf({
        "port": restored.port, "unix_socket_directories": str(restored.socket_dir), "archive_mode": "off",
        "restore_command": pp.restore_command(archive_async="y"), "recovery_target_lsn": first_target,
        "recovery_target_action": "shutdown",
        "recovery_prefetch": "off",
    })
    (restored.datadir / "recovery.signal").touch()
    # recovery_target_action=shutdown: the server stops by itself at the target, so no "pg_ctl -w"
    restored.run([restored.bin("pg_ctl"), "-D", str(restored.datadir), "-l", str(restored.log_file), "-W", "start"],
                 check=True)
    _wait_for(lambda: "database system is shut down" in restored.log_tail(200) and not restored.is_running(), 120,
              "recovery to stop at the first target")
    marker = pp.in_dir / f"{withheld}.ok"
    _wait_for(marker.exists, 60, f"the prefetch to mark {withheld} missing")

    shutil.move(str(aside), str(stored))  # now it is archived
    restored.set_conf({"recovery_target_lsn": "", "recovery_target_action": "promote"})
    restored.start(timeout=120)
    _wait_for(lambda: restored.sql("select pg_is_in_recovery()") == "f", 120, "the end of recovery")
    assert restored.sql("select array_agg(id order by id) from marks") == "{1,2}", restored.log_tail()
