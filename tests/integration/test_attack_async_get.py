"""Asynchronous get attacked from outside (docs/architecture.md, "Asynchronous push and get"): verdicts the parent wrote for one request are
never the answer to a later one."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

import pytest
from async_get_env import archived_primary, recover_in_two_phases, two_marks
from harness import procs, tmpfs
from pgpush_env import Pgpush, sha1_file

from pgpush.archive import lock

pytestmark = pytest.mark.integration


def test_error_met_while_prefetching_is_not_the_answer_to_a_later_recovery(pg_factory, pgpush_cmd, work_dir):
    """A segment that read back corrupt while the parent prefetched it for one recovery leaves
    ``SEGMENT.error``; once the repository serves it whole again, the next recovery that asks for it
    must get it (a sync get would), not that old error, which PostgreSQL takes as the end of the archive."""
    pp = Pgpush(pgpush_cmd, work_dir, archive_get_queue_max="8MB", archive_timeout=30, compress_type="none")
    src = two_marks(pg_factory, pp, work_dir)
    good = src.stored.read_bytes()
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 0xFF
    src.stored.write_bytes(bytes(bad))  # reads back corrupt (checksum mismatch) for now

    recover_in_two_phases(
        pg_factory, pp, src,
        after_first=lambda: procs.wait_for((pp.in_dir / f"{src.segment}.error").exists, 60,
                                           message=f"the prefetch to fail on {src.segment}"),
        between=lambda: src.stored.write_bytes(good))  # the repository serves it whole again
    assert "ERROR: [042]" not in pp.log_text("archive-get"), pp.log_text("archive-get")
    _wait_parent_gone(pp)


def test_a_half_fetched_segment_left_by_a_killed_worker_does_not_stay_in_the_spool(pg_factory, pgpush_cmd, work_dir):
    """A worker killed mid-file (at protocol-timeout, by the OOM killer) leaves ``SEGMENT.pgpush.tmp``;
    the next parent that looks at the spool removes it instead of keeping a segment's worth of
    spool taken for ever, one more on every kill."""
    pp = Pgpush(pgpush_cmd, work_dir, archive_get_queue_max="2MB", archive_timeout=30)
    pg, names = archived_primary(pg_factory, pp, 3)
    pp.in_dir.mkdir(parents=True, exist_ok=True)
    orphan = pp.in_dir / f"{names[0]}.pgpush.tmp"
    orphan.write_bytes(b"\0" * 300_000)  # what a worker killed mid-file leaves
    procs.chown_tree(pp.spool_path, "postgres")
    res = pp.run("get", names[1], str(work_dir / "dest"), archive_async="y", pg1_path=str(pg.datadir))
    assert res.returncode == 0, res.stderr
    _wait_parent_gone(pp)
    assert not orphan.exists()


def test_a_segment_delivered_to_its_destination_is_exit_0_even_if_the_next_request_cannot_be_written(
        pg_factory, pgpush_cmd, work_dir):
    """Once the prefetched segment is at %p the call has succeeded: failing afterwards (the request
    for the next segment cannot be written into the spool) tells PostgreSQL the archive has ended."""
    pp = Pgpush(pgpush_cmd, work_dir, archive_get_queue_max="4MB", archive_timeout=30)
    pg, names = archived_primary(pg_factory, pp, 3)
    res = pp.run("get", names[0], str(work_dir / "dest0"), archive_async="y", pg1_path=str(pg.datadir))
    assert res.returncode == 0, res.stderr
    procs.wait_for((pp.in_dir / names[1]).exists, 30, message="the prefetch of the next segment")
    _wait_parent_gone(pp)
    blocker = pp.in_dir / "request.pgpush.tmp"
    blocker.mkdir()  # the spool refuses the next request
    try:
        dest = work_dir / "dest1"
        res = pp.run("get", names[1], str(dest), archive_async="y", pg1_path=str(pg.datadir))
        assert res.returncode == 0, res.stderr
        stored = next((work_dir / "repo").rglob(f"{names[1]}-*"))
        assert sha1_file(dest) == stored.name.split("-", 1)[1].split(".", 1)[0]
        assert "WARN: unable to ask for the next WAL file in advance: [047]" in pp.log_text("archive-get")
    finally:
        blocker.rmdir()
    _wait_parent_gone(pp)


def test_a_destination_that_is_full_fails_047_leaving_nothing_half_written(pg_factory, pgpush_cmd, work_dir):
    """%p on another file system than the spool (the segment is copied) and that file system full:
    the call fails with the path's code (047, not 025), leaves no half copy beside %p, and keeps
    the segment in the spool, so the retry once there is room succeeds."""
    pp = Pgpush(pgpush_cmd, work_dir, archive_get_queue_max="4MB", archive_timeout=30)
    pg, names = archived_primary(pg_factory, pp, 3)
    res = pp.run("get", names[0], str(work_dir / "dest0"), archive_async="y", pg1_path=str(pg.datadir))
    assert res.returncode == 0, res.stderr
    procs.wait_for((pp.in_dir / names[1]).exists, 30, message="the prefetch of the next segment")
    with tmpfs.tmpfs(work_dir / "small", 2, owner="postgres") as small:
        filler = tmpfs.fill(small, leave_bytes=256 * 1024)
        dest = small / "RECOVERYXLOG"
        res = pp.run("get", names[1], str(dest), archive_async="y", pg1_path=str(pg.datadir))
        assert res.returncode == 47, res.stderr
        assert res.stderr.startswith("ERROR: [047]: unable to write WAL file"), res.stderr
        assert sorted(p.name for p in small.iterdir()) == [filler.name]  # no half copy left
        assert (pp.in_dir / names[1]).exists()
        filler.unlink()
        res = pp.run("get", names[1], str(dest), archive_async="y", pg1_path=str(pg.datadir))
        assert res.returncode == 0, res.stderr
        stored = next((work_dir / "repo").rglob(f"{names[1]}-*"))
        assert sha1_file(dest) == stored.name.split("-", 1)[1].split(".", 1)[0]
    _wait_parent_gone(pp)


def _pids_of(*words: str) -> list[int]:
    """Processes whose command line holds every one of ``words``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                argv = open(f"/proc/{entry}/cmdline", "rb").read().decode(errors="replace").split("\0")
            except OSError:
                continue
            if all(any(w in a for a in argv) for w in words):
                found.append(int(entry))
    return found


