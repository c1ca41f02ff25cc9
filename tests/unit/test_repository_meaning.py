"""What the repository's files mean when writers race or lie: one content per WAL name,
history files PostgreSQL can read, retention that counts only restorable fulls.

The interleavings of two pushes of one name are forced with a posix storage whose ``put``
runs a step of the other writer at a chosen moment (threads and a barrier, no patching), so
each ordering is tested every time rather than when a race happens to land.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from pgpush.commands import expire
from pgpush.errors import ArchiveDuplicateError, FileReadError, FormatError, WalNotFound
from pgpush.repo.repository import Repository
from pgpush.repo.status import DONE, FAILED, WAITING
from pgpush.repo.walarchive import get_wal, get_wal_into, history_problem, push_wal
from pgpush.storage.posix import PosixStorage

# Backup history files carry no page header, so any bytes make a valid one; the rule under test
# (one content per name, checked after the put) is the same for segments and .partial files.
NAME = "000000010000000000000003.00000028.backup"
SYSTEM_ID = 7000000000000000001


class SteppedStorage(PosixStorage):
    """A posix storage that runs a step of the other writer before/after each put, and before each
    delete, of an archived copy of ``NAME``."""

    def __init__(self, root: str, before_put: Callable[[], None] | None = None,
                 after_put: Callable[[], None] | None = None, before_delete: Callable[[], None] | None = None):
        super().__init__(root)
        self.before_put = before_put
        self.after_put = after_put
        self.before_delete = before_delete

    def put(self, name, chunks, overwrite=False):
        if NAME in name and self.before_put:
            self.before_put()
        written = super().put(name, chunks, overwrite)
        if NAME in name and self.after_put:
            self.after_put()
        return written

    def delete(self, name):
        if NAME in name and self.before_delete:
            self.before_delete()
        super().delete(name)


def make_repo(root: Path, **hooks) -> Repository:
    repo = Repository(SteppedStorage(str(root), **hooks), "main", compress_type="none")
    repo.stanza_create(SYSTEM_ID, 15)
    return repo


def stored(root: Path) -> list[Path]:
    return sorted(root.glob(f"archive/main/*/*/{NAME}-*"))


def push(repo: Repository, data: bytes) -> str:
    try:
        push_wal(repo, NAME, data)
        return "ok"
    except ArchiveDuplicateError:
        return "45"


def race(a: Repository, b: Repository) -> dict[str, str]:
    """Push different content under NAME from two threads; their storages' hooks decide the interleaving."""
    results: dict[str, str] = {}
    threads = [threading.Thread(target=lambda r=r, k=k: results.__setitem__(k, push(r, f"content {k}\n".encode())))
               for r, k in ((a, "A"), (b, "B"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    return results


def stored_contents(root: Path) -> list[bytes]:
    return [p.read_bytes() for p in stored(root)]


def test_two_pushes_that_both_see_the_other_both_fail_and_leave_nothing(tmp_path):
    checked = threading.Barrier(2, timeout=10)  # both found the name free before either writes
    landed = threading.Barrier(2, timeout=10)  # both files are in before either looks again
    looked = threading.Barrier(2, timeout=10)  # both have looked before either removes its own
    hooks = {"before_put": checked.wait, "after_put": landed.wait, "before_delete": looked.wait}
    a, b = make_repo(tmp_path, **hooks), make_repo(tmp_path, **hooks)
    assert race(a, b) == {"A": "45", "B": "45"}
    assert stored(tmp_path) == []  # PostgreSQL retries both; the first to land then wins
    retry_a, retry_b = make_repo(tmp_path), make_repo(tmp_path)
    assert push(retry_a, b"content A\n") == "ok"
    assert push(retry_b, b"content B\n") == "45"
    assert get_wal(retry_b, NAME) == b"content A\n"


def test_two_pushes_that_both_land_before_either_looks_acknowledge_at_most_one(tmp_path):
    checked, landed = threading.Barrier(2, timeout=10), threading.Barrier(2, timeout=10)
    hooks = {"before_put": checked.wait, "after_put": landed.wait}
    a, b = make_repo(tmp_path, **hooks), make_repo(tmp_path, **hooks)
    results = race(a, b)
    winners = [k for k, v in results.items() if v == "ok"]
    assert len(winners) <= 1 and set(results.values()) <= {"ok", "45"}, results
    assert stored_contents(tmp_path) == [f"content {k}\n".encode() for k in winners]


def test_a_push_that_lands_while_another_is_writing_wins_and_the_writer_fails(tmp_path):
    rival = make_repo(tmp_path)
    # A has checked that the name is free; B's whole push happens before A's file lands.
    a = make_repo(tmp_path, before_put=lambda: results.__setitem__("b", push(rival, b"content B\n")))
    results: dict[str, str] = {}
    results["a"] = push(a, b"content A\n")
    assert results == {"a": "45", "b": "ok"}
    assert [p.name.split("-")[1] for p in stored(tmp_path)] == [hashlib.sha1(b"content B\n").hexdigest()]
    assert get_wal(a, NAME) == b"content B\n"


def test_same_content_pushed_concurrently_succeeds_twice(tmp_path):
    barrier = threading.Barrier(2, timeout=10)  # both have checked that the name is free
    a = make_repo(tmp_path, before_put=barrier.wait)
    b = make_repo(tmp_path, before_put=barrier.wait)
    results: list[str] = []
    threads = [threading.Thread(target=lambda r=r: results.append(push(r, b"same\n"))) for r in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert results == ["ok", "ok"]
    assert len(stored(tmp_path)) == 1


def test_get_refuses_a_name_stored_with_two_contents(tmp_path):
    repo = make_repo(tmp_path)
    push_wal(repo, NAME, b"content A\n")
    first = stored(tmp_path)[0]
    other = hashlib.sha1(b"content B\n").hexdigest()
    first.with_name(f"{NAME}-{other}").write_bytes(b"content B\n")  # what a racing push left before the fix
    with pytest.raises(ArchiveDuplicateError, match="different checksums"):
        get_wal(repo, NAME)
    with open(tmp_path / "out", "wb") as fh, pytest.raises(ArchiveDuplicateError):
        get_wal_into(repo, NAME, fh)
    with pytest.raises(ArchiveDuplicateError):  # and a new push of either content is refused too
        push_wal(repo, NAME, b"content A\n")


# -- history files ----------------------------------------------------------------------------------

GOOD_HISTORY = b"1\t0/3000000\tno recovery target specified\n\n# a comment\n2\t0/5000A0\tbefore 2000-01-01\n"


@pytest.mark.parametrize("data", [
    GOOD_HISTORY,
    b"1\t0/3000000\tno recovery target specified\n",
    b"  1\t0/3000000\n",  # the reason is optional to PostgreSQL's reader
])
def test_history_in_postgresql_format_is_sound(data):
    assert history_problem("00000003.history", data) is None


@pytest.mark.parametrize("data", [
    b"",  # no switch line: every timeline after the first has one
    b"\x00" * 64,
    b"garbage\n",
    b"1\tnot-an-lsn\treason\n",
    b"x\t0/3000000\treason\n",
    b"2\t0/3000000\treason\n1\t0/4000000\treason\n",  # timelines must increase
    b"3\t0/3000000\treason\n",  # and stay below the file's own
])
def test_garbage_history_is_refused_on_push_and_on_get(tmp_path, data):
    name = "00000003.history"
    repo = make_repo(tmp_path)
    with pytest.raises(FormatError, match="history file"):
        push_wal(repo, name, data)
    with pytest.raises(WalNotFound):
        get_wal(repo, name)
    # One stored by an older version: get fails with 42 (a corrupt repository file), never 25.
    (tmp_path / "archive/main/15-1").mkdir(parents=True, exist_ok=True)
    (tmp_path / "archive/main/15-1" / name).write_bytes(data)
    with pytest.raises(FileReadError) as err:
        get_wal(repo, name)
    assert err.value.code == 42


# -- retention ----------------------------------------------------------------------------------------


def rec(label: str, day: int, status: str, btype: str = "full", prior: str | None = None) -> dict:
    return {"label": label, "type": btype, "status": status, "start_time": f"2024-01-0{day}T00:00:00+00:00",
            "prior": prior, "reference": [prior] if prior else [], "archive_id": "15-1"}


def test_a_full_waiting_for_wal_does_not_count_towards_retention():
    backups = [rec("F1", 1, DONE), rec("F2", 2, WAITING)]
    kept, removed = expire.plan(backups, 1)
    assert [b["label"] for b in kept] == ["F1", "F2"] and removed == []


def test_waiting_backups_are_kept_in_addition_and_failed_ones_are_not():
    backups = [rec("F1", 1, DONE), rec("F1_I", 2, WAITING, "incr", "F1"), rec("F2", 3, FAILED),
               rec("F3", 4, DONE), rec("F4", 5, WAITING)]
    kept, removed = expire.plan(backups, 1)
    assert [b["label"] for b in kept] == ["F1", "F1_I", "F3", "F4"]
    assert [b["label"] for b in removed] == ["F2"]


def test_a_posix_listing_keeps_its_files_while_others_in_the_directory_are_removed(tmp_path):
    # A racing push removing its copy, or expire, deletes files beside the ones a get is looking
    # for: a listing must skip the vanished entry, never come back empty ("not in the archive").
    storage = PosixStorage(str(tmp_path))
    storage.put("d/stable", [b"x"])
    stop = threading.Event()

    def churn() -> None:
        i = 0
        while not stop.is_set():
            path = tmp_path / "d" / f"f{i % 50}"
            path.touch()
            path.unlink()
            i += 1

    worker = threading.Thread(target=churn)
    worker.start()
    try:
        misses = sum("stable" not in [f.name for f in storage.list("d")] for _ in range(20000))
    finally:
        stop.set()
        worker.join(10)
    assert misses == 0
