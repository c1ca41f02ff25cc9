"""sftp_connect.py's transport tuning: AES-GCM first, and SFTP request sizes from limits@openssh.com or the safe minimum."""

from __future__ import annotations

import socket

import paramiko

from pgpush.storage import sftp_connect as sftp


class _Sftp:
    def __init__(self, reply=None, error: Exception | None = None):
        self.reply, self.error = reply, error

    def _request(self, *_args):
        if self.error is not None:
            raise self.error
        msg = paramiko.Message()
        for value in self.reply:
            msg.add_int64(value)
        msg.rewind()
        return 201, msg


def test_io_size_follows_the_servers_limits():
    assert sftp.io_size(_Sftp([256 * 1024, 255 * 1024, 255 * 1024, 0])) == sftp.IO_SIZE_MAX
    assert sftp.io_size(_Sftp([64 * 1024, 60 * 1024, 48 * 1024, 0])) == 48 * 1024
    assert sftp.io_size(_Sftp([0, 0, 0, 0])) == sftp.IO_SIZE_MIN  # 0: not announced, as OpenSSH reads it


def test_io_size_without_the_extension_is_the_protocol_minimum():
    assert sftp.io_size(_Sftp(error=OSError("Operation unsupported"))) == sftp.IO_SIZE_MIN
    assert sftp.io_size(_Sftp([1])) == sftp.IO_SIZE_MIN  # a short reply


def test_transport_prefers_aes_gcm_and_keeps_the_others():
    a, b = socket.socketpair()
    try:
        transport = sftp.make_transport(a)
        ciphers = transport.get_security_options().ciphers
        assert ciphers[:2] == sftp.PREFERRED_CIPHERS
        assert set(ciphers) == set(paramiko.Transport._preferred_ciphers)
        assert transport.default_window_size == sftp.WINDOW_SIZE
        assert transport.default_max_packet_size == sftp.MAX_PACKET_SIZE
    finally:
        a.close()
        b.close()
