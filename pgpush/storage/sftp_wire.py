"""paramiko's private SFTP request API, typed in one place.

The SFTP backend needs what paramiko's public ``SFTPClient`` does not offer: pipelined requests whose
every status is read (sftp_upload.py, ``SFTPStorage.read_many``), and extended requests
(``limits@``, ``statvfs@``, ``fsync@openssh.com``).  paramiko implements them as private methods that
its type stubs leave out; this module names them once, with the types their code has (paramiko 3.x
``sftp_client.py``), so the callers are checked like any other code and a change in paramiko shows up
here rather than at every call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, cast

from paramiko.sftp_attr import SFTPAttributes

if TYPE_CHECKING:
    import paramiko


class ReplySink(Protocol):
    """What paramiko hands the reply of an asynchronous request to."""

    def _async_response(self, t: int, msg: paramiko.Message, num: int) -> None: ...


class _Private(Protocol):
    def _request(self, t: int, *args: object) -> tuple[int, paramiko.Message]: ...

    def _async_request(self, fileobj: ReplySink, t: int, *args: object) -> int: ...

    def _read_response(self, waitfor: int | None = None) -> object: ...


class _AttributesFrom(Protocol):
    def _from_msg(self, msg: paramiko.Message) -> SFTPAttributes: ...


def request(sftp: paramiko.SFTPClient, t: int, *args: object) -> tuple[int, paramiko.Message]:
    """One synchronous request: its reply type and message (an error status raises, as paramiko's does)."""
    return cast("_Private", sftp)._request(t, *args)


def send(sftp: paramiko.SFTPClient, sink: ReplySink, t: int, *args: object) -> int:
    """Send a request without waiting; its reply goes to ``sink._async_response``. Returns its number."""
    return cast("_Private", sftp)._async_request(sink, t, *args)


def receive_one(sftp: paramiko.SFTPClient) -> None:
    """Read one reply (waiting for it) and hand it to the sink of its request."""
    cast("_Private", sftp)._read_response()


def attributes(msg: paramiko.Message) -> SFTPAttributes:
    """The file attributes of an ``SSH_FXP_ATTRS`` reply."""
    return cast("_AttributesFrom", SFTPAttributes)._from_msg(msg)
