"""Make the third-party packages bundled in pgpush.pyz importable (stdlib only).

The zipapp carries pgpush's dependencies (paramiko, psycopg, zstandard, lz4,
typer, rich, ...) for every CPython version and machine it supports: one *set*
per (version, machine), e.g. ``cp311-x86_64``, made of *groups* stored once each
as ``site-packages/<group>.zip`` (``any``: pure-Python wheels; ``x86_64``: abi3
wheels of one machine; ``cp311-x86_64``: the compiled wheels of one set;
build_zipapp.py says more).  Native extensions cannot be imported from a zip,
so the first run that needs them extracts the running interpreter's set (its
groups, into one directory) once into a cache directory; later runs only put
the extracted directory on ``sys.path``.  The hot path (``version``, asynchronous
``push``/``get``) never calls :func:`bootstrap` and never imports this module.

Cache directory: the first of these candidates that is usable and safe wins.

1. ``$PGPUSH_CACHE`` if set and not empty (e.g. ``/var/cache/pgpush``);
2. ``$XDG_CACHE_HOME/pgpush`` (``XDG_CACHE_HOME`` must be absolute), else
   ``~/.cache/pgpush`` -- only when the home directory exists, belongs to the
   effective user and is writable: postgres' HOME (/var/lib/postgresql) may
   not be, and root run with someone else's HOME must not create root-owned
   files in it;
3. ``/tmp/pgpush-<uid>``;
4. when none of these is usable (e.g. another local user created ``/tmp/pgpush-<uid>``
   first), a private directory made for this process alone (``mkdtemp``: a new name, ours,
   0700), extracted into on every start and removed at exit -- slow, but never stuck; a
   warning says to set ``PGPUSH_CACHE``.  Those of processes killed before their exit
   clean-up are removed by the next private extraction.

A directory we create is created 0700.  "Safe" means: a real directory (a
symlink is accepted only for ``$PGPUSH_CACHE``), owned by the effective uid and
not writable by group or others.  A candidate that exists but is not safe is
skipped with a warning on stderr; one that cannot be created or written is
skipped silently.  If even the private directory fails, :class:`BootstrapError` says what
was tried.

Layout: ``<cache>/<set>-<id>/site-packages``, e.g. ``cp311-x86_64-3f0c...``,
where the id is the first 16 hex digits of the sha256 of the set's groups
(stored in ``pgpush_build.json`` at the zip root, as ``sets.<set>.dir``).  A
rebuild with the same dependencies reuses the extracted copy; new dependencies
get a new directory, and so does another interpreter on the same host.

Extraction is atomic: the tree is extracted into ``<cache>/.tmp-<id>-<pid>-<rnd>``
and renamed to ``<cache>/<id>``.  Concurrent first runs serialize on
``flock(<cache>/.lock-<id>)`` so only one extracts (the others wait, then find
the directory); if locking is impossible or takes over two minutes, each
process extracts into its own temporary directory and the losers of the rename
delete theirs and use the winner's.  Nothing is compiled at extraction: CPython
writes ``__pycache__`` on first import (the directory is ours and writable), so
only the first run pays for compiling the modules it actually uses.

Clean-up: temporary directories of interrupted extractions older than an hour,
or of the same set by a process that no longer exists, are removed by the next
extraction.  Directories of old build ids are left in place (a process of the
previous version may still be running from one); remove them by hand, e.g.
``rm -rf /tmp/pgpush-<uid>/<old id>``, each is ~75 MB.  The cache is not
fsync'ed: after a crash during the very first extraction, delete
``<cache>/<id>`` if imports fail.
"""

from __future__ import annotations

import os
import sys

BUILD_INFO = "pgpush_build.json"
MACHINE_ALIASES = {"arm64": "aarch64"}
LOCK_TIMEOUT = 120.0
STALE_TMP_AGE = 3600.0

_site_dir: str | None = None


class BootstrapError(Exception):
    """No cache directory could be used; the message says what was tried."""


class HostError(BootstrapError):
    """This file carries no set for the running interpreter (the zipapp's host check should have said so)."""


