"""``verify``: re-read every file of the stanza in the repository and check it.

- every archived WAL file (segments, ``.partial``, ``.backup``) is read,
  decrypted, decompressed and its SHA-1 compared with the one in its name;
  ``.history`` files must parse;
- WAL continuity is checked per timeline: gaps (and dropped segments) are
  reported, and every backup's own range is checked;
- every file stored by a backup is read and compared with the SHA-1 and
  size in its manifest; a file a backup references in another backup must be
  in that backup's manifest with the same checksum.

A segment stored twice with different content (two clusters archiving under
one name) is a problem too: ``get`` refuses it.  Any unreadable or corrupt file makes ``verify`` fail with 42 after the whole
report is printed.  Gaps alone are reported, not an error (``info`` shows
them too, and a gap before every backup harms nothing).

With several repositories every one is verified (or the one ``--repo`` names), each on its own:
see :func:`run`.
"""

from __future__ import annotations

import hashlib

from pgpush import wal
from pgpush.commands import forkpool, multirepo
from pgpush.commands.progress import Progress
from pgpush.config import Config
from pgpush.errors import FileReadError, PgPushError, RepoInvalidError
from pgpush.log import LOG
from pgpush.repo import catalog, manifest_check, status
from pgpush.repo.catalog import Catalog
from pgpush.repo.records import BackupRecord, Manifest
from pgpush.repo.repository import MAX_WAL_BYTES, Repository
from pgpush.repo.walarchive import ARCHIVED_RE, history_problem


def verify_file(repo: Repository, job: tuple) -> str | None:
    """Read one repository file; None when sound, else what is wrong.

    ``job`` = (path, sha1, size, what, kind, stored size).
    """
    path, sha1, size, what, kind, _stored = job
    h = hashlib.sha1()
    n = 0
    try:
        data = b"" if kind == "history" else None
        for chunk in repo.decode_bounded(path, what, MAX_WAL_BYTES if size is None else size):
            h.update(chunk)
            n += len(chunk)
            if data is not None:
                data += chunk
        if data is not None and (problem := history_problem(path.rsplit("/", 1)[-1], data)):
            return f"{what}: {problem}"
    except FileNotFoundError:
        return f"{what}: missing ({path})"
    except RepoInvalidError:
        raise  # the repository itself fails (103): no file after this one can be read either
    except (ValueError, PgPushError) as exc:
        return f"{what}: unreadable: {exc}"
    if sha1 is not None and h.hexdigest() != sha1:
        return f"{what}: checksum mismatch: SHA1 {h.hexdigest()}, expected {sha1}"
    if size is not None and n != size:
        return f"{what}: size {n}, expected {size}"
    return None


def _archive_jobs(repo: Repository, archive_id: str) -> list[tuple]:
    base = f"{repo.archive_root}/{archive_id}"
    jobs: list[tuple] = []
    for f in repo.storage.list(base):
        if wal.is_timeline_history(f.name):
            jobs.append((f"{base}/{f.name}", None, None, f"history file {archive_id}/{f.name}", "history", f.size))
    for d in sorted(repo.storage.list_dirs(base)):
        if not wal.is_archive_dir(d):
            continue
        for f in repo.storage.list(f"{base}/{d}"):
            m = ARCHIVED_RE.match(f.name)
            if m:
                jobs.append((f"{base}/{d}/{f.name}", m.group("sha"), None, f"WAL file {archive_id}/{m.group('wal')}", "wal",
                             f.size))
    return jobs


def _backup_jobs(cat: Catalog, backups: list[BackupRecord], problems: list[str]) -> list[tuple]:
    manifests: dict[str, Manifest] = {}
    for b in backups:
        try:
            manifests[b["label"]] = manifest_check.check(cat.read_manifest(b["label"]), b["label"], "not verified")
        except RepoInvalidError:
            raise  # the repository fails (103), after the retry layer's budget: not one problem per backup
        except PgPushError as exc:
            problems.append(f"backup {b['label']}: {exc}")
    sums = {label: {f["name"]: f["sha1"] for f in m["files"]} for label, m in manifests.items()}
    jobs = []
    for label, m in manifests.items():
        for f in m["files"]:
            ref = f.get("reference")
            if ref:
                if sums.get(ref, {}).get(f["name"]) != f["sha1"]:
                    problems.append(f"backup {label}: '{f['name']}' references backup {ref}, which does not hold it")
                continue
            jobs.append((f"{cat.label_dir(label)}/{f['name']}{f['ext']}", f["sha1"], f["size"],
                         f"backup {label} file '{f['name']}'", "file", f["repo_size"]))
    return jobs


