"""Repository on a backup host over SSH/SFTP (paramiko); the host needs only
an SSH account with SFTP.

- Connecting (host keys, keys, timeouts, the transport's tuning for throughput)
  is :mod:`pgpush.storage.sftp_connect`'s; ``repo1-host-timeout`` bounds connect,
  authentication and every I/O, so a frozen host gives an error, never a hang.
- Durable writes: temporary name, every WRITE's status read and checked,
  ``fsync@openssh.com``, the stored size compared with the bytes sent (see
  :mod:`pgpush.storage.sftp_upload`: paramiko's own pipelined writes lose
  the statuses of short files), then the plain SFTP rename, which OpenSSH
  implements with ``link()`` and so never overwrites.  A full backup host
  fails the put with "No space left on device" (103); the temporary file is
  removed.
- A lost connection is reported as transient (103) and dropped; the next call
  opens a new connection, which is how the retry layer
  (:mod:`pgpush.storage.retry`) tries again.
"""

from __future__ import annotations

import errno
import getpass
import os
import posixpath
import socket
import stat
from collections import deque
from collections.abc import Generator, Iterable, Iterator

import paramiko
from paramiko.sftp import (
    CMD_CLOSE,
    CMD_DATA,
    CMD_FSETSTAT,
    CMD_HANDLE,
    CMD_OPEN,
    CMD_READ,
    CMD_STATUS,
    SFTP_EOF,
    SFTP_FLAG_CREATE,
    SFTP_FLAG_EXCL,
    SFTP_FLAG_READ,
    SFTP_FLAG_WRITE,
    SFTP_NO_SUCH_FILE,
    SFTP_PERMISSION_DENIED,
    int64,
)
from paramiko.sftp_attr import SFTPAttributes

from pgpush.config import Config
from pgpush.fsutil import TMP_SUFFIX
from pgpush.storage import sftp_connect, sftp_upload, sftp_wire
from pgpush.storage.base import (
    CHUNK,
    FileInfo,
    Storage,
    StorageError,
    check_name,
    remove_dead_copies,
    tmp_name,
)
from pgpush.storage.sftp_upload import WriteFailed

_CONNECTION_ERRORS = (EOFError, paramiko.SSHException, socket.timeout, ConnectionError, TimeoutError)
READ_MANY_WINDOW = 32  # files in flight on one connection in read_many
READ_MAX = 255 * 1024  # largest read OpenSSH's sftp-server answers in one reply (SFTP_MAX_READ_LENGTH)


class _Pending:
    """One file of :meth:`SftpStorage.read_many` on its way."""

    __slots__ = ("name", "path", "hint", "handle", "offset", "chunks", "done", "error")

    def __init__(self, name: str, path: str, hint: int | None):
        self.name, self.path, self.hint = name, path, hint
        self.handle: bytes | None = None
        self.offset = 0
        self.chunks: list[bytes] = []
        self.done = False
        self.error: BaseException | None = None


class _Replies:
    """Where paramiko hands the replies to our requests (it calls ``_async_response``)."""

    def __init__(self):
        self.got: list[tuple[int, tuple[int, paramiko.Message]]] = []

    def _async_response(self, t: int, msg: paramiko.Message, num: int) -> None:
        self.got.append((num, (t, msg)))

    def take(self) -> list[tuple[int, tuple[int, paramiko.Message]]]:
        got, self.got = self.got, []
        return got


def _status_error(code: int, text: str, name: str) -> OSError:
    if code == SFTP_NO_SUCH_FILE:
        return FileNotFoundError(errno.ENOENT, text or "no such file", name)
    if code == SFTP_PERMISSION_DENIED:
        return PermissionError(errno.EACCES, text or "permission denied", name)
    return OSError(f"{text or 'SFTP error'} (status {code})")


