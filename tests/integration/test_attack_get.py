"""Attacks on `get` (restore_command) from a repository that lies: a stored segment that decodes
to far more than a segment (a decompression bomb) must not fill PostgreSQL's pg_wal.

`get` is run as PostgreSQL runs it (`get %f "%p"`) with %p on a small file system: it must
stop at the segment size its header gives and fail with one "corrupt" error (42), leaving
nothing at %p, instead of writing until the disk is full.
"""

from __future__ import annotations

import re
import struct
import subprocess
import sys

import pytest
import zstandard
from harness.tmpfs import tmpfs

from pgpush import wal
from pgpush.repo.repository import Repository
from pgpush.storage.posix import PosixStorage

pytestmark = pytest.mark.integration

SYSTEM_ID = 7000000000000000001
SEG_SIZE = 1 << 20
NAME = "000000010000000000000001"


def _bomb(decoded: int) -> bytes:
    """A PostgreSQL 15 segment header for NAME (1 MB segments), then ``decoded`` bytes of zeros, zstd."""
    header = struct.pack(wal.LONG_HEADER_FORMAT, 0xD110, wal.XLP_LONG_HEADER, 1, SEG_SIZE, 0, SYSTEM_ID, SEG_SIZE, 8192)
    out = zstandard.ZstdCompressor(level=1).compressobj()
    zeros = bytes(64 << 20)
    return b"".join([out.compress(header)] + [out.compress(zeros) for _ in range(decoded // len(zeros))]
                    + [out.flush()])


def test_get_stops_a_segment_decoding_past_its_segment_size_before_filling_pg_wal(tmp_path):
    root = tmp_path / "repo"
    repo = Repository(PosixStorage(str(root)), "main")
    repo.stanza_create(SYSTEM_ID, 15)
    repo.storage.put(f"archive/main/15-1/{NAME[:16]}/{NAME}-{'0' * 40}.zst", [_bomb(2 << 30)])
    conf = tmp_path / "empty.conf"
    conf.write_text("")
    pg_wal = tmp_path / "pg_wal"

    with tmpfs(pg_wal, 64):  # PostgreSQL's pg_wal: room for many segments, not for the bomb
        res = subprocess.run([sys.executable, "-m", "pgpush", f"--config={conf}", "--stanza=main",
                              f"--repo1-path={root}", f"--log-path={tmp_path / 'log'}", "get", NAME,
                              "pg_wal/RECOVERYXLOG"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
        left = sorted(p.name for p in pg_wal.iterdir())

    assert res.returncode == 42, (res.returncode, res.stderr)
    errors = re.findall(r"^ERROR: \[\d{3}\]: .*$", res.stderr, re.M)
    assert len(errors) == 1 and f"decodes to more than its segment size ({SEG_SIZE} bytes)" in errors[0], res.stderr
    assert left == []


def test_verify_reports_a_decompression_bomb_without_decoding_it_whole(tmp_path):
    root = tmp_path / "repo"
    repo = Repository(PosixStorage(str(root)), "main")
    repo.stanza_create(SYSTEM_ID, 15)
    repo.storage.put(f"archive/main/15-1/{NAME[:16]}/{NAME}-{'0' * 40}.zst", [_bomb(4 << 30)])
    conf = tmp_path / "empty.conf"
    conf.write_text("")

    res = subprocess.run(["prlimit", f"--as={3 << 30}", "--", sys.executable, "-m", "pgpush", f"--config={conf}",
                          "--stanza=main", f"--repo1-path={root}", f"--log-path={tmp_path / 'log'}", "verify"],
                         capture_output=True, text=True, timeout=120)

    assert res.returncode == 42, (res.returncode, res.stderr)
    assert f"WAL file 15-1/{NAME}: unreadable:" in res.stdout and "decodes to more than" in res.stdout, res.stdout
