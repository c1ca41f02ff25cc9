"""One retry layer for every backend: :func:`pgpush.storage.open_storage` wraps posix, sftp and s3 in it.

A backend says whether a failure is worth another try (``StorageError.transient``: a lost or
refused connection, a timeout, an S3 5xx or throttling answer); this layer decides *when* and
*how often*, the same way for all of them, so that no caller has to (docs/architecture.md,
"Layers").  A transient error closes the backend's connection (its next call opens a new
one), waits, and tries again; anything else — a missing file, an existing one, a full disk,
a refused host key or credentials, the caller's own chunks failing — goes straight through.

The budget
----------
``budget`` is ``repo1-host-timeout`` (:func:`policy_for`), the operator's own measure of how
long the repository may stay silent before it counts as failing.  An outage shorter than that
(sshd restarted, a store failing over, a NAT box that forgot the connection) is ridden over;
a longer one is reported, with the backend's own message:

- the window opens at an operation's first transient failure and closes ``budget`` seconds
  later: no new try starts after it closes, and no wait crosses its end;
- it opens afresh only after progress (a chunk or a file handed to the caller), so a long
  read that lost its connection an hour ago may retry again now;
- the waits grow from 0.1 s, doubling, to at most 5 s, each drawn at random between half and
  all of that (jitter: the workers of a pool that lost the store together do not come back in
  step).

So an error comes at most ``budget`` plus one try after the first failure, and a try is
itself bounded by the backend's timeout for every wait (connect, each read or write): a
frozen store fails in about two timeouts (the first try's, then one retry on a new
connection), a host that refuses connections in about one timeout of backed-off reconnects.
Never a wait without an end.

Why each operation may be repeated
----------------------------------
- ``list``, ``list_dirs``, ``info``: they only read.
- ``delete``, ``delete_tree``: a missing name is not an error, so a second delete of what the
  first one removed (its answer lost) succeeds.  Not so for a name another process writes
  again at once (a lock): ``delete_once`` is never retried, and its caller looks before each try.
- ``put``: it writes a temporary name and renames it only when complete (S3: one PUT or a
  multipart upload that is whole or aborted), so a failed try leaves no partial file under the
  name, and the temporary copy a killed connection left behind is removed before the next try
  (:meth:`Storage.remove_leftovers`: it is this process's own).  Two cases need more:

  * the content must be sent again.  An iterable that is not an iterator (a list, an object
    whose ``__iter__`` starts over) is read afresh by each try; a one-shot iterator is kept in
    memory as it is read, up to :data:`REPLAY_MAX` bytes (a WAL segment of the default size,
    whatever its encoding), and past that a failure is not retried: the caller's own retry
    (PostgreSQL's archive_command, the backup's next run) sends it again.  A source that
    raises is never retried.
  * without ``overwrite``, a try whose answer was lost may have renamed the file into place:
    the next try then finds the name taken.  After a transient failure, a FileExistsError is
    checked by reading the stored file back: the same bytes as ours is success (that file is
    whole and durable: it was renamed only after its fsync), anything else is the caller's
    FileExistsError.

- ``read_chunks``: a failure before the first chunk is simply tried again.  After chunks
  were handed over, the file is read again from its start, the bytes already delivered are
  skipped, and they must have the CRC-32 of what was delivered (a file replaced meanwhile is
  an error, never a splice of two versions: checking only the last chunk let a replacement
  that differs before it through); the repository checks every file's SHA-1 on top.  The
  CRC-32 costs about 0.3 ms a MiB read.
- ``read_many``: the files already delivered are not asked for again; the others are.
- ``remove_leftovers`` is best effort and never raises: nothing to retry.

Every retry is logged at debug level with the backend's message (which never carries a
secret: the S3 client scrubs its credentials, the SFTP backend has none in its messages).
"""

from __future__ import annotations

import hashlib
import random
import time
import zlib
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from typing import TypeVar

from pgpush.config import Config
from pgpush.log import LOG
from pgpush.storage.base import FileInfo, Storage, StorageError

BACKOFF_FIRST = 0.1  # seconds before the second try
BACKOFF_MAX = 5.0  # the longest single wait
REPLAY_MAX = 20 * 1024 * 1024  # bytes of a one-shot put source kept for another try (a 16 MiB segment, any encoding)

