"""Where a restore writes each manifest entry, and the directories and tablespace links it creates.

Every path below ``pg1-path`` or a tablespace location is reached from that
root one component at a time without following a symbolic link
(:mod:`pgpush.safepath`): a link left in the data directory, or one a hostile
manifest asks for, never takes a write outside.  Tablespace links in
``pg_tblspc`` are created by the restore itself, and files inside a
tablespace are written through its location, not through the link.
"""

from __future__ import annotations

import grp
import os
import pwd
from typing import Optional

from pgpush import safepath
from pgpush.errors import FileReadError
from pgpush.repo.records import ManifestFile, ManifestPath

PREFIX = "pg_data"
Owner = tuple[Optional[int], Optional[int]]  # uid, gid; evaluated at import: `int | None` fails on 3.9


def locate(pgdata: str, name: str, links: dict[str, str]) -> tuple[str, list[str]]:
    """(root, parts) of a manifest name: under a tablespace link its location is the root, else ``pg1-path``.

    ``name`` was checked by :mod:`pgpush.repo.manifest_check` (clean, under ``pg_data``).
    """
    for link, dest in links.items():
        if name.startswith(link + "/"):
            return dest, name[len(link) + 1:].split("/")
    return pgdata, name.split("/")[1:]


def check_locations(pgdata: str, links: dict[str, str]) -> None:
    """No tablespace location may be ``pg1-path``, inside it, or hold it: each root is written on its own."""
    for name, dest in links.items():
        if safepath.inside(dest, pgdata) or safepath.inside(pgdata, dest):
            raise FileReadError(f"tablespace link '{name}' points to '{dest}', which overlaps pg1-path '{pgdata}': "
                                "refused before anything is written\nHINT: use --tablespace-map to restore it elsewhere")


def owner_ids(entry: ManifestPath | ManifestFile, fallback: Owner) -> Owner:
    """uid and gid for a manifest entry's user and group names (as root; unknown names fall back)."""
    if os.geteuid() != 0:
        return None, None
    try:
        user, group = entry.get("user"), entry.get("group")
        uid = pwd.getpwnam(user).pw_uid if user else fallback[0]
        gid = grp.getgrnam(group).gr_gid if group else fallback[1]
        return uid, gid
    except KeyError:
        return fallback


def id_args(uid: int, gid: int | None) -> tuple[int, int]:
    """(uid, gid) for ``chown``: a manifest entry with a user but no group keeps the file's group (-1)."""
    return uid, -1 if gid is None else gid


def make_dirs(pgdata: str, dirs: list[ManifestPath], links: dict[str, str], root_owner: Owner) -> None:
    """Directories, then tablespace links (their location created), then the directories inside them."""
    def under_link(name: str) -> bool:
        return any(name.startswith(link + "/") for link in links)

    for d in [d for d in dirs if not under_link(d["name"])]:
        _make_dir(*locate(pgdata, d["name"], links), d, root_owner)
    for name, dest in links.items():
        _make_link(pgdata, name, dest, root_owner)
    for d in [d for d in dirs if under_link(d["name"])]:
        _make_dir(*locate(pgdata, d["name"], links), d, root_owner)


def _make_link(pgdata: str, name: str, dest: str, root_owner: Owner) -> None:
    """``pg_tblspc/OID`` -> ``dest``, replacing a link that points elsewhere (never following one)."""
    os.makedirs(dest, mode=0o700, exist_ok=True)
    parts = name.split("/")[1:]
    fd = safepath.open_dir(pgdata, parts[:-1])
    try:
        oid = parts[-1]
        try:
            if os.readlink(oid, dir_fd=fd) != dest:
                os.unlink(oid, dir_fd=fd)
        except OSError:
            pass  # missing, or not a link: a directory here is kept (clean() removed anything else)
        try:
            os.symlink(dest, oid, dir_fd=fd)
        except FileExistsError:
            pass
        uid, gid = root_owner
        if uid is not None:
            os.chown(dest, *id_args(uid, gid))
            os.chown(oid, *id_args(uid, gid), dir_fd=fd, follow_symlinks=False)
    finally:
        os.close(fd)


def _make_dir(root: str, parts: list[str], d: ManifestPath, root_owner: Owner) -> None:
    """One directory with the manifest's mode and owner, created and changed through its own fd."""
    mode = int(d["mode"], 8)
    if not parts:
        os.makedirs(root, mode=mode, exist_ok=True)
    fd = safepath.open_dir(root, parts, create_mode=mode)
    try:
        os.fchmod(fd, mode)
        uid, gid = owner_ids(d, root_owner)
        if uid is not None:
            os.fchown(fd, *id_args(uid, gid))
    finally:
        os.close(fd)
