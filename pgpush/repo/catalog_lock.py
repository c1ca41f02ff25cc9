"""The stanza's catalog lock: ``backup/STANZA/catalog.lock`` in the repository itself.

A diff or incr backup chooses its prior, then references that backup's files; ``expire``
removes backups.  Run at the same moment, expire could remove the prior just chosen and leave
a backup whose files point nowhere.  Both take this lock for the short part where they decide:

- ``backup`` from reading the catalog until its label directory exists (a marker file):
  from then on ``expire`` sees it in progress and keeps its full's whole chain;
- ``expire`` from reading the catalog until the backups it removes have lost their entry and
  their manifest (the commit point): after that no backup can choose them.

It is a file written with a put that never overwrites, so it works the same on posix, SFTP
and S3 (the hosts running backup and expire share nothing else).  Its body names the holder
and when it took it.  A lock older than :func:`stale_after` was left by a crashed process: a
waiter breaks it (with a warning) and goes on, so a crash never blocks backups and expire for
good.  A waiter that still has not got the lock after twice that time (the lock is taken again
and again, or its time stamp is in the future: clocks differ) fails with error 50, pgBackRest's
lock error.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager

from pgpush.config import Config
from pgpush.errors import LockAcquireError
from pgpush.log import LOG
from pgpush.repo.repository import Repository
from pgpush.storage.base import StorageError

LOCK_NAME = "catalog.lock"
POLL = 0.2


def stale_after(cfg: Config) -> float:
    """How long a holder may keep the lock: a few repository round trips, each bounded by the I/O timeout."""
    return 4 * float(cfg["repo1-host-timeout"])


def _read(repo: Repository, path: str) -> bytes | None:
    """The lock's body as stored; None when it is gone."""
    try:
        return repo.storage.read(path)
    except FileNotFoundError:
        return None


def _age(raw: bytes) -> float:
    """Seconds since the holder of a lock with this body took it."""
    try:
        return time.time() - float(json.loads(raw)["time"])
    except (ValueError, KeyError, TypeError, RecursionError):
        return float("inf")  # unreadable: treat as left by a crash


def _owner(raw: bytes | None) -> str | None:
    try:
        return str(json.loads(raw)["token"]) if raw is not None else None
    except (ValueError, KeyError, TypeError, RecursionError):
        return None


def _delete_if_still(repo: Repository, path: str, raw: bytes, budget: float) -> None:
    """Delete the lock at ``path`` only while its body is ``raw``, read again before each try.

    A delete whose answer was lost may have removed the lock; the next holder takes it at
    once (waiters poll every :data:`POLL` seconds), and a blind second delete would remove *its*
    lock.  So the delete is tried once at a time (``delete_once``), and after a transient
    failure the body is looked at again, for at most ``budget`` seconds (the retry layer's).
    """
    deadline = time.monotonic() + budget
    while _read(repo, path) == raw:
        try:
            repo.storage.delete_once(path)
            return
        except StorageError as exc:
            if not exc.transient or time.monotonic() >= deadline:
                raise
        time.sleep(POLL)


def _break_if_stale(repo: Repository, path: str, limit: float, budget: float) -> None:
    """Remove a lock older than ``limit``, only if it is still the very lock found stale.

    Two waiters may find one stale lock: the second must not remove the lock the first has
    just taken in its place, so the body is read again right before the delete.
    """
    raw = _read(repo, path)
    if raw is None or (age := _age(raw)) <= limit:
        return
    LOG.warn(f"breaking the catalog lock of stanza '{repo.stanza}': taken {age:.0f}s ago by a process "
             "that did not release it")
    _delete_if_still(repo, path, raw, budget)


def _release(repo: Repository, path: str, token: str, budget: float) -> None:
    """Remove the lock if it is still ours: one broken as stale while we held it belongs to its new holder."""
    raw = _read(repo, path)
    if raw is None or _owner(raw) != token:
        LOG.warn(f"the catalog lock of stanza '{repo.stanza}' was broken while this {path.rsplit('/', 1)[-1]} holder "
                 "ran (it took longer than the lock's stale limit): left to its new holder")
        return
    _delete_if_still(repo, path, raw, budget)


@contextmanager
def catalog_lock(cfg: Config, repo: Repository, command: str) -> Iterator[None]:
    """Hold the stanza's catalog lock for the body; waits at most twice :func:`stale_after` for it."""
    path = f"{repo.backup_root}/{LOCK_NAME}"
    limit = stale_after(cfg)
    budget = float(cfg["repo1-host-timeout"])
    token = os.urandom(8).hex()
    body = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "command": command, "time": time.time(),
                       "token": token})
    deadline = time.monotonic() + 2 * limit
    while True:
        try:
            repo.storage.put(path, [body.encode()])
            break
        except FileExistsError:
            _break_if_stale(repo, path, limit, budget)
        if time.monotonic() >= deadline:
            raise LockAcquireError(f"unable to acquire the catalog lock of stanza '{repo.stanza}' within "
                                   f"{2 * limit:g}s: another backup or expire holds it ({path})")
        time.sleep(POLL)
    try:
        yield
    finally:
        try:
            _release(repo, path, token, budget)
        except Exception as exc:  # noqa: BLE001 - the body's own outcome matters more; it goes stale
            LOG.warn(f"unable to release the catalog lock of stanza '{repo.stanza}': {exc}")
