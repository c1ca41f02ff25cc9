"""The zipapp's host check (zipapp_root/__main__.py), with the host's facts injected.

The real runs (other interpreters installed here, the aarch64 file on this x86_64 machine) are in
tests/zipapp/test_zipapp_hosts.py; here every kind of host, whatever this machine is.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from pgpush.errors import HostNotSupportedError, exit_code_for

ROOT = Path(__file__).resolve().parents[2]
HEAD = "pgpush runs on CPython 3.9-3.13 on x86_64 or aarch64"


@pytest.fixture(scope="module")
def entry(load_zipapp_file):
    return load_zipapp_file("__main__.py")


def check(entry, version=(3, 11, 2), machine="x86_64", platform="linux", libc="glibc 2.36", impl="cpython", bundled=None):
    return entry.host_problem(version, machine, platform, libc, impl, bundled)


@pytest.mark.parametrize("version", [(3, 9, 2), (3, 9, 18), (3, 10, 0), (3, 11, 2), (3, 12, 1), (3, 13, 5)])
@pytest.mark.parametrize("machine", ["x86_64", "aarch64", "arm64"])
def test_supported_hosts_pass(entry, version, machine):
    assert check(entry, version, machine) is None


@pytest.mark.parametrize(("version", "machine", "platform", "libc", "impl", "message"), [
    ((3, 8, 10), "ppc64le", "linux", "glibc 2.31", "cpython", f"{HEAD}; this is CPython 3.8.10 on ppc64le"),
    ((3, 8, 10), "x86_64", "linux", "glibc 2.31", "cpython", f"{HEAD}; this is CPython 3.8.10 on x86_64"),
    ((3, 14, 0), "aarch64", "linux", "glibc 2.41", "cpython", f"{HEAD}; this is CPython 3.14.0 on aarch64"),
    ((3, 6, 8), "x86_64", "linux", "glibc 2.28", "cpython", f"{HEAD}; this is CPython 3.6.8 on x86_64"),
    ((2, 7, 18), "x86_64", "linux2", "glibc 2.17", "cpython", f"{HEAD}; this is CPython 2.7.18 on x86_64"),
    ((3, 9, 1), "x86_64", "linux", "glibc 2.31", "cpython", f"{HEAD} (3.9.2 or later); this is CPython 3.9.1 on x86_64"),
    ((3, 11, 2), "s390x", "linux", "glibc 2.36", "cpython", f"{HEAD}; this is CPython 3.11.2 on s390x"),
    ((3, 10, 14), "x86_64", "linux", "glibc 2.36", "pypy", f"{HEAD}; this is PyPy 3.10.14 on x86_64"),
    ((3, 11, 9), "arm64", "darwin", None, "cpython", f"{HEAD} Linux; this is CPython 3.11.9 on aarch64 (darwin)"),
    ((3, 12, 3), "x86_64", "linux", None, "cpython",
     f"{HEAD} with glibc 2.17 or later; this is CPython 3.12.3 on x86_64 with no glibc (not GNU libc)"),
    ((3, 9, 2), "x86_64", "linux", "glibc 2.12", "cpython",
     f"{HEAD} with glibc 2.17 or later; this is CPython 3.9.2 on x86_64 with glibc 2.12"),
])
def test_unsupported_hosts_get_one_line_saying_what_runs_and_what_this_is(entry, version, machine, platform, libc, impl,
                                                                          message):
    problem = check(entry, version, machine, platform, libc, impl)
    assert problem == message
    assert "\n" not in problem


@pytest.mark.parametrize("version", [(3, 13, 0), (3, 13, 5)])
def test_a_free_threaded_build_is_refused_up_front(entry, version):
    """python3.13t: the hot path would run, but no bundled compiled module is of its ABI (cp313t)."""
    problem = entry.host_problem(version, "x86_64", "linux", "glibc 2.41", "cpython", abiflags="t")
    assert problem == f"{HEAD}; this is CPython {'.'.join(map(str, version))} (free-threaded) on x86_64"
    assert entry.host_problem(version, "x86_64", "linux", "glibc 2.41", "cpython", abiflags="") is None


def test_a_file_for_one_machine_names_the_other_file(entry):
    bundled = {"aarch64": entry.BUNDLED["aarch64"]}
    assert check(entry, machine="x86_64", bundled=bundled) == (
        "pgpush runs on CPython 3.9-3.13 on aarch64; this is CPython 3.11.2 on x86_64; "
        "copy pgpush-x86_64.pyz onto this host instead")
    assert check(entry, machine="aarch64", bundled=bundled) is None


def test_the_code_is_the_documented_one_and_not_1(entry):
    assert entry.HOST_ERROR_CODE == HostNotSupportedError.code == exit_code_for(HostNotSupportedError("x")) == 46


def test_the_source_default_is_what_a_build_for_both_machines_writes(entry):
    """The build rewrites the BUNDLED line from PYTHONS, MACHINES and GLIBC: the unbuilt source says the same."""
    sys.path.insert(0, str(ROOT))
    try:
        import build_zipapp
    finally:
        sys.path.remove(str(ROOT))
    namespace: dict = {}
    source = build_zipapp.main_source(list(build_zipapp.MACHINES)).decode()
    exec(next(line for line in source.splitlines() if line.startswith("BUNDLED = ")), namespace)
    assert namespace["BUNDLED"] == entry.BUNDLED


def test_bundle_key(entry):
    assert entry.bundle_key((3, 9, 18), "x86_64") == "cp39-x86_64"
    assert entry.bundle_key((3, 13, 0), "arm64") == "cp313-aarch64"


def test_the_entry_parses_as_python_3_6(entry):
    """No f-string or 3.7+ syntax: an old /usr/bin/python3 must get the ERROR line, not a SyntaxError."""
    import ast

    source = (ROOT / "zipapp_root" / "__main__.py").read_text(encoding="utf-8")
    tree = ast.parse(source, feature_version=(3, 6))
    assert not [n for n in ast.walk(tree) if isinstance(n, ast.JoinedStr)]
    assert not [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module == "__future__"]
    assert not [n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.returns]  # 2.7 too
    assert not [n.arg for n in ast.walk(tree) if isinstance(n, ast.arg) and n.annotation]
