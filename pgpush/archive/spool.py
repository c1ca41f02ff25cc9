"""Spool paths and status files (docs/architecture.md, "Asynchronous push and get"), written atomically.

``SPOOL/archive/STANZA/out/`` holds the push status files, ``in/`` the
prefetched WAL.  Status files: ``SEGMENT.ok`` (empty, or ``0`` and a
warning), ``SEGMENT.error`` and ``global.error`` (a code, then the message).
Stdlib only: the hot path reads these.
"""

from __future__ import annotations

import os

from pgpush import fsutil
from pgpush.errors import FormatError, PathCreateError, PgPushError

GLOBAL_ERROR = "global.error"


def stanza_dir(spool_path: str, stanza: str) -> str:
    return os.path.join(spool_path, "archive", stanza)


def queue_dir(spool_path: str, stanza: str, direction: str) -> str:
    """Create (0750, parents too) and return ``SPOOL/archive/STANZA/{out,in}``."""
    path = os.path.join(stanza_dir(spool_path, stanza), direction)
    try:
        fsutil.makedirs_private(path)
        if not os.access(path, os.W_OK | os.X_OK):
            raise PermissionError(13, "Permission denied (not writable)", path)
    except OSError as exc:
        raise PathCreateError(f"unable to create spool path '{path}': {exc.strerror}") from None
    return path


def make_dir(path: str) -> None:
    """Create a directory inside the spool (0750), e.g. a repository's ``out/repoN``; 47 on failure."""
    try:
        fsutil.makedirs_private(path)
    except OSError as exc:
        raise PathCreateError(f"unable to create spool path '{path}': {exc.strerror}") from None


def write_atomic(directory: str, name: str, content: bytes = b"", fsync: bool = False) -> None:
    """Write ``name`` through :func:`pgpush.fsutil.write_atomic`, so readers never see half a file.

    Not durable unless ``fsync``: a status file lost in a crash only makes the foreground ask
    again (a push is redone and found already archived, a get is fetched again), so a sync per
    WAL file would cost every segment for nothing.  What must survive a crash (the record of
    dropped WAL, which nothing else holds) asks for ``fsync``: the file synced before the
    rename and the directory after.  A failure is the spool's error (047), and leaves no
    temporary file behind to fill a full spool further at every retry.
    """
    path = os.path.join(directory, name)
    try:
        fsutil.write_atomic(path, content, 0o640, durable=fsync)
    except OSError as exc:
        raise PathCreateError(f"unable to write spool file '{path}': {exc.strerror}") from None


def write_ok(directory: str, name: str, warning: str | None = None) -> None:
    write_atomic(directory, name + ".ok", f"0\n{warning}".encode() if warning else b"")


def write_error(directory: str, name: str | None, exc: PgPushError) -> None:
    """``name`` is a WAL file name, or None for ``global.error``."""
    target = GLOBAL_ERROR if name is None else name + ".error"
    write_atomic(directory, target, f"{exc.code}\n{exc.message}".encode())


# pgpush writes status files of a code and one message; anything larger was not written by it.
STATUS_MAX = 64 * 1024


def read_status(path: str) -> str | None:
    """Content of a status file, or None when it does not exist.

    Opened non-blocking and checked with fstat, and read up to :data:`STATUS_MAX`: a FIFO or a
    link to a device in the spool must be refused (029), not waited on or read for ever.
    """
    import stat

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise PathCreateError(f"unable to read spool file '{path}': {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise FormatError(f"status file '{path}' is a directory, not a file")
        if not stat.S_ISREG(st.st_mode) or st.st_size > STATUS_MAX:
            raise FormatError(f"status file '{path}' is not a regular file of at most {STATUS_MAX} bytes")
        return os.read(fd, STATUS_MAX + 1)[:STATUS_MAX].decode("utf-8", "replace")
    except OSError as exc:
        raise PathCreateError(f"unable to read spool file '{path}': {exc.strerror}") from None
    finally:
        os.close(fd)


def remove(path: str) -> None:
    """Remove a spool file; gone already is fine, any other failure is a spool error (47)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise PathCreateError(f"unable to remove spool file '{path}': {exc.strerror}") from None


def ok_warning(content: str) -> str | None:
    """The warning carried by a ``.ok`` file (``0`` then the text), if any."""
    if not content.strip():
        return None
    code, _, message = content.partition("\n")
    return message.strip() or None
