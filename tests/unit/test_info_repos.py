"""``info`` over several repositories: what counts as a disagreement (pure), and the JSON and
text of a stanza whose repositories differ (posix repositories, no PostgreSQL)."""

from __future__ import annotations

import json

from pgpush import config, wal
from pgpush.commands import info, multirepo
from pgpush.commands.info_agree import DB_MISMATCH, DIFFERENT, OK, Copy, disagreements, ranges, summary
from pgpush.errors import FileReadError, RepoInvalidError
from pgpush.repo.repository import Repository
from pgpush.storage.posix import PosixStorage

MB16 = 16 * 1024 * 1024


def seg(n: int, tli: int = 1) -> str:
    return wal.segment_name(tli, n, MB16)


def copy(label: str, segments, backups=(), system_id=7, version=15) -> Copy:
    return Copy(label, system_id, version, "15-1", {seg(n) for n in segments}, MB16,
                [(f"2024-01-0{i}T00:00:00+00:00", name, status) for i, (name, status) in enumerate(backups, 1)])


def test_identical_repositories_agree():
    assert disagreements([copy("repo1", range(1, 6)), copy("repo2", range(1, 6))]) == (OK, [])
    assert disagreements([copy("repo1", range(1, 6))]) == (OK, [])


def test_a_hole_and_a_lag_in_one_repository_are_named_with_their_ranges():
    code, found = disagreements([copy("repo1", range(1, 10)), copy("repo2", [1, 2, 5, 6, 7])])
    assert code == DIFFERENT
    assert found == [f"repo2 lacks WAL {seg(3)} to {seg(4)}, {seg(8)} to {seg(9)} that repo1 holds"]


def test_older_wal_and_backups_kept_by_a_longer_retention_are_no_disagreement():
    longer = copy("repo1", range(1, 10), [("20240101-000000F", "DONE"), ("20240102-000000F", "DONE")])
    shorter = copy("repo2", range(5, 10), [("20240102-000000F", "DONE")])
    shorter.backups = [("2024-01-02T00:00:00+00:00", "20240102-000000F", "DONE")]
    assert disagreements([longer, shorter]) == (OK, [])


def test_a_missing_backup_and_a_status_that_differs_are_disagreements():
    a = copy("repo1", range(1, 5), [("20240101-000000F", "DONE"), ("20240102-000000F", "DONE")])
    b = copy("repo2", range(1, 5), [("20240101-000000F", "FAILED")])
    code, found = disagreements([a, b])
    assert code == DIFFERENT
    assert "repo2 lacks backup 20240102-000000F" in found
    assert "backup 20240101-000000F is DONE in repo1, FAILED in repo2" in found
    # A repository without any backup lacks every backup of the others.
    assert disagreements([a, copy("repo2", range(1, 5))])[1] == ["repo2 lacks backups 20240101-000000F, 20240102-000000F"]


def test_another_database_is_a_mismatch():
    code, found = disagreements([copy("repo1", [1]), copy("repo2", [1], system_id=8)])
    assert code == DB_MISMATCH and "repo2 holds another database (system id 8" in found[0]


def test_summary_puts_an_unanswered_repository_first():
    assert summary([], OK, []) == {"code": 0, "message": "ok", "disagree": []}
    out = summary(["repo2: error (103) down"], DIFFERENT, ["repo3 lacks WAL X that repo1 holds"])
    assert out["code"] == 99
    assert out["message"] == "repo2: error (103) down; repositories disagree: repo3 lacks WAL X that repo1 holds"


def test_ranges_group_consecutive_segments_per_timeline():
    assert ranges([seg(1), seg(2), seg(4), seg(5, 2)], MB16) == [f"{seg(1)} to {seg(2)}", seg(4), seg(5, 2)]


def test_combined_errors_keep_the_first_code_and_every_message():
    one = RepoInvalidError("repo1: down")
    assert multirepo.combined([one]) is one
    both = multirepo.combined([one, FileReadError("repo2: verify found 1")])
    assert both.code == one.code and both.message == "repo1: down; repo2: verify found 1"


def test_info_json_and_text_name_each_repository(tmp_path):
    """repo1 holds the stanza, repo2 does not, repo3 is a path nothing can be read from."""
    Repository(PosixStorage(str(tmp_path / "r1")), "main", compress_type="none").stanza_create(7, 15)
    (tmp_path / "r3").write_text("not a directory")
    argv = [f"--repo1-path={tmp_path / 'r1'}", f"--repo2-path={tmp_path / 'r2'}", f"--repo3-path={tmp_path / 'r3'}",
            "--stanza=main", "--log-level-file=off", "--log-level-console=off", "--output=json", "info"]
    out = json.loads(info.run(config.load(argv, environ={})))[0]
    assert out["status"] == "ok" and out["archive"]["repo"] == 1
    assert [a["repo"] for a in out["archives"]] == [1]
    assert [(r["repo"], r["status"]) for r in out["repos"]] == [(1, "ok"), (2, "missing-stanza"), (3, "error")]
    assert out["repos_status"]["code"] == 99
    assert out["repos_status"]["message"].startswith("repo2: error (")

    text = info.run(config.load(argv[:-2] + ["--output=text", "info"], environ={}))
    assert "        repo1: ok\n        repo2: error (" in text
    assert "        repo1: wal archive min/max (15-1): none present" in text

    # --repo=2 shows repo2 alone: no repository answered, the stanza is an error naming it.
    only = json.loads(info.run(config.load(argv[:-1] + ["--repo=2", "info"], environ={})))[0]
    assert only["status"] == "error" and [r["repo"] for r in only["repos"]] == [2]
    assert only["archive"]["repo"] is None and only["archives"] == [] and only["backups"] == []
