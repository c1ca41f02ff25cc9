"""Asynchronous push (docs/architecture.md, "Asynchronous push and get") with PostgreSQL as the client and the real sshd."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from harness import faults, procs
from harness.pg import DEFAULT_BIN_DIR, bin_dir_for
from pgpush_env import Pgpush, archived_files, sha1_file

from pgpush.fsutil import TMP_SUFFIX

pytestmark = pytest.mark.integration


def pgpush_processes(kind: str, marker: Path) -> list[tuple[int, str]]:
    """(pid, cmdline) of this test's live pgpush processes (their options name ``marker``) running ``kind``.

    Tests run in parallel: never look at, let alone kill, another test's processes."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = Path(f"/proc/{entry}/status").read_text().split("State:")[1].split()[0]
        except (OSError, IndexError):
            continue
        if "pgpush" in cmd and f" {kind} " in f" {cmd} " and f"{marker}/" in cmd and state != "Z":
            out.append((int(entry), cmd))
    return out


def setup_async(pg_factory, pgpush_cmd, work_dir, repo=None, bin_dir=DEFAULT_BIN_DIR, **opts):
    pp = Pgpush(pgpush_cmd, work_dir, repo=repo, archive_async="y", **opts)
    pg = pg_factory("pg", conf={"archive_mode": "on", "archive_command": "", "wal_keep_size": "2GB",
                                "max_wal_size": "1GB"}, bin_dir=bin_dir)
    pp.stanza_create(pg)
    pg.set_conf({"archive_command": pp.archive_command()})
    pg.reload()
    return pp, pg


@pytest.mark.parametrize(("major", "process_max"), [(15, 1), (15, 4), (18, 4)])
def test_pgbench_all_wal_arrives_and_workers_share_exec_id(pg_factory, sshd, pgpush_cmd, work_dir, major, process_max):
    pp, pg = setup_async(pg_factory, pgpush_cmd, work_dir, repo=sshd.pgpush_options(), process_max=process_max,
                         bin_dir=bin_dir_for(major))
    pg.pgbench_init(scale=1)
    seen: dict[str, set[int]] = {}
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            for pid, cmd in pgpush_processes("worker", work_dir):
                m = re.search(r"--exec-id=(\d+-[0-9a-f]{8})", cmd)
                if m:
                    seen.setdefault(m.group(1), set()).add(pid)
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        segments = pg.generate_wal(24, random_payload=True)
        pg.pgbench(transactions=300, clients=2)
        last = pg.switch_wal()
        pg.wait_archived(last, timeout=180)
    finally:
        stop.set()
        watcher.join()
    archived = archived_files(sshd.repo_dir)
    for name in segments + [last]:
        assert name in archived
        assert archived[name] == sha1_file(pg.wal_dir / name), name
    assert max(len(pids) for pids in seen.values()) == process_max, seen
    log = pp.log_text("archive-push-async")
    exec_id = max(seen, key=lambda k: len(seen[k]))
    assert f"{exec_id}   INFO: pushed WAL file" in log
    assert exec_id.split("-")[0] not in {str(p) for p in seen[exec_id]}  # workers are not the parent


def test_backup_host_stopped_global_error_then_resumes(pg_factory, sshd, pgpush_cmd, work_dir):
    pp, pg = setup_async(pg_factory, pgpush_cmd, work_dir, repo=sshd.pgpush_options(), archive_timeout=5,
                         repo1_host_timeout=5)
    first = pg.switch_wal()
    pg.wait_archived(first, timeout=60)
    sshd.stop()
    wal_before = len(list(pg.wal_dir.glob("0*")))
    segs = pg.generate_wal(3)
    global_error = pp.out_dir / "global.error"
    deadline = time.time() + 60
    while not global_error.exists() and time.time() < deadline:
        time.sleep(0.2)
    text = global_error.read_text()
    assert text.startswith("103\nunable to find a valid repository:\nrepo1: [Errno 111] Connection refused")
    assert f"{sshd.user}@{sshd.host}:{sshd.port}" in text
    deadline = time.time() + 30
    while pg.archiver_stats()["failed_count"] == 0 and time.time() < deadline:
        time.sleep(0.2)
    assert pg.archiver_stats()["failed_count"] > 0
    assert len(list(pg.wal_dir.glob("0*"))) > wal_before or all((pg.wal_dir / s).exists() for s in segs)
    sshd.restart()
    pg.wait_archived(segs[-1], timeout=120)
    deadline = time.time() + 10
    while global_error.exists() and time.time() < deadline:
        time.sleep(0.2)
    assert not global_error.exists()


