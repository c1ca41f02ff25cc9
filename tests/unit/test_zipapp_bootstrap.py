"""The zipapp's bootstrap (zipapp_root/_pgpush_bootstrap.py): where the bundled set goes on sys.path, and the
clean-up of interrupted extractions.

The real extractions (each interpreter, concurrent first runs, unsafe caches) are in tests/zipapp/; here the
pieces whose inputs (sys.path, the environment, a cache directory) a unit test can set up.
"""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def boot(load_zipapp_file):
    return load_zipapp_file("_pgpush_bootstrap.py")


def _activate(boot, monkeypatch: pytest.MonkeyPatch, path: list[str], site_dir: Path, *, ignore_environment: int = 0
              ) -> list[str]:
    monkeypatch.setattr(sys, "path", list(path))
    flags = {name: getattr(sys.flags, name) for name in dir(sys.flags) if not name.startswith(("_", "n_"))}
    flags = {name: value for name, value in flags.items() if not callable(value)}
    monkeypatch.setattr(sys, "flags", types.SimpleNamespace(**{**flags, "ignore_environment": ignore_environment}))
    boot.activate(str(site_dir))
    return list(sys.path)


def test_the_bundled_set_comes_before_the_pythonpath_of_the_host(boot, monkeypatch: pytest.MonkeyPatch,
                                                                  tmp_path: Path):
    # `python3.9 pgpush.pyz` (no -I) keeps PYTHONPATH: a zstandard or cffi there must not shadow the bundled one.
    site_dir = tmp_path / "cp39-x86_64-0123" / "site-packages"
    site_dir.mkdir(parents=True)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(["/opt/app/lib", "", "rel/lib"]))
    stdlib = ["/usr/lib/python39.zip", "/usr/lib/python3.9", "/usr/lib/python3.9/lib-dynload"]
    given = ["/x/pgpush.pyz", "/opt/app/lib", os.path.abspath("rel/lib"), *stdlib, "/usr/lib/python3/dist-packages"]
    assert _activate(boot, monkeypatch, given, site_dir) == [
        "/x/pgpush.pyz", str(site_dir), "/opt/app/lib", os.path.abspath("rel/lib"), *stdlib,
        "/usr/lib/python3/dist-packages"]


def test_without_pythonpath_the_set_comes_after_the_standard_library(boot, monkeypatch: pytest.MonkeyPatch,
                                                                     tmp_path: Path):
    site_dir = tmp_path / "site-packages"
    site_dir.mkdir()
    stdlib = ["/usr/lib/python311.zip", "/usr/lib/python3.11", "/usr/lib/python3.11/lib-dynload"]
    monkeypatch.setenv("PYTHONPATH", "/usr/lib/python3.11")  # ignored under -I/-E, as the interpreter ignored it
    assert _activate(boot, monkeypatch, ["/x/pgpush.pyz", *stdlib], site_dir, ignore_environment=1) == [
        "/x/pgpush.pyz", *stdlib, str(site_dir)]


def test_an_extraction_killed_during_the_first_run_leaves_nothing_behind_the_next(boot, tmp_path: Path):
    # Only a set's first run extracts: a tree left by a SIGKILL then (~75 MB) would otherwise stay for good.
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True).stdout.strip()
    dead = tmp_path / f".tmp-cp313-x86_64-3094d9606c647504-{gone}-513fe8db"
    alive = tmp_path / f".tmp-cp39-x86_64-6e964b6e875e8e8c-{os.getpid()}-0badcafe"
    odd = tmp_path / ".tmp-cp39-x86_64-6e964b6e875e8e8c-notapid-0badcafe"
    other = tmp_path / f".tmp-cp312-x86_64-8419532008943566-{gone}-513fe8db"  # another set: maybe another host's
    final = tmp_path / "cp313-x86_64-3094d9606c647504"
    for path in (dead, alive, odd, other, final):
        (path / "site-packages").mkdir(parents=True)
    boot._remove_stale(str(tmp_path), "cp313-x86_64-3094d9606c647504")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in (alive, odd, other, final))
    alive.rename(tmp_path / f".tmp-cp313-x86_64-3094d9606c647504-{os.getpid()}-0badcafe")
    boot._remove_stale(str(tmp_path), "cp313-x86_64-3094d9606c647504")
    assert len(list(tmp_path.iterdir())) == 4  # a live extraction of the same set is left alone
