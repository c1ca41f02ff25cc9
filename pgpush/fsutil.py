"""File-system helpers shared by the spool, the local repository and the WAL a get delivers.

Stdlib only: the spool (and so the per-segment fast path) imports it.
"""

from __future__ import annotations

import os
import sys


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
    archive = getattr(__loader__, "archive", None)  # set when imported from a zip
    if archive:
        return [sys.executable, "-IS", os.path.abspath(archive)]
    return [sys.executable, "-m", "pgpush"]
