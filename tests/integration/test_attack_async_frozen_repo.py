"""Commands with process-max > 1 against a repository that stops answering mid-run (sshd SIGSTOPped):
each ends by a deadline derived from its options, with the repository's code (103)."""

from __future__ import annotations

import signal
import subprocess

import pytest
from backup_env import backup, setup_archiving
from harness import procs
from pgpush_env import Pgpush

pytestmark = pytest.mark.integration

HOST_TIMEOUT = 3
PROTOCOL_TIMEOUT = 8


def test_verify_of_a_repository_that_freezes_mid_run_ends_with_103(pg_factory, pgpush_cmd, work_dir, sshd):
    """verify read on file after file, each failing only after repo1-host-timeout and recorded as an
    'unreadable' file: with a thousand files it ran for hours and then said 042 (corrupt).  An
    unreachable repository ends it at once with 103."""
    pp = Pgpush(pgpush_cmd, work_dir, repo=sshd.pgpush_options(), process_max=3,
                protocol_timeout=PROTOCOL_TIMEOUT, repo1_host_timeout=HOST_TIMEOUT)
    pg = pg_factory("pg", conf={"archive_mode": "on", "archive_command": ""}, wal_segsize_mb=1)
    setup_archiving(pp, pg)
    backup(pp, pg, "--type=full", "--wait", "--wait-timeout=60")
    argv = ["runuser", "-u", "postgres", "--", *pp.argv("verify")]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # runuser, pgpush, and its 3 forked workers: the pool is at work
        # freeze at once: verify of a fresh cluster's ~1000 files may take only a second or two,
        # and a verify that has already finished could not show the fault
        procs.wait_for(lambda: len(procs.descendants_of(proc.pid)) >= 4, 30, 0.01, message="the verify workers")
        sshd.freeze()
        try:
            # a few host timeouts (the connection's, a reconnect's) and a protocol-timeout at most
            _out, err = proc.communicate(timeout=4 * HOST_TIMEOUT + PROTOCOL_TIMEOUT + 20)
        except subprocess.TimeoutExpired:
            pytest.fail("verify still running against a frozen repository long after its timeouts")
    finally:
        sshd.thaw()
        if proc.poll() is None:
            procs.kill_tree(proc.pid, sig=signal.SIGKILL)
        proc.wait(10)
    assert proc.returncode == 103, err
    assert "ERROR: [103]: unable to find a valid repository" in err and err.count("ERROR: [") == 1, err
    assert "Traceback" not in err
