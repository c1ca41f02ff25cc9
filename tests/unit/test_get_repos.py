"""``get`` over several repositories (docs/operations.md, "Several repositories"), on two posix
repositories: the first that has the file whole gives it; a repository that cannot answer is
passed over with a WARN naming it; 1 ("not in the archive") only when every repository said so.

The same rules for the sync get (:func:`pgpush.archive.core.get`) and an async get's worker
(:class:`pgpush.archive.worker.Worker`); end to end on SFTP and S3 in
tests/integration/test_multirepo_get_restore.py.
"""

from __future__ import annotations

import io
from pathlib import Path
from types import SimpleNamespace

import pytest

from pgpush import config, wal
from pgpush.archive import core
from pgpush.archive.worker import Worker
from pgpush.errors import ArchiveMismatchError, FileMissingError, FileReadError, RepoInvalidError
from pgpush.repo.repository import Repository
from pgpush.repo.walarchive import push_wal
from pgpush.storage.posix import PosixStorage

NAME = "000000010000000000000003.00000028.backup"  # any bytes make a valid backup history file
SYSTEM_ID = 7000000000000000001


def _repo(path: Path) -> Repository:
    repo = Repository(PosixStorage(str(path)), "main", compress_type="none")
    repo.stanza_create(SYSTEM_ID, 15)
    return repo


def _cfg(tmp_path: Path, *extra: str, command: str = "get") -> config.Config:
    return config.load(["--stanza=main", f"--repo1-path={tmp_path / 'r1'}", f"--repo2-path={tmp_path / 'r2'}",
                        "--compress-type=none", f"--pg1-path={tmp_path / 'pgdata'}", *extra, command],
                       environ={})


def _stored(tmp_path: Path, repo: str) -> Path:
    return next((tmp_path / repo / "archive" / "main").rglob(NAME + "-*"))


@pytest.fixture
def two(tmp_path: Path) -> tuple[Repository, Repository]:
    return _repo(tmp_path / "r1"), _repo(tmp_path / "r2")


def test_missing_in_repo1_taken_from_repo2(tmp_path: Path, two, debug_log: io.StringIO) -> None:
    push_wal(two[1], NAME, b"from repo2")
    dest = tmp_path / "dest"
    assert core.get(_cfg(tmp_path), NAME, str(dest)) == 0
    assert dest.read_bytes() == b"from repo2"
    assert f"found {NAME} in the archive of repo2" in debug_log.getvalue()
    assert "WARN" not in debug_log.getvalue()  # a file repo1 does not have is no problem of repo1's


def test_repo1_first_when_both_have_it(tmp_path: Path, two, debug_log: io.StringIO) -> None:
    push_wal(two[0], NAME, b"same")
    push_wal(two[1], NAME, b"same")
    _stored(tmp_path, "r2").write_bytes(b"damaged")  # never read: repo1 answers first
    assert core.get(_cfg(tmp_path), NAME, str(tmp_path / "dest")) == 0
    assert f"found {NAME} in the archive" in debug_log.getvalue() and "repo2" not in debug_log.getvalue()


def test_corrupt_in_repo1_taken_from_repo2_with_a_warning(tmp_path: Path, two, debug_log: io.StringIO) -> None:
    push_wal(two[0], NAME, b"the content")
    push_wal(two[1], NAME, b"the content")
    _stored(tmp_path, "r1").write_bytes(b"the c0ntent")
    dest = tmp_path / "dest"
    assert core.get(_cfg(tmp_path), NAME, str(dest)) == 0
    assert dest.read_bytes() == b"the content"
    warn = [line for line in debug_log.getvalue().splitlines() if "WARN" in line]
    assert len(warn) == 1 and "repo1: WAL file" in warn[0] and "corrupt" in warn[0], warn


def test_corrupt_everywhere_is_repo1s_error_never_1(tmp_path: Path, two) -> None:
    push_wal(two[0], NAME, b"the content")
    _stored(tmp_path, "r1").write_bytes(b"the c0ntent")
    dest = tmp_path / "dest"
    with pytest.raises(FileReadError) as err:  # repo2 has nothing: still not "not in the archive"
        core.get(_cfg(tmp_path), NAME, str(dest))
    assert err.value.message.startswith("repo1: ") and err.value.code == 42
    assert not dest.exists() and not list(tmp_path.glob("dest*"))


def test_one_that_cannot_answer_and_missing_elsewhere_is_not_1(tmp_path: Path, two) -> None:
    (tmp_path / "r2" / "archive" / "main" / "archive.info").unlink()  # repo2 cannot say what it holds
    with pytest.raises(FileMissingError) as err:
        core.get(_cfg(tmp_path), NAME, str(tmp_path / "dest"))
    assert err.value.message.startswith("repo2: ") and err.value.code == 55


def test_1_only_when_every_repository_answered(tmp_path: Path, two) -> None:
    assert core.get(_cfg(tmp_path), NAME, str(tmp_path / "dest")) == 1
    assert core.get(_cfg(tmp_path, "--repo=2"), NAME, str(tmp_path / "dest")) == 1


def test_repo_option_asks_that_repository_only(tmp_path: Path, two) -> None:
    push_wal(two[0], NAME, b"only in repo1")
    assert core.get(_cfg(tmp_path, "--repo=2"), NAME, str(tmp_path / "dest")) == 1
    assert core.get(_cfg(tmp_path, "--repo=1"), NAME, str(tmp_path / "dest")) == 0


