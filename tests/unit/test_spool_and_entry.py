"""Spool permissions and errors, the internal lock hand-over, and the guarded entry's exit statuses."""

from __future__ import annotations

import contextlib
import io
import os
import stat

import pytest

from pgpush.__main__ import _status, main
from pgpush.archive import lock, spool
from pgpush.errors import FormatError, OptionInvalidValueError, PathCreateError


def test_spool_parents_are_created_0750_not_world_readable(tmp_path):
    os.umask(0o022)
    spool.queue_dir(str(tmp_path / "spool"), "main", "out")
    for path in (tmp_path / "spool", tmp_path / "spool" / "archive", tmp_path / "spool" / "archive" / "main",
                 tmp_path / "spool" / "archive" / "main" / "out"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o750, path


def test_status_file_that_is_a_directory_is_a_format_error(tmp_path):
    (tmp_path / "000000010000000000000001.ok").mkdir()
    with pytest.raises(FormatError, match="is a directory"):
        spool.read_status(str(tmp_path / "000000010000000000000001.ok"))
    with pytest.raises(PathCreateError):
        spool.remove(str(tmp_path / "000000010000000000000001.ok"))


@pytest.mark.parametrize("value", ["garbage", "0", "2", "-5", "99999", "1e3"])
def test_bad_internal_lock_descriptor_is_refused(monkeypatch, value):
    monkeypatch.setenv("PGPUSH_LOCK_FD", value)
    with pytest.raises(OptionInvalidValueError, match="PGPUSH_LOCK_FD"):
        lock.inherited_lock()


def test_exit_status_1_is_kept_only_for_get():
    assert _status(1, "get") == 1
    assert _status(0, "push") == 0
    assert _status(1, "push") == 25
    assert _status(130, "info") == 125
    assert _status(-3, "info") == 2


def test_guarded_entry_reports_an_os_error_of_the_fast_path_as_one_coded_line(tmp_path):
    """%p is a directory: one ``ERROR: [047]:`` line naming it, no traceback."""
    qin = tmp_path / "spool" / "archive" / "main" / "in"
    qin.mkdir(parents=True)
    (qin / "000000010000000000000002").write_bytes(b"wal")
    (tmp_path / "dest").mkdir()
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(["--stanza=main", "--archive-async", f"--spool-path={tmp_path / 'spool'}", "--log-level-file=off",
                  "get", "000000010000000000000002", str(tmp_path / "dest")])
    assert (rc, err.getvalue()) == (47, f"ERROR: [047]: unable to write WAL file '{tmp_path / 'dest'}': Is a directory\n")


def test_destination_in_a_missing_directory_is_047_at_once_not_a_wait_for_the_timeout(tmp_path):
    """The segment is prefetched but %p cannot be written: say so, do not wait for archive-timeout (082)."""
    qin = tmp_path / "spool" / "archive" / "main" / "in"
    qin.mkdir(parents=True)
    (qin / "000000010000000000000002").write_bytes(b"wal")
    dest = tmp_path / "gone" / "RECOVERYXLOG"
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(["--stanza=main", "--archive-async", f"--spool-path={tmp_path / 'spool'}", "--log-level-file=off",
                   "--archive-timeout=1", "get", "000000010000000000000002", str(dest)])
    assert (rc, err.getvalue()) == (47, f"ERROR: [047]: unable to write WAL file '{dest}': No such file or directory\n")
    assert (qin / "000000010000000000000002").read_bytes() == b"wal"  # kept for the next try


def test_a_status_file_that_cannot_be_written_on_a_full_spool_leaves_no_temporary_file(tmp_path):
    """ENOSPC on a real (tmpfs) spool: 047, and no ``.pgpush.tmp`` left to fill it further."""
    from harness.tmpfs import fill, tmpfs

    with tmpfs(tmp_path / "spool", 0.0625) as root:
        qdir = spool.queue_dir(str(root), "main", "out")
        fill(root)
        with pytest.raises(PathCreateError, match="No space left"):
            spool.write_atomic(qdir, "global.error", b"103\n" + b"x" * 65536)
        assert [p.name for p in root.joinpath("archive", "main", "out").iterdir()] == []
