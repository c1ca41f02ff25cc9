"""backup/restore/verify with process-max > 1: every wait on the pool's workers ends."""

from __future__ import annotations

import signal
import subprocess

import pytest
from backup_env import backup, backups, pg_opts, setup_archiving
from harness import faults, procs
from pgpush_env import Pgpush

pytestmark = pytest.mark.integration

DEADLINE = 90  # a backup still running by then waits without an end


def _child_of(pid: int) -> int:
    found: list[int] = []

    def child() -> bool:
        found[:] = procs.children_of(pid)
        return bool(found)

    procs.wait_for(child, 10, 0.005, "the backup process to start")
    return found[0]


def test_backup_worker_killed_mid_file_fails_the_backup_and_the_next_one_succeeds(pg_factory, pgpush_cmd, work_dir):
    pp = Pgpush(pgpush_cmd, work_dir, process_max=2, compress_type="gz", compress_level=9)
    pg = pg_factory("pg", conf={"archive_mode": "on", "archive_command": ""}, wal_segsize_mb=1)
    setup_archiving(pp, pg)
    pg.sql("create table filler as select g, md5(g::text) m from generate_series(1, 300000) g")
    argv = ["runuser", "-u", "postgres", "--", *pp.argv("backup", "--type=full", *pg_opts(pg))]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        runner = _child_of(proc.pid)
        victim = faults.wait_mid_file(lambda: procs.children_of(runner), pg.datadir, 30)
        assert victim is not None, "no backup worker caught reading the data directory"
        procs.signal_pids([victim], signal.SIGKILL)
        try:
            _out, err = proc.communicate(timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            pytest.fail(f"backup with a killed worker still running after {DEADLINE}s")
    finally:
        if proc.poll() is None:
            procs.kill_tree(proc.pid, sig=signal.SIGKILL)
        proc.wait(timeout=10)
    assert proc.returncode == 25, err
    assert err.startswith(f"ERROR: [025]: worker process {victim} died (killed by signal 9) while working on"), err
    assert "Traceback" not in err
    label, _res = backup(pp, pg, "--type=full", "--wait", "--wait-timeout=60")
    assert backups(pp)[label]["status"] == "DONE"
