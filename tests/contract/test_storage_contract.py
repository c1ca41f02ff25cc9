"""One contract, three backends: every Storage (posix, sftp, s3) must pass the same tests.

The contract is the one of pgpush/storage/base.py: FileNotFoundError for a missing file,
FileExistsError (and the old content intact) for put without overwrite on an existing name,
StorageError (code 103, ``transient``) when the repository cannot be reached, never a hang
beyond the timeout, never a temporary or partial file visible, and the same object working
again once the server is back.

posix runs in a tmp dir, sftp against a real OpenSSH sshd (fixture ``sshd``), s3 against a
real SeaweedFS (fixture ``seaweed``, one server per worker, one bucket per test).
"""

from __future__ import annotations

import hashlib
import os
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pgpush.fsutil import TMP_SUFFIX
from pgpush.storage.base import Storage, StorageError
from pgpush.storage.posix import PosixStorage

MiB = 1024 * 1024
FAULT_TIMEOUT = 3.0  # storage timeout in the fault tests
SLACK = 2.5  # what an error may take beyond that timeout (retries of refused connections, teardown)


class Boom(Exception):
    """Raised by a chunk iterator midway through a put."""


@dataclass
class Backend:
    kind: str
    make: Callable[..., Storage]  # make(timeout=...) -> a new storage object on the same repository
    raw_names: Callable[[str], list[str]]  # every name in a directory as the server has it (temp files too)
    plant: Callable[[str, bytes], None]  # write a name directly on the server, bypassing Storage
    down: Callable[[], None] | None = None  # the server refuses connections
    up: Callable[[], None] | None = None
    freeze: Callable[[], None] | None = None  # the server accepts connections and never answers
    thaw: Callable[[], None] | None = None
    incomplete_uploads: Callable[[], list] | None = None
    root: Path | None = None  # where a file system backend's files are, to look at their modes


def _posix_backend(tmp_path: Path) -> Backend:
    root = tmp_path / "repo"

    def raw_names(directory: str) -> list[str]:
        try:
            return sorted(os.listdir(root / directory))
        except FileNotFoundError:
            return []

    def plant(name: str, data: bytes) -> None:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)

    return Backend("posix", lambda timeout=10: PosixStorage(str(root)), raw_names, plant, root=root)


def _sftp_backend(server) -> Backend:
    from pgpush.storage.sftp import SftpStorage

    opts = server.pgpush_options()
    root = Path(opts["repo1-path"])

    def make(timeout: float = 10) -> SftpStorage:
        return SftpStorage(opts["repo1-host"], str(root), int(opts["repo1-host-port"]), opts["repo1-host-user"],
                           opts["repo1-host-key-file"], opts["repo1-host-known-hosts"], timeout)

    def raw_names(directory: str) -> list[str]:
        try:
            return sorted(os.listdir(root / directory))
        except FileNotFoundError:
            return []

    def plant(name: str, data: bytes) -> None:  # the directory must exist (made by a put, owned by the SSH user)
        path = root / name
        path.write_bytes(data)
        os.chmod(path, 0o644)

    return Backend("sftp", make, raw_names, plant, down=server.stop, up=server.start,
                   freeze=server.freeze, thaw=server.thaw, root=root)


def _s3_backend(request: pytest.FixtureRequest) -> Backend:
    bucket = request.getfixturevalue("seaweed")
    prefix = "/pgpush/repo"
    key_prefix = prefix.strip("/") + "/"
    client = bucket.client()
    request.addfinalizer(client.close)

    def raw_names(directory: str) -> list[str]:
        storage = bucket.storage(prefix)
        pfx = f"{key_prefix}{directory}/" if directory else key_prefix
        names = set()
        for page in storage._list_pages(pfx, None, "list"):
            for item in page:
                if item.tag.endswith("Contents"):
                    key = next(c.text for c in item if c.tag.endswith("Key"))
                    names.add(key[len(pfx):].split("/")[0])
        storage.close()
        return sorted(names)

    def plant(name: str, data: bytes) -> None:
        client.request("PUT", key_prefix + name, body=data)

    def incomplete() -> list:
        storage = bucket.storage("/")
        try:
            return storage.incomplete_uploads()
        finally:
            storage.close()

    server = bucket.server
    return Backend("s3", lambda timeout=10: bucket.storage(prefix, timeout=timeout), raw_names, plant,
                   down=server.kill, up=server.start, freeze=server.freeze, thaw=server.thaw,
                   incomplete_uploads=incomplete)


