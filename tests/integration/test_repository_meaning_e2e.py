"""What the repository means, end to end with PostgreSQL: one content per WAL name when two
clusters race (a split brain), retention that never removes the only restorable backup, a
diff/incr choosing its prior while expire runs, and garbage .history files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from backup_env import backup, backups, pg_opts, setup_archiving
from harness import procs
from pgpush_env import Pgpush, sha1_file

pytestmark = pytest.mark.integration

CONF = {"archive_mode": "on", "archive_command": ""}


def _stored(pp: Pgpush, name: str) -> list[Path]:
    return sorted((Path(pp.options["repo1-path"]) / "archive" / pp.stanza).glob(f"*/*/{name}-*"))


def _push_from(pp: Pgpush, cluster, name: str) -> subprocess.Popen:
    """``pgpush push pg_wal/NAME`` as PostgreSQL's archive_command runs it (postgres, cwd PGDATA)."""
    return procs.popen_as("postgres", pp.argv("push", f"pg_wal/{name}"), cwd=cluster.datadir,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env={k: v for k, v in os.environ.items() if not k.startswith("PGPUSH_")})


def _restored_recovers(pp: Pgpush, pg_factory, label: str) -> None:
    """Restore ``label`` and start PostgreSQL on it: it must reach consistency through pgpush get and promote."""
    restored = pg_factory(f"restored-{label[-7:-1]}", init=False)
    restored._prepare_common()
    res = pp.run("restore", f"--pg1-path={restored.datadir}", f"--set={label}", "--type=immediate",
                 "--target-action=promote")
    assert res.returncode == 0, res.stderr
    restored.set_conf({"port": restored.port, "unix_socket_directories": str(restored.socket_dir),
                       "archive_mode": "off"})
    restored.start(timeout=120)
    restored.wait_promoted(60)
    restored.stop()


@pytest.mark.parametrize("repo_type", ["posix", "sftp"])
def test_split_brain_clusters_racing_one_wal_name_never_both_archive_it(pg_factory, pgpush_cmd, work_dir, request,
                                                                         repo_type):
    # Two clusters copied from one data directory: same system identifier, same timeline, so
    # the same WAL names with different content, as after a failover where the old primary lives on.
    a = pg_factory("a", conf=CONF)
    b = pg_factory("b", conf=CONF)
    assert a.system_identifier() == b.system_identifier()
    repo = request.getfixturevalue("sshd").pgpush_options() if repo_type == "sftp" else None
    pp = Pgpush(pgpush_cmd, work_dir, repo=repo)
    pp.stanza_create(a)
    from_a, from_b = a.generate_wal(4, random_payload=True), b.generate_wal(4, random_payload=True)
    names = [n for n in from_a if n in from_b]
    assert names, (from_a, from_b)
    names = [n for n in names if sha1_file(a.wal_dir / n) != sha1_file(b.wal_dir / n)]
    assert len(names) >= 3, (names, sorted(os.listdir(a.wal_dir)), sorted(os.listdir(b.wal_dir)))

    for name in names:
        racers = [_push_from(pp, a, name), _push_from(pp, b, name)]
        outcomes = [(p.wait(timeout=60), p.stderr.read()) for p in racers]
        codes = [code for code, _ in outcomes]
        assert codes.count(0) <= 1, f"{name}: both pushes acknowledged: {outcomes}"
        for code, err in outcomes:
            assert code in (0, 45), err
            assert code == 0 or "ERROR: [045]:" in err
        stored = _stored(pp, name)
        winner = [c for c, code in zip((a, b), codes, strict=True) if code == 0]
        assert len(stored) == len(winner), f"{name}: {stored} after {outcomes}"
        if winner:
            assert stored[0].name.split("-")[1].split(".")[0] == sha1_file(winner[0].wal_dir / name)

    # PostgreSQL retries a failed archive_command: the first to land wins, the other keeps failing 45.
    for name in names:
        if not _stored(pp, name):
            assert _push_from(pp, a, name).wait(timeout=60) == 0
        results = [p.wait(timeout=60) for p in (_push_from(pp, a, name), _push_from(pp, b, name))]
        assert sorted(results) == [0, 45], (name, results)
        winner = a if results[0] == 0 else b
        dest = work_dir / f"{name}.restored"
        res = pp.run("get", name, str(dest), cwd=work_dir)
        assert res.returncode == 0, res.stderr
        assert sha1_file(dest) == sha1_file(winner.wal_dir / name)

    res = pp.run("verify")
    assert res.returncode == 0 and "0 problem(s)" in res.stdout, res.stdout + res.stderr


