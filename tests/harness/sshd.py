"""A real OpenSSH sshd on 127.0.0.1 acting as the SFTP backup host.

The daemon runs as root in the foreground (``sshd -D -e``) with its own config, host key,
authorized_keys and known_hosts in ``base_dir``.  Clients log in as the dedicated OS user
``pgpush-backup`` with an ed25519 key whose private half is owned by ``postgres`` (mode 0600)
so both root-run tests and PostgreSQL's archive_command can use it.

Fault injection: ``stop()`` (port refuses connections, sessions killed), ``restart()`` (same
port and host key), ``freeze()``/``thaw()`` (SIGSTOP/SIGCONT of the daemon and all sessions:
TCP connects still succeed but nothing answers).

Gotcha: accounts created by ``useradd`` have a locked password ("!" in /etc/shadow) and sshd
with ``UsePAM no`` refuses locked accounts even for key logins.  We set the password field to
"*" (no valid password, not locked) and run with ``UsePAM no``; PAM in this container would
also try pam_loginuid etc.
"""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import struct
import subprocess
import time
from pathlib import Path

from . import procs

__all__ = ["BACKUP_USER", "SSHD", "SshServer", "ensure_backup_user"]

SSHD = "/usr/sbin/sshd"
BACKUP_USER = "pgpush-backup"
CLIENT_USER = "postgres"  # owner of the client private key and known_hosts
_USER_LOCK = "/tmp/pgpush-test-useradd.lock"


