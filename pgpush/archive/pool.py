"""A pool of ``process-max`` worker processes fed over pipes.

Each worker is a fresh ``pgpush worker --exec-id=PARENT-ID`` process (so
``ps`` shows which parent it serves), opens its own repository connection on
first use and keeps it for every file it is given: no connection object ever
crosses a process boundary.  Tasks and results are JSON lines on the
worker's stdin/stdout.  A worker that dies (kill -9, crash) yields a
``crashed`` result for its task and is replaced on the next submit; nothing
is acknowledged for that task.

Every wait on a worker has an end: a task not answered within ``timeout``
seconds (``protocol-timeout``) gets its worker killed (SIGKILL, reaped) and a
``timeout`` result, so a storage call that hangs for ever (a hung NFS mount,
a frozen backup host) becomes a verdict the parent writes, never a parent
that holds its lock and waits with it.
"""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import time
from typing import IO

REAP_WAIT = 5.0  # seconds to reap a killed worker (one stuck in the kernel cannot be waited for longer)


class _Worker:
    def __init__(self, argv: list[str], env: dict[str, str]):
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, close_fds=True)
        assert self.proc.stdin is not None and self.proc.stdout is not None  # both are PIPE
        self.stdin: IO[bytes] = self.proc.stdin
        self.stdout: IO[bytes] = self.proc.stdout
        self.task: dict | None = None
        self.sent_at = 0.0
        self.buffer = b""
        self.seq = 0  # numbers the tasks: an answer must name the one it answers

    def send(self, task: dict) -> None:
        self.task = task
        self.sent_at = time.monotonic()
        self.seq += 1
        self.stdin.write(json.dumps({**task, "seq": self.seq}).encode() + b"\n")
        self.stdin.flush()

    def answer(self, line: bytes) -> dict | None:
        """The result ``line`` carries for the task out, or None when it is no such thing.

        A line that is not JSON, not a result, or names another task (or none is out) breaks
        the protocol: taken as an answer it could acknowledge a file nobody pushed.
        """
        try:
            result = json.loads(line)
        except ValueError:
            return None
        if (self.task is None or not isinstance(result, dict) or not isinstance(result.get("ok"), bool)
                or result.get("seq") != self.seq):
            return None
        return result

    def stop(self, timeout: float = 5.0) -> None:
        try:
            self.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL and reap, waiting at most ``REAP_WAIT`` (a process in uninterruptible I/O dies later)."""
        try:
            self.proc.kill()
            self.proc.wait(REAP_WAIT)
        except (OSError, subprocess.TimeoutExpired):
            pass


class WorkerPool:
    def __init__(self, argv: list[str], size: int, env: dict[str, str] | None = None, timeout: float | None = None):
        self.argv = argv
        self.size = max(1, size)
        self.timeout = timeout
        self.env = dict(os.environ if env is None else env)
        self.workers: list[_Worker] = []
        self.selector = selectors.DefaultSelector()

    def _spawn(self) -> _Worker:
        worker = _Worker(self.argv, self.env)
        os.set_blocking(worker.stdout.fileno(), False)
        self.selector.register(worker.stdout, selectors.EVENT_READ, worker)
        self.workers.append(worker)
        return worker

    def _drop(self, worker: _Worker) -> None:
        try:
            self.selector.unregister(worker.stdout)
        except (KeyError, ValueError):
            pass
        self.workers.remove(worker)
        worker.stop(timeout=1.0)

    def _next_expiry(self) -> float | None:
        """When the oldest unanswered task runs out of time (None: no limit, or nothing out)."""
        if self.timeout is None:
            return None
        started = [w.sent_at for w in self.workers if w.task is not None]
        return min(started) + self.timeout if started else None

    def _expire(self) -> list[tuple[dict, dict]]:
        """Kill every worker whose task has run past ``timeout``; a failed result for each task."""
        out: list[tuple[dict, dict]] = []
        if self.timeout is None:
            return out
        now = time.monotonic()
        for worker in [w for w in self.workers if w.task is not None and now - w.sent_at >= self.timeout]:
            task = worker.task
            assert task is not None  # selected for it
            worker.kill()
            self._drop(worker)
            what = os.path.basename(str(task.get("path") or task.get("name") or task.get("op")))
            out.append((task, {"ok": False, "code": 103, "global": True, "timeout": True,
                               "message": f"unable to find a valid repository: no answer within protocol-timeout "
                                          f"({self.timeout:g}s) while working on '{what}': worker process killed"}))
        return out

    def _garbled(self, worker: _Worker, task: dict | None, line: bytes) -> list[tuple[dict, dict]]:
        """A worker broke the protocol: kill it, and fail its task (if one was out) as a bug (25)."""
        worker.kill()
        self._drop(worker)
        if task is None:
            return []
        text = " ".join(line.decode("utf-8", "replace").split())[:200]
        return [(task, {"ok": False, "code": 25, "crashed": True, "global": False,
                        "message": f"worker process {worker.proc.pid} answered what is not an answer to its task: {text!r}"})]

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
            ends = [t for t in (deadline, self._next_expiry()) if t is not None]
            wait = max(0.0, min(ends) - time.monotonic()) if ends else None
            events = self.selector.select(wait)
            if not events and deadline is not None and time.monotonic() >= deadline:
                break
            for key, _mask in events:
                worker: _Worker = key.data
                try:
                    data = os.read(worker.stdout.fileno(), 65536)
                except BlockingIOError:
                    continue
                if not data:
                    task = worker.task
                    self._drop(worker)
                    if task is not None:
                        code = worker.proc.returncode
                        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit status {code}"
                        what = os.path.basename(str(task.get("path") or task.get("name") or task.get("op")))
                        out.append((task, {"ok": False, "code": 25, "crashed": True, "global": False,
                                           "message": f"worker process {worker.proc.pid} died ({how}) while working "
                                                      f"on '{what}'"}))
                    continue
                worker.buffer += data
                while b"\n" in worker.buffer:
                    line, worker.buffer = worker.buffer.split(b"\n", 1)
                    result = worker.answer(line)
                    task, worker.task = worker.task, None
                    if result is None or task is None:  # answer() gives None when no task is out
                        out.extend(self._garbled(worker, task, line))
                        break
                    out.append((task, result))
            if self.timeout is not None:
                out.extend(self._expire())
        return out

    def close(self) -> None:
        for worker in list(self.workers):
            self._drop(worker)
        self.selector.close()

    def pids(self) -> list[int]:
        return [w.proc.pid for w in self.workers]
