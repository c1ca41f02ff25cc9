"""Hypothesis strategies for pgpush's inputs: option values by type (and garbage), command lines,
environments, config files, WAL names and headers, spool status files.

Options that would point pgpush outside the sandbox or at another host (repository type and
hosts, paths, the socket, the primary's conninfo) and the ones that would fork background
parents (``archive-async``) are never generated: the sandbox pins them.
"""

from __future__ import annotations

import struct

from hypothesis import strategies as st

from pgpush.options import ALIASES, OPTIONS, Option
from pgpush.wal import WAL_MAGIC

PINNED = frozenset({
    "config", "repo1-type", "repo1-path", "repo1-host", "repo1-s3-endpoint", "spool-path", "log-path", "pg1-path",
    "pg1-socket-path", "primary-conninfo", "archive-async", "log-level-console", "exec-id",
})
FREE = tuple(o for o in OPTIONS if o.name not in PINNED)
CLI_COMMANDS = ("version", "help", "info", "expire", "verify", "check", "stanza-create", "push", "get", "backup",
                "restore", *ALIASES)
SEGMENTS = ("000000010000000000000001", "000000010000000000000002", "0000000100000001000000FF",
            "00000002.history", "000000010000000000000003.partial", "000000010000000000000004.00000028.backup")


def _encodable(text: str) -> bool:
    """What a real argv or environment can hold: no NUL, bytes round-tripping through the file system encoding."""
    try:
        text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return False
    return "\x00" not in text


ANY_TEXT = st.text(st.characters(blacklist_categories=(), blacklist_characters="\x00"), max_size=24).filter(_encodable)
NUMBERS = st.sampled_from(["0", "1", "-1", "3", "9e400", "1e309", "nan", "inf", "-inf", "NaN", "1_000", " 7 ", "0x10",
                           "99999999999999999999", "٣", "１６", "1.5", "", "4097TB", "16MB", "1.5GB", "0.0001"])
WAL_NAMES = st.one_of(st.sampled_from(SEGMENTS), st.text("0123456789ABCDEFabcdef.-_/partilsyb", max_size=40))


def option_value(opt: Option) -> st.SearchStrategy[str]:
    """A value for ``opt``: mostly of its type, often at the edges, sometimes anything."""
    if opt.type == "choice":
        typed = st.sampled_from(opt.choices)
    elif opt.type == "bool":
        typed = st.sampled_from(["y", "n", "yes", "off", "maybe", ""])
    elif opt.name == "process-max":
        typed = st.integers(-1, 4).map(str)
    elif opt.type in ("int", "size", "duration"):
        typed = st.one_of(st.integers(-10, 70000).map(str), st.floats(allow_nan=True).map(repr), NUMBERS)
    else:
        typed = st.sampled_from(["x", "main", "/", "..", "a b", "full", "incr", "immediate", "1=/tmp/x"])
    return st.one_of(typed, ANY_TEXT)


@st.composite
def option_tokens(draw) -> list[str]:
    """One option as the command line spells it: ``--k=v``, ``--k v``, ``--k``, ``--no-k``, or an unknown one."""
    opt = draw(st.sampled_from(FREE))
    form = draw(st.sampled_from(["eq", "space", "flag", "no", "unknown"]))
    value = draw(option_value(opt))
    if form == "eq":
        return [f"--{opt.name}={value}"]
    if form == "space":
        return [f"--{opt.name}", value]
    if form == "flag":
        return [f"--{opt.name}"]
    if form == "no":
        return [f"--no-{opt.name}"]
    return [f"--{draw(ANY_TEXT)}"]


@st.composite
def command_lines(draw) -> list[str]:
    """A command line: a command (usually known), options before and after, positional arguments."""
    tokens: list[str] = []
    for group in draw(st.lists(option_tokens(), max_size=5)):
        tokens.extend(group)
    positional = st.one_of(WAL_NAMES, st.sampled_from(["pg_wal/RECOVERYXLOG", "RECOVERYXLOG", "-", "--", "-h"]),
                           ANY_TEXT.filter(lambda t: "/" not in t))
    tokens.extend(draw(st.lists(positional, max_size=3)))
    command = draw(st.one_of(st.sampled_from(CLI_COMMANDS), ANY_TEXT))
    if draw(st.booleans()) or not tokens:
        tokens.insert(draw(st.integers(0, len(tokens))), command)
    return tokens


