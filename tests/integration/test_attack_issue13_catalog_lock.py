"""A diff backup whose prior is removed while it runs must not be recorded (issue #13's attack).

The catalog lock keeps expire from removing the prior a diff or incr has just chosen, but only
while the chooser holds it: a lock older than 4 x repo1-host-timeout is broken by a waiter.
Since the retry layer, one repository operation may take about twice repo1-host-timeout (its
first try's timeout, then a try on a new connection), and the lock's time stamp is taken before
its own put; a holder whose clock runs behind the waiter's is stale at once.  So an expire may
break the lock of a live backup in ``_claim``, read the catalog before the backup's directory
exists, and remove the prior the backup has just chosen.  The backup then references files that
are gone; recorded as a backup, restore fails on it.  Its commit point (the manifest, under the
lock) must see that and fail instead.

The expire that broke the lock is played by hand here (the prior's entry and manifest removed,
as expire does under the lock), with the backup stopped (SIGSTOP) between its claim and its
commit: the outcome is the same, and the test needs no clocks.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest
from backup_env import backup, backups, pg_opts, setup_archiving
from harness import procs
from pgpush_env import Pgpush

pytestmark = pytest.mark.integration


def test_diff_backup_whose_prior_was_expired_meanwhile_is_not_recorded(pg_factory, pgpush_cmd, work_dir):
    pp = Pgpush(pgpush_cmd, work_dir, process_max=1)
    pg = pg_factory("pg", conf={"archive_mode": "on", "archive_command": ""}, wal_segsize_mb=1)
    setup_archiving(pp, pg)
    full, _ = backup(pp, pg, "--type=full", "--wait", "--wait-timeout=60")
    pg.sql("create table t as select g, repeat('x', 500) as pad from generate_series(1, 100000) g")
    root = work_dir / "repo" / "backup" / "main"
    uid, gid = procs.user_ids("postgres")
    # started as postgres directly, not through runuser: runuser stops itself when its child is
    # stopped, and a SIGCONT that reaches it before it does would leave it stopped for good
    proc = subprocess.Popen(pp.argv("backup", *pg_opts(pg), "--type=diff"), user=uid, group=gid, extra_groups=[],
                            cwd="/", env={k: v for k, v in os.environ.items() if not k.startswith("PGPUSH_")},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stopped: list[int] = []
    try:
        def claimed() -> bool:
            return any(p.parent.name != full for p in root.glob("*/backup.started"))

        procs.wait_for(claimed, 60, 0.002, message="the diff backup's directory")
        stopped = [proc.pid, *procs.descendants_of(proc.pid)]
        procs.signal_pids(stopped, signal.SIGSTOP)
        (diff_dir,) = [p.parent for p in root.glob("*/backup.started") if p.parent.name != full]
        if (diff_dir / "backup.manifest").exists():
            pytest.skip("the backup committed before it could be stopped")
        # what an expire that broke the lock does: the prior loses its entry, then its manifest
        info = root / "backup.info"
        body = json.loads(info.read_text())
        body["backups"] = [b for b in body["backups"] if b["label"] != full]
        info.write_text(json.dumps(body))
        (root / full / "backup.manifest").unlink()
    finally:
        procs.signal_pids(stopped, signal.SIGCONT)
    out, err = proc.communicate(timeout=120)
    recorded = backups(pp)
    assert diff_dir.name not in recorded, f"a backup whose prior is gone was recorded:\n{out}\n{err}"
    assert proc.returncode not in (0, 1) and err.count("ERROR: [") == 1 and "Traceback" not in err, err
    assert full in err, err
