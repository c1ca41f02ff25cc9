"""pgpush runs on CPython 3.9: every module imports there, and the hot path works there.

The tests run on a newer interpreter, where ``int | None`` evaluated at import, ``datetime.UTC`` or a ``match``
statement all work; on a 3.9 host the same code is an import error in a restore or a traceback in a backup.
When a CPython 3.9 is installed (``TEST_PGPUSH_PYTHON39``, ``python3.9`` on PATH, or pyenv's), each module is
imported by it (the third-party libraries are not installed there: a missing one of those is fine, nothing
else is), and the async push and get answered from the spool run on it end to end.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _python39() -> str | None:
    candidates = [os.environ.get("TEST_PGPUSH_PYTHON39"), shutil.which("python3.9"),
                  *sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.9*/bin/python3.9")))]
    for exe in filter(None, candidates):
        try:
            out = subprocess.run([exe, "-c", "import sys; print(sys.version_info[:2] == (3, 9))"],
                                 capture_output=True, text=True, timeout=30)
        except OSError:
            continue
        if out.stdout.strip() == "True":
            return exe
    return None


PY39 = _python39() or ""
pytestmark = pytest.mark.skipif(not PY39, reason="no CPython 3.9 installed")

IMPORT_ALL = r"""
import importlib, json, pkgutil, pgpush
bad = []
for m in pkgutil.walk_packages(pgpush.__path__, "pgpush."):
    try:
        importlib.import_module(m.name)
    except ModuleNotFoundError as exc:
        if (exc.name or "pgpush").split(".")[0] == "pgpush":
            bad.append(f"{m.name}: {exc!r}")
    except Exception as exc:
        bad.append(f"{m.name}: {exc!r}")
print(json.dumps(bad))
"""


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGPUSH_")}
    env["PYTHONPATH"] = str(ROOT)
    return env


def test_every_module_imports_on_python39(tmp_path):
    out = subprocess.run([PY39, "-s", "-c", IMPORT_ALL], cwd=tmp_path, env=_env(),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_the_hot_path_runs_on_python39(tmp_path):
    spool = tmp_path / "spool"
    (spool / "archive" / "main" / "out").mkdir(parents=True)
    (spool / "archive" / "main" / "out" / "000000010000000000000001.ok").write_text("")
    (spool / "archive" / "main" / "in").mkdir(parents=True)
    (spool / "archive" / "main" / "in" / "000000010000000000000002").write_bytes(b"wal")
    (tmp_path / "pg_wal").mkdir()
    (tmp_path / "pg_wal" / "000000010000000000000001").write_bytes(b"x")
    common = [PY39, "-s", "-m", "pgpush", "--stanza=main", "--archive-async", f"--spool-path={spool}",
              f"--log-path={tmp_path / 'log'}"]
    for args in (["push", "pg_wal/000000010000000000000001"],
                 ["get", "000000010000000000000002", str(tmp_path / "dest")], ["version"]):
        res = subprocess.run(common + args, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=60)
        assert (res.returncode, res.stderr) == (0, ""), args
    assert (tmp_path / "dest").read_bytes() == b"wal"
