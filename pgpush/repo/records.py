"""The shapes of the JSON records pgpush keeps in a repository, for the type checker.

``backup.info`` holds one :class:`BackupRecord` per backup, and each backup's manifest
(:class:`Manifest`) holds the same record under ``"backup"`` beside its files, directories and
tablespace links (docs/architecture.md, the repository layout).  They are plain dicts at run time,
read with ``json.loads`` and written with ``json.dumps``: these TypedDicts only name their keys and
value types, so a misspelt key or a wrong type is a type error instead of a ``KeyError`` in front of
an operator.  What is *checked* at run time when they are read back lives with the readers:
``catalog.record_problem`` (the keys of :class:`_RecordCore`) and ``manifest_check`` (a manifest
before a restore or verify acts on it).

The keys beyond :class:`_RecordCore` are written by every backup of this version but may be absent
from a record written by an older one, so readers use ``.get`` for them.
"""

from __future__ import annotations

from typing import TypedDict

# With ``from __future__ import annotations`` the field types stay strings (ForwardRefs) at run
# time, never evaluated: ``str | None`` is fine on 3.9 here.


class _RecordCore(TypedDict):
    """The keys every backup record has (``catalog._RECORD_FIELDS`` validates them on read)."""

    label: str  # ``YYYYMMDD-HHMMSSF`` with ``_YYYYMMDD-HHMMSSD``/``I`` for diff/incr
    type: str  # full, diff, incr
    status: str  # status.DONE, WAITING or FAILED
    start_time: str  # ISO-8601 UTC
    stop_time: str
    wal_start: str  # segment names
    wal_stop: str
    archive_id: str  # e.g. ``16-1``
    segment_size: int
    system_id: int


class WalStart(TypedDict):
    """Where a backup's WAL starts: what ``expire`` keeps WAL from (a record, or a backup still running)."""

    label: str
    archive_id: str
    segment_size: int
    wal_start: str


class WalSpan(TypedDict):
    """The WAL a backup needs to be consistent: what its status is evaluated on (``status.evaluate``)."""

    wal_start: str
    wal_stop: str


class BackupRecord(_RecordCore, total=False):
    """One backup, as in ``backup.info`` and the manifest's ``"backup"`` (built by commands/backup.py)."""

    prior: str | None  # the backup a diff/incr builds on
    status_detail: str | None
    from_standby: bool
    timeline: int
    stop_timeline: int
    start_lsn: str
    stop_lsn: str
    size: int  # bytes of the cluster
    repo_size: int  # bytes stored by this backup (its own files)
    backup_size: int  # bytes of its own files before compression
    file_count: int
    reference: list[str]  # labels holding files this backup references
    pg_version: int
    pgpush_version: str


class _PathCore(TypedDict):
    name: str  # ``pg_data/...``
    mode: str  # octal, e.g. ``0700``


class ManifestPath(_PathCore, total=False):
    """A directory or tablespace link of a manifest (``pgdata.Entry.as_dict``)."""

    user: str | None
    group: str | None
    destination: str  # links only (always there): the tablespace's location


class _FileCore(TypedDict):
    name: str
    size: int  # bytes of the file in the cluster
    sha1: str  # of those bytes
    ext: str  # the stored copy's encoding, e.g. ``.gz``
    repo_size: int  # bytes stored
    reference: str | None  # the backup holding the content, None for this one


class ManifestFile(_FileCore, total=False):
    """A regular file of a manifest; mode, mtime and owner are added once it is copied."""

    mode: str
    mtime: float
    user: str | None
    group: str | None


class _ManifestCore(TypedDict):
    backup: BackupRecord
    files: list[ManifestFile]
    dirs: list[ManifestPath]


class Manifest(_ManifestCore, total=False):
    """``backup.manifest``: the commit point of a backup and the source of truth for ``backup.info``.

    ``manifest_check.check`` turns a manifest read from the repository into one of these; ``links``
    (tablespaces) may be absent, ``format`` is 1.
    """

    format: int
    links: list[ManifestPath]
