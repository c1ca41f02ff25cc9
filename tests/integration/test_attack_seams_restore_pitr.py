"""Seams between the fixes: a restore killed mid-way, its --delta re-run, then PITR through async get.

An lz4-compressed, encrypted backup is restored with ``process-max`` 2; a restore worker is
killed (OOM killer, ``kill -9``) while it writes a file of the data directory.  The restore must
fail at once, clearly, with a code; the operator's re-run with ``--delta`` must succeed over what
the first one left, and PostgreSQL must then recover to a named restore point through the
``restore_command`` pgpush wrote (async get, the passphrase from the config file), not further.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time

import pytest
from backup_env import backup, setup_archiving
from harness import faults, procs
from pgpush_env import Pgpush

pytestmark = pytest.mark.integration

PASS = "seams passphrase"
DEADLINE = 90  # a restore still running by then waits without an end


def test_restore_with_a_worker_killed_fails_25_and_a_delta_rerun_recovers_to_the_restore_point(
        pg_factory, pgpush_cmd, work_dir):
    conf = work_dir / "pgpush.conf"
    conf.write_text(f"[global]\nrepo1-cipher-type=aes-256-gcm\nrepo1-cipher-pass={PASS}\n")
    conf.chmod(0o600)
    procs.chown_tree(conf, "postgres")
    pp = Pgpush(pgpush_cmd, work_dir, config=conf, compress_type="lz4", process_max=2)
    pg = pg_factory("pg", conf={"archive_mode": "on", "archive_command": ""}, wal_segsize_mb=1)
    setup_archiving(pp, pg)
    pg.sql("create table filler as select g, md5(g::text) m from generate_series(1, 300000) g")
    backup(pp, pg, "--type=full", "--wait", "--wait-timeout=60")
    pg.sql("create table marks(id int); insert into marks values (1)")
    pg.sql("select pg_create_restore_point('seams')")
    pg.sql("insert into marks values (2)")
    pg.wait_archived(pg.switch_wal(), timeout=60)
    pg.stop()

    restored = pg_factory("restored", init=False)
    restored._prepare_common()
    argv = ["runuser", "-u", "postgres", "--", *pp.argv("restore", f"--pg1-path={restored.datadir}")]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        procs.wait_for(lambda: procs.children_of(proc.pid), 10, 0.005, "the restore to start")
        runner = procs.children_of(proc.pid)[0]  # runuser's child: pgpush restore
        victim = faults.wait_mid_file(lambda: procs.children_of(runner), restored.datadir, 30)
        assert victim is not None, "no restore worker caught writing the data directory"
        procs.signal_pids([victim], signal.SIGKILL)
        try:
            _out, err = proc.communicate(timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            pytest.fail(f"restore with a killed worker still running after {DEADLINE}s")
    finally:
        if proc.poll() is None:
            procs.kill_tree(proc.pid, sig=signal.SIGKILL)
        proc.wait(timeout=10)
    assert proc.returncode == 25, err
    assert re.fullmatch(rf"ERROR: \[025\]: worker process {victim} died \(killed by signal 9\) while working on [^\n]*\n",
                        err), err

    res = pp.run("restore", f"--pg1-path={restored.datadir}", "--delta", "--archive-async", "--type=name",
                 "--target=seams", "--target-action=promote")
    assert res.returncode == 0, res.stderr
    assert PASS not in (restored.datadir / "postgresql.auto.conf").read_text()
    restored.set_conf({"port": restored.port, "unix_socket_directories": str(restored.socket_dir),
                       "archive_mode": "off"})
    try:
        restored.start(timeout=120)
        deadline = time.monotonic() + 120
        while restored.sql("select pg_is_in_recovery()") == "t":
            assert time.monotonic() < deadline, restored.log_tail()
            time.sleep(0.3)
        assert restored.sql("select array_agg(id order by id) from marks") == "{1}"
        assert restored.sql("select count(*) from filler") == "300000"
        assert "found" in pp.log_text("archive-get") and "asynchronously" in pp.log_text("archive-get")
    finally:
        faults.kill_leftovers(work_dir)  # the get parent lingers for recovery's next request
