"""Shared pieces of the benchmark: paths, logging, running tools as PostgreSQL does,
WAL sources, clones of stopped clusters, and the memory sampler.

Everything here reuses the test harness (tests/harness: PgCluster, SshServer, procs).
"""

from __future__ import annotations

import os
import pwd
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "tests") not in sys.path:
    sys.path.insert(0, str(ROOT / "tests"))

from harness import procs  # noqa: E402
from harness.pg import PgCluster  # noqa: E402
from harness.sshd import SshServer  # noqa: E402

__all__ = ["PgCluster", "SshServer", "procs"]

BENCH_BASE = Path("/tmp/pgpush-bench")
# The zipapps as run: copies in the run's own work dir (readable by postgres), so that two runs
# never share one file and the memory sampler sees only this run's pgpush.  Use common.PGPUSH_PYZ.
PGPUSH_PYZ = BENCH_BASE / "pgpush.pyz"
EMPTY_PYZ = BENCH_BASE / "empty.pyz"
RUN_DIR = BENCH_BASE  # this run's work dir: its pgBackRest processes name their config there
SEG_SIZE = 16 * 1024 * 1024
MB = 1024 * 1024
PG_USER = "postgres"
BACKUP_USER = "pgpush-backup"
# What PostgreSQL's archiver gives its children, more or less: a small, clean environment.
TOOL_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/var/lib/postgresql", "USER": PG_USER}

_T0 = time.monotonic()


def install_zipapps(directory: Path) -> None:
    """Copy dist/pgpush.pyz and dist/empty.pyz into ``directory`` (mode 0755) and run those."""
    global PGPUSH_PYZ, EMPTY_PYZ, RUN_DIR
    PGPUSH_PYZ, EMPTY_PYZ = directory / "pgpush.pyz", directory / "empty.pyz"
    RUN_DIR = directory
    for name, dst in (("pgpush.pyz", PGPUSH_PYZ), ("empty.pyz", EMPTY_PYZ)):
        tmp = dst.with_suffix(".tmp")
        shutil.copyfile(ROOT / "dist" / name, tmp)
        os.chmod(tmp, 0o755)
        os.replace(tmp, dst)


def cli_flags(config: Path, stanza: str, opts: dict) -> list[str]:
    """``--config`` and ``--stanza``, then ``opts`` as flags (True: ``--key``, False: ``--no-key``, None: left out).

    Both tools spell options the same way, so one builder serves pgpush and pgBackRest."""
    flags = [f"--config={config}", f"--stanza={stanza}"]
    for key, value in opts.items():
        key = key.replace("_", "-")
        if value is True:
            flags.append(f"--{key}")
        elif value is False:
            flags.append(f"--no-{key}")
        elif value is not None:
            flags.append(f"--{key}={value}")
    return flags


def log(message: str) -> None:
    print(f"[{time.monotonic() - _T0:7.1f}s] {message}", flush=True)