class _Unsafe(Exception):
    """A candidate cache directory exists but must not be used."""


def archive_path() -> str:
    """The path of the zipapp this module was imported from (absolute)."""
    archive = getattr(globals().get("__loader__"), "archive", None)
    if not archive:
        raise BootstrapError(f"{__name__} was not imported from the pgpush zipapp")
    return os.path.abspath(archive)


def _read_member(archive: str, name: str) -> bytes:
    loader = globals().get("__loader__")
    loader_archive = getattr(loader, "archive", None)
    if loader_archive and os.path.abspath(loader_archive) == archive:
        # zipimporter.get_data: no need to import zipfile for a small read.
        return loader.get_data(os.path.join(loader_archive, name))
    import zipfile

    with zipfile.ZipFile(archive) as zf:
        return zf.read(name)


def build_info(archive: str | None = None) -> dict:
    """The content of ``pgpush_build.json``: version, build id, sets, ..."""
    import json

    return json.loads(_read_member(archive or archive_path(), BUILD_INFO))


def cache_candidates() -> list[tuple[str, str]]:
    """``(directory, origin)`` in order of preference (see the module docstring)."""
    euid = os.geteuid()
    out: list[tuple[str, str]] = []
    env = os.environ.get("PGPUSH_CACHE")
    if env:
        out.append((os.path.abspath(env), "PGPUSH_CACHE"))
    home = os.environ.get("HOME")
    if not home:
        try:
            import pwd

            home = pwd.getpwuid(euid).pw_dir
        except (ImportError, KeyError):
            home = None
    if home and os.path.isabs(home):
        try:
            st = os.stat(home)
            usable = st.st_uid == euid and os.access(home, os.W_OK | os.X_OK)
        except OSError:
            usable = False
        if usable:
            xdg = os.environ.get("XDG_CACHE_HOME")
            base = xdg if xdg and os.path.isabs(xdg) else os.path.join(home, ".cache")
            out.append((os.path.join(base, "pgpush"), "home"))
    out.append((f"/tmp/pgpush-{euid}", "tmp"))
    return out


def _check(path: str, origin: str) -> None:
    """Raise :class:`_Unsafe` unless ``path`` is a directory safe for us to use."""
    import stat

    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        if origin != "PGPUSH_CACHE":
            raise _Unsafe("is a symbolic link")
        st = os.stat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise _Unsafe("is not a directory")
    if st.st_uid != os.geteuid():
        raise _Unsafe(f"is owned by uid {st.st_uid}, not by uid {os.geteuid()}")
    if st.st_mode & 0o022:
        raise _Unsafe(f"is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})")


def _prepare(path: str, origin: str) -> str:
    """Create ``path`` 0700 if missing, then check it; return it."""
    if origin == "home":
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    _check(path, origin)
    if not os.access(path, os.W_OK | os.X_OK):
        raise PermissionError(13, "not writable", path)
    return path


def _lock(path: str) -> int | None:
    """flock ``path``; None when locking is impossible or too slow (we then rely on rename)."""
    try:
        import fcntl
        import time

        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except (ImportError, OSError):
        return None
    deadline = time.monotonic() + LOCK_TIMEOUT
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() > deadline:
                break
            time.sleep(0.02)
        except OSError:
            break
    os.close(fd)
    return None


def _rmtree(path: str) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def _pid_is_gone(name: str) -> bool:
    """Whether the process named in ``.tmp-<set>-<pid>-<rnd>`` no longer exists (False when unsure)."""
    parts = name.rsplit("-", 2)
    pid = parts[1] if len(parts) == 3 else ""
    if not (pid.isascii() and pid.isdigit()):
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except (OSError, OverflowError, ValueError):
        pass
    return False


