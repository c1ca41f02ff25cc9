"""``restore``: write a backup into ``pg1-path`` and configure recovery through pgpush ``get``.

- The data directory must be empty (or missing) unless ``--delta`` (files
  whose size and SHA-1 match the manifest are left untouched, others are
  rewritten, files not in the backup are removed) or ``--force`` (every file
  rewritten, whatever its size or checksum; with or without ``--delta``).
- A running PostgreSQL (``postmaster.pid`` naming a live process) is never
  written over.
- Every file's size and SHA-1 are checked (small files before they are
  written, big ones as they stream); a corrupt file in the repository fails
  the restore (42), it is never silently restored.
- Success is reported only once the restored files are on stable storage
  (``syncfs`` of each file system, or an fsync of every file and directory).
- Over SFTP small files are read in batches with many in flight on one
  connection (``Storage.read_many``): a round trip per request, ~1,000
  catalog files in a small cluster, was most of the time.
- The asynchronous get spool (``SPOOL/archive/STANZA/in/``) is emptied: WAL
  prefetched for an earlier restore must never be served to this one.
- Without ``--set`` the latest ``DONE`` backup is restored (for
  ``--type time`` the latest ``DONE`` backup that stopped before the
  target); the choice is logged and printed.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import grp
import hashlib
import os
import pwd
import shutil
import stat
from collections.abc import Iterable, Iterator
from typing import NamedTuple

from pgpush import catalog, parallel, readahead, recovery, spool
from pgpush.catalog import DONE, WAITING, Catalog
from pgpush.errors import (
    BackupSetInvalidError,
    FileReadError,
    OptionInvalidValueError,
    OptionRequiredError,
    PathNotEmptyError,
    PgRunningError,
)
from pgpush.log import LOG
from pgpush.progress import Progress
from pgpush.repository import Repository

PREFIX = "pg_data"


# -- worker -----------------------------------------------------------------------------------------

SMALL_REPO_SIZE = 1024 * 1024  # a file stored in at most this many bytes ...
SMALL_SIZE = 2 * 1024 * 1024  # ... and at most this big once decoded is read in a batch, whole, in memory
BATCH_FILES = 64  # at most this many files ...
BATCH_BYTES = 16 * 1024 * 1024  # ... and about this many decoded bytes per batch (a unit of work for the pool)
SLICE = 32 * 1024  # stored bytes handed to the decoder at a time: its output stays well under a few MB


class FileJob(NamedTuple):
    name: str  # in the manifest (pg_data/...)
    dest: str  # where it is written
    path: str  # in the repository
    sha1: str
    size: int
    mode: int
    mtime: float
    uid: int | None
    gid: int | None
    compare: bool  # keep a local file whose size and SHA-1 match
    repo_size: int | None  # stored size, from the manifest (a hint for the reader)


def _sha1_file(path: str) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as fh:
        while chunk := fh.read(1024 * 1024):
            h.update(chunk)
    return h.hexdigest()


def _unchanged(job: FileJob) -> bool:
    """--delta: does the local file already have the manifest's size and SHA-1?"""
    try:
        st = os.lstat(job.dest)
    except FileNotFoundError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_size == job.size and _sha1_file(job.dest) == job.sha1


def _corrupt(job: FileJob, sha1: str, size: int) -> FileReadError:
    return FileReadError(f"backup file '{job.path}' in the repository is corrupt: SHA1 {sha1} ({size} bytes) "
                         f"does not match the manifest's {job.sha1} ({job.size} bytes)")


def _write_all(fd: int, data) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _open_dest(job: FileJob) -> int:
    return os.open(job.dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)


def _finish_dest(fd: int, job: FileJob) -> None:
    """Mode, owner and modification time on the open file (after its last write, which sets the time)."""
    os.fchmod(fd, job.mode)
    if job.uid is not None:
        os.fchown(fd, job.uid, job.gid)
    os.utime(fd, (job.mtime, job.mtime))


WRITEBACK_EVERY = 32 * 1024 * 1024  # a big file's written bytes handed to the kernel's writeback at a time
_sync_file_range = None  # libc's, resolved on first use; False where it does not exist


