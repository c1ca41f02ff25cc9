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
pool for the archive and the backups: the progress bar's thread must not exist when they fork);
the backups are claimed and committed by :mod:`pgpush.commands.reposync_backups`.
A file or backup that cannot be copied (corrupt in N, another content in M) is reported and the
rest is copied; the command then fails with the first one's code.
"""

from __future__ import annotations

from pgpush import wal
from pgpush.commands import forkpool, reposync_copy
from pgpush.commands.progress import Progress
from pgpush.commands.reposync_backups import Committer, plan_backups
from pgpush.commands.reposync_copy import REFUSED, Answer, Job, Tally
from pgpush.config import Config
from pgpush.errors import (
    ArchiveDuplicateError,
    OptionInvalidValueError,
    OptionRequiredError,
    PgPushError,
)
from pgpush.log import LOG
from pgpush.repo import walarchive
from pgpush.repo.repository import Repository


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
