"""pgpush inside a Debian root (harness.chroot): the zipapp run by the release's own python3.

Fixture helpers for tests/integration/test_debian_releases.py; everything here keeps host paths
and lets DebRoot translate them on the way in (see harness/chroot.py).
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import debroot
from harness.chroot import DebRoot
from harness.sshd import SshServer
from pgpush_env import Pgpush

REPO_ROOT = Path(__file__).resolve().parents[2]


class ChrootPgpush(Pgpush):
    """pgpush_env.Pgpush whose commands run as the root's postgres with its /usr/bin/python3."""

    def __init__(self, root: DebRoot, zipapp: str, stanza: str = "main", repo: dict | None = None, **options: object):
        self.root = root
        work = root.host("/var/lib/postgresql/pgpush-env")
        work.mkdir(parents=True, exist_ok=True)
        super().__init__(["/usr/bin/python3", zipapp], work, stanza, repo, **options)
        for path in (work, *work.iterdir()):  # Pgpush made them the host's postgres'
            root.chown(path, "postgres")

    def run(self, *args: str, user: str = "postgres", cwd: str | Path = "/", timeout: float = 120,
            check: bool = False, **overrides: object) -> subprocess.CompletedProcess:
        res = self.root.run(self.argv(*args, **overrides), user, check=False, timeout=timeout)
        if check and res.returncode != 0:
            raise AssertionError(f"pgpush {' '.join(args)} on {self.root.release.name} exited {res.returncode}: "
                                 f"{res.stderr}{res.stdout}")
        return res


def sftp_repo(root: DebRoot, server: SshServer) -> dict[str, str]:
    """The sshd's repo options, with its client key and known_hosts copied into the root for its postgres."""
    ssh = root.host("/var/lib/postgresql/.ssh")
    ssh.mkdir(parents=True, exist_ok=True)
    root.chown(ssh, "postgres", 0o700)
    options = server.pgpush_options()
    for key, name in (("repo1-host-key-file", "id_ed25519"), ("repo1-host-known-hosts", "known_hosts")):
        target = ssh / name
        shutil.copyfile(options[key], target)
        root.chown(target, "postgres", 0o600)
        options[key] = str(target)
    return options


def carries_set(zipapp: Path, python: str, machine: str) -> bool:
    """True when the zipapp (or a zip stored inside it) carries compiled modules for CPython ``python`` on ``machine``."""
    tag = f".cpython-{python.replace('.', '')}-{machine}-linux-gnu.so"
    with zipfile.ZipFile(zipapp) as outer:
        names = outer.namelist()
        if any(tag in n for n in names):
            return True
        for nested in (n for n in names if n.endswith(".zip")):
            with zipfile.ZipFile(io.BytesIO(outer.read(nested))) as inner:
                if any(tag in n for n in inner.namelist()):
                    return True
    return False


def zipapp_path(tmp_dir: Path) -> Path:
    """``TEST_PGPUSH_ZIPAPP`` (``make test`` builds it), else a fresh build into ``tmp_dir``."""
    given = os.environ.get("TEST_PGPUSH_ZIPAPP")
    if given:
        if not Path(given).is_file():
            pytest.fail(f"TEST_PGPUSH_ZIPAPP={given} does not exist")
        return Path(given)
    target = tmp_dir / "pgpush.pyz"
    subprocess.run([sys.executable, str(REPO_ROOT / "build_zipapp.py"), "--output", str(target)],
                   check=True, cwd=REPO_ROOT, timeout=600, capture_output=True)
    return target


@contextlib.contextmanager
def mounted_root(name: str, base_dir: Path) -> Iterator[DebRoot]:
    """The cached root of release ``name`` (built on first use), mounted for one test, always unmounted.

    Skips only when a root cannot be built on this machine at all (debroot.DebootstrapUnavailable:
    not root, no Debian archive among apt's sources, for arm64 no qemu through binfmt_misc)."""
    release = debroot.RELEASES[name]
    try:
        image = debroot.ensure_root(release)
    except debroot.DebootstrapUnavailable as exc:
        pytest.skip(f"cannot build a Debian {release.name} root here: {exc}")
    root = DebRoot(release, image, base_dir)
    root.mount()
    try:
        yield root
    finally:
        root.cleanup()