T = TypeVar("T")


class Policy:
    """When to try again: exponential backoff with jitter, within ``budget`` seconds of failing.

    ``sleep`` and ``clock`` are the real ones; the unit tests of this policy give fake ones.
    """

    def __init__(self, budget: float, first: float = BACKOFF_FIRST, longest: float = BACKOFF_MAX,
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic):
        self.budget = budget
        self.first = first
        self.longest = longest
        self.sleep = sleep
        self.clock = clock

    def delay(self, n: int) -> float:
        """The wait before try ``n + 2`` (``n`` retries so far), jittered."""
        ceiling = min(self.longest, self.first * 2 ** min(n, 32))
        return random.uniform(ceiling / 2, ceiling)


def policy_for(cfg: Config) -> Policy:
    """The budget is ``repo1-host-timeout`` (see the module docstring for why)."""
    return Policy(float(cfg["repo1-host-timeout"]))


class _Tries:
    """The retry state of one operation."""

    def __init__(self, storage: RetryingStorage, what: str):
        self.storage = storage
        self.what = what
        self.retries = 0
        self.since: float | None = None  # when the window opened (the first failure since progress)

    def again(self, exc: BaseException) -> bool:
        """After ``exc``: wait and return True when another try may start, else False (give up)."""
        if not isinstance(exc, StorageError) or not exc.transient:
            return False
        policy = self.storage.policy
        now = policy.clock()
        if self.since is None:
            self.since = now
        left = self.since + policy.budget - now
        if left <= 0:
            LOG.debug(f"{self.storage.description}: {self.what}: giving up after {self.retries} retries "
                      f"in {policy.budget:g}s")
            return False
        delay = min(left, policy.delay(self.retries))
        self.retries += 1
        reason = " ".join(str(exc).split())
        LOG.debug(f"{self.storage.description}: {self.what} failed ({reason}); retry {self.retries} "
                  f"in {delay:.2f}s on a new connection")
        self.storage.backend.close()
        policy.sleep(delay)
        return True

    def progressed(self) -> None:
        self.retries = 0
        self.since = None


class _Source:
    """The chunks of one ``put``, to be read once per try (see "Why each operation may be repeated")."""

    def __init__(self, chunks: Iterable[bytes], limit: int):
        self.limit = limit
        self.failed = False  # the caller's iterator raised: never retried
        first = iter(chunks)
        self._again: Iterable[bytes] | None = None if first is chunks else chunks  # re-iterable: read afresh
        self._once: Iterator[bytes] | None = first  # the first try's iterator (a one-shot's only one)
        self._kept: list[bytes] | None = []  # what a one-shot iterator gave so far; None past limit
        self._kept_bytes = 0
        self._ended = False

    def replayable(self) -> bool:
        return not self.failed and (self._again is not None or self._kept is not None)

    def chunks(self) -> Iterator[bytes]:
        """The content from its start: read afresh, or what was kept then the rest of the iterator."""
        if self._again is not None:
            source, self._once = self._once or iter(self._again), None
        else:
            yield from list(self._kept or ())
            if self._ended or self._once is None:
                return
            source = self._once
        while True:
            try:
                chunk = next(source)
            except StopIteration:
                self._ended = True
                return
            except BaseException:
                self.failed = True
                raise
            if self._again is None and self._kept is not None:
                self._kept_bytes += len(chunk)
                if self._kept_bytes > self.limit:
                    self._kept = None  # too big to keep: this try is the last
                else:
                    self._kept.append(chunk)
            yield chunk


