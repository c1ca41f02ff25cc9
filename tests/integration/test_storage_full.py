"""A full backup host, with PostgreSQL as the client: nothing acknowledged that is not whole.

The repository is the real sshd's ``repo_dir`` on a small tmpfs (harness.tmpfs), so it fills
up for real and OpenSSH's sftp-server answers ``SSH_FX_FAILURE`` to the writes that do not fit.
Segments are 1 MB (``wal_segsize_mb=1``) of incompressible WAL and zst-compressed: each file
is a handful of SFTP write requests, far under the ~100 that paramiko's pipelined writes ever
check.  For WAL (sync and async) and for a backup: every file in the repository decompresses
and matches the SHA-1 its name carries, a push that does not fit fails (PostgreSQL keeps the
``.ready``), the error says the host is full, and once space is freed archiving catches up
with no one doing anything but PostgreSQL retrying.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from pathlib import Path

import pytest
from backup_env import backups, pg_opts, setup_archiving
from harness import procs
from harness.tmpfs import fill, tmpfs
from pgpush_env import Pgpush

pytestmark = pytest.mark.integration

SEGMENTS = 10
PAYLOAD = 700 * 1024  # incompressible bytes of WAL per segment: ~0.7 MB per zst file
REPO_MB = 5  # room for about half of SEGMENTS


def zst_sha1(path: Path) -> str:
    """SHA-1 of a zst file's content, decompressed by the zstd tool (not by pgpush)."""
    done = subprocess.run(["zstd", "-dcq", str(path)], capture_output=True, check=False)
    assert done.returncode == 0, f"{path} does not decompress ({path.stat().st_size} bytes): {done.stderr!r}"
    return hashlib.sha1(done.stdout).hexdigest()


def check_archive_whole(repo_dir: Path) -> set[str]:
    """Every WAL file in the repository decompresses and has the SHA-1 its name carries; their segments."""
    segments = set()
    for path in (repo_dir / "archive" / "main").glob("*/*/*.zst"):
        segment, sha1 = path.name.removesuffix(".zst").split("-", 1)
        assert zst_sha1(path) == sha1, f"{path.name}: content does not match its name ({path.stat().st_size} bytes)"
        segments.add(segment)
    return segments


def remount(path: Path, size_mb: int) -> None:
    """Grow the tmpfs: the operator (or a cleanup job) frees space on the backup host."""
    subprocess.run(["mount", "-o", f"remount,size={size_mb}m", str(path)], check=True, capture_output=True)


def stop_own_pgpush(pg, work_dir: Path) -> None:
    """Stop PostgreSQL, then this test's async pgpush parent and workers (by PID: their options name work_dir)."""
    pg.stop()
    marker = f"{work_dir}/".encode()
    for entry in os.listdir("/proc"):
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes() if entry.isdigit() else b""
        except OSError:
            continue
        if b"pgpush" in cmdline and marker in cmdline:
            procs.stop_pid(int(entry), timeout=5)


def archiving_cluster(pg_factory, pp: Pgpush):
    pg = pg_factory("pg", conf={"archive_mode": "on", "archive_command": "", "wal_keep_size": "256MB"},
                    wal_segsize_mb=1)
    setup_archiving(pp, pg)
    return pg


def wait_failure_or_done(pg, last: str, timeout: float = 60) -> dict:
    """Archiver stats once a push has failed or ``last`` is archived (old code acknowledged everything)."""
    deadline = time.monotonic() + timeout
    while True:
        stats = pg.archiver_stats()
        if stats["failed_count"] > 0 or pg.is_archived(last, stats) or time.monotonic() > deadline:
            return stats
        time.sleep(0.2)


def catch_up(pg, segments: list[str], timeout: float = 120) -> None:
    """PostgreSQL retries by itself; new WAL (a busy database) wakes its archiver sooner than its 60 s."""
    pg.generate_wal(1)
    pg.wait_archived(segments[-1], timeout=timeout)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_full_backup_host_wal_never_truncated_and_catches_up(pg_factory, sshd, pgpush_cmd, work_dir, mode):
    options = {"archive_async": "y", "process_max": 2} if mode == "async" else {}
    with tmpfs(sshd.repo_dir, REPO_MB, owner=sshd.user):
        pp = Pgpush(pgpush_cmd, work_dir, repo=sshd.pgpush_options(), compress_type="zst",
                    repo1_host_timeout=10, archive_timeout=30, **options)
        pg = archiving_cluster(pg_factory, pp)
        try:
            check_full_then_freed(pg, pp, sshd.repo_dir, mode)
        finally:
            stop_own_pgpush(pg, work_dir)


def check_full_then_freed(pg, pp: Pgpush, repo_dir: Path, mode: str) -> None:
    segments = pg.generate_wal(SEGMENTS, random_payload=True, payload_bytes=PAYLOAD)
    stats = wait_failure_or_done(pg, segments[-1])
    check_archive_whole(repo_dir)
    assert stats["failed_count"] > 0, f"the repository cannot hold {SEGMENTS} segments, yet: {stats}"
    failed = stats["last_failed_wal"]
    assert (pg.datadir / "pg_wal" / "archive_status" / f"{failed}.ready").exists()
    assert "No space left on device" in pg.log_tail(200)
    if mode == "async":
        errors = [p.read_text() for p in pp.out_dir.glob("*.error")]
        assert any(e.startswith("103\n") and "No space left on device" in e for e in errors), errors
    assert list(repo_dir.rglob("*.pgpush.tmp*")) == []

    remount(repo_dir, 64)
    catch_up(pg, segments)
    assert set(segments) <= check_archive_whole(repo_dir)


def test_backup_to_full_backup_host_fails_and_is_not_usable(pg_factory, sshd, pgpush_cmd, work_dir):
    with tmpfs(sshd.repo_dir, 32, owner=sshd.user):
        pp = Pgpush(pgpush_cmd, work_dir, repo=sshd.pgpush_options(), compress_type="zst", repo1_host_timeout=10)
        pg = pg_factory("pg", conf={"archive_mode": "on", "archive_command": ""}, wal_segsize_mb=1)
        setup_archiving(pp, pg)
        pg.sql("create table noise as select sha512(int8send(g)) || sha512(int8send(-g)) b "
               "from generate_series(1, 40000) g")  # ~5 MB that zst cannot shrink
        filler = fill(sshd.repo_dir, leave_bytes=2 << 20)
        res = pp.run("backup", *pg_opts(pg), timeout=180)
        assert res.returncode == 103, f"backup exited {res.returncode}:\n{res.stdout}\n{res.stderr}"
        assert res.stderr.startswith("ERROR: [103]:") and "No space left on device" in res.stderr, res.stderr
        assert [b for b in backups(pp).values() if b["status"] == "DONE"] == []
        assert list(sshd.repo_dir.rglob("*.pgpush.tmp*")) == []

        filler.unlink()
        res = pp.run("backup", *pg_opts(pg), "--wait", "--wait-timeout=60", timeout=180)
        assert res.returncode == 0, res.stderr
        assert [b["status"] for b in backups(pp).values()].count("DONE") == 1
        res = pp.run("verify")
        assert res.returncode == 0, res.stdout + res.stderr
