"""The background parent of asynchronous push (docs/architecture.md, "Asynchronous push and get").

It holds the spool lock, reads ``pg_wal/archive_status/*.ready`` oldest
first, skips what already has a ``.ok``, and hands the files to a pool of
``process-max`` workers sharing its exec-id.  WAL is never copied into the
spool: it stays in pg_wal until its ``.ok`` says it is durable in the repo.

``archive-push-queue-max``: before every round the real sizes of the files
still waiting are summed again; over the limit, they are acknowledged
without being archived (a ``.ok`` carrying the drop warning), loudly, and the
hole is recorded in the repository (``SEGMENT.dropped``) as soon as it is
reachable — until then in ``out/dropped.list`` in the spool.
"""

from __future__ import annotations

import os
import time

from pgpush.archive import spool
from pgpush.archive.parent import AsyncParent
from pgpush.config import Config, format_size
from pgpush.errors import PgPushError
from pgpush.log import LOG

DROPPED_LIST = "dropped.list"
LINGER = 3.0  # seconds a push parent waits for more WAL before exiting


def _ready(status_dir: str) -> list[str]:
    """WAL names with a ``.ready`` file, oldest first (no per-file stat)."""
    try:
        names = os.listdir(status_dir)
    except FileNotFoundError:
        return []
    return sorted(n[:-6] for n in names if n.endswith(".ready"))


class PushParent(AsyncParent):
    group = "archive-push-async"
    direction = "out"
    ROUND_MAX = 64  # files pushed before the backup status is refreshed and the drop list written

    def __init__(self, cfg: Config, pg_wal: str):
        super().__init__(cfg)
        self.pg_wal = pg_wal
        self.status_dir = os.path.join(pg_wal, "archive_status")
        self.queue_max = cfg.get("archive-push-queue-max")
        self.failed = False

    def pending(self) -> list[str]:
        ready = _ready(self.status_dir)
        try:
            spooled = os.listdir(self.qdir)
        except FileNotFoundError:
            spooled = []
        oks = {n[:-3] for n in spooled if n.endswith(".ok")}
        ready_set = set(ready)
        for name in oks - ready_set:  # PostgreSQL has acknowledged it: .ready became .done
            spool.remove(os.path.join(self.qdir, name + ".ok"))
        return [n for n in ready if n not in oks]

    def drop_if_over(self, pending: list[str], inflight: set[str] | frozenset = frozenset()) -> list[str]:
        """Apply archive-push-queue-max to what waits; returns what is left to push.

        Files on their way to the repository count in the queue but are never dropped.
        """
        if self.queue_max is None or not pending:
            return pending
        total = 0
        for name in [*pending, *inflight]:
            try:
                total += os.stat(os.path.join(self.pg_wal, name)).st_size
            except FileNotFoundError:
                pass
        if total <= self.queue_max:
            return pending
        limit = format_size(int(self.queue_max))
        # never drop a timeline history file: recovery cannot cross it
        dropped = [n for n in pending if not n.endswith(".history")]
        # The hole's record is durable before any of its files is acknowledged: once PostgreSQL
        # has recycled a dropped file, this list is all that says the archive lacks it.
        path = os.path.join(self.qdir, DROPPED_LIST)
        rows = "".join(f"{name} {limit}\n" for name in dropped)
        spool.write_atomic(self.qdir, DROPPED_LIST, ((spool.read_status(path) or "") + rows).encode("ascii"), fsync=True)
        for name in dropped:
            message = f"dropped WAL file '{name}' because archive queue exceeded {limit}"
            spool.write_ok(self.qdir, name, message)
            LOG.warn(message)
        return [n for n in pending if n not in dropped]

    def record_drops(self) -> None:
        """Write the spooled drop records into the repository once it is reachable."""
        path = os.path.join(self.qdir, DROPPED_LIST)
        try:
            with open(path, encoding="ascii") as fh:
                rows = [line.split() for line in fh if line.strip()]
        except FileNotFoundError:
            return
        by_limit: dict[str, list[str]] = {}
        for name, limit in rows:
            by_limit.setdefault(limit, []).append(name)
        pool = self._pool()
        ok = True
        for limit, names in by_limit.items():
            pool.submit({"op": "drop", "names": names, "reason": f"archive queue exceeded {limit}"})
            for _task, result in self._wait_all():
                ok = ok and result["ok"]
        if ok:
            spool.remove(path)

    def _wait_all(self) -> list[tuple[dict, dict]]:
        out = []
        pool = self._pool()
        while pool.busy:
            out.extend(pool.results())
        return out

    def _record(self, task: dict, result: dict) -> None:
        name = os.path.basename(task["path"])
        if result["ok"]:
            spool.write_ok(self.qdir, name, result.get("warning"))
            spool.remove(os.path.join(self.qdir, name + ".error"))
            spool.remove(os.path.join(self.qdir, spool.GLOBAL_ERROR))
            if result.get("warning"):
                LOG.warn(result["warning"])
            return
        self.failed = True
        err = PgPushError(result["message"], result["code"])
        LOG.error(f"[{err.code:03d}]: {err.message}")
        spool.write_error(self.qdir, None if result.get("global") else name, err)

    def push_round(self, names: list[str]) -> None:
        """Push ``names`` with the pool, topping up with WAL that became ready meanwhile, so
        no worker idles while another finishes; stop handing out files after an error."""
        pool = self._pool()
        todo = list(names)
        inflight: set[str] = set()
        pushed = 0
        while (todo and not self.failed) or pool.busy:
            if not todo and not self.failed and pool.has_idle() and pushed < self.ROUND_MAX:
                todo = self.drop_if_over([n for n in self.pending() if n not in inflight], inflight)
            while todo and not self.failed and pool.has_idle():
                name = todo.pop(0)
                spool.remove(os.path.join(self.qdir, name + ".error"))  # stale: we try again now
                pool.submit({"op": "push", "path": os.path.join(self.pg_wal, name)})
                inflight.add(name)
            for task, result in pool.results():
                inflight.discard(os.path.basename(task["path"]))
                self._record(task, result)
                pushed += result["ok"]
        if pushed:
            pool.submit({"op": "refresh"})
            self._wait_all()

    def run_once(self) -> bool:
        """One round; True when there may be more to do."""
        pending = self.drop_if_over(self.pending())
        if os.path.exists(os.path.join(self.qdir, DROPPED_LIST)) and not self.failed:
            self.record_drops()
        if not pending:
            return False
        batch = pending[: max(8, 4 * int(self.cfg["process-max"]))]  # re-measure the queue between rounds
        self.push_round(batch)
        return not self.failed

    def work(self) -> bool:
        """Push all there is; then linger briefly for the next .ready before exiting.

        A busy cluster completes a segment every second or so: lingering keeps the
        workers and their connections for it instead of starting a new parent each time.
        """
        idle_since = time.monotonic()
        while True:
            while self.run_once():
                idle_since = time.monotonic()
            if self.failed:
                return False
            if time.monotonic() - idle_since >= LINGER:
                return True
            time.sleep(0.05)

    def more_work(self) -> bool:
        return bool(self.pending())


def run(cfg: Config) -> int:
    """``push-async PG_WAL_DIR [NAME]``: the background parent's entry."""
    return PushParent.main(cfg, os.path.abspath(cfg.args[0]))
