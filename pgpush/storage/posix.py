"""Repository in a local directory (or an NFS mount).

Durable writes: temporary file, fsync, a check that the file holds every
byte written, ``link()`` to the final name (which fails instead of
overwriting), unlink of the temporary name, fsync of the directory.  A full
file system (ENOSPC) fails the write with the OS's words and removes the
temporary file.  Files are 0640 and directories 0750: WAL is not
world-readable.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterable, Iterator

from pgpush.fsutil import TMP_SUFFIX, fsync_dir
from pgpush.storage.base import (
    CHUNK,
    FileInfo,
    Storage,
    StorageError,
    check_name,
    remove_dead_copies,
    tmp_name,
)


class PosixStorage(Storage):
    def __init__(self, root: str):
        self.root = os.path.abspath(root)
        self.description = f"posix:{self.root}"

    def _path(self, name: str) -> str:
        return os.path.join(self.root, check_name(name))

    def _fail(self, exc: OSError, what: str) -> StorageError:
        return StorageError(f"unable to {what}: [Errno {exc.errno}] {exc.strerror} ({self.description})")

    def _makedirs(self, path: str) -> None:
        missing = []
        while not os.path.isdir(path):
            missing.append(path)
            path = os.path.dirname(path)
        for directory in reversed(missing):
            try:
                os.mkdir(directory, 0o750)
            except FileExistsError:
                continue
            fsync_dir(os.path.dirname(directory))

    def list_dirs(self, directory: str) -> list[str]:  # before ``list``: below it, ``list`` names the method
        path = self.root if directory in ("", ".") else self._path(directory)
        try:
            with os.scandir(path) as it:
                return [e.name for e in it if e.is_dir(follow_symlinks=False)]
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise self._fail(exc, f"list '{path}'") from None

    def list(self, directory: str) -> list[FileInfo]:
        path = self.root if directory in ("", ".") else self._path(directory)
        out = []
        try:
            with os.scandir(path) as it:
                for entry in it:
                    if TMP_SUFFIX in entry.name or not entry.is_file(follow_symlinks=False):
                        continue
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:  # removed since the scan saw it: skip it, not the whole listing
                        continue
                    out.append(FileInfo(entry.name, st.st_size, st.st_mtime))
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise self._fail(exc, f"list '{path}'") from None
        return out

    def info(self, name: str) -> FileInfo | None:
        try:
            st = os.stat(self._path(name))
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise self._fail(exc, f"stat '{name}'") from None
        return FileInfo(name.rsplit("/", 1)[-1], st.st_size)

    def remove_leftovers(self, name: str) -> None:
        remove_dead_copies(self._path(name), os.listdir, _unlink_quiet)

    def put(self, name: str, chunks: Iterable[bytes], overwrite: bool = False) -> int:
        final = self._path(name)
        directory = os.path.dirname(final)
        tmp = tmp_name(final)
        written = 0
        try:
            self._makedirs(directory)
            if not overwrite and os.path.exists(final):
                raise FileExistsError(errno.EEXIST, "file exists", name)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
            try:
                for chunk in chunks:
                    view = memoryview(chunk)
                    while view:
                        n = os.write(fd, view)
                        view = view[n:]
                        written += n
                os.fsync(fd)
                stored = os.fstat(fd).st_size
                if stored != written:  # a file system that lost writes without an error (NFS, FUSE)
                    raise StorageError(f"unable to write '{name}': {stored} bytes stored of the {written} "
                                       f"written ({self.description})")
            finally:
                os.close(fd)
            if overwrite:
                os.replace(tmp, final)
            else:
                os.link(tmp, final)  # EEXIST instead of overwriting
                os.unlink(tmp)
            fsync_dir(directory)
        except FileExistsError:
            _unlink_quiet(tmp)
            raise
        except OSError as exc:
            _unlink_quiet(tmp)
            raise self._fail(exc, f"write '{name}'") from None
        except BaseException:
            _unlink_quiet(tmp)
            raise
        return written

    def read_chunks(self, name: str) -> Iterator[bytes]:
        path = self._path(name)
        try:
            fh = open(path, "rb")
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise self._fail(exc, f"read '{name}'") from None
        with fh:
            while True:
                try:
                    chunk = fh.read(CHUNK)
                except OSError as exc:
                    raise self._fail(exc, f"read '{name}'") from None
                if not chunk:
                    return
                yield chunk

    def delete(self, name: str) -> None:
        try:
            os.unlink(self._path(name))
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise self._fail(exc, f"delete '{name}'") from None

    def delete_tree(self, directory: str) -> None:
        try:
            shutil.rmtree(self._path(directory))
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise self._fail(exc, f"delete '{directory}'") from None


def _unlink_quiet(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
