"""Storage backends: plain file stores that know nothing of WAL or backups.

:func:`open_storage` picks the backend from ``repo1-type``; the heavy
backends (paramiko, S3) are imported only when chosen.
"""

from __future__ import annotations

from pgpush.storage.base import Storage


def open_storage(cfg) -> Storage:
    kind = cfg["repo1-type"]
    if kind == "posix":
        from pgpush.storage.posix import PosixStorage

        return PosixStorage(str(cfg["repo1-path"]))
    if kind == "sftp":
        from pgpush.storage.sftp import SftpStorage

        return SftpStorage.from_config(cfg)
    if kind == "s3":
        from pgpush.storage.s3 import S3Storage

        return S3Storage.from_config(cfg)
    raise AssertionError(kind)
