#!/usr/bin/env python3
"""Build ``dist/pgpush.pyz``: one executable file, run by the system python.

    python build_zipapp.py [--output dist/pgpush.pyz] [--layout dir|nested]
    python build_zipapp.py --empty [--output dist/empty.pyz]

Layout of the zip (shebang ``#!/usr/bin/python3 -IS``, mode 0755)::

    __main__.py, __main__.pyc        ours (zipapp_root/): sys.path, then pgpush.__main__.main(bootstrap=...)
    _pgpush_bootstrap.py, .pyc       ours (zipapp_root/): extracts site-packages into a cache, only when needed
    pgpush_build.json                name, version, build_id, layout, python, pinned dependencies
    pgpush/...                       the package, ``x.py`` + ``x.pyc`` side by side (zipimport's legacy layout)
    site-packages/...                third-party dependencies, as packed by shiv (``--layout dir``)
    site-packages.zip                the same, as one stored member (``--layout nested``, default)

zipimport reads the whole central directory of the zip at every start (about
6 us per entry, ~1,300 entries for the dependencies); ``--layout nested`` keeps
those entries out of it, for a faster hot path.

The ``.pyc`` files are compiled by the target interpreter (/usr/bin/python3, so
the magic number matches) as *unchecked-hash* pycs: zipimport then uses them
without comparing timestamps (zip timestamps are local time with 2 s precision)
and the build is reproducible.  The ``.py`` files are kept for tracebacks.

Dependencies come from ``[project].dependencies`` of pyproject.toml when it
exists, else from :data:`DEFAULT_DEPENDENCIES`; they are installed with pip for
CPython 3.11 manylinux wheels (``--only-binary=:all:``), pinned to the versions
installed in the build interpreter (the project's venv) when it has them.  shiv
packs them (``shiv.builder.create_archive``) and computes the build id, the
sha256 of their content, which keys the extraction cache at run time.

Timestamps are ``SOURCE_DATE_EPOCH`` (default: shiv's, 1980), so two builds of
the same sources and dependency versions give the same bytes.
"""

from __future__ import annotations

import argparse
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
TARGET_VERSION = "3.11"
SHEBANG = f"#!{TARGET_PYTHON} -IS\n"
DEFAULT_OUTPUT = ROOT / "dist" / "pgpush.pyz"
DEFAULT_EMPTY_OUTPUT = ROOT / "dist" / "empty.pyz"
DEFAULT_PLATFORM = "manylinux2014_x86_64"
DEFAULT_DEPENDENCIES = ["paramiko", "typer", "rich", "psycopg[binary]", "zstandard", "lz4", "zlib-ng"]
BUILD_INFO = "pgpush_build.json"
TRACEBACK_PREFIX = "pgpush.pyz"
SOURCE_DATE_EPOCH_DEFAULT = 315554400  # as shiv.constants
# Not needed at run time; `bin/` scripts also carry the build interpreter's path.
PRUNE = ("bin",)
# Installed as dependencies but never used by pgpush: paramiko imports invoke (and with it
# asyncio, unittest.mock, yaml) only to run ssh_config `Match exec`, and pgpush reads no
# ssh_config.  Without it paramiko imports in 90 ms instead of 155: every synchronous
# push/get, and every worker, starts that much sooner.
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


def log(message: str) -> None:
    print(f"build_zipapp: {message}", file=sys.stderr, flush=True)


def ensure_shiv() -> None:
    """Re-run with the project's venv when this interpreter has no shiv."""
    try:
        import shiv  # noqa: F401
    except ImportError:
        venv_python = ROOT / ".venv" / "bin" / "python"
        if venv_python.exists() and not os.environ.get("PGPUSH_BUILD_REEXEC"):
            os.environ["PGPUSH_BUILD_REEXEC"] = "1"
            os.execv(str(venv_python), [str(venv_python), str(Path(__file__).resolve()), *sys.argv[1:]])
        sys.exit("build_zipapp: shiv is not installed (pip install shiv, or use .venv/bin/python)")


def source_epoch() -> int:
    """``SOURCE_DATE_EPOCH``, else shiv's default (1980-01-01): the timestamp of every entry."""
    return int(os.environ.get("SOURCE_DATE_EPOCH", SOURCE_DATE_EPOCH_DEFAULT))


def zip_time(epoch: int) -> tuple[int, int, int, int, int, int]:
    return time.gmtime(epoch)[:6]


