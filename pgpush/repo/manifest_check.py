"""A backup manifest read from the repository, checked whole before a restore acts on it.

Whoever can write the repository can write a manifest, so nothing in it is
trusted: every name is a clean relative path under ``pg_data`` (see
:mod:`pgpush.safepath`), every directory and file sits in a directory the
manifest also lists, tablespaces are links ``pg_data/pg_tblspc/OID`` to clean
absolute locations that do not overlap, and only this cluster's ``PG_*``
directory is written inside a tablespace (as :mod:`pgpush.pg.pgdata` backs it
up).  Every field a restore reads has the type it expects.  A manifest that
fails is refused (42, like any corrupt repository file) before anything is
written: a restore never half-applies a hostile manifest.
"""

from __future__ import annotations

import math
import re
from typing import cast

from pgpush.errors import FileReadError
from pgpush.repo.catalog import LABEL_RE
from pgpush.repo.codec.compress import EXTENSIONS
from pgpush.repo.records import Manifest
from pgpush.safepath import UnsafePath, clean_absolute, clean_parts, inside

PREFIX = "pg_data"
LINK_RE = re.compile(r"pg_data/pg_tblspc/[0-9]{1,10}")
SHA1_RE = re.compile(r"[0-9a-f]{40}")
MODE_RE = re.compile(r"0?[0-7]{1,3}")  # permission bits only: no set-user-id file from a repository
EXTS = frozenset(EXTENSIONS.values())
MAX_SIZE = 2 ** 62  # bytes: beyond any file system, and far from float and int64 trouble
MAX_MTIME = 2 ** 40  # seconds since the epoch either way (year ~36,800)


class Bad(ValueError):
    """One reason a manifest is refused (turned into a FileReadError naming the backup)."""


def check(manifest: object, label: str, outcome: str = "nothing was restored") -> Manifest:
    """``manifest`` when it is safe and well-formed, else FileReadError (42) saying why (and ``outcome``)."""
    try:
        _check(manifest)
    except (Bad, UnsafePath) as exc:
        raise FileReadError(f"manifest of backup '{label}' is corrupt: {exc}; {outcome}") from None
    return cast("Manifest", manifest)


def _check(manifest: object) -> None:
    top = _dict(manifest, "the manifest")
    backup = _dict(top.get("backup"), "'backup'")
    version = backup.get("pg_version")
    if not (isinstance(version, int) and not isinstance(version, bool) and 8 <= version <= 99):
        raise Bad(f"'pg_version' {version!r} is not a PostgreSQL major version")
    links = _links(_list(top.get("links", []), "links"))
    dirs = _dirs(_list(top.get("dirs"), "dirs"), links)
    _files(_list(top.get("files"), "files"), dirs, links)


def _dict(value: object, what: str) -> dict:
    if not isinstance(value, dict):
        raise Bad(f"{what} is not an object")
    return value


def _list(value: object, what: str) -> list:
    if not isinstance(value, list):
        raise Bad(f"'{what}' is not a list")
    return value


def _name(entry: dict, kind: str) -> str:
    name = entry.get("name")
    try:
        parts = clean_parts(name)
    except UnsafePath as exc:
        raise Bad(f"{kind} name {exc}") from None
    if parts[0] != PREFIX:
        raise Bad(f"{kind} name '{name}' is not under '{PREFIX}'")
    return name  # type: ignore[return-value]


def _common(entry: object, kind: str) -> str:
    """Name, mode, owner: what every entry has."""
    entry = _dict(entry, f"a {kind} entry")
    name = _name(entry, kind)
    mode = entry.get("mode")
    if not (isinstance(mode, str) and MODE_RE.fullmatch(mode)):
        raise Bad(f"{kind} '{name}' has mode {mode!r}, not an octal mode")
    for key in ("user", "group"):
        owner = entry.get(key)
        if owner is not None and not (isinstance(owner, str) and owner and "\0" not in owner):
            raise Bad(f"{kind} '{name}' has {key} {owner!r}")
    return name


def _links(entries: list) -> dict[str, str]:
    links: dict[str, str] = {}
    for entry in entries:
        name = _common(entry, "tablespace link")
        if not LINK_RE.fullmatch(name):
            raise Bad(f"link '{name}' is not a tablespace link 'pg_data/pg_tblspc/OID'")
        dest = clean_absolute(entry.get("destination"))
        for other in links.values():
            if inside(dest, other) or inside(other, dest):
                raise Bad(f"tablespace locations '{dest}' and '{other}' overlap")
        if name in links:
            raise Bad(f"link '{name}' is listed twice")
        links[name] = dest
    return links


def _under_link(name: str, links: dict[str, str]) -> str | None:
    return next((ln for ln in links if name.startswith(ln + "/")), None)


def _dirs(entries: list, links: dict[str, str]) -> set[str]:
    names = {_common(d, "directory") for d in entries}
    if len(names) != len(entries):
        raise Bad("a directory is listed twice")
    if PREFIX not in names:
        raise Bad(f"there is no '{PREFIX}' directory")
    for name in sorted(names - {PREFIX}):
        _placed(name, "directory", names, links)
        if name in links:
            raise Bad(f"'{name}' is both a directory and a tablespace link")
    return names


def _placed(name: str, kind: str, dirs: set[str], links: dict[str, str]) -> None:
    """Its parent is a listed directory or a tablespace link; inside a tablespace, only ``PG_*``."""
    parent = name.rsplit("/", 1)[0]
    if parent not in dirs and parent not in links:
        raise Bad(f"{kind} '{name}' is in '{parent}', which is not a directory of the backup")
    link = _under_link(name, links)
    if link is not None and not name[len(link) + 1:].startswith("PG_"):
        raise Bad(f"{kind} '{name}' is in a tablespace but not in its PG_* directory")
    if link is not None and parent == link and kind != "directory":
        raise Bad(f"{kind} '{name}' is directly in a tablespace location")


def _files(entries: list, dirs: set[str], links: dict[str, str]) -> None:
    seen: set[str] = set()
    for f in entries:
        name = _common(f, "file")
        _placed(name, "file", dirs, links)
        if name in dirs or name in links or name in seen:
            raise Bad(f"file '{name}' is listed twice, or also as a directory or link")
        seen.add(name)
        _file_fields(f, name)


def _file_fields(f: dict, name: str) -> None:
    def number(key: str, low: float, high: float, optional: bool = False, whole: bool = True) -> None:
        value = f.get(key)
        if value is None and optional:
            return
        kinds = (int,) if whole else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value) or not low <= value <= high:
            raise Bad(f"file '{name}' has {key} {value!r}")

    number("size", 0, MAX_SIZE)
    number("repo_size", 0, MAX_SIZE, optional=True)
    number("mtime", -MAX_MTIME, MAX_MTIME, whole=False)
    if not (isinstance(f.get("sha1"), str) and SHA1_RE.fullmatch(f["sha1"])):
        raise Bad(f"file '{name}' has sha1 {f.get('sha1')!r}")
    if not (isinstance(f.get("ext"), str) and f["ext"] in EXTS):
        raise Bad(f"file '{name}' has extension {f.get('ext')!r}")
    ref = f.get("reference")
    if ref is not None and not (isinstance(ref, str) and LABEL_RE.fullmatch(ref)):
        raise Bad(f"file '{name}' has reference {ref!r}, not a backup label")
