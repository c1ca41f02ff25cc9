"""Attacks on several repositories (issue #15) from outside the feature's own tests: a repository
that holds another cluster's stanza under the same name, with posix repositories (the storage
does not matter here) and PostgreSQL 15 clusters."""

from __future__ import annotations

import pytest
from backup_env import backup
from harness import procs
from pgpush_env import Pgpush

pytestmark = pytest.mark.integration


def posix(pgpush_cmd, work_dir, *names: str) -> Pgpush:
    """A pgpush whose repo1.. are posix directories ``names`` of the work dir."""
    options: dict[str, str] = {}
    for index, name in enumerate(names, 1):
        path = work_dir / name
        path.mkdir(exist_ok=True)
        procs.chown_tree(path, "postgres")
        options.update({f"repo{index}-type": "posix", f"repo{index}-path": str(path)})
    return Pgpush(pgpush_cmd, work_dir, repo=options)


def archiving(pp: Pgpush, cluster) -> None:
    pp.stanza_create(cluster)
    cluster.set_conf({"archive_command": pp.archive_command()})
    cluster.reload()


def test_restore_refuses_to_choose_across_repositories_of_different_clusters(pg_factory, pgpush_cmd, work_dir):
    """repo2 holds another cluster's stanza 'main' with a newer backup: the newest backup across the
    repositories would be that cluster's, restored without a word (and recovered through repo2, as
    repo1's stanza refuses the restored cluster).  Refused (44) naming both; ``--repo`` chooses."""
    one, two = posix(pgpush_cmd, work_dir, "r1"), posix(pgpush_cmd, work_dir, "r2")
    both = posix(pgpush_cmd, work_dir, "r1", "r2")
    ours = pg_factory("ours", conf={"archive_mode": "on", "archive_command": ""})
    theirs = pg_factory("theirs", conf={"archive_mode": "on", "archive_command": ""}, fresh=True)
    archiving(one, ours)
    archiving(two, theirs)
    mine, _ = backup(one, ours)
    foreign, _ = backup(two, theirs)
    assert mine < foreign
    target = pg_factory("target", init=False)
    res = both.run("restore", f"--pg1-path={target.datadir}", timeout=180)
    assert res.returncode == 44, res.stdout + res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 1 and "repo1" in errors[0] and "repo2" in errors[0], res.stderr
    assert "Traceback" not in res.stderr
    assert not target.datadir.exists() or not any(target.datadir.iterdir())  # nothing restored
    res = both.run("restore", f"--pg1-path={target.datadir}", "--repo=1", timeout=180)
    assert res.returncode == 0, res.stderr
    assert f"restore of backup {mine} (" in res.stdout, res.stdout


def test_restore_passes_over_an_unreadable_manifest_and_a_set_in_no_repository_is_refused(
        pg_factory, pgpush_cmd, work_dir):
    """The newest backup (in repo2 only) has a corrupt manifest: the restore warns, names repo2 and
    takes the next newest, from repo1 (first in priority order on a tie).  ``--set`` of a label no
    repository holds: one ERROR, exit 75 (an invalid backup set, as with one repository), nothing restored."""
    one, two = posix(pgpush_cmd, work_dir, "r1"), posix(pgpush_cmd, work_dir, "r2")
    both = posix(pgpush_cmd, work_dir, "r1", "r2")
    pg = pg_factory("pg", conf={"archive_mode": "on", "archive_command": ""})
    one.stanza_create(pg)
    two.stanza_create(pg)
    pg.set_conf({"archive_command": f"{one.archive_command()} && {two.archive_command()}"})
    pg.reload()
    older, _ = backup(both, pg, "--wait", "--wait-timeout=60")  # into both repositories
    newer, _ = backup(both, pg, "--repo=2", "--wait", "--wait-timeout=60")
    assert older < newer
    manifest = next((work_dir / "r2" / "backup" / "main" / newer).glob("backup.manifest*"))
    manifest.write_bytes(b"{not json")
    target = pg_factory("target", init=False)
    res = both.run("restore", f"--pg1-path={target.datadir}", timeout=180)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"restore of backup {older} (" in res.stdout and "from repo1" in res.stdout, res.stdout
    assert "WARN: repo2: " in res.stderr and f"backup {newer} is not restored from it" in res.stderr, res.stderr
    other = pg_factory("other", init=False)
    res = both.run("restore", f"--pg1-path={other.datadir}", "--set=20990101-000000F", timeout=60)
    errors = [line for line in res.stderr.splitlines() if line.startswith("ERROR")]
    assert res.returncode == 75 and len(errors) == 1 and "it is in no repository" in errors[0], res.stderr
    assert "Traceback" not in res.stderr
