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

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from pgpush.errors import RepoInvalidError

TMP_MARK = ".pgpush.tmp"
CHUNK = 1024 * 1024


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
    if any(p in ("", ".", "..") for p in parts) or TMP_MARK in parts[-1]:
        raise ValueError(f"invalid repository path {name!r}")
    return name


class Storage:
    """Base class; see the module docstring for the contract."""

    description = "repository"

    def list(self, directory: str) -> list[FileInfo]:
        """Files (not directories) directly in ``directory``; empty if it does not exist."""
        raise NotImplementedError

    def list_dirs(self, directory: str) -> list[str]:
        """Names of the subdirectories of ``directory``; empty if it does not exist."""
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

    def read_many(self, files: Iterable[tuple[str, int | None]]) -> Iterator[tuple[str, bytes]]:
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

    def delete_tree(self, directory: str) -> None:
        """Remove ``directory`` and everything below it; missing is not an error."""
        raise NotImplementedError

    def close(self) -> None:
        """Release connections; the object may be used again (it reconnects)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
