"""What the destination of a restore holds before it: refused, or cleaned.

A running PostgreSQL (``postmaster.pid`` naming a live process) is never
written over; a data directory or tablespace location that is not empty is
refused unless ``--delta`` or ``--force``, and then what the backup does not
have is removed.  The asynchronous get spool is emptied: WAL prefetched for an
earlier restore must never be served to this one (docs/operations.md,
"Restore and point-in-time recovery").
"""

from __future__ import annotations

import os
import shutil

from pgpush.archive import spool
from pgpush.commands.restore.layout import PREFIX
from pgpush.config import Config
from pgpush.errors import PathNotEmptyError, PgRunningError
from pgpush.log import LOG
from pgpush.repo.records import Manifest


def running_pid(pgdata: str) -> int | None:
    """The pid in postmaster.pid when that process is alive (and not a zombie)."""
    try:
        with open(os.path.join(pgdata, "postmaster.pid")) as fh:
            pid = int(fh.readline().strip())
    except (FileNotFoundError, ValueError):
        return None
    try:
        with open(f"/proc/{pid}/stat") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
        return None if state in ("Z", "X") else pid
    except (FileNotFoundError, IndexError):
        return None
    except OSError:
        return pid


def prepare(pgdata: str, delta: bool, force: bool) -> bool:
    """Check the data directory; True when it holds files to compare/replace."""
    pid = running_pid(pgdata)
    if pid is not None:
        raise PgRunningError(f"unable to restore while PostgreSQL is running (postmaster.pid in '{pgdata}' names live "
                             f"process {pid})\nHINT: stop PostgreSQL first")
    if not os.path.exists(pgdata):
        os.makedirs(pgdata, mode=0o700)
        return False
    if not os.path.isdir(pgdata):
        raise PathNotEmptyError(f"pg1-path '{pgdata}' is not a directory")
    if not os.listdir(pgdata):
        return False
    if not (delta or force):
        raise PathNotEmptyError(f"unable to restore to '{pgdata}': the directory is not empty\n"
                                "HINT: use --delta to rewrite only what changed, or --force to rewrite everything")
    return True


def tablespaces_in_use(manifest: Manifest, delta: bool, force: bool) -> bool:
    """Does a tablespace location already hold this version's directory?  Refused without --delta/--force."""
    prefix = f"PG_{int(manifest['backup']['pg_version'])}_"
    for link in manifest.get("links", []):
        dest = link["destination"]
        busy = [n for n in (os.listdir(dest) if os.path.isdir(dest) else []) if n.startswith(prefix)]
        if busy:
            if not (delta or force):
                raise PathNotEmptyError(
                    f"unable to restore tablespace {link['name'].rsplit('/', 1)[-1]} into '{dest}': it already holds "
                    f"'{busy[0]}' (a running cluster's, or an earlier restore's)\n"
                    "HINT: use --delta or --force to overwrite it, or move it away")
            return True
    return False


def clean(pgdata: str, keep_files: set[str], keep_dirs: set[str], links: dict[str, str], major: int) -> int:
    """Remove what the backup does not have (``--delta``/``--force``); returns how many entries were removed.

    Inside a tablespace only this cluster's ``PG_<major>_*`` directory is
    touched: the same location may hold another version's cluster.
    """
    removed = 0

    def walk(path: str, rel: str) -> None:
        nonlocal removed
        for entry in os.scandir(path):
            name = f"{rel}/{entry.name}"
            if rel in links and not entry.name.startswith(f"PG_{major}_"):
                continue
            if entry.is_symlink():
                if links.get(name) == os.readlink(entry.path):
                    walked.add(name)
                    walk(entry.path, name)
                    continue
                os.unlink(entry.path)
            elif entry.is_dir(follow_symlinks=False):
                if name in keep_dirs:
                    walk(entry.path, name)
                    continue
                shutil.rmtree(entry.path)
            elif name not in keep_files:
                os.unlink(entry.path)
            else:
                continue
            removed += 1
            LOG.detail(f"removed '{entry.path}': not in the backup")

    walked: set[str] = set()
    walk(pgdata, PREFIX)
    for name, dest in links.items():  # a tablespace whose link is not (yet) in the data directory
        if name not in walked and os.path.isdir(dest):
            walk(dest, name)
    return removed


def clear_spool(cfg: Config) -> None:
    """Empty ``SPOOL/archive/STANZA/in/``: stale prefetched WAL must never reach the restored cluster."""
    path = os.path.join(spool.stanza_dir(str(cfg["spool-path"]), cfg.stanza), "in")
    try:
        names = os.listdir(path)
    except FileNotFoundError:
        return
    for name in names:
        full = os.path.join(path, name)
        if os.path.isdir(full) and not os.path.islink(full):
            shutil.rmtree(full, ignore_errors=True)
        else:
            spool.remove(full)
    if names:
        LOG.info(f"removed {len(names)} file(s) from the asynchronous get spool '{path}'")
