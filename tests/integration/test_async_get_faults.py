"""Asynchronous get under faults (docs/architecture.md, "Asynchronous push and get"): stale answers, other clusters, spool file modes."""

from __future__ import annotations

import os
import shutil

import pytest
from async_get_env import archived_primary, recover_in_two_phases, two_marks
from harness import procs
from pgpush_env import Pgpush

pytestmark = pytest.mark.integration


def test_segment_archived_after_a_missing_answer_is_found_by_the_next_recovery(pg_factory, pgpush_cmd, work_dir):
    """A "not in the archive" marker written while prefetching for one request is never the answer to
    a later one: the segment archived in between is restored and recovery reaches the later mark."""
    pp = Pgpush(pgpush_cmd, work_dir, archive_get_queue_max="8MB", archive_timeout=30)
    src = two_marks(pg_factory, pp, work_dir)
    aside = work_dir / "withheld"
    shutil.move(str(src.stored), str(aside))  # not archived yet, as far as the first recovery can tell
    marker = pp.in_dir / f"{src.segment}.ok"

    recover_in_two_phases(
        pg_factory, pp, src,
        after_first=lambda: procs.wait_for(marker.exists, 60, message=f"the prefetch to mark {src.segment} missing"),
        between=lambda: shutil.move(str(aside), str(src.stored)))  # now it is archived


def test_async_get_refuses_wal_to_a_cluster_of_another_system(pg_factory, pgpush_cmd, work_dir):
    """As a sync get does (44): WAL of the stanza is never served to another cluster's recovery."""
    pp = Pgpush(pgpush_cmd, work_dir, archive_timeout=20)
    _pg, names = archived_primary(pg_factory, pp, 2)
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
    pg, names = archived_primary(pg_factory, pp, 4)
    dest = work_dir / "dest"
    res = pp.run("get", names[0], str(dest), archive_async="y", pg1_path=str(pg.datadir))
    assert res.returncode == 0, res.stderr
    procs.wait_for(lambda: (pp.in_dir / names[1]).exists(), 30, message="the prefetch of the next segment")
    for path in [dest, *(p for p in pp.in_dir.iterdir() if len(p.name) == 24)]:
        assert os.stat(path).st_mode & 0o077 == 0, (path, oct(os.stat(path).st_mode))
