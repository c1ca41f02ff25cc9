"""push and check with several repositories (docs/operations.md, "Several repositories"), PostgreSQL as
the client: repo1 on a backup host over SFTP (a real sshd), repo2 in a SeaweedFS bucket.

A WAL file is acknowledged only once it is in both; a repository that is down holds back neither the
other's copy nor, once it is back, its own: it gets what it missed."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from backup_env import pg_opts
from multirepo_env import S3_PREFIX, archived_bucket, archived_sftp, sftp_s3_options
from pgpush_env import Pgpush, sha1_file
from test_s3_e2e import bucket_keys, done_segments, wait_for

pytestmark = pytest.mark.integration


def multirepo_pgpush(pgpush_cmd, work_dir: Path, sshd, seaweed, **opts) -> Pgpush:
    """repo1 over SFTP, repo2 in the bucket, both in a config file: with both on its command line the
    archive_command passes PostgreSQL's limit (1024 bytes after %p is substituted) and is cut short."""
    conf = work_dir / "pgpush.conf"
    conf.write_text("[global]\n" + "".join(f"{k}={v}\n" for k, v in sftp_s3_options(sshd, seaweed).items()))
    return Pgpush(pgpush_cmd, work_dir, repo={"config": str(conf)}, **opts)


def stanza_create_each(pp: Pgpush, cluster) -> None:
    """The stanza in each repository, one repository at a time (stanza-create's own several-repository
    support is not what these tests are about)."""
    options = sftp_s3_options_of(pp)
    for index in (1, 2):
        own = {"repo1-" + k[len(f"repo{index}-"):]: v for k, v in options.items() if k.startswith(f"repo{index}-")}
        Pgpush(pp.cmd, pp.work_dir, stanza=pp.stanza, repo=own).stanza_create(cluster)


def sftp_s3_options_of(pp: Pgpush) -> dict[str, str]:
    lines = Path(pp.options["config"]).read_text().splitlines()[1:]
    return dict(line.split("=", 1) for line in lines)


def primary(pg_factory, pp: Pgpush, **conf):
    pg = pg_factory("pg", conf={"archive_mode": "on", "archive_command": "", "wal_keep_size": "2GB",
                                "max_wal_size": "1GB", **conf})
    stanza_create_each(pp, pg)
    pg.set_conf({"archive_command": pp.archive_command()})
    pg.reload()
    return pg


def assert_in_both(pp: Pgpush, pg, sshd, seaweed, names) -> None:
    sftp, bucket = archived_sftp(sshd), archived_bucket(seaweed)
    for name in names:
        local = sha1_file(pg.wal_dir / name)
        assert sftp.get(name) == [local], (name, sftp.get(name))
        assert bucket.get(name) == [local], (name, bucket.get(name))


def dropped_markers_sftp(sshd) -> set[str]:
    return {p.name[: -len(".dropped")] for p in sshd.repo_dir.rglob("*.dropped")}


def dropped_markers_bucket(seaweed) -> set[str]:
    return {k.rsplit("/", 1)[-1][: -len(".dropped")] for k in bucket_keys(seaweed, f"{S3_PREFIX}/archive/")
            if k.endswith(".dropped")}


def test_sync_then_async_push_every_segment_in_both_and_check_names_the_repository_down(
        pg_factory, sshd, seaweed, pgpush_cmd, work_dir):
    pp = multirepo_pgpush(pgpush_cmd, work_dir, sshd, seaweed, archive_async="n", archive_timeout=20,
                        repo1_host_timeout=3, repo2_host_timeout=3)
    pg = primary(pg_factory, pp)
    sync_segs = pg.generate_wal(3, random_payload=True)
    pg.wait_archived(sync_segs[-1], timeout=60)
    assert_in_both(pp, pg, sshd, seaweed, sync_segs)

    # A second push of an archived segment: a duplicate in each repository, said for each.
    res = pp.run("push", f"pg_wal/{sync_segs[0]}", cwd=pg.datadir)
    assert res.returncode == 0, res.stderr
    for label in ("repo1", "repo2"):
        assert f"WARN: {label}: WAL file '{sync_segs[0]}' already exists in the archive with the same checksum" \
            in res.stderr, res.stderr

    # check: both repositories, and the switched segment in each.
    res = pp.run("check", *pg_opts(pg))
    assert res.returncode == 0, res.stderr
    assert "check passed" in res.stdout and "repo1 (" in res.stdout and "repo2 (" in res.stdout, res.stdout

    pp.options["archive-async"] = "y"
    pp.options["process-max"] = "2"
    pg.set_conf({"archive_command": pp.archive_command()})
    pg.reload()
    async_segs = pg.generate_wal(4, random_payload=True)
    pg.pgbench_init(scale=1)
    last = pg.switch_wal()
    pg.wait_archived(last, timeout=120)
    done = done_segments(pg)
    assert set(async_segs + [last]) <= set(done)
    assert_in_both(pp, pg, sshd, seaweed, done)  # every segment PostgreSQL marked .done is in both
    log = pp.log_text("archive-push-async")
    assert f"repo1: pushed WAL file '{last}'" in log and f"repo2: pushed WAL file '{last}'" in log
    assert not list(pp.out_dir.glob("repo*/0*"))  # no per-repository state left once all is in both

    # check with the backup host down: fails, naming repo1 only (repo2 got the switched segment).
    sshd.stop()
    res = pp.run("check", *pg_opts(pg), archive_timeout=15)
    assert res.returncode == 103, res.stderr
    assert "ERROR: [103]: " in res.stderr and "repo1: " in res.stderr and "repo2" not in res.stderr, res.stderr


