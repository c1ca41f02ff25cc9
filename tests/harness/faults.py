"""Fault injection for the fault matrix (tests/integration/test_fault_matrix.py).

Two small vocabularies, so that adding a repository type or a fault is one line:

* a :class:`Backend` is one repository type as the matrix sees it: the pgpush options that
  reach it, an independent reader of what it stores, and the storage faults it can suffer
  (``fill``/``unfill``, ``freeze``/``thaw``, ``cut``, ``down``/``up``).  A fault a backend cannot
  suffer raises :class:`NotApplicable` with the reason, which the matrix turns into a skip.
* a :class:`Fault` says when it strikes (before the work starts, or once a pgpush process is
  seen holding a file it is transferring: "mid-file"), which process it watches, how it is
  injected and healed, and which exit codes a user should see while it lasts.

Everything a fault stops (a frozen server, a killed one) is revived by ``heal`` and again by
``Backend.close``, so a failed cell never leaves a frozen server or a mounted tmpfs behind.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import procs, tmpfs

__all__ = ["Backend", "Fault", "NotApplicable", "PosixBackend", "S3Backend", "SftpBackend", "check_archive",
           "MidFile", "kill_leftovers", "kill_parent", "kill_process", "no_heal", "parent_of", "pgpush_pids", "wait_mid_file"]

STANZA = "main"
ARCHIVED_RE = re.compile(r"^([0-9A-F]{24}(?:\.partial)?|[0-9A-F]{8}\.history)-([0-9a-f]{40})(\.\w+)?$")


class NotApplicable(Exception):
    """This backend cannot suffer this fault; the message says why (the matrix skips the cell)."""


# ---------------------------------------------------------------------------------------------
# backends


class Backend:
    """One repository type: options, an independent reader, and the storage faults it can suffer."""

    name = "?"
    cannot: dict[str, str] = {}  # a fault's ``needs`` -> why this backend cannot suffer it

    def options(self) -> dict[str, str]:
        raise NotImplementedError

    def reader(self):
        """A pgpush Storage on the repository root, used only to check what is stored."""
        raise NotImplementedError

    def why_not(self, needs: str) -> str | None:
        """None when this backend can suffer a fault that ``needs`` this method, else the reason."""
        return self.cannot.get(needs)

    def _cannot(self, needs: str) -> NotApplicable:
        return NotApplicable(self.cannot.get(needs, f"{self.name}: cannot {needs}"))

    def fill(self) -> None:
        raise self._cannot("fill")

    def unfill(self) -> None:
        """Free the space ``fill`` took."""

    def freeze(self) -> None:
        raise self._cannot("freeze")

    def thaw(self) -> None:
        """Undo ``freeze``."""

    def cut(self) -> None:
        raise self._cannot("cut")

    def down(self) -> None:
        raise self._cannot("down")

    def up(self) -> None:
        """Undo ``down`` (the host comes back)."""

    def close(self) -> None:
        """Undo every fault (thaw, start, unmount): called by the fixture, even on failure."""


class _SmallFs:
    """A tmpfs mounted over a repository directory, filled to the last byte by ``fill``."""

    def __init__(self, path: Path, size_mb: float, owner: str) -> None:
        self.path, self.filler = Path(path), None
        tmpfs.mount(self.path, size_mb, owner=owner)
        self.mounted = True

    def fill(self) -> None:
        self.filler = tmpfs.fill(self.path, leave_bytes=0)

    def unfill(self) -> None:
        if self.filler is not None:
            self.filler.unlink(missing_ok=True)
            self.filler = None

    def close(self) -> None:
        if self.mounted:
            tmpfs.unmount(self.path)
            self.mounted = False


class PosixBackend(Backend):
    """A local directory (an NFS mount in real life): it can fill up; the rest needs FUSE/NFS, absent here."""

    name = "posix"
    cannot = {
        "freeze": "posix: a local directory cannot stop answering without a FUSE or NFS server, neither of "
                  "which this machine has (sftp and s3 cover a frozen store)",
        "cut": "posix: a local directory has no connection to cut",
        "down": "posix: a local directory has no host to reboot",
    }

    def __init__(self, work_dir: Path, small_fs_mb: float | None = None) -> None:
        self.path = Path(work_dir) / "repo"
        self.path.mkdir(exist_ok=True)
        procs.chown_tree(self.path, "postgres")
        self.small = _SmallFs(self.path, small_fs_mb, "postgres") if small_fs_mb else None

    def options(self) -> dict[str, str]:
        return {"repo1-type": "posix", "repo1-path": str(self.path)}

    def reader(self):
        from pgpush.storage.posix import PosixStorage

        return PosixStorage(str(self.path))

    def fill(self) -> None:
        if self.small is None:
            raise NotApplicable("posix: made without a small file system")
        self.small.fill()

    def unfill(self) -> None:
        if self.small is not None:
            self.small.unfill()

    def close(self) -> None:
        if self.small is not None:
            self.small.close()


class SftpBackend(Backend):
    """The real OpenSSH sshd of the ``sshd`` fixture; its repo dir may be a small tmpfs."""

    name = "sftp"

    def __init__(self, sshd, small_fs_mb: float | None = None) -> None:
        self.sshd = sshd
        self.small = _SmallFs(sshd.repo_dir, small_fs_mb, sshd.user) if small_fs_mb else None

    def options(self) -> dict[str, str]:
        return self.sshd.pgpush_options()

    def reader(self):
        from pgpush.storage.posix import PosixStorage

        return PosixStorage(str(self.sshd.repo_dir))  # the backup host's disk, read directly

    def fill(self) -> None:
        if self.small is None:
            raise NotApplicable("sftp: built without a small file system")
        self.small.fill()

    def unfill(self) -> None:
        if self.small is not None:
            self.small.unfill()

    def freeze(self) -> None:
        self.sshd.freeze()

    def thaw(self) -> None:
        self.sshd.thaw()

    def cut(self) -> None:
        """SIGKILL every SSH session; the listener stays, so a new connection works at once."""
        sessions = procs.descendants_of(self.sshd.pid) if self.sshd.pid else []
        procs.signal_pids(sessions, signal.SIGKILL)

    def down(self) -> None:
        self.sshd.stop()

    def up(self) -> None:
        self.sshd.start()

    def close(self) -> None:
        try:
            self.sshd.thaw()
            self.sshd.start()
        finally:
            if self.small is not None:
                self.small.close()


class S3Backend(Backend):
    """A fresh bucket on the worker's real SeaweedFS (``seaweed`` fixture).

    For a full store (``small_fs_mb``) a private SeaweedFS runs on a small tmpfs instead: the
    shared server grows a new volume whenever one is full and has no store-wide quota, while
    one whose disk is full answers every PUT with 500 InternalError, as a full store does."""

    name = "s3"

    def __init__(self, seaweed=None, small_fs_mb: float | None = None, work_dir: Path | None = None) -> None:
        self.small = self.own = self.server = None
        if small_fs_mb:
            from .seaweed import SeaweedBucket, SeaweedServer

            self.small = _SmallFs(Path(work_dir) / "s3-small", small_fs_mb, "root")
            self.own = SeaweedServer(self.small.path)
            try:
                seaweed = SeaweedBucket(self.own.start())
            except BaseException:
                self.close()
                raise
        self.bucket, self.server = seaweed, seaweed.server

    def options(self) -> dict[str, str]:
        return self.bucket.pgpush_options("/repo")

    def reader(self):
        return self.bucket.storage("/repo", timeout=10)

    def fill(self) -> None:
        if self.small is None:
            raise NotApplicable("s3: made without a small file system")
        self.small.fill()

    def unfill(self) -> None:
        if self.small is not None:
            self.small.unfill()

    def freeze(self) -> None:
        self.server.freeze()

    def thaw(self) -> None:
        self.server.thaw()

    def cut(self) -> None:
        """Kill weed mid-transfer and start it again at once (same ports, same data)."""
        self.server.kill()
        self.server.start()

    def down(self) -> None:
        self.server.kill()

    def up(self) -> None:
        self.server.start()

    def close(self) -> None:
        if self.own is not None:
            self.own.cleanup()
        elif self.server is not None:
            self.server.ensure_running()
        if self.small is not None:
            self.small.close()


# ---------------------------------------------------------------------------------------------
# faults


@dataclass(frozen=True)
class Fault:
    """One way things fail.

    ``needs``: the Backend method the fault uses (empty for process kills), so a backend that
    cannot suffer it is skipped before any work.  ``mid_file``: injected once the watched
    process holds a file it is transferring (else before the work starts).  ``victim``: which
    process to watch, ``"transfer"`` (whichever pgpush process moves the data) or ``"worker"``
    (a pool worker: ``inject`` may then strike its parent).  ``codes``: the exit codes a user
    may see while the fault lasts.
    """

    name: str
    needs: str
    mid_file: bool
    victim: str
    inject: Callable[[Backend, int], None]
    heal: Callable[[Backend], None]
    codes: frozenset[int]
    modes: tuple[str, ...] = ("sync", "async", "backup")

    @property
    def lasts(self) -> bool:
        """True when the fault stays until healed (full, frozen, down): pgpush's calls must fail meanwhile."""
        return self.heal is not no_heal


