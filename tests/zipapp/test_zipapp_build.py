"""The zipapp built by build_zipapp.py: layout, hot path, bootstrap of the bundled packages.

The zipapp comes from tests/zipapp/conftest.py (``TEST_PGPUSH_ZIPAPP``, or built once per session).  Tests that switch users
need root and the ``postgres`` user.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest
from zipapp_helpers import CLEAN_ENV, HOST_SET, PYTHON

REPO_ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("typer", "rich", "paramiko", "psycopg", "zstandard", "lz4", "click", "cryptography", "nacl")

pytestmark = pytest.mark.xdist_group("zipapp")


def _is_root() -> bool:
    return os.geteuid() == 0


def _postgres() -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        return None


needs_postgres = pytest.mark.skipif(
    not (_is_root() and _postgres() and shutil.which("runuser")), reason="needs root, runuser and a postgres user"
)


@pytest.fixture()
def unwritable_home(zipapp_dir: Path) -> Path:
    """A HOME owned by root, 0755: postgres cannot write in it."""
    home = zipapp_dir / "home-ro"
    home.mkdir(mode=0o755, exist_ok=True)
    return home


def _bootstrap_snippet(zipapp: Path, imports: str = "paramiko, zstandard, lz4.frame, psycopg, typer, rich") -> str:
    return (
        f"import sys; sys.path.insert(0, {str(zipapp)!r}); import _pgpush_bootstrap as b; "
        f"print(b.bootstrap()); import {imports}; print('ok')"
    )


def _run(argv: list[str], env: dict[str, str] | None = None, user: str | None = None, **kw):
    env = {**CLEAN_ENV, **(env or {})}
    if user:
        argv = ["runuser", "-u", user, "--", "env", "-i", *(f"{k}={v}" for k, v in env.items()), *argv]
    return subprocess.run(argv, env=env, cwd="/", capture_output=True, text=True, timeout=120, **kw)


def _site_dir(stdout: str) -> str:
    return stdout.splitlines()[0]


# --- layout ---------------------------------------------------------------------------------------------------


def test_layout(zipapp: Path, build_info: dict):
    with open(zipapp, "rb") as f:
        assert f.readline() == b"#!/usr/bin/python3 -IS\n"
    assert zipapp.stat().st_mode & 0o777 == 0o755
    with zipfile.ZipFile(zipapp) as zf:
        names = set(zf.namelist())
        for name in ("__main__.py", "__main__.pyc", "_pgpush_bootstrap.py", "_pgpush_bootstrap.pyc",
                     "pgpush/__init__.py", "pgpush/__init__.pyc", "pgpush/__main__.pyc", "pgpush/config.pyc"):
            assert name in names
        assert not [n for n in names if n.startswith("pgpush/") and "__pycache__" in n]
        # Each pgpush module has its legacy pyc, compiled by /usr/bin/python3, unchecked-hash.
        magic = subprocess.run([PYTHON, "-IS", "-c", "import importlib.util as u, sys; "
                                "sys.stdout.write(u.MAGIC_NUMBER.hex())"], capture_output=True, text=True,
                               check=True).stdout
        for name in names:
            if name.endswith(".py") and not name.startswith("site-packages"):
                head = zf.read(name + "c")[:8]
                assert head[:4].hex() == magic, name
                assert int.from_bytes(head[4:8], "little") == 0b01, name
        top = set()
        for group in build_info["sets"][HOST_SET]["groups"]:
            with zf.open(build_info["groups"][group]["member"]) as raw, zipfile.ZipFile(raw) as inner:
                top |= {n.split("/")[0] for n in inner.namelist()}
    assert {"paramiko", "psycopg", "zstandard", "lz4", "typer", "rich"} <= top
    assert "bin" not in top
    assert build_info["name"] == "pgpush"
    assert re.fullmatch(r"[0-9a-f]{64}", build_info["build_id"])
    from pgpush import __version__

    assert build_info["version"] == __version__


# --- hot path -------------------------------------------------------------------------------------------------


def test_version_as_root(zipapp: Path):
    from pgpush import __version__

    proc = _run([str(zipapp), "version"], env={"HOME": "/root"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"pgpush {__version__} (CPython 3.")
    assert proc.stdout.endswith(f", bundle {HOST_SET})\n")


@needs_postgres
def test_version_as_postgres_unwritable_home(zipapp: Path, unwritable_home: Path):
    from pgpush import __version__

    proc = _run([str(zipapp), "version"], env={"HOME": str(unwritable_home)}, user="postgres")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"pgpush {__version__} (CPython 3.")
    assert proc.stdout.endswith(f", bundle {HOST_SET})\n")


def test_version_imports_no_third_party_package(zipapp: Path):
    proc = _run([PYTHON, "-IS", "-X", "importtime", str(zipapp), "version"], env={"HOME": "/root"})
    assert proc.returncode == 0, proc.stderr
    modules = re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s+(\S+)", proc.stderr, re.M)
    assert "pgpush.__main__" in modules
    heavy = sorted({m for m in modules if m.split(".")[0] in HEAVY or m in ("_pgpush_bootstrap", "site", "zipfile")})
    assert heavy == []


def test_relative_invocation_survives_chdir(zipapp: Path, zipapp_dir: Path):
    """Run as ``python3 pgpush.pyz`` is: sys.path[0] made absolute, so lazy imports work after os.chdir."""
    wrapper = (
        "import os, sys, zipimport; sys.path.insert(0, 'pgpush.pyz'); "
        "code = zipimport.zipimporter('pgpush.pyz').get_code('__main__'); "
        "ns = {'__name__': 'not_main', '__file__': 'pgpush.pyz/__main__.py'}; exec(code, ns); "
        "ns['_archive_first'](); os.chdir('/'); import pgpush.errors; "
        "print(sys.path[0]); print(pgpush.errors.__file__); print(sys.path.count('pgpush.pyz'))"
    )
    proc = subprocess.run([PYTHON, "-IS", "-c", wrapper], cwd=zipapp.parent, capture_output=True, text=True,
                          env=CLEAN_ENV, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [str(zipapp), f"{zipapp}/pgpush/errors.pyc", "0"]


# --- bootstrap ------------------------------------------------------------------------------------------------


@needs_postgres
def test_bootstrap_as_postgres_goes_to_tmp(zipapp: Path, build_info: dict, unwritable_home: Path):
    uid = _postgres().pw_uid
    proc = _run([PYTHON, "-IS", "-c", _bootstrap_snippet(zipapp)], env={"HOME": str(unwritable_home)},
                user="postgres")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "ok"
    root = Path(f"/tmp/pgpush-{uid}")
    assert _site_dir(proc.stdout) == str(root / build_info["sets"][HOST_SET]["dir"] / "site-packages")
    st = root.stat()
    assert (st.st_uid, st.st_mode & 0o777) == (uid, 0o700)


@needs_postgres
@pytest.mark.parametrize("case", ["other-owner", "world-writable", "symlink"])
def test_unsafe_cache_dir_is_refused(zipapp: Path, zipapp_dir: Path, build_info: dict, case: str):
    """PGPUSH_CACHE (or ~/.cache/pgpush) that is not safe is skipped: the next candidate is used."""
    base = Path(tempfile.mkdtemp(prefix=f"{case}-", dir=zipapp_dir))
    home = base / "home"
    home.mkdir(mode=0o755)
    env = {"HOME": str(home)}
    if case == "symlink":
        # ~/.cache/pgpush -> a directory of ours: refused all the same (only PGPUSH_CACHE may be a link).
        (home / ".cache").mkdir(mode=0o700)
        (base / "target").mkdir(mode=0o700)
        (home / ".cache" / "pgpush").symlink_to(base / "target")
        env["PGPUSH_CACHE"] = str(base / "other")
        os.mkdir(base / "other", 0o700)
        os.chown(base / "other", _postgres().pw_uid, -1)
        expected = Path(f"/tmp/pgpush-{os.geteuid()}")
    else:
        bad = base / "bad"
        bad.mkdir()
        if case == "other-owner":
            bad.chmod(0o700)
            os.chown(bad, _postgres().pw_uid, _postgres().pw_gid)
        else:
            bad.chmod(0o777)
        env["PGPUSH_CACHE"] = str(bad)
        expected = home / ".cache" / "pgpush"
    proc = _run([PYTHON, "-IS", "-c", _bootstrap_snippet(zipapp, "zstandard")], env=env)
    assert proc.returncode == 0, proc.stderr
    assert _site_dir(proc.stdout) == str(expected / build_info["sets"][HOST_SET]["dir"] / "site-packages")
    assert "pgpush: warning: not using cache directory" in proc.stderr


@pytest.mark.parametrize(("locking", "count"), [(True, 10), (False, 5)], ids=["flock", "rename-only"])
def test_concurrent_first_runs(zipapp: Path, zipapp_dir: Path, build_info: dict, locking: bool, count: int):
    """First runs at once all succeed; without the lock, the losers of the rename use the winner's copy."""
    cache = Path(tempfile.mkdtemp(prefix="concurrent-", dir=zipapp_dir)) / "cache"
    env = {**CLEAN_ENV, "HOME": "/nonexistent", "PGPUSH_CACHE": str(cache)}
    snippet = _bootstrap_snippet(zipapp, "zstandard, lz4.frame")
    if not locking:
        snippet = snippet.replace("import _pgpush_bootstrap as b; ", "import _pgpush_bootstrap as b; b._lock = lambda p: None; ")
    argv = [PYTHON, "-IS", "-c", snippet]
    procs = [subprocess.Popen(argv, env=env, cwd="/", stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(count)]
    results = [(p.wait(timeout=120), *p.communicate()) for p in procs]
    for rc, out, err in results:
        assert rc == 0, err
        assert out.splitlines() == [str(cache / build_info["sets"][HOST_SET]["dir"] / "site-packages"), "ok"]
    build = build_info["sets"][HOST_SET]["dir"]
    assert sorted(p.name for p in cache.iterdir()) == ([f".lock-{build}", build] if locking else [build])
    assert cache.stat().st_mode & 0o777 == 0o700


def test_bootstrap_error_is_reported(zipapp: Path, zipapp_dir: Path):
    """No usable cache directory, not even a private one: BootstrapError names what was tried."""
    blocker = Path(tempfile.mkdtemp(prefix="blocked-", dir=zipapp_dir)) / "file"
    blocker.write_text("")
    snippet = (
        f"import sys; sys.path.insert(0, {str(zipapp)!r}); import _pgpush_bootstrap as b; "
        f"b.cache_candidates = lambda: [({str(blocker / 'cache')!r}, 'PGPUSH_CACHE')]\n"
        f"import tempfile; tempfile.tempdir = {str(blocker / 'tmp')!r}\n"
        "try:\n b.bootstrap()\nexcept b.BootstrapError as e:\n print(e)"
    )
    proc = _run([PYTHON, "-IS", "-c", snippet])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"cannot extract the bundled packages, tried: {blocker / 'cache'} (")
    assert "a private temporary directory (Not a directory)" in proc.stdout


