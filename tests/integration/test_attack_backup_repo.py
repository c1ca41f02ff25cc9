"""Attacks on backup's file copy from the repository's side (a real sshd, no PostgreSQL needed).

A backup skips a file only when the *source* vanished (a relation dropped while it is copied).
A "no such file" answered by the repository (OpenSSH answers NO_SUCH_FILE for ENOENT and
ENOTDIR: a directory of the backup removed, a file where a directory should be) must fail the
backup: taking it for a dropped relation would record a DONE backup without that file.
"""

from __future__ import annotations

import pytest
from harness import procs

from pgpush.commands import backup
from pgpush.repo.repository import Repository
from pgpush.storage.base import StorageError
from pgpush.storage.sftp import SftpStorage

pytestmark = pytest.mark.integration

LABEL_DIR = "backup/main/20200101-000000F"


def _store(server) -> SftpStorage:
    opts = server.pgpush_options()
    return SftpStorage(opts["repo1-host"], opts["repo1-path"], int(opts["repo1-host-port"]), opts["repo1-host-user"],
                       opts["repo1-host-key-file"], opts["repo1-host-known-hosts"], 10)


def test_backup_file_fails_when_the_sftp_repository_answers_no_such_file(sshd, tmp_path):
    source = tmp_path / "1259"
    source.write_bytes(b"relation data" * 1000)
    obstacle = sshd.repo_dir / LABEL_DIR / "pg_data" / "base" / "1"
    obstacle.parent.mkdir(parents=True)
    obstacle.write_bytes(b"a file where the backup's directory should be")
    procs.chown_tree(sshd.repo_dir, sshd.user)
    store = _store(sshd)
    try:
        repo = Repository(store, "main", compress_type="none")
        with pytest.raises(StorageError) as raised:
            result = backup.backup_file(repo, ("pg_data/base/1/1259", str(source), LABEL_DIR, None))
            pytest.fail(f"the file was reported as vanished from the source instead of failing: {result!r}")
        assert raised.value.code == 103
        assert "pg_data/base/1/1259" in str(raised.value)
    finally:
        store.close()


def test_backup_file_still_skips_a_source_file_that_vanished(sshd, tmp_path):
    store = _store(sshd)
    try:
        repo = Repository(store, "main", compress_type="none")
        assert backup.backup_file(repo, ("pg_data/base/1/1260", str(tmp_path / "gone"), LABEL_DIR, None)) is None
        assert store.list(f"{LABEL_DIR}/pg_data/base/1") == []
    finally:
        store.close()


def test_sftp_put_answers_a_no_such_file_from_the_backup_host_as_a_repository_error(sshd):
    obstacle = sshd.repo_dir / "archive/main/15-1/0000000100000000"
    obstacle.parent.mkdir(parents=True)
    obstacle.write_bytes(b"a file where a WAL directory should be")
    procs.chown_tree(sshd.repo_dir, sshd.user)
    store = _store(sshd)
    try:
        with pytest.raises(StorageError) as raised:  # push would exit 25 on a bare FileNotFoundError
            store.put("archive/main/15-1/0000000100000000/000000010000000000000001-" + "0" * 40, [b"wal"])
        assert raised.value.code == 103
    finally:
        store.close()
