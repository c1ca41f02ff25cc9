"""The one guarded entry, ``pgpush.__main__.main`` (docs/architecture.md): every failure below it ends
the process with a code from 2 to 125 announced by exactly one ``ERROR: [NNN]:`` line, never a
traceback, and every way in (``python -m pgpush``, the console script, the zipapp) is that ``main``.

The processes here are real ones (``python -m pgpush``): a traceback printed by the interpreter on
the way out, or an exit status the guard did not choose, only shows in a process's own stderr and
status."""

from __future__ import annotations

import ast
import contextlib
import io
import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

import pgpush.__main__ as entry
from pgpush.archive import foreground
from pgpush.errors import PgPushError

REPO_ROOT = Path(__file__).resolve().parents[2]
SEGMENT = "000000010000000000000002"
ONE_ERROR_LINE = re.compile(r"ERROR: \[(\d{3})\]: [^\n]*\n")


def _pgpush(*argv: str) -> subprocess.CompletedProcess:
    """``python -m pgpush`` as PostgreSQL starts it: a process of its own, no PGPUSH_* from this one."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGPUSH_")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "pgpush", *argv], capture_output=True, text=True, timeout=60,
                          env=env, cwd="/")


def _spool_options(tmp_path: Path) -> list[str]:
    return ["--stanza=main", f"--spool-path={tmp_path / 'spool'}", "--log-level-file=off",
            f"--pg1-path={tmp_path / 'pg'}", "--archive-timeout=5"]


def _block_the_request(tmp_path: Path) -> Path:
    """A directory where the async get's ``in/request`` is first written (foreground._write_request
    writes ``request.pgpush.tmp`` and renames it): the spool refuses the request."""
    blocker = tmp_path / "spool" / "archive" / "main" / "in" / "request.pgpush.tmp"
    blocker.mkdir(parents=True)
    return blocker


def test_an_unwritable_spool_request_in_the_async_get_foreground_is_one_047_line(tmp_path):
    """The issue saw an OSError of the foreground escape with a traceback and exit 1 (PostgreSQL's
    "not in the archive": recovery would end there).  The spool reports it as the path's 047."""
    blocker = _block_the_request(tmp_path)
    res = _pgpush(*_spool_options(tmp_path), "--archive-async", "get", SEGMENT, str(tmp_path / "dest"))
    request = blocker.parent / "request"
    assert (res.returncode, res.stderr) == (47, f"ERROR: [047]: unable to write spool file '{request}': Is a directory\n")
    assert res.stdout == ""
    assert blocker.is_dir() and not request.exists() and not (tmp_path / "dest").exists()


def test_a_bare_os_error_in_the_async_get_foreground_is_one_025_line_not_exit_1(tmp_path, monkeypatch):
    """An OSError nobody turned into a pgpush error (a bug) reaches the guard: 025, one line."""

    def refused(qdir: str, name: str) -> str:
        raise IsADirectoryError(21, "Is a directory", os.path.join(qdir, "request.pgpush.tmp"))

    monkeypatch.setattr(foreground, "_write_request", refused)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = entry.main([*_spool_options(tmp_path), "--archive-async", "get", SEGMENT, str(tmp_path / "dest")])
    request_tmp = tmp_path / "spool" / "archive" / "main" / "in" / "request.pgpush.tmp"
    assert (rc, err.getvalue()) == (25, f"ERROR: [025]: IsADirectoryError: [Errno 21] Is a directory: '{request_tmp}'\n")


@pytest.mark.parametrize(("code", "status"), [(0, 2), (1, 2), (2, 2), (125, 125), (126, 125), (300, 125)])
def test_an_error_code_outside_2_to_125_is_clamped_and_the_line_says_the_status(monkeypatch, code, status):
    """0 is success and 1 "not in the archive" to PostgreSQL, 126 and above abort its recovery:
    no error may end with those, and the one line announces the status the process ends with."""

    def fails(argv, bootstrap, seen):
        seen["command"] = "get"
        raise PgPushError("something failed", code)

    monkeypatch.setattr(entry, "_dispatch", fails)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = entry.main(["--log-level-file=off", "get", SEGMENT, "/nonexistent/dest"])
    assert (rc, err.getvalue()) == (status, f"ERROR: [{status:03d}]: something failed\n")


