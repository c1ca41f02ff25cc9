"""The background parent of asynchronous get (SPEC §6): prefetch into the spool.

The foreground writes the segment recovery asks for into ``in/request``.
The parent fetches that segment first, then the ones after it on the same
timeline, at most ``archive-get-queue-max`` bytes (the segment size comes
from pg_control, never assumed), with ``process-max`` workers.  Files
arrive as ``SEGMENT.pgpush.tmp`` and are renamed when complete and verified.
It stops at the first segment the repository does not have and marks it
``SEGMENT.ok``; files recovery no longer needs (older, or of another
timeline) are removed.  Get never discards anything recovery may still need.
"""

from __future__ import annotations

import os
import time

from pgpush import spool, wal
from pgpush.errors import PgPushError
from pgpush.hotpath import segment_size
from pgpush.log import LOG
from pgpush.parent import AsyncParent

LINGER = 10.0  # seconds a get parent waits for recovery's next request before exiting


class GetParent(AsyncParent):
    group = "archive-get-async"
    direction = "in"

    def __init__(self, cfg, pgdata: str):
        super().__init__(cfg)
        self.segment_size = segment_size(pgdata)
        self.window = max(1, int(cfg["archive-get-queue-max"]) // self.segment_size)
        self.done: str | None = None  # the request (with its tag) the spool was last filled for
        self.request_text = ""

    def describe(self) -> str:
        return f"{super().describe()}, queue {self.window} segment(s)"

    def request(self) -> str | None:
        """The requested segment, from ``in/request`` (``SEGMENT TAG``; the tag makes each call distinct)."""
        self.request_text = spool.read_status(os.path.join(self.qdir, "request")) or ""
        name = (self.request_text.split() or [""])[0]
        return name if wal.SEGMENT_RE.fullmatch(name) else None

    def wanted(self, first: str) -> list[str]:
        names = [first]
        while len(names) < self.window:
            names.append(wal.next_segment(names[-1], self.segment_size))
        return names

    def clean(self, first: str, present: list[str]) -> None:
        """Remove what recovery no longer needs: older segments, other timelines."""
        tli = first[:8]
        for name in present:
            base = name[:24]
            if not wal.SEGMENT_RE.fullmatch(base) or name.endswith(spool.TMP_SUFFIX):
                continue
            if base[:8] != tli or base < first:
                spool.remove(os.path.join(self.qdir, name))

    def fetch_round(self, first: str) -> bool:
        """Fill the window from ``first``; False when the repo failed us."""
        present = os.listdir(self.qdir)
        self.clean(first, present)
        have = set(os.listdir(self.qdir))
        todo = [n for n in self.wanted(first) if n not in have and n + ".ok" not in have and n + ".error" not in have]
        pool = self._pool()
        missing_at: str | None = None
        ok = True
        while (todo and ok) or pool.busy:
            while todo and ok and pool.has_idle():
                name = todo.pop(0)
                if missing_at is not None and name > missing_at:
                    todo.clear()
                    break
                pool.submit({"op": "get", "name": name, "dir": self.qdir})
            for task, result in pool.results():
                name = task["name"]
                if result["ok"] and result.get("missing"):
                    if missing_at is None or name < missing_at:
                        missing_at = name
                    todo = [n for n in todo if n < name]
                    continue
                if result["ok"]:
                    spool.remove(os.path.join(self.qdir, name + ".error"))
                    spool.remove(os.path.join(self.qdir, spool.GLOBAL_ERROR))
                    LOG.detail(f"prefetched WAL file '{name}'")
                    continue
                ok = False
                err = PgPushError(result["message"], result["code"])
                LOG.error(f"[{err.code:03d}]: {err.message}")
                spool.write_error(self.qdir, None if result.get("global") else name, err)
        if missing_at is not None:
            # Beyond a missing segment nothing prefetched can be used yet.
            for name in os.listdir(self.qdir):
                if wal.SEGMENT_RE.fullmatch(name) and name > missing_at and name[:8] == missing_at[:8]:
                    spool.remove(os.path.join(self.qdir, name))
            spool.write_ok(self.qdir, missing_at)
            LOG.info(f"unable to find {missing_at} in the archive")
        return ok

    def work(self) -> bool:
        """Keep the window filled as recovery moves on; linger a little before giving up.

        The foreground names the next segment in ``in/request`` each time it takes one,
        so a lingering parent refills at once, with its workers' connections still open,
        instead of a new parent paying start-up and connect for every few segments.
        """
        idle_since = time.monotonic()
        while True:
            first = self.request()
            if first is not None and self.request_text != self.done:
                if not self.fetch_round(first):
                    return False
                self.done = self.request_text
                idle_since = time.monotonic()
                continue
            if time.monotonic() - idle_since >= LINGER:
                return True
            time.sleep(0.02)

    def more_work(self) -> bool:
        first = self.request()
        return first is not None and self.request_text != self.done


def run(cfg) -> int:
    """``get-async PGDATA [NAME]``: the background parent's entry."""
    return GetParent.main(cfg, os.path.abspath(cfg.args[0]))
