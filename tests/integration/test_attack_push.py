"""Attacks on `push` (archive_command) from odd repository states, run as PostgreSQL runs it
(`push pg_wal/NAME`, cwd PGDATA).  Segments are built byte for byte (a PostgreSQL 15 long page
header, 1 MB segments) so no cluster is needed: push reads nothing else of them.
"""

from __future__ import annotations

import hashlib
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from pgpush import wal
from pgpush.repo.repository import Repository
from pgpush.storage.posix import PosixStorage

pytestmark = pytest.mark.integration

SYSTEM_ID = 7000000000000000001
SEG_SIZE = 1 << 20
NAME = "000000010000000000000001"


def _segment() -> bytes:
    header = struct.pack(wal.LONG_HEADER_FORMAT, 0xD110, wal.XLP_LONG_HEADER, 1, SEG_SIZE, 0, SYSTEM_ID, SEG_SIZE, 8192)
    return header + hashlib.sha256(NAME.encode()).digest() + bytes(SEG_SIZE - len(header) - 32)


def _push(tmp_path: Path, root: Path) -> subprocess.CompletedProcess:
    conf = tmp_path / "empty.conf"
    conf.write_text("")
    return subprocess.run([sys.executable, "-m", "pgpush", f"--config={conf}", "--stanza=main", f"--repo1-path={root}",
                           f"--log-path={tmp_path / 'log'}", "--compress-type=none", "push", f"pg_wal/{NAME}"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=20)


@pytest.mark.parametrize("obstacle", ["directory", "dangling link"])
def test_push_onto_something_that_is_not_a_file_under_its_final_name_fails_42(tmp_path, obstacle):
    root = tmp_path / "repo"
    Repository(PosixStorage(str(root)), "main").stanza_create(SYSTEM_ID, 15)
    data = _segment()
    (tmp_path / "pg_wal").mkdir()
    (tmp_path / "pg_wal" / NAME).write_bytes(data)
    final = root / f"archive/main/15-1/{NAME[:16]}/{NAME}-{hashlib.sha1(data).hexdigest()}"
    final.parent.mkdir(parents=True)
    if obstacle == "directory":
        final.mkdir()
    else:
        final.symlink_to(tmp_path / "nowhere")

    res = _push(tmp_path, root)

    assert res.returncode == 42, (res.returncode, res.stderr)
    errors = re.findall(r"^ERROR: \[\d{3}\]: .*$", res.stderr, re.M)
    assert len(errors) == 1 and "exists in the repository but is not a file it lists" in errors[0], res.stderr
    assert not (tmp_path / "nowhere").exists()


@pytest.mark.parametrize("kind", ["fifo", "link to /dev/zero"])
def test_push_of_a_wal_path_that_is_not_a_regular_file_fails_29_instead_of_reading_for_ever(tmp_path, kind):
    import os

    root = tmp_path / "repo"
    Repository(PosixStorage(str(root)), "main").stanza_create(SYSTEM_ID, 15)
    (tmp_path / "pg_wal").mkdir()
    target = tmp_path / "pg_wal" / NAME
    if kind == "fifo":
        os.mkfifo(target)
    else:
        target.symlink_to("/dev/zero")

    res = _push(tmp_path, root)  # the old code blocked on the FIFO / read /dev/zero until the 60 s timeout

    assert res.returncode == 29, (res.returncode, res.stderr)
    errors = re.findall(r"^ERROR: \[\d{3}\]: .*$", res.stderr, re.M)
    assert len(errors) == 1 and "is not a regular file" in errors[0], res.stderr
    assert not list((root / "archive/main/15-1").rglob(f"{NAME}*"))
