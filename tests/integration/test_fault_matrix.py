"""The fault matrix: every repository type x every fault x WAL (sync and async push), backup, and
async get for the process kills.

Each cell runs real PostgreSQL as the client (archive_command = pgpush push, pgpush backup on
its data directory, or restore_command = pgpush get on a standby fed from the archive), injects
one fault from tests/harness/faults.py, and checks three things:

* nothing acknowledged that is not whole: every WAL file stored under its final name
  decompresses to the SHA-1 its name carries, every segment PostgreSQL was told is archived is
  in the repository, and every backup ``info`` calls DONE passes ``verify``;
* the error code a user expects while the fault lasts (103 for a store that is full, frozen,
  cut or down), as PostgreSQL's own log reports it, in one ``ERROR: [NNN]:`` line, never a
  traceback;
* recovery without a human once the fault is gone: archiving catches up, a later backup is DONE.

Adding a repository type is one line in BACKENDS; adding a fault is one line in FAULTS.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest
from backup_env import backups, pg_opts
from harness import faults, procs
from harness.faults import Fault
from pgpush_env import Pgpush, sha1_file

from pgpush.fsutil import TMP_SUFFIX

pytestmark = pytest.mark.integration

SEG_MB = 4  # small segments, big enough for a transfer to be caught mid-file
SMALL_FS_MB = 48  # room for a few segments and a backup of the small cluster
HOST_TIMEOUT = 3
ARCHIVE_TIMEOUT = 10
OPTIONS = {"repo1-host-timeout": HOST_TIMEOUT, "archive-timeout": ARCHIVE_TIMEOUT, "process-max": 2}
FAILURE_WAIT = ARCHIVE_TIMEOUT + 4 * HOST_TIMEOUT + 15  # how long a persistent fault may take to show
BACKUP_DEADLINE = 45  # a backup that has not ended by then waits without an end
STORE_DOWN = frozenset({103})
ANY_ERROR = frozenset(range(2, 126))
KILL_MODES = ("async", "backup", "get")  # "get": async restore_command of a standby fed from the archive


FAULTS = [
    Fault("storage-full", "fill", False, "transfer", lambda b, _pid: b.fill(), lambda b: b.unfill(), STORE_DOWN),
    Fault("storage-frozen", "freeze", True, "transfer", lambda b, _pid: b.freeze(), lambda b: b.thaw(), STORE_DOWN),
    Fault("connection-cut", "cut", True, "transfer", lambda b, _pid: b.cut(), faults.no_heal, STORE_DOWN),
    Fault("worker-killed", "", True, "worker", faults.kill_process, faults.no_heal, ANY_ERROR, KILL_MODES),
    Fault("parent-killed", "", True, "worker", faults.kill_parent, faults.no_heal, ANY_ERROR, KILL_MODES),
    Fault("host-rebooted", "down", False, "transfer", lambda b, _pid: b.down(), lambda b: b.up(), STORE_DOWN),
]
BACKENDS = {
    "posix": lambda req, small: faults.PosixBackend(req.getfixturevalue("work_dir"), small),
    "sftp": lambda req, small: faults.SftpBackend(req.getfixturevalue("sshd"), small),
    "s3": lambda req, small: faults.S3Backend(None if small else req.getfixturevalue("seaweed"), small,
                                              req.getfixturevalue("work_dir")),
}
# One xdist group per repository type: a cell freezes or kills its store, so the cells of one type
# run one after another (on the worker that owns that SeaweedFS), and the three types side by side.
CELLS = [pytest.param(b, f, m, id=f"{b}-{f.name}-{m}", marks=pytest.mark.xdist_group(f"fault_matrix_{b}"))
         for b in BACKENDS for f in FAULTS for m in f.modes]


@pytest.fixture
def backend(request, backend_name: str, fault: Fault):
    made = BACKENDS[backend_name](request, SMALL_FS_MB if fault.needs == "fill" else None)
    if made.why_not(fault.needs):
        made.close()
        pytest.skip(made.why_not(fault.needs))
    try:
        yield made
    finally:
        made.close()


def _setup(pg_factory, pgpush_cmd, work_dir, backend, mode: str):
    pp = Pgpush(pgpush_cmd, work_dir, repo=backend.options(), archive_async="y" if mode == "async" else "n",
                **{k.replace("-", "_"): v for k, v in OPTIONS.items()})
    pg = pg_factory("pg", wal_segsize_mb=SEG_MB, conf={
        "archive_mode": "on", "archive_command": "", "wal_keep_size": "1GB", "max_wal_size": "1GB"})
    pp.stanza_create(pg)
    pg.set_conf({"archive_command": pp.archive_command()})
    pg.reload()
    pg.wait_archived(pg.switch_wal(), timeout=60)
    return pp, pg


def _candidates(work_dir: Path, mode: str, victim: str, backup_pid: int | None = None):
    """The processes a fault watches: which pgpush process moves the data in this mode."""
    if mode == "backup":
        kids = lambda: procs.children_of(backup_pid)  # noqa: E731 - the pool's workers
        return kids if victim == "worker" else lambda: [backup_pid, *kids()]
    command = {("sync", "transfer"): "push", ("async", "transfer"): "worker", ("async", "worker"): "worker"}
    return lambda: faults.pgpush_pids(work_dir, command[(mode, victim)])


def _failures(pg, since: int) -> list[int]:
    """Exit codes of the archive_command calls PostgreSQL saw fail since log offset ``since``."""
    text = pg.log_file.read_bytes()[since:].decode(errors="replace")
    return [int(c) for c in re.findall(r"archive command failed with exit code (\d+)", text)]


def _wait_for_code(pg, since: int, wanted: frozenset[int], spool_out: Path | None) -> None:
    """Wait until PostgreSQL's archive_command has failed and the verdict carries one of ``wanted``.

    The verdict is the exit code PostgreSQL saw or, in async mode, the code heading a spool
    ``.error`` file (what the next foreground call reports).  After three failures in a row
    PostgreSQL's archiver sleeps up to a minute unless a new segment wakes it: a WAL switch
    now and then keeps it trying."""
    deadline = time.monotonic() + FAILURE_WAIT
    next_switch = time.monotonic() + 3
    while True:
        failures = _failures(pg, since)
        verdicts = set(failures) | _spool_codes(spool_out)
        if failures and verdicts & wanted:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"no failure with a code in {sorted(wanted)} after {FAILURE_WAIT}s: "
                                 f"PostgreSQL saw {failures}, the spool says {sorted(_spool_codes(spool_out))}")
        if time.monotonic() > next_switch:
            pg.switch_wal()
            next_switch = time.monotonic() + 3
        time.sleep(0.2)


def _spool_codes(spool_out: Path | None) -> set[int]:
    """Codes heading the async parent's ``.error`` and ``global.error`` files."""
    codes = set()
    for path in spool_out.glob("*.error") if spool_out is not None else []:
        try:
            codes.add(int(path.read_text().split("\n", 1)[0]))
        except (OSError, ValueError):
            continue  # being replaced, or not written yet
    return codes