def verify_repo(cfg: Config, named: bool = False) -> tuple[list[str], list[str]]:
    """Verify the repository ``cfg`` views: (report lines, problems); ``named``: problems say which repository."""
    repo = Repository.from_config(cfg)
    problems: list[str] = []
    lines: list[str] = []
    try:
        repo.load_archive_info()
        cat = Catalog(repo)
        states: dict[str, status.ArchiveState] = {}
        backups = catalog.evaluate_all(repo, cat.reconciled(), states)
        jobs: list[tuple] = []
        for archive_id in reversed(repo.archive_ids()):
            jobs += _archive_jobs(repo, archive_id)
            state = states.get(archive_id) or status.archive_state(repo, archive_id, backups)
            names = sorted(state.archived)
            if state.segment_size and names:
                found = status.gaps(names, state.dropped, state.segment_size)
                lines.append(f"archive {archive_id}: {len(names)} segment(s) {names[0]} to {names[-1]}, "
                             f"{len(found)} gap(s)")
                lines += [f"  gap: {a} to {b}" for a, b in found]
            problems += [f"WAL file {archive_id}/{name}: stored twice with different content (get refuses it)"
                         for name in sorted(state.conflicts)]
        for b in backups:
            if b["status"] != status.DONE:
                lines.append(f"backup {b['label']}: {b['status']} ({b.get('status_detail')})")
        jobs += _backup_jobs(cat, backups, problems)
        progress = Progress("verify", len(jobs), sum(j[5] for j in jobs), str(cfg["log-level-console"]))

        def collect(job: tuple, result: str | None) -> None:
            progress.advance(job[5])
            if result is not None:
                result = multirepo.name(result, repo.label) if named else result
                problems.append(result)
                LOG.error(result)

        try:
            forkpool.run(cfg, verify_file, jobs, collect, parent_repo=repo)
        finally:
            progress.close()
    finally:
        repo.storage.close()
    if named:  # those found before the files were read (a conflict, a manifest) too
        problems = [multirepo.name(p, repo.label) for p in problems]
    wal_files = sum(1 for j in jobs if j[4] != "file")
    lines.append(f"verified {wal_files} archive file(s) and {len(jobs) - wal_files} backup file(s) of "
                 f"{len(backups)} backup(s): {len(problems)} problem(s)")
    lines += [f"  {p}" for p in problems]
    return lines, problems


def run(cfg: Config) -> tuple[str, int, PgPushError | None]:
    """Verify every repository (or the one ``--repo`` names): (the report, the number of problems, the
    error to raise once the report is printed).

    With several repositories each one's report is headed by its name and every problem names its
    repository; one that cannot be read (unreachable, no stanza) is an error for it alone, and the
    others are still verified.  The error raised names each repository that failed or had
    problems (:func:`multirepo.combined`: the first one's code).
    """
    named = multirepo.named(cfg)
    out: list[str] = []
    count = 0
    failures: list[PgPushError] = []
    for view in cfg.repos():
        try:
            lines, problems = verify_repo(view, named)
        except PgPushError as exc:
            if not named:
                raise
            failures.append(exc.in_repo(view.repo_label))
            LOG.warn(f"not verified: {failures[-1].message}")  # the ERROR line is the command's, at the end
            out += [f"{view.repo_label}:", f"  not verified: {multirepo.one_line(failures[-1].message)}"]
            continue
        out += ([f"{view.repo_label}:"] + [f"  {line}" for line in lines]) if named else lines
        count += len(problems)
        if problems:
            failures.append(fail(len(problems)).in_repo(view.repo_label) if named else fail(len(problems)))
    return "\n".join(out) + "\n", count, (multirepo.combined(failures) if failures else None)


def fail(count: int) -> FileReadError:
    return FileReadError(f"verify found {count} corrupt, missing, unreadable or conflicting file(s) in the repository")
