"""Storage backends: plain file stores that know nothing of WAL or backups.

:func:`open_storage` picks the backend from ``repo1-type`` and wraps it in the one retry
layer (:mod:`pgpush.storage.retry`), so every caller (push, get, backup, restore, verify,
expire, info) gets the same handling of transient failures without code of its own.  The heavy
backends (paramiko, S3) are imported only when chosen.
"""

from __future__ import annotations

from pgpush.config import Config
from pgpush.storage.base import Storage


def open_storage(cfg: Config) -> Storage:
    from pgpush.storage.retry import RetryingStorage, policy_for

    return RetryingStorage(_backend(cfg), policy_for(cfg))


def _backend(cfg: Config) -> Storage:
    kind = cfg["repo1-type"]
    if kind == "posix":
        from pgpush.storage.posix import PosixStorage

        return PosixStorage(str(cfg["repo1-path"]))
    if kind == "sftp":
        from pgpush.storage.sftp import SftpStorage

        return SftpStorage.from_config(cfg)
    if kind == "s3":
        from pgpush.storage.s3.storage import S3Storage

        return S3Storage.from_config(cfg)
    raise AssertionError(kind)
