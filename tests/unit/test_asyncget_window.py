"""The async get parent's window logic with a scripted pool: GetParent.turn, the body of the loop of
GetParent.work, driven step by step; which segments are handed out in what order, and when a missing
segment is marked ``.ok``.  The end-to-end behaviour
with PostgreSQL is in tests/integration/test_async_get.py; these pin the ordering rules that an
out-of-order pool (process-max > 1) makes hard to hit there on purpose."""

from __future__ import annotations

import os

from pgpush.archive import get_parent, spool
from pgpush.config import load

SEG = 16 * 1024 * 1024


class ScriptedPool:
    """Stands in for pool.WorkerPool: records submissions; results are fed by the test."""

    def __init__(self, size: int):
        self.size = size
        self.submitted: list[str] = []
        self.running: list[dict] = []
        self.ready: list[tuple[dict, dict]] = []

    @property
    def busy(self) -> int:  # a worker is busy until its result has been read, as in WorkerPool
        return len(self.running) + len(self.ready)

    def has_idle(self) -> bool:
        return self.busy < self.size

    def submit(self, task: dict) -> None:
        self.submitted.append(task["name"])
        self.running.append(task)

    def finish(self, name: str, found: bool) -> None:
        task = next(t for t in self.running if t["name"] == name)
        self.running.remove(task)
        if found:
            open(os.path.join(task["dir"], name), "wb").close()
        self.ready.append((task, {"ok": True, "missing": not found}))

    def results(self, timeout=None):
        out, self.ready = self.ready, []
        return out


def _parent(tmp_path, process_max: int, window: int):
    cfg = load(["--stanza=main", f"--spool-path={tmp_path / 'spool'}", f"--process-max={process_max}",
                f"--archive-get-queue-max={window * SEG}", f"--pg1-path={tmp_path / 'pg'}", "get-async", "x"],
               environ={})
    parent = get_parent.GetParent(cfg, str(tmp_path / "pg"))  # no pg_control: 16 MB segments
    parent.pool = ScriptedPool(process_max)
    return parent, parent.pool


def _name(n: int) -> str:
    return f"00000001000000000000{n:04X}"


def _request(parent, n: int, tag: str) -> None:
    spool.write_atomic(parent.qdir, "request", f"{_name(n)} {tag}".encode())


def _step(parent) -> None:
    """Two passes of GetParent.work's loop (GetParent.turn: look, hand out, book results),
    without its sleeping and lingering."""
    parent.turn(parent.pool)
    parent.turn(parent.pool)


def test_requested_segment_first_then_the_window_in_order(tmp_path):
    parent, pool = _parent(tmp_path, process_max=2, window=4)
    _request(parent, 0x10, "a")
    _step(parent)
    assert pool.submitted == [_name(0x10), _name(0x11)]
    pool.finish(_name(0x11), True)  # the second comes back first
    _step(parent)
    assert pool.submitted[2] == _name(0x12)  # a free worker takes the next, no round barrier
    pool.finish(_name(0x10), True)
    _step(parent)
    assert pool.submitted == [_name(n) for n in range(0x10, 0x14)]
    # recovery took 0x10 and asks for 0x11: the window slides by one
    os.unlink(os.path.join(parent.qdir, _name(0x10)))
    _request(parent, 0x11, "b")
    pool.finish(_name(0x12), True)
    _step(parent)
    assert pool.submitted[-1] == _name(0x14)


def test_missing_is_marked_only_once_every_earlier_segment_is_answered(tmp_path):
    parent, pool = _parent(tmp_path, process_max=3, window=4)
    _request(parent, 0x20, "a")
    _step(parent)
    pool.finish(_name(0x22), False)  # missing, but 0x20 and 0x21 are still on their way
    _step(parent)
    assert not os.path.exists(os.path.join(parent.qdir, _name(0x22) + ".ok"))
    assert _name(0x23) not in pool.submitted  # nothing handed out beyond a hole
    pool.finish(_name(0x21), False)  # an earlier one is missing too: it is the hole
    _step(parent)
    assert not os.path.exists(os.path.join(parent.qdir, _name(0x21) + ".ok"))  # 0x20 still out
    pool.finish(_name(0x20), True)
    _step(parent)
    present = sorted(os.listdir(parent.qdir))
    assert _name(0x21) + ".ok" in present and _name(0x22) + ".ok" not in present
    assert _name(0x20) in present
    # a new request for the missing segment looks again (it may have been archived since)
    os.unlink(os.path.join(parent.qdir, _name(0x21) + ".ok"))
    os.unlink(os.path.join(parent.qdir, _name(0x20)))
    before = len(pool.submitted)
    _request(parent, 0x21, "b")
    _step(parent)
    assert pool.submitted[before] == _name(0x21)


