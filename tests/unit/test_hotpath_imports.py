"""The hot path imports no heavy module: run it in a subprocess and look at sys.modules.

PostgreSQL starts pgpush once per WAL segment, so the async foreground push/get answered from the spool must
stay stdlib-only and small (see docs/architecture.md, "The hot path"): its pgpush modules are pinned exactly,
so a new import there is a decision made in this file, not an accident found by a benchmark.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

HEAVY = ("typer", "rich", "paramiko", "psycopg", "zstandard", "lz4", "click", "cryptography")

# What the async foreground push/get answered from the spool imports of pgpush, and nothing more.
HOT_PATH_MODULES = [
    "pgpush", "pgpush.__main__", "pgpush.archive", "pgpush.archive.foreground", "pgpush.archive.lock",
    "pgpush.archive.spool", "pgpush.config", "pgpush.errors", "pgpush.fsutil", "pgpush.log", "pgpush.options",
    "pgpush.wal",
]

# Runs in the child. ``sys.stdlib_module_names`` is 3.10+; on 3.9 a module is the standard library's when it
# is built in or frozen, or its file lies in the interpreter's stdlib directory but not in site-packages.
# Modules already loaded before pgpush (the site hooks of the venv: an editable install's finder,
# setuptools' _distutils_hack, sitecustomize) are not pgpush's doing and are left out.
SNIPPET = r"""
import json, os, sys
before = set(sys.modules)
sys.argv = ["pgpush"] + json.loads(os.environ["ARGS"])
from pgpush.__main__ import main
rc = main()

def stdlib_checker():
    names = getattr(sys, "stdlib_module_names", None)
    if names is not None:
        return lambda top: top in names
    import sysconfig
    paths = sysconfig.get_paths()
    roots = tuple(os.path.realpath(paths[k]) + os.sep for k in ("stdlib", "platstdlib"))
    def is_stdlib(top):
        if top in sys.builtin_module_names:
            return True
        spec = getattr(sys.modules.get(top), "__spec__", None)
        origin = getattr(spec, "origin", None)
        if origin in ("built-in", "frozen"):
            return True
        real = os.path.realpath(origin or "")
        return real.startswith(roots) and "site-packages" not in real and "dist-packages" not in real
    return is_stdlib

is_stdlib = stdlib_checker()
new = set(sys.modules) - before
ours = sorted(m for m in new if m.split(".")[0] == "pgpush")
tops = {m.split(".")[0] for m in new} - {"pgpush", "__main__"}
foreign = sorted(t for t in tops if not is_stdlib(t))
heavy = sorted(m for m in sys.modules if m.split(".")[0] in json.loads(os.environ["HEAVY"]))
print(json.dumps({"rc": rc, "heavy": heavy, "pgpush": ours, "third_party": foreign}))
"""


def run_snippet(args, tmp_path):
    env = dict(os.environ, ARGS=json.dumps(args), HEAVY=json.dumps(HEAVY))
    env = {k: v for k, v in env.items() if not k.startswith("PGPUSH_")} | {"ARGS": env["ARGS"], "HEAVY": env["HEAVY"]}
    out = subprocess.run([sys.executable, "-c", SNIPPET], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def assert_pinned(result: dict) -> None:
    """Exactly the pinned pgpush modules, no third-party module at all (not only the known heavy ones)."""
    assert result["third_party"] == [], f"the hot path imports third-party module(s): {result['third_party']}"
    extra = sorted(set(result["pgpush"]) - set(HOT_PATH_MODULES))
    missing = sorted(set(HOT_PATH_MODULES) - set(result["pgpush"]))
    assert not extra and not missing, (
        f"the hot path's pgpush imports changed: now also {extra}, no longer {missing}; if that is intended, "
        "update HOT_PATH_MODULES (and mind the start-up time, docs/architecture.md)")


def test_async_push_answered_from_spool_imports_only_the_pinned_modules(tmp_path):
    spool = tmp_path / "spool"
    out = spool / "archive" / "main" / "out"
    out.mkdir(parents=True)
    (out / "000000010000000000000001.ok").write_text("")
    wal = tmp_path / "pg_wal"
    wal.mkdir()
    (wal / "000000010000000000000001").write_bytes(b"x")
    result = run_snippet(["--stanza=main", "--archive-async", f"--spool-path={spool}", f"--log-path={tmp_path}/log",
                          "push", "pg_wal/000000010000000000000001"], tmp_path)
    assert (result["rc"], result["heavy"]) == (0, [])
    assert_pinned(result)


def test_async_get_answered_from_spool_imports_only_the_pinned_modules(tmp_path):
    spool = tmp_path / "spool"
    qin = spool / "archive" / "main" / "in"
    qin.mkdir(parents=True)
    (qin / "000000010000000000000002").write_bytes(b"wal")
    args = ["--stanza=main", "--archive-async", f"--spool-path={spool}", f"--log-path={tmp_path}/log", "get"]
    result = run_snippet(args + ["000000010000000000000002", str(tmp_path / "dest")], tmp_path)
    assert (result["rc"], result["heavy"]) == (0, [])
    assert_pinned(result)
    assert (tmp_path / "dest").read_bytes() == b"wal"
    # (A "missing" answer cannot be prepared by hand any more: it is valid only for the request
    # that asked, see pgpush/archive/foreground.py; the integration tests cover that path.)


def test_version_imports_no_third_party_module(tmp_path):
    result = run_snippet(["version"], tmp_path)
    assert (result["rc"], result["heavy"], result["third_party"]) == (0, [], [])
    assert set(result["pgpush"]) < set(HOT_PATH_MODULES)


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
