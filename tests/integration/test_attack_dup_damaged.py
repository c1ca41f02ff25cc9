"""A duplicate with the same checksum is acknowledged only when the stored copy is whole.

An older pgpush acknowledged SFTP uploads cut short, and a backup host can damage a file.  When
PostgreSQL archives such a segment again, the name (which carries the SHA-1) matches: acknowledging
it without reading the stored copy back lets PostgreSQL recycle its only good copy.  The stored copy
is read back and checked; a damaged one is replaced by the good local copy (a warning names the
damage), a whole one is left as it is (the usual warning), and a copy that cannot be read back fails
the push (103) instead of acknowledging it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from pgpush_env import Pgpush, sha1_file

pytestmark = pytest.mark.integration


def _stored(repo_dir: Path, segment: str) -> Path:
    found = list((repo_dir / "archive" / "main").glob(f"*/*/{segment}-*"))
    assert len(found) == 1, found
    return found[0]


def _rearchive(pg, segments: list[str], timeout: float = 60) -> None:
    """Make PostgreSQL archive ``segments`` again (their .done back to .ready) and wait until it has."""
    before = pg.archiver_stats()["archived_count"]
    status = pg.wal_dir / "archive_status"
    for seg in segments:
        os.rename(status / f"{seg}.done", status / f"{seg}.ready")
    pg.switch_wal()  # a new .ready wakes the archiver (it would sleep up to a minute)
    deadline = time.monotonic() + timeout
    while not (pg.archiver_stats()["archived_count"] >= before + len(segments)
               and all((status / f"{seg}.done").exists() for seg in segments)):
        assert time.monotonic() < deadline, (pg.archiver_stats(), pg.log_tail())
        time.sleep(0.2)


def _archiving(request, pg_factory, pgpush_cmd, work_dir, repo_type: str):
    if repo_type == "sftp":
        sshd = request.getfixturevalue("sshd")
        pp, repo_dir = Pgpush(pgpush_cmd, work_dir, repo=sshd.pgpush_options()), sshd.repo_dir
    else:
        pp, repo_dir = Pgpush(pgpush_cmd, work_dir), work_dir / "repo"
    pg = pg_factory("pg", conf={"archive_mode": "on", "archive_command": ""}, wal_segsize_mb=1)
    pp.stanza_create(pg)
    pg.set_conf({"archive_command": pp.archive_command()})
    pg.reload()
    return pp, pg, repo_dir


@pytest.mark.parametrize("repo_type", ["posix", "sftp"])
def test_postgres_archiving_a_segment_again_replaces_a_damaged_stored_copy_and_keeps_a_whole_one(
        request, pg_factory, pgpush_cmd, work_dir, repo_type):
    pp, pg, repo_dir = _archiving(request, pg_factory, pgpush_cmd, work_dir, repo_type)
    cut, garbled = pg.generate_wal(2, random_payload=True, payload_bytes=300_000)
    pg.wait_archived(garbled)
    stored_cut, stored_garbled = _stored(repo_dir, cut), _stored(repo_dir, garbled)
    os.truncate(stored_cut, stored_cut.stat().st_size // 2)  # what the SFTP bug left: acknowledged, cut short
    with open(stored_garbled, "r+b") as fh:  # damaged on the backup host
        fh.seek(stored_garbled.stat().st_size // 2)
        fh.write(b"\xff" * 64)

    _rearchive(pg, [cut, garbled])

    assert pg.archiver_stats()["failed_count"] == 0
    for seg in (cut, garbled):
        out = work_dir / f"{seg}.got"
        res = pp.run("get", seg, str(out))
        assert res.returncode == 0, res.stderr
        assert sha1_file(out) == sha1_file(pg.wal_dir / seg)
        assert len(list((repo_dir / "archive" / "main").glob(f"*/*/{seg}-*"))) == 1
    log = pp.log_text("archive-push")
    assert log.count("but the stored copy was damaged") == 2, log
    assert f"WAL file '{cut}' already exists in the archive with the same checksum, but the stored copy was " \
           "damaged" in log

    whole = _stored(repo_dir, cut).stat()
    _rearchive(pg, [cut])

    assert _stored(repo_dir, cut).stat().st_ino == whole.st_ino  # a whole copy is left as it is
    log = pp.log_text("archive-push")
    assert log.count("but the stored copy was damaged") == 2, log
    assert log.count(f"WAL file '{cut}' already exists in the archive with the same checksum") == 2, log


def test_a_duplicate_whose_stored_copy_cannot_be_read_back_fails_103_instead_of_being_acknowledged(
        pg_cluster, pgpush_cmd, work_dir):
    pp = Pgpush(pgpush_cmd, work_dir)
    pp.stanza_create(pg_cluster)
    seg = pg_cluster.generate_wal(1)[0]
    wal = pg_cluster.wal_dir / seg
    assert pp.run("push", str(wal)).returncode == 0
    stored = _stored(work_dir / "repo", seg)
    os.chmod(stored, 0)  # listed, but pgpush (postgres) can no longer read it

    res = pp.run("push", str(wal))

    assert res.returncode == 103, (res.returncode, res.stderr)
    assert res.stderr.startswith("ERROR: [103]: ") and "Traceback" not in res.stderr, res.stderr
    assert stored.exists() and stored.stat().st_mode & 0o777 == 0
