"""Faults on the synchronous path: a clear one-line error, the documented exit code,
nothing half-written in the repo, and PostgreSQL's own retry succeeds once the
fault is gone."""

from __future__ import annotations

import os
import subprocess
import time

import pytest
from pgpush_env import Pgpush

pytestmark = pytest.mark.integration


def _no_temp_files(root) -> None:
    leftovers = [p for p in root.rglob("*") if ".pgpush.tmp" in p.name]
    assert leftovers == []


def test_backup_host_stopped_then_back_postgres_retries(pg_factory, sshd, pgpush_cmd, work_dir):
    pp = Pgpush(pgpush_cmd, work_dir, repo=sshd.pgpush_options(), repo1_host_timeout=5)
    pg = pg_factory("pg", conf={"archive_mode": "on", "archive_command": ""})
    pp.stanza_create(pg)
    pg.set_conf({"archive_command": pp.archive_command()})
    pg.reload()
    sshd.stop()
    seg = pg.generate_wal(1)[0]
    res = pp.run("push", str(pg.wal_dir / seg))
    assert res.returncode == 103
    first = res.stderr.splitlines()[0]
    assert first == "ERROR: [103]: unable to find a valid repository:"
    assert "Connection refused" in res.stderr and f"{sshd.host}:{sshd.port}" in res.stderr
    deadline = time.time() + 20
    while pg.archiver_stats()["failed_count"] == 0 and time.time() < deadline:
        time.sleep(0.3)
    assert pg.archiver_stats()["failed_count"] > 0
    sshd.restart()
    pg.wait_archived(seg, timeout=90)
    _no_temp_files(sshd.repo_dir)


def test_backup_host_frozen_times_out_not_hangs(pg_cluster, sshd, pgpush_cmd, work_dir):
    pp = Pgpush(pgpush_cmd, work_dir, repo=sshd.pgpush_options(), repo1_host_timeout=3)
    pp.stanza_create(pg_cluster)
    seg = pg_cluster.generate_wal(1)[0]
    sshd.freeze()
    try:
        start = time.monotonic()
        res = pp.run("push", str(pg_cluster.wal_dir / seg), timeout=60)
        elapsed = time.monotonic() - start
    finally:
        sshd.thaw()
    assert res.returncode == 103, res.stderr
    assert elapsed < 20, elapsed
    assert pp.run("push", str(pg_cluster.wal_dir / seg)).returncode == 0


def test_unknown_host_key_refused_with_hint(pg_cluster, sshd, pgpush_cmd, work_dir):
    empty = work_dir / "empty_known_hosts"
    empty.write_text("")
    os.chown(empty, *__import__("harness.procs", fromlist=["user_ids"]).user_ids("postgres"))
    opts = dict(sshd.pgpush_options(), **{"repo1-host-known-hosts": str(empty)})
    pp = Pgpush(pgpush_cmd, work_dir, repo=opts)
    res = pp.run("stanza-create", f"--pg1-path={pg_cluster.datadir}")
    assert res.returncode == 103
    assert "not in known hosts file" in res.stderr and "ssh-keyscan" in res.stderr
    # a changed host key is refused too
    changed = work_dir / "changed_known_hosts"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(work_dir / "otherkey")], check=True)
    pub = (work_dir / "otherkey.pub").read_text().split()
    changed.write_text(f"[{sshd.host}]:{sshd.port} {pub[0]} {pub[1]}\n")
    opts["repo1-host-known-hosts"] = str(changed)
    res = Pgpush(pgpush_cmd, work_dir, repo=opts).run("stanza-create", f"--pg1-path={pg_cluster.datadir}", user="root")
    assert res.returncode == 103 and "does not match" in res.stderr


def test_unreadable_posix_repo_is_103(pg_cluster, pgpush_cmd, work_dir):
    pp = Pgpush(pgpush_cmd, work_dir)
    pp.stanza_create(pg_cluster)
    seg = pg_cluster.generate_wal(1)[0]
    os.chmod(work_dir / "repo" / "archive", 0o000)
    try:
        res = pp.run("push", str(pg_cluster.wal_dir / seg))
    finally:
        os.chmod(work_dir / "repo" / "archive", 0o750)
    assert res.returncode == 103, res.stderr
    assert res.stderr.startswith("ERROR: [103]:") and "Permission denied" in res.stderr


def test_full_repo_filesystem_then_space_freed(pg_factory, pgpush_cmd, work_dir):
    mnt = work_dir / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m,mode=0755", "tmpfs", str(mnt)], check=True)
    try:
        os.chown(mnt, *__import__("harness.procs", fromlist=["user_ids"]).user_ids("postgres"))
        pp = Pgpush(pgpush_cmd, work_dir, repo={"repo1-type": "posix", "repo1-path": str(mnt / "repo")},
                    compress_type="none")
        pg = pg_factory("pg", conf={"archive_mode": "on", "archive_command": ""})
        pp.stanza_create(pg)
        filler = mnt / "filler"
        subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=1M", "count=16", "status=none"], check=True)
        pg.set_conf({"archive_command": pp.archive_command()})
        pg.reload()
        seg = pg.generate_wal(1)[0]
        deadline = time.time() + 20
        while pg.archiver_stats()["failed_count"] == 0 and time.time() < deadline:
            time.sleep(0.3)
        assert pg.archiver_stats()["failed_count"] > 0
        res = pp.run("push", str(pg.wal_dir / seg))
        assert res.returncode == 103 and "No space left" in res.stderr
        _no_temp_files(mnt)
        assert not list((mnt / "repo").rglob(f"{seg}-*"))
        filler.unlink()
        pg.wait_archived(seg, timeout=90)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
