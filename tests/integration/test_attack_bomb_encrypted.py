"""Decompression bombs inside the encryption layer: an encrypted record (up to 1 MiB of compressed
bytes, its size chosen by whoever wrote the repository) reaches the decompressor in one piece, so
slicing the stored bytes before decryption bounds nothing.  gz, zst and lz4 bombs sealed with the
stanza's own key are fed to `get` (as PostgreSQL's restore_command runs it), `verify` and
`restore` under an address-space limit far below what one record decodes to: each fails with one
"corrupt" error (42), never 25 (MemoryError), and `get` leaves nothing at %p.
"""

from __future__ import annotations

import functools
import re
import struct
import subprocess
import sys

import lz4.frame
import pytest
import zstandard
from backup_env import backup, setup_archiving
from harness import procs
from pgpush_env import Pgpush
from zlib_ng import zlib_ng

from pgpush import wal
from pgpush.repo.codec import crypto
from pgpush.repo.repository import Repository
from pgpush.storage.posix import PosixStorage

pytestmark = pytest.mark.integration

SYSTEM_ID = 7000000000000000001
SEG_SIZE = 1 << 20
NAME = "000000010000000000000001"
PASS = "correct horse"
DECODED = 2 << 30  # what each bomb decodes to: one encrypted record of it alone is hundreds of MB to GBs
ADDRESS_SPACE = 1 << 30  # what pgpush may map: the interpreter, its libraries and threads need ~500 MB of it
ZEROS = bytes(64 << 20)


def _zeros_in(compressor) -> list[bytes]:
    return [compressor(ZEROS) for _ in range(DECODED // len(ZEROS))]


@functools.cache  # a gz bomb takes seconds to make: once per module
def _bomb(kind: str, head: bytes = b"") -> bytes:
    if kind == "gz":
        obj = zlib_ng.compressobj(9, zlib_ng.DEFLATED, 31)  # twice the standard zlib's speed
        return b"".join([obj.compress(head)] + _zeros_in(obj.compress) + [obj.flush()])
    if kind == "zst":
        obj = zstandard.ZstdCompressor(level=1).compressobj()
        return b"".join([obj.compress(head)] + _zeros_in(obj.compress) + [obj.flush()])
    comp = lz4.frame.LZ4FrameCompressor(block_size=lz4.frame.BLOCKSIZE_MAX4MB)
    return b"".join([comp.begin(), comp.compress(head)] + _zeros_in(comp.compress) + [comp.flush()])


def _segment_header() -> bytes:
    """A PostgreSQL 15 segment header for NAME (1 MB segments): the bomb looks like WAL at first."""
    return struct.pack(wal.LONG_HEADER_FORMAT, 0xD110, wal.XLP_LONG_HEADER, 1, SEG_SIZE, 0, SYSTEM_ID, SEG_SIZE, 8192)


def _encrypted_repo_with_bomb(tmp_path, kind: str):
    root = tmp_path / "repo"
    repo = Repository(PosixStorage(str(root)), "main", cipher_type="aes-256-gcm", cipher_pass=PASS)
    repo.stanza_create(SYSTEM_ID, 15)
    sealed = crypto.encrypt([_bomb(kind, _segment_header())], repo._key)
    repo.storage.put(f"archive/main/15-1/{NAME[:16]}/{NAME}-{'0' * 40}.{kind}", sealed)
    conf = tmp_path / "empty.conf"
    conf.write_text("")
    return ["prlimit", f"--as={ADDRESS_SPACE}", "--", sys.executable, "-m", "pgpush", f"--config={conf}",
            "--stanza=main", f"--repo1-path={root}", f"--log-path={tmp_path / 'log'}",
            "--repo1-cipher-type=aes-256-gcm", f"--repo1-cipher-pass={PASS}"]


@pytest.mark.parametrize("kind", ["gz", "zst", "lz4"])
def test_get_refuses_an_encrypted_bomb_as_corrupt_without_decoding_a_record_whole(tmp_path, kind):
    argv = _encrypted_repo_with_bomb(tmp_path, kind)
    (tmp_path / "pg_wal").mkdir()

    res = subprocess.run([*argv, "get", NAME, "pg_wal/RECOVERYXLOG"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120)

    assert res.returncode == 42, (res.returncode, res.stderr)
    errors = re.findall(r"^ERROR: \[\d{3}\]: .*$", res.stderr, re.M)
    assert len(errors) == 1 and f"decodes to more than its segment size ({SEG_SIZE} bytes)" in errors[0], res.stderr
    assert list((tmp_path / "pg_wal").iterdir()) == []


@pytest.mark.parametrize("kind", ["gz", "zst", "lz4"])
def test_verify_reports_an_encrypted_bomb_without_decoding_a_record_whole(tmp_path, kind):
    argv = _encrypted_repo_with_bomb(tmp_path, kind)

    res = subprocess.run([*argv, "verify"], capture_output=True, text=True, timeout=120)

    assert res.returncode == 42, (res.returncode, res.stderr)
    assert "Traceback" not in res.stderr
    assert f"WAL file 15-1/{NAME}: unreadable:" in res.stdout and "decodes to more than" in res.stdout, res.stdout


def test_restore_refuses_an_encrypted_bomb_in_a_backup_without_decoding_a_record_whole(pg_factory, pgpush_cmd, work_dir):
    pp = Pgpush(pgpush_cmd, work_dir, repo1_cipher_type="aes-256-gcm", repo1_cipher_pass=PASS)
    pg = pg_factory("pg", conf={"archive_mode": "on", "archive_command": ""}, wal_segsize_mb=1)
    setup_archiving(pp, pg)
    label, _ = backup(pp, pg, "--wait", "--wait-timeout=60")
    root = work_dir / "repo"
    stored = root / "backup" / pp.stanza / label / "pg_data" / "PG_VERSION.zst"
    assert stored.exists()
    repo = Repository(PosixStorage(str(root)), pp.stanza, cipher_type="aes-256-gcm", cipher_pass=PASS)
    repo.load_archive_info()
    stored.write_bytes(b"".join(crypto.encrypt([_bomb("zst")], repo._key)))
    target = procs.make_tmp_dir(work_dir, "box") / "data"
    procs.chown_tree(target.parent, "postgres")

    pp.cmd = ["prlimit", f"--as={ADDRESS_SPACE}", "--", *pp.cmd]
    res = pp.run("restore", f"--pg1-path={target}", timeout=300)

    assert res.returncode == 42, (res.returncode, res.stderr)
    assert "Traceback" not in res.stderr
    errors = re.findall(r"^ERROR: \[\d{3}\]: .*$", res.stderr, re.M)
    assert len(errors) == 1 and "decodes to more than the manifest's 3 bytes" in errors[0], res.stderr