def _start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing a range out now (``sync_file_range(SYNC_FILE_RANGE_WRITE)``,
    as PostgreSQL's checkpointer does), so that the final sync finds little left to write: the disk
    works while we decode.  Only a hint: errors are ignored, durability comes from make_durable()."""
    global _sync_file_range
    if _sync_file_range is None:
        try:
            import ctypes

            fn = ctypes.CDLL(None, use_errno=True).sync_file_range
            fn.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
            _sync_file_range = fn
        except (OSError, AttributeError):
            _sync_file_range = False
    if _sync_file_range:
        _sync_file_range(fd, offset, length, 2)  # SYNC_FILE_RANGE_WRITE


def _sliced(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """The same bytes in pieces of at most ``SLICE``: zstd at ~40x turns a 1 MB read into a 40 MB buffer,
    and fresh buffers that big cost page faults on every one (measured: twice the time of the whole file)."""
    for chunk in chunks:
        if len(chunk) <= SLICE:
            yield chunk
        else:
            for i in range(0, len(chunk), SLICE):
                yield chunk[i:i + SLICE]


def restore_file(repo: Repository, job: FileJob) -> tuple[int, bool]:
    """Write one file from the repository, or keep a matching one: (bytes written, kept).

    Streams: a thread reads and decodes (zstd, zlib and hashlib release the
    GIL) while this one hashes and writes.  The SHA-1 is checked once the
    last byte is written; a mismatch fails the restore.
    """
    if job.compare and _unchanged(job):
        return 0, True
    h = hashlib.sha1()
    written = 0
    fd = _open_dest(job)
    try:
        try:
            flushed = 0
            for chunk in readahead.ahead(repo.decode(_sliced(repo.storage.read_chunks(job.path)), job.path), depth=8):
                h.update(chunk)
                _write_all(fd, chunk)
                written += len(chunk)
                if written - flushed >= WRITEBACK_EVERY:
                    _start_writeback(fd, flushed, written - flushed)
                    flushed = written
        except FileNotFoundError:
            raise FileReadError(f"backup file '{job.path}' is missing from the repository") from None
        except ValueError as exc:
            raise FileReadError(f"backup file '{job.path}' in the repository is corrupt: {exc}") from None
        if h.hexdigest() != job.sha1 or written != job.size:
            raise _corrupt(job, h.hexdigest(), written)
        _finish_dest(fd, job)
    finally:
        os.close(fd)
    return written, False


def _decode_whole(repo: Repository, job: FileJob, data: bytes) -> bytes:
    try:
        content = b"".join(repo.decode([data], job.path))
    except ValueError as exc:
        raise FileReadError(f"backup file '{job.path}' in the repository is corrupt: {exc}") from None
    if len(content) != job.size or hashlib.sha1(content).hexdigest() != job.sha1:
        raise _corrupt(job, hashlib.sha1(content).hexdigest(), len(content))
    return content


def restore_files(repo: Repository, jobs: list[FileJob]) -> list[tuple[int, bool]]:
    """One job of the pool: a big file alone (streamed), or a batch of small ones; one result per file.

    A batch is read with ``Storage.read_many`` (sftp keeps many files in
    flight on the connection), each file decoded and checked in memory
    *before* it is written: a corrupt file never reaches the data directory.
    Reading and checking run in a thread while this one creates and writes
    the files: creating a file is kernel time (about 1 ms on this project's
    ext4 after many deletions, ext4 looking for a free inode), done here
    while the other core decodes and hashes the next ones.
    """
    if len(jobs) == 1 and not _small(jobs[0]):
        return [restore_file(repo, jobs[0])]
    results: dict[str, tuple[int, bool]] = {}
    fetch: dict[str, FileJob] = {}
    for job in jobs:
        if job.compare and _unchanged(job):
            results[job.name] = (0, True)
        else:
            fetch[job.path] = job

    def checked() -> Iterator[tuple[FileJob, bytes]]:
        with contextlib.closing(repo.storage.read_many((j.path, j.repo_size) for j in fetch.values())) as files:
            for path, data in files:
                job = fetch[path]
                yield job, _decode_whole(repo, job, data)

    try:
        for job, content in readahead.ahead(checked(), depth=16):
            fd = _open_dest(job)
            try:
                _write_all(fd, content)
                _finish_dest(fd, job)
            finally:
                os.close(fd)
            results[job.name] = (len(content), False)
    except FileNotFoundError as exc:
        if exc.filename not in fetch:
            raise  # a local path
        raise FileReadError(f"backup file '{exc.filename}' is missing from the repository") from None
    return [results[j.name] for j in jobs]


def _small(job: FileJob) -> bool:
    return job.repo_size is not None and job.repo_size <= SMALL_REPO_SIZE and job.size <= SMALL_SIZE


def plan(jobs: list[FileJob]) -> list[list[FileJob]]:
    """Units of work for the pool: big files alone, largest first, then small files in batches.

    Largest first, so that at the end the workers are busy with small
    batches, not one waiting for a 1 GB segment started last.
    """
    big = sorted((j for j in jobs if not _small(j)), key=lambda j: -j.size)
    small = sorted((j for j in jobs if _small(j)), key=lambda j: -j.size)
    units: list[list[FileJob]] = [[j] for j in big]
    batch: list[FileJob] = []
    size = 0
    for job in small:
        if batch and (len(batch) >= BATCH_FILES or size + job.size > BATCH_BYTES):
            units.append(batch)
            batch, size = [], 0
        batch.append(job)
        size += job.size
    if batch:
        units.append(batch)
    return units


# -- durability -------------------------------------------------------------------------------------


def _syncfs(path: str) -> bool:
    """syncfs(2) on the file system holding ``path``; False where the call does not exist."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        syncfs = libc.syncfs
    except (OSError, AttributeError):
        return False
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if syncfs(fd) != 0:
            err = ctypes.get_errno()
            if err == errno.ENOSYS:
                return False
            raise OSError(err, f"syncfs failed: {os.strerror(err)}", path)
    finally:
        os.close(fd)
    return True


def _fsync_tree(root: str) -> None:
    """fsync every file and directory below ``root`` (and ``root``'s parent, whose entry it may be new in)."""
    for directory, _dirs, names in os.walk(root):
        for name in names:
            path = os.path.join(directory, name)
            if os.path.islink(path):
                continue
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    for directory in [os.path.dirname(root) or "/", *(d for d, _, _ in os.walk(root))]:
        fd = os.open(directory, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def make_durable(paths: list[str]) -> None:
    """Flush the restored cluster to stable storage before the restore reports success.

    One ``syncfs`` per file system (as ``initdb --sync-method=syncfs`` does:
    measured 0.3 s for a 470 MB restore, against 1.5 s for an fsync of each
    of its 1,000 files); where it does not exist, an fsync of every file and
    directory.
    """
    synced: set[int] = set()
    for path in paths:
        dev = os.stat(path).st_dev
        if dev in synced:
            continue
        if _syncfs(path):
            synced.add(dev)
        else:
            _fsync_tree(path)


# -- choosing the backup ---------------------------------------------------------------------------


def parse_time(text: str) -> float | None:
    """A recovery_target_time as seconds since the epoch (a time without zone is taken as local time)."""
    try:
        return dt.datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:
        return None


def choose_backup(backups: list[dict], set_label: str | None, rtype: str, target: str | None) -> tuple[dict, str]:
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
            before = [b for b in done if catalog.parse_iso(b["stop_time"]) <= when]
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


# -- the data directory -----------------------------------------------------------------------------


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


def _owner(entry: dict, fallback: tuple[int | None, int | None]) -> tuple[int | None, int | None]:
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
    with open(path, encoding="utf-8", newline="") as fh:
        lines = fh.read().split("\n")
    out = []
    for line in lines:
        oid = line.split(" ", 1)[0]
        if oid in remapped:  # "OID PATH", a backslash before \\, \n and \r in PATH (remap_tablespaces refuses the last two)
            line = f"{oid} " + remapped[oid].replace("\\", "\\\\")
        out.append(line)
    st = os.stat(path)
    tmp = path + ".pgpush.tmp"
    with open(tmp, "w", encoding="utf-8", newline="") as fh:
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


# -- the command ------------------------------------------------------------------------------------


def _options(cfg) -> tuple[str, str | None, str]:
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


def _path(pgdata: str, name: str) -> str:
    return pgdata if name == PREFIX else os.path.join(pgdata, name[len(PREFIX) + 1:])


def run(cfg) -> str:
    try:
        return _run(cfg)
    except OSError as exc:
        raise parallel.local_error(exc) from None


def _run(cfg) -> str:
    pgdata = os.path.abspath(str(cfg.require("pg1-path")))
    rtype, target, action = _options(cfg)
    delta, force = bool(cfg["delta"]), bool(cfg["force"])
    repo = Repository.from_config(cfg)
    try:
        repo.load_archive_info()
        cat = Catalog(repo)
        backups = catalog.evaluate_all(repo, cat.reconciled())
        record, why = choose_backup(backups, cfg.get("set"), rtype, target)
        label = record["label"]
        LOG.info(f"restoring backup {label} ({why}) into '{pgdata}'")
        manifest = cat.read_manifest(label)
        remapped = remap_tablespaces(cfg, manifest)
        existing = prepare(pgdata, delta, force)
        existing = tablespaces_in_use(manifest, delta, force) or existing
        clear_spool(cfg)
        written, kept = _restore(cfg, repo, cat, manifest, pgdata, existing, compare=existing and not force)
        rewrite_tablespace_map(pgdata, remapped)
        pg_dir = next(d for d in manifest["dirs"] if d["name"] == PREFIX)
        uid, gid = _owner(pg_dir, (None, None))
        recovery.write(pgdata, int(record["pg_version"]), rtype, recovery.settings(cfg, rtype, target, action), uid, gid)
        make_durable([pgdata, *(link["destination"] for link in manifest.get("links", []))])
    finally:
        repo.storage.close()
    files = len(manifest["files"])
    goal = {"default": "to the end of the archived WAL", "standby": "as a standby",
            "immediate": f"to the end of the backup, then {action}"}.get(rtype, f"to {rtype} '{target}', then {action}")
    message = (f"restore of backup {label} ({why}) into '{pgdata}' complete: {files} files, "
               f"{written} rewritten, {kept} unchanged; recovery {goal}")
    return message + "\nHINT: start PostgreSQL to recover"


def _make_dirs(pgdata: str, dirs: list[dict], links: dict[str, str], root_owner) -> None:
    """Directories, then tablespace links (their target created), then the directories inside them."""
    def under_link(name: str) -> bool:
        return any(name.startswith(link + "/") for link in links)

    for d in [d for d in dirs if not under_link(d["name"])]:
        _make_dir(_path(pgdata, d["name"]), d, root_owner)
    for name, dest in links.items():
        path = _path(pgdata, name)
        os.makedirs(dest, mode=0o700, exist_ok=True)
        if os.path.islink(path) and os.readlink(path) != dest:
            os.unlink(path)
        if not os.path.lexists(path):
            os.symlink(dest, path)
        uid, gid = root_owner
        if uid is not None:
            os.chown(dest, uid, gid)
            os.lchown(path, uid, gid)
    for d in [d for d in dirs if under_link(d["name"])]:
        _make_dir(_path(pgdata, d["name"]), d, root_owner)


def _make_dir(path: str, d: dict, root_owner) -> None:
    mode = int(d["mode"], 8)
    os.makedirs(path, mode=mode, exist_ok=True)
    os.chmod(path, mode)
    uid, gid = _owner(d, root_owner)
    if uid is not None:
        os.chown(path, uid, gid)


def _restore(cfg, repo: Repository, cat: Catalog, manifest: dict, pgdata: str, existing: bool,
             compare: bool) -> tuple[int, int]:
    """Directories, tablespace links and files; returns (files written, files kept)."""
    label = manifest["backup"]["label"]
    files = {f["name"]: f for f in manifest["files"]}
    dirs = sorted(manifest["dirs"], key=lambda d: d["name"])
    links = {ln["name"]: ln["destination"] for ln in manifest.get("links", [])}
    root_owner = _owner(next(d for d in dirs if d["name"] == PREFIX), (None, None))
    major = int(manifest["backup"]["pg_version"])
    if existing:
        removed = clean(pgdata, set(files), {d["name"] for d in dirs}, links, major)
        LOG.info(f"removed {removed} file(s) or directorie(s) not in the backup")
    _make_dirs(pgdata, dirs, links, root_owner)
    jobs = []
    for f in files.values():
        ref = f.get("reference") or label
        uid, gid = _owner(f, root_owner)
        jobs.append(FileJob(f["name"], _path(pgdata, f["name"]), f"{cat.label_dir(ref)}/{f['name']}{f['ext']}",
                            f["sha1"], f["size"], int(f["mode"], 8), float(f["mtime"]), uid, gid, compare,
                            f.get("repo_size")))
    progress = Progress(f"restore {label}", len(jobs), sum(f["size"] for f in files.values()),
                        str(cfg["log-level-console"]))
    counts = [0, 0]

    def collect(unit: list[FileJob], results: list[tuple[int, bool]]) -> None:
        progress.advance(sum(job.size for job in unit), files=len(unit))
        for _written, kept in results:
            counts[1 if kept else 0] += 1

    try:
        parallel.run(cfg, restore_files, plan(jobs), collect, parent_repo=repo)
    finally:
        progress.close()
    return counts[0], counts[1]