def median(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None when either is missing or b is zero."""
    if a is None or b is None or b == 0:
        return None
    return a / b


def loadavg() -> list[float]:
    with open("/proc/loadavg") as f:
        return [float(x) for x in f.read().split()[:3]]


def cpu_pressure() -> float | None:
    """Share of the last 60 s in which some runnable task waited for a CPU (PSI), in %."""
    try:
        with open("/proc/pressure/cpu") as f:
            return float(f.readline().split("avg60=")[1].split()[0])
    except (OSError, IndexError, ValueError):
        return None


def chown(path: Path, user: str, mode: int | None = None) -> None:
    os.chown(path, *procs.user_ids(user))
    if mode is not None:
        os.chmod(path, mode)


def make_dir(path: Path, user: str = PG_USER, mode: int = 0o750) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    chown(path, user, mode)
    return path


def rmtree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


# ----------------------------------------------------------------------------------------------
# running tools as a user (no runuser in between: its PAM session would be timed too)


class Result:
    def __init__(self, rc: int, seconds: float, stdout: str, stderr: str, argv: list[str]):
        self.rc, self.seconds, self.stdout, self.stderr, self.argv = rc, seconds, stdout, stderr, argv

    def check(self, what: str) -> Result:
        if self.rc != 0:
            raise RuntimeError(f"{what} exited {self.rc}: {' '.join(self.argv)}\n{self.stdout}{self.stderr}")
        return self


def run_tool(argv: list[str], user: str = PG_USER, cwd: str | Path = "/", timeout: float = 300,
             env: dict | None = None) -> Result:
    """Run ``argv`` as ``user`` (setuid in the child) and time it from fork to exit.

    On timeout the whole process group is killed and a Result with rc -9 is returned.
    """
    pw = pwd.getpwnam(user)
    full_env = dict(TOOL_ENV, HOME=pw.pw_dir, USER=user)
    if env:
        full_env.update(env)
    groups = os.getgrouplist(user, pw.pw_gid)
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [str(a) for a in argv], cwd=str(cwd), env=full_env, user=pw.pw_uid, group=pw.pw_gid, extra_groups=groups,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
        seconds = time.perf_counter() - t0
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, 9)
        except ProcessLookupError:
            pass
        out, err = proc.communicate()
        seconds, rc = time.perf_counter() - t0, -9
        err = (err or "") + f"\n[bench] timed out after {timeout}s"
    return Result(rc, seconds, out or "", err or "", [str(a) for a in argv])


def tool_pids() -> list[int]:
    """Live processes of either tool (pgpush from this bench's zipapp copy, pgBackRest, its ssh)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
            with open(f"/proc/{pid}/status") as f:
                fields = dict(line.split(":", 1) for line in f.read().splitlines() if ":" in line)
        except OSError:
            continue
        if fields.get("State", "").strip().startswith(("Z", "X")):
            continue
        if classify(int(fields.get("Uid", "0").split()[0]), fields.get("Name", "").strip(), argv) is not None:
            out.append(pid)
    return out


def wait_tools_idle(timeout: float = 60) -> list[str]:
    """Wait until neither tool has a process left (async parents done); kill what is left after
    ``timeout`` and return those ("PID command line")."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not tool_pids():
            procs.reap_orphans()
            return []
        time.sleep(0.1)
    left = []
    for pid in tool_pids():
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:200]
        except OSError:
            cmd = "?"
        left.append(f"{pid} {cmd}")
        procs.kill_tree(pid, sig=9, timeout=2)
    procs.reap_orphans()
    return left


# ----------------------------------------------------------------------------------------------
# memory sampler


def classify(uid: int, comm: str, argv: list[bytes]) -> tuple[str, str] | None:
    """(tool, role) of a process of this run, or None if it belongs to neither tool."""
    args = [a.decode(errors="replace") for a in argv]
    joined = " ".join(args)
    if str(PGPUSH_PYZ) in joined:
        if "push-async" in args or "get-async" in args:
            return "pgpush", "parent"
        if "worker" in args:
            return "pgpush", "worker"
        return "pgpush", "foreground"
    if str(RUN_DIR) + "/" not in joined:  # another run's (or anyone's) pgBackRest: not ours to sample or kill
        return None
    if comm == "pgbackrest":
        if any(a.endswith(":async") for a in args):
            return "pgbackrest", "parent"
        if any(a.endswith(":local") for a in args):
            return "pgbackrest", "worker"
        if any(a.endswith(":remote") for a in args):
            return "pgbackrest", "remote (repo host)" if uid != procs.user_ids(PG_USER)[0] else "remote (pg host)"
        return "pgbackrest", "foreground"
    if comm == "ssh" and "pgbackrest" in joined:
        return "pgbackrest", "ssh client"
    return None


class MemorySampler:
    """Samples VmHWM/VmRSS of both tools' processes every ``interval`` seconds in a thread."""

    def __init__(self, interval: float = 0.05):
        self.interval = interval
        self.peak: dict[tuple[str, str], int] = {}  # (tool, role) -> max VmHWM kB of one process
        self.total: dict[str, int] = {}  # tool -> max over samples of the summed VmRSS kB (pg host side)
        self._known: dict[int, tuple[int, tuple[str, str] | None]] = {}  # pid -> (ticks seen, class)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> MemorySampler:
        self._thread = threading.Thread(target=self._loop, name="bench-rss", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(5)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._sample()
            except Exception:  # noqa: BLE001 - a sampler never stops the benchmark
                pass
            self._stop.wait(self.interval)

    def _sample(self) -> None:
        totals: dict[str, int] = {}
        seen = set()
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            pid = int(entry)
            seen.add(pid)
            ticks, cls = self._known.get(pid, (0, None))
            if ticks < 4:  # re-read while the process may still be between fork and exec
                try:
                    argv = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
                    with open(f"/proc/{pid}/status") as f:
                        status = f.read()
                except OSError:
                    continue
                fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
                cls = classify(int(fields.get("Uid", "0").split()[0]), fields.get("Name", "").strip(), argv)
                self._known[pid] = (ticks + 1, cls)
            elif cls is None:
                continue
            else:
                try:
                    with open(f"/proc/{pid}/status") as f:
                        status = f.read()
                except OSError:
                    continue
                fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
            if cls is None or "VmHWM" not in fields:
                continue
            hwm = int(fields["VmHWM"].split()[0])
            rss = int(fields.get("VmRSS", "0 kB").split()[0])
            self.peak[cls] = max(self.peak.get(cls, 0), hwm)
            if not cls[1].startswith("remote (repo"):
                totals[cls[0]] = totals.get(cls[0], 0) + rss
        for tool, kb in totals.items():
            self.total[tool] = max(self.total.get(tool, 0), kb)
        for pid in list(self._known):
            if pid not in seen:
                del self._known[pid]

    def report(self, tool: str) -> dict:
        roles = {role: round(kb / 1024, 1) for (t, role), kb in sorted(self.peak.items()) if t == tool}
        return {"peak_mb_by_role": roles, "peak_total_mb": round(self.total.get(tool, 0) / 1024, 1)}


# ----------------------------------------------------------------------------------------------
# WAL sources: a cluster that wrote N segments with archiving paused, then stopped


class WalSource:
    """A stopped cluster whose pg_wal holds ``n`` ready (unarchived) segments of one kind.

    ``kind`` is ``random`` (1 logical message of ~16 MB of /dev/urandom per segment, then a
    switch: incompressible) or ``pgbench`` (pgbench -i then pgbench runs: real WAL, compressible).
    A ``pg_basebackup -X none`` taken before the WAL was written is kept in ``base_backup``.
    """

    def __init__(self, base: Path, kind: str, n: int, with_base_backup: bool = False):
        self.kind, self.n = kind, n
        self.dir = make_dir(base / f"src-{kind}-{n}", mode=0o755)
        self.cluster = PgCluster(self.dir, "pg")
        self.base_backup: Path | None = self.dir / "base" if with_base_backup else None
        self.segments: list[str] = []
        self.ready_segments: list[str] = []

    def build(self) -> WalSource:
        t0 = time.monotonic()
        pg = self.cluster
        pg.init({"archive_mode": "on", "archive_command": "", "max_wal_size": "4GB", "checkpoint_timeout": "30s",
                 "wal_keep_size": 0})
        pg.start()
        if self.base_backup is not None:
            make_dir(self.base_backup, mode=0o700)
            # -X none would wait for the backup's WAL to be archived (archiving is paused here);
            # -X fetch does not wait, and emptying the copy's pg_wal makes it a -X none backup.
            pg.run([pg.bin("pg_basebackup"), "-D", str(self.base_backup), "-X", "fetch", "-c", "fast", "--no-sync",
                    "-h", str(pg.socket_dir), "-p", str(pg.port), "-U", PG_USER], timeout=300)
            for path in (self.base_backup / "pg_wal").iterdir():
                if path.is_file():
                    path.unlink()
            for path in (self.base_backup / "pg_wal" / "archive_status").iterdir():
                path.unlink()
        if self.kind == "random":
            payload = SEG_SIZE - 160 * 1024  # one record that fills the segment but its page headers
            stmt = ("with m as (select pg_logical_emit_message(false, 'bench', "
                    f"pg_read_binary_file('/dev/urandom', 0, {payload})) as lsn) "
                    "select pg_walfile_name(pg_switch_wal()) from m;\n")
            done = 0
            while done < self.n:
                batch = min(32, self.n - done)
                self.segments += pg.sql(stmt * batch, timeout=600).split()
                done += batch
        else:
            scale = max(5, min(40, self.n // 2))
            pg.pgbench_init(scale)
            pg.sql("checkpoint")
            while len(self._ready()) < self.n + 1:
                pg.run([pg.bin("pgbench"), "-n", "-c", "4", "-j", "2", "-T", "4", "-h", str(pg.socket_dir),
                        "-p", str(pg.port), "-U", PG_USER, "postgres"], timeout=120)
            pg.switch_wal()
        pg.stop()
        self.ready_segments = self._ready()
        if self.kind == "pgbench":  # keep exactly n, the last ones written; the earlier ones count as archived
            for seg in self.ready_segments[:-self.n]:
                status = pg.wal_dir / "archive_status"
                os.rename(status / f"{seg}.ready", status / f"{seg}.done")
            self.ready_segments = self._ready()
        self.segments = [s for s in self.ready_segments if len(s) == 24]
        log(f"WAL source {self.kind}: {len(self.segments)} segments ready in {time.monotonic() - t0:.1f}s")
        return self

    def _ready(self) -> list[str]:
        status = self.cluster.wal_dir / "archive_status"
        return sorted(p.name[:-6] for p in status.glob("*.ready"))

    def clone(self, dest_dir: Path, name: str = "pg") -> PgCluster:
        """A copy of the stopped source (same system identifier, same ready WAL), not started."""
        dest_dir.mkdir(parents=True, exist_ok=True)
        chown(dest_dir, PG_USER, 0o755)
        clone = PgCluster(dest_dir, name)
        clone._prepare_common()
        clone.datadir.rmdir() if clone.datadir.exists() else None
        subprocess.run(["cp", "-a", str(self.cluster.datadir), str(clone.datadir)], check=True)
        # The copy carries the source's port and socket dir: point them at the clone's own.
        clone._write_harness_conf({})
        return clone

    def cleanup(self) -> None:
        self.cluster.cleanup()


def wait_file(path: Path, timeout: float, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return True
        time.sleep(interval)
    return path.exists()
