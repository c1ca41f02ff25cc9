"""backup_files.backup_everywhere: one read of a file, one copy per repository in that repository's
own encoding, a repository whose writes fail loses only its own copy, a prior per repository.
And backup_targets.Targets: a failed repository is left out, none left raises the first error."""

from __future__ import annotations

import builtins
import hashlib
import os
from collections.abc import Iterable

import pytest

from pgpush.commands import backup_files
from pgpush.commands.backup_targets import Target, Targets
from pgpush.errors import FileMissingError, PgPushError
from pgpush.repo.codec import compress
from pgpush.repo.repository import Repository
from pgpush.storage.base import StorageError
from pgpush.storage.posix import PosixStorage

LABEL_DIR = "backup/main/20200101-000000F"
NAME = "pg_data/base/1/1259"


class Failing(PosixStorage):
    """A repository whose writes fail part-way (a store that went away while the file was sent)."""

    def put(self, name: str, chunks: Iterable[bytes], overwrite: bool = False) -> int:
        for _ in chunks:
            raise StorageError("unable to find a valid repository:\nrepo2: store gone")
        raise AssertionError("never reached")


@pytest.fixture
def source(tmp_path):
    data = os.urandom(300_000) * 4  # several chunks
    path = tmp_path / "1259"
    path.write_bytes(data)
    return path, data


@pytest.fixture
def opens(monkeypatch):
    """How often a source file is opened by the worker (the storage's own opens are not counted)."""
    seen: list[str] = []
    real = builtins.open

    def counting(path, *args, **kw):
        seen.append(str(path))
        return real(path, *args, **kw)

    monkeypatch.setattr(backup_files, "open", counting, raising=False)
    return seen


def _repos(tmp_path, second=PosixStorage) -> dict[int, Repository]:
    return {1: Repository(PosixStorage(str(tmp_path / "r1")), "main", compress_type="gz", index=1),
            2: Repository(second(str(tmp_path / "r2")), "main", compress_type="zst", index=2)}


def _decoded(repo: Repository, path: str) -> bytes:
    return b"".join(repo.decode(repo.storage.read_chunks(path), path))


def test_one_read_two_copies_each_in_its_own_encoding(tmp_path, source, opens):
    path, data = source
    repos = _repos(tmp_path)
    out = backup_files.backup_everywhere(repos, (NAME, str(path), {1: (LABEL_DIR, None), 2: (LABEL_DIR, None)}))
    assert out is not None and opens == [str(path)]
    sha = hashlib.sha1(data).hexdigest()
    for index, ext in ((1, ".gz"), (2, ".zst")):
        entry = out[index]
        assert isinstance(entry, dict)
        assert (entry["sha1"], entry["size"], entry["ext"], entry["reference"]) == (sha, len(data), ext, None)
        stored = f"{LABEL_DIR}/{NAME}{ext}"
        assert compress.type_of(stored) == ("gz" if index == 1 else "zst")
        assert _decoded(repos[index], stored) == data
        assert entry["repo_size"] == len(repos[index].storage.read(stored))


def test_a_failing_repository_loses_only_its_copy(tmp_path, source):
    path, data = source
    repos = _repos(tmp_path, second=Failing)
    out = backup_files.backup_everywhere(repos, (NAME, str(path), {1: (LABEL_DIR, None), 2: (LABEL_DIR, None)}))
    assert out is not None
    assert out[2] == (103, "unable to find a valid repository:\nrepo2: store gone")
    assert isinstance(out[1], dict) and _decoded(repos[1], f"{LABEL_DIR}/{NAME}.gz") == data
    assert repos[2].storage.info(f"{LABEL_DIR}/{NAME}.zst") is None


def test_each_repository_its_own_prior(tmp_path, source, opens):
    path, data = source
    sha = hashlib.sha1(data).hexdigest()
    prior = {"name": NAME, "size": len(data), "sha1": sha, "ext": ".gz", "repo_size": 7,
             "reference": "20191231-000000F"}
    repos = _repos(tmp_path)
    out = backup_files.backup_everywhere(repos, (NAME, str(path), {1: (LABEL_DIR, prior), 2: (LABEL_DIR, None)}))
    assert out is not None
    assert out[1] == {**prior, "name": NAME}  # unchanged since repo1's prior: referenced, not stored
    assert isinstance(out[2], dict) and out[2]["reference"] is None and out[2]["sha1"] == sha
    assert repos[1].storage.info(f"{LABEL_DIR}/{NAME}.gz") is None
    assert _decoded(repos[2], f"{LABEL_DIR}/{NAME}.zst") == data
    assert opens == [str(path), str(path)]  # one read to compare, one to store: as with one repository


def test_a_vanished_source_is_none_and_leaves_nothing(tmp_path, opens):
    repos = _repos(tmp_path)
    job = (NAME, str(tmp_path / "gone"), {1: (LABEL_DIR, None), 2: (LABEL_DIR, None)})
    assert backup_files.backup_everywhere(repos, job) is None


def test_an_unreadable_source_fails_every_repository(tmp_path, source, monkeypatch):
    path, _ = source

    def refuse(*args, **kw):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(backup_files, "open", refuse, raising=False)
    with pytest.raises(PermissionError):
        backup_files.backup_everywhere(_repos(tmp_path), (NAME, str(path), {1: (LABEL_DIR, None), 2: (LABEL_DIR, None)}))


def _targets(tmp_path, n: int) -> Targets:
    from pgpush import config

    cfg = config.load(["--stanza=main", f"--repo1-path={tmp_path}", "info"], environ={})
    return Targets(Target(cfg, Repository(PosixStorage(str(tmp_path / f"r{i}")), "main", index=i), n > 1)
                   for i in range(1, n + 1))


def test_targets_leave_a_failed_repository_out_and_name_it(tmp_path):
    targets = _targets(tmp_path, 2)

    def fail_repo2(t: Target) -> None:
        if t.name == "repo2":
            raise FileMissingError("backup X is FAILED")

    targets.each(fail_repo2)
    assert [t.name for t in targets.live()] == ["repo1"]
    error = targets[1].error
    assert error is not None and error.message == "repo2: backup X is FAILED" and error.code == FileMissingError.code


def test_targets_every_repository_failed_raises_the_first(tmp_path):
    targets = _targets(tmp_path, 2)

    def fail(t: Target) -> None:
        raise PgPushError(f"{t.name} is down", 103)

    with pytest.raises(PgPushError) as raised:
        targets.each(fail)
    assert raised.value.message == "repo1: repo1 is down" and raised.value.code == 103


def test_one_repository_its_error_as_it_was(tmp_path):
    targets = _targets(tmp_path, 1)
    original = FileMissingError("backup X is FAILED")

    def fail(t: Target) -> None:
        raise original

    with pytest.raises(FileMissingError) as raised:
        targets.each(fail)
    assert raised.value is original  # no repository name with one repository: messages stay as they were
