"""Which temporary files of a put may a later put of the same name remove (storage.base)."""

from __future__ import annotations

import os
import subprocess
import sys

from pgpush.fsutil import TMP_SUFFIX
from pgpush.storage.base import PROCESS_SPACE, left_by_dead_writer, tmp_name


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_temporary_file_of_a_writer_of_this_process_space_that_is_gone_is_a_leftover():
    name = f"F{TMP_SUFFIX}.{PROCESS_SPACE}-{_dead_pid()}.abcdef"
    assert left_by_dead_writer(name, "F")


def test_an_earlier_failed_put_of_this_very_process_is_a_leftover():
    assert left_by_dead_writer(os.path.basename(tmp_name("/r/F")), "F")


def test_a_live_writer_another_host_another_name_or_the_old_format_is_never_touched():
    live = f"F{TMP_SUFFIX}.{PROCESS_SPACE}-1.abcdef"  # pid 1 is alive
    other_space = f"F{TMP_SUFFIX}.{'0' * 8 if PROCESS_SPACE != '0' * 8 else '1' * 8}-{_dead_pid()}.abcdef"
    other_name = f"G{TMP_SUFFIX}.{PROCESS_SPACE}-{_dead_pid()}.abcdef"
    old_format = f"F{TMP_SUFFIX}.{_dead_pid()}.abcdef"
    assert not any(left_by_dead_writer(n, "F") for n in (live, other_space, other_name, old_format, "F"))
