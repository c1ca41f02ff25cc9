"""Entry point of pgpush.pyz: the zip's top-level ``__main__`` (see build_zipapp.py).

Runs under ``#!/usr/bin/python3 -IS``.  Stdlib only and cheap: the hot path is
answered by :func:`pgpush.__main__.main` straight from the zip (zipimport, legacy
``.pyc`` next to each ``.py``); the bundled third-party packages are made
importable by ``_pgpush_bootstrap`` only when ``main`` calls ``bootstrap``.

In order: check that this host is one the file carries packages for (else one
``ERROR: [046]:`` line, see :func:`host_problem`); install an excepthook that
shows source lines; put this zip first on sys.path (absolute);
``sys.exit(pgpush.__main__.main(bootstrap=_bootstrap, bundle=...))``.

This file must still parse on any Python a host may start it with (the shebang
is /usr/bin/python3; RHEL 8's is 3.6, and ``python2 pgpush.pyz`` happens): no
annotations, no f-strings, no ``from __future__ import annotations``, and pgpush
itself is imported only once the host is known to be supported.
"""

import os
import sys

# What this file carries: {machine: (oldest glibc, ((minor, oldest micro) of each CPython 3.x))}.  The line is
# rewritten by build_zipapp.py (a file built for one machine names only that one); keep it on one line.
BUNDLED = {"x86_64": ((2, 17), ((9, 2), (10, 0), (11, 0), (12, 0), (13, 0))), "aarch64": ((2, 17), ((9, 2), (10, 0), (11, 0), (12, 0), (13, 0)))}
# pgpush.errors.HostNotSupportedError.code: that module cannot be imported on every host this check meets.
HOST_ERROR_CODE = 46
# What os.uname() says on hosts whose wheels are the aarch64 ones (macOS says arm64, but is not Linux).
MACHINE_ALIASES = {"arm64": "aarch64"}


def host_problem(version, machine, platform, libc, implementation, bundled=None, abiflags=""):
    """Why this host cannot run this file (one line), or None when it can.

    ``version`` is ``sys.version_info``, ``machine`` ``os.uname().machine``, ``platform`` ``sys.platform``,
    ``libc`` the ``CS_GNU_LIBC_VERSION`` confstr ("glibc 2.36", None elsewhere), ``implementation``
    ``sys.implementation.name``, ``abiflags`` ``sys.abiflags`` ("t": a free-threaded build, whose compiled
    modules are another ABI, ``cp313t``, than the bundled ones): cheap to get (no ``platform`` module), and
    injected by the unit tests.
    """
    bundled = BUNDLED if bundled is None else bundled
    machine = MACHINE_ALIASES.get(machine, machine)
    minors = sorted(set(minor for _glibc, pythons in bundled.values() for minor, _micro in pythons))
    machines = [m for m in ("x86_64", "aarch64") if m in bundled] + sorted(m for m in bundled if m not in ("x86_64", "aarch64"))
    need = "pgpush runs on CPython 3.%d-3.%d on %s" % (minors[0], minors[-1], " or ".join(machines))
    name = {"cpython": "CPython", "pypy": "PyPy"}.get(implementation, implementation)
    threads = " (free-threaded)" if "t" in (abiflags or "") else ""
    this = "this is %s %s%s on %s" % (name, ".".join(str(v) for v in tuple(version)[:3]), threads, machine)
    if platform != "linux" and not platform.startswith("linux"):
        return need + " Linux; " + this + " (" + platform + ")"
    if implementation != "cpython" or machine not in bundled:
        other = [m for m in ("x86_64", "aarch64") if m == machine and m not in bundled]
        hint = "; copy pgpush-%s.pyz onto this host instead" % other[0] if other else ""
        return need + "; " + this + hint
    glibc, pythons = bundled[machine]
    micros = dict(pythons)
    too_old = version[0] == 3 and version[1] in micros and version[2] < micros[version[1]]
    if version[0] != 3 or version[1] not in micros or too_old or threads:
        if too_old:
            need += " (3.%d.%d or later)" % (version[1], micros[version[1]])
        return need + "; " + this
    have = _glibc_version(libc)
    if have is None or have < tuple(glibc):
        what = "glibc " + ".".join(str(v) for v in have) if have is not None else "no glibc (%s)" % (libc or "not GNU libc")
        return need + " with glibc %s or later; %s with %s" % (".".join(str(v) for v in glibc), this, what)
    return None


