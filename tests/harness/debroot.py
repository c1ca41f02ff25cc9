"""Debian root filesystems built with debootstrap, for running the zipapp on other releases.

pgpush's promise is "copy one file onto each database host" (docs/operations.md).  These roots
let ``make test`` prove it on real Debian releases with their own ``/usr/bin/python3`` and
PostgreSQL: Debian 11 "bullseye" (Python 3.9, PostgreSQL 13), Debian 13 "trixie" (Python 3.13,
PostgreSQL 17), and an arm64 Debian 12 "bookworm" root run through ``qemu-aarch64-static``.

* The mirror is the one this machine's apt already uses, read from its sources at run time
  (``/etc/apt/sources.list.d/*.sources`` or ``/etc/apt/sources.list``); no address is written
  into the repository.
* A root is built once and cached outside the repository in
  ``/var/cache/pgpush-test/debroot-<suite>-<arch>-<hash of the recipe>``: built in a temporary
  directory and renamed into place, under an flock so two xdist workers (or two sessions) never
  build the same root at once.  Tests never write into the cache: harness.chroot mounts an
  overlay over it for each test.
* Building runs a few commands inside the new root (apt-get, and for arm64 debootstrap's second
  stage); that needs /proc and /dev there, which are unmounted again before the rename.  Stale
  temporary directories are unmounted before they are removed (``rm --one-file-system``): a
  bind mount left by a crashed build must never let ``rm`` reach the host's files.
"""

from __future__ import annotations

import fcntl
import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "CACHE_ROOT",
    "RELEASES",
    "Release",
    "DebootstrapUnavailable",
    "apt_mirror",
    "arm64_unavailable_reason",
    "ensure_root",
    "mounts_below",
    "unmount_below",
]

CACHE_ROOT = Path(os.environ.get("PGPUSH_TEST_DEBROOT_CACHE", "/var/cache/pgpush-test"))
RECIPE_VERSION = 1  # bump when the build steps change: a new hash, a new root
BUILD_TIMEOUT = 1800  # a cold build downloads ~60-120 MB; slow mirrors take minutes


@dataclass(frozen=True)
class Release:
    """One Debian release as a test sees it: suite, architecture, interpreter and PostgreSQL."""

    suite: str
    python: str
    pg_major: int | None
    arch: str = "amd64"

    @property
    def name(self) -> str:
        return self.suite if self.arch == "amd64" else f"{self.suite}-{self.arch}"

    @property
    def packages(self) -> tuple[str, ...]:
        """What apt installs on top of minbase: python3, and the release's PostgreSQL server."""
        extra = (f"postgresql-{self.pg_major}",) if self.pg_major else ()
        return ("python3", *extra)

    @property
    def pg_bin(self) -> str:
        return f"/usr/lib/postgresql/{self.pg_major}/bin"

    @property
    def machine(self) -> str:
        return {"amd64": "x86_64", "arm64": "aarch64"}[self.arch]

    def recipe_hash(self) -> str:
        recipe = repr((RECIPE_VERSION, self.suite, self.arch, "minbase", self.packages))
        return hashlib.sha256(recipe.encode()).hexdigest()[:12]

    def cache_dir(self) -> Path:
        return CACHE_ROOT / f"debroot-{self.suite}-{self.arch}-{self.recipe_hash()}"


RELEASES: dict[str, Release] = {
    "bullseye": Release("bullseye", "3.9", 13),
    "trixie": Release("trixie", "3.13", 17),
    "bookworm": Release("bookworm", "3.11", 15),  # the host's own release: not in make test, for checking the e2e
    "bookworm-arm64": Release("bookworm", "3.11", None, arch="arm64"),
}


class DebootstrapUnavailable(RuntimeError):
    """Raised when a root cannot be built here at all (not root, no mirror in apt's sources)."""


# ----------------------------------------------------------------------------------------------
# the mirror


def _deb822_uris(text: str) -> list[str]:
    """URIs of ``Types: deb`` stanzas of a deb822 ``.sources`` file (comments and disabled skipped)."""
    uris = []
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line.startswith("#") or ":" not in line or line[:1].isspace():
                continue
            key, _, value = line.partition(":")
            fields[key.strip().lower()] = value.strip()
        if "deb" in fields.get("types", "").split() and fields.get("enabled", "yes").lower() != "no":
            uris += fields.get("uris", "").split()
    return uris


