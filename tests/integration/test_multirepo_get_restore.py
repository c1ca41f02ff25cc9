"""``get`` and ``restore`` with two repositories (docs/operations.md, "Several repositories"):
repo1 a backup host over SFTP (a real sshd), repo2 a SeaweedFS bucket; PostgreSQL 15 recovers
through pgpush ``get``.

The WAL goes into each repository by a single-repository ``push`` (an ``archive_command`` that
runs one per repository) and each backup into one repository by a single-repository ``backup``:
the layout is the same, so what a single-repository configuration wrote as repo1 is read as
repo2 by the two-repository one.  The S3 key and secret reach the two-repository pgpush from a
config file, as they must reach the restored cluster's ``restore_command``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from backup_env import backup
from harness import procs
from harness.seaweed import SECRET_KEY
from multirepo_env import S3_PREFIX, archived_bucket, as_repo
from pgpush_env import Pgpush

pytestmark = pytest.mark.integration


class Repos:
    """The single-repository set-ups (``one``: the sshd's, ``two``: the bucket's, each as repo1) and
    the two-repository one (``both``), sharing this test's log and spool directories."""

    def __init__(self, pgpush_cmd, work_dir: Path, sshd, seaweed, **opts):
        s3 = seaweed.pgpush_options(f"/{S3_PREFIX}")
        self.one = Pgpush(pgpush_cmd, work_dir, repo=sshd.pgpush_options())
        self.two = Pgpush(pgpush_cmd, work_dir, repo=s3)
        conf = work_dir / "pgpush.conf"  # repo2's secrets: never on a command line written into a cluster
        conf.write_text(f"[global]\nrepo2-s3-key={s3.pop('repo1-s3-key')}\n"
                        f"repo2-s3-key-secret={s3.pop('repo1-s3-key-secret')}\n")
        procs.chown_tree(conf, "postgres")
        os.chmod(conf, 0o600)
        # repo1-host-timeout bounds how long a get waits for repo1 when it is down
        self.both = Pgpush(pgpush_cmd, work_dir, repo={"config": str(conf), **sshd.pgpush_options(),
                                                       "repo1-host-timeout": "3", **as_repo(s3, 2)}, **opts)

    def primary(self, pg_factory):
        """A primary archiving every WAL file into both repositories, each by its own push."""
        pg = pg_factory("pg", conf={"archive_mode": "on", "archive_command": "", "wal_keep_size": "1GB"})
        self.one.stanza_create(pg)
        self.two.stanza_create(pg)
        script = self.one.work_dir / "archive.sh"  # PostgreSQL cuts an archive_command at 1024 bytes
        script.write_text("#!/bin/sh\nset -e\n" + "\n".join(pp.archive_command().replace("%p", '"$1"')
                                                           for pp in (self.one, self.two)) + "\n")
        script.chmod(0o755)
        pg.set_conf({"archive_command": f"{script} %p"})
        pg.reload()
        return pg


def stored_sftp(sshd, name: str) -> Path:
    return next((Path(sshd.repo_dir) / "archive" / "main").glob(f"*/*/{name}-*"))


def restored_cluster(pg_factory, name: str = "restored"):
    cluster = pg_factory(name, init=False)
    cluster._prepare_common()
    return cluster


def start_recovery(cluster, **conf) -> None:
    cluster.set_conf({"port": cluster.port, "unix_socket_directories": str(cluster.socket_dir),
                      "archive_mode": "off", **conf})
    cluster.start(timeout=300)
    cluster.wait_promoted(180)


