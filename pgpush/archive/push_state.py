"""Async push with several repositories: which repository holds which WAL file not yet acknowledged,
which repository is failing, and what to push next (docs/architecture.md, "Asynchronous push and
get": several repositories).

A WAL file is acknowledged (``SEGMENT.ok``) only once it is durable in every configured repository.
Until then the parent remembers, per repository, the files already there:
``SPOOL/archive/STANZA/out/repoN/SEGMENT``, a marker naming the copy (:class:`Markers`).  Markers
live in their own directory so the foreground, which reads only ``out/SEGMENT.ok``,
``out/SEGMENT.error`` and ``out/global.error``, can never take one for a verdict; only the parent
(under the spool lock) writes them.  They are not synced: a marker lost in a crash only makes the
parent push that file again, which the archive answers as a duplicate after reading the stored copy
back.  A file's markers go when its ``.ok`` is
written, and any marker whose file is no longer ``.ready`` is pruned.  Holes left by
``archive-push-queue-max`` wait per repository too: ``out/dropped.list`` for repo1 (where a single
repository always had it) and ``out/repoN/dropped.list`` for the others.

With one repository nothing is written here and the parent behaves as it always did: its first
failure ends the run.  With several, a failing repository is set aside (:class:`RepoHealth`) and
tried again at a bounded pace while the others go on.

Stdlib only, and no I/O in the pure parts (:func:`plan`, :class:`RepoHealth`, :func:`combined`):
the unit tests drive them with a fake clock.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from typing import NamedTuple

from pgpush import wal
from pgpush.archive import spool
from pgpush.errors import PgPushError

DROPPED_LIST = "dropped.list"


def repo_dir(qdir: str, index: int) -> str:
    """Repository ``index``'s state directory in the push queue: ``out/repoN``."""
    return os.path.join(qdir, f"repo{index}")


def dropped_list(qdir: str, index: int) -> str:
    """Where the holes repository ``index`` has yet to record wait (repo1's where it always was)."""
    if index == 1:
        return os.path.join(qdir, DROPPED_LIST)
    return os.path.join(repo_dir(qdir, index), DROPPED_LIST)


# -- pure logic ------------------------------------------------------------------------------------


def combined(errors: list[PgPushError]) -> PgPushError:
    """One error for several repositories' failures: the first's class and code, a message naming each
    (their messages already start with their repository, :meth:`PgPushError.in_repo`)."""
    if len(errors) == 1:
        return errors[0]
    first = errors[0]
    out = type(first).__new__(type(first))
    PgPushError.__init__(out, "\n".join(e.message for e in errors), first.code)
    return out


def missing(name: str, held: dict[int, set[str]], indexes: Iterable[int]) -> list[int]:
    """The repositories (of ``indexes``) that do not hold ``name`` yet."""
    return [i for i in indexes if name not in held.get(i, ())]


def plan(pending: list[str], held: dict[int, set[str]], indexes: list[int],
         quota: Callable[[int], int | None], busy: set[tuple[str, int]], limit: int) -> list[tuple[str, int]]:
    """The next ``(WAL file, repository)`` pushes, at most ``limit``.

    Each repository's own queue is oldest first (what a repository missed while it was down goes
    to it before newer WAL); the queues are interleaved, so a repository catching up on a long
    outage never holds back the others' newest WAL.  ``quota(i)`` is None for a repository that
    takes all it lacks, else how many it may be given (1: one attempt to see whether it is back,
    0: none now).  Pairs already in ``busy`` are skipped.
    """
    queues: list[list[tuple[str, int]]] = []
    for index in indexes:
        allowed = quota(index)
        if allowed == 0:
            continue
        queue = [(n, index) for n in pending if n not in held.get(index, ()) and (n, index) not in busy]
        queues.append(queue if allowed is None else queue[:allowed])
    out: list[tuple[str, int]] = []
    rank = 0
    while len(out) < limit and any(rank < len(q) for q in queues):
        out.extend(q[rank] for q in queues if rank < len(q))
        rank += 1
    return out[:limit]


class Failure(NamedTuple):
    since: float  # when it failed (last attempt)
    error: PgPushError  # already naming its repository when there are several
    is_global: bool  # the repository, not one file (global.error rather than SEGMENT.error)