def test_queue_max_drops_wal_loudly_and_records_the_hole(pg_factory, sshd, pgpush_cmd, work_dir):
    pp, pg = setup_async(pg_factory, pgpush_cmd, work_dir, repo=sshd.pgpush_options(), archive_timeout=3,
                         repo1_host_timeout=3, archive_push_queue_max="48MB")
    first = pg.switch_wal()
    pg.wait_archived(first, timeout=60)
    sshd.stop()
    segs = pg.generate_wal(6)
    msg = "dropped WAL file '{}' because archive queue exceeded 48MB"
    # The whole queue is dropped each time it passes 48MB; what came after the last drop
    # (under the limit) waits for the host.  When the parent looks decides which is which.
    deadline = time.time() + 120
    while time.time() < deadline:
        log = pp.log_text("archive-push-async")
        dropped = [s for s in segs if msg.format(s) in log]
        if len(dropped) >= 3:
            break
        time.sleep(0.3)
    assert len(dropped) >= 3, log
    assert dropped == segs[: len(dropped)]
    waiting = segs[len(dropped):]
    assert len(waiting) * 16 <= 48
    pg.wait_archived(dropped[-1], timeout=120)  # acknowledged: dropped, not archived
    log = pp.log_text("archive-push-async")
    fg_log = pp.log_text("archive-push")
    for s in dropped:
        assert f"WARN: {msg.format(s)}" in log
        assert msg.format(s) in fg_log
    # pg_wal stops growing: the dropped segments are recycled by PostgreSQL
    assert not any((pg.wal_dir / "archive_status" / f"{s}.ready").exists() for s in dropped)
    sshd.restart()
    nxt = pg.switch_wal()
    pg.wait_archived(nxt, timeout=120)
    assert set(waiting) <= set(archived_files(sshd.repo_dir))  # under the limit: kept, and pushed once back
    markers = {p.name[:-8] for p in sshd.repo_dir.rglob("*.dropped")}
    deadline = time.time() + 30
    while not set(dropped) <= markers and time.time() < deadline:
        time.sleep(0.5)
        markers = {p.name[:-8] for p in sshd.repo_dir.rglob("*.dropped")}
    assert set(dropped) <= markers
    assert not set(dropped) & set(archived_files(sshd.repo_dir))


def test_queue_max_ok_file_content_exact(pg_factory, pgpush_cmd, work_dir):
    """With the repo unusable, the .ok of a dropped segment holds exactly the two documented lines.

    PostgreSQL's archiver is off (we play it), so nothing acknowledges the segments and the
    parent keeps their .ok files for us to read."""
    pp, pg = setup_async(pg_factory, pgpush_cmd, work_dir, archive_timeout=10, archive_push_queue_max="16MB")
    pg.set_conf({"archive_command": ""})
    pg.reload()
    segs = pg.generate_wal(3)
    for s in segs:
        (pg.wal_dir / "archive_status" / f"{s}.ready").touch()
    os.chmod(work_dir / "repo" / "archive", 0)
    try:
        res = pp.run("push", f"pg_wal/{segs[0]}", cwd=pg.datadir)
    finally:
        os.chmod(work_dir / "repo" / "archive", 0o750)
    assert res.returncode == 0, res.stderr
    msg = "dropped WAL file '{}' because archive queue exceeded 16MB"
    assert f"WARN: {msg.format(segs[0])}" in res.stderr
    for s in segs:
        assert (pp.out_dir / f"{s}.ok").read_text() == "0\n" + msg.format(s)


def test_backup_host_frozen_errors_within_timeout(pg_factory, sshd, pgpush_cmd, work_dir):
    pp, pg = setup_async(pg_factory, pgpush_cmd, work_dir, repo=sshd.pgpush_options(), archive_timeout=30,
                         repo1_host_timeout=3)
    first = pg.switch_wal()
    pg.wait_archived(first, timeout=60)
    pg.set_conf({"archive_command": ""})
    pg.reload()
    sshd.freeze()  # before the WAL exists: a lingering parent must not push it first
    seg = pg.generate_wal(1)[0]
    try:
        start = time.monotonic()
        res = pp.run("push", f"pg_wal/{seg}", cwd=pg.datadir, timeout=60)
        elapsed = time.monotonic() - start
    finally:
        sshd.thaw()
    assert res.returncode == 103, res.stderr
    assert elapsed < 25, elapsed  # repo1-host-timeout=3, plus process start-up on a loaded machine
    assert "timeout after 3s" in res.stderr or "Error reading SSH protocol banner" in res.stderr, res.stderr
    log = pp.log_text("archive-push-async")
    assert "Traceback" not in log and "Exception (client)" not in log, log  # paramiko's own lines stay out
    assert pp.run("push", f"pg_wal/{seg}", cwd=pg.datadir).returncode == 0


