"""Seams between the fixes: async push over SFTP while backups and expire run, as a DBA's fleet does.

A cluster under write load archives asynchronously (process-max 2) into a real sshd; meanwhile
full and incremental backups are taken and ``expire`` (retention-full 1) runs after each, all
against the same repository (catalog lock, started markers, WAITING_FOR_WALS).  At the end:
every stored WAL file decodes to the SHA-1 in its name, ``verify`` finds no problem, every
segment PostgreSQL was told is archived is there unless it predates the kept backup, and the
newest backup restores and recovers through async get.
"""

from __future__ import annotations

import threading
import time

import pytest
from backup_env import backup, backups
from harness import faults
from pgpush_env import Pgpush

from pgpush.storage.posix import PosixStorage

pytestmark = pytest.mark.integration


def test_async_push_backups_and_expire_racing_over_sftp_keep_the_archive_whole_and_the_newest_backup_restorable(
        pg_factory, pgpush_cmd, work_dir, sshd):
    pp = Pgpush(pgpush_cmd, work_dir, repo={**sshd.pgpush_options(), "repo1-retention-full": "1"},
                process_max=2, archive_timeout=30)
    pg = pg_factory("pg", conf={"archive_mode": "on", "archive_command": "", "wal_keep_size": "1GB"},
                    wal_segsize_mb=1)
    pp.stanza_create(pg)
    pg.set_conf({"archive_command": pp.archive_command(archive_async="y")})
    pg.reload()
    pg.sql("create table load(id int, pad text)")

    stop = threading.Event()
    errors: list[BaseException] = []

    def write_load() -> None:
        try:
            while not stop.is_set():
                pg.sql("insert into load select g, repeat(md5(g::text), 20) from generate_series(1, 1000) g;"
                       "select pg_switch_wal()")
                stop.wait(0.3)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            errors.append(exc)

    loader = threading.Thread(target=write_load, daemon=True)
    loader.start()
    try:
        for btype in ("full", "incr", "full"):
            backup(pp, pg, f"--type={btype}", "--wait", "--wait-timeout=60")
            res = pp.run("expire")
            assert res.returncode == 0, res.stderr
    finally:
        stop.set()
        loader.join(timeout=60)
    assert not errors, errors
    pg.sql("insert into load values (-1, 'last')")
    pg.wait_archived(pg.switch_wal(), timeout=60)

    stored = faults.check_archive(PosixStorage(str(sshd.repo_dir)))  # whole, each name once
    kept = backups(pp)
    assert [b["type"] for b in kept.values()] == ["full"], kept
    res = pp.run("verify", timeout=120)
    assert res.returncode == 0 and "0 problem(s)" in res.stdout, res.stdout + res.stderr
    newest = max(kept)
    start = kept[newest]["wal_start"]
    status = pg.wal_dir / "archive_status"
    done = sorted(p.name[:-5] for p in status.glob("*.done") if len(p.name) == 29)
    assert [n for n in done if n >= start and n not in stored] == []

    pg.stop()
    restored = pg_factory("restored", init=False)
    restored._prepare_common()
    res = pp.run("restore", f"--pg1-path={restored.datadir}", f"--set={newest}", "--archive-async",
                 "--target-action=promote")
    assert res.returncode == 0, res.stderr
    restored.set_conf({"port": restored.port, "unix_socket_directories": str(restored.socket_dir),
                       "archive_mode": "off"})
    try:
        restored.start(timeout=120)
        deadline = time.monotonic() + 120
        while restored.sql("select pg_is_in_recovery()") == "t":
            assert time.monotonic() < deadline, restored.log_tail()
            time.sleep(0.3)
        assert restored.sql("select pad from load where id = -1") == "last"
    finally:
        faults.kill_leftovers(work_dir)
    assert "Traceback" not in pg.log_file.read_text(errors="replace")
