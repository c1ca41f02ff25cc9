"""Every wait of the asynchronous parents has an end derived from the options (protocol-timeout)."""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import subprocess
import time

import pytest
from harness import faults, procs
from pgpush_env import Pgpush

pytestmark = pytest.mark.integration


@contextlib.contextmanager
def hanging_file(path):
    """Replace ``path`` with a FIFO: opening it for reading blocks until someone opens it for writing,
    the way a call on a hung NFS mount does.  Always undone (a reader still blocked is released)."""
    real = path.with_name(path.name + ".aside")
    shutil.move(str(path), str(real))
    os.mkfifo(path, 0o640)
    uid, gid = procs.user_ids("postgres")
    os.chown(path, uid, gid)
    try:
        yield
    finally:
        if stat.S_ISFIFO(os.stat(path).st_mode):
            fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)  # lets a blocked open() return
            os.close(fd)
        os.replace(real, path)


def test_push_worker_hung_on_storage_is_killed_and_archiving_resumes(pg_factory, pgpush_cmd, work_dir):
    """A storage call that never returns: the parent kills its worker after protocol-timeout, writes
    the verdict (103 naming the timeout), frees its lock, and archiving resumes once storage answers."""
    pp = Pgpush(pgpush_cmd, work_dir, protocol_timeout=3, archive_timeout=20)
    pg = pg_factory("pg", conf={"archive_mode": "on", "archive_command": ""}, wal_segsize_mb=1)
    pp.stanza_create(pg)
    info = next((work_dir / "repo").rglob("archive.info"))
    with hanging_file(info):
        pg.set_conf({"archive_command": pp.archive_command(archive_async="y")})
        pg.reload()
        pg.switch_wal()
        # what archive_command tells PostgreSQL, well before archive-timeout
        procs.wait_for(lambda: "protocol-timeout" in pp.log_text("archive-push"), timeout=60,
                       message="the parent to give up on its hung worker")
    expected = "ERROR: [103]: unable to find a valid repository: no answer within protocol-timeout (3s)"
    assert expected in pp.log_text("archive-push-async")
    assert expected in pp.log_text("archive-push")
    last = pg.switch_wal()
    pg.wait_archived(last, timeout=90)


def _cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def test_get_worker_hung_on_storage_is_killed_and_the_parent_waits_idle(pg_factory, pgpush_cmd, work_dir):
    """While its worker hangs the get parent sleeps (no busy loop); at protocol-timeout the worker is
    killed and get fails with 103 (never 1: an unreachable repository is not the end of the archive)."""
    pp = Pgpush(pgpush_cmd, work_dir, protocol_timeout=6, archive_timeout=10)
    pg = pg_factory("pg", conf={"archive_mode": "on", "archive_command": ""}, wal_segsize_mb=1)
    pp.stanza_create(pg)
    pg.set_conf({"archive_command": pp.archive_command(archive_async="n")})
    pg.reload()
    segment = pg.switch_wal()
    pg.wait_archived(segment, timeout=60)
    dest = work_dir / "dest"
    info = next((work_dir / "repo").rglob("archive.info"))
    with hanging_file(info):
        argv = ["runuser", "-u", "postgres", "--",
                *pp.argv("get", segment, str(dest), archive_async="y", pg1_path=str(pg.datadir))]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/")
        try:
            parents: list[int] = []
            procs.wait_for(lambda: parents.extend(faults.pgpush_pids(work_dir, "get-async")) or parents, 30,
                           message="the get parent to start")
            before = _cpu_seconds(parents[0])
            time.sleep(3)
            spent = _cpu_seconds(parents[0]) - before
            assert spent < 0.3, f"the get parent used {spent:.2f}s of CPU in 3s while waiting"
            _out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                procs.kill_tree(proc.pid, sig=9)
            proc.wait(timeout=10)
    assert proc.returncode == 103, err
    assert "no answer within protocol-timeout (6s)" in err
    res = pp.run("get", segment, str(dest), archive_async="y", pg1_path=str(pg.datadir))
    assert res.returncode == 0, res.stderr