class SftpStorage(Storage):
    def __init__(self, host: str, root: str, port: int = 22, user: str | None = None, key_file: str | None = None,
                 known_hosts: str = "~/.ssh/known_hosts", timeout: float = 30.0, accept_new: bool = False,
                 label: str = "repo1"):
        self.host = host
        self.label = label  # repo1..repo4: error messages name the repository (docs/operations.md)
        self.port = port
        self.user = user or getpass.getuser()
        self.root = root
        self.key_file = key_file
        self.known_hosts = os.path.expanduser(known_hosts)
        self.timeout = timeout
        self.accept_new = accept_new
        self._client: paramiko.SSHClient | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self._io_size = sftp_connect.IO_SIZE_MIN
        self.description = f"{self.user}@{host}:{port}"

    @classmethod
    def from_config(cls, cfg: Config) -> SftpStorage:
        return cls(
            host=cfg.require("repo1-host"),
            root=str(cfg["repo1-path"]),
            port=int(cfg["repo1-host-port"]),
            user=cfg.get("repo1-host-user"),
            key_file=cfg.get("repo1-host-key-file"),
            known_hosts=str(cfg["repo1-host-known-hosts"]),
            timeout=float(cfg["repo1-host-timeout"]),
            accept_new=bool(cfg["repo1-host-accept-new"]),
            label=cfg.repo_label,
        )

    # -- connection -------------------------------------------------------

    def _unreachable(self, reason: str, transient: bool = True) -> StorageError:
        return StorageError(f"unable to find a valid repository:\n{self.label}: {reason} ({self.description})", transient)

    def _connect(self) -> paramiko.SFTPClient:
        if self._sftp is None:
            target = sftp_connect.Target(self.host, self.port, self.user, self.key_file, self.known_hosts,
                                         self.timeout, self.accept_new)
            self._client, self._sftp, self._io_size = sftp_connect.connect(target, self._unreachable)
        return self._sftp

    def close(self) -> None:
        if self._client is not None:
            try:
                self._client.close()
            except Exception:  # noqa: BLE001 - closing a broken connection
                pass
        self._client = self._sftp = None

    def _lost(self, exc: BaseException, what: str) -> StorageError:
        """A connection error mid-operation: drop the connection, report transient."""
        self.close()
        reason = "timeout" if isinstance(exc, (socket.timeout, TimeoutError)) else (str(exc) or type(exc).__name__)
        return self._unreachable(f"connection lost during {what}: {reason}")

    def _path(self, name: str) -> str:
        return posixpath.join(self.root, check_name(name))

    def _dir_path(self, directory: str) -> str:
        return self.root if directory in ("", ".") else self._path(directory)

    def _oserror(self, exc: BaseException, what: str) -> BaseException:
        """Classify an error: missing/existing files pass through, a broken
        connection is transient, anything else (permission, disk full) is not."""
        if isinstance(exc, (FileNotFoundError, FileExistsError)):
            return exc
        transport = self._client.get_transport() if self._client is not None else None
        if isinstance(exc, _CONNECTION_ERRORS) or transport is None or not transport.is_active():
            return self._lost(exc, what)
        return StorageError(f"unable to {what}: {exc} ({self.description})")

    # -- operations -------------------------------------------------------

    def list_dirs(self, directory: str) -> list[str]:  # before ``list``: below it, ``list`` names the method
        sftp = self._connect()
        try:
            entries = sftp.listdir_attr(self._dir_path(directory))
        except FileNotFoundError:
            return []
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise self._oserror(exc, f"list '{directory}'") from None
        return [e.filename for e in entries if stat.S_ISDIR(e.st_mode or 0)]

    def list(self, directory: str) -> list[FileInfo]:
        sftp = self._connect()
        try:
            entries = sftp.listdir_attr(self._dir_path(directory))
        except FileNotFoundError:
            return []
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise self._oserror(exc, f"list '{directory}'") from None
        return [FileInfo(e.filename, e.st_size or 0, e.st_mtime) for e in entries
                if stat.S_ISREG(e.st_mode or 0) and TMP_SUFFIX not in e.filename]

    def info(self, name: str) -> FileInfo | None:
        sftp = self._connect()
        try:
            st = sftp.stat(self._path(name))
        except FileNotFoundError:
            return None
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise self._oserror(exc, f"stat '{name}'") from None
        return FileInfo(name.rsplit("/", 1)[-1], st.st_size or 0)

    def _makedirs(self, sftp: paramiko.SFTPClient, path: str) -> None:
        missing = []
        while True:
            try:
                sftp.stat(path)
                break
            except FileNotFoundError:
                missing.append(path)
                path = posixpath.dirname(path)
                if path in ("", "/"):
                    break
        for directory in reversed(missing):
            try:
                sftp.mkdir(directory, 0o750)
            except OSError:
                try:
                    sftp.stat(directory)
                except FileNotFoundError:
                    raise StorageError(f"unable to create directory '{directory}' ({self.description})") from None

    def remove_leftovers(self, name: str) -> None:
        remove_dead_copies(self._path(name), lambda directory: self._connect().listdir(directory), self._remove_quiet)

    def put(self, name: str, chunks: Iterable[bytes], overwrite: bool = False) -> int:
        final = self._path(name)
        tmp = tmp_name(final)
        sftp = self._connect()
        written = 0
        source = _Source(chunks)
        try:
            self._makedirs(sftp, posixpath.dirname(final))
            if not overwrite:
                try:
                    sftp.stat(final)
                    raise FileExistsError(errno.EEXIST, "file exists", name)
                except FileNotFoundError:
                    pass
            written = self._upload(sftp, tmp, source)
            if overwrite:
                sftp.posix_rename(tmp, final)
            else:
                try:
                    sftp.rename(tmp, final)  # OpenSSH: link(), never overwrites
                except OSError as exc:
                    if not self._exists(sftp, final):
                        raise StorageError(f"unable to rename '{name}' to its final name: {exc} "
                                           f"({self.description})") from None
                    raise FileExistsError(errno.EEXIST, "file exists", name) from None
        except FileExistsError:
            self._remove_quiet(tmp)
            raise
        except WriteFailed as exc:
            free = sftp_upload.free_bytes(sftp, posixpath.dirname(tmp))
            self._remove_quiet(tmp)
            raise StorageError(f"unable to write '{name}': {sftp_upload.explain(str(exc), free)} "
                               f"({self.description})") from None
        except (OSError, EOFError, paramiko.SSHException) as exc:
            err = self._oserror(exc, f"write '{name}'")
            if isinstance(err, FileNotFoundError) and not source.failed:
                # the backup host's "no such file" (OpenSSH answers it for ENOENT and ENOTDIR: a
                # directory removed meanwhile, a file where one should be): the repository is unusable
                err = StorageError(f"unable to write '{name}': {exc} ({self.description})")
            self._remove_quiet(tmp)
            raise err from None
        except BaseException:
            self._remove_quiet(tmp)
            raise
        return written

    @staticmethod
    def _exists(sftp: paramiko.SFTPClient, path: str) -> bool:
        try:
            sftp.stat(path)
        except FileNotFoundError:
            return False
        return True

    def _upload(self, sftp: paramiko.SFTPClient, tmp: str, chunks: Iterable[bytes]) -> int:
        """Write ``tmp`` from ``chunks``, every write acknowledged, fsynced, its size checked
        (see :mod:`pgpush.storage.sftp_upload`); the handle is closed whatever happens, so a
        failed upload's space is freed once the temporary file is removed."""
        attrs = SFTPAttributes()
        attrs.st_mode = 0o640
        flags = SFTP_FLAG_WRITE | SFTP_FLAG_CREATE | SFTP_FLAG_EXCL
        t, msg = sftp_upload.checked_request(sftp, "open", CMD_OPEN, tmp, flags, attrs)
        if t != CMD_HANDLE:
            raise WriteFailed(f"unexpected SFTP reply {t} to open")
        handle = msg.get_binary()
        try:
            sftp_upload.checked_request(sftp, "chmod", CMD_FSETSTAT, handle, attrs)
            written = sftp_upload.write_all(sftp, handle, chunks, self._io_size)
            sftp_upload.fsync_and_check(sftp, handle, written)
        except BaseException:
            self._close_quiet(handle)
            raise
        sftp_upload.close_handle(sftp, handle)
        return written

    def _close_quiet(self, handle: bytes) -> None:
        if self._sftp is None:
            return
        try:
            sftp_wire.request(self._sftp, CMD_CLOSE, handle)
        except Exception:  # noqa: BLE001 - best effort: the upload has failed already
            pass

    def _remove_quiet(self, path: str) -> None:
        if self._sftp is None:
            return
        try:
            self._sftp.remove(path)
        except Exception:  # noqa: BLE001 - best effort cleanup of a temp file
            pass

    def read_chunks(self, name: str) -> Iterator[bytes]:
        sftp = self._connect()
        path = self._path(name)
        try:
            fh = sftp.open(path, "rb")
            fh.MAX_REQUEST_SIZE = self._io_size
            size = fh.stat().st_size or 0
            fh.prefetch(size)
        except FileNotFoundError:
            raise
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise self._oserror(exc, f"read '{name}'") from None
        try:
            while True:
                try:
                    chunk = fh.read(CHUNK)
                except (OSError, EOFError, paramiko.SSHException) as exc:
                    raise self._oserror(exc, f"read '{name}'") from None
                if not chunk:
                    return
                yield chunk
        finally:
            try:
                fh.close()
            except Exception:  # noqa: BLE001
                pass

    def read_many(self, files: Iterable[tuple[str, int | None]]) -> Generator[tuple[str, bytes], None, None]:
        """Many small files on one connection, ``READ_MANY_WINDOW`` of them in flight at a time.

        One file costs four requests (open, read, read at the end, close) and
        the size hint saves the third: a read asked for ``hint + 1`` bytes that
        is answered short, at or past the hint, is the end of the file (OpenSSH
        answers short only there).  Without pipelining every request is a round
        trip (about 0.3 ms here, and a delayed-ACK stall of 40 ms now and then);
        with it the round trips of the next files overlap the caller's work on
        this one: paramiko's transport thread keeps receiving while we yield.
        A failure leaves requests outstanding, so it drops the connection (the
        next call opens a new one) rather than leave answers or handles behind.
        """
        sftp = self._connect()
        todo = iter(files)
        window: deque[_Pending] = deque()
        sent: dict[int, tuple[_Pending, int, int]] = {}  # request number -> (file, request type, read length)
        replies = _Replies()
        clean = False

        def request(f: _Pending, t: int, *args, length: int = 0) -> None:
            sent[sftp_wire.send(sftp, replies, t, *args)] = (f, t, length)

        def read_next(f: _Pending) -> None:
            # up to one byte past the hint (a short answer then ends the file); past it, as much as allowed
            want = READ_MAX if f.hint is None or f.offset > f.hint else min(READ_MAX, f.hint + 1 - f.offset)
            request(f, CMD_READ, f.handle, int64(f.offset), want, length=want)

        def finish(f: _Pending) -> None:
            f.done = True
            if f.handle is not None:
                request(f, CMD_CLOSE, f.handle)
                f.handle = None

        def answer(f: _Pending, t: int, asked: int, msg) -> None:
            if f.done:
                return
            if t == CMD_HANDLE:
                f.handle = msg.get_binary()
                read_next(f)
            elif t == CMD_DATA:
                data = msg.get_binary()
                f.chunks.append(data)
                f.offset += len(data)
                if not data or (len(data) < asked and f.hint is not None and f.offset >= f.hint):
                    finish(f)
                else:
                    read_next(f)
            elif t == CMD_STATUS:
                code, text = msg.get_int(), msg.get_text()
                if code != SFTP_EOF or f.handle is None:
                    f.error = _status_error(code, text, f.name)
                finish(f)
            else:
                f.error = StorageError(f"unable to read '{f.name}': unexpected SFTP reply {t} ({self.description})")
                finish(f)

        try:
            while True:
                while len(window) < READ_MANY_WINDOW:
                    item = next(todo, None)
                    if item is None:
                        break
                    f = _Pending(item[0], self._path(item[0]), item[1])
                    request(f, CMD_OPEN, f.path, SFTP_FLAG_READ, SFTPAttributes())
                    window.append(f)
                if window and window[0].done:
                    f = window.popleft()
                    if f.error is not None:
                        raise f.error if isinstance(f.error, (FileNotFoundError, StorageError)) \
                            else self._oserror(f.error, f"read '{f.name}'")
                    yield f.name, b"".join(f.chunks)
                    continue
                if not sent:
                    break  # every file answered and every handle closed
                sftp_wire.receive_one(sftp)  # one reply (possibly for a close) into ``replies``
                for num, (t, msg) in replies.take():
                    f, _kind, asked = sent.pop(num)
                    answer(f, t, asked, msg)
            clean = True
        except FileNotFoundError:
            raise
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise self._oserror(exc, f"read '{window[0].name}'" if window else "read files") from None
        finally:
            if not clean:
                self.close()

    def delete(self, name: str) -> None:
        sftp = self._connect()
        try:
            sftp.remove(self._path(name))
        except FileNotFoundError:
            pass
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise self._oserror(exc, f"delete '{name}'") from None

    def delete_tree(self, directory: str) -> None:
        sftp = self._connect()
        path = self._path(directory)
        try:
            self._rmtree(sftp, path)
        except FileNotFoundError:
            pass
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise self._oserror(exc, f"delete '{directory}'") from None

    def _rmtree(self, sftp: paramiko.SFTPClient, path: str) -> None:
        for entry in sftp.listdir_attr(path):
            child = posixpath.join(path, entry.filename)
            if stat.S_ISDIR(entry.st_mode or 0):
                self._rmtree(sftp, child)
            else:
                sftp.remove(child)
        sftp.rmdir(path)


class _Source:
    """The caller's chunks, noting whether reading them failed: a missing *source* file (a relation
    dropped while a backup copies it) passes through as FileNotFoundError, the backup host's does not."""

    def __init__(self, chunks: Iterable[bytes]):
        self.chunks = chunks
        self.failed = False

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self.chunks
        except Exception:  # not GeneratorExit: an upload abandoned by the backup host's error is not the source's
            self.failed = True
            raise
