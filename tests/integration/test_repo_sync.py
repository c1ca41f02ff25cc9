"""``repo-sync --from=1 --to=2`` end to end: a repository filled by a one-repository set-up (repo1 on a
backup host over SFTP) copied into an empty S3 bucket added as repo2 (encrypted: every file is
re-encoded), then the bucket alone restores the cluster; a second sync copies nothing; a sync
killed mid-way is finished by the next one; a corrupt source file is refused; PostgreSQL keeps
archiving into repo1 while a sync runs."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

import pytest
from backup_env import backup, backups, setup_archiving
from multirepo_env import S3_PREFIX, archived_bucket, archived_sftp, sftp_s3_pgpush
from pgpush_env import Pgpush
from test_s3_e2e import bucket_keys

pytestmark = pytest.mark.integration

CIPHER = {"repo2-cipher-type": "aes-256-gcm", "repo2-cipher-pass": "offsite secret"}


def bucket_only(pgpush_cmd, work_dir, seaweed) -> Pgpush:
    """A one-repository set-up whose repo1 is the bucket repo2 was (as a restore host would have)."""
    return Pgpush(pgpush_cmd, work_dir, repo=seaweed.pgpush_options(f"/{S3_PREFIX}"),
                  repo1_cipher_type="aes-256-gcm", repo1_cipher_pass="offsite secret")


def sync(pp: Pgpush, expect: int = 0, timeout: float = 180, **overrides):
    res = pp.run("repo-sync", "--from=1", "--to=2", timeout=timeout, **overrides)
    assert res.returncode == expect, f"repo-sync exited {res.returncode}:\n{res.stdout}\n{res.stderr}"
    return res


def restore_and_count(pg_factory, pp: Pgpush, name: str) -> str:
    restored = pg_factory(name, init=False)
    restored._prepare_common()
    res = pp.run("restore", f"--pg1-path={restored.datadir}", "--type=default", timeout=180)
    assert res.returncode == 0, res.stderr
    for name in ("repo1-cipher-pass", "repo1-s3-key", "repo1-s3-key-secret"):  # secrets: not in postgresql.auto.conf
        restored.env["PGPUSH_" + name.upper().replace("-", "_")] = pp.options[name]
    restored.set_conf({"port": restored.port, "unix_socket_directories": str(restored.socket_dir),
                       "archive_mode": "off"})
    restored.start(timeout=120)
    restored.wait_promoted(120)
    return restored.sql("select count(*), count(*) filter (where h = 'late') from t")


def test_sync_fills_an_empty_bucket_that_then_restores_alone(pg_factory, sshd, seaweed, pgpush_cmd, work_dir):
    single = Pgpush(pgpush_cmd, work_dir, repo=sshd.pgpush_options())
    pg = pg_factory("pg", conf={"archive_mode": "on", "archive_command": ""})
    setup_archiving(single, pg)
    pg.sql("create table t as select g, md5(g::text) h from generate_series(1, 5000) g")
    full, _ = backup(single, pg, "--wait", "--wait-timeout=60")
    pg.sql("update t set h = 'changed' where g <= 10")
    diff, _ = backup(single, pg, "--type=diff", "--wait", "--wait-timeout=60")
    pg.sql("insert into t values (0, 'late')")
    pg.wait_archived(pg.switch_wal())

    both = sftp_s3_pgpush(pgpush_cmd, work_dir, sshd, seaweed, process_max=2, **CIPHER)
    res = sync(both)
    assert "backup(s); skipped" in res.stdout and "and 2 backup(s)" in res.stdout, res.stdout
    # Every WAL file with the same content (the SHA-1 in its name), re-encoded: encrypted in the bucket.
    assert archived_bucket(seaweed) == archived_sftp(sshd)
    client = seaweed.client()
    key = next(k for k in bucket_keys(seaweed, f"{S3_PREFIX}/backup/main/{full}/pg_data/") if "PG_VERSION" in k)
    assert client.request("GET", key).body.startswith(b"PGPE1")

    res = sync(both)  # nothing left to copy
    assert "copied 0 file(s), 0B, and 0 backup(s)" in res.stdout and "2 backup(s) already in repo2" in res.stdout, \
        res.stdout

    offsite = bucket_only(pgpush_cmd, work_dir, seaweed)
    copies = backups(offsite)
    assert sorted(copies) == sorted([full, diff]) and all(b["status"] == "DONE" for b in copies.values()), copies
    assert copies[diff]["prior"] == full
    assert restore_and_count(pg_factory, offsite, "restored") == "5001|1"


def _start_sync(pp: Pgpush) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGPUSH_")}
    return subprocess.Popen(["runuser", "-u", "postgres", "--", *pp.argv("repo-sync", "--from=1", "--to=2")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)


def test_sync_killed_resumed_corrupt_refused_while_archiving(pg_factory, sshd, seaweed, pgpush_cmd, work_dir):
    single = Pgpush(pgpush_cmd, work_dir, repo=sshd.pgpush_options())
    pg = pg_factory("pg", conf={"archive_mode": "on", "archive_command": ""})
    setup_archiving(single, pg)
    pg.sql("create table t as select g, md5(g::text) h from generate_series(1, 5000) g")
    full, _ = backup(single, pg, "--wait", "--wait-timeout=60")
    both = sftp_s3_pgpush(pgpush_cmd, work_dir, sshd, seaweed, process_max=1, **CIPHER)
    offsite = bucket_only(pgpush_cmd, work_dir, seaweed)

    # Killed (SIGKILL, no clean-up) once some of the backup's files are in the bucket.
    proc = _start_sync(both)
    prefix = f"{S3_PREFIX}/backup/main/{full}/"
    deadline = time.monotonic() + 60
    while len(bucket_keys(seaweed, prefix)) < 40:
        assert proc.poll() is None, f"repo-sync ended before it was killed:\n{proc.communicate()}"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)
    proc.communicate()
    assert backups(offsite) == {}  # the files copied so far make no backup anyone would use

    # Finished by the next sync while PostgreSQL keeps archiving into repo1.
    stop = threading.Event()

    def archiving() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            pg.sql(f"insert into t values ({-n}, 'during')")
            pg.switch_wal()
            time.sleep(1.0)

    writer = threading.Thread(target=archiving)
    writer.start()
    try:
        res = sync(both, process_max=2)
    finally:
        stop.set()
        writer.join()
    skipped = int(res.stdout.split("skipped ")[1].split(" ")[0])
    assert "and 1 backup(s)" in res.stdout and skipped >= 40, res.stdout  # what the killed sync stored was kept
    assert backups(offsite)[full]["status"] == "DONE"

    # A corrupt WAL file and a corrupt backup file in repo1: refused, named, not copied; the rest is.
    pg.sql("insert into t values (0, 'late')")
    last = pg.switch_wal()
    pg.wait_archived(last)
    diff, _ = backup(single, pg, "--type=diff", "--wait", "--wait-timeout=60")
    bad_wal = next(p for p in (sshd.repo_dir / "archive" / "main").glob(f"*/*/{last}-*"))
    bad_wal.write_bytes(bad_wal.read_bytes()[:-10] + b"0123456789")
    bad_file = next((sshd.repo_dir / "backup" / "main" / diff / "pg_data").glob("backup_label*"))
    bad_file.write_bytes(b"garbage" + bad_file.read_bytes()[7:])
    res = sync(both, expect=42, process_max=2)
    assert f"repo1: WAL file '{last}' in the repository is corrupt" in res.stderr, res.stderr
    assert f"repo1: backup {diff} file 'pg_data/backup_label'" in res.stderr + both.log_text("repo-sync")
    assert last not in archived_bucket(seaweed)
    assert diff not in backups(offsite) and not bucket_keys(seaweed, f"{S3_PREFIX}/backup/main/{diff}/")
    assert archived_bucket(seaweed).keys() == archived_sftp(sshd).keys() - {last}
    assert offsite.run("verify").returncode == 0
