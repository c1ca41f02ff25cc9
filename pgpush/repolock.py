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

from pgpush.errors import PgPushError
from pgpush.log import LOG
from pgpush.repository import Repository

LOCK_NAME = "catalog.lock"
LOCK_ERROR = 50
POLL = 0.2


def stale_after(cfg) -> float:
    """How long a holder may keep the lock: a few repository round trips, each bounded by the I/O timeout."""
    return 4 * float(cfg["repo1-host-timeout"])


def _age(repo: Repository, path: str) -> float | None:
    """Seconds since the holder took the lock; None when it is gone."""
    try:
        body = json.loads(repo.storage.read(path))
        return time.time() - float(body["time"])
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError):
        return float("inf")  # unreadable: treat as left by a crash


@contextmanager
def catalog_lock(cfg, repo: Repository, command: str) -> Iterator[None]:
    """Hold the stanza's catalog lock for the body; waits at most twice :func:`stale_after` for it."""
    path = f"{repo.backup_root}/{LOCK_NAME}"
    limit = stale_after(cfg)
    body = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "command": command, "time": time.time()})
    deadline = time.monotonic() + 2 * limit
    while True:
        try:
            repo.storage.put(path, [body.encode()])
            break
        except FileExistsError:
            age = _age(repo, path)
            if age is not None and age > limit:
                LOG.warn(f"breaking the catalog lock of stanza '{repo.stanza}': taken {age:.0f}s ago by a process "
                         "that did not release it")
                repo.storage.delete(path)
                continue
        if time.monotonic() >= deadline:
            raise PgPushError(f"unable to acquire the catalog lock of stanza '{repo.stanza}' within {2 * limit:g}s: "
                              f"another backup or expire holds it ({path})", LOCK_ERROR)
        time.sleep(POLL)
    try:
        yield
    finally:
        try:
            repo.storage.delete(path)
        except Exception as exc:  # noqa: BLE001 - the body's own outcome matters more; it goes stale
            LOG.warn(f"unable to release the catalog lock of stanza '{repo.stanza}': {exc}")
