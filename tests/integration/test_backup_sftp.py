"""Backup, restore and verify over SFTP with parallel workers (each opens its own SSH session),
into an encrypted repository, and the restored cluster's pgpush get over SFTP too."""

from __future__ import annotations

import pytest
from backup_env import backup, backups, setup_archiving
from pgpush_env import Pgpush

pytestmark = pytest.mark.integration


def test_encrypted_sftp_backup_restore_verify_with_workers(pg_factory, sshd, pgpush_cmd, work_dir):
    pp = Pgpush(pgpush_cmd, work_dir, repo=sshd.pgpush_options(), repo1_cipher_type="aes-256-gcm",
                repo1_cipher_pass="correct horse", process_max=3)
    pg = pg_factory("pg", conf={"archive_mode": "on", "archive_command": ""})
    setup_archiving(pp, pg)
    pg.sql("create table t as select g, md5(g::text) h from generate_series(1, 20000) g")
    full, _ = backup(pp, pg, "--wait", "--wait-timeout=60")
    pg.sql("update t set h = 'changed' where g <= 10")
    diff, _ = backup(pp, pg, "--type=diff", "--wait", "--wait-timeout=60")
    info = backups(pp)
    assert info[diff]["prior"] == full and info[diff]["status"] == "DONE"
    pg.sql("insert into t values (0, 'after the diff')")
    pg.wait_archived(pg.switch_wal())

    # Files are encrypted in the repository: no plain PG_VERSION content there.
    stored = next(sshd.repo_dir.glob(f"backup/main/{full}/pg_data/PG_VERSION*"))
    assert stored.read_bytes().startswith(b"PGPE1")

    res = pp.run("verify")
    assert res.returncode == 0, res.stderr + res.stdout

    restored = pg_factory("restored", init=False)
    restored._prepare_common()
    res = pp.run("restore", f"--pg1-path={restored.datadir}", "--type=default", timeout=180)
    assert res.returncode == 0, res.stderr
    assert f"restore of backup {diff} " in res.stdout
    # The passphrase was given on the command line: it is not written into the data directory.
    auto_conf = (restored.datadir / "postgresql.auto.conf").read_text()
    assert "correct horse" not in auto_conf and "repo1-cipher-pass" in res.stderr
    # ... so the restored cluster's get needs it from its environment.
    restored.env["PGPUSH_REPO1_CIPHER_PASS"] = "correct horse"
    restored.set_conf({"port": restored.port, "unix_socket_directories": str(restored.socket_dir),
                       "archive_mode": "off"})
    restored.start(timeout=120)
    restored.wait_promoted(120)
    assert restored.sql("select count(*), count(*) filter (where h = 'changed') from t") == "20001|10"
