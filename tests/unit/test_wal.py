"""WAL names and segment math (pure)."""

from __future__ import annotations

import pytest

from pgpush import wal
from pgpush.errors import FormatError, VersionNotSupportedError

MB16 = 16 * 1024 * 1024


@pytest.mark.parametrize(
    ("name", "kind"),
    [("000000010000000000000001", "segment"), ("0000000100000001000000FF.partial", "partial"),
     ("00000002.history", "history"), ("000000010000000000000002.00000028.backup", "backup")],
)
def test_kind(name, kind):
    assert wal.kind(name) == kind


@pytest.mark.parametrize(
    "name",
    ["", "00000001000000000000001", "0000000100000000000000010", "000000010000000000000001.gz",
     "../000000010000000000000001", "pg_wal/000000010000000000000001", "00000001000000000000000g",
     "000000010000000000000001\n", "x.history"],
)
def test_kind_refuses_anything_else(name):
    with pytest.raises(FormatError):
        wal.kind(name)


def test_next_segment_wraps_log_at_segment_size():
    assert wal.next_segment("0000000100000000000000FE", MB16) == "0000000100000000000000FF"
    assert wal.next_segment("0000000100000000000000FF", MB16) == "000000010000000100000000"
    assert wal.next_segment("000000010000000000000FFF", 1 << 20) == "000000010000000100000000"
    assert wal.next_segment("00000001000000000000003F", 64 << 20) == "000000010000000100000000"


def test_segment_numbers_and_names_cross_a_log():
    first = wal.segment_number("0000000100000000000000FE", MB16)
    names = [wal.segment_name(1, n, MB16) for n in range(first, first + 4)]
    assert names == ["0000000100000000000000FE", "0000000100000000000000FF", "000000010000000100000000",
                     "000000010000000100000001"]
    assert wal.segment_number(names[-1], MB16) == first + 3


PREDICATES = {"segment": wal.is_segment, "partial": wal.is_partial, "history": wal.is_timeline_history,
              "backup": wal.is_backup_history}


@pytest.mark.parametrize(
    "name",
    ["000000010000000000000001", "0000000100000001000000FF.partial", "00000002.history",
     "000000010000000000000002.00000028.backup", "", "000000010000000000000001\n", "x.history",
     "0000000100000000000000010", "000000010000000000000002.0000002g.backup", "0000000g.history"],
)
def test_each_predicate_says_yes_to_its_kind_only(name):
    try:
        expected = wal.kind(name)
    except FormatError:
        expected = None
    assert [k for k, yes in PREDICATES.items() if yes(name)] == ([expected] if expected else [])


@pytest.mark.parametrize(
    ("name", "expected"),
    [("0000000100000000", True), ("00000001000000FF", True), ("00000001000000ff", False), ("0000000100000000\n", False),
     ("000000010000000", False), ("00000001000000000", False), ("00000001", False), ("backup.info", False)],
)
def test_archive_dir_names(name, expected):
    assert wal.is_archive_dir(name) is expected
    if expected:
        assert wal.archive_dir(name + "00000001") == name


def test_lsn_segments_and_boundary_stop():
    assert wal.lsn_segment(1, "0/3000028", MB16) == "000000010000000000000003"
    assert wal.stop_segment(1, "0/3000100", MB16) == "000000010000000000000003"
    # a stop LSN exactly at a segment start needs nothing of that segment
    assert wal.stop_segment(1, "0/4000000", MB16) == "000000010000000000000003"
    assert wal.lsn_to_int("1/0") == 1 << 32
    assert wal.int_to_lsn(wal.lsn_to_int("A/1B")) == "A/1B"


def test_history_parse():
    rows = wal.parse_history("1\t0/3000000\tno recovery target specified\n\n2\t0/5000A0\tbefore 2000-01-01\n")
    assert rows == [(1, 0x3000000, "no recovery target specified"), (2, 0x5000A0, "before 2000-01-01")]


def test_header_unknown_magic_is_46():
    data = bytearray(64)
    data[0:2] = (0xBEEF).to_bytes(2, "little")
    with pytest.raises(VersionNotSupportedError) as err:
        wal.parse_header(bytes(data), "x")
    assert err.value.code == 46


def test_header_too_short_is_29():
    with pytest.raises(FormatError):
        wal.parse_header(b"\x10\xd1", "x")
