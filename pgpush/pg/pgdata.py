"""What of a data directory goes into a base backup: a scan with PostgreSQL's exclusions.

The exclusions are those PostgreSQL's documentation ("Backing Up the Data
Directory") and ``pg_basebackup`` apply — WAL and runtime state that recovery
recreates or must not see — plus the recovery signal files, which a restore
writes itself.  Excluded directories are kept, empty, so the restored
cluster has them.  Tablespaces (the links in ``pg_tblspc``) are recorded as
links and their content, the ``PG_<major>_*`` directory of this cluster
only, is backed up through the link.  Any other symlink is followed and its
target stored as a plain file or directory, as pgBackRest does by default.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import stat
from dataclasses import dataclass

PREFIX = "pg_data"
# Top-level directories whose content is never backed up (the directory itself is).
EXCLUDE_CONTENT = frozenset({
    "pg_wal", "pg_xlog", "pg_replslot", "pg_dynshmem", "pg_notify", "pg_serial", "pg_snapshots",
    "pg_stat_tmp", "pg_subtrans",
})
# Top-level files never backed up.
EXCLUDE_FILES = frozenset({
    "postmaster.pid", "postmaster.opts", "backup_label", "backup_label.old", "tablespace_map",
    "tablespace_map.old", "backup_manifest", "standby.signal", "recovery.signal", "recovery.done",
    "postgresql.auto.conf.tmp", "current_logfiles.tmp",
})
TEMP_PREFIX = "pgsql_tmp"
INIT_FORK_RE = re.compile(r"^(\d+)_init$")
RELATION_RE = re.compile(r"^(\d+)(?:_(?:fsm|vm))?(?:\.\d+)?$")
CONTROL = f"{PREFIX}/global/pg_control"


@dataclass
class Entry:
    """One manifest entry: ``kind`` is ``file``, ``dir`` or ``link`` (a tablespace)."""

    kind: str
    name: str
    path: str = ""  # absolute path on this host (files: what to read)
    size: int = 0
    mode: int = 0
    mtime: float = 0.0
    user: str | None = None
    group: str | None = None
    destination: str | None = None  # links

    def as_dict(self) -> dict:
        out: dict = {"name": self.name, "mode": f"{self.mode:04o}"}
        if self.user is not None:
            out["user"], out["group"] = self.user, self.group
        if self.kind == "link":
            out["destination"] = self.destination
        return out


_USERS: dict[int, str | None] = {}
_GROUPS: dict[int, str | None] = {}


def _user(uid: int) -> str | None:
    if uid not in _USERS:
        try:
            _USERS[uid] = pwd.getpwuid(uid).pw_name
        except KeyError:
            _USERS[uid] = None
    return _USERS[uid]


def _group(gid: int) -> str | None:
    if gid not in _GROUPS:
        try:
            _GROUPS[gid] = grp.getgrgid(gid).gr_name
        except KeyError:
            _GROUPS[gid] = None
    return _GROUPS[gid]


def _entry(kind: str, name: str, path: str, st: os.stat_result) -> Entry:
    return Entry(kind, name, path, st.st_size if kind == "file" else 0, stat.S_IMODE(st.st_mode), st.st_mtime,
                 _user(st.st_uid), _group(st.st_gid))


def unlogged_skips(names: list[str]) -> set[str]:
    """Files of unlogged relations that are not backed up: every fork but ``_init`` (pg_basebackup does the same)."""
    unlogged = {m.group(1) for m in (INIT_FORK_RE.match(n) for n in names) if m}
    if not unlogged:
        return set()
    return {n for n in names if not INIT_FORK_RE.match(n) and (m := RELATION_RE.match(n)) and m.group(1) in unlogged}


def scan(pgdata: str, major: int) -> list[Entry]:
    """Every directory, file and tablespace link of ``pgdata`` to back up (files without their content)."""
    pgdata = os.path.abspath(pgdata)
    out: list[Entry] = [_entry("dir", PREFIX, pgdata, os.stat(pgdata))]
    seen = {os.path.realpath(pgdata)}
    _walk(pgdata, PREFIX, 0, out, seen, major, in_db=False)
    return out


def _walk(directory: str, name: str, depth: int, out: list[Entry], seen: set[str], major: int, in_db: bool) -> None:
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return  # removed while we scan (a dropped database)
    skips = unlogged_skips(names) if in_db else set()
    top = depth == 0
    for child in names:
        path = os.path.join(directory, child)
        rel = f"{name}/{child}"
        if child.startswith(TEMP_PREFIX) or child == "pg_internal.init" or child in skips:
            continue
        if top and child in EXCLUDE_FILES:
            continue
        try:
            lst = os.lstat(path)
        except FileNotFoundError:
            continue
        if stat.S_ISLNK(lst.st_mode) and name == f"{PREFIX}/pg_tblspc":
            _tablespace(path, rel, out, seen, major)
            continue
        try:
            st = os.stat(path)  # follows any other link
        except FileNotFoundError:
            continue
        if stat.S_ISDIR(st.st_mode):
            real = os.path.realpath(path)
            if real in seen:
                continue
            seen.add(real)
            out.append(_entry("dir", rel, path, st))
            if top and child in EXCLUDE_CONTENT:
                continue
            db_dir = name in (f"{PREFIX}/base",) or (name.startswith(f"{PREFIX}/pg_tblspc/") and depth >= 2)
            _walk(path, rel, depth + 1, out, seen, major, in_db=db_dir)
        elif stat.S_ISREG(st.st_mode):
            out.append(_entry("file", rel, path, st))


def _tablespace(link: str, rel: str, out: list[Entry], seen: set[str], major: int) -> None:
    """A tablespace: the link, then this cluster's ``PG_<major>_*`` directory inside its target."""
    destination = os.readlink(link)
    try:
        st = os.stat(link)
    except FileNotFoundError:
        return
    entry = _entry("link", rel, link, st)
    entry.destination = destination
    out.append(entry)
    prefix = f"PG_{major}_" if major >= 10 else "PG_"
    try:
        children = sorted(os.listdir(link))
    except FileNotFoundError:
        return
    for child in children:
        path = os.path.join(link, child)
        if child.startswith(prefix) and os.path.isdir(path):
            out.append(_entry("dir", f"{rel}/{child}", path, os.stat(path)))
            seen.add(os.path.realpath(path))
            _walk(path, f"{rel}/{child}", 2, out, seen, major, in_db=True)