class RepoHealth:
    """Which repositories failed, and when each may be tried again.

    A repository that fails (unreachable, or refusing one file) gets nothing more until ``retry``
    seconds after its last attempt; then it is given one file (its oldest missing), and only when
    that succeeds all the rest.  Only one such attempt is out at a time, so a repository that
    stays down costs one worker every ``retry`` seconds and no more.
    """

    def __init__(self, indexes: list[int], retry: float, clock: Callable[[], float] = time.monotonic):
        self.indexes = list(indexes)
        self.retry = retry
        self.clock = clock
        self.failed: dict[int, Failure] = {}
        self.probing: set[int] = set()

    def quota(self, index: int) -> int | None:
        """None: healthy, all it lacks; 1: failed but due for another attempt; 0: not now."""
        failure = self.failed.get(index)
        if failure is None:
            return None
        if index in self.probing or self.clock() - failure.since < self.retry:
            return 0
        return 1

    def take(self, index: int) -> bool:
        """May a push to ``index`` be handed out now?  An attempt at a failed repository is counted."""
        allowed = self.quota(index)
        if allowed is None:
            return True
        if allowed == 0:
            return False
        self.probing.add(index)
        return True

    def fail(self, index: int, error: PgPushError, is_global: bool) -> None:
        self.failed[index] = Failure(self.clock(), error, is_global)
        self.probing.discard(index)

    def succeed(self, index: int) -> bool:
        """Record a success; True when the repository had failed (it is back)."""
        self.probing.discard(index)
        return self.failed.pop(index, None) is not None

    def all_failed(self) -> bool:
        return all(i in self.failed for i in self.indexes)

    def global_error(self) -> PgPushError | None:
        """What ``global.error`` should say: every unreachable repository's error, in priority order."""
        errors = [self.failed[i].error for i in self.indexes if i in self.failed and self.failed[i].is_global]
        return combined(errors) if errors else None


# -- the spool markers -----------------------------------------------------------------------------


class Markers:
    """The ``out/repoN/SEGMENT`` markers of every configured repository (used with several only).

    A marker says which repository holds which file, not only that ``repoN`` holds a file of that
    name: its content is the WAL file's identity in ``pg_wal`` when it was pushed (inode, size,
    modification time) and where the repository is (``identities``: :meth:`pgpush.config.Config.location`).  A marker that does not
    match both (the repositories swapped or replaced in the configuration; a file of the same name
    from a rebuilt cluster whose stanza was recreated) is removed, never taken for a copy: the file
    is pushed again, which costs at most a duplicate.  Each marker found on disk is checked once in
    a parent's life; those it writes itself are known.
    """

    def __init__(self, qdir: str, indexes: list[int], pg_wal: str, identities: dict[int, str]):
        self.qdir = qdir
        self.indexes = list(indexes)
        self.pg_wal = pg_wal
        self.identities = identities
        self.held: dict[int, set[str]] = {i: set() for i in indexes}
        self.known: dict[int, set[str]] = {i: set() for i in indexes}  # checked or written by this process

    def stamp(self, name: str, index: int) -> str:
        """What the marker of ``name`` in repository ``index`` says (empty when the file is gone)."""
        try:
            st = os.stat(os.path.join(self.pg_wal, name))
        except OSError:
            return ""
        return f"{st.st_ino} {st.st_size} {st.st_mtime_ns}\n{self.identities.get(index, '')}\n"

    def _valid(self, path: str, name: str, index: int) -> bool:
        try:
            content = spool.read_status(path)
        except PgPushError:
            return False  # not a file pgpush wrote (a directory, a FIFO): no copy of anything
        expected = self.stamp(name, index)
        return bool(expected) and content == expected

    def load(self, ready: set[str]) -> dict[int, set[str]]:
        """Read the markers, removing those of files no longer ``.ready`` (acknowledged, or gone)
        and those that are not this repository's copy of this file."""
        for index in self.indexes:
            directory = repo_dir(self.qdir, index)
            try:
                names = os.listdir(directory)
            except FileNotFoundError:
                names = []
            held = set()
            known = self.known[index]
            for name in names:
                if not _is_wal_name(name):
                    continue
                path = os.path.join(directory, name)
                if name in ready and (name in known or self._valid(path, name, index)):
                    held.add(name)
                else:
                    _remove(path)
            self.held[index] = held
            self.known[index] = known & held
        return self.held

    def mark(self, name: str, index: int) -> None:
        directory = repo_dir(self.qdir, index)
        if not os.path.isdir(directory):
            spool.make_dir(directory)
        spool.write_atomic(directory, name, self.stamp(name, index).encode())
        self.held[index].add(name)
        self.known[index].add(name)

    def clear(self, name: str) -> None:
        """Forget ``name`` everywhere: it is acknowledged (or dropped)."""
        for index in self.indexes:
            if name in self.held[index]:
                spool.remove(os.path.join(repo_dir(self.qdir, index), name))
                self.held[index].discard(name)
                self.known[index].discard(name)


def _remove(path: str) -> None:
    """Remove a marker, or whatever sits under its name (a directory left empty too)."""
    try:
        os.rmdir(path)
        return
    except OSError:
        pass
    spool.remove(path)


def _is_wal_name(name: str) -> bool:
    try:
        wal.kind(name)
    except PgPushError:
        return False
    return True
