"""The parent's process lock: one ``flock`` in the spool, handed from the
foreground to the parent without a gap.

The foreground that finds no parent takes the lock itself, then starts the
parent with the locked descriptor inherited (``PGPUSH_LOCK_FD``): an flock
belongs to the open file description, so the lock is never free between the
decision and the parent's first instruction (pgBackRest releases, then execs,
and a second parent can slip in).  A parent that finds no work releases the
lock and looks once more; if work arrived in between it takes the lock again,
or leaves it to the parent that got there first, so no WAL waits without a
parent.
"""

from __future__ import annotations

import fcntl
import os

from pgpush.errors import OptionInvalidValueError, PathCreateError


def lock_path(stanza_dir: str, direction: str) -> str:
    return os.path.join(stanza_dir, f"archive-{'push' if direction == 'out' else 'get'}.lock")


def try_lock(path: str) -> int | None:
    """Take the exclusive lock without waiting: the fd, or None when held elsewhere."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o640)
    except OSError as exc:
        raise PathCreateError(f"unable to open lock file '{path}': {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def is_locked(path: str) -> bool:
    fd = try_lock(path)
    if fd is None:
        return True
    release(fd)
    return False


def release(fd: int) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def inherited_lock() -> int | None:
    """The lock fd handed over by the foreground, if this process was started with one.

    Only pgpush sets ``PGPUSH_LOCK_FD``; anything but an open regular file above stderr is
    refused (32) rather than trusted: flock-ing and later closing stdin or a socket would
    break this process in ways far from the cause.
    """
    value = os.environ.pop("PGPUSH_LOCK_FD", None)
    if not value:
        return None
    import stat

    try:
        fd = int(value)
        if fd < 3 or not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError
    except (ValueError, OSError):
        raise OptionInvalidValueError(
            f"environment variable PGPUSH_LOCK_FD has invalid value '{value[:40]}': "
            "only pgpush sets it, to the descriptor of a lock file it hands over"
        ) from None
    return fd
