"""File-system helpers shared by the spool, the local repository and the WAL a get delivers.

Stdlib only: the spool (and so the per-segment fast path) imports it.
"""

from __future__ import annotations

import os


def fsync_dir(path: str) -> None:
    """fsync a directory, so that a rename or link done in it survives a crash."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
