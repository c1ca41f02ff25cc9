"""A full store: ``put`` raises StorageError (103) and leaves nothing under the final name.

posix and sftp repositories live on a small tmpfs (harness.tmpfs) that fills up for real, so
the store meets the ENOSPC (posix) and the ``SSH_FX_FAILURE`` write statuses (a real OpenSSH
sftp-server) a full backup host gives.  Files of a few MB are sent in fewer than 100 SFTP
write requests: the case paramiko's pipelined writes never check.  After a failed put the
space it took is free again (temporary file removed, handle closed) and a put that fits works.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness.tmpfs import fill, tmpfs

from pgpush.storage.base import TMP_MARK, Storage, StorageError
from pgpush.storage.posix import PosixStorage

MiB = 1024 * 1024
TMPFS_MB = 4


def noise(size: int) -> bytes:
    """Incompressible content (tmpfs stores every byte)."""
    out = bytearray()
    seed = hashlib.sha256(str(size).encode()).digest()
    while len(out) < size:
        seed = hashlib.sha256(seed).digest()
        out += seed * 64  # 2 KiB per hash: quick, and nothing stores it smaller
    return bytes(out[:size])


def chunks(data: bytes, size: int = MiB) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i:i + size]


@pytest.fixture(params=["posix", "sftp"])
def full_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Storage, Path]]:
    """(storage, its root on a TMPFS_MB tmpfs) for one backend."""
    if request.param == "posix":
        root = tmp_path / "repo"
        with tmpfs(root, TMPFS_MB):
            store = PosixStorage(str(root))
            yield store, root
            store.close()
        return
    from pgpush.storage.sftp import SftpStorage

    server = request.getfixturevalue("sshd")
    opts = server.pgpush_options()
    with tmpfs(server.repo_dir, TMPFS_MB, owner=server.user):
        store = SftpStorage(opts["repo1-host"], opts["repo1-path"], int(opts["repo1-host-port"]),
                            opts["repo1-host-user"], opts["repo1-host-key-file"], opts["repo1-host-known-hosts"], 10)
        try:
            yield store, server.repo_dir
        finally:
            store.close()


def names_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_put_larger_than_free_space_raises_and_leaves_nothing(full_store) -> None:
    store, root = full_store
    with pytest.raises(StorageError) as raised:
        store.put("d/big", chunks(noise(6 * MiB)))
    assert raised.value.code == 103
    assert "No space left on device" in str(raised.value)
    assert store.info("d/big") is None
    assert not [n for n in names_under(root) if n.startswith("d/")], names_under(root)
    # the failed put's space is free again: a file that fits is written whole
    data = noise(2 * MiB + 5)
    assert store.put("d/fits", chunks(data)) == len(data)
    assert store.read("d/fits") == data


def test_small_put_into_nearly_full_store_raises(full_store) -> None:
    """A file of a few write requests, the store with a few KB free: nothing partial is kept."""
    store, root = full_store
    store.put("d/first", [b"x"])  # the directory exists before the store fills
    filler = fill(root, leave_bytes=64 * 1024)
    try:
        for size in (300 * 1024, MiB):
            with pytest.raises(StorageError, match="No space left on device"):
                store.put(f"d/small-{size}", chunks(noise(size), 100_000), overwrite=True)
            assert store.info(f"d/small-{size}") is None
        assert [n for n in os.listdir(root / "d") if TMP_MARK in n] == []
    finally:
        filler.unlink()
    data = noise(MiB)
    store.put("d/small-after", chunks(data))
    assert store.read("d/small-after") == data
