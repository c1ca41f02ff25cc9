"""Synchronous push and get of one WAL file: the cores behind ``push`` and
``get`` without ``archive-async``, and what the async workers run per file.
"""

from __future__ import annotations

import os

from pgpush import wal
from pgpush.errors import FileMissingError, PgPushError, WalNotFound
from pgpush.log import LOG
from pgpush.repository import Repository
from pgpush.storage.base import StorageError

TMP_SUFFIX = ".pgpush.tmp"


def read_wal_file(path: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        raise FileMissingError(f"WAL file '{path}' does not exist") from None
    except IsADirectoryError:
        raise FileMissingError(f"WAL file '{path}' is a directory") from None
    except OSError as exc:
        raise FileMissingError(f"unable to read WAL file '{path}': {exc.strerror}") from None


def with_retry(repo: Repository, fn, *args):
    """Run ``fn`` once more on a fresh connection when the connection was lost."""
    try:
        return fn(*args)
    except StorageError as exc:
        if not exc.transient:
            raise
        repo.storage.close()
        return fn(*args)


def push_file(repo: Repository, path: str) -> str | None:
    """Archive the WAL file at ``path``; returns the duplicate warning, if any."""
    name = os.path.basename(path)
    wal.kind(name)
    data = read_wal_file(path)
    return with_retry(repo, repo.push_wal, name, data)


def push(cfg, wal_path: str) -> None:
    name = os.path.basename(wal_path)
    wal.kind(name)  # refuse bad names before touching anything
    path = os.path.join(os.getcwd(), wal_path)  # not abspath: 'x/../f' must not be collapsed
    repo = Repository.from_config(cfg)
    try:
        warning = push_file(repo, path)
        if warning:
            LOG.warn(warning)
        LOG.info(f"pushed WAL file '{name}' to the archive")
        _refresh_backups(repo)
    finally:
        repo.storage.close()


def _refresh_backups(repo: Repository) -> None:
    """Mark WAITING_FOR_WALS backups DONE once their WAL is in (SPEC §8)."""
    try:
        from pgpush import catalog
    except ImportError:  # backups not built into this version
        return
    try:
        catalog.refresh_status(repo)
    except PgPushError as exc:  # never fail a push for book-keeping
        LOG.warn(f"unable to refresh backup status: {exc}")


def check_local_cluster(repo: Repository, pgdata: str) -> None:
    """Refuse a get into a cluster that is not the stanza's (when pg_control is there)."""
    try:
        with open(os.path.join(pgdata, "global", "pg_control"), "rb") as fh:
            control = wal.parse_control(fh.read(8192))
    except OSError:
        return
    repo.check_cluster(control.system_id, control.version, f"the cluster in '{pgdata}'")


def write_dest(dest: str, data: bytes) -> None:
    """Write the restored file atomically: PostgreSQL never sees half of it."""
    tmp = dest + TMP_SUFFIX
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, dest)
    except OSError as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        from pgpush.errors import PathCreateError

        raise PathCreateError(f"unable to write '{dest}': {exc.strerror}") from None


def get(cfg, name: str, dest: str) -> int:
    """Restore WAL file ``name`` to ``dest``: 0 found, 1 not in the archive."""
    wal.kind(name)
    repo = Repository.from_config(cfg)
    try:
        check_local_cluster(repo, str(cfg.get("pg1-path") or os.getcwd()))
        try:
            data = with_retry(repo, repo.get_wal, name)
        except WalNotFound:
            LOG.info(f"unable to find {name} in the archive")
            return 1
        write_dest(dest, data)
        LOG.info(f"found {name} in the archive")
        return 0
    finally:
        repo.storage.close()
