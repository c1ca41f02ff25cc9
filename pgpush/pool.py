"""A pool of ``process-max`` worker processes fed over pipes.

Each worker is a fresh ``pgpush worker --exec-id=PARENT-ID`` process (so
``ps`` shows which parent it serves), opens its own repository connection on
first use and keeps it for every file it is given: no connection object ever
crosses a process boundary.  Tasks and results are JSON lines on the
worker's stdin/stdout.  A worker that dies (kill -9, crash) yields a
``crashed`` result for its task and is replaced on the next submit; nothing
is acknowledged for that task.
"""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import time


class _Worker:
    def __init__(self, argv: list[str], env: dict[str, str]):
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, close_fds=True)
        self.task: dict | None = None
        self.buffer = b""

    def send(self, task: dict) -> None:
        self.task = task
        self.proc.stdin.write(json.dumps(task).encode() + b"\n")
        self.proc.stdin.flush()

    def stop(self, timeout: float = 5.0) -> None:
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class WorkerPool:
    def __init__(self, argv: list[str], size: int, env: dict[str, str] | None = None):
        self.argv = argv
        self.size = max(1, size)
        self.env = dict(os.environ if env is None else env)
        self.workers: list[_Worker] = []
        self.selector = selectors.DefaultSelector()

    def _spawn(self) -> _Worker:
        worker = _Worker(self.argv, self.env)
        os.set_blocking(worker.proc.stdout.fileno(), False)
        self.selector.register(worker.proc.stdout, selectors.EVENT_READ, worker)
        self.workers.append(worker)
        return worker

    def _drop(self, worker: _Worker) -> None:
        try:
            self.selector.unregister(worker.proc.stdout)
        except (KeyError, ValueError):
            pass
        self.workers.remove(worker)
        worker.stop(timeout=1.0)

    @property
    def busy(self) -> int:
        return sum(1 for w in self.workers if w.task is not None)

    def has_idle(self) -> bool:
        return self.busy < self.size

    def submit(self, task: dict) -> None:
        """Give ``task`` to an idle worker, starting one if fewer than ``size`` run."""
        for worker in self.workers:
            if worker.task is None:
                try:
                    worker.send(task)
                    return
                except OSError:
                    self._drop(worker)
                    break
        if len(self.workers) >= self.size:
            raise RuntimeError("no idle worker")
        self._spawn().send(task)

    def results(self, timeout: float | None = None) -> list[tuple[dict, dict]]:
        """Wait for at least one result (or ``timeout``); ``(task, result)`` pairs."""
        out: list[tuple[dict, dict]] = []
        deadline = None if timeout is None else time.monotonic() + timeout
        while not out and self.busy:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            events = self.selector.select(wait)
            if not events and deadline is not None and time.monotonic() >= deadline:
                break
            for key, _mask in events:
                worker: _Worker = key.data
                try:
                    data = os.read(worker.proc.stdout.fileno(), 65536)
                except BlockingIOError:
                    continue
                if not data:
                    task = worker.task
                    self._drop(worker)
                    if task is not None:
                        code = worker.proc.returncode
                        out.append((task, {"ok": False, "code": 25, "crashed": True, "global": False,
                                           "message": f"worker process died (exit status {code}) while working on it"}))
                    continue
                worker.buffer += data
                while b"\n" in worker.buffer:
                    line, worker.buffer = worker.buffer.split(b"\n", 1)
                    task, worker.task = worker.task, None
                    out.append((task, json.loads(line)))
        return out

    def close(self) -> None:
        for worker in list(self.workers):
            self._drop(worker)
        self.selector.close()

    def pids(self) -> list[int]:
        return [w.proc.pid for w in self.workers]
