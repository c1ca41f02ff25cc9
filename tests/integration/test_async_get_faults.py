"""Asynchronous get under faults (docs/architecture.md, "Asynchronous push and get"): stale answers, other clusters, spool file modes."""

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


def _archived(pg_factory, pp, n_segments: int):
    """A primary with 1 MB segments, archiving synchronously; returns it and n archived segment names."""
    pg = pg_factory("pg", conf={"archive_mode": "on", "archive_command": ""}, wal_segsize_mb=1)
    pp.stanza_create(pg)
    pg.set_conf({"archive_command": pp.archive_command(archive_async="n")})
    pg.reload()
    names = pg.generate_wal(n_segments, payload_bytes=1024)
    pg.wait_archived(names[-1], timeout=60)
    return pg, names


def test_async_get_refuses_wal_to_a_cluster_of_another_system(pg_factory, pgpush_cmd, work_dir):
    """As a sync get does (44): WAL of the stanza is never served to another cluster's recovery."""
    pp = Pgpush(pgpush_cmd, work_dir, archive_timeout=20)
    _pg, names = _archived(pg_factory, pp, 2)
    other = pg_factory("other", fresh=True, start=False)  # its own initdb: another system identifier
    for mode in ("n", "y"):
        dest = work_dir / f"dest-{mode}"
        res = pp.run("get", names[0], str(dest), archive_async=mode, pg1_path=str(other.datadir))
        assert res.returncode == 44, (mode, res.stderr)
        assert res.stderr.startswith("ERROR: [044]:"), res.stderr
        assert not dest.exists()
    assert not [n for n in os.listdir(pp.in_dir) if n.startswith(names[0][:16]) and len(n) == 24]


def test_prefetched_wal_is_not_readable_by_others(pg_factory, pgpush_cmd, work_dir):
    pp = Pgpush(pgpush_cmd, work_dir, archive_get_queue_max="4MB")
    pg, names = _archived(pg_factory, pp, 4)
    dest = work_dir / "dest"
    res = pp.run("get", names[0], str(dest), archive_async="y", pg1_path=str(pg.datadir))
    assert res.returncode == 0, res.stderr
    _wait_for(lambda: (pp.in_dir / names[1]).exists(), 30, "the prefetch of the next segment")
    for path in [dest, *(p for p in pp.in_dir.iterdir() if len(p.name) == 24)]:
        assert os.stat(path).st_mode & 0o077 == 0, (path, oct(os.stat(path).st_mode))
