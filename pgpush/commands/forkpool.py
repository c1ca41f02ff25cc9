"""Run per-file jobs of backup, restore and verify in ``process-max`` worker processes.

Each worker opens its own repository connection in its initializer (an SFTP
session or a socket cannot be shared across processes); jobs and results are
small picklable values (names, sizes, checksums), never storage objects.

The start method is ``fork``, chosen explicitly: ``spawn`` and
``forkserver`` re-import the main module by path, which for the zipapp is
``pgpush.pyz/__main__.py`` — not a file they can run.  ``fork`` is safe here
because the pool is created before the parent starts any thread (the rich
progress bar starts on the first result) and after the parent has closed its
own repository connection (paramiko runs a thread per connection).

The pool is this module's own, not ``multiprocessing.Pool``: that one waits
for ever for the result of a worker killed with SIGKILL (or by the OOM
killer).  Here every wait has an end: a worker that dies fails the command at
once, naming the file it was working on, and a job not answered within
``protocol-timeout`` gets its worker killed and fails the command (103) —
a hung storage call never leaves a backup or a restore waiting for ever.

A backup writes one read of each file to every configured repository
(:func:`run_all`): its workers hold one :class:`Repository` per repository, opened
without I/O so that one that cannot be reached costs only the jobs that use it, and
each job is completed by ``prepare`` as it is sent, so it names only the repositories
that are still healthy at that moment (docs/architecture.md, "One backup, every
repository").
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import signal
import time
import traceback
from collections.abc import Callable, Iterable
from typing import Any

from pgpush.config import Config
from pgpush.errors import PathCreateError, PgPushError, RepoInvalidError, UnexpectedError
from pgpush.log import LOG
from pgpush.repo.repository import Repository

START_METHOD = "fork"
_WORKER_REPO: Any = None  # a Repository, or with run_all {index: Repository}

Job = Any
Worker = Callable[[Repository, Job], Any]
Repos = dict[int, Repository]
AllWorker = Callable[[Repos, Job], Any]


def _init(cfg: Config, every: bool) -> None:
    global _WORKER_REPO
    if every:  # no I/O here: a repository that is down must not fail the jobs of the others
        _WORKER_REPO = {view.repo_index: Repository.from_config(view) for view in cfg.repos()}
        return
    _WORKER_REPO = Repository.from_config(cfg)
    if cfg["repo1-cipher-type"] != "none":
        _WORKER_REPO.load_archive_info()  # derive the key once per worker


def _close(repos: Any) -> None:
    for repo in (repos.values() if isinstance(repos, dict) else [repos]):
        repo.storage.close()


def _die_with_parent(parent_pid: int, siblings: list) -> None:
    """End with the command that forked us, even when it is killed (``kill -9``, the OOM killer).

    Two guards, because either alone leaves orphans: the kernel's parent-death signal
    (Linux ``PR_SET_PDEATHSIG``), and closing the parent's ends of the earlier workers'
    pipes that ``fork`` gave us, so that each pipe has one reader and a dead parent is an
    EOF for every worker instead of a read that waits for ever.
    """
    for conn in siblings:
        conn.close()
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux's libc: the EOF guard still holds
        pass
    if os.getppid() != parent_pid:  # it died before the signal was armed
        os._exit(1)


def _serve(cfg: Config, conn, parent_pid: int, siblings: list, every: bool) -> None:
    """A worker's life: open the repository, then answer ``(fn, job)`` items until ``None`` or EOF.

    A failure to open the repository is the answer to every job (the parent stops at the
    first), never a worker that dies and is started again and again.
    """
    _die_with_parent(parent_pid, siblings)
    failure: tuple[int, str] | None = None
    try:
        _init(cfg, every)
    except PgPushError as exc:
        failure = (exc.code, exc.message)
    except Exception as exc:  # noqa: BLE001 - a bug: report it with its traceback in the log
        LOG.debug(traceback.format_exc())
        failure = (25, f"{type(exc).__name__}: {exc}")
    try:
        while True:
            try:
                item = conn.recv()
            except EOFError:
                return
            if item is None:
                return
            try:
                conn.send((item[1], "error", failure) if failure else _call(item))
            except OSError:  # the parent is gone: nobody is left to answer
                return
    finally:
        if _WORKER_REPO is not None:
            _close(_WORKER_REPO)


def local_error(exc: OSError) -> PathCreateError:
    """A local file that cannot be read or written (47), named with the system's reason."""
    where = f" '{exc.filename}'" if exc.filename else ""
    return PathCreateError(f"unable to access{where}: {exc.strerror or exc}")


