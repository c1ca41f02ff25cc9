"""The retry layer (pgpush/storage/retry.py) against real servers, through open_storage as every command gets it.

Faults come from the fault matrix's harness (tests/harness/faults.py): a real OpenSSH sshd
stopped, started and its sessions killed, a real SeaweedFS killed and restarted, a real file
system filled.  What is checked is what a caller sees: an outage shorter than the budget
(``repo1-host-timeout``) is ridden over, a connection cut mid-file costs nothing, a permanent
failure comes at once, and a lasting outage ends with the backend's error once the budget is
spent, never later than one more try after it.
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import faults

from pgpush.config import load
from pgpush.fsutil import TMP_SUFFIX
from pgpush.storage import open_storage
from pgpush.storage.base import Storage, StorageError

MiB = 1024 * 1024
EMPTY_CONFIG = Path(__file__).with_name("empty.conf")  # a config file with no option in it
SLACK = 3.0  # process and server start-up on a loaded machine


def open_repo(backend: faults.Backend, timeout: float, **extra: str) -> Storage:
    """The storage a command would get for this backend's options, with ``repo1-host-timeout=timeout``."""
    options = {**backend.options(), **extra, "repo1-host-timeout": str(timeout)}
    env = {f"PGPUSH_{k.upper().replace('-', '_')}": str(v) for k, v in options.items()}
    return open_storage(load(["info", f"--config={EMPTY_CONFIG}"], environ=env))


def payload(size: int, seed: str) -> bytes:
    block = hashlib.sha256(seed.encode()).digest() * (MiB // 32)
    return (block * (size // len(block) + 1))[:size]




def retries(log: io.StringIO) -> list[str]:
    return [line for line in log.getvalue().splitlines() if " failed (" in line and "; retry " in line]


@pytest.fixture(params=["sftp", "s3"])
def remote(request: pytest.FixtureRequest) -> Iterator[faults.Backend]:
    made = (faults.SftpBackend(request.getfixturevalue("sshd")) if request.param == "sftp"
            else faults.S3Backend(request.getfixturevalue("seaweed")))
    try:
        yield made
    finally:
        made.close()


def test_an_outage_shorter_than_the_budget_is_ridden_over(remote: faults.Backend, debug_log: io.StringIO) -> None:
    storage = open_repo(remote, timeout=30)
    storage.put("d/before", [b"1"])
    remote.down()
    back = threading.Timer(1.0, remote.up)
    back.start()
    try:
        start = time.monotonic()
        storage.put("d/during", iter([b"2", b"3"]))
        assert storage.read("d/before") == b"1"
        elapsed = time.monotonic() - start
    finally:
        back.join()
    assert elapsed < 30, elapsed
    assert remote.reader().read("d/during") == b"23"
    lines = retries(debug_log)
    assert lines, debug_log.getvalue()
    assert all(remote.options().get("repo1-s3-key-secret", "\0") not in line for line in lines)
    storage.close()


def test_a_lasting_outage_ends_when_the_budget_is_spent(remote: faults.Backend, debug_log: io.StringIO) -> None:
    budget = 3.0
    storage = open_repo(remote, timeout=budget)
    storage.put("d/before", [b"1"])
    remote.down()
    try:
        start = time.monotonic()
        with pytest.raises(StorageError) as err:
            storage.read("d/before")
        elapsed = time.monotonic() - start
    finally:
        remote.up()
    assert err.value.transient is True and err.value.code == 103
    assert str(err.value).startswith("unable to find a valid repository:\nrepo1: ")
    assert budget <= elapsed < 2 * budget + SLACK, elapsed  # the window, then at most one try
    assert len(retries(debug_log)) >= 3
    assert storage.read("d/before") == b"1"  # the same object works again
    storage.close()


def test_a_connection_cut_mid_file_costs_nothing(remote: faults.Backend, debug_log: io.StringIO) -> None:
    """Sessions killed (sftp) or the store restarted (s3) while a put streams and while a read
    streams: the put is replayed from the chunks it kept (s3: the part is sent again on a new
    connection), the read resumes after the bytes it had delivered, and no temporary copy stays
    behind."""
    storage = open_repo(remote, timeout=20)
    data = payload(18 * MiB, "cut")  # over one S3 part (a multipart upload), under what a put keeps to replay

    def source() -> Iterator[bytes]:
        for n, i in enumerate(range(0, len(data), MiB)):
            if n == 17:  # s3: after the first part went up, before the second
                remote.cut()
            yield data[i:i + MiB]

    assert storage.put("d/big", source()) == len(data)
    got = []
    for n, chunk in enumerate(storage.read_chunks("d/big")):
        if n == 1:
            remote.cut()
        got.append(chunk)
    assert b"".join(got) == data
    assert remote.reader().read("d/big") == data
    if isinstance(remote, faults.SftpBackend):
        assert [n for n in os.listdir(remote.sshd.repo_dir / "d") if TMP_SUFFIX in n] == []
    # the put met the cut: a retry (sftp), or the client's re-send on the connection the restart closed (s3)
    log = debug_log.getvalue()
    assert "write 'd/big' failed (" in log or "write part 2 of 'd/big': the kept-alive connection was closed" in log, log
    storage.close()


@pytest.mark.parametrize("kind", ["posix-full", "sftp-full", "sftp-unknown-host", "s3-bad-credentials"])
def test_a_permanent_failure_is_not_retried(request: pytest.FixtureRequest, work_dir: Path, kind: str,
                                             debug_log: io.StringIO) -> None:
    extra: dict[str, str] = {}
    if kind == "posix-full":
        backend: faults.Backend = faults.PosixBackend(work_dir, small_fs_mb=8)
    elif kind.startswith("sftp"):
        backend = faults.SftpBackend(request.getfixturevalue("sshd"), small_fs_mb=8 if kind == "sftp-full" else None)
        if kind == "sftp-unknown-host":
            empty = work_dir / "empty_known_hosts"
            empty.write_text("")
            extra["repo1-host-known-hosts"] = str(empty)
    else:
        backend = faults.S3Backend(request.getfixturevalue("seaweed"))
        extra["repo1-s3-key-secret"] = "not-the-secret"
    try:
        if kind.endswith("-full"):
            backend.fill()
        storage = open_repo(backend, timeout=30, **extra)
        start = time.monotonic()
        with pytest.raises(StorageError) as err:
            storage.put("d/f", [payload(MiB, "full")])
        elapsed = time.monotonic() - start
        storage.close()
    finally:
        backend.close()
    assert err.value.transient is False and err.value.code == 103
    assert elapsed < SLACK, elapsed  # not the 30 s budget
    assert retries(debug_log) == []
    assert "not-the-secret" not in debug_log.getvalue() + str(err.value)
