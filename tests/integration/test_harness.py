"""Tests for the test harness itself (real PostgreSQL, real sshd). Keep these fast."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import time

import paramiko
import pytest
from harness import procs
from harness.pg import PgCluster

SEGMENT_SIZE = 16 * 1024 * 1024

# ---------------------------------------------------------------------------------------------
# procs


def test_pid_alive_treats_zombies_as_dead():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    procs.wait_for(lambda: procs.pid_state(child.pid) == "Z", 10, message="child to become a zombie")
    assert not procs.pid_alive(child.pid)
    os.kill(child.pid, 0)  # kill -0 still "succeeds" on a zombie
    child.wait()
    assert not procs.pid_alive(child.pid)
    assert procs.pid_alive(os.getpid())


def test_stop_pid_escalates_to_sigkill():
    child = subprocess.Popen(
        [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"]
    )
    time.sleep(0.2)
    start = time.monotonic()
    assert procs.stop_pid(child.pid, timeout=0.5)
    assert time.monotonic() - start < 5
    assert not procs.pid_alive(child.pid)


def test_run_as_uses_runuser_and_root_cwd(tmp_path):
    out = procs.run_as("postgres", ["sh", "-c", "id -un; pwd"], cwd="/").stdout.split()
    assert out == ["postgres", "/"]
    with pytest.raises(procs.CommandError, match="boom"):
        procs.run_as("postgres", "echo boom >&2; exit 3")
    port = procs.free_port()
    assert 1024 <= port <= 65535


# ---------------------------------------------------------------------------------------------
# PostgreSQL


def test_cluster_sql_wal_and_real_archive_command(pg_cluster: PgCluster, work_dir):
    assert pg_cluster.is_running()
    assert pg_cluster.major == 15
    assert pg_cluster.sql("select 1 + 1") == "2"
    assert pg_cluster.sql_rows("select 1, 'a' union all select 2, 'b'") == [["1", "a"], ["2", "b"]]
    assert pg_cluster.sql("show archive_mode") == "on"
    assert pg_cluster.system_identifier() > 0
    assert f"port={pg_cluster.port}" in pg_cluster.conninfo

    archive = procs.make_tmp_dir(work_dir, "archive")
    pg_cluster.set_conf({"archive_command": f"cp %p {archive}/%f"})
    pg_cluster.reload()
    assert pg_cluster.sql("show archive_command") == f"cp %p {archive}/%f"

    before = pg_cluster.archiver_stats()
    segments = pg_cluster.generate_wal(3)
    assert len(segments) == 3 and segments == sorted(segments) and len(set(segments)) == 3
    assert pg_cluster.current_wal_segment() > segments[-1]
    stats = pg_cluster.wait_archived(segments[-1], timeout=30)
    assert stats["archived_count"] >= before["archived_count"] + 3
    assert stats["failed_count"] == 0
    for seg in segments:
        assert (archive / seg).stat().st_size == SEGMENT_SIZE

    switched = pg_cluster.switch_wal()
    assert switched > segments[-1]
    pg_cluster.wait_archived(switched, timeout=30)
    assert (archive / switched).exists()


def test_wait_archived_times_out_with_stats(pg_cluster: PgCluster):
    pg_cluster.set_conf({"archive_command": "false"})
    pg_cluster.reload()
    seg = pg_cluster.switch_wal()
    with pytest.raises(TimeoutError, match="failed_count"):
        pg_cluster.wait_archived(seg, timeout=1)


def test_standby_streams_replays_and_archives(pg_cluster: PgCluster, work_dir):
    standby_archive = procs.make_tmp_dir(work_dir, "standby-archive")
    standby = pg_cluster.make_standby(conf={"archive_command": f"cp %p {standby_archive}/%f"})
    assert standby.is_running() and standby.port != pg_cluster.port
    assert standby.sql("select pg_is_in_recovery()") == "t"
    assert standby.sql("show archive_mode") == "always"
    assert standby.system_identifier() == pg_cluster.system_identifier()

    pg_cluster.sql("create table t (i int); insert into t select generate_series(1, 100)")
    segments = pg_cluster.generate_wal(2)
    standby.wait_replayed(timeout=30)
    assert standby.sql("select count(*) from t") == "100"
    standby.wait_archived(segments[-1], timeout=30)
    assert (standby_archive / segments[-1]).stat().st_size == SEGMENT_SIZE


def test_factory_fresh_clusters_and_cleanup(pg_factory):
    a = pg_factory("a", start=False)
    b = pg_factory("b", start=False)
    c = pg_factory("c", start=False, fresh=True)
    assert a.system_identifier() == b.system_identifier()  # template copies share it
    assert c.system_identifier() != a.system_identifier()

    a.start()
    pid = a.pid
    assert procs.pid_alive(pid)
    a.kill()  # crash
    assert not procs.pid_alive(pid) and not a.is_running()
    a.start()
    assert a.sql("select 42") == "42"
    a.cleanup()
    assert not a.is_running()


# ---------------------------------------------------------------------------------------------
# sshd


def _connect(server, timeout=5, known_hosts=None) -> paramiko.SSHClient:
    client = paramiko.SSHClient()
    client.load_host_keys(str(known_hosts or server.known_hosts))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(
        server.host,
        port=server.port,
        username=server.user,
        key_filename=str(server.key_file),
        look_for_keys=False,
        allow_agent=False,
        timeout=timeout,
        banner_timeout=timeout,
        auth_timeout=timeout,
    )
    return client


def test_sshd_key_login_sftp_and_extensions(sshd):
    extensions = sshd.verify()
    assert "posix-rename@openssh.com" in extensions and "fsync@openssh.com" in extensions

    client = _connect(sshd)
    sftp = client.open_sftp()
    sftp.mkdir(f"{sshd.repo_dir}/archive")
    with sftp.open(f"{sshd.repo_dir}/archive/f", "wb") as f:
        f.write(b"data")
    assert sftp.listdir(str(sshd.repo_dir)) == ["archive"]
    client.close()
    assert (sshd.repo_dir / "archive" / "f").stat().st_uid == procs.user_ids(sshd.user)[0]

    opts = sshd.pgpush_options()
    assert opts["repo1-type"] == "sftp" and opts["repo1-host-port"] == str(sshd.port)
    assert opts["repo1-path"] == str(sshd.repo_dir)
    key_stat = sshd.key_file.stat()
    assert key_stat.st_uid == procs.user_ids("postgres")[0] and stat.S_IMODE(key_stat.st_mode) == 0o600


def test_sshd_usable_by_postgres_and_rejects_unknown_host(sshd, work_dir):
    # archive_command runs as postgres: it must be able to use the key and known_hosts.
    out = procs.run_as(
        "postgres",
        [
            "ssh",
            "-i",
            str(sshd.key_file),
            "-o",
            f"UserKnownHostsFile={sshd.known_hosts}",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            "-p",
            str(sshd.port),
            f"{sshd.user}@{sshd.host}",
            "id -un",
        ],
    ).stdout.strip()
    assert out == sshd.user

    empty = work_dir / "empty_known_hosts"
    empty.write_text("")
    with pytest.raises(paramiko.SSHException):
        _connect(sshd, known_hosts=empty)


def test_sshd_stop_refuses_and_restart_works(sshd):
    client = _connect(sshd)
    sftp = client.open_sftp()
    sftp.listdir(str(sshd.repo_dir))
    port, old_pid = sshd.port, sshd.pid

    sshd.stop()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((sshd.host, port), timeout=2).close()
    with pytest.raises((OSError, EOFError, paramiko.SSHException)):
        sftp.listdir(str(sshd.repo_dir))  # existing session died with the host
    client.close()
    assert not procs.pid_alive(old_pid)

    sshd.restart()
    assert sshd.port == port and sshd.pid != old_pid
    client = _connect(sshd)  # same host key: known_hosts still matches
    assert client.open_sftp().listdir(str(sshd.repo_dir)) == []
    client.close()


def test_sshd_freeze_hangs_and_thaw_recovers(sshd):
    client = _connect(sshd)
    sftp = client.open_sftp()
    sftp.listdir(str(sshd.repo_dir))

    sshd.freeze()
    try:
        socket.create_connection((sshd.host, sshd.port), timeout=2).close()  # TCP still accepts
        start = time.monotonic()
        with pytest.raises((paramiko.SSHException, OSError, EOFError)):
            _connect(sshd, timeout=2)
        assert time.monotonic() - start < 3.5
    finally:
        sshd.thaw()

    assert sftp.listdir(str(sshd.repo_dir)) == []  # session opened before the freeze survives
    client.close()
    client = _connect(sshd)
    client.open_sftp().listdir(str(sshd.repo_dir))
    client.close()


def test_orphaned_session_zombies_are_reaped(sshd):
    """sshd's per-connection processes are orphaned to us (subreaper) and must not pile up."""
    for _ in range(3):
        _connect(sshd).close()
    time.sleep(0.3)
    procs.reap_orphans()

    def non_root_zombie(pid: int) -> bool:
        try:
            status = open(f"/proc/{pid}/status").read()
        except OSError:
            return False
        return "State:\tZ" in status and "\nUid:\t0\t" not in status

    assert [p for p in procs.children_of(os.getpid()) if non_root_zombie(p)] == []
