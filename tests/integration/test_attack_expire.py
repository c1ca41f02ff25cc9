"""Attacks on retention from outside its own tests: what `expire` (the CLI) may remove.

The repository is built through the catalog's own API (no PostgreSQL needed: expire reads
only names and JSON), then the real command runs on it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from harness import procs

from pgpush import wal
from pgpush.repo.catalog import Catalog
from pgpush.repo.repository import Repository
from pgpush.repo.status import DONE
from pgpush.storage.posix import PosixStorage

pytestmark = pytest.mark.integration

MB16 = 16 * 1024 * 1024
SYSTEM_ID = 7000000000000000001
F1, F2 = "20200101-000000F", "20200102-000000F"
RUNNING_INCR = F1 + "_20200103-000000I"  # started years ago by its label: a backup of a big cluster, still running


def _seg(n: int) -> str:
    return wal.segment_name(1, n, MB16)


def _record(label: str, n: int, day: int) -> dict:
    return {"label": label, "type": "full", "status": DONE, "wal_start": _seg(n), "wal_stop": _seg(n),
            "segment_size": MB16, "archive_id": "15-1", "start_time": f"2020-01-0{day}T00:00:00+00:00",
            "stop_time": f"2020-01-0{day}T00:10:00+00:00", "prior": None, "reference": [], "system_id": SYSTEM_ID}


def _build(root: Path) -> Repository:
    """Two DONE fulls (F1 then F2), their WAL archived, each with a manifest and one stored file."""
    repo = Repository(PosixStorage(str(root)), "main", compress_type="none")
    repo.stanza_create(SYSTEM_ID, 15)
    cat = Catalog(repo)
    for label, n, day in ((F1, 1, 1), (F2, 3, 2)):
        record = _record(label, n, day)
        repo.storage.put(f"backup/main/{label}/pg_data/PG_VERSION", [b"15\n"])
        cat.write_manifest(label, {"format": 1, "backup": record, "files": [], "dirs": [], "links": []})
        cat.add(record)
    for n in range(1, 5):
        repo.storage.put(f"archive/main/15-1/{_seg(n)[:16]}/{_seg(n)}-{'0' * 40}", [b"x"])
    return repo


def _expire(root: Path, user: str | None = None) -> subprocess.CompletedProcess:
    conf = root.parent / "empty.conf"
    conf.write_text("")
    run_as = ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups"] if user else []
    argv = [*run_as, sys.executable, "-m", "pgpush", f"--config={conf}", "--stanza=main", f"--repo1-path={root}",
            f"--log-path={root.parent / 'log'}", "--repo1-retention-full=1", "--log-level-console=info", "expire"]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def test_expire_keeps_a_backup_running_for_more_than_a_day_and_its_prior_chain(tmp_path):
    root = tmp_path / "repo"
    repo = _build(root)
    cat = Catalog(repo)
    # An incr of F1, started long ago by its label, copying still: it refreshed its marker just now.
    repo.storage.put(f"backup/main/{RUNNING_INCR}/pg_data/base/1/1259", [b"copied already"])
    cat.mark_started(RUNNING_INCR)

    res = _expire(root)

    assert res.returncode == 0, res.stderr
    assert (root / "backup/main" / RUNNING_INCR / "pg_data/base/1/1259").exists(), res.stderr
    # The incr may reference any file of F1's chain: F1 is kept with its manifest and its WAL.
    assert (root / "backup/main" / F1 / "backup.manifest").exists(), res.stderr
    assert F1 in {b["label"] for b in cat.read()}
    assert (root / f"archive/main/15-1/{_seg(1)[:16]}/{_seg(1)}-{'0' * 40}").exists()


def test_expire_removes_a_label_directory_whose_marker_is_more_than_a_day_old(tmp_path):
    root = tmp_path / "repo"
    repo = _build(root)
    repo.storage.put(f"backup/main/{RUNNING_INCR}/pg_data/base/1/1259", [b"copied already"])
    stale = json.dumps({"time": 1577836800.0, "host": "db1", "pid": 1}).encode()  # 2020-01-01: a crashed backup
    repo.storage.put(f"backup/main/{RUNNING_INCR}/backup.started", [stale], overwrite=True)

    res = _expire(root)

    assert res.returncode == 0, res.stderr
    assert not (root / "backup/main" / RUNNING_INCR).exists()
    assert not (root / "backup/main" / F1).exists()  # nothing needs F1 any more: retention applies
    assert (root / "backup/main" / F2 / "backup.manifest").exists()


def test_expire_leaves_alone_a_label_directory_whose_date_is_not_one(tmp_path):
    root = tmp_path / "repo"
    _build(root)
    odd = root / "backup/main/20201399-000000F"  # named like a label, month 13: no backup made it
    (odd / "pg_data").mkdir(parents=True)

    res = _expire(root)

    assert res.returncode == 0, res.stderr
    assert "its date is not one: left alone" in res.stderr
    assert (odd / "pg_data").is_dir()
    assert (root / "backup/main" / F2 / "backup.manifest").exists()


def test_an_interrupted_backup_that_cannot_be_removed_does_not_block_retention(work_dir):
    root = work_dir / "repo"
    _build(root)
    stale = root / "backup/main" / RUNNING_INCR
    (stale / "backup.started").parent.mkdir(parents=True)
    (stale / "backup.started").write_text(json.dumps({"time": 1577836800.0}))  # crashed in 2020
    procs.chown_tree(root, "postgres")
    stuck = stale / "pg_data"  # root's: the postgres user running expire cannot empty it
    stuck.mkdir()
    (stuck / "PG_VERSION").write_text("15\n")

    res = _expire(root, user="postgres")

    # The interrupted directory is reported, but only after retention was committed: F1 is gone
    # from the catalog, its manifest removed, nothing needs it; F2 is intact; the WAL before F2 expired.
    assert res.returncode == 0, res.stderr
    assert f"unable to remove incomplete backup {RUNNING_INCR}" in res.stderr, res.stderr
    assert [b["label"] for b in Catalog(Repository(PosixStorage(str(root)), "main")).read()] == [F2]
    assert not (root / "backup/main" / F1 / "backup.manifest").exists()
    assert (root / "backup/main" / F2 / "backup.manifest").exists()
    assert _wal_left(root) == [3, 4]


def test_info_keeps_a_backup_whose_label_directory_is_a_symlink(tmp_path):
    root = tmp_path / "repo"
    _build(root)
    elsewhere = tmp_path / "bigger-disk" / F2
    elsewhere.parent.mkdir()
    (root / "backup/main" / F2).rename(elsewhere)  # an operator moved the newest backup and left a link
    (root / "backup/main" / F2).symlink_to(elsewhere)

    conf = tmp_path / "empty.conf"
    conf.write_text("")
    res = subprocess.run([sys.executable, "-m", "pgpush", f"--config={conf}", "--stanza=main", f"--repo1-path={root}",
                          f"--log-path={tmp_path / 'log'}", "info", "--output=json"],
                         capture_output=True, text=True, timeout=60)

    assert res.returncode == 0, res.stderr
    assert [b["label"] for b in json.loads(res.stdout)[0]["backups"]] == [F1, F2]
    assert [b["label"] for b in Catalog(Repository(PosixStorage(str(root)), "main")).read()] == [F1, F2]


def _wal_left(root: Path) -> list[int]:
    return sorted(int(p.name[:24][16:], 16) for p in (root / "archive/main/15-1").glob("*/0000*"))


def test_expire_keeps_the_wal_a_running_backup_started_before_the_kept_full_needs(tmp_path):
    root = tmp_path / "repo"
    repo = _build(root)
    # A long full (or a standby's backup, which starts at its last restartpoint) started at segment 1,
    # before F2 (segment 3) was taken and finished; it is still copying.
    running = "20200103-000000F"
    Catalog(repo).mark_started(running, {"start_lsn": "0/1000028", "segment_size": MB16, "archive_id": "15-1"})

    res = _expire(root)

    assert res.returncode == 0, res.stderr
    assert not (root / "backup/main" / F1).exists()  # F1 itself is not needed by anyone
    assert _wal_left(root) == [1, 2, 3, 4]  # but the running backup's WAL from segment 1 on is


def test_expire_removes_no_wal_while_a_running_backup_has_no_start_yet(tmp_path):
    root = tmp_path / "repo"
    repo = _build(root)
    Catalog(repo).mark_started("20200103-000000F")  # waiting in pg_backup_start: its start could be anywhere

    res = _expire(root)

    assert res.returncode == 0, res.stderr
    assert "its start is not known yet: WAL is not expired" in res.stderr
    assert _wal_left(root) == [1, 2, 3, 4]
