"""Repository on a backup host over SSH/SFTP (paramiko); the host needs only
an SSH account with SFTP.

- Host keys are checked against ``repo1-host-known-hosts``; an unknown or
  changed key is refused unless ``repo1-host-accept-new`` allows trust on
  first use (a *changed* key is refused always).
- ``repo1-host-timeout`` bounds connect, authentication and every I/O, so a
  frozen host gives an error, never a hang.
- Durable writes: temporary name, every WRITE's status read and checked,
  ``fsync@openssh.com``, the stored size compared with the bytes sent (see
  :mod:`pgpush.storage.sftp_upload`: paramiko's own pipelined writes lose
  the statuses of short files), then the plain SFTP rename, which OpenSSH
  implements with ``link()`` and so never overwrites.  A full backup host
  fails the put with "No space left on device" (103); the temporary file is
  removed.
- A lost connection is reported as transient (103); the next call opens a
  new connection, so a caller's retry works without special code.
- Throughput: paramiko does its SSH packet work in Python, so the cost is per
  packet.  The connection prefers AES-GCM (one AEAD pass instead of AES-CTR plus
  a separate HMAC, and cheap for sshd too), a 16 MiB window and 128 KiB
  packets, and SFTP reads and writes of up to 127 KiB when the server's
  ``limits@openssh.com`` allows them (32 KiB, the protocol's minimum,
  otherwise).  Measured here: a 16 MB file moves in about half the time of
  paramiko's defaults.
"""

from __future__ import annotations

import errno
import getpass
import logging
import os
import posixpath
import socket
import stat
import struct
from collections import deque
from collections.abc import Iterable, Iterator

