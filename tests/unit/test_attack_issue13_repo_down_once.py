"""Loops over repository items against a repository that stops answering (issue #13's attack on retries).

Each storage operation already spends the retry layer's whole budget (about twice
repo1-host-timeout against a frozen host) before it fails.  A loop that records that failure
per item and goes on multiplies the budget by the number of items:

- verify caught it per manifest as "backup X: ..." and went on: N backups cost N budgets, and
  the unreachable repository was counted as N problems in the backups;
- expire warned per incomplete backup it could not remove and went on.

A repository that fails (103, transient) ends the run at the first item.
"""

from __future__ import annotations

import pytest

from pgpush.commands import expire, verify
from pgpush.errors import RepoInvalidError
from pgpush.repo.catalog import Catalog
from pgpush.repo.repository import Repository
from pgpush.storage.base import StorageError
from pgpush.storage.posix import PosixStorage


class Unreachable(PosixStorage):
    """Every read fails the way the retry layer's last try does against a frozen host."""

    def __init__(self, root: str):
        super().__init__(root)
        self.reads = 0

    def read_chunks(self, name):
        self.reads += 1
        raise StorageError("unable to find a valid repository:\nrepo1: timeout after 1s", transient=True)


def test_an_unreachable_repository_ends_the_manifest_reads_at_the_first(tmp_path) -> None:
    storage = Unreachable(str(tmp_path))
    cat = Catalog(Repository(storage, "main"))
    backups = [{"label": f"20260101-00000{n}F"} for n in range(5)]
    problems: list[str] = []
    with pytest.raises(RepoInvalidError):
        verify._backup_jobs(cat, backups, problems)
    assert storage.reads == 1 and problems == []


class UnreachableTree(PosixStorage):
    def __init__(self, root: str, transient: bool):
        super().__init__(root)
        self.transient = transient
        self.deletes = 0

    def delete_tree(self, directory):
        self.deletes += 1
        raise StorageError("unable to find a valid repository:\nrepo1: timeout after 1s", transient=self.transient)


def test_expire_stops_removing_incomplete_backups_at_an_unreachable_repository(tmp_path) -> None:
    storage = UnreachableTree(str(tmp_path), transient=True)
    with pytest.raises(RepoInvalidError):
        expire._remove_incomplete(Catalog(Repository(storage, "main")), "20260101-000000F")


def test_expire_leaves_an_incomplete_backup_it_may_not_remove_with_a_warning(tmp_path) -> None:
    storage = UnreachableTree(str(tmp_path), transient=False)  # permission denied, say: WAL still expires
    expire._remove_incomplete(Catalog(Repository(storage, "main")), "20260101-000000F")
    assert storage.deletes == 1
