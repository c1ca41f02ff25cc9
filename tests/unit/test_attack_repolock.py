"""The catalog lock when a holder outlives the stale limit (a slow repository) and its lock is broken."""

from __future__ import annotations

import json
import threading

from pgpush.repo import catalog_lock
from pgpush.repo.repository import Repository
from pgpush.storage.posix import PosixStorage

CFG = {"repo1-host-timeout": "0.05"}  # stale after 0.2 s, waiters give up after 0.4 s


def _repo(root) -> Repository:
    return Repository(PosixStorage(str(root)), "main")


def _holder(repo: Repository) -> str | None:
    try:
        return json.loads(repo.storage.read(f"{repo.backup_root}/{catalog_lock.LOCK_NAME}"))["command"]
    except FileNotFoundError:
        return None


def test_a_holder_whose_lock_was_broken_does_not_release_the_new_holders_lock(tmp_path):
    repo = _repo(tmp_path)
    taken, done = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def second() -> None:
        try:
            with catalog_lock.catalog_lock(CFG, _repo(tmp_path), "backup"):
                taken.set()
                done.wait(30)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)
            taken.set()

    with catalog_lock.catalog_lock(CFG, repo, "expire"):
        thread = threading.Thread(target=second)
        thread.start()
        assert taken.wait(30), "the waiter never broke the stale lock"  # the first holder is slow: broken
        assert not errors, errors
        assert _holder(repo) == "backup"
    try:
        # The first holder is done: the lock it releases is no longer its own.
        assert _holder(repo) == "backup"
    finally:
        done.set()
        thread.join(30)
    assert _holder(repo) is None  # the second holder released its own

