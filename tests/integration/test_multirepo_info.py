"""info, verify and expire across two repositories (docs/operations.md, "Several repositories"):
repo1 on a backup host over SFTP (a real sshd), repo2 in a SeaweedFS bucket, PostgreSQL archiving
into both.

WAL reaches both through single-repository pushes joined by ``&&`` (archive_command); each backup
is one backup into both repositories (the same label in each).
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
from backup_env import backup, setup_archiving
from multirepo_env import S3_PREFIX, sftp_s3_pgpush
from pgpush_env import Pgpush

pytestmark = pytest.mark.integration

DOWN = {"repo1_host_timeout": 1}  # repo1's sshd is stopped: its error comes within seconds


def push_to_both(work_dir: Path, p1: Pgpush, p2: Pgpush) -> str:
    """An archive_command pushing to repo1, then to repo2 (one script: PostgreSQL cuts an
    archive_command longer than 1023 characters, and two full command lines are longer)."""
    script = work_dir / "push-both.sh"
    quoted = [" ".join(shlex.quote(a) for a in pp.argv("push")) + ' "$1"' for pp in (p1, p2)]
    script.write_text("#!/bin/sh\n" + " && ".join(quoted) + "\n")
    script.chmod(0o755)
    return f"{script} %p"


def info(pp: Pgpush, *args: str, **overrides) -> dict:
    res = pp.run("info", "--output=json", *args, **overrides)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)[0]


def copies(stanza: dict) -> list[tuple[str, int, str]]:
    return [(b["label"], b["repo"], b["status"]) for b in stanza["backups"]]


def test_info_verify_expire_across_an_sftp_and_an_s3_repository(pg_factory, sshd, seaweed, pgpush_cmd, work_dir):
    p1 = Pgpush(pgpush_cmd, work_dir, repo=sshd.pgpush_options())
    p2 = Pgpush(pgpush_cmd, work_dir, repo=seaweed.pgpush_options(f"/{S3_PREFIX}"))
    both = sftp_s3_pgpush(pgpush_cmd, work_dir, sshd, seaweed)
    pg = pg_factory("pg", conf={"archive_mode": "on", "archive_command": ""})
    p2.stanza_create(pg)
    setup_archiving(p1, pg)
    pg.set_conf({"archive_command": push_to_both(work_dir, p1, p2)})
    pg.reload()
    first, _ = backup(both, pg)
    second, _ = backup(both, pg)
    after = pg.generate_wal(3, payload_bytes=16)
    pg.wait_archived(after[-1])

    # Both answer and agree: each backup once per repository, oldest first; the archive in each.
    stanza = info(both)
    assert stanza["status"] == "ok" and stanza["repos_status"] == {"code": 0, "message": "ok", "disagree": []}
    assert [(r["repo"], r["status"]) for r in stanza["repos"]] == [(1, "ok"), (2, "ok")]
    assert copies(stanza) == [(first, 1, "DONE"), (first, 2, "DONE"), (second, 1, "DONE"), (second, 2, "DONE")]
    assert stanza["archive"]["repo"] == 1 and [a["repo"] for a in stanza["archives"]] == [1, 2]
    assert stanza["archives"][0]["max"] == stanza["archives"][1]["max"] >= after[-1]
    text = both.run("info", check=True).stdout
    for line in ("        repo1: ok\n        repo2: ok\n", "        repo1: wal archive min/max (",
                 "        repo2: wal archive min/max (", "            repo2: backup size: "):
        assert line in text, text
    assert text.count(f"full backup: {second}") == 2

    # Each repository its own retention: repo1 keeps one full, repo2 has none set and keeps everything,
    # with a warning naming its option.  A longer retention elsewhere is no disagreement.
    res = both.run("expire", "--repo1-retention-full=1")
    assert res.returncode == 0, res.stderr
    assert f"repo1: expire (repo1-retention-full=1): 1 backup(s) removed ({first})" in res.stdout
    assert "repo2: nothing expired: repo2-retention-full is not set" in res.stdout
    assert "option 'repo2-retention-full' is not set" in res.stderr
    stanza = info(both)
    assert copies(stanza) == [(first, 2, "DONE"), (second, 1, "DONE"), (second, 2, "DONE")]
    assert stanza["archives"][0]["min"] > stanza["archives"][1]["min"]
    assert stanza["repos_status"]["code"] == 0, stanza["repos_status"]
    # --repo=2 expires repo2 alone.
    res = both.run("expire", "--repo=2", "--repo2-retention-full=1")
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith(f"repo2: expire (repo2-retention-full=1): 1 backup(s) removed ({first}), 1 kept; ")
    assert res.stdout.count("\n") == 1  # nothing said of repo1: not touched

    # A hole in repo1 only: a disagreement that names the repository and the segment.
    hole = after[1]
    for path in (Path(sshd.repo_dir) / "archive" / "main").glob(f"*/*/{hole}-*"):
        path.unlink()
    stanza = info(both)
    assert stanza["repos_status"]["code"] == 4
    assert stanza["repos_status"]["disagree"] == [f"repo1 lacks WAL {hole} that repo2 holds"]
    assert stanza["archives"][0]["gaps"] == [[hole, hole]] and stanza["archives"][1]["gaps"] == []
    assert f"    repositories disagree: repo1 lacks WAL {hole} that repo2 holds" in both.run("info").stdout

    # A corrupt file in repo2: verify reads both, names the repository of the problem, fails with 42.
    storage = seaweed.storage(f"/{S3_PREFIX}")
    try:
        version = next(f.name for f in storage.list(f"backup/main/{second}/pg_data") if f.name.startswith("PG_VERSION"))
        storage.put(f"backup/main/{second}/pg_data/{version}", [b"garbage"], overwrite=True)
    finally:
        storage.close()
    res = both.run("verify")
    assert res.returncode == 42, res.stderr + res.stdout
    repo1, repo2 = res.stdout.split("repo2:\n")
    assert repo1.startswith("repo1:\n") and "backup file(s) of 1 backup(s): 0 problem(s)\n" in repo1
    assert f"  gap: {hole} to {hole}\n" in repo1 and "backup file(s) of 1 backup(s): 1 problem(s)\n" in repo2
    assert f"    repo2: backup {second} file 'pg_data/PG_VERSION': " in repo2
    assert [line for line in res.stderr.splitlines() if line.startswith("ERROR: [")] == [
        "ERROR: [042]: repo2: verify found 1 corrupt, missing, unreadable or conflicting file(s) in the repository"]

    # repo1 down: info still shows repo2 and exits 0; verify still verifies repo2; expire of both expires
    # repo2 and fails naming repo1.
    sshd.stop()
    stanza = info(both, **DOWN)
    assert stanza["status"] == "ok" and stanza["archive"]["repo"] == 2
    assert [(r["repo"], r["status"], r["code"]) for r in stanza["repos"]] == [(1, "error", 103), (2, "ok", 0)]
    assert stanza["repos_status"]["code"] == 99 and stanza["repos_status"]["message"].startswith("repo1: error (103) ")
    assert copies(stanza) == [(second, 2, "DONE")]
    assert "        repo1: error (103) " in both.run("info", **DOWN).stdout

    res = both.run("verify", **DOWN)
    assert res.returncode == 103, res.stderr + res.stdout
    assert "repo1:\n  not verified: " in res.stdout and f"    repo2: backup {second} file 'pg_data/PG_VERSION'" in res.stdout
    error = [line for line in res.stderr.splitlines() if line.startswith("ERROR: [")]
    assert error == ["ERROR: [103]: unable to find a valid repository:"], res.stderr  # the message goes on: repo1: ...
    assert "; repo2: verify found 1 corrupt" in res.stderr

    res = both.run("expire", "--repo1-retention-full=1", "--repo2-retention-full=1", **DOWN)
    assert res.returncode == 103, res.stderr
    assert "repo2: expire (repo2-retention-full=1): 0 backup(s) removed" in res.stdout
    assert "ERROR: [103]: unable to find a valid repository:\nrepo1: " in res.stderr
    assert copies(info(both, "--repo=2", **DOWN)) == [(second, 2, "DONE")]