def _one_line_uris(text: str) -> list[str]:
    """URIs of ``deb [options] URI suite ...`` lines of a sources.list."""
    uris = []
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if words[:1] != ["deb"]:
            continue
        words = words[1:]
        if words and words[0].startswith("["):
            while words and not words[0].endswith("]"):
                words = words[1:]
            words = words[1:]
        if words:
            uris.append(words[0])
    return uris


def apt_mirror(etc_apt: Path = Path("/etc/apt")) -> str:
    """The Debian archive this machine's apt uses (not the security archive), e.g. ``http://HOST/debian``."""
    uris: list[str] = []
    for path in sorted(glob.glob(str(etc_apt / "sources.list.d" / "*.sources"))):
        uris += _deb822_uris(Path(path).read_text(errors="replace"))
    for path in [etc_apt / "sources.list", *sorted(Path(p) for p in glob.glob(str(etc_apt / "sources.list.d" / "*.list")))]:
        if path.is_file():
            uris += _one_line_uris(path.read_text(errors="replace"))
    for uri in uris:
        path = uri.split("://", 1)[-1].rstrip("/")
        if uri.startswith(("http://", "https://")) and not path.endswith(("-security", "/debian-security")):
            if "/debian" in path:
                return uri.rstrip("/")
    raise DebootstrapUnavailable(f"no Debian archive among apt's sources in {etc_apt}: {uris}")


# ----------------------------------------------------------------------------------------------
# mounts


def mounts_below(path: Path) -> list[str]:
    """Mount points at or below ``path`` (from /proc/self/mountinfo), deepest first."""
    prefix = os.path.realpath(path)
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].replace("\\040", " ")
            if point == prefix or point.startswith(prefix + "/"):
                found.append(point)
    return sorted(found, key=len, reverse=True)


def unmount_below(path: Path) -> None:
    """Unmount everything at or below ``path``, deepest first (lazily if busy)."""
    for point in mounts_below(path):
        if subprocess.run(["umount", point], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", point], capture_output=True)


def _remove_tree(path: Path) -> None:
    """rm -rf that unmounts first and never crosses into another file system."""
    if not path.exists():
        return
    unmount_below(path)
    if mounts_below(path):
        raise RuntimeError(f"{path} still has mounts below it: {mounts_below(path)}")
    subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=True, capture_output=True)


def mount_api_filesystems(root: Path) -> None:
    """/proc, a minimal /dev (tmpfs + the usual nodes) and /dev/shm inside ``root``."""
    (root / "proc").mkdir(exist_ok=True)
    subprocess.run(["mount", "-t", "proc", "proc", str(root / "proc")], check=True, capture_output=True)
    dev = root / "dev"
    dev.mkdir(exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755,size=1m,nosuid", "tmpfs", str(dev)], check=True,
                   capture_output=True)
    for name, minor in (("null", 3), ("zero", 5), ("full", 7), ("random", 8), ("urandom", 9)):
        os.mknod(dev / name, 0o666 | 0o020000, os.makedev(1, minor))
        os.chmod(dev / name, 0o666)
    os.mknod(dev / "tty", 0o666 | 0o020000, os.makedev(5, 0))
    os.chmod(dev / "tty", 0o666)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                         ("stderr", "/proc/self/fd/2"), ("ptmx", "pts/ptmx")):
        os.symlink(target, dev / name)
    (dev / "shm").mkdir()
    (dev / "pts").mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=1777,size=256m,nosuid,nodev", "tmpfs", str(dev / "shm")],
                   check=True, capture_output=True)


# ----------------------------------------------------------------------------------------------
# arm64 through qemu-user-static


QEMU_AARCH64 = "/usr/bin/qemu-aarch64-static"
BINFMT_DIR = Path("/proc/sys/fs/binfmt_misc")


def arm64_unavailable_reason() -> str | None:
    """Why an arm64 root's binaries cannot run here, or None when binfmt_misc runs them via qemu.

    ``make setup`` installs qemu-user-static and binfmt-support, mounts binfmt_misc and enables
    the ``qemu-aarch64`` format (registered with the fix-binary flag, so it works in a chroot).
    """
    if not os.path.exists(QEMU_AARCH64):
        return f"{QEMU_AARCH64} is missing: run `make setup`"
    if not (BINFMT_DIR / "register").exists():
        return f"binfmt_misc is not mounted on {BINFMT_DIR}: run `make setup` (mount -t binfmt_misc)"
    entry = BINFMT_DIR / "qemu-aarch64"
    try:
        text = entry.read_text()
    except OSError:
        return f"no qemu-aarch64 binfmt_misc entry in {BINFMT_DIR}: run `make setup` (update-binfmts --enable)"
    if not text.startswith("enabled"):
        return f"the qemu-aarch64 binfmt_misc entry is disabled: {text.splitlines()[:1]}"
    flags = re.search(r"^flags:\s*(\S*)", text, re.M)
    if not flags or "F" not in flags.group(1):
        return "the qemu-aarch64 binfmt_misc entry lacks the fix-binary flag (F): it cannot run inside a chroot"
    return None