def test_found_beyond_a_hole_or_behind_recovery_is_dropped(tmp_path):
    parent, pool = _parent(tmp_path, process_max=3, window=3)
    _request(parent, 0x30, "a")
    _step(parent)
    pool.finish(_name(0x30), True)
    pool.finish(_name(0x31), False)
    _step(parent)
    pool.finish(_name(0x32), True)  # archived out of order, but unusable past the hole
    _step(parent)
    present = sorted(os.listdir(parent.qdir))
    assert _name(0x32) not in present and _name(0x31) + ".ok" in present
    # recovery moved past files still on their way: they are removed when they land
    _request(parent, 0x50, "b")
    _step(parent)
    assert [t["name"] for t in pool.running] == [_name(0x50), _name(0x51), _name(0x52)]
    _request(parent, 0x52, "c")
    pool.finish(_name(0x50), True)
    pool.finish(_name(0x51), True)
    pool.finish(_name(0x52), True)
    _step(parent)
    present = os.listdir(parent.qdir)
    assert _name(0x50) not in present and _name(0x51) not in present and _name(0x52) in present


def test_hole_marked_when_the_last_earlier_answer_comes_after_recovery_took_it(tmp_path):
    """The stall the benchmark caught (a 10 s LINGER at the end of recovery, process-max 2): the last
    segment lands, recovery takes it and asks for the next before the parent has read that worker's
    answer; the next is missing.  The hole must be marked as soon as the late answer is read."""
    parent, pool = _parent(tmp_path, process_max=2, window=8)
    _request(parent, 0x60, "a")
    _step(parent)
    pool.finish(_name(0x60), True)
    _step(parent)  # 0x61 and 0x62 on their way
    assert [t["name"] for t in pool.running] == [_name(0x61), _name(0x62)]
    os.unlink(os.path.join(parent.qdir, _name(0x60)))  # recovery took 0x60
    # 0x61 lands in the spool (the worker renames it) and recovery takes it and asks for 0x62 ...
    pool.finish(_name(0x61), True)
    os.unlink(os.path.join(parent.qdir, _name(0x61)))
    _request(parent, 0x62, "b")
    answered_late = pool.ready.pop()  # ... before the parent reads the answer for 0x61
    pool.finish(_name(0x62), False)  # 0x62 is not in the archive
    _step(parent)
    pool.ready.append(answered_late)
    _step(parent)
    # 0x62 was looked up before recovery asked for it: that answer may be stale, so it is asked again
    assert _name(0x62) in [t["name"] for t in pool.running]
    pool.finish(_name(0x62), False)
    _step(parent)
    assert spool.read_status(os.path.join(parent.qdir, _name(0x62) + ".ok")) == f"{_name(0x62)} b"


def test_missing_marker_answers_only_the_request_that_made_it(tmp_path):
    """A marker written for one request is removed by the next one, and the segment is looked up again."""
    parent, pool = _parent(tmp_path, process_max=1, window=4)
    _request(parent, 0x80, "a")
    _step(parent)
    pool.finish(_name(0x80), True)
    _step(parent)
    pool.finish(_name(0x81), False)
    _step(parent)
    marker = os.path.join(parent.qdir, _name(0x81) + ".ok")
    assert spool.read_status(marker) == f"{_name(0x80)} a"
    _request(parent, 0x81, "b")  # recovery asks for it: it may have been archived since
    _step(parent)
    assert not os.path.exists(marker)
    assert [t["name"] for t in pool.running] == [_name(0x81)]
    pool.finish(_name(0x81), True)
    _step(parent)
    assert _name(0x81) in os.listdir(parent.qdir)


def test_an_answer_for_another_timeline_does_not_block_the_window(tmp_path):
    parent, pool = _parent(tmp_path, process_max=2, window=4)
    _request(parent, 0x70, "a")
    _step(parent)
    new_tli = "00000002" + _name(0x71)[8:]
    spool.write_atomic(parent.qdir, "request", f"{new_tli} c".encode())  # recovery switched timeline
    pool.finish(_name(0x70), False)  # late "missing" for the old timeline
    pool.finish(_name(0x71), True)
    _step(parent)
    assert parent.missing_at is None
    assert new_tli in pool.submitted
    assert _name(0x70) + ".ok" not in os.listdir(parent.qdir) and _name(0x71) not in os.listdir(parent.qdir)


def test_the_loop_ends_false_once_the_repository_failed_and_the_workers_are_done(tmp_path):
    """GetParent.work itself: a global failure stops the hand-out; the parent leaves with False
    (the foreground reads ``global.error``) instead of lingering."""

    class FailingPool(ScriptedPool):
        def results(self, timeout=None):
            for task in list(self.running):
                self.running.remove(task)
                self.ready.append((task, {"ok": False, "code": 103, "message": "repository down", "global": True}))
            return super().results(timeout)

    parent, _ = _parent(tmp_path, process_max=2, window=4)
    pool = FailingPool(2)
    parent._pool = lambda: pool
    _request(parent, 0x90, "a")
    assert parent.work() is False
    assert pool.submitted == [_name(0x90), _name(0x91)]  # nothing handed out after the failure
    assert spool.read_status(os.path.join(parent.qdir, spool.GLOBAL_ERROR)) == "103\nrepository down"
