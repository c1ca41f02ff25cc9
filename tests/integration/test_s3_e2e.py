"""End to end on S3 (``repo1-type=s3``): real PostgreSQL 15 running pgpush as ``postgres``
against a real SeaweedFS (fixture ``seaweed``: one server per xdist worker, one bucket per test).

Async push under pgbench, PITR through async get, a standby backup going WAITING_FOR_WALS → DONE,
``restore --delta``, and the store killed (down) or frozen (SIGSTOP) in the middle of the work.
The S3 key and secret reach PostgreSQL's pgpush on its command line (or from a config file);
the async parents and their workers must never show them in ``ps``.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from backup_env import backup, backups, pg_opts, setup_archiving, wait_status
from harness import procs
from harness.seaweed import ACCESS_KEY, SECRET_KEY
from pgpush_env import Pgpush, sha1_file

pytestmark = pytest.mark.integration

PREFIX = "repo"  # repo1-path=/repo: keys are repo/archive/STANZA/...


# -- helpers ----------------------------------------------------------------------------------------


def bucket_keys(bucket, prefix: str = "") -> list[str]:
    """Every object key in the bucket (ListObjectsV2, all pages; SeaweedFS directory markers left out)."""
    client = bucket.client()
    keys: list[str] = []
    token = None
    try:
        while True:
            query = {"list-type": "2", "prefix": prefix, "max-keys": "1000"}
            if token:
                query["continuation-token"] = token
            root = ET.fromstring(client.request("GET", "", query=query).body)
            local = {el.tag.rsplit("}", 1)[-1]: el for el in root}
            for item in root:
                if item.tag.endswith("Contents"):
                    key = next(c.text for c in item if c.tag.endswith("Key"))
                    if not key.endswith("/"):
                        keys.append(key)
            truncated = local.get("IsTruncated")
            token_el = local.get("NextContinuationToken")
            if truncated is None or truncated.text != "true" or token_el is None:
                return keys
            token = token_el.text
    finally:
        client.close()


def archived_s3(bucket, stanza: str = "main") -> dict[str, list[str]]:
    """``{WAL file: [sha1 from each object's name]}`` under ``repo/archive/STANZA/`` (a list: duplicates show)."""
    out: dict[str, list[str]] = {}
    for key in bucket_keys(bucket, f"{PREFIX}/archive/{stanza}/"):
        name = key.rsplit("/", 1)[-1]
        if len(name) > 25 and name[24] == "-":
            out.setdefault(name[:24], []).append(name[25:65])
    return out


class ProcWatch:
    """Collects the command lines of this test's pgpush async parents and workers while running.

    Only processes whose command line names ``marker`` (the test's work dir) are looked at.  A
    process is seen again after an exec (a forked child first shows its parent's command line)."""

    KINDS = ("push-async", "get-async", "worker")

    def __init__(self, marker: Path):
        self.marker = f"{marker}/"
        self.seen: dict[tuple[int, str], str] = {}  # (pid, cmdline): kind
        self.environ_has_secret: dict[tuple[int, str], bool] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _scan(self) -> None:
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if (int(entry), cmd) in self.seen or "pgpush" not in cmd or self.marker not in cmd:
                continue
            words = cmd.split()
            kind = next((k for k in self.KINDS if k in words), None)
            if kind is None:
                continue
            self.seen[(int(entry), cmd)] = kind
            try:
                env = Path(f"/proc/{entry}/environ").read_bytes()
                self.environ_has_secret[(int(entry), cmd)] = SECRET_KEY.encode() in env
            except OSError:
                pass

    def _run(self) -> None:
        while not self._stop.is_set():
            self._scan()
            time.sleep(0.02)

    def __enter__(self) -> ProcWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def kinds(self) -> set[str]:
        return set(self.seen.values())

    def pids(self, kind: str) -> set[int]:
        return {pid for (pid, _), k in self.seen.items() if k == kind}

    def assert_no_secret(self) -> None:
        for (pid, cmd), kind in self.seen.items():
            assert SECRET_KEY not in cmd, f"{kind} {pid} shows the S3 secret in ps: {cmd}"
            assert ACCESS_KEY not in cmd, f"{kind} {pid} shows the S3 access key in ps: {cmd}"


def assert_no_secret_in_logs(pp: Pgpush) -> None:
    for path in pp.log_path.iterdir():
        text = path.read_text(errors="replace")
        assert SECRET_KEY not in text and ACCESS_KEY not in text, f"{path} shows an S3 credential"


def s3_pgpush(pgpush_cmd, work_dir, seaweed, **opts) -> Pgpush:
    return Pgpush(pgpush_cmd, work_dir, repo=seaweed.pgpush_options(f"/{PREFIX}"), **opts)



def wait_for(predicate, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(interval)


def async_primary(pg_factory, pp: Pgpush):
    pg = pg_factory("pg", conf={"archive_mode": "on", "archive_command": "", "wal_keep_size": "2GB",
                                "max_wal_size": "1GB"})
    pp.stanza_create(pg)
    pg.set_conf({"archive_command": pp.archive_command()})
    pg.reload()
    return pg


def done_segments(pg) -> list[str]:
    """WAL segments PostgreSQL considers archived (``archive_status/*.done``): what was acknowledged."""
    return sorted(p.name[:-5] for p in (pg.wal_dir / "archive_status").glob("*.done") if len(p.name) == 29)


# -- async push ---------------------------------------------------------------------------------------


def test_async_push_under_pgbench_sha1_of_every_object_matches(pg_factory, seaweed, pgpush_cmd, work_dir):
    pp = s3_pgpush(pgpush_cmd, work_dir, seaweed, archive_async="y", process_max=2)
    pg = async_primary(pg_factory, pp)
    assert SECRET_KEY in pg.sql("show archive_command")  # the secret is given on PostgreSQL's command line
    with ProcWatch(work_dir) as watch:
        pg.pgbench_init(scale=1)
        segments = pg.generate_wal(6, random_payload=True, payload_bytes=2 << 20)
        pg.pgbench(transactions=200, clients=2)
        last = pg.switch_wal()
        pg.wait_archived(last, timeout=180)
    archived = archived_s3(seaweed)
    for name in segments + [last]:
        assert name in archived, name
    compared = 0
    for name, shas in archived.items():
        assert len(shas) == 1, (name, shas)  # every segment stored exactly once
        local = pg.wal_dir / name
        if local.exists():  # wal_keep_size keeps them all
            assert shas[0] == sha1_file(local), name
            compared += 1
    assert compared >= len(segments) + 1
    assert set(done_segments(pg)) <= set(archived)
    log = pp.log_text("archive-push-async")
    assert f"pushed WAL file '{last}' to the archive asynchronously" in log
    # The parent and its two workers ran; none shows the key or secret in ps (they travel by environment).
    assert {"push-async", "worker"} <= watch.kinds(), watch.seen
    assert len(watch.pids("worker")) >= 2, watch.seen
    watch.assert_no_secret()
    workers_env = [has for key, has in watch.environ_has_secret.items() if watch.seen[key] == "worker"]
    assert workers_env and all(workers_env)  # the workers got the secret all the same: by environment
    assert_no_secret_in_logs(pp)


# -- PITR through async get ---------------------------------------------------------------------------


def test_pitr_through_async_get_from_s3(pg_factory, seaweed, pgpush_cmd, work_dir):
    pp = s3_pgpush(pgpush_cmd, work_dir, seaweed, archive_async="y", process_max=2, archive_get_queue_max="64MB",
                   archive_timeout=30)
    pg = async_primary(pg_factory, pp)
    base = work_dir / "base"
    pg.run([pg.bin("pg_basebackup"), "-D", str(base), "-X", "none", "-c", "fast", "-h", str(pg.socket_dir),
            "-p", str(pg.port), "-U", "postgres"], check=True)
    pg.sql("create table marks(id int)")
    pg.generate_wal(4)
    pg.sql("insert into marks values (1)")
    target = pg.sql("select pg_current_wal_insert_lsn()")
    pg.generate_wal(4)
    pg.sql("insert into marks values (2)")
    last = pg.switch_wal()
    pg.wait_archived(last, timeout=180)
    pg.stop()

    restored = pg_factory("restored", init=False)
    restored._prepare_common()
    os.rename(base, restored.datadir)
    restored.set_conf({
        "port": restored.port, "unix_socket_directories": str(restored.socket_dir), "archive_mode": "off",
        "restore_command": pp.restore_command(), "recovery_target_lsn": target,
        "recovery_target_action": "promote",
    })
    (restored.datadir / "recovery.signal").touch()
    with ProcWatch(work_dir) as watch:
        restored.start(timeout=300)
        restored.wait_promoted(180)
    assert restored.sql("select array_agg(id) from marks") == "{1}"
    log = pp.log_text("archive-get")
    assert "in the archive asynchronously" in log
    assert log.count("found ") >= 4
    assert "prefetched WAL file" in pp.log_text("archive-get-async")
    assert "get-async" in watch.kinds(), watch.seen
    watch.assert_no_secret()
    assert not [n for n in os.listdir(pp.in_dir) if n.endswith(".pgpush.tmp")]
    assert_no_secret_in_logs(pp)


# -- backups ------------------------------------------------------------------------------------------


def test_standby_backup_waiting_for_wals_then_done(pg_factory, seaweed, pgpush_cmd, work_dir):
    pp = s3_pgpush(pgpush_cmd, work_dir, seaweed)
    primary = pg_factory("primary", conf={"archive_mode": "on", "archive_command": ""})
    setup_archiving(pp, primary)
    # archive_mode=always: the standby pushes the same segments into the same stanza (same SHA-1s).
    standby = primary.make_standby("standby", conf={"archive_command": pp.archive_command()})
    primary.sql("create table t as select g from generate_series(1, 1000) g")
    last = primary.switch_wal()
    primary.sql("CHECKPOINT")
    standby.wait_replayed()
    primary.wait_archived(last)
    open_segment = primary.current_wal_segment()

    started = time.monotonic()
    label, res = backup(pp, standby, timeout=90)
    assert time.monotonic() - started < 60
    assert "WAITING_FOR_WALS" in res.stdout, res.stdout
    info = backups(pp)[label]
    assert info["status"] == "WAITING_FOR_WALS"
    assert info["from_standby"] is True
    assert info["wal_stop"] == open_segment
    assert open_segment not in archived_s3(seaweed)

    primary.sql("select pg_switch_wal()")
    primary.wait_archived(open_segment, timeout=60)
    done = wait_status(pp, label, "DONE", timeout=60)
    assert done["recoverable_to"] is not None
    assert open_segment in archived_s3(seaweed)
    keys = bucket_keys(seaweed, f"{PREFIX}/backup/main/")
    assert f"{PREFIX}/backup/main/{label}/backup.manifest" in keys
    assert f"{PREFIX}/backup/main/backup.info" in keys


def test_restore_delta_from_s3(pg_factory, seaweed, pgpush_cmd, work_dir):
    # The key and secret come from a config file: `restore` never writes secrets into the
    # restore_command it leaves in the data directory, but it does carry --config.
    options = seaweed.pgpush_options(f"/{PREFIX}")
    conf = work_dir / "pgpush.conf"
    conf.write_text(f"[global]\nrepo1-s3-key={options.pop('repo1-s3-key')}\n"
                    f"repo1-s3-key-secret={options.pop('repo1-s3-key-secret')}\n")
    procs.chown_tree(conf, "postgres")
    os.chmod(conf, 0o600)
    pp = Pgpush(pgpush_cmd, work_dir, repo={**options, "config": str(conf)})
    assert SECRET_KEY not in pp.archive_command()
    pg = pg_factory("pg", conf={"archive_mode": "on", "archive_command": ""})
    setup_archiving(pp, pg)
    pg.sql("create table t as select g from generate_series(1, 5000) g")
    label, _ = backup(pp, pg, "--wait", "--wait-timeout=60", "--process-max=2")
    assert backups(pp)[label]["status"] == "DONE"
    pg.stop()

    restored = pg_factory("restored", init=False)
    restored._prepare_common()
    res = pp.run("restore", f"--pg1-path={restored.datadir}", "--type=immediate", "--target-action=promote",
                 "--process-max=2", timeout=180)
    assert res.returncode == 0, res.stderr
    auto_conf = (restored.datadir / "postgresql.auto.conf").read_text()
    assert f"--config={conf}" in auto_conf and SECRET_KEY not in auto_conf
    restored.set_conf({"port": restored.port, "unix_socket_directories": str(restored.socket_dir),
                       "archive_mode": "off"})
    restored.start(timeout=120)
    restored.wait_promoted(180)
    assert restored.sql("select count(*) from t") == "5000"

    # Change the restored cluster, stop it, and bring it back to the backup with --delta.
    relation = restored.datadir / restored.sql("select pg_relation_filepath('t')")
    restored.sql("delete from t where g > 1000; create table extra as select 1 as x; checkpoint")
    restored.stop()
    stray = restored.datadir / "base" / "stray-file"
    stray.write_text("not in the backup")
    res = pp.run("restore", f"--pg1-path={restored.datadir}", "--delta", "--type=immediate",
                 "--target-action=promote", "--process-max=2", timeout=180)
    assert res.returncode == 0, res.stderr + res.stdout
    assert f"restore of backup {label} " in res.stdout
    assert not stray.exists()
    assert relation.exists()
    restored.set_conf({"port": restored.port, "unix_socket_directories": str(restored.socket_dir),
                       "archive_mode": "off"})
    restored.start(timeout=120)
    restored.wait_promoted(180)
    assert restored.sql("select count(*), min(g), max(g) from t") == "5000|1|5000"
    assert restored.sql("select to_regclass('extra') is null") == "t"


# -- faults -------------------------------------------------------------------------------------------


def test_store_killed_mid_async_push_global_error_then_resumes(pg_factory, seaweed, pgpush_cmd, work_dir):
    pp = s3_pgpush(pgpush_cmd, work_dir, seaweed, archive_async="y", process_max=2, archive_timeout=5,
                   repo1_host_timeout=5)
    pg = async_primary(pg_factory, pp)
    first = pg.switch_wal()
    pg.wait_archived(first, timeout=60)
    server = seaweed.server

    segs = pg.generate_wal(6, random_payload=True)
    # Kill the store once the parent is at work on these segments (some acknowledged, usually not all).
    wait_for(lambda: any((pp.out_dir / f"{s}.ok").exists() for s in segs), 60, "a first .ok")
    server.kill()
    segs += pg.generate_wal(2)
    global_error = pp.out_dir / "global.error"
    wait_for(global_error.exists, 90, "global.error")
    text = global_error.read_text()
    assert text.startswith("103\nunable to find a valid repository:\nrepo1: "), text
    assert f"s3://{seaweed.bucket} at {seaweed.endpoint}" in text
    assert SECRET_KEY not in text and ACCESS_KEY not in text
    wait_for(lambda: pg.archiver_stats()["failed_count"] > 0, 60, "a failed archive_command")
    acknowledged_ok = sorted(p.name[:-3] for p in pp.out_dir.glob("*.ok") if len(p.name) == 27)
    acknowledged_pg = done_segments(pg)
    assert not pg.is_archived(segs[-1])

    server.start()
    # Nothing was acknowledged (.ok for PostgreSQL, .done by PostgreSQL) that is not stored.
    archived = archived_s3(seaweed)
    for name in sorted(set(acknowledged_ok) | set(acknowledged_pg)):
        assert name in archived, f"{name} acknowledged but not in the bucket"
        assert archived[name] == [sha1_file(pg.wal_dir / name)], name

    # Archiving resumes (a switch wakes PostgreSQL's archiver from its retry pause).
    nxt = pg.switch_wal()
    pg.wait_archived(nxt, timeout=180)
    wait_for(lambda: not global_error.exists(), 30, "global.error to go")
    archived = archived_s3(seaweed)
    for name in segs + [nxt]:
        assert archived.get(name) == [sha1_file(pg.wal_dir / name)], name
    assert_no_secret_in_logs(pp)


def test_store_frozen_mid_backup_fails_with_103_then_backup_succeeds(pg_factory, seaweed, pgpush_cmd, work_dir):
    # repo1-host-timeout bounds the connect and every socket read/write of the S3 client (storage/s3/client.py).
    pp = s3_pgpush(pgpush_cmd, work_dir, seaweed, repo1_host_timeout=5)
    pg = pg_factory("pg", conf={"archive_mode": "on", "archive_command": ""})
    setup_archiving(pp, pg)
    pg.sql("create table t as select g, md5(g::text) as h from generate_series(1, 100000) g")
    pg.wait_archived(pg.switch_wal(), timeout=120)
    server = seaweed.server

    log = pp.log_path / "main-backup.log"
    offset = log.stat().st_size if log.exists() else 0
    argv = ["runuser", "-u", "postgres", "--"] + pp.argv("backup", *pg_opts(pg))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGPUSH_")}
    proc = subprocess.Popen(argv, cwd="/", stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        def copying() -> bool:
            return log.exists() and "backup start LSN" in log.read_bytes()[offset:].decode(errors="replace")

        wait_for(copying, 90, "the backup to start copying", interval=0.02)
        server.freeze()
        frozen_at = time.monotonic()
        try:
            out, err = proc.communicate(timeout=120)
        finally:
            elapsed = time.monotonic() - frozen_at
            server.thaw()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 103, f"{proc.returncode}\n{out}\n{err}"
    assert "ERROR: [103]: unable to find a valid repository:" in err, err
    assert "timeout after 5s waiting for the S3 server" in err, err
    assert SECRET_KEY not in err
    assert elapsed < 90, elapsed  # a few 5 s timeouts (copy, clean-up), never a hang
    assert not [b for b in backups(pp).values() if b["status"] == "DONE"]

    server.ensure_running()
    label, res = backup(pp, pg, "--wait", "--wait-timeout=90", timeout=240)
    assert "is DONE" in res.stdout, res.stdout
    info = backups(pp)
    assert info[label]["status"] == "DONE"
    assert json.loads(pp.run("info", "--output=json", check=True).stdout)[0]["archive"]["gaps"] == []
    assert_no_secret_in_logs(pp)