def test_another_clusters_stanza_is_that_repositorys_error(tmp_path: Path, monkeypatch, debug_log: io.StringIO) -> None:
    Repository(PosixStorage(str(tmp_path / "r1")), "main", compress_type="none").stanza_create(SYSTEM_ID + 1, 15)
    push_wal(_repo(tmp_path / "r2"), NAME, b"ours")
    control = tmp_path / "pgdata" / "global" / "pg_control"
    control.parent.mkdir(parents=True)
    control.write_bytes(b"pg_control")
    monkeypatch.setattr(wal, "parse_control", lambda data: SimpleNamespace(system_id=SYSTEM_ID, version=15))
    assert core.get(_cfg(tmp_path), NAME, str(tmp_path / "dest")) == 0
    warn = [line for line in debug_log.getvalue().splitlines() if "WARN" in line]
    assert len(warn) == 1 and "repo1: the cluster in" in warn[0] and f"system {SYSTEM_ID + 1}" in warn[0], warn
    with pytest.raises(ArchiveMismatchError) as err:
        core.get(_cfg(tmp_path, "--repo=1"), NAME, str(tmp_path / "dest"))
    assert err.value.code == 44


# -- the async get's worker ----------------------------------------------------------------------


def _task(tmp_path: Path) -> dict:
    spool = tmp_path / "spool"
    spool.mkdir(exist_ok=True)
    return {"op": "get", "name": NAME, "dir": str(spool)}


def test_worker_takes_it_from_the_first_that_has_it(tmp_path: Path, two) -> None:
    push_wal(two[1], NAME, b"from repo2")
    worker = Worker(_cfg(tmp_path))
    assert worker.handle(_task(tmp_path)) == {"ok": True, "from": "repo2"}
    assert (tmp_path / "spool" / NAME).read_bytes() == b"from repo2"


def test_worker_missing_only_when_every_repository_answered(tmp_path: Path, two) -> None:
    worker = Worker(_cfg(tmp_path))
    assert worker.handle(_task(tmp_path)) == {"ok": True, "missing": True}
    push_wal(two[0], NAME, b"x")
    _stored(tmp_path, "r1").write_bytes(b"y")
    result = worker.handle(_task(tmp_path))
    assert result["ok"] is False and result["code"] == 42 and result["message"].startswith("repo1: ")
    assert result["global"] is False


def test_worker_asks_an_unreachable_repository_last_but_still_asks_it(tmp_path: Path, two, monkeypatch) -> None:
    push_wal(two[1], NAME, b"from repo2")
    worker = Worker(_cfg(tmp_path))
    asked: list[int] = []
    real = Worker._get_from

    def get_from(self, view, task):
        asked.append(view.repo_index)
        if view.repo_index == 1:
            raise RepoInvalidError("unable to find a valid repository:\nrepo1: down")
        return real(self, view, task)

    monkeypatch.setattr(Worker, "_get_from", get_from)
    assert worker.handle(_task(tmp_path)) == {"ok": True, "from": "repo2"}
    assert asked == [1, 2]
    (tmp_path / "spool" / NAME).unlink()
    asked.clear()
    assert worker.handle(_task(tmp_path)) == {"ok": True, "from": "repo2"}
    assert asked == [2]  # repo1 found down a moment ago: not waited for again while repo2 has the file
    for path in (tmp_path / "r2" / "archive" / "main").rglob(NAME + "-*"):
        path.unlink()
    asked.clear()
    result = worker.handle(_task(tmp_path))
    assert asked == [2, 1]  # nobody else has it: repo1 is asked all the same before any verdict
    assert result["ok"] is False and result["code"] == 103 and result["global"] is False  # repo2 answered


# -- what a restore leaves for recovery ------------------------------------------------------------


def test_restore_command_carries_every_repository_never_repo(tmp_path: Path) -> None:
    from pgpush.commands.restore import recovery

    cfg = config.load(["--stanza=main", "--repo1-path=/r1", "--repo2-type=s3", "--repo2-path=/p", "--repo2-s3-bucket=b",
                       "--repo2-s3-key-secret=hidden", "--repo=2", "restore"], environ={})
    command = recovery.restore_command(cfg.repos()[0])  # the view of the repository restored from
    assert "--repo1-path=/r1" in command and "--repo2-type=s3" in command and "--repo2-s3-bucket=b" in command
    assert "--repo=" not in command and "hidden" not in command


def test_a_restore_command_postgresql_would_cut_is_refused_before_anything_is_restored() -> None:
    """PostgreSQL 13 and older cut restore_command at 1023 bytes: several repositories given on the
    command line can pass that, and a cut command would fetch WAL with half an option."""
    from pgpush.commands.restore import recovery
    from pgpush.errors import OptionInvalidValueError

    long_path = "/backup/" + "x" * 300
    cfg = config.load(["--stanza=main", f"--repo1-path={long_path}1", f"--repo2-path={long_path}2",
                       f"--repo3-path={long_path}3", "restore"], environ={})
    assert len(recovery.restore_command(cfg)) > recovery.COMMAND_MAX
    with pytest.raises(OptionInvalidValueError, match="PostgreSQL 12 cuts it at 1023.*config file"):
        recovery.check_command_length(cfg, 12)
    recovery.check_command_length(cfg, 15)  # built without a length limit in 14 and later
    short = config.load(["--stanza=main", "--repo1-path=/r1", "--repo2-path=/r2", "restore"], environ={})
    recovery.check_command_length(short, 12)