def test_a_name_stored_twice_is_refused_by_get_and_reported_by_info_and_verify(pg_factory, pgpush_cmd, work_dir):
    a = pg_factory("a", conf=CONF)
    b = pg_factory("b", conf=CONF)
    pp = Pgpush(pgpush_cmd, work_dir, compress_type="none")
    pp.stanza_create(a)
    name = a.generate_wal(1, random_payload=True)[0]
    assert name == b.generate_wal(1, random_payload=True)[0]
    assert pp.run("push", f"pg_wal/{name}", cwd=a.datadir).returncode == 0
    # What an older pgpush left after a split-brain race: the other cluster's copy beside it.
    first = _stored(pp, name)[0]
    twin = first.with_name(f"{name}-{sha1_file(b.wal_dir / name)}")
    twin.write_bytes((b.wal_dir / name).read_bytes())
    procs.chown_tree(twin, "postgres")

    res = pp.run("get", name, str(work_dir / "x"), cwd=work_dir)
    assert res.returncode == 45, res.stderr
    assert "stored in the archive with different checksums" in res.stderr
    assert not (work_dir / "x").exists()
    info = pp.run("info", "--output=json")
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)[0]["archive"]["conflicts"] == [name]
    assert f"conflict: {name} is stored twice" in pp.run("info").stdout
    res = pp.run("verify")
    assert res.returncode == 42, res.stdout + res.stderr
    assert f"WAL file 15-1/{name}: stored twice with different content" in res.stdout


def test_expire_keeps_the_only_done_full_while_a_newer_full_waits_for_wal(pg_factory, pgpush_cmd, work_dir):
    pg = pg_factory("pg", conf=CONF, wal_segsize_mb=1)
    pp = Pgpush(pgpush_cmd, work_dir)
    setup_archiving(pp, pg)
    done, _ = backup(pp, pg, "--wait", "--wait-timeout=60")
    pg.generate_wal(2, payload_bytes=1024)
    pg.wait_archived(pg.switch_wal())
    # Archiving stalls (the repository host is down, say): PostgreSQL keeps the WAL and retries.
    pg.set_conf({"archive_command": "false"})
    pg.reload()
    waiting, _ = backup(pp, pg)
    assert backups(pp)[waiting]["status"] == "WAITING_FOR_WALS"
    needed = backups(pp)[done]["wal_start"]

    def archived_from_needed() -> set[str]:
        return {p.name for p in (Path(pp.options["repo1-path"]) / "archive").rglob("0000*") if p.name >= needed}

    before = archived_from_needed()
    assert before, needed
    res = pp.run("expire", "--repo1-retention-full=1")
    assert res.returncode == 0, res.stderr
    assert set(backups(pp)) == {done, waiting}, res.stdout
    assert archived_from_needed() == before
    _restored_recovers(pp, pg_factory, done)

    # Archiving resumes: the newer full is DONE, and only now may the older one go.
    pg.set_conf({"archive_command": pp.archive_command()})
    pg.reload()
    pg.wait_archived(pg.switch_wal())
    res = pp.run("expire", "--repo1-retention-full=1")
    assert res.returncode == 0, res.stderr
    assert set(backups(pp)) == {waiting} and backups(pp)[waiting]["status"] == "DONE"


def _pid_of(cluster, backend_type: str) -> int:
    return int(cluster.sql(f"select pid from pg_stat_activity where backend_type = '{backend_type}'"))


def test_an_incr_choosing_its_prior_while_a_full_completes_and_expire_runs_keeps_its_prior(
        pg_factory, pgpush_cmd, work_dir):
    pg = pg_factory("pg", conf=CONF, wal_segsize_mb=1)
    pp = Pgpush(pgpush_cmd, work_dir)
    setup_archiving(pp, pg)
    f1, _ = backup(pp, pg, "--wait", "--wait-timeout=60")
    pg.sql("create table t as select generate_series(1, 1000) i")

    # The incr chooses f1 as its prior, then waits in pg_backup_start for a checkpoint that the
    # stopped checkpointer will not run: a pause between choosing the prior and storing a file.
    checkpointer = _pid_of(pg, "checkpointer")
    incr = None
    os.kill(checkpointer, signal.SIGSTOP)
    try:
        # setpriv execs pgpush itself (runuser would supervise it and stop itself when its child stops).
        incr = subprocess.Popen(["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups",
                                 *pp.argv("backup", "--type=incr", *pg_opts(pg))], cwd="/", stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True,
                                env={k: v for k, v in os.environ.items() if not k.startswith("PGPUSH_")})
        procs.wait_for(lambda: pg.sql("select count(*) from pg_stat_activity where query like '%pg_backup_start%' "
                                      "and pid <> pg_backend_pid()") == "1", timeout=30,
                       message="incr backup waiting in pg_backup_start")
        os.kill(incr.pid, signal.SIGSTOP)
        os.kill(checkpointer, signal.SIGCONT)
        # Meanwhile a new full completes and expire runs with retention 1.
        f2, _ = backup(pp, pg, "--wait", "--wait-timeout=60")
        res = pp.run("expire", "--repo1-retention-full=1")
        assert res.returncode == 0, res.stderr
        os.kill(incr.pid, signal.SIGCONT)
        out, err = incr.communicate(timeout=120)
        assert incr.returncode == 0, out + err
    finally:
        os.kill(checkpointer, signal.SIGCONT)
        if incr is not None and incr.poll() is None:
            incr.kill()
            incr.wait(timeout=10)
    label = next(b for b in backups(pp) if b.endswith("I"))
    assert backups(pp)[label]["prior"] == f1
    assert {f1, f2, label} <= set(backups(pp))
    pg.wait_archived(pg.switch_wal())
    res = pp.run("verify")
    assert res.returncode == 0, res.stdout + res.stderr
    _restored_recovers(pp, pg_factory, label)