@pytest.mark.parametrize("mode", [[], ["--archive-async"]], ids=["sync", "async"])
@pytest.mark.parametrize("argv", [["push"], ["get"], ["get", SEGMENT]], ids=["push-no-%p", "get-no-%f-%p", "get-no-%p"])
def test_a_missing_percent_argument_is_043_in_sync_and_async_mode_alike(tmp_path, mode, argv):
    """archive_command without %p, restore_command without %f or %p: the same usage error, one line,
    before any spool or repository is touched (tests/property/test_attack_entry_streams.py runs the
    same in-process; here the process's own status and stderr)."""
    res = _pgpush(*_spool_options(tmp_path), *mode, *argv)
    assert res.returncode == 43, res.stderr
    assert ONE_ERROR_LINE.fullmatch(res.stderr) and res.stderr.startswith(f"ERROR: [043]: {argv[0]} command requires ")
    assert not (tmp_path / "spool").exists()


def test_the_console_script_and_the_zipapp_start_the_same_guarded_main():
    """The installed ``pgpush`` script (console_scripts entry point) and ``pgpush.pyz`` both run
    ``pgpush.__main__:main``: neither may bypass the guard (the script used to start the CLI)."""
    scripts = [ep for ep in metadata.entry_points(group="console_scripts") if ep.name == "pgpush"]
    assert [ep.value for ep in scripts] == ["pgpush.__main__:main"]
    assert scripts[0].load() is entry.main
    declared = (REPO_ROOT / "pyproject.toml").read_text()
    assert re.search(r'^\[project\.scripts\]\npgpush = "pgpush\.__main__:main"$', declared, re.M)

    tree = ast.parse((REPO_ROOT / "zipapp_root" / "__main__.py").read_text())
    imports = [(n.module, [a.name for a in n.names]) for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert ("pgpush.__main__", ["main"]) in imports
    exits = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and ast.unparse(n.func) == "sys.exit"]
    # Before the guarded main, only the host check may end the process: on a host pgpush does not run on
    # (CPython 3.6, ppc64le), pgpush cannot be imported, so its one ERROR line is written there (046).
    assert [ast.unparse(n.args[0]) for n in exits] == ["HOST_ERROR_CODE", "main(bootstrap=_bootstrap, bundle=_BUNDLE)"]


@pytest.mark.parametrize("level", ["debug", "info"])
@pytest.mark.parametrize("argv", [["push", f"pg_wal/{SEGMENT}"], ["get", SEGMENT, "/nonexistent/dest"]],
                         ids=["push", "get"])
def test_a_bug_in_sync_push_or_get_is_one_025_line_the_traceback_in_the_log_only_at_debug(tmp_path, monkeypatch,
                                                                                         argv, level):
    """The synchronous push/get core has no guard of its own: a bug below it reaches the one guarded
    entry, which says 025 on one line and writes the traceback to the log file at debug level only."""
    from pgpush.archive import core

    def bug(*args: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(core, argv[0], bug)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = entry.main(["--stanza=main", f"--repo1-path={tmp_path / 'repo'}", f"--log-path={tmp_path / 'log'}",
                         f"--log-level-file={level}", *argv])
    assert (rc, err.getvalue()) == (25, "ERROR: [025]: RuntimeError: a bug\n")
    log = (tmp_path / "log" / f"main-archive-{argv[0]}.log").read_text()
    assert "ERROR: [025]: RuntimeError: a bug" in log
    assert ("Traceback (most recent call last)" in log) == (level == "debug"), log
