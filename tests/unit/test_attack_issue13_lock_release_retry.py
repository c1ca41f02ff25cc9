"""The catalog lock's release when the delete's answer is lost (issue #13's attack on the retry layer).

The retry layer repeats a ``delete`` whose answer was lost: safe for a name nobody writes again,
"a missing name is not an error".  The catalog lock is the one name that is written again at
once: a waiter polls every 0.2 s, and while the releasing holder waits for its lost answer (up to
``repo1-host-timeout``), the waiter takes the lock.  The blind second delete then removed the
*new* holder's lock, so a third process could take it too: two holders of the lock that keeps
expire from removing the prior a backup has just chosen.  Breaking a stale lock had the same
flaw.  Each try of these deletes must first see that the lock is still the one it means to remove.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from pgpush.repo import catalog_lock
from pgpush.repo.repository import Repository
from pgpush.storage.base import StorageError
from pgpush.storage.posix import PosixStorage
from pgpush.storage.retry import Policy, RetryingStorage

CFG = {"repo1-host-timeout": "5"}


class LostAnswers(PosixStorage):
    """Deletes of the lock happen, but the first one's answer is lost after ``meanwhile`` ran."""

    def __init__(self, root: str, meanwhile: Callable[[], None]):
        super().__init__(root)
        self.meanwhile: Callable[[], None] | None = meanwhile

    def delete(self, name: str) -> None:
        super().delete(name)
        if name.endswith(catalog_lock.LOCK_NAME) and self.meanwhile is not None:
            step, self.meanwhile = self.meanwhile, None
            step()  # another process, while this one waits for the answer that never comes
            raise StorageError("unable to find a valid repository:\nrepo1: connection lost", transient=True)


def _holder(repo: Repository) -> str | None:
    try:
        return json.loads(repo.storage.read(f"{repo.backup_root}/{catalog_lock.LOCK_NAME}"))["command"]
    except FileNotFoundError:
        return None


def _repo(storage) -> Repository:
    return Repository(RetryingStorage(storage, Policy(5.0, sleep=lambda _s: None)), "main")


def test_a_release_whose_answer_was_lost_leaves_the_next_holders_lock(tmp_path) -> None:
    other = _repo(PosixStorage(str(tmp_path)))
    held = []

    def next_holder_takes_it() -> None:
        cm = catalog_lock.catalog_lock(CFG, other, "expire")
        cm.__enter__()
        held.append(cm)

    repo = _repo(LostAnswers(str(tmp_path), next_holder_takes_it))
    with catalog_lock.catalog_lock(CFG, repo, "backup"):
        pass
    assert held, "the next holder never took the lock"
    assert _holder(other) == "expire", "the first holder's retried delete removed the next holder's lock"
    held[0].__exit__(None, None, None)
    assert _holder(other) is None


class Watched(LostAnswers):
    """And before each put of the lock, ``before_put`` (the next holder is seen, then lets go)."""

    def __init__(self, root: str, meanwhile: Callable[[], None], before_put: Callable[[], None]):
        super().__init__(root, meanwhile)
        self.before_put = before_put

    def put(self, name, chunks, overwrite=False):
        if name.endswith(catalog_lock.LOCK_NAME):
            self.before_put()
        return super().put(name, chunks, overwrite)


def test_breaking_a_stale_lock_whose_answer_was_lost_leaves_the_next_holders_lock(tmp_path) -> None:
    other = _repo(PosixStorage(str(tmp_path)))
    path = f"{other.backup_root}/{catalog_lock.LOCK_NAME}"
    crashed = json.dumps({"host": "h", "pid": 1, "command": "crashed", "time": 0, "token": "0"}).encode()
    other.storage.put(path, [crashed])
    held, seen = [], []

    def next_holder_takes_it() -> None:
        cm = catalog_lock.catalog_lock(CFG, other, "expire")
        cm.__enter__()
        held.append(cm)

    def before_put() -> None:
        if held:  # the breaker tries again: the next holder must still hold the lock; then it is done
            seen.append(_holder(other))
            held.pop().__exit__(None, None, None)

    repo = _repo(Watched(str(tmp_path), next_holder_takes_it, before_put))
    with catalog_lock.catalog_lock(CFG, repo, "backup"):
        assert _holder(other) == "backup"
    assert seen == ["expire"], "the breaker's retried delete removed the next holder's lock"
    assert _holder(other) is None
