"""Which backup a restore writes, from which repository, and the recovery type and target it was asked for.

Without ``--set`` the latest ``DONE`` backup is restored (for ``--type time``
the latest ``DONE`` backup that stopped before the target); the choice and why
it was made are logged and printed (docs/operations.md, "Restore and
point-in-time recovery").  With several repositories the choice is made across
them (:func:`choose_source`).  The options are checked before anything is read.
"""

from __future__ import annotations

import datetime as dt
from typing import NamedTuple

from pgpush.archive.core import warning_text
from pgpush.commands.restore import recovery
from pgpush.config import Config
from pgpush.errors import ArchiveMismatchError, BackupSetInvalidError, OptionInvalidValueError, OptionRequiredError, PgPushError
from pgpush.log import LOG
from pgpush.repo import catalog, manifest_check, status
from pgpush.repo.catalog import Catalog
from pgpush.repo.records import BackupRecord, Manifest
from pgpush.repo.repository import Repository
from pgpush.repo.status import DONE, WAITING


def recovery_options(cfg: Config) -> tuple[str, str | None, str]:
    """(``--type``, ``--target``, ``--target-action``), refused when they do not go together."""
    rtype = cfg.get("type") or "default"
    if rtype not in recovery.TYPES:
        raise OptionInvalidValueError(
            f"option 'type' has invalid value '{rtype}' {cfg.sources.get('type', '')}: one of "
            + ", ".join(recovery.TYPES) + " is expected")
    target = cfg.get("target")
    if rtype in recovery.TARGET_KEY and not target:
        raise OptionRequiredError(f"restore --type={rtype} requires option: target")
    if target and rtype not in recovery.TARGET_KEY:
        raise OptionInvalidValueError(f"option 'target' is only valid with --type time, lsn, name or xid (not {rtype})")
    return rtype, target, str(cfg["target-action"])


def parse_time(text: str) -> float | None:
    """A recovery_target_time as seconds since the epoch (a time without zone is taken as local time)."""
    try:
        return dt.datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:
        return None


def choose_backup(backups: list[BackupRecord], set_label: str | None, rtype: str,
                  target: str | None) -> tuple[BackupRecord, str]:
    """(backup, why it was chosen)."""
    if set_label:
        for b in backups:
            if b["label"] == set_label:
                if b["status"] != DONE:
                    LOG.warn(f"backup {set_label} is {b['status']}: recovery may not reach consistency "
                             f"({b.get('status_detail')})")
                return b, "given by --set"
        raise BackupSetInvalidError(f"backup set {set_label} is not valid: it is not in the repository")
    done = [b for b in backups if b["status"] == DONE]
    if rtype == "time" and target:
        when = parse_time(target)
        if when is None:
            LOG.warn(f"unable to read recovery target time '{target}': the latest backup is chosen")
        else:
            before = [b for b in done if status.parse_iso(b["stop_time"]) <= when]
            if before:
                return before[-1], "latest DONE backup that stopped before the target time"
            LOG.warn("no DONE backup stopped before the target time: the latest one is chosen")
    if done:
        return done[-1], "latest DONE backup"
    waiting = [b for b in backups if b["status"] == WAITING]
    if waiting:
        LOG.warn(f"no DONE backup: restoring {waiting[-1]['label']}, which is still WAITING_FOR_WALS")
        return waiting[-1], "latest backup (none is DONE yet)"
    raise BackupSetInvalidError("no backup to restore: the stanza has no DONE or WAITING_FOR_WALS backup")


class Source(NamedTuple):
    """The backup a restore writes and where it comes from."""

    view: Config  # its repository's options (the restore's files are read through them)
    repo: Repository
    cat: Catalog
    record: BackupRecord
    why: str
    manifest: Manifest  # checked whole (:mod:`pgpush.repo.manifest_check`)


