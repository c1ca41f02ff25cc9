"""Running commands, and a PostgreSQL cluster, inside a Debian root built by harness.debroot.

A test gets its own writable view of a cached root: an overlay (lower = the cache, upper = the
test's work dir), so the cache stays pristine and tests never see each other's files.  Inside
it: /proc, a minimal /dev with /dev/shm, and a tmpfs /tmp.  Commands run with ``chroot`` as the
root's own users (its /etc/passwd, not the host's: the uids differ), with a clean environment:
the host's PYTHONPATH, PG* variables and PATH never leak in.  There is no network namespace, so
the host's sshd on 127.0.0.1 is reachable from inside.

Paths: the harness keeps host paths (``root.path / "var/lib/..."``) for everything it reads or
writes itself; whatever crosses into the root -- argv and postgresql.conf values -- has the
root's host prefix replaced by "/" (:meth:`DebRoot.inner`).  So the helpers written for host
clusters (backup_env.pg_opts, pgpush_env.Pgpush.argv) work unchanged.

Clean-up: every process whose root directory is this root is stopped by PID (this machine's
init reaps nothing), then everything is unmounted, deepest first.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from . import procs
from .debroot import Release, mount_api_filesystems, mounts_below, unmount_below
from .pg import PgCluster

__all__ = ["ChrootCluster", "DebRoot"]

ZIPAPP = "/usr/local/bin/pgpush.pyz"


class DebRoot:
    """One test's mounted, writable view of a cached Debian root."""

    def __init__(self, release: Release, image: Path, base_dir: Path) -> None:
        self.release = release
        self.image = Path(image)
        self.base = Path(base_dir)
        self.path = self.base / "root"
        self._prefix = str(self.path) + "/"

    def __repr__(self) -> str:
        return f"DebRoot({self.release.name}, {self.path})"

    # ------------------------------------------------------------------------------------------
    # mounts

    def mount(self) -> DebRoot:
        upper, work = self.base / "upper", self.base / "overlay-work"
        for d in (upper, work, self.path):
            d.mkdir(parents=True, exist_ok=True)
        os.chmod(self.base, 0o755)
        try:
            subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                            f"lowerdir={self.image},upperdir={upper},workdir={work}", str(self.path)],
                           check=True, capture_output=True, text=True)
            os.chmod(self.path, 0o755)
            mount_api_filesystems(self.path)
            subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=1777,size=512m,nosuid,nodev", "tmpfs",
                            str(self.path / "tmp")], check=True, capture_output=True)
        except BaseException:
            self.cleanup()
            raise
        return self

    def processes(self) -> list[int]:
        """PIDs of the processes running inside this root (their /proc/PID/root is it)."""
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    if os.readlink(f"/proc/{entry}/root") == str(self.path):
                        found.append(int(entry))
                except OSError:
                    continue
        return found

    def cleanup(self) -> None:
        """Stop every process of the root by PID, then unmount everything (never raises on a dead root)."""
        for _ in range(3):  # a dying postmaster may still fork; look again
            pids = [p for p in self.processes() if procs.pid_alive(p)]
            if not pids:
                break
            procs.signal_pids(pids, signal.SIGKILL)
            for pid in pids:
                procs.stop_pid(pid, timeout=5, sig=signal.SIGKILL)
                procs.unregister_pid(pid)
        unmount_below(self.path)
        if mounts_below(self.path):
            raise RuntimeError(f"{self.path} still has mounts: {mounts_below(self.path)}")

    # ------------------------------------------------------------------------------------------
    # users, paths, commands

    def ids(self, user: str) -> tuple[int, int]:
        """(uid, gid) of ``user`` in the root's own /etc/passwd."""
        for line in (self.path / "etc/passwd").read_text().splitlines():
            fields = line.split(":")
            if fields[0] == user:
                return int(fields[2]), int(fields[3])
        raise KeyError(f"no user {user!r} in {self.release.name}'s /etc/passwd")

    def add_user(self, user: str, uid: int = 999, home: str = "/var/lib/postgresql") -> None:
        """Add ``user`` (its own group, same id) to this test's view of the root, which has no such package
        user (the arm64 root has no PostgreSQL): written, not useradd'ed, so nothing runs under qemu."""
        try:
            self.ids(user)
            return
        except KeyError:
            pass
        with open(self.path / "etc/passwd", "a") as f:
            f.write(f"{user}:x:{uid}:{uid}::{home}:/bin/sh\n")
        with open(self.path / "etc/group", "a") as f:
            f.write(f"{user}:x:{uid}:\n")
        self.host(home).mkdir(parents=True, exist_ok=True)
        self.chown(self.host(home), user, 0o755)

    def chown(self, path: Path, user: str = "postgres", mode: int | None = None) -> None:
        os.chown(path, *self.ids(user))
        if mode is not None:
            os.chmod(path, mode)

    def host(self, inner: str) -> Path:
        """The host path of an absolute path inside the root."""
        return self.path / inner.lstrip("/")

    def inner(self, value: str) -> str:
        """``value`` with every host path into the root turned into the path inside it."""
        return value.replace(self._prefix, "/")

    def env(self, user: str) -> dict[str, str]:
        home = "/root" if user == "root" else "/var/lib/postgresql"
        path = "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"
        if self.release.pg_major:
            path = f"{self.release.pg_bin}:{path}"
        return {"PATH": path, "LANG": "C.UTF-8", "HOME": home, "USER": user, "LOGNAME": user, "TZ": "UTC"}

    def argv(self, cmd: Sequence[str | os.PathLike], user: str = "postgres") -> list[str]:
        """``chroot`` argv running ``cmd`` inside the root as ``user`` (numeric ids: the root's users)."""
        spec = []
        if user != "root":
            uid, gid = self.ids(user)
            spec = [f"--userspec={uid}:{gid}", f"--groups={gid}"]
        return ["chroot", *spec, str(self.path), *(self.inner(os.fspath(c)) for c in cmd)]

    def run(
        self,
        cmd: Sequence[str | os.PathLike] | str,
        user: str = "postgres",
        *,
        check: bool = True,
        env: Mapping[str, str] | None = None,
        timeout: float | None = 120,
        input: str | None = None,
        **_ignored: object,
    ) -> subprocess.CompletedProcess:
        """Run ``cmd`` (a str goes through the root's /bin/sh) inside the root; text output captured.

        Raises procs.CommandError (with stdout and stderr) on failure when ``check``."""
        argv = self.argv(["/bin/sh", "-c", cmd] if isinstance(cmd, str) else cmd, user)
        run_env = dict(env) if env is not None else self.env(user)
        proc = subprocess.run(argv, env=run_env, cwd="/", input=input, capture_output=True, text=True,
                              timeout=timeout)
        if check and proc.returncode != 0:
            raise procs.CommandError(proc.returncode, argv, proc.stdout, proc.stderr)
        return proc

    def install_zipapp(self, zipapp: Path) -> str:
        """Copy the zipapp to /usr/local/bin/pgpush.pyz (0755) and return that path."""
        target = self.host(ZIPAPP)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(zipapp, target)
        os.chmod(target, 0o755)
        return ZIPAPP

    def python_version(self) -> str:
        return self.run(["/usr/bin/python3", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"]).stdout.strip()


class ChrootCluster(PgCluster):
    """A PgCluster whose binaries, data directory and processes live inside a DebRoot.

    Only what touches users, paths or the process environment is overridden; SQL, WAL,
    archiver and lifecycle helpers are PgCluster's own.  Always a fresh ``initdb``: the host's
    cached template belongs to the host's PostgreSQL and the host's postgres uid.
    """

    def __init__(self, root: DebRoot, name: str = "pg", port: int | None = None) -> None:
        major = root.release.pg_major
        if major is None:
            raise ValueError(f"{root.release.name} has no PostgreSQL")
        self.root = root
        super().__init__(root.host("/var/lib/postgresql/pgpush"), name, Path(root.release.pg_bin), port,
                         version=(major, f"PostgreSQL {major} ({root.release.suite})"))
        if self._own_socket_dir:  # the host path was too long for a socket; the inner one is not
            os.rmdir(self.socket_dir)
        self._own_socket_dir = False
        self.socket_dir = root.host(f"/tmp/pgsock-{name}")
        self.env = root.env("postgres")

    def bin(self, tool: str) -> str:
        return f"{self.root.release.pg_bin}/{tool}"

    def run(self, cmd: list, **kw: object) -> subprocess.CompletedProcess:
        kw.setdefault("env", self.env)
        return self.root.run(cmd, "postgres", **kw)  # type: ignore[arg-type]

    def _prepare_dir(self, path: Path, mode: int) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self.root.chown(path, "postgres", mode)

    def _prepare_common(self) -> None:
        self._prepare_dir(self.base_dir, 0o755)
        if self.datadir.exists() and any(self.datadir.iterdir()):
            raise RuntimeError(f"{self.datadir} already exists and is not empty")
        self._prepare_dir(self.socket_dir, 0o755)
        self.log_file.touch()
        self.root.chown(self.log_file)

    def init(self, conf: Mapping[str, object] | None = None, *, fresh: bool = True,
             wal_segsize_mb: int | None = None) -> PgCluster:
        return super().init(conf, fresh=True, wal_segsize_mb=wal_segsize_mb)

    def _initdb_args(self, wal_segsize_mb: int | None) -> list[str]:
        args = super()._initdb_args(wal_segsize_mb)
        return args if self.major >= 14 else [a for a in args if a != "--no-instructions"]  # new in 14

    def _inner_conf(self, conf: Mapping[str, object]) -> dict[str, object]:
        return {k: self.root.inner(os.fspath(v)) if isinstance(v, (str, os.PathLike)) else v for k, v in conf.items()}

    def _write_harness_conf(self, settings: Mapping[str, object]) -> None:
        with open(self.conf_file, "a") as f:
            f.write(f"\n# --- pgpush test harness ({self.name}, {self.root.release.name}) ---\n")
        self.set_conf({**settings, "port": self.port, "unix_socket_directories": str(self.socket_dir)})
        self._conf_changes.clear()

    def set_conf(self, conf: Mapping[str, object]) -> None:
        super().set_conf(self._inner_conf(conf))
