"""The storage interface every backend implements (posix, sftp, s3).

Names are relative, ``/``-separated paths below the repository root; they are
validated once here (no absolute paths, no ``..``, the temporary suffix is
reserved).  Error contract of every method:

- a missing file raises :class:`FileNotFoundError`;
- ``put`` without ``overwrite`` on an existing name raises :class:`FileExistsError`
  and leaves the existing file untouched;
- anything that makes the repository unusable (connection refused or lost,
  timeout, permission denied, disk full) raises
  :class:`~pgpush.errors.RepoInvalidError` (103); ``transient`` on it says
  whether retrying on a new connection may help.

``put`` is durable when it returns: the content is written under a temporary
name, flushed to stable storage, then renamed (never over an existing file
unless ``overwrite``).  ``list`` never shows temporary files.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import socket
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass

from pgpush.errors import RepoInvalidError
from pgpush.fsutil import TMP_SUFFIX

CHUNK = 1024 * 1024


def _process_space() -> str:
    """Who can tell whether a process id is alive: this host, this boot, this pid namespace."""
    parts = [socket.gethostname()]
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as fh:
            parts.append(fh.read().strip())
        parts.append(os.readlink("/proc/self/ns/pid"))
    except (OSError, ValueError):
        parts.append(f"?{os.getpid()}")  # unknown: a space of our own, so nothing is ever taken for dead
    return hashlib.sha1(" ".join(parts).encode()).hexdigest()[:8]


PROCESS_SPACE = _process_space()


def tmp_name(final: str) -> str:
    """The temporary name ``put`` writes ``final`` under before renaming it.

    It carries the writer's process id and the process space that id belongs to, so that a
    later ``put`` of the same name can tell a file left by a writer that was killed mid-file
    (SIGKILL past ``protocol-timeout``, the OOM killer: no clean-up runs) from one still being
    written (see :func:`left_by_dead_writer`).
    """
    return f"{final}{TMP_SUFFIX}.{PROCESS_SPACE}-{os.getpid()}.{os.urandom(3).hex()}"


def left_by_dead_writer(entry: str, final_base: str) -> bool:
    """Is ``entry`` (a file name in ``final_base``'s directory) a temporary copy of ``final_base``
    whose writer, a process of this same process space, is gone?

    Only then is removing it safe: a writer on another host, or one still alive, is never
    touched (a leftover of theirs stays until their own next ``put`` of the name).
    """
    prefix = f"{final_base}{TMP_SUFFIX}.{PROCESS_SPACE}-"
    if not entry.startswith(prefix):
        return False
    pid = entry[len(prefix):].split(".", 1)[0]
    if not pid.isdigit():
        return False
    if int(pid) == os.getpid():  # one put at a time per process: ours is an earlier, failed one
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:  # alive, owned by another user
        return False
    return False


def remove_dead_copies(final: str, listdir: Callable[[str], list[str]], unlink: Callable[[str], None]) -> None:
    """:meth:`Storage.remove_leftovers` for a backend whose temporary files are visible (posix, sftp).

    ``final`` is the backend's own ``/``-separated path of the name; ``listdir`` gives every raw
    name in a directory (temporary ones too), ``unlink`` removes one path and never raises.  The
    policy (which entries are dead writers' copies, see :func:`left_by_dead_writer`) is here once;
    the backends only say how to list and remove.  Best effort: a directory that cannot be
    listed leaves everything as it is.
    """
    directory, base = posixpath.split(final)
    try:
        entries = listdir(directory)
    except Exception:  # noqa: BLE001 - best effort (a lost connection, a missing directory)
        return
    for entry in entries:
        if left_by_dead_writer(entry, base):
            unlink(posixpath.join(directory, entry))


class StorageError(RepoInvalidError):
    """The repository cannot be reached or used."""

    def __init__(self, message: str, transient: bool = False):
        super().__init__(message)
        self.transient = transient


@dataclass(frozen=True)
class FileInfo:
    name: str
    size: int
    mtime: float | None = None  # seconds since the epoch, when the backend reports it (list)


def check_name(name: str) -> str:
    """Refuse names that could escape the repository or collide with temp files."""
    if not name or name.startswith("/") or "\\" in name or "\0" in name:
        raise ValueError(f"invalid repository path {name!r}")
    parts = name.split("/")
    if any(p in ("", ".", "..") for p in parts) or TMP_SUFFIX in parts[-1]:
        raise ValueError(f"invalid repository path {name!r}")
    return name


class Storage:
    """Base class; see the module docstring for the contract."""

    description = "repository"

    def list_dirs(self, directory: str) -> list[str]:  # before ``list``: below it, ``list`` names the method
        """Names of the subdirectories of ``directory``; empty if it does not exist."""
        raise NotImplementedError

    def list(self, directory: str) -> list[FileInfo]:
        """Files (not directories) directly in ``directory``; empty if it does not exist."""
        raise NotImplementedError

    def info(self, name: str) -> FileInfo | None:
        """Size of ``name``, or None when it does not exist."""
        raise NotImplementedError

    def put(self, name: str, chunks: Iterable[bytes], overwrite: bool = False) -> int:
        """Write ``name`` durably from ``chunks``; return the bytes written."""
        raise NotImplementedError

    def read_chunks(self, name: str) -> Iterator[bytes]:
        """The content of ``name`` in chunks (FileNotFoundError when missing)."""
        raise NotImplementedError

    def read(self, name: str) -> bytes:
        return b"".join(self.read_chunks(name))

    def read_many(self, files: Iterable[tuple[str, int | None]]) -> Generator[tuple[str, bytes], None, None]:
        """``(name, content)`` of each ``(name, size hint)`` in ``files``, in their order, for many small files.

        A missing file raises FileNotFoundError (its ``filename`` is the name)
        when its turn comes.  The hint is the size the caller expects; the
        content is returned as the backend has it.  Backends with a round trip
        per request (sftp) override this to keep many files in flight; this
        default reads them one by one.
        """
        for name, _hint in files:
            try:
                data = self.read(name)
            except FileNotFoundError as exc:
                raise FileNotFoundError(exc.errno, exc.strerror or "no such file", name) from None
            yield name, data

    def delete(self, name: str) -> None:
        """Remove ``name``; a missing file is not an error."""
        raise NotImplementedError

    def delete_once(self, name: str) -> None:
        """:meth:`delete` tried once, even under the retry layer (:mod:`pgpush.storage.retry`).

        Repeating a delete whose answer was lost is safe only for a name nobody writes again
        meanwhile.  A lock is written again at once by its next holder: its owner looks at it
        again before each try (:mod:`pgpush.repo.catalog_lock`).
        """
        self.delete(name)

    def remove_leftovers(self, name: str) -> None:
        """Remove the temporary copies of ``name`` that writers killed mid-file left behind.

        A killed writer's temporary file is never listed and never renamed: without this, every
        retry of a push whose worker is killed (a ``protocol-timeout`` shorter than one transfer)
        would leave one more segment's worth of space taken on the backup host, until it is full.
        Best effort: a failure here never fails the caller.  Backends without visible temporary
        files (S3 uploads a whole object or none) have nothing to do.
        """

    def delete_tree(self, directory: str) -> None:
        """Remove ``directory`` and everything below it; missing is not an error."""
        raise NotImplementedError

    def close(self) -> None:
        """Release connections; the object may be used again (it reconnects)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
