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
"""

from __future__ import annotations

import multiprocessing
import traceback
from collections.abc import Callable, Iterable
from typing import Any

from pgpush.errors import PathCreateError, PgPushError
from pgpush.log import LOG
from pgpush.repository import Repository

START_METHOD = "fork"
_WORKER_REPO: Repository | None = None

Job = Any
Worker = Callable[[Repository, Job], Any]


def _init(cfg) -> None:
    global _WORKER_REPO
    _WORKER_REPO = Repository.from_config(cfg)
    if cfg["repo1-cipher-type"] != "none":
        _WORKER_REPO.load_archive_info()  # derive the key once per worker


def local_error(exc: OSError) -> PathCreateError:
    """A local file that cannot be read or written (47), named with the system's reason."""
    where = f" '{exc.filename}'" if exc.filename else ""
    return PathCreateError(f"unable to access{where}: {exc.strerror or exc}")


def call(fn: Worker, repo: Repository, job: Job) -> Any:
    """``fn(repo, job)`` with a local OSError turned into a PgPushError (repository errors already are)."""
    try:
        return fn(repo, job)
    except OSError as exc:
        raise local_error(exc) from None


def _call(item: tuple[Worker, Job]) -> tuple[Job, str, Any]:
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


def run(cfg, fn: Worker, jobs: Iterable[Job], on_result: Callable[[Job, Any], None],
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
    ctx = multiprocessing.get_context(START_METHOD)
    pool = ctx.Pool(workers, initializer=_init, initargs=(cfg,))
    try:
        for job, state, value in pool.imap_unordered(_call, ((fn, job) for job in jobs), chunksize=1):
            if state == "error":
                code, message = value
                raise PgPushError(message, code)
            on_result(job, value)
        pool.close()
    except BaseException:
        pool.terminate()
        raise
    finally:
        pool.join()