def kill_process(_backend: Backend, pid: int) -> None:
    """SIGKILL the pgpush process caught mid-file (the OOM killer, an operator's kill -9)."""
    procs.signal_pids([pid], signal.SIGKILL)


def kill_parent(_backend: Backend, pid: int) -> None:
    """SIGKILL the parent of the worker caught mid-file (the async parent, the backup command)."""
    procs.signal_pids([parent_of(pid)], signal.SIGKILL)


def parent_of(pid: int) -> int:
    """The parent process id of ``pid`` (from /proc)."""
    with open(f"/proc/{pid}/status") as fh:
        return int(next(line.split()[1] for line in fh if line.startswith("PPid:")))


def no_heal(_backend: Backend) -> None:
    """Nothing to undo (a killed process, a cut connection): the next run must recover by itself."""


# ---------------------------------------------------------------------------------------------
# finding pgpush's processes and catching them mid-file


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def pgpush_pids(marker: Path, command: str | None = None) -> list[int]:
    """Live pgpush processes of this test (their options name ``marker``), those running ``command`` if given.

    Tests run in parallel: never look at, let alone kill, another test's processes."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and procs.pid_alive(int(entry)):
            cmd = _cmdline(int(entry))
            if ("pgpush" in cmd and f"{marker}/" in cmd and not cmd.startswith("runuser")
                    and (command is None or f" {command} " in f" {cmd} ")):
                out.append(int(entry))
    return out


def _holds_file_under(pid: int, directory: str) -> bool:
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith(directory) and os.path.isfile(target):
            return True
    return False


def wait_mid_file(candidates: Callable[[], list[int]], directory: Path, timeout: float,
                  stop: threading.Event | None = None) -> int | None:
    """The first candidate seen holding a file under ``directory`` open, or None after ``timeout`` s."""
    prefix = str(directory) + "/"
    deadline = time.monotonic() + timeout
    pids: list[int] = []
    next_scan = 0.0
    while time.monotonic() < deadline and not (stop is not None and stop.is_set()):
        if time.monotonic() >= next_scan:
            pids = candidates()
            next_scan = time.monotonic() + 0.02
        for pid in pids:
            if _holds_file_under(pid, prefix):
                return pid
        time.sleep(0.001)
    return None


class MidFile:
    """Strike ``action(pid)`` the moment a candidate is seen holding a file under ``directory``.

    Started before the work, in a thread, so that the first transfer can be caught: looking
    only once the work has been started misses the short ones."""

    def __init__(self, candidates: Callable[[], list[int]], directory: Path, action: Callable[[int], None],
                 timeout: float) -> None:
        self.pid: int | None = None
        self.error: BaseException | None = None
        self._stop = threading.Event()

        def run() -> None:
            try:
                self.pid = wait_mid_file(candidates, directory, timeout, self._stop)
                if self.pid is not None:
                    action(self.pid)
            except BaseException as exc:  # noqa: BLE001 - handed to the test by result()
                self.error = exc

        self._thread = threading.Thread(target=run, name="fault-mid-file", daemon=True)
        self._thread.start()

    def result(self, timeout: float) -> int | None:
        """The pid struck (None if none was caught in time); re-raises what the action raised."""
        self._thread.join(timeout)
        self.stop()
        if self.error is not None:
            raise self.error
        return self.pid

    def stop(self) -> None:
        """Give up watching (a cell that failed early): no strike may land after the heal."""
        self._stop.set()
        self._thread.join()


def kill_leftovers(marker: Path) -> list[int]:
    """SIGKILL every pgpush process of this test (its options name ``marker``); returns their pids."""
    pids = [pid for pid in pgpush_pids(marker) if pid != os.getpid()]
    for pid in pids:
        procs.stop_pid(pid, timeout=2, sig=signal.SIGKILL)
    return pids


# ---------------------------------------------------------------------------------------------
# what the repository holds


def _walk(storage, directory: str) -> list[str]:
    names = [f"{directory}/{f.name}" for f in storage.list(directory)]
    for sub in storage.list_dirs(directory):
        names += _walk(storage, f"{directory}/{sub}")
    return names


def check_archive(storage) -> dict[str, str]:
    """Every WAL file stored under its final name is whole: it decompresses and its SHA-1 is its name's.

    Returns ``{wal name: sha1}``.  A name stored twice, or a damaged file, fails the assertion."""
    from pgpush.repo.codec import compress

    found: dict[str, str] = {}
    damaged = []
    for name in _walk(storage, f"archive/{STANZA}"):
        m = ARCHIVED_RE.match(name.rsplit("/", 1)[-1])
        if not m:
            continue
        try:
            data = b"".join(compress.decompress(storage.read_chunks(name), compress.type_of(name)))
            digest = hashlib.sha1(data).hexdigest()
        except ValueError as exc:
            digest = f"undecodable ({exc})"
        if digest != m.group(2):
            damaged.append(f"{name}: content {digest}")
        assert m.group(1) not in found, f"WAL {m.group(1)} stored twice: {name}"
        found[m.group(1)] = m.group(2)
    assert not damaged, f"acknowledged names with damaged content: {damaged}"
    return found