def test_pitr_with_repo1_down_restores_and_recovers_from_repo2_and_restore_chooses_across(
        pg_factory, sshd, seaweed, pgpush_cmd, work_dir):
    repos = Repos(pgpush_cmd, work_dir, sshd, seaweed, archive_async="y", process_max=2,
                  archive_get_queue_max="64MB", archive_timeout=30)
    pg = repos.primary(pg_factory)
    pg.sql("create table marks(id int)")
    older, _ = backup(repos.one, pg)  # in repo1 only
    pg.sql("insert into marks values (0)")
    newer, _ = backup(repos.two, pg)  # in repo2 only: the newest
    assert older < newer
    pg.generate_wal(3)
    pg.sql("insert into marks values (1)")
    target = pg.sql("select pg_current_wal_insert_lsn()")
    pg.generate_wal(3)
    pg.sql("insert into marks values (2)")
    last = pg.switch_wal()
    pg.wait_archived(last, timeout=120)
    assert last in archived_bucket(seaweed)
    pg.stop()
    pitr = ("--type=lsn", f"--target={target}", "--target-action=promote")

    # Both up: the newest usable backup across the repositories (repo2's), or repo1's with --repo=1.
    cluster = restored_cluster(pg_factory, "choose")
    res = repos.both.run("restore", f"--pg1-path={cluster.datadir}", "--repo=1", *pitr, timeout=180)
    assert res.returncode == 0, res.stderr
    assert f"restore of backup {older} (" in res.stdout and "from repo1" in res.stdout, res.stdout
    res = repos.both.run("restore", f"--pg1-path={cluster.datadir}", "--delta", *pitr, timeout=180)
    assert res.returncode == 0, res.stderr
    assert f"restore of backup {newer} (" in res.stdout and "from repo2" in res.stdout, res.stdout
    auto_conf = (cluster.datadir / "postgresql.auto.conf").read_text()
    for option in ("--repo1-host=", "--repo2-s3-bucket=", "--repo2-type=s3", "--config="):
        assert option in auto_conf, auto_conf  # recovery falls back across every repository
    assert "--repo=" not in auto_conf and SECRET_KEY not in auto_conf

    # repo1 down: the restore passes it over, takes repo2's backup, and recovery fetches all its WAL there.
    sshd.stop()
    restored = restored_cluster(pg_factory)
    res = repos.both.run("restore", f"--pg1-path={restored.datadir}", *pitr, "--log-level-console=warn", timeout=180)
    assert res.returncode == 0, res.stderr
    assert f"restore of backup {newer} (" in res.stdout and "from repo2" in res.stdout, res.stdout
    assert "WARN: repo1: " in res.stderr and "its backups are not considered" in res.stderr, res.stderr
    start_recovery(restored)
    assert restored.sql("select array_agg(id order by id) from marks") == "{0,1}"
    parent_log = repos.both.log_text("archive-get-async")
    assert "from repo2" in parent_log and "prefetched WAL file" in parent_log
    assert "WARN: repo1: " in parent_log  # the worker said which repository it passed over
    assert "in the archive asynchronously" in repos.both.log_text("archive-get")


def test_corrupt_segment_in_repo1_comes_from_repo2_and_1_only_when_every_repository_answered(
        pg_factory, sshd, seaweed, pgpush_cmd, work_dir):
    repos = Repos(pgpush_cmd, work_dir, sshd, seaweed)
    pg = repos.primary(pg_factory)
    base = work_dir / "base"
    pg.run([pg.bin("pg_basebackup"), "-D", str(base), "-X", "none", "-c", "fast", "-h", str(pg.socket_dir),
            "-p", str(pg.port), "-U", "postgres"], check=True)
    pg.sql("create table marks(id int)")
    segments = pg.generate_wal(3)
    pg.sql("insert into marks values (1)")
    target = pg.sql("select pg_current_wal_insert_lsn()")
    pg.generate_wal(2)
    pg.sql("insert into marks values (2)")
    last = pg.switch_wal()
    pg.wait_archived(last, timeout=120)
    pg.stop()
    damaged = segments[1]
    stored = stored_sftp(sshd, damaged)
    data = bytearray(stored.read_bytes())
    data[len(data) // 2: len(data) // 2 + 64] = os.urandom(64)
    stored.write_bytes(bytes(data))

    restored = restored_cluster(pg_factory)
    os.rename(base, restored.datadir)
    (restored.datadir / "recovery.signal").touch()
    start_recovery(restored, restore_command=repos.both.restore_command(), recovery_target_lsn=target,
                   recovery_target_action="promote")
    assert restored.sql("select array_agg(id) from marks") == "{1}"
    log = repos.both.log_text("archive-get")
    warned = [line for line in log.splitlines() if "WARN:" in line and damaged in line]
    assert warned and all("repo1: " in line and "corrupt" in line for line in warned), warned
    assert f"found {damaged} in the archive of repo2" in log
    assert re.search(rf"found {segments[0]} in the archive$", log, re.M), log  # repo1 first where it is sound
    restored.stop()

    # Exit 1 only when every repository answered that it does not have the file.
    dest = work_dir / "fetched"
    absent = "00000001000000000000FFFE"
    res = repos.both.run("get", absent, str(dest), cwd=work_dir)
    assert res.returncode == 1, res.stderr
    sshd.stop()
    res = repos.both.run("get", absent, str(dest), cwd=work_dir)
    assert res.returncode == 103, (res.returncode, res.stderr)  # repo1 could not answer: never 1
    assert res.stderr.count("ERROR: [103]: ") == 1 and "repo1: " in res.stderr, res.stderr
    res = repos.both.run("get", damaged, str(dest), cwd=work_dir)  # repo1 down: repo2 has it
    assert res.returncode == 0, res.stderr
    assert "WARN: repo1: " in res.stderr, res.stderr
    assert dest.exists() and dest.stat().st_size == 16 << 20
    assert not list(work_dir.glob("fetched.*"))  # no temporary file left