def _assert_clean_errors(text: str) -> None:
    """pgpush's stderr (raw lines in PostgreSQL's log): one ``ERROR: [NNN]:`` line per failure, no traceback."""
    assert "Traceback" not in text, text[-3000:]
    bad = [line for line in text.splitlines() if line.startswith("ERROR") and not re.match(r"ERROR: \[\d{3}\]: ", line)]
    assert not bad, bad


def _assert_archive_whole(pp, pg, backend, segments: list[str]) -> None:
    """Every stored WAL file is whole; every segment PostgreSQL was told is archived is there."""
    with backend.reader() as storage:
        stored = faults.check_archive(storage)
    for seg in segments:
        assert seg in stored, f"{seg} acknowledged to PostgreSQL but not in the repository"
        if (pg.wal_dir / seg).exists():
            assert stored[seg] == sha1_file(pg.wal_dir / seg), seg
    with backend.reader() as storage:
        root = getattr(storage, "root", None)  # posix and sftp: the repository's disk, read directly
    if root is not None:  # a copy cut off mid-file is removed by the next attempt at that file
        assert sorted(str(p) for p in Path(root, "archive").rglob(f"*{TMP_SUFFIX}*")) == []


@pytest.mark.parametrize(("backend_name", "fault", "mode"), CELLS)
def test_fault_cell_acknowledges_only_whole_files_and_recovers(
        request, pg_factory, pgpush_cmd, work_dir, backend, backend_name, fault, mode):
    pp, pg = _setup(pg_factory, pgpush_cmd, work_dir, backend, mode)
    try:
        if mode == "backup":
            _backup_cell(pp, pg, backend, fault, work_dir)
        elif mode == "get":
            _get_cell(pp, pg, backend, fault, work_dir, pg_factory)
        else:
            _wal_cell(pp, pg, backend, fault, mode, work_dir)
    finally:
        faults.kill_leftovers(work_dir)


