"""A full store: ``put`` raises StorageError (103) and leaves nothing under the final name.

Each store keeps its data on a small tmpfs (harness.tmpfs) that fills up for real, so it meets
the ENOSPC (posix), the ``SSH_FX_FAILURE`` write statuses (a real OpenSSH sftp-server) and the
500 InternalError (a SeaweedFS whose volume directory is full) a user's full store gives.
Files of a few MB are sent in fewer than 100 SFTP write requests: the case paramiko's
pipelined writes never check.  After a failed put the
space it took is free again (temporary file removed, handle closed) and, once the store has
room again, the same put works.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from harness.seaweed import SeaweedBucket, SeaweedServer
from harness.tmpfs import fill, tmpfs

from pgpush.fsutil import TMP_SUFFIX
from pgpush.storage.base import Storage, StorageError
from pgpush.storage.posix import PosixStorage

MiB = 1024 * 1024
TMPFS_MB = 10
S3_TMPFS_MB = 40  # SeaweedFS's own files (master, filer database) need some room too


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


@dataclass
class FullStore:
    kind: str
    store: Storage
    fs: Path  # a directory on the small tmpfs holding the store's data: fill() it to make the store full
    full_message: str  # what the error says


@pytest.fixture(params=["posix", "sftp", "s3"])
def full_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FullStore]:
    """A store of each kind whose data lives on a small tmpfs."""
    if request.param == "posix":
        root = tmp_path / "repo"
        with tmpfs(root, TMPFS_MB):
            yield FullStore("posix", PosixStorage(str(root)), root, "No space left on device")
    elif request.param == "sftp":
        yield from _sftp_store(request.getfixturevalue("sshd"))
    else:
        yield from _s3_store(tmp_path / "weed")


def _sftp_store(server) -> Iterator[FullStore]:
    from pgpush.storage.sftp import SftpStorage

    opts = server.pgpush_options()
    with tmpfs(server.repo_dir, TMPFS_MB, owner=server.user):
        store = SftpStorage(opts["repo1-host"], opts["repo1-path"], int(opts["repo1-host-port"]),
                            opts["repo1-host-user"], opts["repo1-host-key-file"], opts["repo1-host-known-hosts"], 10)
        try:
            yield FullStore("sftp", store, server.repo_dir, "No space left on device")
        finally:
            store.close()


def _s3_store(base: Path) -> Iterator[FullStore]:
    """A SeaweedFS of its own whose data directory is a tmpfs: the shared server must not fill up.
    SeaweedFS answers a full disk with 500 InternalError (retried, then 103)."""
    base.mkdir()
    with tmpfs(base / "data", S3_TMPFS_MB):
        server = SeaweedServer(base)
        try:
            server.start()
            store = SeaweedBucket(server).storage(timeout=5)
            yield FullStore("s3", store, base / "data", "InternalError")
            store.close()
        finally:
            server.cleanup()


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def test_put_larger_than_free_space_raises_and_leaves_nothing(full_store: FullStore) -> None:
    store = full_store.store
    store.put("d/first", [b"x"])  # the directory exists before the store fills
    filler = fill(full_store.fs, leave_bytes=3 * MiB)
    try:
        free = free_bytes(full_store.fs)
        data = noise(6 * MiB)
        with pytest.raises(StorageError, match=full_store.full_message) as raised:
            store.put("d/big", chunks(data))
        assert raised.value.code == 103
        assert store.info("d/big") is None
        assert [i.name for i in store.list("d")] == ["first"]
        if full_store.kind != "s3":  # a file system: no temporary file left, its space free again
            assert [n for n in os.listdir(full_store.fs / "d") if TMP_SUFFIX in n] == []
            assert free_bytes(full_store.fs) >= free - 256 * 1024
    finally:
        filler.unlink()
    assert store.put("d/big", chunks(data)) == len(data)  # nothing left under the name blocks the retry
    assert store.read("d/big") == data


def test_small_put_into_nearly_full_store_raises(full_store: FullStore) -> None:
    """A file of a few write requests, the store with a few KB free: nothing partial is kept."""
    store = full_store.store
    store.put("d/first", [b"x"])
    filler = fill(full_store.fs, leave_bytes=64 * 1024)
    try:
        for size in (300 * 1024, MiB):
            with pytest.raises(StorageError, match=full_store.full_message):
                store.put(f"d/small-{size}", chunks(noise(size), 100_000), overwrite=True)
            assert store.info(f"d/small-{size}") is None
        assert [i.name for i in store.list("d")] == ["first"]
    finally:
        filler.unlink()
    data = noise(MiB)
    store.put("d/small-after", chunks(data))
    assert store.read("d/small-after") == data
