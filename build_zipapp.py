#!/usr/bin/env python3
"""Build ``dist/pgpush.pyz``: one executable file, run by the host's python3 (CPython 3.9 to 3.13).

    python build_zipapp.py [--output dist/pgpush.pyz] [--machine all|x86_64|aarch64]
    python build_zipapp.py --empty [--output dist/empty.pyz]

With ``--machine all`` (the default, what ``make zipapp`` runs) the build writes one file per machine,
``dist/pgpush-x86_64.pyz`` and ``dist/pgpush-aarch64.pyz`` (named after ``--output``), and ``--output``
itself as a copy of the x86_64 one: both machines in one file would weigh ~140 MB, over the 64 MB we
allow one file (README, "Install on a database host").  ``--machine x86_64`` writes only ``--output``.

Layout of the zip (shebang ``#!/usr/bin/python3 -IS``, mode 0755)::

    __main__.py, __main__.pyc        ours (zipapp_root/): the host check, sys.path, then pgpush.__main__.main()
    _pgpush_bootstrap.py, .pyc       ours (zipapp_root/): extracts the running interpreter's set, when needed
    pgpush_build.json                name, version, build id, pins, and the sets: which groups each one needs
    pgpush/...                       the package, ``x.py`` + ``x.pyc`` side by side (zipimport's legacy layout)
    site-packages/<group>.zip        third-party packages, one stored member per group of wheels

The dependencies are resolved for every (CPython version, machine) of :data:`PYTHONS` x :data:`MACHINES`:
a *set*, named ``cp311-x86_64``.  A wheel used by several sets is stored once: the wheels are grouped by
the sets that use them (``any``: all sets of the file, e.g. paramiko or rich; ``x86_64``: every version of
one machine, e.g. bcrypt's abi3 wheel; ``cp311-x86_64``: one set, e.g. psycopg-binary), and each group is
one member.  A set is the union of its groups; the bootstrap extracts only the running interpreter's.

Versions are pinned in :data:`PINS`, one version per distribution for every set (so that the code a 3.9
host runs is the code a 3.13 host runs), chosen to have a wheel for all ten sets; a resolution that needs
a distribution not pinned, or a pin without a wheel for a set, fails the build and names them.  Wheels
are fetched with ``pip download --only-binary=:all:`` into ``$XDG_CACHE_HOME/pgpush-build`` (else
``~/.cache/pgpush-build``); a resolution already done (same pins, requirements, platforms) is read back
from there without pip, and so are the group members already packed: a warm build is offline.

The ``.pyc`` files of pgpush are compiled by /usr/bin/python3 (3.11 on Debian 12, the build host) as
*unchecked-hash* pycs: zipimport uses them without comparing timestamps; other interpreters ignore them
(another magic number) and compile the source.  Timestamps are ``SOURCE_DATE_EPOCH`` (default 1980-01-01),
so two builds of the same sources and pins give the same bytes.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent
PACKAGE = "pgpush"
ZIPAPP_ROOT = ROOT / "zipapp_root"
TARGET_PYTHON = "/usr/bin/python3"
PYC_VERSION = "3.11"  # what /usr/bin/python3 of the build host (Debian 12) is: the pycs' magic number
SHEBANG = f"#!{TARGET_PYTHON} -IS\n"
DEFAULT_OUTPUT = ROOT / "dist" / "pgpush.pyz"
DEFAULT_EMPTY_OUTPUT = ROOT / "dist" / "empty.pyz"
BUILD_INFO = "pgpush_build.json"
TRACEBACK_PREFIX = "pgpush.pyz"
SOURCE_DATE_EPOCH_DEFAULT = 315554400  # 1980-01-01, the earliest a zip can say
GROUP_DIR = "site-packages/"
FORMAT = 2  # of the packed groups in the cache: bump when packing changes

# The CPython versions bundled, each resolved as its oldest micro release a host may have (cryptography
# excludes 3.9.0 and 3.9.1): the host check in zipapp_root/__main__.py refuses older micros.
PYTHONS = ("3.9.2", "3.10.0", "3.11.0", "3.12.0", "3.13.0")
MACHINES = ("x86_64", "aarch64")
# manylinux2014 (glibc 2.17): every pinned wheel has it, for both machines; RHEL 7 and later.
PLATFORMS = {m: (f"manylinux2014_{m}", f"manylinux_2_17_{m}") for m in MACHINES}
GLIBC = "2.17"
# Over this, one file per machine (see the module docstring).
MAX_ONE_FILE = 64 * 1024 * 1024

# Every distribution the bundle holds, one version for all ten sets.  Chosen by the newest release that
# still has wheels for CPython 3.9 on both machines: psycopg 3.3, typer 0.24, click 8.2 and pycparser 3
# need 3.10.  Raise a pin only when `make zipapp` (which checks every set) still passes.
PINS = (
    "annotated-doc==0.0.5",
    "bcrypt==5.0.0",
    "cffi==2.0.0",
    "click==8.1.8",
    "cryptography==51.0.1",
    "invoke==3.0.3",
    "lz4==4.4.5",
    "markdown-it-py==3.0.0",
    "mdurl==0.1.2",
    "paramiko==5.1.0",
    "psycopg==3.2.13",
    "psycopg-binary==3.2.13",
    "pycparser==2.23",
    "pygments==2.21.0",
    "pynacl==1.6.2",
    "rich==15.0.0",
    "shellingham==1.5.4",
    "typer==0.23.1",
    "typing-extensions==4.16.0",
    "zlib-ng==1.1.0",
    "zstandard==0.25.0",
)
DEFAULT_DEPENDENCIES = ["paramiko", "typer", "rich", "psycopg[binary]", "zstandard", "lz4", "zlib-ng"]
# Installed as dependencies but never used by pgpush: paramiko imports invoke (and with it asyncio,
# unittest.mock, yaml) only to run ssh_config `Match exec`, and pgpush reads no ssh_config.  Without it
# paramiko imports in 90 ms instead of 155: every synchronous push/get, and every worker, starts sooner.
PRUNE_DISTRIBUTIONS = ("invoke",)
SKIP_NAMES = ("__pycache__",)
SKIP_SUFFIXES = (".pyc", ".pyo", ".swp", "~")

# Run by the target interpreter: compile each (source, legacy pyc, name in tracebacks).
_COMPILE = """
import json, py_compile, sys
for src, cfile, dfile in json.load(sys.stdin):
    py_compile.compile(src, cfile=cfile, dfile=dfile, doraise=True,
                       invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
"""


class BuildError(Exception):
    """The build cannot go on; the message says what to do."""


def log(message: str) -> None:
    print(f"build_zipapp: {message}", file=sys.stderr, flush=True)


def source_epoch() -> int:
    """``SOURCE_DATE_EPOCH``, else 1980-01-01: the timestamp of every entry."""
    return int(os.environ.get("SOURCE_DATE_EPOCH", SOURCE_DATE_EPOCH_DEFAULT))


def zip_time(epoch: int) -> tuple[int, int, int, int, int, int]:
    return time.gmtime(max(epoch, SOURCE_DATE_EPOCH_DEFAULT))[:6]


def package_version() -> str:
    text = (ROOT / PACKAGE / "__init__.py").read_text(encoding="utf-8")
    m = re.search(r"""^__version__\s*=\s*["']([^"']+)["']""", text, re.M)
    if not m:
        raise BuildError(f"no __version__ in {PACKAGE}/__init__.py")
    return m.group(1)


def read_dependencies() -> list[str]:
    pyproject = ROOT / "pyproject.toml"
    if pyproject.is_file():
        import tomllib

        deps = tomllib.loads(pyproject.read_text(encoding="utf-8")).get("project", {}).get("dependencies")
        if deps is not None:
            return [str(d) for d in deps]
    return list(DEFAULT_DEPENDENCIES)


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pinned() -> dict[str, str]:
    """canonical name -> version, from :data:`PINS`."""
    out = {}
    for pin in PINS:
        name, _, version = pin.partition("==")
        out[canonical(name)] = version
    return out


def set_key(python: str, machine: str) -> str:
    major, minor = python.split(".")[:2]
    return f"cp{major}{minor}-{machine}"


def cache_root() -> Path:
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "pgpush-build"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_target_python() -> None:
    out = subprocess.run(
        [TARGET_PYTHON, "-IS", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    if out != PYC_VERSION:
        raise BuildError(f"{TARGET_PYTHON} is Python {out}; the pycs are compiled by a {PYC_VERSION} (Debian 12)")


# --- resolution -----------------------------------------------------------------------------------------------


def _pip_args(python: str, machine: str) -> list[str]:
    major, minor = python.split(".")[:2]
    args = ["--only-binary=:all:", "--implementation", "cp", "--python-version", python, "--abi", f"cp{major}{minor}"]
    for platform in PLATFORMS[machine]:
        args += ["--platform", platform]
    return args


def _pip_download(args: list[str], dest: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
                           "--dest", str(dest), *args], capture_output=True, text=True)


def _missing_wheels(python: str, machine: str, work: Path) -> list[str]:
    """After a failed resolution: the pins that have no wheel for this set (one pip call each)."""
    missing = []
    for pin in PINS:
        probe = Path(tempfile.mkdtemp(prefix="probe-", dir=work))
        if _pip_download(["--no-deps", *_pip_args(python, machine), pin], probe).returncode:
            missing.append(pin)
        shutil.rmtree(probe, ignore_errors=True)
    return missing


def resolve(python: str, machine: str, deps: list[str], cache: Path) -> list[Path]:
    """The wheels of one set, from the cache when this exact resolution was done before."""
    key = set_key(python, machine)
    recipe = json.dumps({"pins": PINS, "deps": deps, "python": python, "args": _pip_args(python, machine)},
                        sort_keys=True)
    lock = cache / "resolved" / f"{key}-{hashlib.sha256(recipe.encode()).hexdigest()[:16]}.json"
    pool = cache / "wheels"
    if lock.is_file():
        names = json.loads(lock.read_text(encoding="utf-8"))
        paths = [pool / name for name in names]
        if all(p.is_file() for p in paths):
            return paths
    pool.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"download-{key}-", dir=cache))
    try:
        constraints = work / "constraints.txt"
        constraints.write_text("\n".join(PINS) + "\n", encoding="utf-8")
        dest = work / "wheels"
        proc = _pip_download([*_pip_args(python, machine), "--constraint", str(constraints), *deps], dest)
        if proc.returncode:
            missing = _missing_wheels(python, machine, work)
            detail = (f"no wheel for {key} of: {', '.join(missing)}" if missing
                      else "pip could not resolve the pinned versions: " + _last_error(proc.stderr))
            raise BuildError(f"{detail} (pip download {' '.join(_pip_args(python, machine))}); "
                             "change the pins in build_zipapp.py PINS")
        names = sorted(p.name for p in dest.iterdir())
        pins = pinned()
        for name in names:
            dist, version = name.split("-")[:2]
            if pins.get(canonical(dist)) != version:
                raise BuildError(f"{key} needs {dist} {version}, which is not pinned (pinned: "
                                 f"{pins.get(canonical(dist), 'nothing')}); add it to build_zipapp.py PINS")
        for name in names:
            os.replace(dest / name, pool / name)
        lock.parent.mkdir(parents=True, exist_ok=True)
        lock.write_text(json.dumps(names) + "\n", encoding="utf-8")
        return [pool / name for name in names]
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _last_error(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("ERROR")]
    return " ".join(lines[-3:]) or stderr.strip()[-500:]


def resolve_all(keys: list[tuple[str, str]], deps: list[str], cache: Path) -> dict[str, list[Path]]:
    """Every set's wheels; pip runs two at a time (it mostly waits for the index)."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        futures = {set_key(p, m): pool.submit(resolve, p, m, deps, cache) for p, m in keys}
        return {key: future.result() for key, future in futures.items()}


# --- groups ---------------------------------------------------------------------------------------------------


def group_name(users: frozenset[str], keys: list[str], machines: list[str]) -> str:
    """``any``, a machine, a set, or (a wheel some but not all of a machine's sets use) the sets joined."""
    if users == frozenset(keys):
        return "any"
    for machine in machines:
        if users == frozenset(k for k in keys if k.endswith("-" + machine)):
            return machine
    return "+".join(sorted(users))


def group_wheels(sets: dict[str, list[Path]], machines: list[str]) -> dict[str, list[Path]]:
    """Group name -> its wheels: each wheel once, in the group of exactly the sets that use it."""
    users: dict[Path, set[str]] = {}
    for key, wheels in sets.items():
        for wheel in wheels:
            if canonical(wheel.name.split("-")[0]) not in PRUNE_DISTRIBUTIONS:
                users.setdefault(wheel, set()).add(key)
    keys = sorted(sets)
    groups: dict[str, list[Path]] = {}
    for wheel, who in users.items():
        groups.setdefault(group_name(frozenset(who), keys, machines), []).append(wheel)
    return {name: sorted(wheels, key=lambda p: p.name) for name, wheels in sorted(groups.items())}


def wheel_entries(wheel: Path) -> list[tuple[str, zipfile.ZipInfo]]:
    """``(path in site-packages, member)`` of a wheel, as pip would install it (no scripts, no pycs)."""
    out = []
    with zipfile.ZipFile(wheel) as zf:
        for info in zf.infolist():
            if info.is_dir():
                continue
            parts = info.filename.split("/")
            if parts[0].endswith(".data"):
                if len(parts) < 3 or parts[1] not in ("purelib", "platlib"):
                    continue  # scripts, headers, data: not used from a zipapp
                parts = parts[2:]
            if any(p in ("", ".", "..") for p in parts) or any(p in SKIP_NAMES for p in parts):
                continue
            if parts[-1].endswith((".pyc", ".pyo")):
                continue
            out.append(("/".join(parts), info))
    return out


def pack_group(wheels: list[Path], cache: Path, date_time: tuple[int, ...]) -> tuple[Path, list[str]]:
    """The group's member (a zip of its site-packages files, deflated), from the cache when packed before."""
    digest = hashlib.sha256(json.dumps([FORMAT, list(date_time), [sha256_file(w) for w in wheels]]).encode())
    packed = cache / "packed" / f"{digest.hexdigest()[:32]}.zip"
    entries = sorted((name, wheel, info) for wheel in wheels for name, info in wheel_entries(wheel))
    names = [name for name, _, _ in entries]
    duplicate = sorted({n for n in names if names.count(n) > 1}) if len(set(names)) != len(names) else []
    if duplicate:
        raise BuildError(f"two wheels install the same file(s): {duplicate[:5]}")
    if packed.is_file():
        return packed, names
    packed.parent.mkdir(parents=True, exist_ok=True)
    tmp = packed.with_name(f".{packed.name}.{os.getpid()}.tmp")
    with zipfile.ZipFile(tmp, "w") as dst:
        opened: dict[Path, zipfile.ZipFile] = {}
        try:
            for name, wheel, info in entries:
                src = opened.get(wheel) or opened.setdefault(wheel, zipfile.ZipFile(wheel))
                mode = (info.external_attr >> 16) & 0o777 or 0o644
                if name.endswith(".so"):
                    mode |= 0o755
                out = zipfile.ZipInfo(name, date_time=date_time)  # type: ignore[arg-type]
                out.compress_type = zipfile.ZIP_DEFLATED
                out.external_attr = (0o100000 | mode) << 16
                dst.writestr(out, src.read(info))
        finally:
            for zf in opened.values():
                zf.close()
    os.replace(tmp, packed)
    return packed, names


EXTENSION = re.compile(r"^(?P<module>.+?)\.(?P<tag>cpython-\d+-[a-z0-9_]+-linux-gnu|abi3)\.so$")


def extensions(names: list[str]) -> list[str]:
    """The compiled modules among ``names``, as ``path/module`` without their ABI tag."""
    return sorted(m.group("module") for m in map(EXTENSION.match, names) if m)


def wheel_version(wheel: Path) -> tuple[str, str]:
    dist, version = wheel.name.split("-")[:2]
    return dist, version


# --- the zip --------------------------------------------------------------------------------------------------


def package_files() -> list[tuple[str, Path]]:
    """``(name in the zip, path)`` of the top-level modules and the package, sorted."""
    files = [(p.name, p) for p in sorted(ZIPAPP_ROOT.glob("*.py"))]
    for path in sorted((ROOT / PACKAGE).rglob("*")):
        rel = path.relative_to(ROOT)
        if path.is_dir() or any(part in SKIP_NAMES or part.startswith(".") for part in rel.parts):
            continue
        if path.name.endswith(SKIP_SUFFIXES):
            continue
        files.append((rel.as_posix(), path))
    return files


BUNDLED_LINE = re.compile(r"^BUNDLED = .*$", re.M)


def main_source(machines: list[str]) -> bytes:
    """zipapp_root/__main__.py with its ``BUNDLED`` line saying what this file carries."""
    text = (ZIPAPP_ROOT / "__main__.py").read_text(encoding="utf-8")
    glibc = tuple(int(x) for x in GLIBC.split("."))
    minors = tuple(int(p.split(".")[1]) for p in PYTHONS)
    micros = tuple(int(p.split(".")[2]) for p in PYTHONS)
    bundled = {m: (glibc, tuple(zip(minors, micros))) for m in machines}
    new, count = BUNDLED_LINE.subn(lambda _m: f"BUNDLED = {bundled!r}", text)
    if count != 1:
        raise BuildError("zipapp_root/__main__.py has no (or several) 'BUNDLED = ...' line")
    return new.encode()


def compile_pycs(sources: dict[str, bytes], work: Path) -> dict[str, bytes]:
    """Legacy pycs (``x.pyc`` for ``x.py``) compiled by the target interpreter, by name in the zip.

    Tracebacks show ``pgpush.pyz/pgpush/x.py`` (the same whatever the output name, for reproducibility);
    the source line is still found, through the zipimporter's get_source.
    """
    jobs = {}
    for arcname, data in sources.items():
        if arcname.endswith(".py"):
            src = work / "src" / arcname
            src.parent.mkdir(parents=True, exist_ok=True)
            src.write_bytes(data)
            cfile = work / "pyc" / (arcname + "c")
            cfile.parent.mkdir(parents=True, exist_ok=True)
            jobs[arcname + "c"] = (str(src), str(cfile), f"{TRACEBACK_PREFIX}/{arcname}")
    subprocess.run([TARGET_PYTHON, "-IS", "-c", _COMPILE], input=json.dumps(list(jobs.values())), text=True,
                   check=True)
    return {name: Path(job[1]).read_bytes() for name, job in jobs.items()}


def write_entry(zf: zipfile.ZipFile, name: str, data: bytes, date_time: tuple[int, ...], mode: int = 0o644) -> None:
    info = zipfile.ZipInfo(name, date_time=date_time)  # type: ignore[arg-type]
    info.compress_type = zipfile.ZIP_STORED  # the hot path then needs no zlib
    info.external_attr = (0o100000 | mode) << 16
    zf.writestr(info, data)


def finish(tmp: Path, output: Path) -> None:
    tmp.chmod(0o755)
    os.replace(tmp, output)


def build_empty(output: Path) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(SHEBANG.encode())
        with zipfile.ZipFile(f, "w") as zf:
            write_entry(zf, "__main__.py", b"", zip_time(source_epoch()))
    finish(tmp, output)


def build(outputs: dict[Path, list[str]]) -> list[dict]:
    """Write each output with the sets of its machines; return their build infos."""
    check_target_python()
    epoch = source_epoch()
    date_time = zip_time(epoch)
    deps = read_dependencies()
    version = package_version()
    cache = cache_root()
    cache.mkdir(parents=True, exist_ok=True)
    all_machines = sorted({m for machines in outputs.values() for m in machines}, key=MACHINES.index)
    t0 = time.monotonic()
    log(f"resolving {len(PYTHONS) * len(all_machines)} sets (cache {cache})")
    wheels = resolve_all([(p, m) for m in all_machines for p in PYTHONS], deps, cache)
    t1 = time.monotonic()
    log(f"resolved in {t1 - t0:.1f} s")
    infos = []
    with tempfile.TemporaryDirectory(prefix="pgpush-build-") as tmpdir:
        work = Path(tmpdir)
        for output, machines in outputs.items():
            sets = {k: v for k, v in wheels.items() if k.rsplit("-", 1)[1] in machines}
            infos.append(write_zipapp(output, machines, sets, deps, version, epoch, date_time, cache, work / output.name))
    log(f"packed and written in {time.monotonic() - t1:.1f} s")
    return infos


def write_zipapp(output: Path, machines: list[str], sets: dict[str, list[Path]], deps: list[str], version: str,
                 epoch: int, date_time: tuple[int, ...], cache: Path, work: Path) -> dict:
    groups = group_wheels(sets, machines)
    members: dict[str, tuple[Path, list[str], str]] = {}
    for name, group in groups.items():
        packed, names = pack_group(group, cache, date_time)
        members[name] = (packed, names, sha256_file(packed))
    set_info = {}
    for key, set_wheels in sorted(sets.items()):
        mine = sorted(name for name, group in groups.items() if any(w in group for w in set_wheels))
        files = [n for g in mine for n in members[g][1]]
        if len(set(files)) != len(files):
            raise BuildError(f"{key}: two groups install the same file")
        set_id = hashlib.sha256(json.dumps([key, [members[g][2] for g in mine]]).encode()).hexdigest()
        set_info[key] = {
            "groups": mine,
            "dir": f"{key}-{set_id[:16]}",
            "installed": dict(sorted(wheel_version(w) for w in set_wheels
                                     if canonical(w.name.split("-")[0]) not in PRUNE_DISTRIBUTIONS)),
            "extensions": extensions(files),
        }
    build_id = hashlib.sha256(json.dumps(sorted((n, m[2]) for n, m in members.items())).encode()).hexdigest()
    info = {
        "name": PACKAGE,
        "version": version,
        "build_id": build_id,
        "built_at": datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "layout": "sets",
        "machines": machines,
        "pythons": list(PYTHONS),
        "glibc": GLIBC,
        "requirements": deps,
        "pins": list(PINS),
        "groups": {name: {"member": f"{GROUP_DIR}{name}.zip", "sha256": m[2],
                          "wheels": [w.name for w in groups[name]]} for name, m in members.items()},
        "sets": set_info,
    }
    sources = {arcname: path.read_bytes() for arcname, path in package_files()}
    sources["__main__.py"] = main_source(machines)
    pycs = compile_pycs(sources, work)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(SHEBANG.encode())
            with zipfile.ZipFile(f, "w") as zf:
                for arcname, data in sources.items():
                    write_entry(zf, arcname, data, date_time)
                    if arcname + "c" in pycs:
                        write_entry(zf, arcname + "c", pycs[arcname + "c"], date_time)
                write_entry(zf, BUILD_INFO, (json.dumps(info, indent=1, sort_keys=True) + "\n").encode(), date_time)
                for name, (packed, _names, _digest) in members.items():
                    write_entry(zf, f"{GROUP_DIR}{name}.zip", packed.read_bytes(), date_time)
        finish(tmp, output)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return info


def outputs_for(output: Path, machine: str) -> dict[Path, list[str]]:
    if machine != "all":
        return {output: [machine]}
    return {output.with_name(f"{output.stem}-{m}{output.suffix}"): [m] for m in MACHINES}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--output", "-o", type=Path, help="default: dist/pgpush.pyz (dist/empty.pyz with --empty)")
    parser.add_argument("--empty", action="store_true", help="an empty __main__.py: the floor for start-up time")
    parser.add_argument("--machine", choices=("all", *MACHINES), default="all",
                        help="all (default): one file per machine, OUTPUT-<machine>.pyz, and OUTPUT = the x86_64 one")
    args = parser.parse_args(argv)
    start = time.monotonic()
    if args.empty:
        output = args.output or DEFAULT_EMPTY_OUTPUT
        build_empty(output)
        print(f"{output} {output.stat().st_size} bytes (empty __main__.py)")
        return 0
    output = args.output or DEFAULT_OUTPUT
    outputs = outputs_for(output, args.machine)
    try:
        infos = build(outputs)
    except BuildError as exc:
        print(f"build_zipapp: error: {exc}", file=sys.stderr)
        return 2
    if args.machine == "all":
        x86 = next(p for p, machines in outputs.items() if machines == ["x86_64"])
        tmp = output.with_name(f".{output.name}.{os.getpid()}.tmp")
        shutil.copyfile(x86, tmp)
        finish(tmp, output)
    for (path, _machines), info in zip(outputs.items(), infos):
        size = path.stat().st_size
        print(f"{path} {size} bytes ({size / 1e6:.1f} MB; pgpush {info['version']}, build id {info['build_id'][:16]}, "
              f"sets {', '.join(info['sets'])})")
        if size > MAX_ONE_FILE:
            log(f"warning: {path} is over {MAX_ONE_FILE >> 20} MB")
    if args.machine == "all":
        print(f"{output}: a copy of the x86_64 file")
    print(f"built in {time.monotonic() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
