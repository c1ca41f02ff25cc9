"""``restore``, the command: check, choose, clean, write, configure recovery, sync; in that order.

Nothing is written before the options, the chosen backup's manifest (checked whole by
:mod:`pgpush.repo.manifest_check`) and the destination are found sound; success is reported
only once everything written is durable.  Each step is its own module of this package.
"""

from __future__ import annotations

import os

from pgpush import safepath
from pgpush.commands import forkpool
from pgpush.commands.progress import Progress
from pgpush.commands.restore import recovery
from pgpush.commands.restore.choose import choose_source, recovery_options
from pgpush.commands.restore.clean import clean, clear_spool, prepare, tablespaces_in_use
from pgpush.commands.restore.durability import make_durable
from pgpush.commands.restore.files import FileJob, file_jobs, plan, restore_files
from pgpush.commands.restore.layout import PREFIX, check_locations, make_dirs, owner_ids
from pgpush.commands.restore.remap import remap_tablespaces, rewrite_tablespace_map
from pgpush.config import Config
from pgpush.errors import PathCreateError
from pgpush.log import LOG
from pgpush.repo.catalog import Catalog
from pgpush.repo.records import Manifest
from pgpush.repo.repository import Repository


def run(cfg: Config) -> str:
    try:
        return _run(cfg)
    except OSError as exc:
        raise forkpool.local_error(exc) from None
    except safepath.UnsafePath as exc:
        raise PathCreateError(f"unable to restore: {exc}") from None


def _run(cfg: Config) -> str:
    pgdata = os.path.abspath(str(cfg.require("pg1-path")))
    rtype, target, action = recovery_options(cfg)
    delta, force = bool(cfg["delta"]), bool(cfg["force"])
    source = choose_source(cfg, rtype, target, pgdata)
    view, repo, cat, label, why, manifest = source.view, source.repo, source.cat, source.record["label"], source.why, source.manifest
    try:
        recovery.check_command_length(cfg, manifest["backup"]["pg_version"])
        remapped = remap_tablespaces(cfg, manifest)
        check_locations(pgdata, {ln["name"]: ln["destination"] for ln in manifest.get("links", [])})
        existing = prepare(pgdata, delta, force)
        existing = tablespaces_in_use(manifest, delta, force) or existing
        clear_spool(cfg)
        written, kept = _restore(view, repo, cat, label, manifest, pgdata, existing, compare=existing and not force)
        rewrite_tablespace_map(pgdata, remapped)
        pg_dir = next(d for d in manifest["dirs"] if d["name"] == PREFIX)
        uid, gid = owner_ids(pg_dir, (None, None))
        recovery.write(pgdata, manifest["backup"]["pg_version"], rtype, recovery.settings(cfg, rtype, target, action), uid, gid)
        make_durable([pgdata, *(link["destination"] for link in manifest.get("links", []))])
    finally:
        repo.storage.close()
    files = len(manifest["files"])
    goal = {"default": "to the end of the archived WAL", "standby": "as a standby",
            "immediate": f"to the end of the backup, then {action}"}.get(rtype, f"to {rtype} '{target}', then {action}")
    message = (f"restore of backup {label} ({why}) into '{pgdata}' complete: {files} files, "
               f"{written} rewritten, {kept} unchanged; recovery {goal}")
    return message + "\nHINT: start PostgreSQL to recover"


def _restore(cfg: Config, repo: Repository, cat: Catalog, label: str, manifest: Manifest, pgdata: str, existing: bool,
             compare: bool) -> tuple[int, int]:
    """Directories, tablespace links and files; returns (files written, files kept)."""
    files = {f["name"]: f for f in manifest["files"]}
    dirs = sorted(manifest["dirs"], key=lambda d: d["name"])
    links = {ln["name"]: ln["destination"] for ln in manifest.get("links", [])}
    root_owner = owner_ids(next(d for d in dirs if d["name"] == PREFIX), (None, None))
    major = manifest["backup"]["pg_version"]
    todo = file_jobs(cat, label, files, pgdata, links, root_owner, compare)
    if existing:
        removed = clean(pgdata, set(files), {d["name"] for d in dirs}, links, major)
        LOG.info(f"removed {removed} file(s) or directorie(s) not in the backup")
    make_dirs(pgdata, dirs, links, root_owner)
    progress = Progress(f"restore {label}", len(todo), sum(f["size"] for f in files.values()),
                        str(cfg["log-level-console"]))
    counts = [0, 0]

    def collect(unit: list[FileJob], results: list[tuple[int, bool]]) -> None:
        progress.advance(sum(job.size for job in unit), files=len(unit))
        for _written, kept in results:
            counts[1 if kept else 0] += 1

    try:
        forkpool.run(cfg, restore_files, plan(todo), collect, parent_repo=repo)
    finally:
        progress.close()
    return counts[0], counts[1]