@pytest.fixture(params=["posix", "sftp", "s3"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "posix":
        return _posix_backend(tmp_path)
    if request.param == "sftp":
        return _sftp_backend(request.getfixturevalue("sshd"))
    return _s3_backend(request)


@pytest.fixture(params=["posix", "sftp", "s3"])
def shared_server_storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Storage]:
    """A storage on a server shared by the module (sftp: ``module_sshd``), for tests that leave it
    as they found it: the nine bad-name cases started nine sshd."""
    if request.param == "posix":
        backend = _posix_backend(tmp_path)
    elif request.param == "sftp":
        backend = _sftp_backend(request.getfixturevalue("module_sshd"))
    else:
        backend = _s3_backend(request)
    store = backend.make()
    yield store
    store.close()


@pytest.fixture
def storage(backend: Backend) -> Iterator[Storage]:
    store = backend.make()
    yield store
    store.close()


def chunks(data: bytes, size: int = MiB) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i:i + size]


def payload(size: int, seed: str = "") -> bytes:
    """Deterministic, incompressible-looking content."""
    out = bytearray()
    block = hashlib.sha256(f"{seed}{size}".encode()).digest() * 2048  # 64 KiB
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(block[:64] + counter.to_bytes(8, "big")).digest() + block[32:]
        counter += 1
    return bytes(out[:size])


def no_leftovers(backend: Backend, directory: str) -> None:
    raw = backend.raw_names(directory)
    assert not [n for n in raw if TMP_SUFFIX in n], raw
    if backend.incomplete_uploads is not None:
        assert backend.incomplete_uploads() == []


# ---------------------------------------------------------------------------------------------
# content


@pytest.mark.parametrize("size", [0, 1, 5 * MiB + 3, 40 * MiB], ids=["empty", "1B", "5MiB", "40MiB"])
def test_put_read_roundtrip(backend: Backend, storage: Storage, size: int) -> None:
    data = payload(size)
    assert storage.put("d/file", chunks(data)) == size
    info = storage.info("d/file")
    assert info is not None and info.name == "file" and info.size == size
    got = list(storage.read_chunks("d/file"))
    assert all(len(c) <= MiB for c in got)
    assert b"".join(got) == data
    assert storage.read("d/file") == data
    no_leftovers(backend, "d")


def test_put_files_and_directories_not_world_readable(backend: Backend, storage: Storage) -> None:
    """WAL and backups hold the database's data: 0640 files, 0750 directories, whatever the umask."""
    if backend.root is None:
        pytest.skip("an object store has no file modes")
    storage.put("d/e/new", [b"x"])
    storage.put("d/e/new", [b"y"], overwrite=True)
    storage.put("d/e/big", chunks(payload(3 * MiB)))
    modes = {name: stat.S_IMODE(os.stat(backend.root / name).st_mode) for name in ("d", "d/e", "d/e/new", "d/e/big")}
    assert modes == {"d": 0o750, "d/e": 0o750, "d/e/new": 0o640, "d/e/big": 0o640}


def test_odd_chunk_sizes(storage: Storage) -> None:
    data = payload(300_001, "odd")
    storage.put("odd", chunks(data, 7777))
    assert storage.read("odd") == data


def test_put_existing_without_overwrite(backend: Backend, storage: Storage) -> None:
    storage.put("d/f", [b"old"])
    with pytest.raises(FileExistsError):
        storage.put("d/f", [b"new"])
    assert storage.read("d/f") == b"old"
    big = payload(17 * MiB, "big")
    with pytest.raises(FileExistsError):
        storage.put("d/f", chunks(big))
    assert storage.read("d/f") == b"old"
    assert [i.name for i in storage.list("d")] == ["f"]
    no_leftovers(backend, "d")


def test_put_overwrite_replaces(backend: Backend, storage: Storage) -> None:
    storage.put("f", [b"old content"])
    assert storage.put("f", [b"new"], overwrite=True) == 3
    assert storage.read("f") == b"new"
    big = payload(17 * MiB, "over")
    storage.put("f", chunks(big), overwrite=True)
    assert storage.read("f") == big
    storage.put("f", [b""], overwrite=True)
    assert storage.read("f") == b""
    assert storage.put("g", [b"fresh"], overwrite=True) == 5  # overwrite of nothing is a plain put
    assert storage.read("g") == b"fresh"
    no_leftovers(backend, "")


