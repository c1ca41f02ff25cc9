"""The spool's per-repository markers of async push (docs/architecture.md, "Several repositories in
async push") must never make a WAL file acknowledged while a repository lacks it: a marker says that
*this* repository holds *this* file, so a marker left by another configuration (the repositories
swapped or replaced) or for another file of the same name (a cluster rebuilt, its stanza recreated)
is not taken for a copy.  Two posix repositories, PostgreSQL as the client."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from backup_env import pg_opts
from harness import procs
from pgpush_env import Pgpush
from test_s3_e2e import wait_for

pytestmark = pytest.mark.integration


def in_repo(root: Path, seg: str) -> bool:
    return any(root.glob(f"archive/main/*/*/{seg}-*"))


def parent_gone(pp: Pgpush) -> bool:
    """No async push parent holds the spool lock."""
    import fcntl

    path = pp.spool_path / "archive" / pp.stanza / "archive-push.lock"
    if not path.exists():
        return True
    with open(path, "rb") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(fh, fcntl.LOCK_UN)
    return True


def test_markers_of_another_repository_or_another_file_are_not_taken_for_a_copy(pg_factory, pgpush_cmd, work_dir):
    a, b = work_dir / "repoA", work_dir / "repoB"
    for path in (a, b):
        path.mkdir()
        procs.chown_tree(path, "postgres")
    config = {"repo1-type": "posix", "repo1-path": str(a), "repo2-type": "posix", "repo2-path": str(b)}
    pp = Pgpush(pgpush_cmd, work_dir, repo=config, archive_async="y", archive_timeout=3, process_max=1)
    pg = pg_factory("pg", conf={"archive_mode": "on", "archive_command": "", "wal_keep_size": "1GB"})
    pp.stanza_create(pg)

    def archiving(on: bool) -> None:
        pg.set_conf({"archive_command": pp.archive_command() if on else "/bin/false"})
        pg.reload()
        if not on:
            wait_for(lambda: parent_gone(pp), 30, "the push parent to leave")

    # 1. repo2 (B) refuses every file: A gets seg, which waits for B with its marker for repo1.
    stanza_b = b / "archive" / "main"
    stanza_b.rename(b / "away")
    archiving(True)
    seg = pg.switch_wal()
    wait_for(lambda: (pp.out_dir / "repo1" / seg).exists(), 60, "seg's marker for repo1")
    archiving(False)
    assert not in_repo(b, seg) and not pg.is_archived(seg)

    # The operator swaps the repositories (B first now) and B is back: the marker said A holds seg,
    # not B: B must get seg before it is acknowledged.
    (b / "away").rename(stanza_b)
    pp.options.update({"repo1-path": str(b), "repo2-path": str(a)})
    archiving(True)
    pg.wait_archived(seg, timeout=60)
    assert in_repo(b, seg) and in_repo(a, seg)

    # 2. A marker for another file of the same name: B (repo1) got seg2 while A was refusing; then
    # the cluster is rebuilt and B's stanza recreated (emulated: B loses seg2, pg_wal holds another
    # file of that name). The marker is not B's copy of this file.
    archiving(False)
    stanza_a = a / "archive" / "main"
    stanza_a.rename(a / "away")
    archiving(True)
    seg2 = pg.switch_wal()
    wait_for(lambda: (pp.out_dir / "repo1" / seg2).exists(), 60, "seg2's marker for repo1")
    archiving(False)
    for path in b.glob(f"archive/main/*/*/{seg2}-*"):
        path.unlink()
    wal = pg.wal_dir / seg2
    shutil.copy2(wal, str(wal) + ".new")
    os.utime(str(wal) + ".new")
    os.replace(str(wal) + ".new", wal)
    procs.chown_tree(wal, "postgres")
    (a / "away").rename(stanza_a)
    archiving(True)
    pg.wait_archived(seg2, timeout=60)
    assert in_repo(b, seg2) and in_repo(a, seg2)
    archiving(False)


def test_stanza_create_and_check_every_repository_naming_the_one_that_fails(pg_factory, pgpush_cmd, work_dir):
    """stanza-create goes on past a repository that fails (adding one later is the command run again);
    check waits for the switched segment in every repository, and fails naming the one that lacks it."""
    a, b = work_dir / "repoA", work_dir / "repoB"
    a.write_text("not a directory")
    b.mkdir()
    procs.chown_tree(b, "postgres")
    config = {"repo1-type": "posix", "repo1-path": str(a), "repo2-type": "posix", "repo2-path": str(b)}
    pp = Pgpush(pgpush_cmd, work_dir, repo=config, archive_timeout=3)
    only_a = Pgpush(pgpush_cmd, work_dir, repo={"repo1-type": "posix", "repo1-path": str(a)})
    pg = pg_factory("pg", conf={"archive_mode": "on", "archive_command": only_a.archive_command()})
    res = pp.run("stanza-create", f"--pg1-path={pg.datadir}")
    assert res.returncode == 103 and "repo1: " in res.stderr, res.stderr
    assert "repo2" not in res.stderr.split("ERROR:")[1], res.stderr
    assert (b / "archive" / "main" / "archive.info").exists()  # repo2 has it all the same
    a.unlink()
    a.mkdir()
    procs.chown_tree(a, "postgres")
    res = pp.run("stanza-create", f"--pg1-path={pg.datadir}")
    assert res.returncode == 0, res.stderr
    assert "repo1: " in res.stdout and "repo2: " in res.stdout, res.stdout
    assert (a / "archive" / "main" / "archive.info").exists()

    # PostgreSQL archives to repo1 only: check fails, naming repo2 alone (repo1 got the segment).
    res = pp.run("check", *pg_opts(pg))
    assert res.returncode == 82, res.stderr
    error = res.stderr.split("ERROR: ", 1)[1]
    assert error.startswith("[082]: repo2: WAL segment ") and "repo1" not in error, res.stderr
