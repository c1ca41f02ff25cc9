"""Writing one file over SFTP so that every byte is acknowledged or the write fails.

paramiko's ``SFTPFile.write`` in pipelined mode sends WRITE requests without
waiting and reads their statuses only once more than 100 are outstanding; the
statuses still in flight when the next synchronous request (``fsync``,
``close``) is answered are discarded.  A file of fewer than ~100 requests (every
compressed WAL segment) is never checked at all: a full backup host answers
``SSH_FX_FAILURE`` to each WRITE and the truncated file would still be renamed
to its final name.  So the writes are sent here, on our own, with at most
:data:`WRITE_WINDOW` in flight, and the status of every one is read and checked
before the ``fsync``; after the ``fsync`` the stored size (``fstat`` on the open
handle) must equal the bytes sent, and ``close`` is checked too.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

import paramiko
from paramiko.sftp import (
    CMD_ATTRS,
    CMD_CLOSE,
    CMD_EXTENDED,
    CMD_EXTENDED_REPLY,
    CMD_FSTAT,
    CMD_STATUS,
    CMD_WRITE,
    SFTP_OK,
    int64,
)

from pgpush.storage import sftp_wire

WRITE_WINDOW = 64  # WRITE requests in flight: 64 x 127 KiB is half the 16 MiB SSH window
NEARLY_FULL = 1 << 20  # free bytes under which a failed write is reported as "no space left"


class WriteFailed(OSError):
    """The server refused a request of the upload (a WRITE, the fsync, the close) or stored a wrong size."""


class _Acks:
    """Where paramiko hands the statuses of our WRITE requests (it calls ``_async_response``)."""

    def __init__(self) -> None:
        self.pending: dict[int, int] = {}  # request number -> file offset it writes
        self.failure: str | None = None

    def _async_response(self, t: int, msg: paramiko.Message, num: int) -> None:
        offset = self.pending.pop(num, -1)
        if self.failure is not None:
            return
        if t != CMD_STATUS:
            self.failure = f"unexpected SFTP reply {t} to a write at offset {offset}"
            return
        code, text = msg.get_int(), msg.get_text()
        if code != SFTP_OK:
            self.failure = f"{text or 'SFTP error'} (status {code}) writing at offset {offset}"


def _wait(sftp: paramiko.SFTPClient, acks: _Acks, keep: int) -> None:
    """Read replies until at most ``keep`` writes are outstanding; raise on the first refused one."""
    while len(acks.pending) > keep:
        sftp_wire.receive_one(sftp)
    if acks.failure is not None:
        _drain(sftp, acks)
        raise WriteFailed(acks.failure)


def _drain(sftp: paramiko.SFTPClient, acks: _Acks) -> None:
    """Read the replies still due, so none is left to confuse the next request of this connection."""
    while acks.pending:
        sftp_wire.receive_one(sftp)


def write_all(sftp: paramiko.SFTPClient, handle: bytes, chunks: Iterable[bytes], io_size: int) -> int:
    """Write ``chunks`` at offset 0 of the open ``handle``; return the bytes written, all acknowledged."""
    acks = _Acks()
    offset = 0
    for chunk in chunks:
        view = memoryview(chunk)
        for start in range(0, len(view), io_size):
            piece = bytes(view[start:start + io_size])
            _wait(sftp, acks, WRITE_WINDOW - 1)
            num = sftp_wire.send(sftp, acks, CMD_WRITE, handle, int64(offset), piece)
            acks.pending[num] = offset
            offset += len(piece)
        while acks.pending and sftp.sock.recv_ready():  # take what has come without waiting for it
            sftp_wire.receive_one(sftp)
        _wait(sftp, acks, WRITE_WINDOW)
    _wait(sftp, acks, 0)
    return offset


def checked_request(sftp: paramiko.SFTPClient, what: str, t: int, *args: object) -> tuple[int, paramiko.Message]:
    """One synchronous request; a refusal by the server (an error status, which paramiko raises
    as a plain OSError) becomes :class:`WriteFailed`.  A lost connection (timeout, EOF) passes
    through as it is: that is transient, a refusal is not."""
    try:
        return sftp_wire.request(sftp, t, *args)
    except OSError as exc:
        if type(exc) is OSError:
            raise WriteFailed(f"{exc} ({what})") from None
        raise


def fsync_and_check(sftp: paramiko.SFTPClient, handle: bytes, written: int) -> None:
    """``fsync@openssh.com`` the handle, then make sure the server holds exactly ``written`` bytes."""
    checked_request(sftp, "fsync", CMD_EXTENDED, "fsync@openssh.com", handle)
    t, msg = checked_request(sftp, "fstat", CMD_FSTAT, handle)
    if t != CMD_ATTRS:
        raise WriteFailed(f"unexpected SFTP reply {t} to fstat")
    size = sftp_wire.attributes(msg).st_size
    if size != written:
        raise WriteFailed(f"the backup host stored {size} bytes of the {written} sent")


def close_handle(sftp: paramiko.SFTPClient, handle: bytes) -> None:
    """Close ``handle`` and check the answer (paramiko's ``SFTPFile.close`` ignores a failed close)."""
    checked_request(sftp, "close", CMD_CLOSE, handle)


def free_bytes(sftp: paramiko.SFTPClient, path: str) -> int | None:
    """Bytes free for an unprivileged user on the file system holding ``path`` (``statvfs@openssh.com``)."""
    try:
        t, msg = sftp_wire.request(sftp, CMD_EXTENDED, "statvfs@openssh.com", path)
        if t != CMD_EXTENDED_REPLY:
            return None
        _bsize, frsize, _blocks, _bfree, bavail = (msg.get_int64() for _ in range(5))
    except (OSError, EOFError, paramiko.SSHException, struct.error):
        return None
    return frsize * bavail


def explain(reason: str, free: int | None) -> str:
    """The reason for a failed upload, saying so plainly when the backup host's file system is full:
    SFTP version 3 has no "disk full" status, OpenSSH answers ``Failure`` for ENOSPC."""
    if free is None:
        return reason
    if free < NEARLY_FULL:
        return f"No space left on device on the backup host ({free} bytes free): {reason}"
    return f"{reason}; {free} bytes free on the backup host's file system"
