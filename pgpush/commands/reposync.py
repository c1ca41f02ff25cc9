"""``repo-sync --from=N --to=M``: copy into repository M what it lacks of repository N's stanza.

Three parts, in this order (docs/architecture.md, "repo-sync"):

- the stanza: M's ``archive.info`` is made from N's (same database and history, M's own cipher)
  when M has none; one that describes another cluster stops everything (44);
- the archive: every WAL file (segments, ``.partial``, ``.history``, ``.backup``) and every
  dropped-segment marker that M lacks.  One already in M with the same SHA-1 is skipped, with
  another content it is reported (45) and never replaced;
- the backups M lacks (by label), in the order they were taken: each one's label directory is
  claimed in M with an in-progress marker (so ``expire`` in M keeps it and its WAL), its files
  copied, then its manifest written (the commit point) and its record added to ``backup.info``
  last, its status evaluated against M's archive.  A backup is committed only when its own files,
  the whole archive and the backups it references are in M: an interrupted sync leaves label
  directories without a manifest, which nothing takes for a backup, and which the next sync
  resumes (the files already there are read back and kept).

Every file goes through :mod:`pgpush.commands.reposync_copy` in ``process-max`` workers (one
pool for the archive and the backups: the progress bar's thread must not exist when they fork).
A file or backup that cannot be copied (corrupt in N, another content in M) is reported and the
rest is copied; the command then fails with the first one's code.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

from pgpush import wal
from pgpush.commands import forkpool, reposync_copy
from pgpush.commands.progress import Progress
from pgpush.commands.reposync_copy import COPIED, REFUSED, SKIPPED, Answer, Job
from pgpush.config import Config, format_size
from pgpush.errors import (
    ArchiveDuplicateError,
    FileMissingError,
    OptionInvalidValueError,
    OptionRequiredError,
    PgPushError,
    RepoInvalidError,
)
from pgpush.log import LOG
from pgpush.repo import catalog, catalog_lock, manifest_check, status, walarchive
from pgpush.repo.catalog import Catalog
from pgpush.repo.records import BackupRecord, Manifest, ManifestFile
from pgpush.repo.repository import Repository

COMMAND = "repo-sync"  # the ``command`` of the in-progress markers this command writes
HEARTBEAT = 300.0  # seconds between refreshes of those markers (as backup refreshes its own)
NEW, RESUMED = "new", "resumed"  # a label directory this sync claims: empty, or left by an interrupted sync


def endpoints(cfg: Config) -> tuple[Config, Config]:
    """The views of ``--from`` and ``--to``: both given (37), different and configured (32)."""
    root = cfg.root
    chosen: dict[str, int] = {}
    for name in ("from", "to"):
        value = root.get(name)
        if value is None:
            raise OptionRequiredError(f"repo-sync requires option: {name}")
        if value not in root.repo_indexes():
            raise OptionInvalidValueError(
                f"option '{name}' has invalid value '{value}' {root.sources.get(name, '')}: repo{value} is not "
                f"configured (set repo{value}-path or another repo{value}-* option); configured: "
                + ", ".join(f"repo{i}" for i in root.repo_indexes()))
        chosen[name] = int(value)
    if chosen["from"] == chosen["to"]:
        raise OptionInvalidValueError(f"options 'from' and 'to' both name repo{chosen['to']}: repo-sync copies "
                                      "between two different repositories")
    return root.repo(chosen["from"]), root.repo(chosen["to"])


@dataclass
class Tally:
    """What a sync did, for its summary line."""

    copied: int = 0  # files
    copied_bytes: int = 0  # their content
    skipped: int = 0  # files already in the target
    backups: list[str] = field(default_factory=list)  # labels committed
    backups_skipped: int = 0
    problems: list[PgPushError] = field(default_factory=list)

    def count(self, answer: Answer) -> None:
        outcome, content = answer[0], answer[1]
        if outcome == COPIED:
            self.copied += 1
            self.copied_bytes += content
        elif outcome == SKIPPED:
            self.skipped += 1

    def refuse(self, problem: PgPushError) -> None:
        LOG.warn(problem.message)
        self.problems.append(problem)

    def summary(self, src: str, dst: str) -> str:
        return (f"repo-sync {src} -> {dst}: copied {self.copied} file(s), {format_size(self.copied_bytes)}, and "
                f"{len(self.backups)} backup(s); skipped {self.skipped} file(s) and {self.backups_skipped} "
                f"backup(s) already in {dst}" + (f"; {len(self.problems)} not copied" if self.problems else ""))


# -- the archive ------------------------------------------------------------------------------------


def archive_jobs(src: Repository, dst: Repository, tally: Tally) -> list[Job]:
    """The archive files ``dst`` lacks, oldest archive id first; what it holds already is counted skipped,
    what it holds with another content (or ``src`` holds twice) is refused (45)."""
    jobs: list[Job] = []
    for archive_id in reversed(src.archive_ids()):
        base, theirs = f"{src.archive_root}/{archive_id}", f"{dst.archive_root}/{archive_id}"
        for f in src.storage.list(base):
            if wal.is_timeline_history(f.name):  # compared by content in the copy (a few bytes)
                jobs.append((f"WAL file '{f.name}'", "wal", archive_id, f.name, f"{base}/{f.name}", None, f.size))
        for directory in sorted(d for d in src.storage.list_dirs(base) if wal.is_archive_dir(d)):
            ours = src.storage.list(f"{base}/{directory}")
            held = dst.storage.list(f"{theirs}/{directory}")
            jobs += dir_jobs(archive_id, f"{base}/{directory}", [f.name for f in ours], [f.name for f in held],
                             {f.name: f.size for f in ours}, tally, src.label, dst.label)
    return jobs


def dir_jobs(archive_id: str, path: str, ours: list[str], held: list[str], sizes: dict[str, int], tally: Tally,
             src_label: str, dst_label: str) -> list[Job]:
    """The jobs of one archive directory, from the names stored in it in the source (``ours``) and the
    target (``held``): pure, so the rules are tested without a repository."""
    def by_wal(names: list[str]) -> dict[str, dict[str, str]]:
        out: dict[str, dict[str, str]] = {}
        for name in names:
            if m := walarchive.ARCHIVED_RE.fullmatch(name):
                out.setdefault(m.group("wal"), {})[m.group("sha")] = name
        return out

    mine, theirs = by_wal(ours), by_wal(held)
    jobs: list[Job] = []
    for name in sorted(mine):
        sums = mine[name]
        if len(sums) > 1:
            tally.refuse(walarchive.conflict_error(name, sums).in_repo(src_label))
            continue
        sha1, stored = next(iter(sums.items()))
        there = set(theirs.get(name, {}))
        if there == {sha1}:
            tally.skipped += 1
        elif there:
            tally.refuse(ArchiveDuplicateError(
                f"WAL file '{name}' already exists in the archive with a different checksum: archived SHA1 "
                f"{', '.join(sorted(there))}, {src_label}'s SHA1 {sha1}: not replaced").in_repo(dst_label))
        else:
            jobs.append((f"WAL file '{name}'", "wal", archive_id, name, f"{path}/{stored}", sha1, sizes.get(stored, 0)))
    for marker in sorted(n for n in ours if n.endswith(walarchive.DROPPED_SUFFIX)):
        segment = marker[: -len(walarchive.DROPPED_SUFFIX)]
        if not wal.is_segment(segment):
            continue
        if marker in held or segment in theirs:
            tally.skipped += 1
        else:
            jobs.append((f"dropped-segment marker {segment}", "dropped", archive_id, marker, f"{path}/{marker}",
                         sizes.get(marker, 0)))
    return jobs


# -- backups ----------------------------------------------------------------------------------------


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
    out["backup"] = catalog.checked_record(out.get("backup"), f"manifest of backup '{src_label}'")
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
            item.own[target], item.waiting = f, item.waiting | {target}
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


# -- the command ------------------------------------------------------------------------------------


def run(cfg: Config) -> tuple[str, list[PgPushError]]:
    """Sync; returns the summary line and what could not be copied."""
    src_cfg, dst_cfg = endpoints(cfg)
    src, dst = Repository.from_config(src_cfg), Repository.from_config(dst_cfg)
    tally = Tally()
    try:
        try:
            info = src.load_archive_info()
        except PgPushError as exc:
            raise exc.in_repo(src.label) from None
        try:
            created = dst.adopt_stanza(info, src.label)
        except PgPushError as exc:
            raise exc.in_repo(dst.label) from None
        if created:
            LOG.info(f"{dst.label}: {created}")
        jobs = archive_jobs(src, dst, tally)
        archive_count = len(jobs)
        pending, file_jobs = plan_backups(dst_cfg, src, dst, tally)
        jobs += file_jobs
        committer = Committer(dst_cfg, dst, pending, archive_count, tally)
        progress = Progress(f"repo-sync {src.label} -> {dst.label}", len(jobs), sum(int(j[-1]) for j in jobs),
                            str(cfg["log-level-console"]))

        def collect(job: Job, answer: Answer) -> None:
            progress.advance(int(job[-1]))
            tally.count(answer)
            if answer[0] == REFUSED:
                tally.refuse(PgPushError(answer[4], answer[3]))
            committer.result(job, answer)

        reposync_copy.SOURCE = src
        src.storage.close()  # no connection (nor its thread) may cross the pool's fork; it reconnects
        try:
            forkpool.run(dst_cfg, reposync_copy.copy_job, jobs, collect, parent_repo=dst)
            committer.commit_ready()  # nothing to copy: the archive is complete already
        finally:
            progress.close()
            reposync_copy.SOURCE = None
    finally:
        src.storage.close()
        dst.storage.close()
    return tally.summary(src.label, dst.label), tally.problems


def failure(problems: list[PgPushError]) -> PgPushError:
    """One error for what could not be copied: the first problem's code and message, with how many more."""
    first = problems[0]
    more = f" (and {len(problems) - 1} more: see the log)" if len(problems) > 1 else ""
    return PgPushError(f"{len(problems)} file(s) or backup(s) not copied: {first.message}{more}", first.code)