import paramiko
from paramiko.sftp import (
    CMD_CLOSE,
    CMD_DATA,
    CMD_EXTENDED,
    CMD_EXTENDED_REPLY,
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

from pgpush.fsutil import TMP_SUFFIX
from pgpush.log import LOG
from pgpush.storage import sftp_upload
from pgpush.storage.base import (
    CHUNK,
    FileInfo,
    Storage,
    StorageError,
    check_name,
    left_by_dead_writer,
    tmp_name,
)
from pgpush.storage.sftp_upload import WriteFailed

_CONNECTION_ERRORS = (EOFError, paramiko.SSHException, socket.timeout, ConnectionError, TimeoutError)
DEFAULT_KEYS = ("id_ed25519", "id_ecdsa", "id_rsa")
PREFERRED_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")
WINDOW_SIZE = 16 << 20
MAX_PACKET_SIZE = 128 << 10
IO_SIZE_MAX = 127 << 10  # an SFTP read/write request plus its header fits one 128 KiB packet
IO_SIZE_MIN = 32 << 10  # what every SFTP server must accept


class _ParamikoToLog(logging.Handler):
    """paramiko logs its transport thread's failures (a banner that never came, a traceback)
    through :mod:`logging`; with no handler Python prints them raw on stderr, which is the log
    file of a parent or worker and PostgreSQL's log for a foreground call.  They become debug
    lines of our own log instead: the error that matters is reported by us, with its code."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            LOG.debug(f"paramiko: {record.getMessage()}")
        except Exception:  # noqa: BLE001 - logging must never break a transfer
            pass


_paramiko_log = logging.getLogger("paramiko")
_paramiko_log.addHandler(_ParamikoToLog())
_paramiko_log.propagate = False


def _transport(sock, disabled_algorithms=None) -> paramiko.Transport:
    """A transport that prefers AES-GCM and big windows and packets (see the module docstring)."""
    transport = paramiko.Transport(sock, disabled_algorithms=disabled_algorithms,
                                   default_window_size=WINDOW_SIZE, default_max_packet_size=MAX_PACKET_SIZE)
    options = transport.get_security_options()
    offered = options.ciphers
    options.ciphers = tuple(c for c in PREFERRED_CIPHERS if c in offered) + tuple(
        c for c in offered if c not in PREFERRED_CIPHERS)
    return transport


def _io_size(sftp: paramiko.SFTPClient) -> int:
    """The largest read/write request the server takes, up to IO_SIZE_MAX (``limits@openssh.com``)."""
    try:
        kind, msg = sftp._request(CMD_EXTENDED, "limits@openssh.com")
        if kind != CMD_EXTENDED_REPLY or len(msg.asbytes()) - msg.packet.tell() < 32:  # four uint64
            return IO_SIZE_MIN
        msg.get_int64()  # max packet length
        read_len, write_len = msg.get_int64(), msg.get_int64()
    except (OSError, paramiko.SSHException, EOFError, struct.error):
        return IO_SIZE_MIN
    if not read_len or not write_len:  # 0: not announced; OpenSSH's own client then keeps 32 KiB too
        return IO_SIZE_MIN
    return max(IO_SIZE_MIN, min(IO_SIZE_MAX, read_len, write_len))
READ_MANY_WINDOW = 32  # files in flight on one connection in read_many
READ_MAX = 255 * 1024  # largest read OpenSSH's sftp-server answers in one reply (SFTP_MAX_READ_LENGTH)


class _AcceptNewPolicy(paramiko.MissingHostKeyPolicy):
    """Trust on first use: record an unknown key in known_hosts (``repo1-host-accept-new``)."""

    def __init__(self, path: str):
        self.path = path

    def missing_host_key(self, client, hostname, key):
        os.makedirs(os.path.dirname(self.path) or ".", mode=0o700, exist_ok=True)
        entry = f"{hostname} {key.get_name()} {key.get_base64()}\n"
        with open(self.path, "a", encoding="ascii") as fh:
            fh.write(entry)
        client.get_host_keys().add(hostname, key.get_name(), key)


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
                 known_hosts: str = "~/.ssh/known_hosts", timeout: float = 30.0, accept_new: bool = False):
        self.host = host
        self.port = port
        self.user = user or getpass.getuser()
        self.root = root
        self.key_file = key_file
        self.known_hosts = os.path.expanduser(known_hosts)
        self.timeout = timeout
        self.accept_new = accept_new
        self._client: paramiko.SSHClient | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self._io_size = IO_SIZE_MIN
        self.description = f"{self.user}@{host}:{port}"

    @classmethod
    def from_config(cls, cfg) -> SftpStorage:
        return cls(
            host=cfg.require("repo1-host"),
            root=str(cfg["repo1-path"]),
            port=int(cfg["repo1-host-port"]),
            user=cfg.get("repo1-host-user"),
            key_file=cfg.get("repo1-host-key-file"),
            known_hosts=str(cfg["repo1-host-known-hosts"]),
            timeout=float(cfg["repo1-host-timeout"]),
            accept_new=bool(cfg["repo1-host-accept-new"]),
        )

    # -- connection -------------------------------------------------------

    def _unreachable(self, reason: str, transient: bool = True) -> StorageError:
        return StorageError(f"unable to find a valid repository:\nrepo1: {reason} ({self.description})", transient)

    def _key_files(self) -> list[str]:
        if self.key_file:
            return [os.path.expanduser(self.key_file)]
        home = os.path.expanduser("~/.ssh")
        return [p for p in (os.path.join(home, k) for k in DEFAULT_KEYS) if os.path.exists(p)]

    def _connect(self) -> paramiko.SFTPClient:
        if self._sftp is not None:
            return self._sftp
        client = paramiko.SSHClient()
        try:
            client.load_host_keys(self.known_hosts)
        except FileNotFoundError:
            if not self.accept_new:
                raise self._unreachable(f"known hosts file '{self.known_hosts}' does not exist", False) from None
        except (OSError, paramiko.SSHException) as exc:
            raise self._unreachable(f"unable to read known hosts file '{self.known_hosts}': {exc}", False) from None
        client.set_missing_host_key_policy(_AcceptNewPolicy(self.known_hosts) if self.accept_new else paramiko.RejectPolicy())
        keys = self._key_files()
        if not keys:
            raise self._unreachable("no SSH private key: set repo1-host-key-file", False)
        hostport = self.host if self.port == 22 else f"[{self.host}]:{self.port}"
        try:
            # Our own socket: a refused or timed-out connect reads as the OS says it
            # ("[Errno 111] Connection refused"), as operators know it from pgBackRest.
            sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
            client.connect(
                self.host, port=self.port, sock=sock, username=self.user, key_filename=keys, timeout=self.timeout,
                banner_timeout=self.timeout, auth_timeout=self.timeout, channel_timeout=self.timeout,
                allow_agent=False, look_for_keys=False, transport_factory=_transport,
            )
            transport = client.get_transport()
            transport.set_keepalive(max(1, int(self.timeout // 2)))
            sftp = client.open_sftp()
            sftp.get_channel().settimeout(self.timeout)
            self._io_size = _io_size(sftp)
        except paramiko.BadHostKeyException as exc:
            client.close()
            raise self._unreachable(
                f"host key for {hostport} does not match known hosts file '{self.known_hosts}' "
                f"(got {exc.key.get_name()} {exc.key.get_fingerprint().hex()}): refusing to connect", False) from None
        except paramiko.AuthenticationException as exc:
            client.close()
            raise self._unreachable(f"authentication failed for user '{self.user}': {exc}", False) from None
        except paramiko.SSHException as exc:
            client.close()
            text = str(exc)
            if "not found in known_hosts" in text:
                raise self._unreachable(
                    f"host key for {hostport} is not in known hosts file '{self.known_hosts}': add it with "
                    f"'ssh-keyscan -p {self.port} {self.host} >> {self.known_hosts}' after checking its fingerprint, "
                    "or set repo1-host-accept-new=y", False) from None
            if text == "No existing session":
                # paramiko's start_client gives up silently after `timeout` and auth then finds
                # no session: the host accepted the TCP connection but never answered (frozen).
                text = f"timeout after {self.timeout:g}s waiting for the SSH server to answer"
            raise self._unreachable(text or type(exc).__name__) from None
        except TimeoutError:
            client.close()
            raise self._unreachable(f"timeout after {self.timeout:g}s connecting") from None
        except OSError as exc:
            client.close()
            raise self._unreachable(f"[Errno {exc.errno}] {exc.strerror or exc}") from None
        except EOFError:
            client.close()
            raise self._unreachable("connection closed by the host") from None
        self._client, self._sftp = client, sftp
        return sftp

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

    def list(self, directory: str) -> list[FileInfo]:
        sftp = self._connect()
        try:
            entries = sftp.listdir_attr(self._dir_path(directory))
        except FileNotFoundError:
            return []
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise self._oserror(exc, f"list '{directory}'") from None
        return [FileInfo(e.filename, e.st_size, e.st_mtime) for e in entries
                if stat.S_ISREG(e.st_mode or 0) and TMP_SUFFIX not in e.filename]

    def list_dirs(self, directory: str) -> list[str]:
        sftp = self._connect()
        try:
            entries = sftp.listdir_attr(self._dir_path(directory))
        except FileNotFoundError:
            return []
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise self._oserror(exc, f"list '{directory}'") from None
        return [e.filename for e in entries if stat.S_ISDIR(e.st_mode or 0)]

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
        final = self._path(name)
        directory, base = posixpath.split(final)
        try:
            sftp = self._connect()
            entries = sftp.listdir(directory)
        except (OSError, EOFError, paramiko.SSHException, StorageError):
            return
        for entry in entries:
            if left_by_dead_writer(entry, base):
                self._remove_quiet(posixpath.join(directory, entry))

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
            self._sftp._request(CMD_CLOSE, handle)
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

    def read_many(self, files: Iterable[tuple[str, int | None]]) -> Iterator[tuple[str, bytes]]:
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
            sent[sftp._async_request(replies, t, *args)] = (f, t, length)

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
                sftp._read_response()  # one reply (possibly for a close) into ``replies``
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