def ensure_backup_user(user: str = BACKUP_USER) -> None:
    """Create ``user`` (useradd -m -s /bin/bash) if missing and make sure it is not locked.

    Serialised with an flock so concurrent pytest-xdist workers do not race.
    """
    with open(_USER_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            procs.user_ids(user)
        except KeyError:
            subprocess.run(["useradd", "-m", "-s", "/bin/bash", "-p", "*", user], check=True, capture_output=True)
        with open("/etc/shadow") as f:
            for line in f:
                fields = line.split(":")
                if fields[0] == user and fields[1].startswith("!"):
                    subprocess.run(["usermod", "-p", "*", user], check=True, capture_output=True)


def _chown(path: Path, user: str, mode: int) -> None:
    os.chown(path, *procs.user_ids(user))
    os.chmod(path, mode)


class SshServer:
    """OpenSSH sshd for one test; see module docstring."""

    def __init__(self, base_dir: Path, user: str = BACKUP_USER, port: int | None = None) -> None:
        self.dir = Path(base_dir)
        self.host = "127.0.0.1"
        self.port = port or procs.free_port()
        self.user = user
        self.config_file = self.dir / "sshd_config"
        self.host_key = self.dir / "ssh_host_ed25519_key"
        self.key_file = self.dir / "client_ed25519_key"
        self.known_hosts = self.dir / "known_hosts"
        self.authorized_keys_dir = self.dir / "authorized_keys"
        self.pid_file = self.dir / "sshd.pid"
        self.log_file = self.dir / "sshd.log"
        self.repo_dir = self.dir / "repo"
        self.proc: subprocess.Popen | None = None
        self.frozen: list[int] = []
        self._prepared = False

    def __repr__(self) -> str:
        return f"SshServer({self.host}:{self.port}, user={self.user!r}, pid={self.pid})"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    # ------------------------------------------------------------------------------------------
    # setup

    def _prepare(self) -> None:
        if self._prepared:
            return
        ensure_backup_user(self.user)
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o755)
        for key in (self.host_key, self.key_file):
            if not key.exists():
                subprocess.run(
                    ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"pgpush-test-{key.name}", "-f", str(key)],
                    check=True,
                    capture_output=True,
                )
        os.chmod(self.host_key, 0o600)  # sshd insists the host key is private (root-owned)
        _chown(self.key_file, CLIENT_USER, 0o600)
        _chown(self.key_file.with_suffix(".pub"), CLIENT_USER, 0o644)
        self.authorized_keys_dir.mkdir(mode=0o755, exist_ok=True)
        auth = self.authorized_keys_dir / self.user
        auth.write_text(self.key_file.with_suffix(".pub").read_text())
        os.chmod(auth, 0o644)  # sshd reads it with the target user's uid
        self.repo_dir.mkdir(exist_ok=True)
        _chown(self.repo_dir, self.user, 0o750)
        self._write_known_hosts()
        self._write_config()
        self._prepared = True

    def _write_known_hosts(self) -> None:
        keytype, blob = self.host_key.with_suffix(".pub").read_text().split()[:2]
        host = self.host if self.port == 22 else f"[{self.host}]:{self.port}"
        self.known_hosts.write_text(f"{host} {keytype} {blob}\n")
        _chown(self.known_hosts, CLIENT_USER, 0o644)

    def _write_config(self) -> None:
        self.config_file.write_text(
            f"""\
ListenAddress {self.host}
Port {self.port}
HostKey {self.host_key}
PidFile {self.pid_file}
AuthorizedKeysFile {self.authorized_keys_dir}/%u
AllowUsers {self.user}
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin no
UsePAM no
StrictModes no
UseDNS no
PrintMotd no
X11Forwarding no
AllowTcpForwarding no
AllowAgentForwarding no
Subsystem sftp internal-sftp
LogLevel ERROR
MaxStartups 100:30:200
MaxSessions 50
LoginGraceTime 30
"""
        )

    # ------------------------------------------------------------------------------------------
    # lifecycle

    def _banner_ready(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=1) as s:
                s.settimeout(1)
                ok = s.recv(64).startswith(b"SSH-")
                if ok:  # send an ident line so sshd does not log kex_exchange_identification errors
                    s.sendall(b"SSH-2.0-pgpush-harness-probe\r\n")
                return ok
        except OSError:
            return False

    def start(self, timeout: float = 15) -> SshServer:
        """Start sshd and wait until it answers with an SSH banner."""
        if self.proc is not None and procs.pid_alive(self.proc.pid):
            return self
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation directory
        self._prepare()
        for attempt in range(3):
            offset = self.log_file.stat().st_size if self.log_file.exists() else 0
            with open(self.log_file, "ab") as log:
                self.proc = subprocess.Popen(
                    [SSHD, "-D", "-e", "-f", str(self.config_file)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    cwd="/",
                    start_new_session=True,
                )
            procs.register_pid(self.proc.pid, f"sshd {self.config_file}")
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.proc.poll() is not None or self._banner_ready():
                    break
                time.sleep(0.02)
            if self.proc.poll() is None and self._banner_ready():
                return self
            log_text = self.log_file.read_bytes()[offset:].decode(errors="replace")
            self._kill_daemon()
            if "Address already in use" in log_text and attempt < 2 and not self.frozen:
                self.port = procs.free_port()  # lost a port race; the host key stays the same
                self._write_known_hosts()
                self._write_config()
                continue
            raise RuntimeError(f"sshd did not start on port {self.port}:\n{log_text}")
        raise AssertionError("unreachable")

    def _family(self) -> list[int]:
        if self.proc is None:
            return []
        return [self.proc.pid, *procs.descendants_of(self.proc.pid)]

    def _kill_daemon(self) -> None:
        if self.proc is None:
            return
        pid = self.proc.pid
        family = self._family()
        procs.signal_pids(family + self.frozen, signal.SIGCONT)
        procs.stop_pid(pid, timeout=5)
        try:
            self.proc.wait(timeout=1)
        except (subprocess.TimeoutExpired, ChildProcessError):
            pass
        for child in family[1:] + self.frozen:
            procs.stop_pid(child, timeout=2)  # session processes outlive the listener
        procs.unregister_pid(pid)
        self.proc = None
        self.frozen = []

    def stop(self, timeout: float = 10) -> None:
        """Simulate "backup host down": kill the daemon and every session; the port then refuses."""
        self._kill_daemon()
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection((self.host, self.port), timeout=1):
                    pass
            except ConnectionRefusedError:
                return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"port {self.port} still accepts connections after sshd stop")
            time.sleep(0.05)

    def restart(self) -> SshServer:
        """Stop and start again on the same port with the same host key."""
        self.stop()
        return self.start()

    def freeze(self) -> None:
        """SIGSTOP the daemon and all its sessions: connects succeed, nothing answers."""
        family = self._family()
        procs.signal_pids(family, signal.SIGSTOP)
        self.frozen = sorted(set(self.frozen) | set(family))
        # Signal delivery is asynchronous: return only once every process shows "T (stopped)".
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if all(procs.pid_state(pid) in ("T", None, "Z", "X") for pid in family):
                return
            time.sleep(0.005)
        raise RuntimeError(f"sshd family {family} not stopped after SIGSTOP")

    def thaw(self) -> None:
        """SIGCONT everything frozen by freeze()."""
        procs.signal_pids(sorted(set(self.frozen) | set(self._family())), signal.SIGCONT)
        self.frozen = []

    def cleanup(self) -> None:
        self._kill_daemon()

    # ------------------------------------------------------------------------------------------
    # client helpers

    def pgpush_options(self) -> dict[str, str]:
        """pgpush repo options (string values) for this server."""
        return {
            "repo1-type": "sftp",
            "repo1-host": self.host,
            "repo1-host-port": str(self.port),
            "repo1-host-user": self.user,
            "repo1-host-key-file": str(self.key_file),
            "repo1-host-known-hosts": str(self.known_hosts),
            "repo1-path": str(self.repo_dir),
        }

    def connect(self, timeout: float = 5):
        """paramiko SSHClient logged in with the client key, known_hosts loaded, RejectPolicy.

        Note: paramiko's ``timeout`` only covers the TCP connect; banner/auth waits have their own
        timeouts (default banner_timeout=15 s), so all three are set here.
        """
        import paramiko

        client = paramiko.SSHClient()
        client.load_host_keys(str(self.known_hosts))
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        client.connect(
            self.host,
            port=self.port,
            username=self.user,
            key_filename=str(self.key_file),
            look_for_keys=False,
            allow_agent=False,
            timeout=timeout,
            banner_timeout=timeout,
            auth_timeout=timeout,
            channel_timeout=timeout,
        )
        return client

    def sftp_extensions(self, timeout: float = 5) -> dict[str, bytes]:
        """Extensions announced in the server's SSH_FXP_VERSION (paramiko discards them)."""
        client = self.connect(timeout)
        try:
            chan = client.get_transport().open_session(timeout=timeout)
            chan.settimeout(timeout)
            chan.invoke_subsystem("sftp")
            chan.sendall(struct.pack(">IBI", 5, 1, 3))  # SSH_FXP_INIT, version 3

            def recv_exact(n: int) -> bytes:
                buf = b""
                while len(buf) < n:
                    chunk = chan.recv(n - len(buf))
                    if not chunk:
                        raise EOFError("sftp channel closed")
                    buf += chunk
                return buf

            (length,) = struct.unpack(">I", recv_exact(4))
            packet = recv_exact(length)
            if packet[0] != 2:  # SSH_FXP_VERSION
                raise RuntimeError(f"unexpected sftp packet type {packet[0]}")
            pos, extensions = 5, {}
            while pos < len(packet):
                (n,) = struct.unpack(">I", packet[pos : pos + 4])
                name = packet[pos + 4 : pos + 4 + n].decode()
                pos += 4 + n
                (n,) = struct.unpack(">I", packet[pos : pos + 4])
                extensions[name] = packet[pos + 4 : pos + 4 + n]
                pos += 4 + n
            chan.close()
            return extensions
        finally:
            client.close()

    def verify(self) -> dict[str, bytes]:
        """Key login + SFTP round trip + fsync@openssh.com + posix-rename@openssh.com.

        Returns the announced SFTP extensions; raises on any failure.
        """
        from paramiko.sftp import CMD_EXTENDED

        extensions = self.sftp_extensions()
        for required in ("posix-rename@openssh.com", "fsync@openssh.com"):
            if required not in extensions:
                raise RuntimeError(f"sshd does not announce {required}: {sorted(extensions)}")
        client = self.connect()
        try:
            sftp = client.open_sftp()
            tmp = f"{self.repo_dir}/.harness-verify.{os.getpid()}"
            with sftp.open(tmp, "wb") as f:
                f.write(b"pgpush")
                sftp._request(CMD_EXTENDED, "fsync@openssh.com", f.handle)  # raises on error status
            sftp.posix_rename(tmp, tmp + ".renamed")
            with sftp.open(tmp + ".renamed", "rb") as f:
                if f.read() != b"pgpush":
                    raise RuntimeError("sftp read back mismatch")
            sftp.remove(tmp + ".renamed")
            sftp.close()
        finally:
            client.close()
        return extensions
