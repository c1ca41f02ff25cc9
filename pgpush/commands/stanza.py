"""``stanza-create``: record the cluster's identity in the repository."""

from __future__ import annotations

import os

from pgpush import wal
from pgpush.config import Config
from pgpush.errors import FileMissingError
from pgpush.repo.repository import Repository


def read_control(pgdata: str) -> wal.ControlData:
    path = os.path.join(pgdata, "global", "pg_control")
    try:
        with open(path, "rb") as fh:
            return wal.parse_control(fh.read(8192))
    except FileNotFoundError:
        raise FileMissingError(f"unable to open '{path}': is pg1-path the data directory?") from None


def create(cfg: Config) -> str:
    """Create the stanza (idempotent for the same cluster; refuses another one)."""
    control = read_control(cfg.require("pg1-path"))
    repo = Repository.from_config(cfg)
    try:
        return repo.stanza_create(control.system_id, control.version)
    finally:
        repo.storage.close()