def test_a_get_whose_parent_is_killed_mid_request_starts_another_instead_of_timing_out(
        pg_factory, pgpush_cmd, work_dir):
    """The parent and its worker are killed (the OOM killer, an operator) while the foreground waits
    for its segment: the foreground starts a new parent and gets the segment, instead of waiting out
    archive-timeout for an answer nobody will write and failing 082, which ends a recovery."""
    pp = Pgpush(pgpush_cmd, work_dir, archive_timeout=20, protocol_timeout=60)
    pg, names = archived_primary(pg_factory, pp, 2)
    stored = next((work_dir / "repo").rglob(f"{names[0]}-*"))
    info = next((work_dir / "repo").rglob("archive.info"))
    aside = work_dir / "aside"
    shutil.move(str(info), str(aside))
    os.mkfifo(info, 0o640)  # opening it blocks, as a hung storage call does
    uid, gid = procs.user_ids("postgres")
    os.chown(info, uid, gid)
    dest = work_dir / "dest"
    argv = ["runuser", "-u", "postgres", "--",
            *pp.argv("get", names[0], str(dest), archive_async="y", pg1_path=str(pg.datadir))]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/")
    try:
        spool = str(pp.spool_path)
        procs.wait_for(lambda: _pids_of("get-async", spool) and _pids_of("worker", spool), 30,
                       message="the parent and its worker")
        time.sleep(0.5)  # the worker is blocked on the hung file
        procs.signal_pids(_pids_of("get-async", spool) + _pids_of("worker", spool), signal.SIGKILL)
        os.replace(aside, info)  # storage answers again (one rename: never absent in between)
        started = time.monotonic()
        _out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert time.monotonic() - started < 15, "the segment came only when archive-timeout was near"
        assert sha1_file(dest) == stored.name.split("-", 1)[1].split(".", 1)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if aside.exists():
            os.close(os.open(info, os.O_RDWR | os.O_NONBLOCK))  # releases a reader still blocked
            os.replace(aside, info)
    _wait_parent_gone(pp)


def _wait_parent_gone(pp: Pgpush) -> None:
    """The lingering get parent ends by itself: wait for its lock to be free (no process left behind)."""
    path = str(pp.spool_path / "archive" / pp.stanza / "archive-get.lock")
    procs.wait_for(lambda: not os.path.exists(path) or not lock.is_locked(path), 60, message="the get parent to exit")
