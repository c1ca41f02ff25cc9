"""One backup, every repository (docs/operations.md, "Several repositories"): PostgreSQL 15 backed
up once into repo1 over SFTP (a real sshd, not encrypted) and repo2 in SeaweedFS (aes-256-gcm),
restored from each; the store frozen in the middle of a backup; a diff after a repository missed
the full.

The archive side is given as two single-repository pushes in archive_command, and each catalog
is read with a single-repository configuration, so these tests prove the backup's fan-out alone.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from backup_env import pg_opts
from harness import procs
from multirepo_env import S3_PREFIX, sftp_s3_pgpush
from pgpush_env import Pgpush
from test_s3_e2e import bucket_keys, wait_for

pytestmark = pytest.mark.integration

PASS2 = "repo2-passphrase"


def _single(pgpush_cmd, work_dir: Path, sshd, seaweed, **opts) -> tuple[Pgpush, Pgpush]:
    """repo1 alone and repo2 alone (as repo1), to create the stanzas, push WAL and read each catalog.

    Their options are in a config file each: PostgreSQL 15 cuts archive_command at 1024 bytes."""
    out = []
    repo2 = {**seaweed.pgpush_options(f"/{S3_PREFIX}"), "repo1-cipher-type": "aes-256-gcm",
             "repo1-cipher-pass": PASS2, **{k.replace("_", "-"): str(v) for k, v in opts.items()}}
    for name, options in (("repo1.conf", sshd.pgpush_options()), ("repo2.conf", repo2)):
        conf = work_dir / name
        conf.write_text("[global]\n" + "".join(f"{k}={v}\n" for k, v in options.items()))
        procs.chown_tree(conf, "postgres")
        os.chmod(conf, 0o600)
        out.append(Pgpush(pgpush_cmd, work_dir, repo={"config": str(conf)}))
    return out[0], out[1]


def _setup(pg_factory, pgpush_cmd, work_dir, sshd, seaweed, strict: bool = True, **opts):
    pp = sftp_s3_pgpush(pgpush_cmd, work_dir, sshd, seaweed, repo2_cipher_type="aes-256-gcm",
                        repo2_cipher_pass=PASS2, process_max=2, **opts)
    p1, p2 = _single(pgpush_cmd, work_dir, sshd, seaweed,
                     **{"repo1_" + k[6:]: v for k, v in opts.items() if k.startswith("repo2_")})
    pg = pg_factory("pg", conf={"archive_mode": "on", "archive_command": ""})
    p1.stanza_create(pg)
    p2.stanza_create(pg)
    second = p2.archive_command() if strict else f"({p2.archive_command()} || true)"
    pg.set_conf({"archive_command": f"{p1.archive_command()} && {second}"})
    pg.reload()
    return pp, p1, p2, pg


def _catalog(pp: Pgpush) -> dict[str, dict]:
    res = pp.run("info", "--output=json")
    assert res.returncode == 0, res.stderr
    return {b["label"]: b for b in json.loads(res.stdout)[0]["backups"]}


def _backup(pp: Pgpush, pg, *args: str, expect: int = 0, timeout: float = 180):
    res = pp.run("backup", *pg_opts(pg), *args, timeout=timeout)
    assert res.returncode == expect, f"backup exited {res.returncode}:\n{res.stdout}\n{res.stderr}"
    return res


def _restore_and_count(pg_factory, single: Pgpush, name: str, env: dict[str, str]) -> str:
    restored = pg_factory(name, init=False)
    restored._prepare_common()
    res = single.run("restore", f"--pg1-path={restored.datadir}", "--type=immediate", "--target-action=promote",
                     timeout=180)
    assert res.returncode == 0, res.stderr + res.stdout
    restored.env.update(env)  # what restore leaves out of the data directory: the secrets
    restored.set_conf({"port": restored.port, "unix_socket_directories": str(restored.socket_dir),
                       "archive_mode": "off"})
    restored.start(timeout=120)
    restored.wait_promoted(180)
    count = restored.sql("select count(*), count(*) filter (where h = 'changed') from t")
    restored.stop()
    return count


def test_one_backup_fanned_out_to_sftp_and_encrypted_s3_then_restored_from_each(
        pg_factory, sshd, seaweed, pgpush_cmd, work_dir):
    pp, p1, p2, pg = _setup(pg_factory, pgpush_cmd, work_dir, sshd, seaweed)
    pg.sql("create table t as select g, md5(g::text) h from generate_series(1, 20000) g")

    res = _backup(pp, pg, "--wait", "--wait-timeout=60")
    in1, in2 = _catalog(p1), _catalog(p2)
    assert len(in1) == len(in2) == 1 and list(in1) == list(in2), (in1, in2)  # the same label in both
    full = next(iter(in1))
    assert f"backup {full} is DONE in repo1" in res.stdout and f"backup {full} is DONE in repo2" in res.stdout
    for key in ("start_lsn", "stop_lsn", "wal_start", "wal_stop", "file_count", "size"):
        assert in1[full][key] == in2[full][key], key  # one pg_backup_start/stop, one read
    assert in1[full]["status"] == in2[full]["status"] == "DONE"
    assert res.stderr.count("backup start LSN") <= 1 and "ERROR" not in res.stderr
    # Each copy in its repository's own encoding: repo2's is encrypted, repo1's is not.
    plain = next(sshd.repo_dir.glob(f"backup/main/{full}/pg_data/PG_VERSION*"))
    assert not plain.read_bytes().startswith(b"PGPE1")
    key = next(k for k in bucket_keys(seaweed, f"{S3_PREFIX}/backup/main/{full}/") if "/PG_VERSION" in k)
    store = seaweed.storage(f"/{S3_PREFIX}")
    try:
        assert store.read(key[len(S3_PREFIX) + 1:]).startswith(b"PGPE1")
    finally:
        store.close()

    pg.sql("update t set h = 'changed' where g <= 10")
    _backup(pp, pg, "--type=diff", "--wait", "--wait-timeout=60")
    in1, in2 = _catalog(p1), _catalog(p2)
    diff = max(in1)
    assert diff in in2 and diff.startswith(full[:16]) and diff.endswith("D")
    assert in1[diff]["prior"] == in2[diff]["prior"] == full
    assert in1[diff]["status"] == in2[diff]["status"] == "DONE"

    # --repo=1: that repository only.
    res = _backup(pp, pg, "--repo=1", "--type=incr")
    assert "in repo" not in res.stdout, res.stdout  # one repository: the output of one
    assert len(_catalog(p1)) == 3 and len(_catalog(p2)) == 2

    pg.stop()
    assert _restore_and_count(pg_factory, p2, "from_s3", {"PGPUSH_REPO1_CIPHER_PASS": PASS2,
                                                          "PGPUSH_REPO1_S3_KEY": seaweed.server.access_key,
                                                          "PGPUSH_REPO1_S3_KEY_SECRET": seaweed.server.secret_key}
                              ) == "20000|10"
    assert _restore_and_count(pg_factory, p1, "from_sftp", {}) == "20000|10"


def test_store_frozen_mid_backup_sftp_copy_done_s3_left_out_then_diff_full_in_s3(
        pg_factory, sshd, seaweed, pgpush_cmd, work_dir):
    pp, p1, p2, pg = _setup(pg_factory, pgpush_cmd, work_dir, sshd, seaweed, strict=False, repo2_host_timeout=2)
    pg.sql("create table t as select g, md5(g::text) h from generate_series(1, 100000) g")
    pg.wait_archived(pg.switch_wal(), timeout=60)
    server = seaweed.server

    argv = ["runuser", "-u", "postgres", "--"] + pp.argv("backup", *pg_opts(pg))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGPUSH_")}
    proc = subprocess.Popen(argv, cwd="/", stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        def copying() -> bool:  # the first file is in repo2: the store freezes under the copy of the others
            return any("/pg_data/" in k for k in bucket_keys(seaweed, f"{S3_PREFIX}/backup/main/"))

        wait_for(copying, 90, "the backup to start copying", interval=0.02)
        server.freeze()
        try:
            out, err = proc.communicate(timeout=120)
        finally:
            server.thaw()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # Exit non-zero with repo2's error; the output says who holds the backup.
    assert proc.returncode == 103, f"{proc.returncode}\n{out}\n{err}"
    assert "ERROR: [103]: " in err and "repo2: " in err.split("ERROR: [103]: ", 1)[1], err
    assert "repo2 failed: it does not hold the backup; the backup is stored in repo1" in out, out
    in1 = _catalog(p1)
    assert len(in1) == 1, in1
    full = next(iter(in1))
    assert f"backup {full} is " in out and " in repo1" in out
    wait_for(lambda: _catalog(p1)[full]["status"] == "DONE", 60, "repo1's copy to be DONE")
    # repo2's copy is not recorded anywhere as a backup: no entry, no manifest.
    assert _catalog(p2) == {}
    assert not [k for k in bucket_keys(seaweed, f"{S3_PREFIX}/backup/main/") if k.endswith("backup.manifest")]

    # Everything up again: a diff is a diff in repo1 (on its full) and a full in repo2 (it has none).
    pg.sql("update t set h = 'changed' where g <= 10")
    res = _backup(pp, pg, "--type=diff", "--wait", "--wait-timeout=90")
    assert "repo2: no prior backup exists, diff backup has been changed to full" in res.stderr, res.stderr
    in1, in2 = _catalog(p1), _catalog(p2)
    diff = max(in1)
    assert in1[diff]["type"] == "diff" and in1[diff]["prior"] == full and in1[diff]["status"] == "DONE"
    assert len(in2) == 1, in2
    (new_full, record), = in2.items()
    assert record["type"] == "full" and record["status"] == "DONE" and record["prior"] is None
    assert new_full[:15] == diff[17:32] and new_full.endswith("F")  # the same time stamp: one backup
    assert record["start_lsn"] == in1[diff]["start_lsn"]
    assert f"backup {diff} is DONE in repo1" in res.stdout and f"backup {new_full} is DONE in repo2" in res.stdout