@st.composite
def environments(draw) -> dict[str, str]:
    """``PGPUSH_*`` variables: options of every type, unknown names, and pgpush's internal ones."""
    env = {}
    for opt in draw(st.lists(st.sampled_from(FREE), max_size=5, unique=True)):
        env["PGPUSH_" + opt.name.upper().replace("-", "_")] = draw(option_value(opt))
    for name in draw(st.lists(st.sampled_from(["PGPUSH_LOCK_FD", "PGPUSH_CACHE", "PGPUSH_PYTHON", "PGPUSH_BOGUS",
                                                "PGPUSH_", "PGPUSH_REPO1_PTH"]), max_size=2, unique=True)):
        env[name] = draw(ANY_TEXT)
    return env


@st.composite
def config_files(draw) -> bytes:
    """An INI file: sections, keys of every kind, comments, and stray bytes that are not UTF-8."""
    section = st.one_of(st.sampled_from(["[global]", "[main]", "[global:push]", "[main:info]", "[global:get]",
                                         "[other]", "[", "[]", "[main"]), ANY_TEXT.map(lambda t: f"[{t}]"))
    key_value = st.builds(lambda o, v, sp: f"{o.name}{sp}={sp}{v}", st.sampled_from(FREE),
                          st.deferred(lambda: st.sampled_from(FREE).flatmap(option_value)), st.sampled_from(["", " "]))
    line = st.one_of(section, key_value, key_value, ANY_TEXT.map(lambda t: "# " + t), st.just(""), ANY_TEXT)
    lines = draw(st.lists(line, max_size=12))
    data = "\n".join(lines).encode("utf-8", "surrogateescape")
    if draw(st.integers(0, 4)) == 0:
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.binary(min_size=1, max_size=4)) + data[at:]
    return data


SEGMENT_SIZE = 1 << 20


@st.composite
def wal_files(draw, system_id: int) -> tuple[str, bytes]:
    """A WAL file name and content: a well-formed 1 MiB segment at times, else headers that lie
    (magic, flags, system identifier, size, page address) or plain garbage."""
    name = draw(WAL_NAMES.filter(lambda n: n and "/" not in n and n not in (".", "..")))
    kind = draw(st.sampled_from(["segment", "header", "garbage", "history"]))
    if kind == "garbage":
        return name, draw(st.binary(max_size=64))
    if kind == "history":
        return name, draw(st.one_of(st.just(b"1\t0/3000000\tno recovery target specified\n"), st.binary(max_size=64)))
    magic = draw(st.one_of(st.just(0xD110), st.sampled_from(sorted(WAL_MAGIC)), st.integers(0, 0xFFFF)))
    info = draw(st.sampled_from([0x0002, 0x0000, 0x0007]))
    sysid = draw(st.one_of(st.just(system_id), st.integers(0, 2**64 - 1)))
    seg_size = draw(st.sampled_from([SEGMENT_SIZE, 0, 3, 1 << 24, 2**32 - 1]))
    pageaddr = draw(st.sampled_from([0, SEGMENT_SIZE, 2 * SEGMENT_SIZE, 2**64 - 1]))
    header = struct.pack("<HHIQI4xQII", magic, info, 1, pageaddr, 0, sysid, seg_size, 8192)
    if kind == "segment":
        return name, header + bytes(SEGMENT_SIZE - len(header))
    return name, header + draw(st.binary(max_size=32))


STATUS_CONTENT = st.one_of(st.just(b""), st.just(b"0\nwarning text"), st.just(b"45\nduplicate"), st.just(b"1\nx"),
                           st.just(b"0\n"), st.just(b"999\nx"), st.just(b"-3\nx"), st.binary(max_size=40))
