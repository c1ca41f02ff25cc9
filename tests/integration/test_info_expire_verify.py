"""Holes in the archive as info reports them, retention, verify, check."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from backup_env import backup, backups, info_json, pg_opts, setup_archiving, wait_status
from harness import procs
from pgpush_env import Pgpush

from pgpush.repo import walarchive
from pgpush.repo.repository import Repository
from pgpush.storage.posix import PosixStorage

pytestmark = pytest.mark.integration


def _repo(pp: Pgpush) -> Repository:
    return Repository(PosixStorage(pp.options["repo1-path"]), pp.stanza)


def _stored_segments(pp: Pgpush) -> dict[str, Path]:
    out = {}
    for path in (Path(pp.options["repo1-path"]) / "archive" / pp.stanza).glob("*/*/*"):
        name = path.name.split("-", 1)[0]
        if len(name) == 24 and "-" in path.name:
            out[name] = path
    return out


def before_info_wal_stop(stanza: dict, label: str) -> str:
    return next(b["wal_stop"] for b in stanza["backups"] if b["label"] == label)


def test_hole_makes_backups_failed_and_info_reports_it(pg_cluster, pgpush_cmd, work_dir):
    pg = pg_cluster
    pp = Pgpush(pgpush_cmd, work_dir)
    setup_archiving(pp, pg)
    before, _ = backup(pp, pg, "--wait", "--wait-timeout=60")
    pg.generate_wal(2)
    pg.wait_archived(pg.switch_wal())

    # archive_command acknowledges without archiving: a hole, as archive-push-queue-max leaves one.
    pg.set_conf({"archive_command": "true"})
    pg.reload()
    lost, _ = backup(pp, pg)
    lost_info = backups(pp)[lost]
    assert lost_info["status"] == "WAITING_FOR_WALS"
    lost_segments = pg.generate_wal(2)
    pg.wait_archived(lost_segments[-1])
    # Mark one of the lost segments as dropped, as the async parent does over queue-max.
    walarchive.record_dropped(_repo(pp), lost_segments[0], "archive queue exceeded 1MB")
    procs.chown_tree(Path(pp.options["repo1-path"]), "postgres")

    pg.set_conf({"archive_command": pp.archive_command()})
    pg.reload()
    pg.generate_wal(2)
    after, _ = backup(pp, pg, "--wait", "--wait-timeout=60")

    stanza = info_json(pp)[0]
    info = {b["label"]: b for b in stanza["backups"]}
    assert [b["label"] for b in stanza["backups"]] == [before, lost, after]
    assert info[lost]["status"] == "FAILED"
    assert info[lost]["recoverable_to"] is None
    assert info[before]["status"] == info[after]["status"] == "DONE"
    # The backup before the hole cannot be recovered past it.
    assert info[before]["recoverable_to"] <= lost_info["start_time"]
    assert info[after]["recoverable_to"] >= info[after]["stop_time"]
    assert stanza["archive"]["dropped"] == [lost_segments[0]]
    gaps = stanza["archive"]["gaps"]
    assert len(gaps) == 1
    first, last = gaps[0]
    # The hole covers the lost backup's range; it may start one segment earlier when the segment open at the
    # moment archive_command became `true` was acknowledged by it too.
    assert first <= lost_info["wal_start"] <= last and last == lost_segments[-1]
    assert first > before_info_wal_stop(stanza, before)

    res = pp.run("info")
    assert res.returncode == 0, res.stderr
    assert f"gap: {first} to {last} missing" in res.stdout
    assert f"dropped by archive-push-queue-max: {lost_segments[0]}" in res.stdout
    assert "status: FAILED" in res.stdout

    # verify reports the gap but the files are sound: exit 0.
    res = pp.run("verify", "--process-max=2")
    assert res.returncode == 0, res.stderr + res.stdout
    assert f"gap: {first} to {last}" in res.stdout and "0 problem(s)" in res.stdout


def test_verify_finds_corrupt_backup_and_wal_files(pg_cluster, pgpush_cmd, work_dir):
    pg = pg_cluster
    pp = Pgpush(pgpush_cmd, work_dir, compress_type="none")
    setup_archiving(pp, pg)
    label, _ = backup(pp, pg, "--wait", "--wait-timeout=60")
    pg.wait_archived(pg.switch_wal())
    res = pp.run("verify")
    assert res.returncode == 0, res.stderr + res.stdout

    stored = Path(pp.options["repo1-path"]) / "backup" / pp.stanza / label / "pg_data" / "PG_VERSION"
    stored.write_text("99\n")
    segment, path = sorted(_stored_segments(pp).items())[-1]
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    path.write_bytes(bytes(data))
    res = pp.run("verify")
    assert res.returncode == 42, res.stderr + res.stdout
    assert f"backup {label} file 'pg_data/PG_VERSION': checksum mismatch" in res.stdout
    assert f"WAL file 15-1/{segment}: checksum mismatch" in res.stdout
    assert "2 problem(s)" in res.stdout

    # restore refuses the corrupt file too.
    res = pp.run("restore", f"--pg1-path={work_dir / 'restored'}")
    assert res.returncode == 42, res.stderr
    assert "PG_VERSION" in res.stderr


def test_expire_keeps_exactly_what_retention_needs(pg_cluster, pgpush_cmd, work_dir):
    pg = pg_cluster
    pp = Pgpush(pgpush_cmd, work_dir)
    setup_archiving(pp, pg)

    def take(*args: str) -> str:
        label, _ = backup(pp, pg, "--wait", "--wait-timeout=60", "--process-max=2", *args)
        pg.generate_wal(1)
        return label

    f1 = take()
    i1 = take("--type=incr")
    f2 = take()
    d2 = take("--type=diff")
    i2 = take("--type=incr")
    f3 = take()
    pg.wait_archived(pg.switch_wal())
    info = backups(pp)
    assert [info[x]["type"] for x in (f1, i1, f2, d2, i2, f3)] == ["full", "incr", "full", "diff", "incr", "full"]
    assert info[d2]["prior"] == f2 and info[i2]["prior"] == d2

    res = pp.run("expire")
    assert res.returncode == 0, res.stderr
    assert "repo1-retention-full is not set" in res.stdout
    assert set(backups(pp)) == {f1, i1, f2, d2, i2, f3}

    res = pp.run("expire", "--repo1-retention-full=2")
    assert res.returncode == 0, res.stderr
    remaining = backups(pp)
    assert set(remaining) == {f2, d2, i2, f3}
    backup_root = Path(pp.options["repo1-path"]) / "backup" / pp.stanza
    assert sorted(p.name for p in backup_root.iterdir() if p.is_dir()) == sorted([f2, d2, i2, f3])

    # WAL: nothing older than f2's start remains, everything from it on does.
    start = remaining[f2]["wal_start"]
    segments = sorted(_stored_segments(pp))
    assert segments[0] == start
    stanza = info_json(pp)[0]
    assert stanza["archive"]["min"] == start and stanza["archive"]["gaps"] == []
    assert all(b["status"] == "DONE" for b in stanza["backups"])

    # The kept chain still restores: the incr references files of f2 and d2.
    restored = work_dir / "restored"
    res = pp.run("restore", f"--pg1-path={restored}", f"--set={i2}", "--type=immediate")
    assert res.returncode == 0, res.stderr
    assert (restored / "PG_VERSION").read_text() == (pg.datadir / "PG_VERSION").read_text()

    # Again with the same retention: nothing more to remove.
    res = pp.run("expire", "--repo1-retention-full=2")
    assert res.returncode == 0 and "0 backup(s) removed" in res.stdout, res.stdout + res.stderr


def test_check_on_primary_and_standby(pg_factory, pgpush_cmd, work_dir):
    pp = Pgpush(pgpush_cmd, work_dir)
    primary = pg_factory("primary", conf={"archive_mode": "on", "archive_command": ""})
    pp.stanza_create(primary)
    # archive_command empty: check fails clearly.
    res = pp.run("check", *pg_opts(primary))
    assert res.returncode == 87, res.stderr
    setup_archiving(pp, primary)
    res = pp.run("check", *pg_opts(primary), "--archive-timeout=30")
    assert res.returncode == 0, res.stderr
    assert "check passed" in res.stdout
    # Twice in a row (the second switch would be a no-op without a WAL record first).
    res = pp.run("check", *pg_opts(primary), "--archive-timeout=30")
    assert res.returncode == 0, res.stderr

    # archive_command that archives elsewhere: the segment never shows up -> 82 after archive-timeout.
    primary.set_conf({"archive_command": "true"})
    primary.reload()
    res = pp.run("check", *pg_opts(primary), "--archive-timeout=2")
    assert res.returncode == 82, res.stderr
    primary.set_conf({"archive_command": pp.archive_command()})
    primary.reload()

    standby = primary.make_standby("standby", conf={"archive_command": pp.archive_command()})
    res = pp.run("check", *pg_opts(standby))
    assert res.returncode == 0 and "archiving not tested" in res.stdout, res.stderr
    res = pp.run("check", *pg_opts(standby), f"--primary-conninfo={primary.conninfo}", "--archive-timeout=30")
    assert res.returncode == 0, res.stderr
    assert "switched on the primary" in res.stdout

    # Another stanza's cluster is refused.
    other = pg_factory("other", conf={"archive_mode": "on", "archive_command": ""}, fresh=True)
    res = pp.run("check", *pg_opts(other))
    assert res.returncode == 44, res.stderr


def test_backup_needs_a_stanza_and_info_of_all_stanzas(pg_cluster, pgpush_cmd, work_dir):
    pg = pg_cluster
    pp = Pgpush(pgpush_cmd, work_dir)
    res = pp.run("backup", *pg_opts(pg))
    assert res.returncode == 55, res.stderr
    assert "stanza-create" in res.stderr
    setup_archiving(pp, pg)
    label, _ = backup(pp, pg, "--wait", "--wait-timeout=60")
    wait_status(pp, label, "DONE")
    # info without --stanza and without a config file: every stanza in the repository.
    argv = [a for a in pp.argv("info", "--output=json") if not a.startswith("--stanza=")]
    res = subprocess.run(["runuser", "-u", "postgres", "--", *argv], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    stanzas = json.loads(res.stdout)
    assert [s["name"] for s in stanzas] == ["main"]
    assert stanzas[0]["backups"][0]["label"] == label
    for key in ("label", "type", "status", "from_standby", "start_lsn", "stop_lsn", "wal_start", "wal_stop",
                "start_time", "stop_time", "size", "repo_size", "recoverable_to"):
        assert key in stanzas[0]["backups"][0]
    assert set(stanzas[0]["archive"]) >= {"min", "max", "gaps", "dropped"}
