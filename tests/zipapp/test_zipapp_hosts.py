"""One file on every supported host: each installed CPython runs the zipapp with its own bundled set; any other
interpreter gets one ``ERROR: [046]:`` line; the aarch64 file carries every compiled module for every version.

The interpreters are whatever this machine has (python3.X on PATH, pyenv's); a missing one is skipped.  The
aarch64 file cannot run here (no arm64 emulation is assumed): its completeness is proven from its content, the
ELF header of each compiled module included (README, "Install on a database host").
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
import subprocess
import zipfile
from pathlib import Path

import pytest
from zipapp_helpers import CLEAN_ENV, interpreters

from pgpush import __version__, wal
from pgpush.repo.repository import Repository
from pgpush.storage.posix import PosixStorage

pytestmark = pytest.mark.xdist_group("zipapp")

INSTALLED = interpreters()
SUPPORTED = ["3.9", "3.10", "3.11", "3.12", "3.13"]
UNSUPPORTED = ["2.7", "3.6", "3.7", "3.8", "3.14"]
SYSTEM_ID = 7000000000000000042
SEG_SIZE = 16 << 20
NAME = "000000010000000000000001"  # its page address: SEG_SIZE (segment 1)
ELF_MACHINE = {"x86_64": 62, "aarch64": 183}


def _segment() -> bytes:
    """A PostgreSQL 15 WAL segment as push reads it: long page header, then not-all-zero pages."""
    header = struct.pack(wal.LONG_HEADER_FORMAT, 0xD110, wal.XLP_LONG_HEADER, 1, SEG_SIZE, 0, SYSTEM_ID, SEG_SIZE, 8192)
    body = b"".join(hashlib.sha256(b"%d" % i).digest() * 8 for i in range(4096))  # 1 MiB, compressible a little
    return (header + body + bytes(SEG_SIZE))[:SEG_SIZE]


def _installed(minor: str) -> str:
    exe = INSTALLED.get(minor)
    if not exe:
        pytest.skip(f"no CPython {minor} installed on this machine")
    return exe


@pytest.mark.parametrize("minor", SUPPORTED)
def test_each_supported_cpython_runs_version_and_a_push_get_round_trip(zipapp: Path, tmp_path: Path, minor: str):
    exe = _installed(minor)
    env = {**CLEAN_ENV, "HOME": "/nonexistent", "PGPUSH_CACHE": str(tmp_path / "cache")}
    key = f"cp{minor.replace('.', '')}-x86_64"
    proc = subprocess.run([exe, str(zipapp), "version"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert re.fullmatch(rf"pgpush {re.escape(__version__)} \(CPython {re.escape(minor)}\.\d+, x86_64, bundle {key}\)\n",
                        proc.stdout)

    repo = tmp_path / "repo"
    Repository(PosixStorage(str(repo)), "main").stanza_create(SYSTEM_ID, 15)
    (tmp_path / "pg_wal").mkdir()
    data = _segment()
    (tmp_path / "pg_wal" / NAME).write_bytes(data)
    common = [exe, str(zipapp), "--stanza=main", f"--repo1-path={repo}", f"--log-path={tmp_path / 'log'}",
              "--compress-type=zst"]
    push = subprocess.run([*common, "push", f"pg_wal/{NAME}"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert (push.returncode, push.stderr) == (0, ""), push.stderr
    stored = list((repo / "archive").rglob(f"{NAME}-*"))
    assert len(stored) == 1 and stored[0].stat().st_size < SEG_SIZE  # compressed by the bundled zstandard
    get = subprocess.run([*common, "get", NAME, "pg_wal/RECOVERYXLOG"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=120)
    assert (get.returncode, get.stderr) == (0, ""), get.stderr
    assert (tmp_path / "pg_wal" / "RECOVERYXLOG").read_bytes() == data
    extracted = sorted(p.name for p in (tmp_path / "cache").iterdir() if not p.name.startswith("."))
    assert len(extracted) == 1 and extracted[0].startswith(key + "-")  # only this interpreter's set


@pytest.mark.parametrize("minor", UNSUPPORTED)
def test_an_unsupported_interpreter_gets_one_046_line_on_the_hot_path_too(zipapp: Path, tmp_path: Path, minor: str):
    exe = _installed(minor)
    env = {**CLEAN_ENV, "HOME": "/nonexistent", "PGPUSH_CACHE": str(tmp_path / "cache")}
    version = ".".join(str(v) for v in json.loads(subprocess.run(
        [exe, "-c", "import sys, json; print(json.dumps(list(sys.version_info[:3])))"],
        capture_output=True, text=True, check=True).stdout))
    # `version` and an async push answered from the spool would both work without the bundle: the
    # check must come first all the same.
    spool = tmp_path / "spool"
    (spool / "archive" / "main" / "out").mkdir(parents=True)
    (spool / "archive" / "main" / "out" / f"{NAME}.ok").write_text("")
    for argv in (["version"], ["--stanza=main", "--archive-async", f"--spool-path={spool}", "push", f"pg_wal/{NAME}"]):
        proc = subprocess.run([exe, str(zipapp), *argv], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=60)
        assert (proc.returncode, proc.stdout) == (46, ""), proc.stderr
        assert proc.stderr == (f"ERROR: [046]: pgpush runs on CPython 3.9-3.13 on x86_64; "
                               f"this is CPython {version} on x86_64\n")
    assert not (tmp_path / "cache").exists()


def test_the_aarch64_file_on_an_x86_64_host_says_which_file_to_copy(aarch64_zipapp: Path):
    proc = subprocess.run([str(aarch64_zipapp), "version"], env={**CLEAN_ENV, "HOME": "/nonexistent"},
                          capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stdout) == (46, "")
    assert re.fullmatch(r"ERROR: \[046\]: pgpush runs on CPython 3\.9-3\.13 on aarch64; this is CPython 3\.\d+\.\d+ "
                        r"on x86_64; copy pgpush-x86_64\.pyz onto this host instead\n", proc.stderr)


def _elf_machine(data: bytes) -> int:
    assert data[:4] == b"\x7fELF" and data[4] == 2 and data[5] == 1, "not a 64-bit little-endian ELF"
    return struct.unpack_from("<H", data, 18)[0]


@pytest.mark.parametrize("machine", ["aarch64", "x86_64"])
def test_every_set_carries_every_compiled_module_for_its_version_and_machine(zipapp: Path, aarch64_zipapp: Path,
                                                                              machine: str):
    """Each set's groups hold the same compiled modules (those of x86_64 cp311, the one the other tests run),
    each built for that set: ``cpython-3X-<machine>-linux-gnu`` or ``abi3``, and an ELF of that machine."""
    path = aarch64_zipapp if machine == "aarch64" else zipapp
    with zipfile.ZipFile(zipapp) as zf:
        reference = json.loads(zf.read("pgpush_build.json"))["sets"]["cp311-x86_64"]
    with zipfile.ZipFile(path) as zf:
        info = json.loads(zf.read("pgpush_build.json"))
        assert info["machines"] == [machine]
        assert sorted(info["sets"]) == sorted(f"cp3{m}-{machine}" for m in range(9, 14))
        contents = {}
        for group, entry in info["groups"].items():
            with zf.open(entry["member"]) as raw, zipfile.ZipFile(raw) as inner:
                contents[group] = {n: inner.read(n) for n in inner.namelist() if n.endswith(".so")}
                assert inner.testzip() is None
    assert reference["extensions"], "no compiled module in the reference set"
    for key, entry in info["sets"].items():
        minor = key[2:].split("-")[0]  # "311" of cp311-x86_64, as in cpython-311-...
        assert entry["installed"] == reference["installed"], key  # one version of each package everywhere
        found = {}
        for group in entry["groups"]:
            for name, data in contents[group].items():
                m = re.fullmatch(r"(.+?)\.(cpython-(\d+)-([a-z0-9_]+)-linux-gnu|abi3)\.so", name)
                assert m, f"{key}: {name} is no extension module of CPython"
                if m.group(2) != "abi3":
                    assert (m.group(3), m.group(4)) == (minor, machine), f"{key}: {name}"
                assert _elf_machine(data) == ELF_MACHINE[machine], f"{key}: {name}"
                found[m.group(1)] = name
        assert sorted(found) == reference["extensions"] == entry["extensions"], key