class RetryingStorage(Storage):
    """A backend with transient failures retried (see the module docstring)."""

    def __init__(self, backend: Storage, policy: Policy, replay_max: int = REPLAY_MAX):
        self.backend = backend
        self.policy = policy
        self.replay_max = replay_max
        self.description = backend.description

    def __repr__(self) -> str:
        return f"RetryingStorage({self.backend.description}, budget={self.policy.budget:g}s)"

    def _call(self, what: str, fn: Callable[..., T], *args) -> T:
        tries = _Tries(self, what)
        while True:
            try:
                return fn(*args)
            except StorageError as exc:
                if not tries.again(exc):
                    raise

    def list_dirs(self, directory: str) -> list[str]:  # before ``list``: below it, ``list`` names the method
        return self._call(f"list '{directory}'", self.backend.list_dirs, directory)

    def list(self, directory: str) -> list[FileInfo]:
        return self._call(f"list '{directory}'", self.backend.list, directory)

    def info(self, name: str) -> FileInfo | None:
        return self._call(f"stat '{name}'", self.backend.info, name)

    def delete(self, name: str) -> None:
        self._call(f"delete '{name}'", self.backend.delete, name)

    def delete_tree(self, directory: str) -> None:
        self._call(f"delete '{directory}'", self.backend.delete_tree, directory)

    def delete_once(self, name: str) -> None:
        self.backend.delete(name)  # not retried: see Storage.delete_once

    def remove_leftovers(self, name: str) -> None:
        self.backend.remove_leftovers(name)

    def close(self) -> None:
        self.backend.close()

    # -- put -----------------------------------------------------------------------------------

    def put(self, name: str, chunks: Iterable[bytes], overwrite: bool = False) -> int:
        source = _Source(chunks, self.replay_max)
        tries = _Tries(self, f"write '{name}'")
        failed_before = False
        while True:
            try:
                return self.backend.put(name, source.chunks(), overwrite)
            except FileExistsError as exists:
                if not failed_before or not source.replayable():
                    raise
                try:
                    size = self._holds(name, source)
                except FileNotFoundError:
                    raise exists from None
                except StorageError as exc:
                    if not tries.again(exc):
                        raise
                    continue
                if size is None:
                    raise exists
                LOG.debug(f"{self.description}: write '{name}': a try whose answer was lost had stored it")
                return size
            except StorageError as exc:
                if not source.replayable() or not tries.again(exc):
                    raise
                failed_before = True
                self.backend.remove_leftovers(name)

    def _holds(self, name: str, source: _Source) -> int | None:
        """The size of our content when ``name`` holds exactly it, else None."""
        ours, size = hashlib.sha256(), 0
        for chunk in source.chunks():
            ours.update(chunk)
            size += len(chunk)
        stored = hashlib.sha256()
        for chunk in self.backend.read_chunks(name):
            stored.update(chunk)
        return size if stored.digest() == ours.digest() else None

    # -- reading -------------------------------------------------------------------------------

    def read_chunks(self, name: str) -> Iterator[bytes]:
        tries = _Tries(self, f"read '{name}'")
        delivered = 0  # bytes handed to the caller
        crc = 0  # their CRC-32: a new try must read the same bytes before it may go on
        while True:
            chunks = self.backend.read_chunks(name)
            position, again = 0, 0  # what this try has read, and the CRC-32 of its part below ``delivered``
            try:
                for chunk in chunks:
                    if position < delivered:
                        head = chunk[:delivered - position]
                        again = zlib.crc32(head, again)
                        position += len(head)
                        if position < delivered:
                            continue
                        if again != crc:
                            raise _changed(name, self.description)
                        chunk = chunk[len(head):]
                        if not chunk:
                            continue
                    crc = zlib.crc32(chunk, crc)
                    position = delivered = position + len(chunk)
                    yield chunk
                    tries.progressed()
                if position < delivered:
                    raise _changed(name, self.description)
                return
            except StorageError as exc:
                if not tries.again(exc):
                    raise
            finally:
                close = getattr(chunks, "close", None)
                if close is not None:
                    close()

    def read_many(self, files: Iterable[tuple[str, int | None]]) -> Generator[tuple[str, bytes], None, None]:
        todo = iter(files)
        pending: deque[tuple[str, int | None]] = deque()  # given to the backend, not yet delivered
        tries = _Tries(self, "read files")

        def feed(again: list[tuple[str, int | None]]) -> Iterator[tuple[str, int | None]]:
            yield from again
            for item in todo:
                pending.append(item)
                yield item

        while True:
            try:
                for name, data in self.backend.read_many(feed(list(pending))):
                    pending.popleft()
                    yield name, data
                    tries.progressed()
                return
            except StorageError as exc:
                if not tries.again(exc):
                    raise


def _changed(name: str, description: str) -> StorageError:
    return StorageError(f"unable to read '{name}': it changed while it was being read again after a failure "
                        f"({description})")
