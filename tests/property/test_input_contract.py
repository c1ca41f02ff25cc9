"""Property-based: for any command line, environment, config file, WAL file or spool status file,
pgpush answers 0, 1 from ``get`` only, or one coded ``ERROR: [NNN]:`` line with exit NNN (2..125),
never a traceback, and writes nothing outside the repository, spool, log path and pg1-path.

Most examples run in-process through the guarded entry (:func:`pgpush.__main__.main`); a bounded
number run as real processes, ``python -m pgpush`` and (with ``TEST_PGPUSH_ZIPAPP``) the zipapp.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pgpush_sandbox import STANZA, SYSTEM_ID, Sandbox, subprocess_commands
from pgpush_strategies import STATUS_CONTENT, command_lines, config_files, environments, wal_files

from pgpush.archive import lock
from pgpush.config import split_argv

QUICK = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
                 database=None)
FIXED_COMMANDS = (["info"], ["version"], ["push", "pg_wal/000000010000000000000001"],
                  ["get", "000000010000000000000001", "pg_wal/RECOVERYXLOG"], ["expire"], ["verify"])


@contextlib.contextmanager
def sandbox():
    with tempfile.TemporaryDirectory(prefix="pgpush-property-") as root:
        yield Sandbox(Path(root))


def is_get(argv: list[str]) -> bool:
    """Whether pgpush reads ``argv`` as a ``get`` (the one command that may exit 1)."""
    try:
        return split_argv(argv)[0] == "get"
    except Exception:  # noqa: BLE001 - not parsable: then it is not a get either
        return False


@settings(QUICK, max_examples=150)
@given(argv=command_lines())
def test_any_command_line_exits_0_or_with_one_coded_error(argv):
    with sandbox() as box:
        box.check(box.run_inprocess(argv), argv, is_get(argv))


@settings(QUICK, max_examples=100)
@given(env=environments(), argv=st.sampled_from(FIXED_COMMANDS))
def test_any_environment_exits_0_or_with_one_coded_error(env, argv):
    with sandbox() as box:
        box.check(box.run_inprocess(argv, env), [*argv, env], is_get(argv))


@settings(QUICK, max_examples=100)
@given(content=config_files(), argv=st.sampled_from(FIXED_COMMANDS))
def test_any_config_file_exits_0_or_with_one_coded_error(content, argv):
    with sandbox() as box:
        box.config.write_bytes(content)
        box.check(box.run_inprocess(argv), [*argv, content], is_get(argv))


@settings(QUICK, max_examples=60)
@given(wal=wal_files(SYSTEM_ID))
def test_any_wal_file_pushed_is_refused_with_a_code_or_got_back_whole(wal):
    name, content = wal
    with sandbox() as box:
        (box.cwd / "pg_wal" / name).write_bytes(content)
        pushed = box.run_inprocess(["push", f"pg_wal/{name}"])
        box.check(pushed, ["push", name, content[:64]], False)
        got = box.run_inprocess(["get", name, "pg_wal/RECOVERYXLOG"])
        box.check(got, ["get", name, content[:64]], True)
        if pushed[0] == 0:  # acknowledged: it must come back, whole
            assert got[0] == 0, got
            assert (box.cwd / "pg_wal" / "RECOVERYXLOG").read_bytes() == content


@contextlib.contextmanager
def parents_locked(box: Sandbox):
    """Hold both parents' locks: the foreground then answers from the spool and never forks one."""
    fds = []
    try:
        for direction in ("out", "in"):
            path = lock.lock_path(str(box.root / "spool" / "archive" / STANZA), direction)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            fd = lock.try_lock(path)
            assert fd is not None
            fds.append(fd)
        yield
    finally:
        for fd in fds:
            lock.release(fd)


@settings(QUICK, max_examples=80)
@given(files=st.dictionaries(st.sampled_from(["000000010000000000000001.ok", "000000010000000000000001.error",
                                              "global.error", "000000010000000000000001", "request"]),
                             st.one_of(STATUS_CONTENT, st.none()), max_size=4),
       direction=st.sampled_from(["out", "in"]))
def test_any_spool_status_file_is_answered_with_the_exit_contract(files, direction):
    """Status files of any content (or directories in their place) on the asynchronous fast path."""
    with sandbox() as box:
        queue = box.root / "spool" / "archive" / STANZA / direction
        queue.mkdir(parents=True)
        for name, content in files.items():
            if content is None:
                (queue / name).mkdir()
            else:
                (queue / name).write_bytes(content)
        (box.cwd / "pg_wal" / "000000010000000000000001").write_bytes(b"wal")
        argv = ["--archive-async", "--archive-timeout=0.2"]
        if direction == "out":
            argv += ["push", "pg_wal/000000010000000000000001"]
        else:
            argv += ["get", "000000010000000000000001", "pg_wal/RECOVERYXLOG"]
        with parents_locked(box):
            result = box.run_inprocess(argv, {"PGPUSH_ARCHIVE_ASYNC": "y"})
        # No parent runs to answer this call's request, so no status file can say "not in the
        # archive" for it: a marker left for an earlier request is never the answer (exit 1 is wrong).
        box.check(result, [*argv, files], False)


@pytest.mark.parametrize(("label", "command"), subprocess_commands(), ids=[c[0] for c in subprocess_commands()])
def test_as_a_process_any_input_exits_0_or_with_one_coded_error(label, command):
    """A bounded number of examples as real processes: what the in-process runs cannot see
    (interpreter start, the zipapp's bootstrap, stdout/stderr encodings) keeps the contract too."""

    @settings(QUICK, max_examples=8)
    @given(argv=command_lines(), env=environments(), content=config_files())
    def run(argv, env, content):
        with sandbox() as box:
            box.config.write_bytes(content)
            env = {**env, "PGPUSH_CACHE": str(cache)} if label == "zipapp" else env
            box.check(box.run_subprocess(command, argv, env), [label, argv, env, content], is_get(argv))

    with tempfile.TemporaryDirectory(prefix="pgpush-property-cache-") as cache:
        run()
