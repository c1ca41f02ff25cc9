"""Seams between the fixes: a worker killed mid-file over and over leaves no space taken for ever.

A ``protocol-timeout`` shorter than one transfer (or the OOM killer) kills the async push worker
while it writes the temporary copy of a segment into the repository; SIGKILL runs no clean-up, and
the temporary file is never listed, never renamed, never expired.  PostgreSQL retries the segment
every few seconds: each retry used to leave one more segment's worth of space on the backup host,
until it was full.  Each new attempt now removes what killed writers of the same name (this host,
dead process) left, so once the option is fixed the repository holds the archived files only.
"""

from __future__ import annotations

import subprocess
import time

import pytest
from harness import faults, procs
from pgpush_env import Pgpush, sha1_file

from pgpush.fsutil import TMP_SUFFIX
from pgpush.storage.base import PROCESS_SPACE
from pgpush.storage.posix import PosixStorage

pytestmark = pytest.mark.integration

ARCHIVE_TIMEOUT = 5


def _leftovers(repo_dir) -> list[str]:
    return sorted(p.name for p in (repo_dir / "archive").rglob("*.pgpush.tmp*"))


def _plant_dead_writers_copy(repo_dir, pp: Pgpush, pg, seg: str):
    """What a writer SIGKILLed mid-file leaves, planted for certain: on a busy machine the kill at
    protocol-timeout can come before the worker has created its temporary file at all."""
    gone = subprocess.Popen(["true"])
    gone.wait()  # its pid is a writer of this host that is no longer alive
    major = int(pg.sql("show server_version_num")) // 10000
    directory = repo_dir / "archive" / pp.stanza / f"{major}-1" / seg[:16]
    directory.mkdir(parents=True, exist_ok=True)
    final = f"{seg}-{sha1_file(pg.wal_dir / seg)}.zst"
    (directory / f"{final}{TMP_SUFFIX}.{PROCESS_SPACE}-{gone.pid}.000000").write_bytes(b"\0" * 65536)
    procs.chown_tree(repo_dir, "postgres")


def test_segments_retried_after_workers_killed_mid_file_leave_no_temporary_files_in_the_repository(
        pg_factory, pgpush_cmd, work_dir):
    """(SFTP, where connecting alone outlasts such a timeout, is covered by the fault matrix's kills.)"""
    repo_dir = work_dir / "repo"
    pp = Pgpush(pgpush_cmd, work_dir, archive_async="y", archive_timeout=ARCHIVE_TIMEOUT, process_max=2)
    pg = pg_factory("pg", conf={"archive_mode": "on", "archive_command": "", "wal_keep_size": "1GB"})
    pp.stanza_create(pg)
    pg.set_conf({"archive_command": pp.archive_command(protocol_timeout="0.1")})  # shorter than any transfer
    pg.reload()
    segments = pg.generate_wal(2, random_payload=True, payload_bytes=8 << 20)

    deadline = time.monotonic() + 60
    while pg.archiver_stats()["failed_count"] < 4:
        assert time.monotonic() < deadline, (pg.archiver_stats(), _leftovers(repo_dir), pp.log_text("archive-push-async"))
        time.sleep(0.2)
    assert "no answer within protocol-timeout (0.1s)" in pp.log_text("archive-push-async")
    _plant_dead_writers_copy(repo_dir, pp, pg, segments[0])
    assert _leftovers(repo_dir)

    pg.set_conf({"archive_command": pp.archive_command()})  # the operator fixes the option
    pg.reload()
    pg.switch_wal()  # wake the archiver from its back-off
    for seg in segments:
        pg.wait_archived(seg, timeout=90)

    assert _leftovers(repo_dir) == []
    stored = faults.check_archive(PosixStorage(str(repo_dir)))  # every stored WAL decodes to its name's SHA-1
    for seg in segments:
        assert stored[seg] == sha1_file(pg.wal_dir / seg)
