"""File-system helpers shared by the spool, the local repository and the WAL a get delivers.

Stdlib only: the spool (and so the per-segment fast path) imports it.
"""

from __future__ import annotations

import contextlib
import os
import sys

# The one suffix of a file being written, in the spool, the data directory and every
# repository: a name that ends with it is never a finished file (readers skip it, and
# leftovers of killed writers are recognised by it).
TMP_SUFFIX = ".pgpush.tmp"


def fsync_dir(path: str) -> None:
    """fsync a directory, so that a rename or link done in it survives a crash."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def makedirs_private(path: str, mode: int = 0o750) -> None:
    """``os.makedirs`` that gives ``mode`` to every directory it creates, not only the last.

    ``os.makedirs`` creates the parents with the umask's mode (0755): the spool and log
    directories hold WAL names and errors that others have no business reading.  Existing
    directories are left as they are.  Raises OSError.
    """
    missing = []
    head = os.path.abspath(path)
    while not os.path.isdir(head):
        missing.append(head)
        parent = os.path.dirname(head)
        if parent == head:
            break
        head = parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, mode)
        except FileExistsError:
            if not os.path.isdir(directory):
                raise


def self_command() -> list[str]:
    """How to start this same pgpush again: the zipapp (whatever its file name), or ``python -m pgpush``."""
    archive = getattr(globals().get("__loader__"), "archive", None)  # a zipimporter's: set when run from a zip
    if archive:
        return [sys.executable, "-IS", os.path.abspath(archive)]
    return [sys.executable, "-m", "pgpush"]


def create_temporary(path: str, mode: int = 0o600) -> int:
    """Create ``path`` + :data:`TMP_SUFFIX` afresh and return its descriptor, open for writing.

    Whatever is there (a killed writer's leftover, a planted link) is removed first and the
    file created with ``O_EXCL|O_NOFOLLOW``: a link is replaced, never written through.  The
    caller streams into it, then renames it over ``path`` (and removes it on failure).
    """
    tmp = path + TMP_SUFFIX
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)


def write_atomic(path: str, content: bytes, mode: int = 0o600, *, durable: bool = True,
                 owner: tuple[int, int] | None = None) -> None:
    """Replace ``path`` with ``content`` so that a reader sees the old file or the new one, whole.

    The content goes to ``path`` + :data:`TMP_SUFFIX`, created afresh (``O_EXCL|O_NOFOLLOW``
    after removing whatever was there: a planted link is replaced, never written through), with
    ``mode`` (and ``owner``, uid and gid) set before the rename.  ``durable``: the file is synced
    before the rename and the directory after, so the new content survives a crash once this
    returns.  On failure the temporary file is removed (a full disk must not keep half files,
    one more at every retry) and the OSError propagates for the caller to give it its code.
    """
    tmp = path + TMP_SUFFIX
    try:
        fd = create_temporary(path, mode)
        try:
            view = memoryview(content)
            while view:
                view = view[os.write(fd, view):]
            os.fchmod(fd, mode)  # the umask narrowed it at creation
            if owner is not None:
                os.fchown(fd, owner[0], owner[1])
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(os.path.dirname(os.path.abspath(path)))


def sha1_file(path: str, chunk: int = 1024 * 1024) -> str:
    """The SHA-1 of a file's content (hex): how the repository names and checks WAL and backup files."""
    import hashlib  # here, not at the top: the fast path imports fsutil and never hashes

    digest = hashlib.sha1()
    with open(path, "rb") as fh:
        while True:
            block = fh.read(chunk)
            if not block:
                return digest.hexdigest()
            digest.update(block)