# --- the CLI through the zipapp -------------------------------------------------------------------------------


def test_usage_error_in_a_cli_command_is_31_in_the_zipapp(zipapp: Path, zipapp_dir: Path):
    """typer's usage errors read as pgBackRest's 31 (the bundled typer, pinned for CPython 3.9, runs on click 8.1:
    "argument"; recent click says "argument(s)")."""
    env = {"HOME": "/nonexistent", "PGPUSH_CACHE": str(zipapp_dir / "cli-cache")}
    proc = _run([str(zipapp), "stanza-create", "extra", "--log-level-file=off"], env=env)
    assert proc.returncode == 31
    assert re.fullmatch(r"ERROR: \[031\]: Got unexpected extra argument(\(s\))? \(extra\)\n", proc.stderr)
    proc = _run([str(zipapp), "help"], env=env)
    assert proc.returncode == 0 and "Usage: pgpush" in proc.stdout, proc.stderr


def test_the_zipapp_answers_as_the_guarded_main_does(zipapp: Path, zipapp_dir: Path):
    """The same ``pgpush.__main__.main`` as ``python -m pgpush`` (tests/unit/test_guarded_entry.py):
    a missing %p is 043 in sync and async mode, an async get whose spool refuses the request is one
    047 line; the same status and stderr from both, no traceback."""
    spool = Path(tempfile.mkdtemp(prefix="spool-", dir=zipapp_dir))
    (spool / "archive" / "main" / "in" / "request.pgpush.tmp").mkdir(parents=True)
    options = ["--stanza=main", f"--spool-path={spool}", "--log-level-file=off", "--archive-timeout=5",
               f"--pg1-path={zipapp_dir / 'pg'}"]
    env = {"HOME": "/nonexistent", "PGPUSH_CACHE": str(zipapp_dir / "guard-cache")}
    module = {**env, "PYTHONPATH": str(REPO_ROOT)}
    for argv, status in ((["push"], 43), (["--archive-async", "push"], 43), (["--archive-async", "get", "x"], 43),
                         (["--archive-async", "get", "000000010000000000000002", str(zipapp_dir / "dest")], 47)):
        proc = _run([str(zipapp), *options, *argv], env=env)
        same = _run([sys.executable, "-m", "pgpush", *options, *argv], env=module)
        assert (proc.returncode, proc.stderr) == (same.returncode, same.stderr), argv
        assert proc.returncode == status and re.fullmatch(rf"ERROR: \[{status:03d}\]: [^\n]*\n", proc.stderr), argv


