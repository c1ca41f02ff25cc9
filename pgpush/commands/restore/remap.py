"""Tablespaces restored somewhere else than the backup's: ``--tablespace-map`` and ``--tablespace-map-all``
(docs/operations.md, "Restore and point-in-time recovery").
"""

from __future__ import annotations

import os
import stat

from pgpush import fsutil, safepath
from pgpush.config import Config
from pgpush.errors import OptionInvalidValueError
from pgpush.log import LOG
from pgpush.repo.records import Manifest


def remap_tablespaces(cfg: Config, manifest: Manifest) -> dict[str, str]:
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
    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode):
        raise safepath.UnsafePath(f"'{path}' is not a regular file: not followed")
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as fh:
        lines = fh.read().split("\n")
    out = []
    for line in lines:
        oid = line.split(" ", 1)[0]
        if oid in remapped:  # "OID PATH", a backslash before \\, \n and \r in PATH (remap_tablespaces refuses the last two)
            line = f"{oid} " + remapped[oid].replace("\\", "\\\\")
        out.append(line)
    # The restored file's mode and (as root) owner are kept; not synced here: make_durable() syncs the
    # whole data directory before the restore reports success.
    fsutil.write_atomic(path, "\n".join(out).encode("utf-8", "surrogateescape"), stat.S_IMODE(st.st_mode),
                        durable=False, owner=(st.st_uid, st.st_gid) if os.geteuid() == 0 else None)