def test_backup_host_down_offsite_keeps_up_then_host_catches_up(pg_factory, sshd, seaweed, pgpush_cmd, work_dir):
    pp = multirepo_pgpush(pgpush_cmd, work_dir, sshd, seaweed, archive_async="y", process_max=1, archive_timeout=4,
                        repo1_host_timeout=2, repo2_host_timeout=5)
    pg = primary(pg_factory, pp)
    first = pg.switch_wal()
    pg.wait_archived(first, timeout=60)

    sshd.stop()
    pg.pgbench_init(scale=1)
    segs = pg.generate_wal(3, random_payload=True)
    global_error = pp.out_dir / "global.error"
    wait_for(global_error.exists, 60, "global.error")
    text = global_error.read_text()
    assert text.startswith("103\n") and "\nrepo1: " in text and "repo2" not in text, text
    # The offsite copy keeps up while the backup host is down, also with WAL written after the failure.
    segs += pg.generate_wal(2, random_payload=True)
    wait_for(lambda: set(segs) <= set(archived_bucket(seaweed)), 60, "every segment in the bucket")
    assert not set(segs) & set(archived_sftp(sshd))
    assert not set(segs) & set(done_segments(pg))  # not in every repository: not acknowledged
    assert not any(pg.is_archived(s) for s in segs)
    # What repo2 holds of what is not yet in both is in the spool (repo1 holds none of it).
    assert set(segs) <= {p.name for p in pp.out_dir.glob("repo2/0*")}
    assert not list(pp.out_dir.glob("repo1/0*"))

    sshd.restart()
    nxt = pg.switch_wal()  # wakes PostgreSQL's archiver from its retry pause
    pg.wait_archived(nxt, timeout=120)
    assert set(segs) <= set(done_segments(pg))
    assert_in_both(pp, pg, sshd, seaweed, segs + [nxt])
    wait_for(lambda: not global_error.exists(), 30, "global.error to go")
    log = pp.log_text("archive-push-async")
    assert "repo1: " in log


def test_queue_max_with_the_backup_host_down_records_the_hole_where_the_file_is_missing(
        pg_factory, sshd, seaweed, pgpush_cmd, work_dir):
    pp = multirepo_pgpush(pgpush_cmd, work_dir, sshd, seaweed, archive_async="y", archive_timeout=3,
                        repo1_host_timeout=2, archive_push_queue_max="48MB")
    pg = primary(pg_factory, pp)
    first = pg.switch_wal()
    pg.wait_archived(first, timeout=60)
    sshd.stop()
    # One at a time: each reaches the bucket before the next, until the queue (what is not in
    # both) passes 48MB and all of it is dropped, the newest before it reached the bucket.
    segs: list[str] = []
    msg = "dropped WAL file '{}' because archive queue exceeded 48MB"
    for _ in range(6):
        seg = pg.generate_wal(1)[0]
        segs.append(seg)
        wait_for(lambda s=seg: s in archived_bucket(seaweed) or msg.format(s) in pp.log_text("archive-push-async"),
                 60, f"{seg} in the bucket or dropped")
        if msg.format(seg) in pp.log_text("archive-push-async"):
            break
    log = pp.log_text("archive-push-async")
    dropped = [s for s in segs if msg.format(s) in log]
    assert dropped and dropped[-1] == segs[-1], log
    in_bucket = set(archived_bucket(seaweed))
    assert set(dropped) & in_bucket, (dropped, in_bucket)  # some dropped files are in repo2 ...
    assert set(dropped) - in_bucket, (dropped, in_bucket)  # ... and one is not
    pg.wait_archived(dropped[-1], timeout=60)  # acknowledged: dropped
    # repo2 is reachable: the hole of the file it lacks is recorded there at once, and only that one.
    wait_for(lambda: set(dropped) - in_bucket <= dropped_markers_bucket(seaweed), 30, "the hole in the bucket")
    assert not dropped_markers_bucket(seaweed) & in_bucket
    assert (pp.out_dir / "dropped.list").exists()  # repo1's holes wait in the spool
    sshd.restart()
    nxt = pg.switch_wal()
    pg.wait_archived(nxt, timeout=120)
    wait_for(lambda: set(dropped) <= dropped_markers_sftp(sshd), 30, "the holes in repo1")
    assert not set(dropped) & set(archived_sftp(sshd))
    assert dropped_markers_bucket(seaweed) == set(dropped) - in_bucket
    assert_in_both(pp, pg, sshd, seaweed, [nxt])
    wait_for(lambda: not (pp.out_dir / "dropped.list").exists(), 10, "repo1's drop list to go")


def test_sync_push_backup_host_down_fails_naming_it_and_pushes_to_the_other(
        pg_factory, sshd, seaweed, pgpush_cmd, work_dir):
    pp = multirepo_pgpush(pgpush_cmd, work_dir, sshd, seaweed, archive_async="n", repo1_host_timeout=2)
    pg = pg_factory("pg", conf={"archive_mode": "on", "archive_command": ""})
    stanza_create_each(pp, pg)
    seg = pg.generate_wal(1)[0]
    sshd.stop()
    start = time.monotonic()
    res = pp.run("push", f"pg_wal/{seg}", cwd=pg.datadir, timeout=60)
    assert res.returncode == 103, res.stderr
    assert time.monotonic() - start < 30
    assert "ERROR: [103]: unable to find a valid repository:\nrepo1: " in res.stderr, res.stderr
    assert archived_bucket(seaweed).get(seg) == [sha1_file(pg.wal_dir / seg)]  # repo2 has it all the same
    sshd.restart()
    res = pp.run("push", f"pg_wal/{seg}", cwd=pg.datadir, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "WARN: repo2: WAL file" in res.stderr and "repo1: WAL file" not in res.stderr, res.stderr
    assert archived_sftp(sshd).get(seg) == [sha1_file(pg.wal_dir / seg)]
