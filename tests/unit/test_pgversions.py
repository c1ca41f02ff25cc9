"""pg_control and WAL page headers of real files from PostgreSQL 15 and 18 (tests/unit/data)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pgpush import wal
from pgpush.errors import FormatError, VersionNotSupportedError

DATA = Path(__file__).parent / "data"


@pytest.mark.parametrize(("version", "catalog"), [(15, 202209061), (18, 202506291)])
def test_real_pg_control_and_wal_header(version, catalog):
    control = wal.parse_control((DATA / f"pg{version}.pg_control").read_bytes())
    header = wal.parse_header((DATA / f"pg{version}.walpage").read_bytes(), "page")
    assert control.version == version
    assert control.catalog_version == catalog
    assert control.segment_size == 16 * 1024 * 1024
    assert control.block_size == 8192
    assert header.version == version
    assert header.system_id == control.system_id
    assert header.segment_size == control.segment_size
    assert header.timeline == 1
    assert header.page_address % header.segment_size == 0


def test_every_supported_version_has_magic_and_control_version():
    for version in range(10, 19):
        assert version in wal.WAL_MAGIC.values()
        assert version in wal.CONTROL_VERSION


def test_unknown_pg_control_version_is_46():
    data = bytearray((DATA / "pg15.pg_control").read_bytes())
    data[8:12] = (9999).to_bytes(4, "little")
    with pytest.raises(VersionNotSupportedError) as err:
        wal.parse_control(bytes(data))
    assert err.value.code == 46


def test_catalog_version_of_an_unknown_major_is_46():
    data = bytearray((DATA / "pg18.pg_control").read_bytes())
    data[12:16] = (209912311).to_bytes(4, "little")  # a catalog from the future
    with pytest.raises(VersionNotSupportedError):
        wal.parse_control(bytes(data))


def test_wal_magic_of_next_major_is_46_not_a_guess():
    data = bytearray((DATA / "pg18.walpage").read_bytes())
    data[0:2] = (0xD11B).to_bytes(2, "little")
    with pytest.raises(VersionNotSupportedError) as err:
        wal.parse_header(bytes(data), "x")
    assert "unexpected WAL magic" in str(err.value)


def test_short_header_flag_is_refused():
    data = bytearray((DATA / "pg15.walpage").read_bytes())
    data[2] &= ~wal.XLP_LONG_HEADER
    with pytest.raises(FormatError):
        wal.parse_header(bytes(data), "x")


def test_pg_control_cut_after_its_float_marker_is_a_format_error(tmp_path):
    """A truncated pg_control is 029 (not a struct.error, i.e. an unexpected 025), and the async path that only
    wants the segment size falls back to 16 MB without catching everything (docs/operations.md)."""
    import struct

    data = (DATA / "pg15.pg_control").read_bytes()
    cut = data[: data.find(struct.pack("<d", 1234567.0)) + 12]
    with pytest.raises(FormatError):
        wal.parse_control(cut)
    (tmp_path / "global").mkdir()
    (tmp_path / "global" / "pg_control").write_bytes(cut)
    assert wal.control_segment_size(str(tmp_path)) == 16 * 1024 * 1024
    (tmp_path / "global" / "pg_control").write_bytes((DATA / "pg15.pg_control").read_bytes())
    assert wal.control_segment_size(str(tmp_path)) == 16 * 1024 * 1024
    assert wal.control_segment_size(str(tmp_path / "missing")) == 16 * 1024 * 1024