def _glibc_version(libc):
    """(2, 36) from "glibc 2.36"; None for anything else."""
    try:
        kind, number = libc.split()
        if kind != "glibc":
            return None
        return tuple(int(part) for part in number.split(".")[:2])
    except (AttributeError, ValueError):
        return None


def _libc():
    try:
        return os.confstr("CS_GNU_LIBC_VERSION")
    except (AttributeError, ValueError, OSError):
        return None


def bundle_key(version, machine):
    """The name of the dependency set for this interpreter and machine, e.g. ``cp311-x86_64``."""
    return "cp%d%d-%s" % (version[0], version[1], MACHINE_ALIASES.get(machine, machine))


def _check_host():
    """Refuse an unsupported host with one ERROR line and its code: also on the hot path, before any import."""
    machine = os.uname()[4]
    implementation = getattr(getattr(sys, "implementation", None), "name", "cpython")
    problem = host_problem(sys.version_info, machine, sys.platform, _libc(), implementation,
                           abiflags=getattr(sys, "abiflags", ""))
    if problem is None:
        return bundle_key(sys.version_info, machine)
    try:
        sys.stderr.write("ERROR: [%03d]: %s\n" % (HOST_ERROR_CODE, problem))
        sys.stderr.flush()
    except Exception:  # noqa: BLE001 - no console: the exit status still says it
        pass
    sys.exit(HOST_ERROR_CODE)


def _bootstrap():
    import _pgpush_bootstrap

    try:
        _pgpush_bootstrap.bootstrap(key=_BUNDLE)
        return
    except _pgpush_bootstrap.HostError as exc:
        from pgpush.errors import HostNotSupportedError as error  # 046, like the host check
        message = str(exc)
    except _pgpush_bootstrap.BootstrapError as exc:
        from pgpush.errors import PathCreateError as error  # reported by the guarded entry, as 047
        message = str(exc)
    raise error(message)  # outside the except clause: no context to chain (and no `from None`, a 2.7 syntax error)


def _archive_first():
    """Put this zip, as an absolute path, first on sys.path.

    Python puts ``sys.argv[0]`` as given there; a relative entry would break the
    lazy imports of a process that changes its directory.  zipimport keys its
    table of contents by the path string, so rather than reading the directory
    of the zip a second time we give it a copy keyed by the absolute path.
    """
    archive = os.path.dirname(__file__)
    absolute = os.path.abspath(archive)
    if sys.path[:1] == [absolute]:
        return
    if archive != absolute:
        try:
            import zipimport

            toc = zipimport._zip_directory_cache.get(archive)
            if toc is not None and absolute not in zipimport._zip_directory_cache:
                prefix, cut = archive + os.sep, len(archive)
                copy = {}
                for key, entry in toc.items():
                    if not entry[0].startswith(prefix):
                        raise ValueError(entry[0])
                    copy[key] = (absolute + entry[0][cut:],) + entry[1:]
                zipimport._zip_directory_cache[absolute] = copy
        except Exception:  # noqa: BLE001 - an optimisation only: zipimport then reads the directory again
            pass
    sys.path[:] = [absolute] + [p for p in sys.path if p not in (archive, absolute)]


def _excepthook(*exc_info):
    """The interpreter's own traceback printer cannot read source lines from a zip; traceback can."""
    import traceback

    traceback.print_exception(*exc_info)


_BUNDLE = None

if __name__ == "__main__":
    _BUNDLE = _check_host()
    sys.excepthook = _excepthook
    _archive_first()
    from pgpush.__main__ import main

    sys.exit(main(bootstrap=_bootstrap, bundle=_BUNDLE))