def test_expire_waits_for_the_catalog_lock_and_breaks_a_stale_one(pg_factory, pgpush_cmd, work_dir):
    pg = pg_factory("pg", conf=CONF, wal_segsize_mb=1)
    pp = Pgpush(pgpush_cmd, work_dir)
    setup_archiving(pp, pg)
    f1, _ = backup(pp, pg, "--wait", "--wait-timeout=60")
    f2, _ = backup(pp, pg, "--wait", "--wait-timeout=60")
    lock = Path(pp.options["repo1-path"]) / "backup" / pp.stanza / "catalog.lock"
    # A backup on another host is choosing its prior: expire waits until it lets go.
    lock.write_text(json.dumps({"host": "db2", "pid": 1, "command": "backup", "time": time.time()}))
    procs.chown_tree(lock, "postgres")
    expire = procs.popen_as("postgres", pp.argv("expire", "--repo1-retention-full=1", "--repo1-host-timeout=5"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            expire.wait(timeout=2)
        assert set(backups(pp)) == {f1, f2}
        lock.unlink()
        out, err = expire.communicate(timeout=60)
    finally:
        if expire.poll() is None:
            expire.kill()
            expire.wait(timeout=10)
    assert expire.returncode == 0, out + err
    assert "breaking" not in err and set(backups(pp)) == {f2}

    # Its holder crashed long ago: the lock is broken with a warning, and expire goes on.
    lock.write_text(json.dumps({"host": "db2", "pid": 1, "command": "expire", "time": time.time() - 3600}))
    procs.chown_tree(lock, "postgres")
    res = pp.run("expire", "--repo1-retention-full=1")
    assert res.returncode == 0, res.stderr
    assert "breaking the catalog lock" in res.stderr
    assert not lock.exists()
    res = pp.run("backup", "--type=incr", *pg_opts(pg))
    assert res.returncode == 0, res.stderr


def test_garbage_history_is_refused_on_push_and_a_stored_one_fails_get_with_42(pg_cluster, pgpush_cmd, work_dir):
    pp = Pgpush(pgpush_cmd, work_dir)
    pp.stanza_create(pg_cluster)
    garbage = pg_cluster.wal_dir / "00000002.history"
    garbage.write_bytes(b"\x00garbage, not a timeline history\n")
    procs.chown_tree(garbage, "postgres")
    res = pp.run("push", "pg_wal/00000002.history", cwd=pg_cluster.datadir)
    assert res.returncode == 29, res.stderr
    assert "history file '00000002.history' is malformed" in res.stderr
    res = pp.run("get", "00000002.history", str(work_dir / "h"), cwd=work_dir)
    assert res.returncode == 1, res.stderr  # nothing was stored

    stored = Path(pp.options["repo1-path"]) / "archive" / pp.stanza / "15-1" / "00000002.history"
    stored.parent.mkdir(exist_ok=True)
    stored.write_bytes(garbage.read_bytes())  # left by an older version
    procs.chown_tree(stored.parent, "postgres")
    res = pp.run("get", "00000002.history", str(work_dir / "h"), cwd=work_dir)
    assert res.returncode == 42, res.stderr
    assert "ERROR: [042]: history file '00000002.history' is malformed" in res.stderr

    garbage.write_bytes(b"1\t0/3000000\tno recovery target specified\n")
    stored.unlink()
    res = pp.run("push", "pg_wal/00000002.history", cwd=pg_cluster.datadir)
    assert res.returncode == 0, res.stderr