@pytest.mark.skipif(not (_is_root() and shutil.which("runuser")), reason="needs root and runuser")
def test_cache_taken_by_another_user_falls_back_to_a_private_directory(zipapp: Path):
    """Another user made /tmp/pgpush-<uid> first: the CLI still runs, from a private 0700 directory
    of its own that is gone after the run (it was: exit 1 and no error code)."""
    nobody = pwd.getpwnam("nobody")
    squatted = Path(f"/tmp/pgpush-{nobody.pw_uid}")
    if squatted.exists() and squatted.stat().st_uid == nobody.pw_uid:
        pytest.skip(f"{squatted} belongs to nobody already")
    created = not squatted.exists()
    if created:
        squatted.mkdir(mode=0o755)  # root's: not safe for nobody
    try:
        before = set(Path("/tmp").glob(f"pgpush-{nobody.pw_uid}-private-*"))
        proc = _run([str(zipapp), "help"], env={"HOME": "/nonexistent"}, user="nobody")
        assert proc.returncode == 0, proc.stderr
        assert "Usage: pgpush" in proc.stdout
        assert "no cache directory is usable" in proc.stderr and "PGPUSH_CACHE" in proc.stderr
        assert set(Path("/tmp").glob(f"pgpush-{nobody.pw_uid}-private-*")) == before  # removed at exit
    finally:
        if created:
            squatted.rmdir()
