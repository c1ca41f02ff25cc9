"""The background parent of asynchronous push (docs/architecture.md, "Asynchronous push and get").

It holds the spool lock, reads ``pg_wal/archive_status/*.ready`` oldest
first, skips what already has a ``.ok``, and hands the files to a pool of
``process-max`` workers sharing its exec-id.  WAL is never copied into the
spool: it stays in pg_wal until its ``.ok`` says it is durable in every
configured repository.

With several repositories each task names its repository; what each holds
of the files not yet acknowledged is kept in the spool, and a repository that
fails is set aside and tried again at a bounded pace while the others go on
(:mod:`pgpush.archive.push_state`).  With one, the first failure ends the run.

``archive-push-queue-max``: before every round the real sizes of the files
still waiting (not yet in every repository) are summed again; over the limit,
they are acknowledged without being archived (a ``.ok`` carrying the drop
warning), loudly, and the hole is recorded (``SEGMENT.dropped``) in each
repository that lacks the file as soon as it is reachable — until then in
the spool (``out/dropped.list``, ``out/repoN/dropped.list``).
"""

from __future__ import annotations

import os
import time

from pgpush.archive import spool
from pgpush.archive.parent import AsyncParent
from pgpush.archive.push_state import Markers, RepoHealth, combined, dropped_list, missing, plan
from pgpush.config import Config, format_size
from pgpush.errors import PgPushError
from pgpush.log import LOG

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
        self.indexes = cfg.root.repo_indexes()
        self.several = len(self.indexes) > 1
        # A failed repository is tried again this often: a quarter of what a foreground waits for a
        # verdict, so one waiting meanwhile sees a fresh one (never below half a second: no spinning).
        self.retry = max(0.5, float(cfg["archive-timeout"]) / 4)
        self.health = RepoHealth(self.indexes, self.retry)
        self.markers = Markers(self.qdir, self.indexes, pg_wal,
                               {i: repr(cfg.root.repo(i).location()) for i in self.indexes})
        self.warnings: dict[str, list[str]] = {}  # per WAL file, until it is in every repository
        self.file_errors: dict[str, dict[int, PgPushError]] = {}  # per WAL file, per repository
        self.global_text: str | None = None  # what this parent last wrote into global.error
        self.failed = False  # no repository can take anything: hand out nothing more, end the run

    def label(self, index: int) -> str:
        return f"repo{index}"

    def named(self, err: PgPushError, index: int) -> PgPushError:
        """``err`` naming its repository when there are several (one: exactly as ever)."""
        return err.in_repo(self.label(index)) if self.several else err

    def _unacknowledged(self) -> list[str]:
        """``.ready`` files without a ``.ok``, oldest first."""
        ready = _ready(self.status_dir)
        try:
            spooled = os.listdir(self.qdir)
        except FileNotFoundError:
            spooled = []
        oks = {n[:-3] for n in spooled if n.endswith(".ok")}
        for name in oks - set(ready):  # PostgreSQL has acknowledged it: .ready became .done
            spool.remove(os.path.join(self.qdir, name + ".ok"))
        return [n for n in ready if n not in oks]

    def pending(self) -> list[str]:
        """``.ready`` files not yet acknowledged, oldest first; with several repositories the
        markers are read again, and a file found in every repository is acknowledged now."""
        out = self._unacknowledged()
        if self.several:
            held = self.markers.load(set(out))
            for name in [n for n in out if not missing(n, held, self.indexes)]:
                self._acknowledge(name)  # e.g. a repository removed from the configuration
                out.remove(name)
        return out

    # -- archive-push-queue-max ---------------------------------------------------------------------

    def drop_if_over(self, pending: list[str], inflight: set[str] | frozenset = frozenset()) -> list[str]:
        """Apply archive-push-queue-max to what waits; returns what is left to push.

        Files on their way to a repository count in the queue but are never dropped.
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
        # has recycled a dropped file, these lists are all that says a repository lacks it.
        held = self.markers.held if self.several else {}
        for index in self.indexes:
            rows = "".join(f"{name} {limit}\n" for name in dropped if name not in held.get(index, ()))
            if rows:
                path = dropped_list(self.qdir, index)
                spool.make_dir(os.path.dirname(path))
                content = (spool.read_status(path) or "") + rows
                spool.write_atomic(os.path.dirname(path), os.path.basename(path), content.encode("ascii"), fsync=True)
        for name in dropped:
            message = f"dropped WAL file '{name}' because archive queue exceeded {limit}"
            spool.write_ok(self.qdir, name, message)
            if self.several:
                self.markers.clear(name)
            self.warnings.pop(name, None)
            LOG.warn(message)
        return [n for n in pending if n not in dropped]

    def record_drops(self) -> None:
        """Write each repository's spooled drop records into it once it is reachable."""
        for index in self.indexes:
            path = dropped_list(self.qdir, index)
            try:
                with open(path, encoding="ascii") as fh:
                    rows = [line.split() for line in fh if line.strip()]
            except FileNotFoundError:
                continue
            if not self.health.take(index):
                continue  # failing: its holes wait in the spool
            by_limit: dict[str, list[str]] = {}
            for name, limit in rows:
                by_limit.setdefault(limit, []).append(name)
            results = self._run([{"op": "drop", "names": names, "reason": f"archive queue exceeded {limit}", "repo": index}
                                 for limit, names in by_limit.items()])
            failures = [r for _t, r in results if not r["ok"]]
            if not failures:
                spool.remove(path)
                if self.health.succeed(index):
                    self._write_global()
                continue
            if any(r.get("global") for r in failures):
                self._failed(index, None, failures[0])
            else:
                self.health.probing.discard(index)
                LOG.warn(f"unable to record dropped WAL in {self.label(index)}: [{failures[0]['code']:03d}]: "
                         f"{failures[0]['message']}")

    # -- the pool ------------------------------------------------------------------------------------

    def _run(self, tasks: list[dict]) -> list[tuple[dict, dict]]:
        """Run ``tasks`` on the pool (as workers are free) and wait for every result."""
        pool = self._pool()
        out: list[tuple[dict, dict]] = []
        todo = list(tasks)
        while todo or pool.busy:
            while todo and pool.has_idle():
                pool.submit(todo.pop(0))
            out.extend(pool.results())
        return out

    # -- verdicts ------------------------------------------------------------------------------------

    def _acknowledge(self, name: str) -> None:
        """``name`` is in every repository: its ``.ok`` (with the warnings, if any), its markers go."""
        warnings = self.warnings.pop(name, [])
        spool.write_ok(self.qdir, name, "\n".join(warnings) or None)
        if self.several:
            self.markers.clear(name)
        self.file_errors.pop(name, None)
        spool.remove(os.path.join(self.qdir, name + ".error"))

    def _write_file_error(self, name: str) -> None:
        """``name.error``: what each repository that refused the file said; removed when none does."""
        errors = self.file_errors.get(name) or {}
        if errors:
            spool.write_error(self.qdir, name, combined([errors[i] for i in sorted(errors)]))
        else:
            self.file_errors.pop(name, None)
            spool.remove(os.path.join(self.qdir, name + ".error"))

    def _write_global(self) -> None:
        """``global.error``: every unreachable repository, or nothing when all answer."""
        err = self.health.global_error()
        if err is None:
            self.global_text = None
            spool.remove(os.path.join(self.qdir, spool.GLOBAL_ERROR))
            return
        text = f"{err.code}\n{err.message}"
        if text != self.global_text:
            spool.write_error(self.qdir, None, err)
            self.global_text = text

    def _failed(self, index: int, name: str | None, result: dict) -> None:
        err = self.named(PgPushError(result["message"], result["code"]), index)
        LOG.error(f"[{err.code:03d}]: {err.message}")
        is_global = bool(result.get("global")) or name is None
        self.health.fail(index, err, is_global)
        if is_global:
            self._write_global()
        else:
            assert name is not None
            self.file_errors.setdefault(name, {})[index] = err
            self._write_file_error(name)
            self._write_global()  # the repository answers again: it is not unreachable any more
        if self.health.all_failed():
            self.failed = True

    def _record(self, task: dict, result: dict) -> None:
        name = os.path.basename(task["path"])
        index = int(task.get("repo", 1))
        if not result["ok"]:
            self._failed(index, name, result)
            return
        self.health.succeed(index)
        if result.get("warning"):
            warning = f"{self.label(index)}: {result['warning']}" if self.several else result["warning"]
            self.warnings.setdefault(name, []).append(warning)
            LOG.warn(warning)
        if self.several and missing(name, self.markers.held, [i for i in self.indexes if i != index]):
            self.markers.mark(name, index)
            self._write_file_error(name)
        else:
            self._acknowledge(name)
        self._write_global()

    def _submit(self, name: str, index: int) -> None:
        """Hand ``name`` to a worker for repository ``index``; the file's error from this repository
        (or, the first time this run, any left by an earlier run) is stale: we try again now."""
        errors = self.file_errors.get(name)
        if errors:
            errors.pop(index, None)
        self._write_file_error(name)
        self._pool().submit({"op": "push", "path": os.path.join(self.pg_wal, name), "repo": index})

    # -- rounds --------------------------------------------------------------------------------------

    def plan(self, names: list[str], busy: set[tuple[str, int]], limit: int) -> list[tuple[str, int]]:
        if not self.several:
            return [(n, 1) for n in names if (n, 1) not in busy][:limit]
        return plan(names, self.markers.held, self.indexes, self.health.quota, busy, limit)

    def push_round(self, names: list[str], limit: int) -> int:
        """Push ``names`` with the pool, topping up with WAL that became ready meanwhile, so no
        worker idles while another finishes; stop handing a repository files after it failed.
        Returns how many pushes succeeded."""
        pool = self._pool()
        todo = self.plan(names, set(), limit)
        inflight: set[tuple[str, int]] = set()
        pushed = 0
        touched: set[int] = set()
        while (todo and not self.failed) or pool.busy:
            if not todo and not self.failed and pool.has_idle() and pushed < self.ROUND_MAX:
                busy_names = {n for n, _i in inflight}
                fresh = self.drop_if_over([n for n in self.pending() if n not in busy_names], busy_names)
                todo = self.plan(fresh, inflight, self.ROUND_MAX)
            while todo and not self.failed and pool.has_idle():
                name, index = todo.pop(0)
                if not self.health.take(index):
                    continue  # failed during this round
                self._submit(name, index)
                inflight.add((name, index))
            for task, result in pool.results():
                inflight.discard((os.path.basename(task["path"]), int(task.get("repo", 1))))
                self._record(task, result)
                if result["ok"]:
                    pushed += 1
                    touched.add(int(task.get("repo", 1)))
        if touched:
            self._run([{"op": "refresh", "repo": i} for i in self.indexes if i in touched])
        return pushed

    def run_once(self) -> bool:
        """One round; True when there may be more to do."""
        pending = self.drop_if_over(self.pending())
        if not self.failed:
            self.record_drops()
        if not pending or self.failed:
            return False
        batch = max(8, 4 * int(self.cfg["process-max"]))  # re-measure the queue between rounds
        pushed = self.push_round(pending, batch)
        return pushed > 0 and not self.failed

    def work(self) -> bool:
        """Push all there is; then linger briefly for the next .ready before exiting.

        A busy cluster completes a segment every second or so: lingering keeps the
        workers and their connections for it instead of starting a new parent each time.
        While a repository fails (with several) the parent goes on for the others and lingers
        long enough to try it once more; it ends the run with that failure on file, and the
        next foreground starts a fresh parent.
        """
        idle_since = time.monotonic()
        while True:
            while self.run_once():
                idle_since = time.monotonic()
            if self.failed:
                return False
            linger = max(LINGER, self.retry) if self.health.failed else LINGER
            if time.monotonic() - idle_since >= linger:
                return not self.health.failed
            time.sleep(0.05)

    def more_work(self) -> bool:
        """Asked after the lock was released: reads, and writes no marker (another parent may own them now)."""
        return bool(self._unacknowledged())


def run(cfg: Config) -> int:
    """``push-async PG_WAL_DIR [NAME]``: the background parent's entry."""
    return PushParent.main(cfg, os.path.abspath(cfg.args[0]))