STRIKE_ROUNDS = 3  # transfers a mid-file fault may wait for before the cell fails


def _strike_mid_file(fault: Fault, backend, candidates, directory: Path) -> faults.MidFile:
    def action(pid: int) -> None:
        fault.inject(backend, pid)

    return faults.MidFile(candidates, directory, action, timeout=30)


def _wal_cell(pp, pg, backend, fault: Fault, mode: str, work_dir: Path) -> None:
    since = pg.log_file.stat().st_size
    strike = None
    try:
        if fault.mid_file:
            strike = _strike_mid_file(fault, backend, _candidates(work_dir, mode, fault.victim), pg.wal_dir)
        else:
            fault.inject(backend, 0)
        segments = pg.generate_wal(2, random_payload=True, payload_bytes=(SEG_MB - 1) << 20)
        for _again in range(STRIKE_ROUNDS - 1):
            # A file is read (and compressed) in tens of milliseconds: on a busy machine the watcher's
            # thread may not run in that window. Missed, more WAL gives it another transfer to catch;
            # the cell still fails when none is caught in STRIKE_ROUNDS rounds.
            if strike is None or strike.result(35) is not None:
                break
            strike = _strike_mid_file(fault, backend, _candidates(work_dir, mode, fault.victim), pg.wal_dir)
            segments += pg.generate_wal(2, random_payload=True, payload_bytes=(SEG_MB - 1) << 20)
        if strike is not None:
            assert strike.result(35) is not None, f"no pgpush {fault.victim} process caught transferring WAL"
        if fault.lasts:
            _wait_for_code(pg, since, fault.codes, pp.out_dir if mode == "async" else None)
    finally:
        if strike is not None:
            strike.stop()
        fault.heal(backend)
    codes = _failures(pg, since)
    tolerated = fault.codes | ({82} if mode == "async" else set())  # the foreground may give up first
    assert set(codes) <= tolerated, f"exit codes seen by PostgreSQL: {codes}"
    last = pg.switch_wal()
    pg.wait_archived(last, timeout=120)  # recovery without a human
    _assert_archive_whole(pp, pg, backend, segments + [last])
    _assert_clean_errors(pg.log_file.read_bytes()[since:].decode(errors="replace"))


def _get_cell(pp, pg, backend, fault: Fault, work_dir: Path, pg_factory) -> None:
    """A standby replaying from the archive with async get; a get worker (or its parent) killed mid-file."""
    base = work_dir / "base"
    pg.run([pg.bin("pg_basebackup"), "-D", str(base), "-X", "none", "-c", "fast", *pg.conn_args()])
    pg.generate_wal(3, random_payload=True, payload_bytes=(SEG_MB - 1) << 20)
    target = pg.sql("select pg_current_wal_insert_lsn()")
    pg.wait_archived(pg.switch_wal(), timeout=60)
    standby = pg_factory("standby", init=False)
    standby._prepare_common()
    os.rename(base, standby.datadir)
    standby.set_conf({"port": standby.port, "unix_socket_directories": str(standby.socket_dir),
                      "archive_mode": "off", "hot_standby": True,
                      "restore_command": pp.restore_command(archive_async="y")})
    (standby.datadir / "standby.signal").touch()
    strike = _strike_mid_file(fault, backend, _candidates(work_dir, "async", fault.victim), pp.in_dir)
    try:
        standby.start(timeout=60)
        assert strike.result(35) is not None, f"no pgpush get {fault.victim} process caught fetching WAL"
    finally:
        strike.stop()
    standby.wait_replayed(target, timeout=90)  # every WAL file handed over was whole, or replay stops
    with backend.reader() as storage:
        stored = faults.check_archive(storage)
    for path in pp.in_dir.iterdir():  # what the spool holds under a final name is whole too
        if path.name in stored:
            assert sha1_file(path) == stored[path.name], path
    log = standby.log_file.read_text(errors="replace")
    _assert_clean_errors(log)
    # A killed worker or parent is no answer about a segment: restore_command never failed (any
    # failure would have ended an archive recovery as if the archive were exhausted).
    assert "ERROR: [" not in log, [line for line in log.splitlines() if line.startswith("ERROR: [")]


