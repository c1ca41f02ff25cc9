"""The zipapp's last-resort private extraction does not pile up the trees of killed processes.

When no cache directory is usable (another local user made ``/tmp/pgpush-<uid>`` first, HOME is
not writable), each process extracts the bundled packages (~90 MB) into a private directory
removed at exit.  A process killed by a signal (a worker SIGKILLed at protocol-timeout, a
SIGTERM at shutdown) never gets to its exit clean-up; the next private extraction removes
those, and only those: a directory of a live process stays.

Needs the zipapp (``TEST_PGPUSH_ZIPAPP``) and root (to act as ``nobody``).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not os.environ.get("TEST_PGPUSH_ZIPAPP") or os.geteuid() != 0,
                                reason="needs TEST_PGPUSH_ZIPAPP and root")


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_private_extractions_of_killed_processes_are_removed_by_the_next_one_not_those_of_live_ones():
    nobody = pwd.getpwnam("nobody")
    squatted = Path(f"/tmp/pgpush-{nobody.pw_uid}")
    if squatted.exists() and squatted.stat().st_uid == nobody.pw_uid:
        pytest.skip(f"{squatted} belongs to nobody already")
    created = not squatted.exists()
    if created:
        squatted.mkdir(mode=0o755)  # root's: not safe for nobody, so the private fallback is used
    live = subprocess.Popen(["sleep", "120"])
    try:
        with tempfile.TemporaryDirectory(prefix="pgpush-attack-zipapp-") as tmp:
            os.chmod(tmp, 0o755)
            zipapp = Path(tmp) / "pgpush.pyz"
            shutil.copy2(os.environ["TEST_PGPUSH_ZIPAPP"], zipapp)
            zipapp.chmod(0o755)
            tmpdir = Path(tmp) / "tmp"
            tmpdir.mkdir(mode=0o1777)
            tmpdir.chmod(0o1777)
            prefix = f"pgpush-{nobody.pw_uid}-private-"
            dead = tmpdir / f"{prefix}{_dead_pid()}-left"
            alive = tmpdir / f"{prefix}{live.pid}-inuse"
            for path in (dead, alive):
                (path / "site-packages").mkdir(parents=True)
                (path / "site-packages" / "big").write_bytes(b"x" * 4096)
                for p in (path, path / "site-packages", path / "site-packages" / "big"):
                    os.chown(p, nobody.pw_uid, nobody.pw_gid)
            env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/nonexistent", "TMPDIR": str(tmpdir)}
            proc = subprocess.run(["runuser", "-u", "nobody", "--", "env", "-i",
                                   *(f"{k}={v}" for k, v in env.items()), str(zipapp), "help"],
                                  cwd="/", capture_output=True, text=True, timeout=120)
            assert proc.returncode == 0, proc.stderr
            assert "no cache directory is usable" in proc.stderr
            assert not dead.exists(), "the tree of a killed process is still there"
            assert (alive / "site-packages" / "big").exists(), "the tree of a live process was removed"
            assert sorted(p.name for p in tmpdir.iterdir()) == [alive.name]  # and its own is gone at exit
    finally:
        live.kill()
        live.wait()
        if created:
            squatted.rmdir()
