"""The retry layer's policy (pgpush/storage/retry.py) on a tiny fake backend that counts calls.

What a retry does against real servers (sshd, SeaweedFS, a full file system) is in
tests/contract/test_storage_retry.py; here, on a clock of the test's own, exactly when it
retries, how long it waits, and what each operation does to be safe to repeat.
"""

from __future__ import annotations

import errno
from collections.abc import Iterable, Iterator

import pytest

from pgpush.storage.base import FileInfo, Storage, StorageError
from pgpush.storage.retry import BACKOFF_FIRST, BACKOFF_MAX, Policy, RetryingStorage

LOST = "connection lost"


def lost() -> StorageError:
    return StorageError(f"unable to find a valid repository:\nrepo1: {LOST}", transient=True)


class Clock:
    """A clock that moves only when the layer sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class Fake(Storage):
    """Files in a dict; ``faults`` are raised, one per call, before the calls they are queued for."""

    description = "fake"

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.faults: list[BaseException | None] = []  # None: this call goes through
        self.calls: list[str] = []
        self.closes = 0
        self.chunk = 4
        self.fail_after_chunks: int | None = None  # read_chunks: raise lost() after this many chunks, once
        self.fail_after_files: int | None = None  # read_many: raise lost() after this many files, once
        self.store_then_fail = False  # put: store the file, then lose the answer (once)
        self.fail_put_after_chunks: int | None = None  # put: raise lost() after reading this many chunks, once

    def _fault(self, call: str) -> None:
        self.calls.append(call)
        if self.faults:
            fault = self.faults.pop(0)
            if fault is not None:
                raise fault

    def list(self, directory: str) -> list[FileInfo]:
        self._fault("list")
        return [FileInfo(n, len(d)) for n, d in sorted(self.files.items())]

    def info(self, name: str) -> FileInfo | None:
        self._fault("info")
        return FileInfo(name, len(self.files[name])) if name in self.files else None

    def put(self, name: str, chunks: Iterable[bytes], overwrite: bool = False) -> int:
        self._fault("put")
        if not overwrite and name in self.files:
            raise FileExistsError(errno.EEXIST, "file exists", name)
        data = b""
        for n, chunk in enumerate(chunks, 1):
            data += chunk
            if n == self.fail_put_after_chunks:
                self.fail_put_after_chunks = None
                raise lost()
        self.files[name] = data
        if self.store_then_fail:
            self.store_then_fail = False
            raise lost()
        return len(data)

    def read_chunks(self, name: str) -> Iterator[bytes]:
        self._fault("read")
        if name not in self.files:
            raise FileNotFoundError(errno.ENOENT, "no such file", name)
        data = self.files[name]
        for n, i in enumerate(range(0, len(data), self.chunk)):
            if self.fail_after_chunks is not None and n == self.fail_after_chunks:
                self.fail_after_chunks = None
                raise lost()
            yield data[i:i + self.chunk]

    def read_many(self, files: Iterable[tuple[str, int | None]]) -> Iterator[tuple[str, bytes]]:
        self._fault("read_many")
        for n, (name, _hint) in enumerate(files):
            self.calls.append(f"get {name}")
            if self.fail_after_files is not None and n == self.fail_after_files:
                self.fail_after_files = None
                raise lost()
            yield name, self.files[name]

    def delete(self, name: str) -> None:
        self._fault("delete")
        self.files.pop(name, None)

    def close(self) -> None:
        self.closes += 1


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def fake() -> Fake:
    return Fake()


def wrap(fake: Fake, clock: Clock, budget: float = 10.0, **kw) -> RetryingStorage:
    return RetryingStorage(fake, Policy(budget, sleep=clock.sleep, clock=lambda: clock.now), **kw)




# ---------------------------------------------------------------------------------------------
# the policy


def test_transient_failures_are_retried_with_growing_jittered_waits(fake: Fake, clock: Clock, debug_log) -> None:
    fake.files["a"] = b"1"
    fake.faults = [lost(), lost(), lost(), None]
    assert [i.name for i in wrap(fake, clock).list("")] == ["a"]
    assert fake.calls == ["list"] * 4
    assert fake.closes == 3  # each failure drops the connection: the next try opens a new one
    for n, wait in enumerate(clock.sleeps):
        ceiling = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** n)
        assert ceiling / 2 <= wait <= ceiling
    lines = debug_log.getvalue().splitlines()
    assert len(lines) == 3 and all(line.startswith("DEBUG: fake: list '' failed (unable to find") for line in lines)
    assert "retry 3 in" in lines[2]


def test_permanent_failures_and_missing_files_are_not_retried(fake: Fake, clock: Clock) -> None:
    storage = wrap(fake, clock)
    fake.faults = [StorageError("permission denied")]
    with pytest.raises(StorageError, match="permission denied"):
        storage.info("x")
    with pytest.raises(FileNotFoundError):
        storage.read("missing")
    fake.files["x"] = b"old"
    with pytest.raises(FileExistsError):  # no failure before it: the caller's answer
        storage.put("x", [b"new"])
    assert fake.calls == ["info", "read", "put"] and clock.sleeps == [] and fake.closes == 0


def test_the_budget_ends_the_retries(fake: Fake, clock: Clock) -> None:
    fake.faults = [lost()] * 1000
    with pytest.raises(StorageError, match=LOST) as err:
        wrap(fake, clock, budget=20.0).info("x")
    assert err.value.transient is True
    assert sum(clock.sleeps) == pytest.approx(20.0)  # no wait crosses the budget's end
    assert max(clock.sleeps) <= BACKOFF_MAX
    assert len(fake.calls) == len(clock.sleeps) + 1
    assert 8 <= len(fake.calls) <= 14  # 0.1 s doubling to 5 s: about ten tries in 20 s


def test_progress_opens_a_new_window(fake: Fake, clock: Clock) -> None:
    """A long read that lost its connection long ago may retry again: the budget counts failing, not working."""
    fake.files["f"] = bytes(range(40))
    storage = wrap(fake, clock, budget=1.0)
    got = []
    fake.fail_after_chunks = 2
    for n, chunk in enumerate(storage.read_chunks("f")):
        got.append(chunk)
        clock.now += 5  # the caller works long between chunks
        if n == 5:
            fake.fail_after_chunks = 8  # fails again on the next open, far past the first window
    assert b"".join(got) == bytes(range(40))
    assert len(clock.sleeps) == 2


# ---------------------------------------------------------------------------------------------
# put


def test_put_replays_a_one_shot_source(fake: Fake, clock: Clock) -> None:
    pulled = []

    def source() -> Iterator[bytes]:
        for part in (b"ab", b"cd", b"ef"):
            pulled.append(part)
            yield part

    fake.fail_put_after_chunks = 1  # the first try dies after reading one chunk
    assert wrap(fake, clock).put("f", source()) == 6
    assert fake.files["f"] == b"abcdef"
    assert pulled == [b"ab", b"cd", b"ef"]  # the source itself was read once


def test_put_reads_a_reiterable_source_again(fake: Fake, clock: Clock) -> None:
    class Reopened:
        """Starts over at each iteration, as a file opened again would."""

        def __init__(self) -> None:
            self.opened = 0

        def __iter__(self) -> Iterator[bytes]:
            self.opened += 1
            return iter([b"x", b"y"])

    source = Reopened()
    fake.fail_put_after_chunks = 1
    assert wrap(fake, clock).put("f", source) == 2
    assert fake.files["f"] == b"xy"
    assert source.opened == 2  # once per try, nothing kept in memory


def test_put_of_a_source_too_big_to_keep_is_not_retried(fake: Fake, clock: Clock) -> None:
    fake.fail_put_after_chunks = 3
    with pytest.raises(StorageError, match=LOST):
        wrap(fake, clock, replay_max=3).put("f", iter([b"ab", b"cd", b"ef"]))
    assert fake.calls == ["put"] and "f" not in fake.files


def test_put_whose_source_fails_is_not_retried(fake: Fake, clock: Clock) -> None:
    def source() -> Iterator[bytes]:
        yield b"a"
        raise StorageError("the source's own repository is gone", transient=True)

    with pytest.raises(StorageError, match="source's own"):
        wrap(fake, clock).put("f", source())
    assert fake.calls == ["put"] and clock.sleeps == []


@pytest.mark.parametrize("ours", [True, False])
def test_put_after_a_lost_answer_finds_its_own_file(fake: Fake, clock: Clock, ours: bool) -> None:
    """The try stored the file, the answer was lost; the next try finds the name taken."""
    fake.store_then_fail = True
    if not ours:  # someone else's content replaces it before the retry

        def rival(delay: float) -> None:
            clock.sleep(delay)
            fake.files["f"] = b"theirs"

        storage = RetryingStorage(fake, Policy(10.0, sleep=rival, clock=lambda: clock.now))
        with pytest.raises(FileExistsError):
            storage.put("f", iter([b"ou", b"rs"]))
        return
    assert wrap(fake, clock).put("f", iter([b"ou", b"rs"])) == 4
    assert fake.calls == ["put", "put", "read"] and fake.files["f"] == b"ours"


# ---------------------------------------------------------------------------------------------
# reading


def test_read_resumes_after_the_bytes_delivered(fake: Fake, clock: Clock) -> None:
    fake.files["f"] = bytes(range(30))
    fake.chunk = 7
    fake.fail_after_chunks = 2
    storage = wrap(fake, clock)
    chunks = list(storage.read_chunks("f"))
    assert b"".join(chunks) == bytes(range(30))
    assert fake.calls == ["read", "read"]


def test_read_of_a_file_replaced_meanwhile_fails(fake: Fake, clock: Clock) -> None:
    fake.files["f"] = b"A" * 30
    fake.fail_after_chunks = 3
    storage = RetryingStorage(fake, Policy(10.0, sleep=lambda s: fake.files.update(f=b"B" * 30), clock=lambda: 0.0))
    with pytest.raises(StorageError, match="changed while it was being read again") as err:
        b"".join(storage.read_chunks("f"))
    assert err.value.transient is False


def test_read_many_asks_only_for_the_files_not_delivered(fake: Fake, clock: Clock) -> None:
    for n in range(6):
        fake.files[f"f{n}"] = str(n).encode()
    fake.fail_after_files = 3
    got = list(wrap(fake, clock).read_many((f"f{n}", 1) for n in range(6)))
    assert got == [(f"f{n}", str(n).encode()) for n in range(6)]
    asked = [c for c in fake.calls if c.startswith("get ")]
    assert asked == ["get f0", "get f1", "get f2", "get f3", "get f3", "get f4", "get f5"]


def test_delete_and_missing_names_pass_through(fake: Fake, clock: Clock) -> None:
    fake.files["x"] = b"1"
    fake.faults = [lost(), None]
    storage = wrap(fake, clock)
    storage.delete("x")
    assert "x" not in fake.files and storage.info("x") is None
