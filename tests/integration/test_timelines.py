"""Recovery across a timeline switch with asynchronous get: restore, promote, archive on the new
timeline (with its history file), restore again past the switch.  (``.partial`` files round-trip in
test_sync_push_get.py::test_history_and_partial_files.)"""

from __future__ import annotations

import os
import shutil

import pytest
from harness import procs
from pgpush_env import Pgpush
from test_async_get import archived_cluster

pytestmark = pytest.mark.integration


def test_restore_promote_archive_restore_again_past_the_switch(pg_factory, pgpush_cmd, work_dir):
    pp = Pgpush(pgpush_cmd, work_dir, archive_get_queue_max="64MB", process_max=2)
    pg, base, target, _last = archived_cluster(pg_factory, pp, 6)
    pg.stop()
    base_copy = work_dir / "base2"
    shutil.copytree(base, base_copy, symlinks=True)
    procs.chown_tree(base_copy, "postgres")

    # first restore: to the target, promote onto timeline 2, archiving from the start (history, .partial)
    first = pg_factory("tl2", init=False)
    first._prepare_common()
    os.rename(base, first.datadir)
    first.set_conf({"port": first.port, "unix_socket_directories": str(first.socket_dir), "archive_mode": "on",
                    "archive_command": pp.archive_command(archive_async="n"),
                    "restore_command": pp.restore_command(archive_async="y"), "recovery_target_lsn": target,
                    "recovery_target_action": "promote"})
    (first.datadir / "recovery.signal").touch()
    first.start(timeout=300)
    first.wait_promoted(300)
    first.sql("insert into marks values (20)")
    last = first.switch_wal()
    assert last.startswith("00000002")
    first.wait_archived(last, timeout=60)
    repo = work_dir / "repo" / "archive" / "main"
    assert list(repo.glob("*/00000002.history"))
    first.stop()

    # the spool still holds timeline-1 files prefetched by the first recovery: they must never be served
    stale = sorted(n for n in os.listdir(pp.in_dir) if len(n) == 24)
    second = pg_factory("again", init=False)
    second._prepare_common()
    os.rename(base_copy, second.datadir)
    second.set_conf({"port": second.port, "unix_socket_directories": str(second.socket_dir), "archive_mode": "off",
                     "restore_command": pp.restore_command(archive_async="y"), "recovery_target_timeline": "latest",
                     "recovery_target_action": "promote"})
    (second.datadir / "recovery.signal").touch()
    second.start(timeout=300)
    second.wait_promoted(300)
    # past the switch: the row written on timeline 2 is there, and the one after the first target is not
    assert second.sql("select array_agg(id order by id) from marks") == "{1,20}"
    assert second.sql("select timeline_id from pg_control_checkpoint()") == "3"
    assert stale  # there was something stale to ignore