def call(fn: Callable[[Any, Job], Any], repo: Any, job: Job) -> Any:
    """``fn(repo, job)`` with a local OSError turned into a PgPushError (repository errors already are)."""
    try:
        return fn(repo, job)
    except OSError as exc:
        raise local_error(exc) from None


def _call(item: tuple[Callable[[Any, Job], Any], Job]) -> tuple[Job, str, Any]:
    """Run one job; errors travel back as (code, message) because a PgPushError's code does not pickle."""
    fn, job = item
    assert _WORKER_REPO is not None
    try:
        return job, "ok", call(fn, _WORKER_REPO, job)
    except PgPushError as exc:
        return job, "error", (exc.code, exc.message)
    except Exception as exc:  # noqa: BLE001 - a bug: report it with its traceback in the log
        LOG.debug(traceback.format_exc())
        return job, "error", (25, f"{type(exc).__name__}: {exc}")


def run(cfg: Config, fn: Worker, jobs: Iterable[Job], on_result: Callable[[Job, Any], None],
        parent_repo: Repository | None = None) -> None:
    """Run ``fn(repo, job)`` for every job and hand each result to ``on_result`` (in the parent).

    With ``process-max`` 1 the jobs run in this process, on the parent's
    connection when it is given (an SSH handshake less), else on one of
    their own.  The first error stops the pool and is raised.
    """
    jobs = list(jobs)
    workers = min(int(cfg["process-max"]), len(jobs))
    if workers <= 1:
        repo = parent_repo if parent_repo is not None else Repository.from_config(cfg)
        try:
            for job in jobs:
                on_result(job, call(fn, repo, job))
        finally:
            if repo is not parent_repo:
                repo.storage.close()
        return
    if parent_repo is not None:
        parent_repo.storage.close()  # no connection (nor its thread) may cross the fork
    _run_pool(cfg, workers, fn, jobs, on_result, False, None)


def run_all(cfg: Config, fn: AllWorker, jobs: Iterable[Job], on_result: Callable[[Job, Any], None],
            parent_repos: Repos, prepare: Callable[[Job], Job]) -> None:
    """Like :func:`run`, with ``fn(repos, job)`` given every repository of ``cfg.repos()`` by index.

    ``prepare(job)`` is called as each job is handed to a worker (in the parent), so it can
    say what has changed since the jobs were listed (a repository that failed meanwhile).
    ``parent_repos`` serve the jobs when they run in this process; they are closed before a fork.
    """
    jobs = list(jobs)
    workers = min(int(cfg["process-max"]), len(jobs))
    if workers <= 1:
        for job in jobs:
            ready = prepare(job)
            on_result(ready, call(fn, parent_repos, ready))
        return
    _close(parent_repos)  # no connection (nor its thread) may cross the fork
    _run_pool(cfg, workers, fn, jobs, on_result, True, prepare)


def _run_pool(cfg: Config, workers: int, fn: Callable[[Any, Job], Any], jobs: list[Job],
              on_result: Callable[[Job, Any], None], every: bool, prepare: Callable[[Job], Job] | None) -> None:
    pool = _Pool(cfg, workers, float(cfg["protocol-timeout"]), every)
    try:
        pool.run(fn, jobs, on_result, prepare)
    except BaseException:
        pool.kill()
        raise
    pool.close()


