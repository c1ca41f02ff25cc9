"""The Barman standby issue (docs/operations.md, "Backup status"): a backup of a standby whose primary is idle.

Primary and streaming standby (``archive_mode=always``) both push into one
stanza.  The backup's stop segment is still open on the idle primary, so the
backup must return at once as WAITING_FOR_WALS instead of hanging; ``--wait``
must honour ``--wait-timeout`` (exit 3); the next WAL switch on the primary
makes it DONE without any further pgpush command but a push; and with
``primary-conninfo`` pgpush switches WAL on the primary itself.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest
from backup_env import backup, backups, info_json, pg_opts, setup_archiving, wait_status
from harness import procs
from harness.pg import PG_MAJORS, bin_dir_for
from pgpush_env import Pgpush

pytestmark = pytest.mark.integration


def _idle_with_open_segment(primary, standby) -> None:
    """Leave the primary idle with a checkpoint record in its current, unfinished segment.

    The standby replays that checkpoint, so its backup starts (restartpoint)
    and stops inside a segment that will not be complete until the primary
    switches WAL.
    """
    last = primary.switch_wal()
    primary.sql("CHECKPOINT")
    standby.wait_replayed()
    primary.wait_archived(last)


@pytest.mark.parametrize("major", PG_MAJORS)
def test_standby_backup_idle_primary_waits_then_done(pg_factory, pgpush_cmd, work_dir, major):
    pp = Pgpush(pgpush_cmd, work_dir)
    primary = pg_factory("primary", conf={"archive_mode": "on", "archive_command": ""}, bin_dir=bin_dir_for(major))
    setup_archiving(pp, primary)
    standby = primary.make_standby("standby", conf={"archive_command": pp.archive_command()})
    assert standby.sql("show archive_mode") == "always"
    primary.sql("create table t as select g from generate_series(1, 1000) g")
    _idle_with_open_segment(primary, standby)
    open_segment = primary.current_wal_segment()

    # Without --wait: returns within seconds, WAITING_FOR_WALS, exit 0.
    started = time.monotonic()
    label, res = backup(pp, standby, timeout=60)
    elapsed = time.monotonic() - started
    assert elapsed < 20, elapsed
    assert "WAITING_FOR_WALS" in res.stdout
    info = backups(pp)[label]
    assert info["status"] == "WAITING_FOR_WALS"
    assert info["from_standby"] is True
    assert info["wal_stop"] == open_segment
    assert info["recoverable_to"] is None

    # --wait --wait-timeout 5: gives up after about 5 s with exit code 3, still WAITING_FOR_WALS.
    started = time.monotonic()
    label2, res = backup(pp, standby, "--wait", "--wait-timeout=5", expect=3, timeout=60)
    elapsed = time.monotonic() - started
    assert 5 <= elapsed < 25, elapsed
    assert "ERROR: [003]" in res.stderr
    assert backups(pp)[label2]["status"] == "WAITING_FOR_WALS"

    # One switch on the primary: the segment is archived (by both servers' pushes) and the
    # pushes themselves flip the backups to DONE; info shows it.
    primary.sql("select pg_switch_wal()")
    # The push of that segment itself settles the backups (no info, no cron): once PostgreSQL has
    # seen archive_command succeed, backup.info in the repository already says DONE.
    primary.wait_archived(open_segment)
    raw = json.loads((work_dir / "repo" / "backup" / "main" / "backup.info").read_text())
    assert {b["label"]: b["status"] for b in raw["backups"]} == {label: "DONE", label2: "DONE"}
    for lbl in (label, label2):
        done = wait_status(pp, lbl, "DONE", timeout=30)
        assert done["recoverable_to"] is not None
    stanza = info_json(pp)[0]
    assert stanza["archive"]["gaps"] == []
    assert stanza["archive"]["max"] >= open_segment


@pytest.mark.parametrize("major", PG_MAJORS)
def test_standby_backup_with_primary_conninfo_finishes(pg_factory, pgpush_cmd, work_dir, major):
    pp = Pgpush(pgpush_cmd, work_dir)
    primary = pg_factory("primary", conf={"archive_mode": "on", "archive_command": ""}, bin_dir=bin_dir_for(major))
    setup_archiving(pp, primary)
    standby = primary.make_standby("standby", conf={"archive_command": pp.archive_command()})
    primary.sql("create table t as select g from generate_series(1, 4321) g")
    _idle_with_open_segment(primary, standby)

    started = time.monotonic()
    label, res = backup(pp, standby, "--wait", "--wait-timeout=60", f"--primary-conninfo={primary.conninfo}",
                        timeout=90)
    elapsed = time.monotonic() - started
    assert "is DONE" in res.stdout
    assert elapsed < 30, elapsed
    assert backups(pp)[label]["status"] == "DONE"

    # The standby's backup restores to a consistent cluster (pg_control copied last, WAL range right).
    restored = pg_factory("restored", init=False, bin_dir=bin_dir_for(major))
    restored._prepare_common()
    res = pp.run("restore", f"--pg1-path={restored.datadir}", f"--set={label}", "--type=immediate",
                 "--target-action=promote", timeout=120)
    assert res.returncode == 0, res.stderr
    assert not (restored.datadir / "standby.signal").exists()
    restored.set_conf({"port": restored.port, "unix_socket_directories": str(restored.socket_dir),
                       "archive_mode": "off", "primary_conninfo": "", "primary_slot_name": ""})
    restored.start(timeout=120)
    deadline = time.monotonic() + 60
    while restored.sql("select pg_is_in_recovery()") == "t":
        assert time.monotonic() < deadline, restored.log_tail()
        time.sleep(0.3)
    assert restored.sql("select count(*) from t") == "4321"
    restored.stop()

    # Idle pair with the primary at a segment start (the switch may be a no-op): still DONE within seconds.
    _idle_with_open_segment(primary, standby)
    primary.switch_wal()
    standby.wait_replayed()
    started = time.monotonic()
    label, res = backup(pp, standby, "--wait", "--wait-timeout=60", f"--primary-conninfo={primary.conninfo}",
                        timeout=90)
    assert time.monotonic() - started < 30
    assert backups(pp)[label]["status"] == "DONE"


def test_nudge_writes_a_record_only_when_the_switch_would_be_a_no_op(pg_factory, monkeypatch):
    """Right after a switch nothing is in the current segment: pg_switch_wal() alone would do nothing."""
    from pgpush import config
    from pgpush.errors import ArchiveMismatchError
    from pgpush.log import LOG
    from pgpush.pg import nudge

    primary = pg_factory("primary", conf={"archive_mode": "off"})
    system_id = primary.system_identifier()
    cfg = config.load(["--stanza=main", f"--primary-conninfo={primary.conninfo}", "backup"], environ={})
    said: list[str] = []
    monkeypatch.setattr(LOG, "detail", said.append)
    nudger = nudge.PrimaryNudge(cfg, system_id, 16 * 1024 * 1024)
    try:
        # Something in the current segment: a plain switch, no extra record.
        primary.sql("select pg_logical_emit_message(false, 'test', 'payload')")
        segment = primary.current_wal_segment()
        nudger.nudge()
        assert len(said) == 1 and "switched WAL on the primary" in said[0], said
        assert primary.current_wal_segment() > segment

        # Nothing in it: a record first, then the switch, so the segment is really completed.
        for _attempt in range(5):  # the bgwriter may log a snapshot between our switch and the nudge
            said.clear()
            primary.switch_wal()
            segment = primary.current_wal_segment()
            nudger.nudge()
            if any("wrote a WAL record" in m for m in said):
                break
        else:
            raise AssertionError(f"the no-op switch was never detected: {said}")
        assert primary.current_wal_segment() > segment
    finally:
        nudger.close()

    # A primary-conninfo naming another cluster is refused.
    other = pg_factory("other", fresh=True)
    cfg = config.load(["--stanza=main", f"--primary-conninfo={other.conninfo}", "backup"], environ={})
    with pytest.raises(ArchiveMismatchError, match="system identifier"):
        nudge.PrimaryNudge(cfg, system_id, 16 * 1024 * 1024)


def test_primary_conninfo_must_be_the_primary(pg_factory, pgpush_cmd, work_dir):
    pp = Pgpush(pgpush_cmd, work_dir)
    primary = pg_factory("primary", conf={"archive_mode": "on", "archive_command": ""})
    setup_archiving(pp, primary)
    standby = primary.make_standby("standby", conf={"archive_command": pp.archive_command()})
    # Pointing primary-conninfo at the standby itself (in recovery) is refused before any backup starts.
    res = pp.run("backup", *pg_opts(standby), f"--primary-conninfo={standby.conninfo}")
    assert res.returncode == 32, res.stderr
    assert "in recovery" in res.stderr
    assert backups(pp) == {}


def test_frozen_primary_cannot_keep_a_standby_backup_past_its_wait_timeout(pg_factory, pgpush_cmd, work_dir):
    """The primary freezes (every process SIGSTOPped: the kernel still acknowledges, nothing answers)
    once the backup has its session there: the nudge gives up within the wait's time and the backup
    ends with an error instead of waiting for ever."""
    pp = Pgpush(pgpush_cmd, work_dir)
    primary = pg_factory("primary", conf={"archive_mode": "on", "archive_command": ""})
    setup_archiving(pp, primary)
    standby = primary.make_standby("standby", conf={"archive_command": pp.archive_command()})
    _idle_with_open_segment(primary, standby)
    argv = ["runuser", "-u", "postgres", "--", *pp.argv("backup", "--wait", "--wait-timeout=6",
                                                          f"--primary-conninfo={primary.conninfo}", *pg_opts(standby))]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    frozen: list[int] = []
    try:
        session = "select count(*) from pg_stat_activity where application_name = 'pgpush'"
        procs.wait_for(lambda: primary.sql(session) != "0", 60, 0.01, "the backup's session on the primary")
        frozen = [primary.pid, *procs.descendants_of(primary.pid)]
        procs.signal_pids(frozen, signal.SIGSTOP)
        try:
            _out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail("the backup outlived its --wait-timeout by a minute with the primary frozen")
    finally:
        procs.signal_pids(frozen, signal.SIGCONT)
        if proc.poll() is None:
            procs.kill_tree(proc.pid, sig=signal.SIGKILL)
        proc.wait(timeout=10)
    assert proc.returncode in (3, 56), err  # still WAITING_FOR_WALS, or the primary lost while checking it
    assert err.strip().splitlines()[-1].startswith(f"ERROR: [{proc.returncode:03d}]: "), err
    assert "Traceback" not in err