def test_twenty_foreground_calls_start_exactly_one_parent(pg_factory, sshd, pgpush_cmd, work_dir):
    pp, pg = setup_async(pg_factory, pgpush_cmd, work_dir, repo=sshd.pgpush_options(), process_max=2)
    pg.set_conf({"archive_command": ""})
    pg.reload()
    segs = pg.generate_wal(20)
    for s in segs:  # PostgreSQL's own archiver is off: we play it, 20 at once
        (pg.wal_dir / "archive_status" / f"{s}.ready").touch()
    parents: set[int] = set()
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            parents.update(pid for pid, _ in pgpush_processes("push-async", work_dir))
            time.sleep(0.01)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    procs = [subprocess.Popen(["runuser", "-u", "postgres", "--"] + pp.argv("push", f"pg_wal/{s}"),
                              cwd=pg.datadir, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for s in segs]
    codes = [p.wait(timeout=120) for p in procs]
    stop.set()
    watcher.join()
    assert codes == [0] * 20
    assert len(parents) == 1, parents
    begins = pp.log_text("archive-push-async").count("archive-push-async command begin")
    assert begins == 1
    assert set(segs) <= set(archived_files(sshd.repo_dir))


def _temporary_copies(repo_dir: Path) -> dict[Path, tuple[int, int]]:
    """The temporary copies in the repository: (pid of the process writing it, size so far)
    (storage.base.tmp_name: ``FINAL.pgpush.tmp.SPACE-PID.RANDOM``)."""
    found = {}
    for path in repo_dir.rglob(f"*{TMP_SUFFIX}.*"):
        m = re.search(rf"{re.escape(TMP_SUFFIX)}\.[0-9a-f?]+-(\d+)\.[0-9a-f]+$", path.name)
        try:
            size = path.stat().st_size
        except FileNotFoundError:  # renamed meanwhile: complete
            continue
        if m:
            found[path] = (int(m.group(1)), size)
    return found


@pytest.mark.parametrize("victim", ["parent", "worker"])
def test_kill_9_mid_transfer_recovers_and_acknowledges_only_durable(pg_factory, sshd, pgpush_cmd, work_dir, victim):
    """A worker (or its parent) SIGKILLed while the worker writes a segment into the repository:
    only segments stored whole are acknowledged, the next calls archive the rest, and no temporary
    copy is left on the backup host (a killed writer's is removed by the next put of the name)."""
    pp, pg = setup_async(pg_factory, pgpush_cmd, work_dir, repo=sshd.pgpush_options(), process_max=2,
                         compress_type="gz", compress_level=9)
    pg.set_conf({"archive_command": ""})
    pg.reload()
    segs = pg.generate_wal(8, random_payload=True)
    for s in segs:
        (pg.wal_dir / "archive_status" / f"{s}.ready").touch()
    fg = subprocess.Popen(["runuser", "-u", "postgres", "--"] + pp.argv("push", f"pg_wal/{segs[-1]}"),
                          cwd=pg.datadir, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    # caught mid-file: a worker of this test writing a temporary copy not half done (16 MB of random WAL)
    deadline = time.time() + 30
    caught = None
    while caught is None:
        assert time.time() < deadline, "no worker was seen writing into the repository"
        workers = {pid for pid, _cmd in pgpush_processes("worker", work_dir)}
        caught = next(((path, pid) for path, (pid, size) in _temporary_copies(sshd.repo_dir).items()
                       if pid in workers and size < 8 << 20), None)
        time.sleep(0.01)
    copy, writer = caught
    generation = {pid for pid, _cmd in pgpush_processes("worker", work_dir)}
    killed = writer if victim == "worker" else faults.parent_of(writer)
    assert victim == "worker" or killed in {pid for pid, _cmd in pgpush_processes("push-async", work_dir)}
    os.kill(killed, signal.SIGKILL)
    if victim == "worker":
        assert copy.exists()  # what the kill left: the copy of a writer that is gone
    fg.wait(timeout=120)
    # every .ok must be backed by a complete, verified file in the repo
    def check_acknowledged():
        archived = archived_files(sshd.repo_dir)
        for ok in pp.out_dir.glob("*.ok"):
            name = ok.name[:-3]
            assert name in archived, name
            assert archived[name] == sha1_file(pg.wal_dir / name)
    check_acknowledged()
    # the next calls recover and everything arrives
    for s in segs:
        res = pp.run("push", f"pg_wal/{s}", cwd=pg.datadir)
        assert res.returncode == 0, res.stderr
    check_acknowledged()
    assert set(segs) <= set(archived_files(sshd.repo_dir))
    # the workers of the killed generation (a killed parent's finish their file) are gone: no writer
    # of that time is left, so every temporary copy still there would stay for ever
    procs.wait_for(lambda: not any(procs.pid_alive(pid) for pid in generation), 60,
                   message="the workers of the killed generation to exit")
    assert sorted(p.name for p in sshd.repo_dir.rglob(f"*{TMP_SUFFIX}*")) == []