def describe(job: Job) -> str:
    """A job as an error names it: its file (the first field of a tuple), or the first of a batch."""
    if isinstance(job, list) and job:
        more = f" and {len(job) - 1} more" if len(job) > 1 else ""
        return describe(job[0]) + more
    if isinstance(job, tuple) and job:
        return str(job[0])
    return str(job)


class _Proc:
    """One forked worker and the parent's end of its pipe; ``job`` is what it works on, if anything."""

    def __init__(self, ctx, cfg: Config, siblings: list[_Proc], every: bool):
        self.conn, child = ctx.Pipe()
        others = [p.conn for p in siblings]
        self.proc = ctx.Process(target=_serve, args=(cfg, child, os.getpid(), others, every), daemon=True)
        self.proc.start()
        child.close()
        self.job: Job | None = None
        self.sent_at = 0.0

    def send(self, fn: Callable[[Any, Job], Any], job: Job) -> None:
        self.job, self.sent_at = job, time.monotonic()
        self.conn.send((fn, job))

    def died(self) -> PgPushError:
        self.proc.join(1.0)
        code = self.proc.exitcode
        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit status {code}"
        return UnexpectedError(f"worker process {self.proc.pid} died ({how}) while working on '{describe(self.job)}'")


class _Pool:
    """``process-max`` forked workers; every wait on them ends (a death, or ``timeout`` per job)."""

    def __init__(self, cfg: Config, size: int, timeout: float, every: bool = False):
        ctx = multiprocessing.get_context(START_METHOD)
        self.timeout = timeout
        self.procs: list[_Proc] = []
        for _ in range(size):
            self.procs.append(_Proc(ctx, cfg, self.procs, every))

    def run(self, fn: Callable[[Any, Job], Any], jobs: list[Job], on_result: Callable[[Job, Any], None],
            prepare: Callable[[Job], Job] | None = None) -> None:
        todo = list(reversed(jobs))  # popped from the end: the callers' order is kept
        while True:
            for proc in self.procs:
                if proc.job is None and todo:
                    job = todo.pop()
                    try:
                        proc.send(fn, prepare(job) if prepare is not None else job)
                    except OSError:  # it died idle: its pipe is closed
                        raise proc.died() from None
            busy = [p for p in self.procs if p.job is not None]
            if not busy:
                return
            wait = max(0.0, min(p.sent_at for p in busy) + self.timeout - time.monotonic())
            multiprocessing.connection.wait([p.conn for p in busy] + [p.proc.sentinel for p in busy], wait)
            for proc in busy:
                self._collect(proc, on_result)

    def _collect(self, proc: _Proc, on_result: Callable[[Job, Any], None]) -> None:
        """Take ``proc``'s answer if there is one; raise when it died or ran out of time."""
        if proc.conn.poll():
            try:
                job, state, value = proc.conn.recv()
            except (EOFError, OSError):
                raise proc.died() from None
            proc.job = None
            if state == "error":
                code, message = value
                raise PgPushError(message, code)
            on_result(job, value)
        elif not proc.proc.is_alive():
            raise proc.died()
        elif time.monotonic() - proc.sent_at >= self.timeout:
            raise RepoInvalidError(
                f"unable to find a valid repository: no answer within protocol-timeout ({self.timeout:g}s) "
                f"while working on '{describe(proc.job)}': worker process killed")

    def close(self) -> None:
        """Let idle workers close their connections and exit; kill any that do not."""
        for proc in self.procs:
            try:
                proc.conn.send(None)
            except OSError:
                pass
        for proc in self.procs:
            proc.proc.join(5.0)
        self.kill()

    def kill(self) -> None:
        """SIGKILL what still runs and reap it (a worker stuck in the kernel is left after a few seconds)."""
        for proc in self.procs:
            if proc.proc.is_alive():
                proc.proc.kill()
        for proc in self.procs:
            proc.proc.join(5.0)
            proc.conn.close()
