"""Synchronous push and get of one WAL file: the cores behind ``push`` and
``get`` without ``archive-async``, and what the async workers run per file.
"""

from __future__ import annotations

import os

from pgpush import fsutil, wal
from pgpush.archive.push_state import combined
from pgpush.config import Config
from pgpush.errors import FileMissingError, FormatError, PathCreateError, PgPushError, WalNotFound
from pgpush.log import LOG
from pgpush.repo import catalog, walarchive
from pgpush.repo.repository import Repository


def push_file(repo: Repository, path: str) -> str | None:
    """Archive the WAL file at ``path``; returns the duplicate warning, if any."""
    name = os.path.basename(path)
    wal.kind(name)
    _regular_file(path)
    try:
        return walarchive.push_wal_file(repo, name, path)  # transient repository failures: retried by the storage layer
    except FileNotFoundError:
        raise FileMissingError(f"WAL file '{path}' does not exist") from None
    except IsADirectoryError:
        raise FileMissingError(f"WAL file '{path}' is a directory") from None
    except PermissionError as exc:
        raise FileMissingError(f"unable to read WAL file '{path}': {exc.strerror}") from None


def _regular_file(path: str) -> None:
    """Refuse what is not a regular file before opening it: a FIFO would block the read for
    ever, and a link to a device (``/dev/zero``) would be read without end."""
    import stat

    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FileMissingError(f"WAL file '{path}' does not exist") from None
    except OSError as exc:
        raise FileMissingError(f"unable to read WAL file '{path}': {exc.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        raise FileMissingError(f"WAL file '{path}' is a directory")
    if not stat.S_ISREG(st.st_mode):
        raise FormatError(f"WAL file '{path}' is not a regular file")


def push(cfg: Config, wal_path: str) -> None:
    """Push one WAL file to every configured repository, in priority order.

    A repository that fails does not keep the file from the others (the offsite copy is not
    left behind because the backup host is down); the push succeeds only when the file is
    durable in all of them, else it fails with the first failing repository's error (its
    code), the message naming each that failed.  With one repository: exactly as ever.
    """
    name = os.path.basename(wal_path)
    wal.kind(name)  # refuse bad names before touching anything
    path = os.path.join(os.getcwd(), wal_path)  # not abspath: 'x/../f' must not be collapsed
    views = cfg.repos()
    if len(views) == 1:
        _push_to(Repository.from_config(views[0]), path, name, "")
        return
    _regular_file(path)  # the local file's problem is nobody's repository's: said once
    failures: list[PgPushError] = []
    for view in views:
        try:
            _push_to(Repository.from_config(view), path, name, f"{view.repo_label}: ")
        except PgPushError as exc:
            failures.append(exc.in_repo(view.repo_label))
    if failures:
        raise combined(failures)


def _push_to(repo: Repository, path: str, name: str, where: str) -> None:
    """Push to one repository; ``where`` names it in what is logged (empty with one repository)."""
    try:
        warning = push_file(repo, path)
        if warning:
            LOG.warn(f"{where}{warning}")
        LOG.info(f"{where}pushed WAL file '{name}' to the archive")
        _refresh_backups(repo, bool(where))
    finally:
        repo.storage.close()


def _refresh_backups(repo: Repository, named: bool = False) -> None:
    """Mark WAITING_FOR_WALS backups DONE once their WAL is in (docs/operations.md, "Backup status").
    ``named``: there are several repositories, and the warning says which one's status it is."""
    try:
        catalog.refresh_status(repo)
    except PgPushError as exc:  # never fail a push for book-keeping
        if named:
            exc = exc.in_repo(repo.label)
        LOG.warn(f"unable to refresh backup status: {exc}")


def check_local_cluster(repo: Repository, pgdata: str) -> None:
    """Refuse a get into a cluster that is not the stanza's (when pg_control is there)."""
    try:
        with open(os.path.join(pgdata, "global", "pg_control"), "rb") as fh:
            control = wal.parse_control(fh.read(8192))
    except OSError:
        return
    repo.check_cluster(control.system_id, control.version, f"the cluster in '{pgdata}'")


def fetch_to(repo: Repository, name: str, dest: str) -> None:
    """Fetch WAL file ``name`` to ``dest`` through its temporary name: verified, then renamed.

    PostgreSQL (or the spool reader) never sees half a file or a corrupt one; on any
    failure the temporary file is removed.  The file is private (0600: WAL holds the
    database's data) and durable before it is renamed, the rename durable after.  It is
    streamed from the repository, not held in memory: hence not :func:`pgpush.fsutil.write_atomic`.
    A lost connection is retried by the storage layer (pgpush/storage/retry.py), mid-file too.
    """
    tmp = dest + fsutil.TMP_SUFFIX
    try:
        with open(fsutil.create_temporary(dest, 0o600), "wb") as fh:
            walarchive.get_wal_into(repo, name, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
        fsutil.fsync_dir(os.path.dirname(os.path.abspath(dest)))
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError) and not isinstance(exc, PgPushError):
            raise PathCreateError(f"unable to write '{dest}': {exc.strerror}") from None
        raise


def get(cfg: Config, name: str, dest: str) -> int:
    """Restore WAL file ``name`` to ``dest``: 0 found, 1 not in the archive.

    With several repositories, see :func:`get_from_repos`; with one, its error is the command's.
    """
    wal.kind(name)
    views = cfg.repos()
    if len(views) > 1:
        return get_from_repos(views, name, dest)
    repo = Repository.from_config(views[0])
    try:
        check_local_cluster(repo, str(cfg.get("pg1-path") or os.getcwd()))
        try:
            fetch_to(repo, name, dest)
        except WalNotFound:
            LOG.info(f"unable to find {name} in the archive")
            return 1
        LOG.info(f"found {name} in the archive")
        return 0
    finally:
        repo.storage.close()


def get_from_repos(views: list[Config], name: str, dest: str) -> int:
    """Take ``name`` from the first repository, in priority order, that has it whole and verified.

    A repository that does not have it is passed over; one that cannot answer (unreachable,
    unreadable, the copy corrupt, another cluster's stanza) is passed over with a WARN naming
    it.  "Not in the archive" (1) only when every repository answered so: when one could not
    answer, its error is the result, as a 1 would end PostgreSQL's recovery while that
    repository may hold the file (docs/operations.md, "Several repositories").  Each
    repository's waits are bounded by its own ``repoN-host-timeout``.
    """
    pgdata = str(views[0].get("pg1-path") or os.getcwd())
    failure: PgPushError | None = None
    for view in views:
        try:
            found = _get_one(view, name, dest, pgdata)
        except PathCreateError:
            raise  # this host's destination: no other repository would do better
        except PgPushError as exc:
            LOG.warn(warning_text(exc, view.repo_label) + ("; trying the next repository" if view is not views[-1] else ""))
            failure = failure or exc.in_repo(view.repo_label)
            continue
        if found:
            where = "" if view is views[0] else f" of {view.repo_label}"
            LOG.info(f"found {name} in the archive{where}")
            return 0
    if failure is not None:
        raise failure
    LOG.info(f"unable to find {name} in the archive")
    return 1


def warning_text(exc: PgPushError, label: str) -> str:
    """``exc`` as one WARN line that begins with the repository it is about (``repo1: ...``).

    The storage says "unable to find a valid repository:" then ``repo1: reason`` on a line of its
    own; a WARN is one line, and a HINT is for the error that ends a command, not a repository
    passed over."""
    lines = [line for line in exc.in_repo(label).message.split("\n") if line and not line.startswith("HINT:")]
    text = " ".join(lines)
    prefix = f"{label}: "
    return text if text.startswith(prefix) else prefix + text.replace(prefix, "", 1)


def _get_one(view: Config, name: str, dest: str, pgdata: str) -> bool:
    """``name`` from one repository into ``dest``: True found, False not there; else its error."""
    repo = Repository.from_config(view)
    try:
        check_local_cluster(repo, pgdata)
        fetch_to(repo, name, dest)
        return True
    except WalNotFound:
        return False
    finally:
        repo.storage.close()


def run_command(cfg: Config) -> int:
    """``push``/``get`` without the CLI layer: PostgreSQL runs these once per WAL file, and typer
    and rich would add their import time to every call for nothing (no help, no progress bars).

    The guarded entry (:func:`pgpush.__main__.main`) has checked the arguments (043 when %p or
    %f is missing) and turns whatever this raises into its exit code and one ``ERROR:`` line."""
    if cfg.command == "push":
        LOG.configure(cfg, "archive-push")
        push(cfg, cfg.args[0])
        return 0
    LOG.configure(cfg, "archive-get")
    return get(cfg, cfg.args[0], cfg.args[1])
