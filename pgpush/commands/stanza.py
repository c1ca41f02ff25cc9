"""``stanza-create``: record the cluster's identity in the repository."""

from __future__ import annotations

import os

from pgpush import wal
from pgpush.config import Config
from pgpush.errors import FileMissingError, PgPushError
from pgpush.log import LOG
from pgpush.repo.repository import Repository


def read_control(pgdata: str) -> wal.ControlData:
    path = os.path.join(pgdata, "global", "pg_control")
    try:
        with open(path, "rb") as fh:
            return wal.parse_control(fh.read(8192))
    except FileNotFoundError:
        raise FileMissingError(f"unable to open '{path}': is pg1-path the data directory?") from None


def create(cfg: Config) -> str:
    """Create the stanza in every configured repository (idempotent for the same cluster; refuses
    another one).  A repository that fails does not keep the stanza from the others: adding a
    repository to a running cluster is this command run again (docs/operations.md, "Several
    repositories"); the first failure is raised, named, once every repository has been tried."""
    control = read_control(cfg.require("pg1-path"))
    views = cfg.repos()
    lines: list[str] = []
    failed: list[PgPushError] = []
    for view in views:
        try:
            repo = Repository.from_config(view)
            try:
                result = repo.stanza_create(control.system_id, control.version)
            finally:
                repo.storage.close()
        except PgPushError as exc:
            if len(views) == 1:
                raise
            failed.append(exc.in_repo(view.repo_label))
            continue
        lines.append(result if len(views) == 1 else f"{view.repo_label}: {result}")
    if failed:
        for line in lines:
            LOG.info(line)
        for other in failed[1:]:  # the first is the command's error line
            LOG.error(f"[{other.code:03d}]: {other.message}")
        raise failed[0]
    return "\n".join(lines)