def package_version() -> str:
    text = (ROOT / PACKAGE / "__init__.py").read_text(encoding="utf-8")
    m = re.search(r"""^__version__\s*=\s*["']([^"']+)["']""", text, re.M)
    if not m:
        sys.exit(f"build_zipapp: no __version__ in {PACKAGE}/__init__.py")
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


def venv_pins() -> dict[str, str]:
    """``name==version`` of what the build interpreter has installed (only in a venv)."""
    if sys.prefix == sys.base_prefix:
        return {}
    from importlib import metadata

    pins = {}
    for dist in metadata.distributions():
        name, version = dist.metadata["Name"], dist.version
        if name and version and canonical(name) != PACKAGE:
            pins[canonical(name)] = f"{name}=={version}"
    return pins


def check_target_python() -> None:
    out = subprocess.run(
        [TARGET_PYTHON, "-IS", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    if out != TARGET_VERSION:
        sys.exit(f"build_zipapp: {TARGET_PYTHON} is Python {out}, the zipapp is built for {TARGET_VERSION}")


def pip_install(deps: list[str], target: Path, platform: str, pin: bool, work: Path) -> None:
    from shiv import pip as shiv_pip

    base = [
        "--target", str(target), "--quiet", "--no-compile", "--no-warn-script-location",
        "--only-binary=:all:", "--implementation", "cp", "--python-version", TARGET_VERSION,
        "--abi", "cp" + TARGET_VERSION.replace(".", ""), "--platform", platform,
    ]
    pins = venv_pins() if pin else {}
    if pins:
        constraints = work / "constraints.txt"
        constraints.write_text("\n".join(sorted(pins.values())) + "\n", encoding="utf-8")
        try:
            shiv_pip.install([*base, "--constraint", str(constraints), *deps])
            return
        except SystemExit:
            log("pip failed with the venv's versions as constraints; retrying without them")
            shutil.rmtree(target, ignore_errors=True)
    shiv_pip.install([*base, *deps])


def prune(site_packages: Path) -> None:
    for name in PRUNE:
        shutil.rmtree(site_packages / name, ignore_errors=True)
    for dist in PRUNE_DISTRIBUTIONS:
        shutil.rmtree(site_packages / dist, ignore_errors=True)
        for info in site_packages.glob(f"{dist}-*.dist-info"):
            shutil.rmtree(info, ignore_errors=True)
    for cache in sorted(site_packages.rglob("__pycache__"), reverse=True):
        shutil.rmtree(cache, ignore_errors=True)


def installed_versions(site_packages: Path) -> dict[str, str]:
    out = {}
    for meta in sorted(site_packages.glob("*.dist-info/METADATA")):
        fields = dict(
            line.split(": ", 1) for line in meta.read_text(encoding="utf-8").splitlines()[:10] if ": " in line
        )
        if "Name" in fields and "Version" in fields:
            out[fields["Name"]] = fields["Version"]
    return out


def shiv_archive(site_packages: Path, target: Path, epoch: int) -> str:
    """Pack site-packages with shiv; return shiv's build id (sha256 of the content)."""
    import shiv
    from shiv import builder
    from shiv.bootstrap.environment import Environment
    from shiv.constants import BUILD_AT_TIMESTAMP_FORMAT

    env = Environment(
        built_at=datetime.fromtimestamp(epoch, UTC).strftime(BUILD_AT_TIMESTAMP_FORMAT),
        shiv_version=shiv.__version__,
        compile_pyc=False,
        reproducible=True,
    )
    builder.create_archive(
        [site_packages], target=target, interpreter=TARGET_PYTHON, main="_bootstrap:bootstrap",
        env=env, compressed=True,
    )
    assert env.build_id
    return env.build_id


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


def compile_pycs(files: list[tuple[str, Path]], work: Path) -> dict[str, bytes]:
    """Legacy pycs (``x.pyc`` for ``x.py``) compiled by the target interpreter, by name in the zip.

    Tracebacks show ``pgpush.pyz/pgpush/x.py`` (the same whatever the output name, for reproducibility);
    the source line is still found, through the zipimporter's get_source.
    """
    jobs = {}
    for arcname, path in files:
        if arcname.endswith(".py"):
            cfile = work / "pyc" / (arcname + "c")
            cfile.parent.mkdir(parents=True, exist_ok=True)
            jobs[arcname + "c"] = (str(path), str(cfile), f"{TRACEBACK_PREFIX}/{arcname}")
    subprocess.run([TARGET_PYTHON, "-IS", "-c", _COMPILE], input=json.dumps(list(jobs.values())), text=True,
                   check=True)
    return {name: Path(job[1]).read_bytes() for name, job in jobs.items()}


def write_entry(zf: zipfile.ZipFile, name: str, data: bytes, date_time, mode: int = 0o644,
                compress: int = zipfile.ZIP_STORED) -> None:
    info = zipfile.ZipInfo(name, date_time=date_time)
    info.compress_type = compress
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


def build(output: Path, layout: str, platform: str, pin: bool) -> dict:
    check_target_python()
    epoch = source_epoch()
    date_time = zip_time(epoch)
    deps = read_dependencies()
    version = package_version()
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="pgpush-build-") as tmpdir:
        work = Path(tmpdir)
        site_packages = work / "site-packages"
        site_packages.mkdir()
        t0 = time.monotonic()
        if deps:
            log(f"pip install {' '.join(deps)}")
            pip_install(deps, site_packages, platform, pin, work)
        prune(site_packages)
        t1 = time.monotonic()
        log(f"installed in {t1 - t0:.1f} s; packing with shiv")
        deps_zip = work / "deps.pyz"
        build_id = shiv_archive(site_packages, deps_zip, epoch)
        t2 = time.monotonic()
        files = package_files()
        pycs = compile_pycs(files, work)
        info = {
            "name": PACKAGE,
            "version": version,
            "build_id": build_id,
            "built_at": datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "layout": layout,
            "python": TARGET_VERSION,
            "platform": platform,
            "requirements": deps,
            "installed": installed_versions(site_packages),
        }
        tmp = output.with_name(f".{output.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(SHEBANG.encode())
                # Our own files are stored, not deflated: the hot path then needs no zlib.
                with zipfile.ZipFile(f, "w") as zf:
                    for arcname, path in files:
                        mode = 0o644
                        write_entry(zf, arcname, path.read_bytes(), date_time, mode)
                        if arcname + "c" in pycs:
                            write_entry(zf, arcname + "c", pycs[arcname + "c"], date_time, mode)
                    write_entry(zf, BUILD_INFO, (json.dumps(info, indent=1, sort_keys=True) + "\n").encode(),
                                date_time)
                    copy_site_packages(deps_zip, zf, layout, work, date_time)
            finish(tmp, output)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        log(f"shiv {t2 - t1:.1f} s, zip {time.monotonic() - t2:.1f} s")
    return info


def copy_site_packages(deps_zip: Path, zf: zipfile.ZipFile, layout: str, work: Path, date_time) -> None:
    """Copy shiv's ``site-packages/`` entries (not its __main__/_bootstrap) into ``zf``."""
    prefix = "site-packages/"
    with zipfile.ZipFile(deps_zip) as src:
        members = [i for i in src.infolist() if i.filename.startswith(prefix)]
        if layout == "dir":
            for info in members:
                zf.writestr(info, src.read(info))
            return
        inner = work / "site-packages.zip"
        with zipfile.ZipFile(inner, "w") as dst:
            for info in members:
                data = src.read(info)
                info.filename = info.filename[len(prefix):]
                dst.writestr(info, data)
    write_entry(zf, "site-packages.zip", inner.read_bytes(), date_time)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", "-o", type=Path, help="default: dist/pgpush.pyz (dist/empty.pyz with --empty)")
    parser.add_argument("--empty", action="store_true", help="an empty __main__.py: the floor for start-up time")
    parser.add_argument("--layout", choices=("dir", "nested"), default="nested",
                        help="dependencies as site-packages/ entries or one site-packages.zip member (default: reading 1,300 zip entries costs ~7 ms a call)")
    parser.add_argument("--platform", default=DEFAULT_PLATFORM, help=f"pip --platform (default {DEFAULT_PLATFORM})")
    parser.add_argument("--no-pin", dest="pin", action="store_false",
                        help="do not pin dependencies to the versions installed in the build venv")
    args = parser.parse_args(argv)
    start = time.monotonic()
    if args.empty:
        output = args.output or DEFAULT_EMPTY_OUTPUT
        build_empty(output)
        detail = "empty __main__.py"
    else:
        ensure_shiv()
        output = args.output or DEFAULT_OUTPUT
        info = build(output, args.layout, args.platform, args.pin)
        detail = f"pgpush {info['version']}, build id {info['build_id'][:16]}, layout {info['layout']}"
    size = output.stat().st_size
    print(f"{output} {size} bytes ({size / 1e6:.1f} MB; {detail}; {time.monotonic() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
