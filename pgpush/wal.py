"""WAL file names and headers, and pg_control: pure functions, table-driven.

A WAL segment name is ``TTTTTTTTXXXXXXXXYYYYYYYY``: timeline, then the
segment number split in "log" and "seg" parts where one log holds
``0x100000000 // segment_size`` segments.  The archive stores segments under
their 16-character ``TTTTTTTTXXXXXXXX`` directory.

WAL page magic and pg_control versions are mapped per PostgreSQL major
version; anything unknown is an error (46), never a guess.
"""

from __future__ import annotations

import os

from pgpush.errors import FormatError, VersionNotSupportedError

# Not typing's: the hot path imports this module (see config.py).
TYPE_CHECKING = False
if TYPE_CHECKING:
    import struct

_HEX = frozenset("0123456789ABCDEF")


def _hex(text: str, length: int) -> bool:
    """Upper-case hex of exactly ``length`` characters (no ``re``: it is slow to import)."""
    return len(text) == length and _HEX.issuperset(text)


def is_segment(name: str) -> bool:
    """``TTTTTTTTXXXXXXXXYYYYYYYY``: a WAL segment's name."""
    return _hex(name, 24)


def is_partial(name: str) -> bool:
    """A segment name then ``.partial``: the last, incomplete segment of a timeline."""
    return name.endswith(".partial") and _hex(name[:-8], 24)


def is_timeline_history(name: str) -> bool:
    """``TTTTTTTT.history``: the file that records where a timeline branched off."""
    return name.endswith(".history") and _hex(name[:-8], 8)


def is_backup_history(name: str) -> bool:
    """``SEGMENT.XXXXXXXX.backup``: the file PostgreSQL writes at the end of a base backup."""
    return len(name) == 40 and name.endswith(".backup") and name[24] == "." and _hex(name[:24], 24) and _hex(name[25:33], 8)


def is_archive_dir(name: str) -> bool:
    """``TTTTTTTTXXXXXXXX``: a directory of the repository's archive, as :func:`archive_dir` names them."""
    return _hex(name, 16)


# XLOG_PAGE_MAGIC per major version (src/include/access/xlog_internal.h).
WAL_MAGIC = {
    0xD097: 10,
    0xD098: 11,
    0xD101: 12,
    0xD106: 13,
    0xD10D: 14,
    0xD110: 15,
    0xD113: 16,
    0xD116: 17,
    0xD118: 18,
}
# PG_CONTROL_VERSION per major version (src/include/catalog/pg_control.h).
CONTROL_VERSION = {10: 1002, 11: 1100, 12: 1201, 13: 1300, 14: 1300, 15: 1300, 16: 1300, 17: 1700, 18: 1800}
# CATALOG_VERSION_NO disambiguates versions sharing a pg_control version:
# its first six digits are a date; ranges per major version.
CATALOG_RANGES = [
    (201707211, 201809051, 10),
    (201809051, 201909212, 11),
    (201909212, 202007201, 12),
    (202007201, 202107181, 13),
    (202107181, 202209061, 14),
    (202209061, 202307071, 15),
    (202307071, 202406281, 16),
    (202406281, 202506291, 17),
    (202506291, 202806291, 18),
]

XLP_LONG_HEADER = 0x0002
LONG_HEADER_FORMAT = "<HHIQI4xQII"  # magic, info, tli, pageaddr, rem_len, (pad), sysid, seg_size, blcksz


def __getattr__(name: str) -> struct.Struct:
    """``LONG_HEADER`` (a ``struct.Struct``) on first use: ``struct`` costs the hot path ~1 ms it never needs."""
    if name == "LONG_HEADER":
        import struct

        globals()["LONG_HEADER"] = value = struct.Struct(LONG_HEADER_FORMAT)
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def kind(name: str) -> str:
    """``segment``, ``partial``, ``history`` or ``backup``; FormatError otherwise."""
    if is_segment(name):
        return "segment"
    if is_partial(name):
        return "partial"
    if is_timeline_history(name):
        return "history"
    if is_backup_history(name):
        return "backup"
    raise FormatError(f"'{name}' is not a WAL file name (segment, .partial, .history or .backup)")


def timeline_of(name: str) -> int:
    return int(name[:8], 16)


def segments_per_log(segment_size: int) -> int:
    return 0x100000000 // segment_size


def segment_number(name: str, segment_size: int) -> int:
    """Absolute segment number of a 24-character name (timeline ignored)."""
    return int(name[8:16], 16) * segments_per_log(segment_size) + int(name[16:24], 16)


def segment_name(timeline: int, number: int, segment_size: int) -> str:
    per = segments_per_log(segment_size)
    return f"{timeline:08X}{number // per:08X}{number % per:08X}"


def next_segment(name: str, segment_size: int) -> str:
    return segment_name(timeline_of(name), segment_number(name, segment_size) + 1, segment_size)


def lsn_to_int(lsn: str) -> int:
    hi, _, lo = lsn.partition("/")
    return (int(hi, 16) << 32) | int(lo, 16)


def int_to_lsn(value: int) -> str:
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


