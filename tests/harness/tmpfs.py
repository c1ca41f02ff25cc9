"""A small tmpfs mounted over a directory: the "disk full" fault.

A repository (posix, or the sshd's ``repo_dir``) that lives on a few MB of
tmpfs fills up for real, so the storage code meets the same ``ENOSPC`` (and,
over SFTP, the same ``SSH_FX_FAILURE`` statuses) a user's full backup host
gives.  The mount is always undone, even when the test fails: this machine's
mounts outlive the test process otherwise.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import subprocess
from collections.abc import Iterator
from pathlib import Path


def mount(path: str | os.PathLike, size_mb: float, owner: str | None = None, mode: int = 0o750) -> None:
    """Mount a tmpfs of ``size_mb`` over ``path`` (created if needed), owned by ``owner``."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    opts = f"size={int(size_mb * 1024)}k,mode={mode:o}"
    if owner is not None:
        pw = pwd.getpwnam(owner)
        opts += f",uid={pw.pw_uid},gid={pw.pw_gid}"
    subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], check=True, capture_output=True)


def unmount(path: str | os.PathLike) -> None:
    """Unmount ``path``; lazily when something still holds it open (a killed session's sftp-server)."""
    done = subprocess.run(["umount", str(path)], capture_output=True)
    if done.returncode != 0:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


@contextlib.contextmanager
def tmpfs(path: str | os.PathLike, size_mb: float, owner: str | None = None, mode: int = 0o750) -> Iterator[Path]:
    """``with tmpfs(sshd.repo_dir, 20, owner=sshd.user):`` a full-disk repository for the block."""
    mount(path, size_mb, owner, mode)
    try:
        yield Path(path)
    finally:
        unmount(path)


def fill(path: str | os.PathLike, leave_bytes: int = 0) -> Path:
    """Fill the file system holding ``path`` until ``leave_bytes`` at most remain free; returns the filler file."""
    filler = Path(path) / ".harness-filler"
    st = os.statvfs(path)
    free = st.f_bavail * st.f_frsize
    size = max(free - leave_bytes, 0)
    with open(filler, "wb") as fh:
        chunk = b"\0" * (1 << 20)
        while size > 0:
            n = min(size, len(chunk))
            try:
                fh.write(chunk[:n])
                fh.flush()
            except OSError:
                break
            size -= n
    return filler
