"""Restore: full + incr backups under pgbench, point-in-time recovery, delta restore."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time

import pytest
from backup_env import backup, backups, setup_archiving
from harness import procs
from pgpush_env import Pgpush

pytestmark = pytest.mark.integration



def _restored_cluster(pg_factory, name: str):
    """A PgCluster shell for a data directory pgpush restores (it does not exist yet)."""
    restored = pg_factory(name, init=False)
    restored._prepare_common()
    return restored


def _start_restored(restored) -> None:
    """The backup's postgresql.conf names the original's port and socket: point them at this cluster."""
    restored.set_conf({"port": restored.port, "unix_socket_directories": str(restored.socket_dir),
                       "archive_mode": "off"})
    restored.start(timeout=120)


def test_full_incr_under_pgbench_then_pitr(pg_factory, pgpush_cmd, work_dir):
    pp = Pgpush(pgpush_cmd, work_dir)
    pg = pg_factory("pg", conf={"archive_mode": "on", "archive_command": ""})
    setup_archiving(pp, pg)
    pg.pgbench_init(scale=1)

    load = threading.Thread(target=pg.pgbench, kwargs={"seconds": 8, "clients": 2})
    load.start()
    try:
        full, _ = backup(pp, pg, "--wait", "--wait-timeout=60", "--process-max=2")
        incr, res = backup(pp, pg, "--type=incr", "--wait", "--wait-timeout=60", "--process-max=2")
    finally:
        load.join()
    info = backups(pp)
    assert info[full]["type"] == "full" and info[incr]["type"] == "incr"
    assert info[incr]["prior"] == full and incr.startswith(full + "_") and incr.endswith("I")
    assert info[incr]["status"] == info[full]["status"] == "DONE"
    assert 0 < info[incr]["repo_size"] < info[full]["repo_size"]

    pg.sql("create table marks(id int primary key)")
    pg.sql("insert into marks values (1)")
    history_at_target = pg.sql("select count(*) from pgbench_history")
    target = pg.sql("select now()")
    time.sleep(1.1)
    pg.sql("insert into marks values (2)")
    pg.pgbench(transactions=50, clients=1)
    pg.wait_archived(pg.switch_wal())

    restored = _restored_cluster(pg_factory, "restored")
    res = pp.run("restore", f"--pg1-path={restored.datadir}", "--type=time", f"--target={target}",
                 "--target-action=promote", "--process-max=2", timeout=180)
    assert res.returncode == 0, res.stderr
    assert f"restore of backup {incr} " in res.stdout  # the latest DONE backup that stopped before the target
    auto_conf = (restored.datadir / "postgresql.auto.conf").read_text()
    assert "restore_command = " in auto_conf and f"recovery_target_time = '{target}'" in auto_conf
    assert "recovery_target_action = 'promote'" in auto_conf
    assert (restored.datadir / "recovery.signal").exists()
    assert (restored.datadir / "backup_label").exists()
    assert not list((restored.datadir / "pg_wal").glob("0*"))

    _start_restored(restored)
    restored.wait_promoted()
    assert restored.sql("select array_agg(id order by id) from marks") == "{1}"
    assert restored.sql("select count(*) from pgbench_history") == history_at_target
    assert restored.sql("select count(*) from pgbench_accounts") == "100000"


def _sha1(path) -> str:
    return hashlib.sha1(open(path, "rb").read()).hexdigest()


def _archiving_cluster_with_tablespace(pg_factory, pp, work_dir):
    """A cluster archiving through ``pp``, with tablespace ``ts`` holding table ``in_ts`` (300 rows)."""
    pg = pg_factory("pg", conf={"archive_mode": "on", "archive_command": ""})
    setup_archiving(pp, pg)
    tablespace = procs.make_tmp_dir(work_dir, "ts")
    pg.sql(f"create tablespace ts location '{tablespace}'")
    pg.sql("create table in_ts tablespace ts as select g from generate_series(1, 300) g")
    return pg, tablespace


def test_delta_restore_rewrites_only_what_changed(pg_factory, pgpush_cmd, work_dir):
    pp = Pgpush(pgpush_cmd, work_dir)
    pg, tablespace = _archiving_cluster_with_tablespace(pg_factory, pp, work_dir)
    pg.sql("create table t as select g from generate_series(1, 5000) g")
    label, _ = backup(pp, pg, "--wait", "--wait-timeout=60")
    relation_path = pg.sql("select pg_relation_filepath('t')")
    manifest = json.loads((work_dir / "repo" / "backup" / "main" / label / "backup.manifest").read_text())
    assert [ln["destination"] for ln in manifest["links"]] == [str(tablespace)]
    assert any(f["name"].startswith("pg_data/pg_tblspc/") for f in manifest["files"])
    assert any(f["name"] == "pg_data/tablespace_map" for f in manifest["files"])

    restored = _restored_cluster(pg_factory, "restored")
    # The tablespace location is in use by the original cluster: refused.
    res = pp.run("restore", f"--pg1-path={restored.datadir}")
    assert res.returncode == 40 and "tablespace" in res.stderr, res.stderr
    pg.stop()
    os.rename(tablespace, work_dir / "ts.orig")
    res = pp.run("restore", f"--pg1-path={restored.datadir}", "--type=immediate", "--target-action=promote")
    assert res.returncode == 0, res.stderr
    data = restored.datadir
    links = [p for p in (data / "pg_tblspc").iterdir() if p.is_symlink()]
    assert [os.readlink(p) for p in links] == [str(tablespace)]
    ts_files = sorted(p.relative_to(tablespace) for p in tablespace.rglob("*") if p.is_file())
    assert ts_files == sorted(p.relative_to(work_dir / "ts.orig") for p in (work_dir / "ts.orig").rglob("*") if p.is_file())
    relation = data / relation_path
    unchanged = data / "global" / "pg_control"
    changed = data / "PG_VERSION"
    removed = data / "pg_hba.conf"
    original_relation = _sha1(relation)
    original_hba = _sha1(removed)
    before = {p: os.stat(p) for p in (relation, unchanged)}

    changed.write_text("99\n")
    removed.unlink()
    stray = data / "base" / "stray-file"
    stray.write_text("not in the backup")
    ts_stray = next(tablespace.glob("PG_*/*")) / "stray-file"
    ts_stray.write_text("not in the backup either")
    stale = pp.in_dir
    stale.mkdir(parents=True, exist_ok=True)
    (stale / "000000010000000000000042").write_bytes(b"stale prefetched WAL")
    procs.chown_tree(pp.spool_path, "postgres")

    # Not empty: refused without --delta/--force.
    res = pp.run("restore", f"--pg1-path={data}")
    assert res.returncode == 40, res.stderr

    time.sleep(0.05)
    res = pp.run("restore", f"--pg1-path={data}", "--delta", "--type=immediate", "--target-action=promote")
    assert res.returncode == 0, res.stderr
    assert f"restore of backup {label} " in res.stdout
    for p, st in before.items():
        now = os.stat(p)
        assert (now.st_ino, now.st_mtime_ns, now.st_ctime_ns) == (st.st_ino, st.st_mtime_ns, st.st_ctime_ns), p
    assert changed.read_text() == (pg.datadir / "PG_VERSION").read_text()
    assert _sha1(removed) == original_hba
    assert _sha1(relation) == original_relation
    assert not stray.exists() and not ts_stray.exists()
    assert list(stale.iterdir()) == []
    # PG_VERSION, pg_hba.conf, and postgresql.auto.conf (the first restore added recovery settings to it)
    assert " 3 rewritten, " in res.stdout

    # --delta --force rewrites every file, even those whose size and checksum match.
    res = pp.run("restore", f"--pg1-path={data}", "--delta", "--force", "--type=immediate", "--target-action=promote")
    assert res.returncode == 0, res.stderr
    assert os.stat(unchanged).st_ctime_ns != before[unchanged].st_ctime_ns
    assert " 0 unchanged" in res.stdout

    # The delta-restored cluster recovers; a running cluster is never restored over.
    _start_restored(restored)
    restored.wait_promoted()
    assert restored.sql("select count(*) from t") == "5000"
    assert restored.sql("select count(*) from in_ts") == "300"
    res = pp.run("restore", f"--pg1-path={data}", "--delta")
    assert res.returncode == 38, res.stderr
    assert "running" in res.stderr


def _manifest(repo_dir, stanza: str, label: str) -> dict:
    return json.loads((repo_dir / "backup" / stanza / label / "backup.manifest").read_text())


def test_sftp_restore_batched_and_streamed_files_verified(pg_factory, sshd, pgpush_cmd, work_dir):
    """Over SFTP small files travel in pipelined batches (checked before they are written), big ones
    stream; both land byte for byte with the manifest's mode and time, and a corrupt or missing file in
    the repository fails the restore (42) whichever path it takes."""
    import zstandard

    pp = Pgpush(pgpush_cmd, work_dir, repo=sshd.pgpush_options())
    pg = pg_factory("pg", conf={"archive_mode": "on", "archive_command": ""})
    setup_archiving(pp, pg)
    # hex of random numbers: ~2x compression, so the table's stored file exceeds the batch limit (1 MB)
    pg.sql("create table big as select g, md5(random()::text) || md5(random()::text) h from generate_series(1, 60000) g")
    big_path = "pg_data/" + pg.sql("select pg_relation_filepath('big')")
    label, _ = backup(pp, pg, "--wait", "--wait-timeout=60")
    manifest = _manifest(sshd.repo_dir, pp.stanza, label)
    files = {f["name"]: f for f in manifest["files"]}
    assert files[big_path]["repo_size"] > 1024 * 1024 and files["pg_data/PG_VERSION"]["repo_size"] < 1024
    stored = sshd.repo_dir / "backup" / pp.stanza / label

    for pm in (1, 2):
        target = work_dir / f"restored-{pm}"
        res = pp.run("restore", f"--pg1-path={target}", f"--process-max={pm}", timeout=180)
        assert res.returncode == 0, res.stderr
        for name, f in files.items():
            path = target / name[len("pg_data/"):]
            st = os.stat(path)
            if name != "pg_data/postgresql.auto.conf":  # gets the recovery settings
                assert (st.st_size, _sha1(path)) == (f["size"], f["sha1"]), name
                assert st.st_mtime == pytest.approx(float(f["mtime"]), abs=1e-5), name
            assert oct(st.st_mode & 0o7777) == oct(int(f["mode"], 8)), name

    # A small file (batched) that decodes to the wrong content: refused, and never written.
    version = stored / f"pg_data/PG_VERSION{files['pg_data/PG_VERSION']['ext']}"
    original = version.read_bytes()
    version.write_bytes(zstandard.ZstdCompressor().compress(b"99\n"))
    for pm in (1, 2):
        target = work_dir / f"corrupt-small-{pm}"
        res = pp.run("restore", f"--pg1-path={target}", f"--process-max={pm}", timeout=180)
        assert res.returncode == 42, res.stderr
        assert "PG_VERSION" in res.stderr and "corrupt" in res.stderr
        assert not (target / "PG_VERSION").exists()
    version.unlink()
    res = pp.run("restore", f"--pg1-path={work_dir / 'missing-small'}", timeout=180)
    assert res.returncode == 42 and "PG_VERSION" in res.stderr and "missing" in res.stderr, res.stderr
    version.write_bytes(original)

    # A big file (streamed) with one byte flipped in the middle.
    big = stored / f"{big_path}{files[big_path]['ext']}"
    data = bytearray(big.read_bytes())
    data[len(data) // 2] ^= 0xFF
    big.write_bytes(bytes(data))
    for pm in (1, 2):
        res = pp.run("restore", f"--pg1-path={work_dir / f'corrupt-big-{pm}'}", f"--process-max={pm}", timeout=180)
        assert res.returncode == 42, res.stderr
        assert big_path.rsplit("/", 1)[-1] in res.stderr and "corrupt" in res.stderr


def test_tablespace_map_restores_beside_the_running_original(pg_factory, pgpush_cmd, work_dir):
    """--tablespace-map: a test restore on the same host as its running original, tablespace elsewhere."""
    pp = Pgpush(pgpush_cmd, work_dir)
    pg, tablespace = _archiving_cluster_with_tablespace(pg_factory, pp, work_dir)
    oid = pg.sql("select oid from pg_tablespace where spcname = 'ts'")
    label, _ = backup(pp, pg, "--wait", "--wait-timeout=60")

    restored = _restored_cluster(pg_factory, "restored")
    new_home = procs.make_tmp_dir(work_dir, "ts-new-parent") / "ts"
    for bad in ("99999=/tmp/x", f"{oid}=relative/path", f"ts={new_home}"):
        res = pp.run("restore", f"--pg1-path={restored.datadir}", f"--tablespace-map={bad}")
        assert res.returncode == 32 and "tablespace-map" in res.stderr, (bad, res.stderr)
        assert not restored.datadir.exists() or not any(restored.datadir.iterdir())
    res = pp.run("restore", f"--pg1-path={restored.datadir}", f"--tablespace-map={oid}={new_home}",
                 "--type=immediate", "--target-action=promote")
    assert res.returncode == 0, res.stderr
    link = restored.datadir / "pg_tblspc" / oid
    assert os.readlink(link) == str(new_home)
    assert (restored.datadir / "tablespace_map").read_text() == f"{oid} {new_home}\n"
    assert any(p.is_file() for p in new_home.rglob("*"))

    _start_restored(restored)  # PostgreSQL recreates pg_tblspc links from tablespace_map: they must hold
    restored.wait_promoted()
    assert restored.sql("select count(*) from in_ts") == "300"
    restored.sql("insert into in_ts select g from generate_series(301, 400) g")
    assert restored.sql("select count(*) from in_ts") == "400"
    assert os.readlink(link) == str(new_home)
    # the original keeps its own tablespace
    assert pg.sql("select count(*) from in_ts") == "300"
    assert os.readlink(pg.datadir / "pg_tblspc" / oid) == str(tablespace)
