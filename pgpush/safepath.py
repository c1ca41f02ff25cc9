"""Paths a repository names, checked and opened so that they can never lead outside their root.

A manifest is written by whoever can write the repository (the backup host,
the bucket): a restore must treat its names as hostile.  Two rules:

- a name is a clean relative path: non-empty parts, no ``.``/``..``, no NUL,
  nothing absolute (:func:`clean_parts`, checked before anything is written);
- it is opened component by component from an open root directory, never
  following a symbolic link (``O_NOFOLLOW`` on every part): a link planted in
  the data directory (``--delta`` keeps what is there) is refused, not
  followed out of it (:func:`open_dir`, :func:`open_file`).

Standard library only: restore workers import it.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence

NAME_MAX = 255  # bytes in one path component (Linux): longer names fail at open, refuse them up front
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafePath(ValueError):
    """A name that is not a clean relative path, or a symbolic link met where a directory must be."""


def clean_parts(name: object) -> list[str]:
    """The parts of a clean relative path (``a/b/c``), or :class:`UnsafePath` saying what is wrong."""
    if not isinstance(name, str) or not name:
        raise UnsafePath(f"{name!r} is not a non-empty string")
    if "\0" in name:
        raise UnsafePath(f"{name!r} holds a NUL byte")
    if name.startswith("/"):
        raise UnsafePath(f"'{name}' is absolute")
    parts = name.split("/")
    for part in parts:
        if part in ("", ".", ".."):
            raise UnsafePath(f"'{name}' has an empty, '.' or '..' part")
        try:
            size = len(part.encode("utf-8", "surrogateescape"))
        except UnicodeEncodeError:
            raise UnsafePath(f"{name!r} is not encodable as a file name") from None
        if size > NAME_MAX:
            raise UnsafePath(f"'{name[:80]}...' has a part longer than {NAME_MAX} bytes")
    return parts


def clean_absolute(path: object) -> str:
    """A clean absolute path (a tablespace location): ``/`` then clean parts; no line break
    (``tablespace_map`` holds one path per line)."""
    if not isinstance(path, str) or not path.startswith("/") or path == "/":
        raise UnsafePath(f"{path!r} is not an absolute path below '/'")
    if "\n" in path or "\r" in path:
        raise UnsafePath(f"{path!r} holds a line break")
    clean_parts(path[1:])
    return path


def inside(path: str, root: str) -> bool:
    """Is ``path`` ``root`` or below it (both absolute and clean)?"""
    return path == root or path.startswith(root.rstrip("/") + "/")


def open_dir(root: str, parts: Sequence[str], create_mode: int | None = None) -> int:
    """An fd of ``root/parts...``, each part opened without following a link (created with
    ``create_mode`` first when given and missing).  ``root`` itself is the operator's and may be a link."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parts:
            if create_mode is not None:
                try:
                    os.mkdir(part, create_mode, dir_fd=fd)
                except FileExistsError:
                    pass
            child = _open_child_dir(fd, part, root, parts)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def _is_link(dir_fd: int, name: str) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def _open_child_dir(fd: int, part: str, root: str, parts: Sequence[str]) -> int:
    try:
        return os.open(part, DIR_FLAGS, dir_fd=fd)
    except OSError as exc:
        if _is_link(fd, part):
            raise UnsafePath(f"'{os.path.join(root, *parts)}' goes through a symbolic link ('{part}'): "
                             "not followed") from None
        raise OSError(exc.errno, exc.strerror, os.path.join(root, *parts)) from None


def open_file(root: str, parts: Sequence[str], flags: int, mode: int = 0o600) -> int:
    """Open ``root/parts...`` with ``flags | O_NOFOLLOW``: neither a directory on the way nor
    the file itself may be a symbolic link."""
    dfd = open_dir(root, parts[:-1])
    try:
        return os.open(parts[-1], flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dfd)
    except OSError as exc:
        if _is_link(dfd, parts[-1]):
            raise UnsafePath(f"'{os.path.join(root, *parts)}' is a symbolic link: not followed") from None
        raise OSError(exc.errno, exc.strerror, os.path.join(root, *parts)) from None
    finally:
        os.close(dfd)


def lstat(root: str, parts: Sequence[str]) -> os.stat_result | None:
    """``lstat`` of ``root/parts...`` reached without following links (UnsafePath through one); None when
    it does not exist."""
    try:
        dfd = open_dir(root, parts[:-1])
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        return os.stat(parts[-1], dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    finally:
        os.close(dfd)
