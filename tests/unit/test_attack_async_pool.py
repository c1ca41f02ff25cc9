"""The async parents' worker pool against workers that break the protocol: every one of them ends
as a failed result for its task (never an exception in the parent, never a wait without an end),
and the worker is gone and reaped.  Real worker processes, scripted."""

from __future__ import annotations

import os
import signal
import sys
import time

from pgpush.archive.pool import WorkerPool


def _pool(script: str, timeout: float = 30.0) -> WorkerPool:
    return WorkerPool([sys.executable, "-c", script], 1, timeout=timeout)


def _one_result(pool: WorkerPool) -> tuple[dict, dict]:
    pool.submit({"op": "push", "path": "/x/000000010000000000000001"})
    out = []
    deadline = time.monotonic() + 60
    while not out and time.monotonic() < deadline:
        out = pool.results(timeout=1.0)
    assert len(out) == 1, out
    return out[0]


def _assert_gone(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return  # reaped already
    raise AssertionError(f"worker {pid} not reaped")


def test_a_worker_answering_garbage_fails_its_task_and_is_killed():
    pool = _pool("import sys\nfor line in sys.stdin:\n    print('Traceback: not json', flush=True)\n")
    try:
        task, result = _one_result(pool)
        assert task["path"].endswith("01")
        assert result["ok"] is False and result["code"] == 25, result
        assert "not json" in result["message"], result
        assert pool.busy == 0 and not pool.workers
    finally:
        pool.close()


def test_a_worker_answering_json_that_is_not_an_answer_fails_its_task():
    pool = _pool("import sys\nfor line in sys.stdin:\n    print('[1, 2]', flush=True)\n")
    try:
        _task, result = _one_result(pool)
        assert result["ok"] is False and result["code"] == 25, result
    finally:
        pool.close()


def test_a_line_the_worker_wrote_before_being_asked_never_acknowledges_the_task():
    """A stray ``{"ok": true}`` on a worker's stdout (printed before any task reached it) is not
    the answer to the task sent next: taken as one, the parent would write ``.ok`` for a WAL file
    that was never pushed."""
    pool = _pool("import sys, time\nprint('{\"ok\": true}', flush=True)\ntime.sleep(60)\n")
    try:
        pool.submit({"op": "push", "path": "/x/000000010000000000000001"})
        pid_before = pool.pids()[0]
        out = []
        while not out:
            out = pool.results(timeout=5.0)
        (_task, result), = out
        assert result["ok"] is False and result["code"] == 25, result
        _assert_gone(pid_before)
    finally:
        pool.close()


def test_a_worker_that_exits_0_without_answering_fails_its_task():
    pool = _pool("import sys\nsys.stdin.readline()\nsys.exit(0)\n")
    try:
        _task, result = _one_result(pool)
        assert result["ok"] is False and result["code"] == 25, result
        assert "exit status 0" in result["message"], result
    finally:
        pool.close()


def test_a_stopped_worker_is_killed_at_the_timeout_and_reaped():
    pool = _pool("import sys\nfor line in sys.stdin:\n    print('{\"ok\": true}', flush=True)\n", timeout=1.0)
    try:
        pool.submit({"op": "push", "path": "/x/a"})
        pid = pool.pids()[0]
        os.kill(pid, signal.SIGSTOP)
        out = []
        while not out:
            out = pool.results()
        (_task, result), = out
        assert result["ok"] is False and result["code"] == 103 and result.get("timeout"), result
        _assert_gone(pid)
    finally:
        pool.close()
