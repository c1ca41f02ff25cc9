"""The exit contract holds when the console is closed or full, and arguments are counted once.

PostgreSQL, cron or a supervisor may start pgpush with a descriptor closed (``2>&-``) or with
output to a full device or a closed pipe.  Whatever the console can take, the exit status is the
verdict: 0, 1 only for "not in the archive" on ``get``, else the code of one ``ERROR: [NNN]:``
line (when the console can show it at all).  Run as real processes (``python -m pgpush`` and,
with ``TEST_PGPUSH_ZIPAPP``, the zipapp): the failures are in the interpreter's own start-up and
exit, which an in-process call does not have.
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import pytest
from pgpush_sandbox import ERROR_LINE, Sandbox, subprocess_commands

MISSING = "0000000100000000000000AA"


@pytest.fixture(scope="module")
def box():
    with tempfile.TemporaryDirectory(prefix="pgpush-attack-streams-") as root:
        yield Sandbox(Path(root))


def run_shell(box: Sandbox, command: list[str], argv: list[str], redirect: str) -> tuple[int, str]:
    """Run pgpush under ``sh`` with ``redirect`` applied (e.g. ``2>&-``); returns (status, stderr)."""
    env = box.env()
    proc = subprocess.run(["sh", "-c", f'exec "$@" {redirect}', "sh", *command, *argv], cwd=box.cwd, env=env,
                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120)
    return proc.returncode, proc.stderr.decode("utf-8", "backslashreplace")


CASES = [
    # (argv, redirection, expected exit status, expected ERROR code on stderr or None)
    (["version"], ">&-", 0, None),
    (["no-such-command"], "2>&-", 31, None),
    (["get", MISSING, "pg_wal/RECOVERYXLOG"], "2>&-", 1, None),
    (["get", MISSING, "/nonexistent-dir/RECOVERYXLOG"], "2>&-", 47, None),
    (["--archive-async", "push", "pg_wal/000000010000000000000001"], "2>&- >&-", 55, None),
    (["version"], ">/dev/full", 64, "064"),
    (["info"], ">/dev/full", 64, "064"),
    (["--help"], ">/dev/full", 64, "064"),
    (["no-such-command"], "2>/dev/full", 31, None),
    (["get", MISSING, "pg_wal/RECOVERYXLOG"], "--log-level-console=info 2>/dev/full", 1, None),
]


@pytest.mark.parametrize("how,command", subprocess_commands(), ids=[c[0] for c in subprocess_commands()])
@pytest.mark.parametrize("argv,redirect,status,code", CASES,
                         ids=[f"{' '.join(c[0])[:30]} {c[1]}" for c in CASES])
def test_closed_or_full_console_keeps_the_exit_status_and_one_error_line(box, how, command, argv, redirect, status,
                                                                         code):
    options = [r for r in redirect.split() if r.startswith("--")]
    shell_redirect = " ".join(r for r in redirect.split() if not r.startswith("--"))
    rc, err = run_shell(box, command, options + argv, shell_redirect)
    assert "Traceback" not in err and "Exception ignored" not in err, err
    assert rc == status, (rc, err)
    if code is not None:
        assert ERROR_LINE.findall(err) == [code], err


@pytest.mark.parametrize("mode", [[], ["--archive-async"]], ids=["sync", "async"])
@pytest.mark.parametrize("argv,status", [
    (["push"], 43), (["get"], 43), (["get", MISSING], 43),
    (["push", "pg_wal/000000010000000000000001", "extra"], 31), (["get", MISSING, "pg_wal/X", "extra"], 31),
    (["version", "extra"], 31), (["push-async"], 43), (["get-async"], 43), (["worker"], 43),
], ids=lambda v: " ".join(v) if isinstance(v, list) else str(v))
def test_missing_argument_is_043_and_an_extra_one_031_before_anything_runs(box, mode, argv, status):
    rc, out, err = box.run_inprocess(mode + argv)
    assert (rc, ERROR_LINE.findall(err)) == (status, [f"{status:03d}"]), err
    assert "Traceback" not in err


def _other_interpreters() -> list[str]:
    """CPython 3.9 to 3.13 other than this one, where the machine has them (pyenv, /usr/bin)."""
    import glob
    import sys

    found = {}
    for path in sorted(glob.glob("/root/.pyenv/versions/3.*/bin/python3")) + sorted(glob.glob("/usr/bin/python3.1[0-3]")):
        version = Path(path).resolve().name if "pyenv" not in path else Path(path).parent.parent.name
        minor = ".".join(version.replace("python", "").split(".")[:2])
        if minor in ("3.9", "3.10", "3.11", "3.12", "3.13") and minor != f"{sys.version_info[0]}.{sys.version_info[1]}":
            found.setdefault(minor, path)
    return [found[k] for k in sorted(found)]


@pytest.mark.skipif(not _other_interpreters(), reason="no other CPython 3.9-3.13 on this machine")
@pytest.mark.parametrize("python", _other_interpreters() or ["none"])
def test_an_unexpected_error_is_one_025_line_on_every_supported_python(box, python):
    """The stdlib ``python -m pgpush`` of another CPython lacks the third-party packages: ``info``
    meets a ModuleNotFoundError, which must read as 025 (on 3.9 the guard itself raised a
    TypeError: traceback, exit 1), while the stdlib fast path still answers."""
    env = {"PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    rc, out, err = box.run_subprocess([python, "-m", "pgpush"], ["info"], extra_env=env)
    assert "Traceback" not in err and (rc, ERROR_LINE.findall(err)) == (25, ["025"]), (python, rc, err)
    rc, out, err = box.run_subprocess([python, "-m", "pgpush"], ["version"], extra_env=env)
    assert (rc, out.startswith("pgpush ")) == (0, True), err
