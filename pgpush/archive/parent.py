"""What the two background parents (async push, async get) share: the worker
pool, the lock they hold, and the loop that ends without leaving work behind.

A parent does all the work it sees, releases the lock, then looks once more:
work that arrived in between is either seen here (and the lock taken again,
unless another parent already has it) or finds the lock free for the next
foreground to start a parent.  See :mod:`pgpush.archive.lock` for the hand-off.
"""

from __future__ import annotations

import os
import time

from pgpush.archive import lock, spool
from pgpush.archive.pool import WorkerPool
from pgpush.config import Config
from pgpush.fsutil import self_command
from pgpush.log import LOG


class AsyncParent:
    group = ""  # log group, e.g. archive-push-async
    direction = ""  # spool queue: out (push) or in (get)

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.sdir = spool.stanza_dir(str(cfg["spool-path"]), cfg.stanza)
        self.qdir = spool.queue_dir(str(cfg["spool-path"]), cfg.stanza, self.direction)
        self.lock_path = lock.lock_path(self.sdir, self.direction)
        self.pool: WorkerPool | None = None

    def _pool(self) -> WorkerPool:
        """The workers, started on first use: ``pgpush worker KIND --exec-id=OURS``; secrets by environment."""
        if self.pool is None:
            kind = "push" if self.direction == "out" else "get"
            argv = self_command() + ["worker", kind, f"--exec-id={LOG.exec_id}"] + self.cfg.to_argv()
            env = dict(os.environ)
            env.update(self.cfg.secret_env())
            self.pool = WorkerPool(argv, int(self.cfg["process-max"]), env, timeout=float(self.cfg["protocol-timeout"]))
        return self.pool

    def work(self) -> bool:
        """Do all the work there is now; False when a failure ends this parent's run."""
        raise NotImplementedError

    def more_work(self) -> bool:
        """Is there work now?  Asked after the lock was released."""
        raise NotImplementedError

    def describe(self) -> str:
        return f"process-max={self.cfg['process-max']}"

    def run(self, lock_fd: int) -> int:
        held: int | None = lock_fd
        try:
            while held is not None:  # None: another parent took the lock over
                succeeded = self.work()
                # The lock is freed before the (idle) pool winds down, after a failure too: a
                # foreground that comes next must be able to start a fresh try at once rather
                # than be handed this run's verdict while we close workers.
                lock.release(held)
                held = None
                if not succeeded or not self.more_work():
                    return 0
                held = lock.try_lock(self.lock_path)
            return 0
        finally:
            if self.pool is not None:
                self.pool.close()
            if held is not None:
                lock.release(held)

    @classmethod
    def main(cls, cfg: Config, *args) -> int:
        """Entry of ``push-async``/``get-async``: take the handed-over lock (or the free one) and run."""
        LOG.configure(cfg, cls.group, console=False)
        parent = cls(cfg, *args)
        fd = lock.inherited_lock()
        if fd is None:
            fd = lock.try_lock(parent.lock_path)
            if fd is None:
                return 0
        started = time.monotonic()
        LOG.info(f"{cls.group} command begin: {parent.describe()}")
        # An error left by an earlier run is stale now that we try again: a foreground
        # must wait for this run's verdict instead of failing on the old one.
        spool.remove(os.path.join(parent.qdir, spool.GLOBAL_ERROR))
        try:
            return parent.run(fd)
        except BaseException as exc:
            parent.leave_verdict(exc)
            raise
        finally:
            LOG.info(f"{cls.group} command end: {time.monotonic() - started:.3f}s")

    def leave_verdict(self, exc: BaseException) -> None:
        """Write why this run ended early into ``global.error``, if that can still be written.

        Without it the foreground waits out ``archive-timeout`` and reports a timeout (082) that
        says nothing, on every retry, while the real reason (a spool file that cannot be
        written, a bug) is only in this process's log.
        """
        from pgpush.errors import PgPushError, unexpected

        err = exc if isinstance(exc, PgPushError) else unexpected(exc)
        try:
            spool.write_error(self.qdir, None, err)
        except PgPushError:
            pass  # the spool itself is what fails: the main entry still logs the reason
