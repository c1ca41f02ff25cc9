"""Asynchronous push attacked from outside (docs/architecture.md, "Asynchronous push and get"): a parent that cannot finish says why."""

from __future__ import annotations

import os
import time

import pytest
from harness import procs
from pgpush_env import Pgpush

from pgpush.archive import lock

pytestmark = pytest.mark.integration


def _wait_parent_gone(pp: Pgpush) -> None:
    """The lingering push parent ends by itself: wait for its lock to be free (no process left behind)."""
    path = str(pp.spool_path / "archive" / pp.stanza / "archive-push.lock")
    procs.wait_for(lambda: not os.path.exists(path) or not lock.is_locked(path), 30, message="the push parent to exit")


def test_parent_that_cannot_write_a_verdict_fails_the_push_with_its_reason_and_archiving_resumes(
        pg_factory, pgpush_cmd, work_dir):
    """The parent pushes the file but cannot write its ``.ok`` (the temporary name is taken by a
    directory): archive_command must fail with the parent's reason (047) at once, not wait out
    archive-timeout and report a timeout (082) that says nothing, for every retry, for good."""
    pp = Pgpush(pgpush_cmd, work_dir, archive_timeout=20)
    pg = pg_factory("pg", conf={"archive_mode": "on", "archive_command": ""}, wal_segsize_mb=1)
    pp.stanza_create(pg)
    segment = pg.current_wal_segment()
    pp.out_dir.mkdir(parents=True, exist_ok=True)
    blocker = pp.out_dir / f"{segment}.ok.pgpush.tmp"
    blocker.mkdir()
    procs.chown_tree(pp.spool_path, "postgres")
    pg.set_conf({"archive_command": pp.archive_command(archive_async="y")})
    pg.reload()
    started = time.monotonic()
    assert pg.switch_wal() == segment
    procs.wait_for(lambda: "ERROR: [" in pp.log_text("archive-push"), 60, message="archive_command to fail")
    failed_after = time.monotonic() - started
    log = pp.log_text("archive-push")
    assert f"ERROR: [047]: unable to write spool file '{pp.out_dir / segment}.ok'" in log, log
    assert "ERROR: [082]" not in log, log
    assert failed_after < 20, f"the verdict came only after {failed_after:.1f}s"

    blocker.rmdir()
    pg.wait_archived(segment, timeout=60)
    _wait_parent_gone(pp)