# ----------------------------------------------------------------------------------------------
# building


def _chroot(root: Path, *argv: str, timeout: float = BUILD_TIMEOUT) -> None:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "DEBIAN_FRONTEND": "noninteractive",
           "HOME": "/root"}
    proc = subprocess.run(["chroot", str(root), *argv], env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"chroot {root} {' '.join(argv)} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n"
                           f"{proc.stderr[-3000:]}")


def _debootstrap(release: Release, target: Path, mirror: str) -> None:
    argv = ["debootstrap", "--variant=minbase", f"--arch={release.arch}", "--include=python3"]
    if release.arch != "amd64":
        argv.append("--foreign")  # the second stage runs the new root's binaries, through qemu
    proc = subprocess.run([*argv, release.suite, str(target), mirror], capture_output=True, text=True,
                          timeout=BUILD_TIMEOUT)
    if proc.returncode != 0:
        log = target / "debootstrap" / "debootstrap.log"
        tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
        raise RuntimeError(f"{' '.join(argv)} {release.suite} failed ({proc.returncode}):\n{proc.stderr[-3000:]}\n{tail}")


def _install_packages(release: Release, root: Path) -> None:
    """apt-get the release's PostgreSQL into the root without starting it or creating a cluster."""
    policy = root / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 101\n")  # no services: there is no init in the root
    policy.chmod(0o755)
    conf = root / "etc/postgresql-common/createcluster.conf"
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text("create_main_cluster = false\n")  # the tests initdb their own clusters
    extra = [p for p in release.packages if p != "python3"]
    try:
        if extra:
            _chroot(root, "apt-get", "update", "-qq")
            _chroot(root, "apt-get", "install", "-y", "-qq", "--no-install-recommends",
                    "-o", "Dpkg::Options::=--force-confold", "-o", "Dpkg::Options::=--force-confdef", *extra)
        _chroot(root, "apt-get", "clean")
    finally:
        policy.unlink(missing_ok=True)
    for lists in (root / "var/lib/apt/lists").glob("*_*"):
        lists.unlink()


def _build(release: Release, tmp: Path, mirror: str) -> None:
    _debootstrap(release, tmp, mirror)
    try:
        mount_api_filesystems(tmp)
        if release.arch != "amd64":
            _chroot(tmp, "/debootstrap/debootstrap", "--second-stage")
        _install_packages(release, tmp)
        _chroot(tmp, "/usr/bin/python3", "-c", f"import sys; assert sys.version.startswith({release.python + '.'!r})")
    finally:
        unmount_below(tmp)
    recipe = {"suite": release.suite, "arch": release.arch, "packages": list(release.packages), "built": int(time.time())}
    (tmp / "pgpush-debroot.json").write_text(json.dumps(recipe) + "\n")


def ensure_root(release: Release) -> Path:
    """The cached root of ``release``, built first if missing (atomically, one builder at a time).

    Raises DebootstrapUnavailable when a root cannot be built on this machine at all.
    """
    final = release.cache_dir()
    if final.is_dir():
        return final
    if os.geteuid() != 0:
        raise DebootstrapUnavailable("debootstrap and chroot need root")
    if release.arch == "arm64":
        reason = arm64_unavailable_reason()
        if reason:
            raise DebootstrapUnavailable(reason)
    if shutil.which("debootstrap") is None:
        raise RuntimeError("debootstrap is not installed: run `make setup` (scripts/setup-system.sh)")
    mirror = apt_mirror()
    CACHE_ROOT.mkdir(parents=True, exist_ok=True)
    os.chmod(CACHE_ROOT, 0o755)
    with open(CACHE_ROOT / f"{final.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if final.is_dir():
            return final  # another worker built it while we waited
        for stale in CACHE_ROOT.glob(f"{final.name}.tmp-*"):
            _remove_tree(stale)  # a crashed build; we hold the lock, so nobody is using it
        tmp = CACHE_ROOT / f"{final.name}.tmp-{os.getpid()}"
        try:
            _build(release, tmp, mirror)
            os.chmod(tmp, 0o755)
            tmp.rename(final)
        except BaseException:
            _remove_tree(tmp)
            raise
    return final
