"""The asynchronous fast path meets OS errors (PostgreSQL as the client): a clear code, never a
traceback, never exit 1 (which restore_command reads as "not in the archive")."""

from __future__ import annotations

import os
import time

import pytest
from harness import procs
from pgpush_env import Pgpush

from pgpush.archive import lock

pytestmark = pytest.mark.integration


def _root_owned_queue(pp: Pgpush, direction: str):
    """SPOOL/archive/STANZA/DIRECTION exists but belongs to root (0755): postgres cannot write in it."""
    queue = pp.spool_path / "archive" / pp.stanza / direction
    queue.mkdir(parents=True, exist_ok=True)
    procs.chown_tree(pp.spool_path, "postgres")
    os.chown(queue, 0, 0)
    queue.chmod(0o755)
    return queue


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def test_async_push_into_unwritable_spool_fails_047_then_archives_once_fixed(pg_factory, pgpush_cmd, work_dir):
    pp = Pgpush(pgpush_cmd, work_dir, archive_timeout=3)
    pg = pg_factory("pg", conf={"archive_mode": "on", "archive_command": ""}, wal_segsize_mb=1)
    pp.stanza_create(pg)
    queue = _root_owned_queue(pp, "out")
    pg.set_conf({"archive_command": pp.archive_command(archive_async="y")})
    pg.reload()
    segment = pg.switch_wal()
    _wait_for(lambda: pg.archiver_stats()["failed_count"] >= 1, 30, pg.log_tail())
    log = pg.log_file.read_text()
    assert "ERROR: [047]: unable to create spool path" in log and "not writable" in log, pg.log_tail()
    assert "Traceback" not in log and "ERROR: [082]" not in log
    os.chown(queue, pg_uid(), -1)  # the operator fixes the spool: archiving resumes on its own
    pg.wait_archived(segment, timeout=60)
    lock_file = str(pp.spool_path / "archive" / pp.stanza / "archive-push.lock")
    _wait_for(lambda: not lock.is_locked(lock_file), 30, "the push parent did not end")


def test_async_get_from_unwritable_spool_fails_047_not_exit_1(pg_factory, pgpush_cmd, work_dir):
    pp = Pgpush(pgpush_cmd, work_dir, archive_timeout=3)
    pg = pg_factory("pg", conf={"archive_mode": "on", "archive_command": ""}, wal_segsize_mb=1)
    pp.stanza_create(pg)
    base = work_dir / "base"
    pg.run([pg.bin("pg_basebackup"), "-D", str(base), "-X", "stream", "-c", "fast", "-h", str(pg.socket_dir),
            "-p", str(pg.port), "-U", "postgres"], check=True)
    _root_owned_queue(pp, "in")
    restored = pg_factory("restored", init=False)
    restored._prepare_common()
    os.rename(base, restored.datadir)
    restored.set_conf({"port": restored.port, "unix_socket_directories": str(restored.socket_dir),
                       "archive_mode": "off", "restore_command": pp.restore_command(archive_async="y")})
    (restored.datadir / "recovery.signal").touch()
    restored.start(timeout=120)
    _wait_for(lambda: "ERROR: [047]" in restored.log_file.read_text(), 60, restored.log_tail())
    log = restored.log_file.read_text()
    assert "unable to create spool path" in log and "Traceback" not in log, restored.log_tail()


def pg_uid() -> int:
    import pwd

    return pwd.getpwnam("postgres").pw_uid


def test_fifos_in_the_spool_and_the_log_path_fail_029_instead_of_hanging_the_archiver(pg_factory, pgpush_cmd, work_dir):
    """A FIFO where the next segment's ``.ok`` goes, and where the push logs go: archive_command (and
    the parent it starts, holding the spool lock) used to block for ever on them (no reader), so
    PostgreSQL archived nothing and said nothing."""
    pp = Pgpush(pgpush_cmd, work_dir, archive_timeout=3)
    pg = pg_factory("pg", conf={"archive_mode": "on", "archive_command": ""}, wal_segsize_mb=1)
    pp.stanza_create(pg)
    queue = pp.spool_path / "archive" / pp.stanza / "out"
    queue.mkdir(parents=True, exist_ok=True)
    segment = pg.current_wal_segment()
    os.mkfifo(queue / f"{segment}.ok")
    os.mkfifo(pp.log_path / f"{pp.stanza}-archive-push.log")
    os.mkfifo(pp.log_path / f"{pp.stanza}-archive-push-async.log")  # where the parent's own output goes
    procs.chown_tree(pp.spool_path, "postgres")
    procs.chown_tree(pp.log_path, "postgres")
    pg.set_conf({"archive_command": pp.archive_command(archive_async="y")})
    pg.reload()
    assert pg.switch_wal() == segment
    _wait_for(lambda: "ERROR: [029]" in pg.log_file.read_text(), 30, pg.log_tail())
    log = pg.log_file.read_text()
    assert "is not a regular file" in log and "Traceback" not in log, pg.log_tail()
    (queue / f"{segment}.ok").unlink()  # the operator removes it: archiving resumes on its own
    pg.wait_archived(segment, timeout=60)
    lock_file = str(pp.spool_path / "archive" / pp.stanza / "archive-push.lock")
    _wait_for(lambda: not lock.is_locked(lock_file), 30, "the push parent did not end")