def lsn_segment(timeline: int, lsn: str | int, segment_size: int) -> str:
    """Name of the segment holding ``lsn`` (PostgreSQL's pg_walfile_name before 17 at boundaries
    returned the previous segment; this is the segment that *contains* the byte)."""
    value = lsn_to_int(lsn) if isinstance(lsn, str) else lsn
    return segment_name(timeline, value // segment_size, segment_size)


def stop_segment(timeline: int, stop_lsn: str | int, segment_size: int) -> str:
    """The last segment a backup needs: the one holding the byte before ``stop_lsn``.

    A stop LSN exactly on a segment boundary needs nothing of the segment it
    points at (the case that made Barman's ``--wait`` hang with 17's
    ``pg_walfile_name``).
    """
    value = lsn_to_int(stop_lsn) if isinstance(stop_lsn, str) else stop_lsn
    return segment_name(timeline, max(value - 1, 0) // segment_size, segment_size)


def archive_dir(name: str) -> str:
    """The 16-character directory an archived segment lives under."""
    return name[:16]


class WalHeader:
    """The long page header of a segment (plain class: no dataclasses/typing import on the hot path)."""

    __slots__ = ("version", "timeline", "system_id", "segment_size", "block_size", "page_address")

    def __init__(self, version: int, timeline: int, system_id: int, segment_size: int, block_size: int,
                 page_address: int):
        self.version = version
        self.timeline = timeline
        self.system_id = system_id
        self.segment_size = segment_size
        self.block_size = block_size
        self.page_address = page_address


def parse_header(data: bytes, name: str = "") -> WalHeader:
    """Parse the long page header at the start of a segment."""
    import struct

    header = struct.Struct(LONG_HEADER_FORMAT)
    if len(data) < header.size:
        raise FormatError(f"WAL file '{name}' is too short for a WAL page header ({len(data)} bytes)")
    magic, info, tli, pageaddr, _rem, sysid, seg_size, blcksz = header.unpack_from(data)
    version = WAL_MAGIC.get(magic)
    if version is None:
        raise VersionNotSupportedError(f"unexpected WAL magic 0x{magic:04X} in '{name}': unsupported PostgreSQL version or not a WAL file")
    if not info & XLP_LONG_HEADER:
        raise FormatError(f"WAL file '{name}' does not start with a long page header")
    if seg_size == 0 or seg_size & (seg_size - 1) or not (1 << 20) <= seg_size <= (1 << 30):
        raise FormatError(f"WAL file '{name}' header has an invalid segment size {seg_size}")
    return WalHeader(version, tli, sysid, seg_size, blcksz, pageaddr)


def check_header_matches_name(header: WalHeader, name: str) -> None:
    """A segment's first page must be where its name says: catches a renamed or foreign file."""
    expected = segment_number(name[:24], header.segment_size) * header.segment_size
    if header.page_address != expected:
        raise FormatError(f"WAL file '{name}' starts at LSN {int_to_lsn(header.page_address)}, "
                          f"but its name says {int_to_lsn(expected)}: not this segment")


class ControlData:
    """What pgpush needs of pg_control."""

    __slots__ = ("version", "system_id", "segment_size", "block_size", "control_version", "catalog_version")

    def __init__(self, version: int, system_id: int, segment_size: int, block_size: int, control_version: int,
                 catalog_version: int):
        self.version = version
        self.system_id = system_id
        self.segment_size = segment_size
        self.block_size = block_size
        self.control_version = control_version
        self.catalog_version = catalog_version


def parse_control(data: bytes) -> ControlData:
    """Read ``global/pg_control``: system identifier, versions, WAL segment size.

    The offsets of ``xlog_seg_size`` and ``blcksz`` differ by version, so they
    are read from a small table keyed by the pg_control version.
    """
    import struct

    if len(data) < 16:
        raise FormatError("pg_control is too short")
    sysid, control_version, catalog_version = struct.unpack_from("<QII", data, 0)
    if control_version not in CONTROL_VERSION.values():
        raise VersionNotSupportedError(f"unexpected pg_control version {control_version}: unsupported PostgreSQL version")
    version = None
    for lo, hi, ver in CATALOG_RANGES:
        if lo <= catalog_version < hi:
            version = ver
    if version is None or CONTROL_VERSION[version] != control_version:
        raise VersionNotSupportedError(f"unexpected catalog version {catalog_version} with pg_control version {control_version}")
    blcksz, seg_size = _control_sizes(data, version)
    return ControlData(version, sysid, seg_size, blcksz, control_version, catalog_version)


def _control_sizes(data: bytes, version: int) -> tuple[int, int]:
    """Find (blcksz, xlog_blcksz..., xlog_seg_size) after maxAlign.

    ControlFileData ends with: maxAlign, floatFormat (double), blcksz,
    relseg_size, xlog_blcksz, xlog_seg_size, ... .  floatFormat is the
    constant 1234567.0, which locates the block reliably across versions.
    """
    import struct

    marker = struct.pack("<d", 1234567.0)
    pos = data.find(marker)
    if pos < 0 or pos + 24 > len(data):
        raise FormatError("pg_control has no float format marker")
    blcksz, _relseg, _xlog_blcksz, seg_size = struct.unpack_from("<IIII", data, pos + 8)
    return blcksz, seg_size


def parse_history(text: str) -> list[tuple[int, int, str]]:
    """``(parent timeline, switch LSN as int, reason)`` rows of a .history file."""
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(None, 2)
        if len(parts) < 2:
            raise FormatError(f"malformed history file line: {line!r}")
        rows.append((int(parts[0]), lsn_to_int(parts[1]), parts[2] if len(parts) > 2 else ""))
    return rows


def control_segment_size(pgdata: str) -> int:
    """The cluster's WAL segment size from pg_control (16 MB if unreadable)."""
    try:
        with open(os.path.join(pgdata, "global", "pg_control"), "rb") as fh:
            return parse_control(fh.read(8192)).segment_size
    except (OSError, FormatError, VersionNotSupportedError):
        return 16 * 1024 * 1024
