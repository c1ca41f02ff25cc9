"""Seams between the fixes: async get against a frozen backup host, archive-timeout below repo1-host-timeout.

The foreground's wait (archive-timeout) ends before the worker's storage call gives up
(repo1-host-timeout): the call must end at archive-timeout with a code, never exit 1 (which
PostgreSQL takes for the end of the archive), and once the host answers again the same call
as restore_command runs it restores the segment whole.
"""

from __future__ import annotations

import time

import pytest
from harness import faults
from pgpush_env import Pgpush, sha1_file

pytestmark = pytest.mark.integration


def test_async_get_from_a_frozen_host_ends_at_archive_timeout_with_a_code_then_restores_once_thawed(
        pg_factory, pgpush_cmd, work_dir, sshd):
    pp = Pgpush(pgpush_cmd, work_dir, repo=sshd.pgpush_options(), process_max=2, archive_timeout=2,
                repo1_host_timeout=6)
    pg = pg_factory("pg", conf={"archive_mode": "on", "archive_command": ""}, wal_segsize_mb=1)
    pp.stanza_create(pg)
    pg.set_conf({"archive_command": pp.archive_command(archive_async="n")})
    pg.reload()
    segment = pg.generate_wal(1, payload_bytes=200_000)[0]
    pg.wait_archived(segment, timeout=60)
    dest = pg.datadir / "pg_wal" / "RECOVERYXLOG"
    try:
        sshd.freeze()
        try:
            started = time.monotonic()
            res = pp.run("get", segment, "pg_wal/RECOVERYXLOG", cwd=pg.datadir, archive_async="y", timeout=60)
            took = time.monotonic() - started
        finally:
            sshd.thaw()
        assert res.returncode not in (0, 1), (res.returncode, res.stderr)
        assert res.stderr.startswith(f"ERROR: [{res.returncode:03d}]: ") and res.stderr.count("ERROR") == 1, res.stderr
        assert took < 2 + 10, took  # archive-timeout and the start-up of the interpreter, not repo1-host-timeout x n
        assert not dest.exists()

        deadline = time.monotonic() + 60
        while True:
            res = pp.run("get", segment, "pg_wal/RECOVERYXLOG", cwd=pg.datadir, archive_async="y", timeout=60)
            if res.returncode == 0 or time.monotonic() > deadline:
                break
            assert res.returncode != 1, res.stderr  # as restore_command retries it
        assert res.returncode == 0, res.stderr
        assert sha1_file(dest) == sha1_file(pg.wal_dir / segment)
    finally:
        faults.kill_leftovers(work_dir)
