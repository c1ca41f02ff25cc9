"""The data directory and tablespace locations of a restore: checked, cleaned, created.

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
import shutil
import stat
from typing import Optional

from pgpush import safepath
from pgpush.archive import spool
from pgpush.errors import FileReadError, OptionInvalidValueError, PathNotEmptyError, PgRunningError
from pgpush.log import LOG

PREFIX = "pg_data"
Owner = tuple[Optional[int], Optional[int]]  # evaluated at import: `int | None` fails on 3.9


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


def owner_ids(entry: dict, fallback: Owner) -> Owner:
    """uid and gid for a manifest entry's user and group names (as root; unknown names fall back)."""
    if os.geteuid() != 0:
        return None, None
    try:
        uid = pwd.getpwnam(entry["user"]).pw_uid if entry.get("user") else fallback[0]
        gid = grp.getgrnam(entry["group"]).gr_gid if entry.get("group") else fallback[1]
        return uid, gid
    except KeyError:
        return fallback


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


def tablespaces_in_use(manifest: dict, delta: bool, force: bool) -> bool:
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


def remap_tablespaces(cfg, manifest: dict) -> dict[str, str]:
    """Apply ``--tablespace-map`` / ``--tablespace-map-all`` to the manifest's links; returns {OID: new path}.

    A restore next to the running original (a test restore on the same host) needs its
    tablespaces elsewhere; the links in ``pg_tblspc`` and the ``tablespace_map`` file
    (which PostgreSQL reads at start-up to recreate those links) then name the new places.
    """
    def usable(path: str) -> bool:  # tablespace_map cannot hold a line break in a path we write
        return os.path.isabs(path) and "\n" not in path and "\r" not in path

    links = {ln["name"].rsplit("/", 1)[-1]: ln for ln in manifest.get("links", [])}
    wanted: dict[str, str] = {}
    every = cfg.get("tablespace-map-all")
    if every:
        if not usable(str(every)):
            raise OptionInvalidValueError(f"option 'tablespace-map-all' must be an absolute path, not '{every}'")
        wanted = {oid: os.path.join(str(every), oid) for oid in links}
    for item in [i.strip() for i in str(cfg.get("tablespace-map") or "").split(",") if i.strip()]:
        oid, sep, path = item.partition("=")
        oid, path = oid.strip(), path.strip()
        if not sep or not oid.isdigit() or not usable(path):
            raise OptionInvalidValueError(f"option 'tablespace-map' has invalid value '{item}': OID=ABSOLUTE_PATH is expected")
        if oid not in links:
            known = ", ".join(sorted(links)) or "none"
            raise OptionInvalidValueError(
                f"option 'tablespace-map' names tablespace {oid}, which is not in the backup (its tablespaces: {known})")
        wanted[oid] = os.path.normpath(path)
    for oid, path in wanted.items():
        LOG.info(f"tablespace {oid}: '{links[oid]['destination']}' restored to '{path}'")
        links[oid]["destination"] = path
    return wanted


def rewrite_tablespace_map(pgdata: str, remapped: dict[str, str]) -> None:
    """Point the restored ``tablespace_map`` at the new locations (PostgreSQL recreates links from it)."""
    path = os.path.join(pgdata, "tablespace_map")
    if not remapped or not os.path.exists(path):
        return
    if not stat.S_ISREG(os.lstat(path).st_mode):
        raise safepath.UnsafePath(f"'{path}' is not a regular file: not followed")
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as fh:
        lines = fh.read().split("\n")
    out = []
    for line in lines:
        oid = line.split(" ", 1)[0]
        if oid in remapped:  # "OID PATH", a backslash before \\, \n and \r in PATH (remap_tablespaces refuses the last two)
            line = f"{oid} " + remapped[oid].replace("\\", "\\\\")
        out.append(line)
    st = os.stat(path)
    tmp = path + ".pgpush.tmp"
    with open(tmp, "w", encoding="utf-8", errors="surrogateescape", newline="") as fh:
        fh.write("\n".join(out))
    os.chmod(tmp, stat.S_IMODE(st.st_mode))
    if os.geteuid() == 0:
        os.chown(tmp, st.st_uid, st.st_gid)
    os.replace(tmp, path)


def clear_spool(cfg) -> None:
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


def make_dirs(pgdata: str, dirs: list[dict], links: dict[str, str], root_owner: Owner) -> None:
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
            os.chown(dest, uid, gid)
            os.chown(oid, uid, gid, dir_fd=fd, follow_symlinks=False)
    finally:
        os.close(fd)


def _make_dir(root: str, parts: list[str], d: dict, root_owner: Owner) -> None:
    """One directory with the manifest's mode and owner, created and changed through its own fd."""
    mode = int(d["mode"], 8)
    if not parts:
        os.makedirs(root, mode=mode, exist_ok=True)
    fd = safepath.open_dir(root, parts, create_mode=mode)
    try:
        os.fchmod(fd, mode)
        uid, gid = owner_ids(d, root_owner)
        if uid is not None:
            os.fchown(fd, uid, gid)
    finally:
        os.close(fd)
