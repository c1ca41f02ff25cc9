"""Shared by the zipapp tests: the set /usr/bin/python3 uses, the interpreters installed on this machine."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess

PYTHON = "/usr/bin/python3"
CLEAN_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}


def python_version(exe: str) -> tuple[int, ...] | None:
    """(major, minor, micro) of ``exe``, None when it does not run."""
    try:
        out = subprocess.run([exe, "-c", "import sys; print('%d %d %d' % sys.version_info[:3])"],
                             capture_output=True, text=True, timeout=30)
    except OSError:
        return None
    if out.returncode:
        return None
    return tuple(int(x) for x in out.stdout.split())


def _host_set() -> str:
    version = python_version(PYTHON) or (0, 0)
    return f"cp{version[0]}{version[1]}-{os.uname().machine}"


# The set /usr/bin/python3 (3.11 on Debian 12) uses.
HOST_SET = _host_set()


def interpreters() -> dict[str, str]:
    """``"3.9"`` -> an installed CPython of that version (python3.X on PATH, else pyenv's), for 2.7 and 3.6-3.14."""
    found = {}
    for minor in ["2.7", *(f"3.{m}" for m in range(6, 15))]:
        candidates = [shutil.which(f"python{minor}"),
                      *sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/{minor}.*/bin/python{minor}")))]
        for exe in filter(None, candidates):
            version = python_version(exe)
            if version and f"{version[0]}.{version[1]}" == minor:
                found[minor] = exe
                break
    return found