def choose_source(cfg: Config, rtype: str, target: str | None, pgdata: str) -> Source:
    """The backup to restore, from the repositories :meth:`Config.repos` gives.

    One repository: its catalog decides, as it always has, and its errors are the restore's.
    Several (docs/operations.md, "Several repositories"): with ``--set`` the first repository, in
    priority order, that holds that label with a readable manifest; without, the newest usable
    backup across them all (the same rules as :func:`choose_backup`; on a tie the repository
    first in priority order).  A repository that cannot be read is passed over with a WARN
    naming it; when no repository gives a backup, the first such failure is the error (its
    backups may be the ones asked for), else "no backup".  A backup whose manifest cannot be
    read is passed over for the next one, with a WARN.
    """
    views = cfg.repos()
    if len(views) == 1 and len(cfg.root.repo_indexes()) == 1:
        return _from_one(views[0], cfg.get("set"), rtype, target, pgdata)
    failures: list[PgPushError] = []
    catalogs: list[tuple[Config, Repository, Catalog, list[BackupRecord]]] = []
    clusters: dict[str, tuple[int, str]] = {}  # (system id, version) of each repository's stanza
    try:
        for view in views:
            repo: Repository | None = None
            try:
                repo = Repository.from_config(view)
                db = repo.load_archive_info()["db"]
                cat = Catalog(repo)
                catalogs.append((view, repo, cat, catalog.evaluate_all(repo, cat.reconciled())))
                clusters[view.repo_label] = (int(db["system-id"]), str(db["version"]))
            except PgPushError as exc:
                _skip(view, exc, "its backups are not considered", failures)
                if repo is not None:
                    repo.storage.close()
        _same_cluster(clusters)
        chosen = _across(catalogs, cfg.get("set"), rtype, target, failures, pgdata)
    except BaseException:
        for _view, repo, _cat, _backups in catalogs:
            repo.storage.close()
        raise
    for _view, repo, _cat, _backups in catalogs:
        if repo is not chosen.repo:
            repo.storage.close()
    return chosen


def _same_cluster(clusters: dict[str, tuple[int, str]]) -> None:
    """Refuse (44) to choose among repositories whose stanzas describe different clusters: the newest
    backup across them would be another cluster's (a repository used by another cluster under the same
    stanza name, or a stanza upgraded in one repository only), restored without a word.  The operator
    says which one with ``--repo``."""
    if len(set(clusters.values())) > 1:
        described = ", ".join(f"{label} PostgreSQL {version} system {system_id}"
                              for label, (system_id, version) in clusters.items())
        raise ArchiveMismatchError(f"the repositories describe different clusters ({described}): no backup is "
                                   "chosen across them\nHINT: restore from one with --repo")


def _from_one(view: Config, set_label: str | None, rtype: str, target: str | None, pgdata: str) -> Source:
    repo = Repository.from_config(view)
    try:
        repo.load_archive_info()
        cat = Catalog(repo)
        record, why = choose_backup(catalog.evaluate_all(repo, cat.reconciled()), set_label, rtype, target)
        LOG.info(f"restoring backup {record['label']} ({why}) into '{pgdata}'")
        manifest = manifest_check.check(cat.read_manifest(record["label"]), record["label"])
    except BaseException:
        repo.storage.close()
        raise
    return Source(view, repo, cat, record, why, manifest)


def _across(catalogs: list[tuple[Config, Repository, Catalog, list[BackupRecord]]], set_label: str | None,
            rtype: str, target: str | None, failures: list[PgPushError], pgdata: str) -> Source:
    """The backup among several repositories' (see :func:`choose_source`)."""
    where: dict[int, tuple[Config, Repository, Catalog]] = {}
    merged: list[BackupRecord] = []
    for view, repo, cat, backups in catalogs:
        for record in backups:
            if not set_label or record["label"] == set_label:
                where[id(record)] = (view, repo, cat)
                merged.append(record)
    # Newest last, as each catalog is ordered; on a tie the first repository in priority order.
    # With --set, the copies of that label in priority order, the first one first.
    if set_label:
        merged.sort(key=lambda r: -where[id(r)][0].repo_index)
    else:
        merged.sort(key=lambda r: (r["start_time"], r["label"], -where[id(r)][0].repo_index))
    while True:
        try:
            record, why = choose_backup(merged[-1:] if set_label else merged, set_label, rtype, target)
        except BackupSetInvalidError as exc:
            if failures:
                raise failures[0] from None
            if set_label:
                raise BackupSetInvalidError(f"backup set {set_label} is not valid: it is in no repository") from None
            raise BackupSetInvalidError("no backup to restore: no repository has a DONE or WAITING_FOR_WALS backup "
                                        "of the stanza") from exc
        view, repo, cat = where[id(record)]
        label = record["label"]
        LOG.info(f"restoring backup {label} from {view.repo_label} ({why}) into '{pgdata}'")
        try:
            manifest = manifest_check.check(cat.read_manifest(label), label)
        except PgPushError as exc:
            _skip(view, exc, f"backup {label} is not restored from it", failures)
            merged.remove(record)
            continue
        return Source(view, repo, cat, record, f"{why}, from {view.repo_label}", manifest)


def _skip(view: Config, exc: PgPushError, consequence: str, failures: list[PgPushError]) -> None:
    LOG.warn(f"{warning_text(exc, view.repo_label)}; {consequence}")
    failures.append(exc.in_repo(view.repo_label))