def _backup_cell(pp, pg, backend, fault: Fault, work_dir: Path) -> None:
    argv = ["runuser", "-u", "postgres", "--", *pp.argv("backup", "--type=full", "--wait",
                                                          "--wait-timeout=20", *pg_opts(pg))]
    out_file, err_file = work_dir / "backup.out", work_dir / "backup.err"
    strike = proc = None
    try:
        if not fault.mid_file:
            fault.inject(backend, 0)
        with open(out_file, "w") as out, open(err_file, "w") as err:
            proc = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        if fault.mid_file:
            candidates = _candidates(work_dir, "backup", fault.victim, _backup_runner(proc.pid))
            strike = _strike_mid_file(fault, backend, candidates, pg.datadir)
            assert strike.result(35) is not None, f"no backup {fault.victim} process caught reading the data"
        try:
            proc.wait(timeout=BACKUP_DEADLINE)
        except subprocess.TimeoutExpired:
            pytest.fail(f"backup under {fault.name} still running after {BACKUP_DEADLINE}s (a wait without an end)")
        _assert_no_orphans(work_dir)
    finally:
        if strike is not None:
            strike.stop()
        fault.heal(backend)
        if proc is not None and proc.poll() is None:
            procs.kill_tree(proc.pid, sig=9)
            proc.wait(timeout=10)
    _assert_backup_verdict(fault, proc.returncode, out_file.read_text(), err_file.read_text())
    res = pp.run("backup", "--type=full", "--wait", "--wait-timeout=60", *pg_opts(pg), timeout=BACKUP_DEADLINE)
    assert res.returncode == 0, f"the backup after {fault.name} failed:\n{res.stdout}\n{res.stderr}"
    assert "DONE" in {b["status"] for b in backups(pp).values()}
    _assert_usable_backups_verify(pp)  # the interrupted backup too, if info calls it DONE
    with backend.reader() as storage:
        faults.check_archive(storage)


def _assert_no_orphans(work_dir: Path, grace: float = 5) -> None:
    """Once the backup command has ended, none of its workers may live on (they would hold the repo)."""
    try:
        procs.wait_for(lambda: not faults.pgpush_pids(work_dir, "backup"), grace, 0.1, "orphans to exit")
    except TimeoutError:
        left = {pid: (faults.parent_of(pid), procs.pid_state(pid), _wchan(pid))
                for pid in faults.pgpush_pids(work_dir, "backup")}
        pytest.fail(f"backup processes {left} (pid: parent, state, wchan) still run {grace:g}s after "
                    "the backup command ended")


def _wchan(pid: int) -> str:
    """Where in the kernel a process waits (what an orphan is stuck on)."""
    try:
        return Path(f"/proc/{pid}/wchan").read_text()
    except OSError:
        return "?"


def _assert_backup_verdict(fault: Fault, code: int, out: str, err: str) -> None:
    """The interrupted backup's exit code and its one ``ERROR: [NNN]:`` line (or 137: it was the one killed)."""
    _assert_clean_errors(err)  # the killed backup's orphaned workers must not print tracebacks either
    if fault.inject is faults.kill_parent:
        assert code == 128 + 9, f"backup exited {code}:\n{err}"  # runuser reports its child's SIGKILL
    elif code > 0:  # a fault that struck after the last file may still end DONE (0)
        expected = fault.codes | ({3} if not fault.lasts else set())
        assert code in expected, f"backup exited {code}:\n{err}"
        assert len([line for line in err.splitlines() if line.startswith("ERROR")]) == 1, err
    elif fault.lasts:
        pytest.fail(f"backup exited 0 under {fault.name}:\n{out}\n{err}")


def _backup_runner(runuser_pid: int, timeout: float = 10) -> int:
    """The pgpush backup process under ``runuser`` (its child)."""
    found: list[int] = []

    def child() -> bool:
        found[:] = procs.children_of(runuser_pid)
        return bool(found)

    procs.wait_for(child, timeout, 0.005, "the backup process to start")
    return found[0]


def _assert_usable_backups_verify(pp) -> None:
    """A backup ``info`` calls DONE must be whole: ``verify`` re-reads the repository."""
    if any(b["status"] == "DONE" for b in backups(pp).values()):
        res = pp.run("verify", timeout=120)
        assert res.returncode == 0, f"verify failed with a DONE backup in the repository:\n{res.stdout}\n{res.stderr}"
