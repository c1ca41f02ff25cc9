"""Hostile catalogs: a backup.info or a manifest with wrong types, read by the real commands.

Whoever can write the repository can write anything into ``backup.info``: every command that
reads it must answer "corrupt" (42) with one ERROR line naming what is wrong, never an internal
error (25) with a Python exception's words.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pgpush.repo.repository import Repository
from pgpush.storage.posix import PosixStorage

pytestmark = pytest.mark.integration

LABEL = "20200101-000000F"
HOSTILE_BACKUP_INFO = {
    "entry_not_an_object": {"format": 1, "backups": [1]},
    "backups_not_a_list": {"format": 1, "backups": "x"},
    "label_missing": {"format": 1, "backups": [{"start_time": "2020-01-01T00:00:00+00:00"}]},
    "start_time_a_number": {"format": 1, "backups": [{"label": LABEL, "start_time": 1}]},
    "mixed_start_time_types": {"format": 1, "backups": [
        {"label": LABEL, "start_time": 1}, {"label": "20200102-000000F", "start_time": "x"}]},
}


def _pgpush(root: Path, *args: str) -> subprocess.CompletedProcess:
    conf = root.parent / "empty.conf"
    conf.write_text("")
    argv = [sys.executable, "-m", "pgpush", f"--config={conf}", "--stanza=main", f"--repo1-path={root}",
            f"--log-path={root.parent / 'log'}", "--repo1-retention-full=1", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def _stanza(root: Path) -> Repository:
    repo = Repository(PosixStorage(str(root)), "main", compress_type="none")
    repo.stanza_create(7000000000000000001, 15)
    return repo


def _assert_corrupt(res: subprocess.CompletedProcess, what: str) -> None:
    assert res.returncode == 42, res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("ERROR:")]
    assert len(errors) == 1 and errors[0].startswith("ERROR: [042]: ") and what in errors[0], res.stderr
    assert "Traceback" not in res.stderr and "Error:" not in errors[0].split("]: ", 1)[1].split(" ")[0]


@pytest.mark.parametrize("case", sorted(HOSTILE_BACKUP_INFO))
def test_expire_and_verify_call_a_backup_info_with_wrong_types_corrupt(tmp_path, case):
    root = tmp_path / "repo"
    _stanza(root)
    (root / "backup/main/backup.info").write_text(json.dumps(HOSTILE_BACKUP_INFO[case]))
    for command in ("expire", "verify"):
        _assert_corrupt(_pgpush(root, command), "backup.info in the repository is corrupt")
    res = _pgpush(root, "info", "--output=json")
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
    stanza = json.loads(res.stdout)[0]
    assert stanza["status"] == "error" and "backup.info in the repository is corrupt" in stanza["message"]


def test_a_manifest_whose_record_has_wrong_types_is_corrupt_and_never_enters_backup_info(tmp_path):
    root = tmp_path / "repo"
    _stanza(root)
    manifest = {"format": 1, "backup": {"label": LABEL, "start_time": ["not", "a", "time"]}, "files": []}
    (root / "backup/main" / LABEL).mkdir(parents=True)
    (root / "backup/main" / LABEL / "backup.manifest").write_text(json.dumps(manifest))
    _assert_corrupt(_pgpush(root, "expire"), f"manifest of backup '{LABEL}' is corrupt")
    assert json.loads((root / "backup/main/backup.info").read_text())["backups"] == []


HOSTILE_ARCHIVE_INFO = {
    "a_list": [],
    "empty_object": {},
    "db_a_number": {"db": 1, "history": [1]},
    "system_id_a_string": {"db": {"id": 1, "system-id": "x", "version": "15"},
                           "history": [{"id": 1, "system-id": "x", "version": "15"}]},
    "history_a_string": {"db": {"id": 1, "system-id": 7, "version": "15"}, "history": "x"},
    "id_a_path": {"db": {"id": "../..", "system-id": 7, "version": "15"},
                  "history": [{"id": "../..", "system-id": 7, "version": "15"}]},
}


@pytest.mark.parametrize("case", sorted(HOSTILE_ARCHIVE_INFO))
def test_get_and_expire_call_an_archive_info_with_wrong_types_corrupt(tmp_path, case):
    root = tmp_path / "repo"
    _stanza(root)
    (root / "archive/main/archive.info").write_text(json.dumps(HOSTILE_ARCHIVE_INFO[case]))
    wal = tmp_path / "000000010000000000000001"
    wal.write_bytes(b"\0" * 8192)
    # get must never answer 1 ("not in the archive": recovery would end) for a repository it cannot read
    _assert_corrupt(_pgpush(root, "get", wal.name, str(tmp_path / "dest")), "archive.info of stanza 'main' is corrupt")
    _assert_corrupt(_pgpush(root, "expire"), "archive.info of stanza 'main' is corrupt")
    assert not (tmp_path / "dest").exists()
