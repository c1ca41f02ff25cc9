"""Opening an SFTP connection to the backup host: host keys, keys, timeouts, transport tuning.

Apart from :mod:`pgpush.storage.sftp` (the file operations) because what can go wrong while
connecting is its own story, and each failure gets its own message and its own verdict on
whether a retry may help (``transient``):

- the host key is checked against ``repo1-host-known-hosts``; an unknown one is refused (with
  the ``ssh-keyscan`` hint) unless ``repo1-host-accept-new`` allows trust on first use, and a
  *changed* one is refused always (not transient: retrying cannot make it right);
- a missing key, a refused authentication: not transient either;
- a refused or timed-out connect, a host that accepts TCP and never answers (frozen), a
  connection closed during the handshake: transient (the retry layer tries again);
- ``repo1-host-timeout`` bounds the TCP connect, the banner, authentication and every later
  read on the channel, and keep-alives go every half of it.

Throughput: paramiko does its SSH packet work in Python, so the cost is per packet.  The
transport prefers AES-GCM (one AEAD pass instead of AES-CTR plus a separate HMAC, and cheap
for sshd too), a 16 MiB window and 128 KiB packets, and SFTP reads and writes of up to
127 KiB when the server's ``limits@openssh.com`` allows them (32 KiB, the protocol's minimum,
otherwise).  Measured here: a 16 MB file moves in about half the time of paramiko's defaults.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import paramiko
from paramiko.sftp import CMD_EXTENDED, CMD_EXTENDED_REPLY

from pgpush.log import LOG
from pgpush.storage import sftp_wire
from pgpush.storage.base import StorageError

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


def make_transport(sock: socket.socket | paramiko.Channel,
                   disabled_algorithms: Mapping[str, Iterable[str]] | None = None) -> paramiko.Transport:
    """A transport that prefers AES-GCM and big windows and packets (see the module docstring)."""
    transport = paramiko.Transport(sock, disabled_algorithms=disabled_algorithms,
                                   default_window_size=WINDOW_SIZE, default_max_packet_size=MAX_PACKET_SIZE)
    options = transport.get_security_options()
    offered = options.ciphers
    options.ciphers = tuple(c for c in PREFERRED_CIPHERS if c in offered) + tuple(
        c for c in offered if c not in PREFERRED_CIPHERS)
    return transport


def io_size(sftp: paramiko.SFTPClient) -> int:
    """The largest read/write request the server takes, up to IO_SIZE_MAX (``limits@openssh.com``)."""
    try:
        kind, msg = sftp_wire.request(sftp, CMD_EXTENDED, "limits@openssh.com")
        if kind != CMD_EXTENDED_REPLY or len(msg.asbytes()) - msg.packet.tell() < 32:  # four uint64
            return IO_SIZE_MIN
        msg.get_int64()  # max packet length
        read_len, write_len = msg.get_int64(), msg.get_int64()
    except (OSError, paramiko.SSHException, EOFError, struct.error):
        return IO_SIZE_MIN
    if not read_len or not write_len:  # 0: not announced; OpenSSH's own client then keeps 32 KiB too
        return IO_SIZE_MIN
    return max(IO_SIZE_MIN, min(IO_SIZE_MAX, read_len, write_len))

class AcceptNewPolicy(paramiko.MissingHostKeyPolicy):
    """Trust on first use: record an unknown key in known_hosts (``repo1-host-accept-new``)."""

    def __init__(self, path: str):
        self.path = path

    def missing_host_key(self, client, hostname, key):
        os.makedirs(os.path.dirname(self.path) or ".", mode=0o700, exist_ok=True)
        entry = f"{hostname} {key.get_name()} {key.get_base64()}\n"
        with open(self.path, "a", encoding="ascii") as fh:
            fh.write(entry)
        client.get_host_keys().add(hostname, key.get_name(), key)




@dataclass(frozen=True)
class Target:
    """Where and as whom to connect (``repo1-host*`` options)."""

    host: str
    port: int
    user: str
    key_file: str | None
    known_hosts: str
    timeout: float
    accept_new: bool


def _key_files(target: Target) -> list[str]:
    if target.key_file:
        return [os.path.expanduser(target.key_file)]
    home = os.path.expanduser("~/.ssh")
    return [p for p in (os.path.join(home, k) for k in DEFAULT_KEYS) if os.path.exists(p)]


def connect(target: Target, unreachable: Callable[[str, bool], StorageError]
            ) -> tuple[paramiko.SSHClient, paramiko.SFTPClient, int]:
    """An SSH client, its SFTP session and the read/write size to use; ``unreachable(reason, transient)``
    makes the error raised for any failure."""
    client = paramiko.SSHClient()
    try:
        client.load_host_keys(target.known_hosts)
    except FileNotFoundError:
        if not target.accept_new:
            raise unreachable(f"known hosts file '{target.known_hosts}' does not exist", False) from None
    except (OSError, paramiko.SSHException) as exc:
        raise unreachable(f"unable to read known hosts file '{target.known_hosts}': {exc}", False) from None
    client.set_missing_host_key_policy(AcceptNewPolicy(target.known_hosts) if target.accept_new else paramiko.RejectPolicy())
    keys = _key_files(target)
    if not keys:
        raise unreachable("no SSH private key: set repo1-host-key-file", False)
    hostport = target.host if target.port == 22 else f"[{target.host}]:{target.port}"
    try:
        # Our own socket: a refused or timed-out connect reads as the OS says it
        # ("[Errno 111] Connection refused"), as operators know it from pgBackRest.
        sock = socket.create_connection((target.host, target.port), timeout=target.timeout)
        client.connect(
            # key_filename: paramiko's connect() takes a list of files too; types-paramiko says only str.
            target.host, port=target.port, sock=sock, username=target.user,
            key_filename=keys,  # type: ignore[arg-type]
            timeout=target.timeout,
            banner_timeout=target.timeout, auth_timeout=target.timeout, channel_timeout=target.timeout,
            allow_agent=False, look_for_keys=False,
            # types-paramiko's factory protocol wants gss_kex/gss_deleg_creds keywords that paramiko's
            # connect() never passes (it passes sock and disabled_algorithms).
            transport_factory=make_transport,  # type: ignore[arg-type]
        )
        transport = client.get_transport()
        sftp = client.open_sftp()
        channel = sftp.get_channel()
        if transport is None or channel is None:  # set by connect() and open_sftp(); None only if closed since
            raise paramiko.SSHException("No existing session")
        transport.set_keepalive(max(1, int(target.timeout // 2)))
        channel.settimeout(target.timeout)
    except paramiko.BadHostKeyException as exc:
        client.close()
        raise unreachable(
            f"host key for {hostport} does not match known hosts file '{target.known_hosts}' "
            f"(got {exc.key.get_name()} {exc.key.get_fingerprint().hex()}): refusing to connect", False) from None
    except paramiko.AuthenticationException as exc:
        client.close()
        raise unreachable(f"authentication failed for user '{target.user}': {exc}", False) from None
    except paramiko.SSHException as exc:
        client.close()
        text = str(exc)
        if "not found in known_hosts" in text:
            raise unreachable(
                f"host key for {hostport} is not in known hosts file '{target.known_hosts}': add it with "
                f"'ssh-keyscan -p {target.port} {target.host} >> {target.known_hosts}' after checking its fingerprint, "
                "or set repo1-host-accept-new=y", False) from None
        if text == "No existing session":
            # paramiko's start_client gives up silently after `timeout` and auth then finds
            # no session: the host accepted the TCP connection but never answered (frozen).
            text = f"timeout after {target.timeout:g}s waiting for the SSH server to answer"
        raise unreachable(text or type(exc).__name__, True) from None
    except TimeoutError:
        client.close()
        raise unreachable(f"timeout after {target.timeout:g}s connecting", True) from None
    except OSError as exc:
        client.close()
        raise unreachable(f"[Errno {exc.errno}] {exc.strerror or exc}", True) from None
    except EOFError:
        client.close()
        raise unreachable("connection closed by the host", True) from None
    return client, sftp, io_size(sftp)