def _remove_stale(root: str, build: str) -> None:
    """Remove the temporary trees of interrupted extractions: an hour old, or of ``build`` by a process that is gone.

    Only the first run of a set extracts, so a tree left by a process killed during that first run
    (~75 MB) would otherwise stay until another set is extracted there.  The pid test is for ``build``
    alone, whose lock we hold: a cache shared by several hosts (an NFS home) may hold another set's
    tree being extracted by a process this host cannot see.
    """
    import time

    now = time.time()
    try:
        names = os.listdir(root)
    except OSError:
        return
    for name in names:
        if name.startswith(".tmp-"):
            path = os.path.join(root, name)
            try:
                if now - os.lstat(path).st_mtime > STALE_TMP_AGE or (
                        name.startswith(f".tmp-{build}-") and _pid_is_gone(name)):
                    _rmtree(path)
            except OSError:
                pass


def _extract(archive: str, dest: str, members: list[str]) -> None:
    """Extract the groups ``members`` (``site-packages/<group>.zip``) of ``archive`` into ``dest/site-packages``."""
    import shutil
    import zipfile

    site = os.path.join(dest, "site-packages")
    with zipfile.ZipFile(archive) as outer:
        for member in members:
            inner_path = os.path.join(dest, "group.zip")
            with outer.open(member) as src, open(inner_path, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            with zipfile.ZipFile(inner_path) as inner:
                _extract_members(inner, "", site)
            os.unlink(inner_path)


def _extract_members(zf, prefix: str, dest: str) -> None:
    for info in zf.infolist():
        if not info.filename.startswith(prefix) or info.is_dir():
            continue
        path = zf.extract(info, dest)
        mode = (info.external_attr >> 16) & 0o777
        if mode:
            os.chmod(path, (mode | 0o600) & 0o755)


def _ensure_extracted(archive: str, root: str, build: str, members: list[str]) -> str:
    final = os.path.join(root, build)
    site_dir = os.path.join(final, "site-packages")
    if os.path.isdir(site_dir):
        return site_dir
    fd = _lock(os.path.join(root, f".lock-{build}"))
    try:
        if os.path.isdir(site_dir):  # extracted by the process that held the lock
            return site_dir
        if fd is not None:
            _remove_stale(root, build)
        tmp = os.path.join(root, f".tmp-{build}-{os.getpid()}-{os.urandom(4).hex()}")
        os.mkdir(tmp, 0o700)
        try:
            _extract(archive, tmp, members)
            try:
                os.rename(tmp, final)
            except OSError:
                if not os.path.isdir(site_dir):
                    raise
                _rmtree(tmp)  # lost the race: use the winner's copy
        except BaseException:
            _rmtree(tmp)
            raise
    finally:
        if fd is not None:
            os.close(fd)
    return site_dir


def _is_site_dir(path: str) -> bool:
    return os.path.basename(path.rstrip(os.sep)) in ("site-packages", "dist-packages")


def _environment_paths() -> set[str]:
    """The ``sys.path`` entries ``PYTHONPATH`` put there (as given and absolute); none under ``-E``/``-I``.

    The shebang's ``-I`` ignores it, but ``python3.9 pgpush.pyz`` in archive_command (README) does not:
    a host's PYTHONPATH holding another paramiko, cffi or zstandard must not shadow the bundled ones.
    """
    if sys.flags.ignore_environment:
        return set()
    entries = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return set(entries) | {os.path.abspath(p) for p in entries}


def activate(site_dir: str) -> None:
    """``site.addsitedir`` (for .pth files), our entries before any other site dir and any PYTHONPATH entry."""
    import site  # explicit: python runs with -S; importing site then does not run site.main()

    before = list(sys.path)
    site.addsitedir(site_dir)
    new = [p for p in sys.path if p not in before]
    rest = [p for p in sys.path if p not in new]
    foreign = _environment_paths()
    index = next((i for i, p in enumerate(rest) if _is_site_dir(p) or p in foreign), len(rest))
    sys.path[:] = rest[:index] + new + rest[index:]


def bundle_key(version: tuple[int, ...] | None = None, machine: str | None = None) -> str:
    """The set for this interpreter and machine, e.g. ``cp311-x86_64`` (as the zipapp's ``__main__`` says)."""
    version = tuple(sys.version_info) if version is None else version
    machine = os.uname().machine if machine is None else machine
    return f"cp{version[0]}{version[1]}-{MACHINE_ALIASES.get(machine, machine)}"


def set_for(info: dict, key: str) -> tuple[str, list[str]]:
    """``(directory name in the cache, group members)`` of set ``key``; :class:`HostError` if not carried."""
    entry = info.get("sets", {}).get(key)
    if entry is None:
        carried = ", ".join(sorted(info.get("sets", {}))) or "none"
        raise HostError(f"this file carries no packages for {key} (it carries {carried})")
    groups = info.get("groups", {})
    return str(entry["dir"]), [str(groups[name]["member"]) for name in entry["groups"]]


def bootstrap(archive: str | None = None, key: str | None = None) -> str:
    """Extract the set ``key`` (default: the running interpreter's) if needed, activate it, return its path.

    Idempotent within a process.  Raises :class:`HostError` when the file carries no such set,
    :class:`BootstrapError` when no cache directory can be used.
    """
    global _site_dir
    if _site_dir is not None:
        return _site_dir
    archive = os.path.abspath(archive) if archive else archive_path()
    info = build_info(archive)
    build, members = set_for(info, key or bundle_key())
    tried = []
    for path, origin in cache_candidates():
        try:
            root = _prepare(path, origin)
            site_dir = _ensure_extracted(archive, root, build, members)
        except _Unsafe as exc:
            sys.stderr.write(f"pgpush: warning: not using cache directory {path}: it {exc}\n")
            tried.append(f"{path} ({exc})")
            continue
        except OSError as exc:
            tried.append(f"{path} ({exc.strerror or exc})")
            continue
        activate(site_dir)
        _site_dir = site_dir
        return site_dir
    try:
        site_dir = _private_extract(archive, build, members, tried)
    except OSError as exc:
        tried.append(f"a private temporary directory ({exc.strerror or exc})")
    else:
        activate(site_dir)
        _site_dir = site_dir
        return site_dir
    raise BootstrapError(
        "cannot extract the bundled packages, tried: " + "; ".join(tried)
        + ". Set PGPUSH_CACHE to a directory owned by this user."
    )


def _remove_dead_private(tmp: str, prefix: str) -> None:
    """Remove the private directories (``PREFIX<pid>-*``, ours) of processes that are gone.

    A process killed by a signal (a worker SIGKILLed at protocol-timeout, a SIGTERM at
    shutdown) never runs its atexit clean-up: without this, each such death would leave a
    whole extracted tree (~75 MB) in the temporary directory until it fills.
    """
    import stat

    try:
        names = os.listdir(tmp)
    except OSError:
        return
    for name in names:
        pid = name[len(prefix):].partition("-")[0] if name.startswith(prefix) else ""
        if not (pid.isascii() and pid.isdigit()):
            continue
        path = os.path.join(tmp, name)
        try:
            st = os.lstat(path)
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
                continue
            os.kill(int(pid), 0)
        except ProcessLookupError:
            _rmtree(path)
        except (OSError, OverflowError, ValueError):
            continue  # alive (another user's process with that pid) or not ours to judge


def _private_extract(archive: str, build: str, members: list[str], tried: list[str]) -> str:
    """Extract into a new directory of our own, removed when this process exits.

    ``mkdtemp`` creates a name nobody else can have made first, owned by us and 0700; it
    is checked all the same (not a link, ours, not writable by others) before any use.
    """
    import atexit
    import tempfile

    prefix = f"pgpush-{os.geteuid()}-private-"
    _remove_dead_private(tempfile.gettempdir(), prefix)
    root = tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-")
    atexit.register(_rmtree, root)
    try:
        _check(root, "private")
    except _Unsafe as exc:
        raise PermissionError(13, f"it {exc}", root) from None
    sys.stderr.write(f"pgpush: warning: no cache directory is usable ({'; '.join(tried)}): extracting into {root}, "
                     "removed at exit; set PGPUSH_CACHE to a directory owned by this user to avoid this\n")
    return _ensure_extracted(archive, root, build, members)
