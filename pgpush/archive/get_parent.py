"""The background parent of asynchronous get (docs/architecture.md, "Asynchronous push and get"): prefetch into the spool.

The foreground writes the segment recovery asks for into ``in/request``.
The parent fetches that segment first, then the ones after it on the same
timeline, at most ``archive-get-queue-max`` bytes (the segment size comes
from pg_control, never assumed), with ``process-max`` workers.  Files
arrive as ``SEGMENT.pgpush.tmp`` and are renamed when complete and verified.
With several repositories each segment comes from the first, in priority
order, that has it whole (a worker asks them in turn, pgpush/archive/worker.py);
"not there" is the answer only when every repository gave it.
It stops at the first segment the repository does not have and marks it
``SEGMENT.ok``, whose content is the request it answers: a "not in the
repository" answer is only valid for the request that asked (the segment
may be archived a moment later), so the foreground honours a marker carrying
its own request only, and every new request clears the older markers and
looks again.  Files recovery no longer needs (older, or of another
timeline) are removed.  Get never discards anything recovery may still need.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

from pgpush import fsutil, wal
from pgpush.archive import spool
from pgpush.archive.parent import AsyncParent
from pgpush.config import Config
from pgpush.errors import PgPushError
from pgpush.log import LOG

if TYPE_CHECKING:
    from pgpush.archive.pool import WorkerPool

LINGER = 10.0  # seconds a get parent waits for recovery's next request before exiting
CRASH_RETRIES = 2  # fresh workers given a segment after a worker died on it, per request


class GetParent(AsyncParent):
    group = "archive-get-async"
    direction = "in"

    def __init__(self, cfg: Config, pgdata: str):
        super().__init__(cfg)
        self.pgdata = pgdata
        self.segment_size = wal.control_segment_size(pgdata)
        self.window = max(1, int(cfg["archive-get-queue-max"]) // self.segment_size)
        self.done: str | None = None  # the request (with its tag) last taken into account
        self.request_text = ""
        self.first: str | None = None  # the segment recovery asked for last
        self.missing_at: str | None = None  # the first segment of the window the repo lacks
        self.inflight: set[str] = set()
        self.crashes: dict[str, int] = {}  # workers that died on each segment, since the current request
        self.failed = False  # the repository failed us: hand out nothing more, leave when the workers are done

    def describe(self) -> str:
        return f"{super().describe()}, queue {self.window} segment(s)"

    def request(self) -> str | None:
        """The requested segment, from ``in/request`` (``SEGMENT TAG``; the tag makes each call distinct)."""
        self.request_text = spool.read_status(os.path.join(self.qdir, "request")) or ""
        name = (self.request_text.split() or [""])[0]
        return name if wal.is_segment(name) else None

    def wanted(self, first: str) -> list[str]:
        names = [first]
        while len(names) < self.window:
            names.append(wal.next_segment(names[-1], self.segment_size))
        return names

    def clean(self, present: list[str]) -> None:
        """Remove what recovery no longer needs (older segments, other timelines) since it asked for ``self.first``,
        and every per-segment verdict ("missing" markers, errors): each answered an older request, and a
        new request looks again."""
        for name in present:
            base = name[:24]
            if name.endswith((".ok", ".error")) and name != spool.GLOBAL_ERROR:
                spool.remove(os.path.join(self.qdir, name))
                continue
            if not wal.is_segment(base):
                continue
            if name.endswith(fsutil.TMP_SUFFIX):
                if name == base + fsutil.TMP_SUFFIX and base not in self.inflight:
                    # left by a worker killed mid-file (protocol-timeout, a crash): nobody will
                    # finish it, and a segment's worth of spool would stay taken for ever
                    spool.remove(os.path.join(self.qdir, name))
                continue
            if not self._wanted_now(base):
                spool.remove(os.path.join(self.qdir, name))

    def _submit(self, pool) -> None:
        """Hand the next wanted segments to idle workers, in recovery order."""
        if self.first is None or not pool.has_idle():
            return
        have = set(os.listdir(self.qdir))
        for name in self.wanted(self.first):
            if not pool.has_idle():
                return
            if self.missing_at is not None and name >= self.missing_at:
                return  # a missing segment is asked again on the next request; beyond it nothing is usable yet
            if name in self.inflight or name in have or name + ".ok" in have or name + ".error" in have:
                continue
            self.inflight.add(name)
            pool.submit({"op": "get", "name": name, "dir": self.qdir, "request": self.done, "pgdata": self.pgdata})

    def _wanted_now(self, name: str) -> bool:
        """Is ``name`` still of use to recovery: on the requested timeline, not older than the request?"""
        return self.first is not None and name[:8] == self.first[:8] and name >= self.first

    def _missing(self, name: str | None = None) -> None:
        """Note a segment the repository lacks; mark the hole ``.ok`` once every earlier one is answered.

        Called again after every answer (``name`` None): the last earlier segment may just have come.
        Answers for segments recovery no longer wants (it moved on, or to another timeline) are ignored.
        """
        if name is not None and self._wanted_now(name) and (self.missing_at is None or name < self.missing_at):
            self.missing_at = name
        if self.missing_at is None:
            return
        if any(self._wanted_now(n) and n < self.missing_at for n in self.inflight):
            return  # an earlier segment may be missing too: wait for it
        for other in os.listdir(self.qdir):  # prefetched beyond the hole: unusable for now
            if wal.is_segment(other) and other > self.missing_at and other[:8] == self.missing_at[:8]:
                spool.remove(os.path.join(self.qdir, other))
        marker = os.path.join(self.qdir, self.missing_at + ".ok")
        if spool.read_status(marker) != self.done:
            spool.write_atomic(self.qdir, self.missing_at + ".ok", (self.done or "").encode())
            LOG.info(f"unable to find {self.missing_at} in the archive")

    def _record(self, task: dict, result: dict) -> bool:
        """Book one worker result; False when the repository failed us."""
        name = task["name"]
        self.inflight.discard(name)
        if result["ok"] and result.get("missing"):
            if task.get("request") == self.done:
                self._missing(name)
            # else: looked before the current request; _submit asks again for it
            return True
        if result["ok"]:
            spool.remove(os.path.join(self.qdir, name + ".error"))
            spool.remove(os.path.join(self.qdir, spool.GLOBAL_ERROR))
            source = f" from {result['from']}" if result.get("from") else ""  # not the first repository's
            LOG.detail(f"prefetched WAL file '{name}'{source}")
            if not self._wanted_now(name) or (self.missing_at is not None and name > self.missing_at):
                spool.remove(os.path.join(self.qdir, name))  # recovery moved on while it came, or past a hole
            self._missing()  # this may have been the last answer before the hole
            return True
        if not result.get("global") and not self._current(task):
            return True  # an error met for an older request: _submit asks again for this one
        if result.get("crashed") and self.crashes.get(name, 0) < CRASH_RETRIES:
            # A worker that died (the OOM killer, kill -9) said nothing about the segment: any
            # failure ends an archive recovery as if the archive were exhausted, so _submit hands
            # it to a fresh worker instead.  Only a segment that kills every worker is an error.
            self.crashes[name] = self.crashes.get(name, 0) + 1
            LOG.warn(f"{result['message']}: asking another worker")
            return True
        err = PgPushError(result["message"], result["code"])
        LOG.error(f"[{err.code:03d}]: {err.message}")
        spool.write_error(self.qdir, None if result.get("global") else name, err)
        return False

    def _current(self, task: dict) -> bool:
        """Was ``task`` handed out for the request that is in ``in/request`` now?

        Read again here, not only once per loop: a verdict on one segment is only the answer
        to the request it was looked up for (see the module docstring).
        """
        self.request()
        return task.get("request") == self.done == self.request_text

    def work(self) -> bool:
        """Keep the window full as recovery moves on; linger a little before giving up.

        No rounds: each time a worker is free it gets the first wanted segment that is
        neither in the spool nor on its way, so ``process-max`` workers stay busy and the
        segment recovery waits for is always the next one handed out.  The foreground names
        the next segment in ``in/request`` each time it takes one, so a lingering parent
        slides its window at once, with its workers' connections still open.
        """
        pool = self._pool()
        idle_since = time.monotonic()
        self.failed = False
        while True:
            new_request, busy = self.turn(pool)
            if new_request or busy:
                idle_since = time.monotonic()
            if busy:
                continue
            if self.failed:
                return False
            if time.monotonic() - idle_since >= LINGER:
                return True
            time.sleep(0.02)

    def turn(self, pool: WorkerPool) -> tuple[bool, bool]:
        """One pass of :meth:`work`'s loop, without its waiting: take a new request into account,
        hand wanted segments to idle workers, book the answers that are ready.

        A method of its own so that the ordering rules can be driven step by step with a scripted
        pool (tests/unit/test_asyncget_window.py).  Returns (a new request came, workers were busy).
        """
        new_request = False
        first = self.request()
        if first is not None and self.request_text != self.done:
            self.done = self.request_text
            self.first, self.missing_at = first, None  # a new request: look again
            self.crashes.clear()
            self.clean(os.listdir(self.qdir))
            new_request = True
        if not self.failed:
            self._submit(pool)
        if not pool.busy:
            return new_request, False
        for task, result in pool.results(timeout=0.02):
            self.failed = not self._record(task, result) or self.failed
        return new_request, True

    def more_work(self) -> bool:
        first = self.request()
        return first is not None and self.request_text != self.done


def run(cfg: Config) -> int:
    """``get-async PGDATA [NAME]``: the background parent's entry."""
    return GetParent.main(cfg, os.path.abspath(cfg.args[0]))
