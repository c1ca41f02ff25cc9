"""The zipapp under test: ``TEST_PGPUSH_ZIPAPP`` (``make test`` builds it first), else built once per session.

``build_zipapp.py --output X`` writes ``X`` (the x86_64 file) and its siblings ``X-x86_64.pyz`` and
``X-aarch64.pyz``; the aarch64 one is looked for next to ``TEST_PGPUSH_ZIPAPP`` the same way.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def zipapp_dir():
    """A 0755 directory under /tmp, so that postgres can read what is in it."""
    path = Path(tempfile.mkdtemp(prefix="pgpush-zipapp-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def zipapp(zipapp_dir: Path) -> Path:
    target = zipapp_dir / "pgpush.pyz"
    given = os.environ.get("TEST_PGPUSH_ZIPAPP")
    if given:
        if not Path(given).is_file():
            pytest.fail(f"TEST_PGPUSH_ZIPAPP={given} does not exist")
        shutil.copy2(given, target)
        aarch64 = Path(given).with_name(f"{Path(given).stem}-aarch64.pyz")
        if aarch64.is_file():
            shutil.copy2(aarch64, zipapp_dir / "pgpush-aarch64.pyz")
    else:
        subprocess.run(
            [sys.executable, str(REPO_ROOT / "build_zipapp.py"), "--output", str(target)],
            check=True, cwd=REPO_ROOT, timeout=900,
        )
    target.chmod(0o755)
    return target


@pytest.fixture(scope="session")
def aarch64_zipapp(zipapp: Path) -> Path:
    path = zipapp.with_name("pgpush-aarch64.pyz")
    if not path.is_file():
        pytest.fail(f"no {path.name} next to the zipapp under test (build_zipapp.py writes it beside --output)")
    return path


@pytest.fixture(scope="session")
def build_info(zipapp: Path) -> dict:
    with zipfile.ZipFile(zipapp) as zf:
        return json.loads(zf.read("pgpush_build.json"))
