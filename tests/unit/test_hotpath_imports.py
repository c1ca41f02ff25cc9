"""The hot path imports no heavy module: run it in a subprocess and look at sys.modules."""

from __future__ import annotations

import json
import os
import subprocess
import sys

HEAVY = ("typer", "rich", "paramiko", "psycopg", "zstandard", "lz4", "click", "cryptography")

SNIPPET = r"""
import json, os, sys
sys.argv = ["pgpush"] + json.loads(os.environ["ARGS"])
from pgpush.__main__ import main
rc = main()
heavy = sorted(m for m in sys.modules if m.split(".")[0] in json.loads(os.environ["HEAVY"]))
print(json.dumps({"rc": rc, "heavy": heavy}))
"""


def run_snippet(args, tmp_path):
    env = dict(os.environ, ARGS=json.dumps(args), HEAVY=json.dumps(HEAVY))
    env = {k: v for k, v in env.items() if not k.startswith("PGPUSH_")} | {"ARGS": env["ARGS"], "HEAVY": env["HEAVY"]}
    out = subprocess.run([sys.executable, "-c", SNIPPET], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_async_push_answered_from_spool_imports_nothing_heavy(tmp_path):
    spool = tmp_path / "spool"
    out = spool / "archive" / "main" / "out"
    out.mkdir(parents=True)
    (out / "000000010000000000000001.ok").write_text("")
    wal = tmp_path / "pg_wal"
    wal.mkdir()
    (wal / "000000010000000000000001").write_bytes(b"x")
    result = run_snippet(["--stanza=main", "--archive-async", f"--spool-path={spool}", f"--log-path={tmp_path}/log",
                          "push", "pg_wal/000000010000000000000001"], tmp_path)
    assert result == {"rc": 0, "heavy": []}


def test_async_get_answered_from_spool_imports_nothing_heavy(tmp_path):
    spool = tmp_path / "spool"
    qin = spool / "archive" / "main" / "in"
    qin.mkdir(parents=True)
    (qin / "000000010000000000000002").write_bytes(b"wal")
    args = ["--stanza=main", "--archive-async", f"--spool-path={spool}", f"--log-path={tmp_path}/log", "get"]
    result = run_snippet(args + ["000000010000000000000002", str(tmp_path / "dest")], tmp_path)
    assert result == {"rc": 0, "heavy": []}
    assert (tmp_path / "dest").read_bytes() == b"wal"
    # (A "missing" answer cannot be prepared by hand any more: it is valid only for the request
    # that asked, see pgpush/archive/foreground.py; the integration tests cover that path.)


def test_version_imports_nothing_heavy(tmp_path):
    assert run_snippet(["version"], tmp_path) == {"rc": 0, "heavy": []}


def test_async_push_ok_with_drop_warning_is_logged(tmp_path):
    spool = tmp_path / "spool"
    out = spool / "archive" / "main" / "out"
    out.mkdir(parents=True)
    msg = "dropped WAL file '000000010000000000000001' because archive queue exceeded 500MB"
    (out / "000000010000000000000001.ok").write_text(f"0\n{msg}")
    (tmp_path / "pg_wal").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGPUSH_")}
    res = subprocess.run([sys.executable, "-m", "pgpush", "--stanza=main", "--archive-async", f"--spool-path={spool}",
                          f"--log-path={tmp_path}/log", "push", "pg_wal/000000010000000000000001"],
                         cwd=tmp_path, capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode == 0
    assert f"WARN: {msg}" in res.stderr
    assert msg in (tmp_path / "log" / "main-archive-push.log").read_text()


def test_sync_get_never_imports_the_cli(tmp_path):
    """Synchronous push/get (once per WAL file) go straight to the core: no typer, no rich."""
    repo = tmp_path / "repo"
    argv = ["pgpush", "--stanza=main", f"--repo1-path={repo}", f"--log-path={tmp_path / 'log'}", "get",
            "000000010000000000000001", str(tmp_path / "dest")]
    snippet = (f"import sys\nsys.argv = {argv!r}\nfrom pgpush.__main__ import main\nrc = main()\n"
               "print(rc, sorted(m for m in sys.modules if m.split('.')[0] in ('typer', 'rich', 'click')))")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGPUSH_")}
    out = subprocess.run([sys.executable, "-c", snippet], env=env, cwd=tmp_path, capture_output=True, text=True,
                         timeout=60)
    assert out.stdout.strip().splitlines()[-1] == "55 []", out.stdout + out.stderr
