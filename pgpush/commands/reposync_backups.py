"""``repo-sync``'s backups: claim each label the target lacks, copy its files, commit it last.

See :mod:`pgpush.commands.reposync` for the command and docs/architecture.md, "repo-sync".  A label
directory is claimed in the target under the catalog lock with an in-progress marker whose
``command`` is ``repo-sync`` (``expire`` keeps it and the WAL it needs; a ``backup`` writing the same
label is left alone; an interrupted sync's marker is taken over and its files kept when they read
back whole).  :class:`Committer` writes a backup's manifest (the commit point) and then its
``backup.info`` record only once its files, the whole archive and the backups it references are in
the target, so an interrupted sync never leaves a backup that looks usable.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

from pgpush.commands.reposync_copy import REFUSED, Answer, Job, Tally
from pgpush.config import Config
from pgpush.errors import FileMissingError, FileReadError, PgPushError, RepoInvalidError
from pgpush.log import LOG
from pgpush.repo import catalog, catalog_lock, manifest_check, status
from pgpush.repo.catalog import Catalog
from pgpush.repo.records import BackupRecord, Manifest, ManifestFile
from pgpush.repo.repository import Repository

COMMAND = "repo-sync"  # the ``command`` of the in-progress markers this command writes
HEARTBEAT = 300.0  # seconds between refreshes of those markers (as backup refreshes its own)
NEW, RESUMED = "new", "resumed"  # a label directory this sync claims: empty, or left by an interrupted sync


@dataclass
class Pending:
    """A backup being copied: its new manifest (filled in as its files arrive) and what it waits for."""

    manifest: Manifest
    own: dict[str, ManifestFile]  # its own files by target path
    waiting: set[str]  # target paths of files not copied yet
    needs: set[str]  # labels of backups it references
    failed: bool = False  # a file was refused


def target_manifest(src_manifest: Manifest, src_label: str) -> Manifest:
    """The source's manifest with its files' stored sizes unknown yet (the target encodes its own way)."""
    out = copy.deepcopy(src_manifest)
    where = f"manifest of backup '{src_label}'"
    out["backup"] = catalog.checked_record(out.get("backup"), where)
    if out["backup"]["label"] != src_label:
        raise FileReadError(f"{where} is corrupt: it names backup {out['backup']['label']!r}")
    return out


def plan_backups(cfg: Config, src: Repository, dst: Repository, tally: Tally) -> tuple[dict[str, Pending], list[Job]]:
    """Claim in ``dst`` a label directory for every backup it lacks; returns them and their file jobs."""
    src_cat, dst_cat = Catalog(src), Catalog(dst)
    have = {b["label"] for b in dst_cat.reconciled()}
    pending: dict[str, Pending] = {}
    jobs: list[Job] = []
    for record in src_cat.read():
        label = record["label"]
        if label in have:
            tally.backups_skipped += 1
            continue
        try:
            checked = manifest_check.check(src_cat.read_manifest(label), label, "not copied")
            manifest = target_manifest(checked, label)
        except RepoInvalidError:
            raise
        except PgPushError as exc:
            tally.refuse(exc.in_repo(src.label))
            continue
        claimed = _claim(cfg, dst_cat, manifest["backup"])
        if claimed is None:
            tally.backups_skipped += 1
            continue
        item = Pending(manifest, {}, set(), set(manifest["backup"].get("reference") or []))
        prior = manifest["backup"].get("prior")
        if prior:
            item.needs.add(prior)
        for f in manifest["files"]:
            if f.get("reference"):
                continue
            target = f"{dst_cat.label_dir(label)}/{f['name']}{dst.extension()}"
            item.own[target] = f
            item.waiting.add(target)
            jobs.append((f"backup {label} file '{f['name']}'", "file", f"{src_cat.label_dir(label)}/{f['name']}{f['ext']}",
                         target, f["sha1"], f["size"], claimed == RESUMED, f.get("repo_size") or f["size"]))
        pending[label] = item
    return pending, jobs


def _claim(cfg: Config, cat: Catalog, record: BackupRecord) -> str | None:
    """Make ``record``'s label directory in the target this sync's: :data:`NEW`, or :data:`RESUMED` when an
    earlier sync left it (its files may be there); None when it is not to be copied (committed meanwhile,
    or a backup is writing it)."""
    label = record["label"]
    start = {"start_lsn": record.get("start_lsn"), "segment_size": record["segment_size"],
             "archive_id": record["archive_id"], "command": COMMAND}
    with catalog_lock.catalog_lock(cfg, cat.repo, COMMAND):
        if cat.storage.info(cat.manifest_path(label)) is not None:
            return None
        marker = cat.started_marker(label)
        if marker is not None and marker.get("command") != COMMAND:
            LOG.warn(f"backup {label} is being written to {cat.repo.label} by a backup (its in-progress marker is "
                     "there): not copied")
            return None
        cat.mark_started(label, start)
    return NEW if marker is None else RESUMED


class Committer:
    """Commits each pending backup once its files, the archive and the backups it references are in the target."""

    def __init__(self, cfg: Config, dst: Repository, pending: dict[str, Pending], archive_left: int, tally: Tally):
        self.cfg, self.dst, self.cat = cfg, dst, Catalog(dst)
        self.pending, self.archive_left, self.tally = pending, archive_left, tally
        self.by_path = {path: label for label, item in pending.items() for path in item.own}
        self.beat = time.monotonic()
        self.failed: set[str] = set()  # labels dropped: what references them is dropped too
        self.manifests: dict[str, dict[str, ManifestFile]] = {}  # the target's, of referenced backups

    def result(self, job: Job, answer: Answer) -> None:
        if job[1] != "file":
            self.archive_left -= 1
        else:
            label = self.by_path[job[3]]
            item = self.pending[label]
            item.waiting.discard(job[3])
            if answer[0] == REFUSED:
                item.failed = True
            else:
                entry = item.own[job[3]]
                entry["ext"], entry["repo_size"] = self.dst.extension(), int(answer[2])
        if time.monotonic() - self.beat >= HEARTBEAT:
            self._heartbeat()
        self.commit_ready()

    def _heartbeat(self) -> None:
        """Refresh the markers: ``expire`` in the target must not take a long copy for a crashed one."""
        self.beat = time.monotonic()
        for label, item in self.pending.items():
            record = item.manifest["backup"]
            self.cat.mark_started(label, {"start_lsn": record.get("start_lsn"), "segment_size": record["segment_size"],
                                          "archive_id": record["archive_id"], "command": COMMAND})

    def commit_ready(self) -> None:
        """Commit (or drop) every pending backup that can be, in the order they were taken."""
        if self.archive_left > 0:
            return
        changed = True
        while changed:
            changed = False
            for label in list(self.pending):
                item = self.pending[label]
                if item.waiting:
                    continue  # some of its files are still being copied
                if item.failed or item.needs & self.failed:
                    self._drop(label, item)
                elif not item.needs & set(self.pending):
                    try:
                        self._commit(label, item)
                    except RepoInvalidError:
                        raise
                    except PgPushError as exc:
                        self.tally.refuse(exc.in_repo(self.dst.label))
                        item.failed = True
                        self._drop(label, item)
                else:
                    continue
                changed = True

    def _drop(self, label: str, item: Pending) -> None:
        """A backup that cannot be copied whole: its files leave the target (a corrupt source stays corrupt)."""
        self.failed.add(label)
        del self.pending[label]
        if not item.failed:
            self.tally.refuse(FileMissingError(f"backup {label} not copied: a backup it references was not "
                                               "copied").in_repo(self.dst.label))
        LOG.warn(f"{self.dst.label}: backup {label} not copied: the files copied of it are removed")
        with catalog_lock.catalog_lock(self.cfg, self.dst, COMMAND):
            if (self.cat.started_marker(label) or {}).get("command") == COMMAND:
                self.dst.storage.delete_tree(self.cat.label_dir(label))

    def _commit(self, label: str, item: Pending) -> None:
        """Manifest (the commit point), then the record, with the status the target's archive gives it."""
        manifest = item.manifest
        record = manifest["backup"]
        for f in manifest["files"]:
            ref = f.get("reference")
            if ref:
                theirs = self._file_in(ref, f["name"])
                if theirs is None or theirs["sha1"] != f["sha1"]:
                    raise FileMissingError(f"backup {label}: '{f['name']}' references backup {ref}, which does "
                                           "not hold it in this repository: not copied")
                f["ext"], f["repo_size"] = theirs["ext"], theirs["repo_size"]
        record["repo_size"] = sum(f["repo_size"] for f in manifest["files"] if not f.get("reference"))
        size = int(record["segment_size"])
        ev = status.evaluate(record, status.ArchiveListing(self.dst, record["archive_id"]).window([record], size))
        record = status.with_status(record, ev)
        manifest["backup"] = record
        with catalog_lock.catalog_lock(self.cfg, self.dst, COMMAND):
            if (self.cat.started_marker(label) or {}).get("command") != COMMAND:
                raise FileMissingError(f"backup {label}: its directory was removed from the repository while it "
                                       "was copied (by expire, or by hand): nothing is recorded")
            self.cat.write_manifest(label, manifest)
            self.dst.storage.delete(f"{self.cat.label_dir(label)}/{catalog.STARTED}")
            self.cat.add(record)
        del self.pending[label]
        self.tally.backups.append(label)
        LOG.info(f"backup {label} copied to {self.dst.label}: {record['status']}")

    def _file_in(self, label: str, name: str) -> ManifestFile | None:
        """File ``name`` of backup ``label``'s manifest in the target (read once per backup)."""
        if label not in self.manifests:
            try:
                checked = manifest_check.check(self.cat.read_manifest(label), label, "not copied")
                self.manifests[label] = {f["name"]: f for f in checked["files"]}
            except FileMissingError:
                self.manifests[label] = {}
        return self.manifests[label].get(name)