@pytest.mark.parametrize("size", [10, 20 * MiB], ids=["small", "multipart"])
def test_concurrent_writer_wins(backend: Backend, storage: Storage, size: int) -> None:
    """The name appears while our put is under way: ours fails, theirs stays."""
    other = backend.make()

    def racing() -> Iterator[bytes]:
        data = payload(size, "ours")
        yield data[: size // 2]
        other.put("race", [b"theirs"])
        yield data[size // 2:]

    with pytest.raises(FileExistsError):
        storage.put("race", racing())
    assert storage.read("race") == b"theirs"
    other.close()
    no_leftovers(backend, "")


@pytest.mark.parametrize("size", [2 * MiB, 20 * MiB], ids=["small", "multipart"])
def test_failed_iterator_leaves_nothing(backend: Backend, storage: Storage, size: int) -> None:
    storage.put("d/keep", [b"k"])

    def failing() -> Iterator[bytes]:
        yield from chunks(payload(size, "fail"))
        raise Boom("source went away")

    with pytest.raises(Boom):
        storage.put("d/partial", failing())
    assert storage.info("d/partial") is None
    assert [i.name for i in storage.list("d")] == ["keep"]
    assert backend.raw_names("d") == ["keep"]
    no_leftovers(backend, "d")
    storage.put("d/partial", [b"later"])  # the name is free
    assert storage.read("d/partial") == b"later"


def test_put_in_progress_is_invisible(backend: Backend, storage: Storage) -> None:
    """Another client listing while a put is under way sees neither the name nor a temporary file."""
    seen: list[tuple[list[str], object]] = []
    watcher = backend.make()

    def watching() -> Iterator[bytes]:
        data = payload(20 * MiB, "watch")
        for n, chunk in enumerate(chunks(data)):
            if n in (1, 18):
                seen.append((sorted(i.name for i in watcher.list("w")), watcher.info("w/file")))
            yield chunk

    storage.put("w/other", [b"x"])
    storage.put("w/file", watching())
    assert seen == [(["other"], None), (["other"], None)]
    assert sorted(i.name for i in watcher.list("w")) == ["file", "other"]
    watcher.close()


# ---------------------------------------------------------------------------------------------
# listing and metadata


def test_list_files_and_dirs(backend: Backend, storage: Storage) -> None:
    storage.put("top/a", [b"1"])
    storage.put("top/b", [b"22"])
    storage.put("top/sub/c", [b"333"])
    storage.put("top/sub/deeper/d", [b"4444"])
    storage.put("top/sub2/e", [b"5"])
    backend.plant(f"top/x{TMP_SUFFIX}.123.abc", b"junk")
    files = sorted((i.name, i.size) for i in storage.list("top"))
    assert files == [("a", 1), ("b", 2)]
    assert sorted(storage.list_dirs("top")) == ["sub", "sub2"]
    assert [(i.name, i.size) for i in storage.list("top/sub")] == [("c", 3)]
    assert storage.list_dirs("top/sub") == ["deeper"]
    assert storage.list_dirs("top/sub/deeper") == []
    assert "top" in storage.list_dirs("")
    assert storage.list("") == []
    mtimes = [i.mtime for i in storage.list("top")]
    assert all(m is None or abs(m - time.time()) < 3600 for m in mtimes)


def test_missing_things(storage: Storage) -> None:
    assert storage.list("nope") == []
    assert storage.list("nope/deeper") == []
    assert storage.list_dirs("nope") == []
    assert storage.info("nope") is None
    assert storage.info("nope/x") is None
    with pytest.raises(FileNotFoundError):
        storage.read("nope/x")
    with pytest.raises(FileNotFoundError):
        list(storage.read_chunks("nope"))
    storage.delete("nope")
    storage.delete("nope/x")
    storage.delete_tree("nope")


def test_info(storage: Storage) -> None:
    storage.put("a/b/c.zst", [b"x" * 1234])
    info = storage.info("a/b/c.zst")
    assert info is not None and (info.name, info.size) == ("c.zst", 1234)


def test_delete(storage: Storage) -> None:
    storage.put("d/x", [b"1"])
    storage.put("d/y", [b"2"])
    storage.delete("d/x")
    assert storage.info("d/x") is None
    assert [i.name for i in storage.list("d")] == ["y"]
    storage.delete("d/x")  # again: fine


def test_delete_tree(backend: Backend, storage: Storage) -> None:
    for name in ("t/a", "t/b", "t/s/c", "t/s/deep/d", "keep/e", "tx/f"):
        storage.put(name, [name.encode()])
    storage.delete_tree("t")
    assert storage.list("t") == []
    assert storage.list("t/s") == []
    assert storage.list_dirs("t") == []
    assert storage.info("t/a") is None
    assert sorted(storage.list_dirs("")) == ["keep", "tx"]
    assert storage.read("keep/e") == b"keep/e"
    assert storage.read("tx/f") == b"tx/f"  # a sibling sharing the name's prefix survives
    assert backend.raw_names("t") == []
    storage.delete_tree("t")
    storage.put("t/a", [b"again"])  # the name can be used again
    assert storage.read("t/a") == b"again"


@pytest.mark.parametrize("bad", ["../x", "/abs", "a/../b", "a//b", "./a", "a/.", "a/", f"x{TMP_SUFFIX}", f"d/y{TMP_SUFFIX}.1"])
def test_bad_names_rejected(shared_server_storage: Storage, bad: str) -> None:
    storage = shared_server_storage
    with pytest.raises(ValueError):
        storage.put(bad, [b"x"])
    with pytest.raises(ValueError):
        storage.info(bad)
    with pytest.raises(ValueError):
        list(storage.read_chunks(bad))
    with pytest.raises(ValueError):
        storage.delete(bad)
    if TMP_SUFFIX not in bad:
        with pytest.raises(ValueError):
            storage.list(bad)
        with pytest.raises(ValueError):
            storage.delete_tree(bad)


# ---------------------------------------------------------------------------------------------
# faults


def _assert_repo_error(exc: BaseException, transient: bool = True) -> None:
    assert isinstance(exc, StorageError), repr(exc)
    assert exc.code == 103
    assert exc.transient is transient
    assert str(exc).startswith("unable to find a valid repository:\nrepo1: "), str(exc)


def _timed(fn: Callable[[], object]) -> tuple[BaseException | None, float]:
    start = time.monotonic()
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - the test inspects it
        return exc, time.monotonic() - start
    return None, time.monotonic() - start


def test_server_down_then_back(backend: Backend) -> None:
    if backend.down is None:
        pytest.skip(f"{backend.kind} has no server to take down")
    storage = backend.make(timeout=FAULT_TIMEOUT)
    storage.put("d/before", [b"1"])
    backend.down()
    try:
        for op in (lambda: storage.put("d/during", [b"2"]), lambda: storage.read("d/before")):
            exc, elapsed = _timed(op)
            _assert_repo_error(exc)
            assert elapsed < FAULT_TIMEOUT + SLACK, elapsed
        fresh = backend.make(timeout=FAULT_TIMEOUT)  # a new object, never connected
        exc, elapsed = _timed(lambda: fresh.list("d"))
        _assert_repo_error(exc)
        assert elapsed < FAULT_TIMEOUT + SLACK, elapsed
    finally:
        backend.up()
    # the same objects work again
    assert storage.read("d/before") == b"1"
    storage.put("d/after", [b"3"])
    assert sorted(i.name for i in fresh.list("d")) == ["after", "before"]
    storage.close()
    fresh.close()


def test_server_frozen_then_thawed(backend: Backend) -> None:
    if backend.freeze is None:
        pytest.skip(f"{backend.kind} has no server to freeze")
    storage = backend.make(timeout=FAULT_TIMEOUT)
    storage.put("f/before", [b"1"])
    backend.freeze()
    try:
        exc, elapsed = _timed(lambda: storage.read("f/before"))
        _assert_repo_error(exc)
        assert elapsed < FAULT_TIMEOUT + SLACK, elapsed
        exc, elapsed = _timed(lambda: storage.put("f/during", [b"2"] * 10))
        _assert_repo_error(exc)
        assert elapsed < FAULT_TIMEOUT + SLACK, elapsed
    finally:
        backend.thaw()
    assert storage.read("f/before") == b"1"
    storage.put("f/after", [b"3"])
    assert storage.read("f/after") == b"3"
    storage.close()
