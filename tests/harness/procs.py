"""Process, port and file-ownership helpers for the pgpush test harness.

Notes about this environment (see also the gotchas in tests/conftest.py):

* PID 1 does not reap orphans, so a daemon that exits after its parent died stays a zombie
  forever and ``kill(pid, 0)`` keeps succeeding.  ``pid_alive`` therefore reads
  ``/proc/PID/status`` and treats state ``Z``/``X`` (or a missing entry) as dead.
* ``become_subreaper()`` (called by conftest) makes the test process adopt orphaned
  descendants (e.g. a postmaster started by ``pg_ctl``) so that ``stop_pid`` can reap them.
* Everything PostgreSQL-related must run as the ``postgres`` OS user: ``run_as`` uses
  ``runuser -u USER --`` and defaults the cwd to ``/`` because runuser keeps the caller's cwd.
"""

from __future__ import annotations

import ctypes
import errno
import os
import pwd
import shlex
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

__all__ = [
    "CommandError",
    "become_subreaper",
    "children_of",
    "chown_tree",
    "descendants_of",
    "free_port",
    "kill_tree",
    "make_tmp_dir",
    "pid_alive",
    "pid_state",
    "popen_as",
    "port_accepts",
    "reap",
    "reap_orphans",
    "register_pid",
    "registered_pids",
    "run_as",
    "signal_pids",
    "start_reaper",
    "stop_pid",
    "unregister_pid",
    "user_ids",
    "wait_for",
]


class CommandError(subprocess.CalledProcessError):
    """CalledProcessError whose message includes the command's stdout/stderr."""

    def __str__(self) -> str:
        cmd = self.cmd if isinstance(self.cmd, str) else shlex.join(str(c) for c in self.cmd)
        parts = [f"command failed with exit status {self.returncode}: {cmd}"]
        for label, data in (("stdout", self.stdout), ("stderr", self.stderr)):
            if data:
                text = data if isinstance(data, str) else data.decode(errors="replace")
                parts.append(f"--- {label} ---\n{text.rstrip()}")
        return "\n".join(parts)


# ----------------------------------------------------------------------------------------------
# ports


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago (bind to port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_accepts(port: int, host: str = "127.0.0.1", timeout: float = 1.0) -> bool:
    """True if a TCP connect to host:port succeeds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for(predicate, timeout: float, interval: float = 0.05, message: str = "condition") -> None:
    """Poll ``predicate()`` until it is truthy; raise TimeoutError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {message}")
        time.sleep(interval)


# ----------------------------------------------------------------------------------------------
# process state


def _status_fields(pid: int) -> dict[str, str] | None:
    try:
        with open(f"/proc/{pid}/status", encoding="utf-8", errors="replace") as f:
            text = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    except OSError as e:  # e.g. ESRCH while the process disappears
        if e.errno in (errno.ESRCH, errno.ENOENT):
            return None
        raise
    fields = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def pid_state(pid: int) -> str | None:
    """Single-letter process state from /proc/PID/status (R, S, D, T, t, Z, X, I) or None."""
    fields = _status_fields(pid)
    if not fields or "State" not in fields:
        return None
    return fields["State"][:1]


def pid_alive(pid: int | None) -> bool:
    """True if the process exists and is not a zombie (``kill -0`` lies about zombies here)."""
    if not pid or pid <= 0:
        return False
    state = pid_state(pid)
    return state is not None and state not in ("Z", "X")


def _ppid(pid: int) -> int | None:
    fields = _status_fields(pid)
    if not fields or "PPid" not in fields:
        return None
    return int(fields["PPid"])


def children_of(pid: int) -> list[int]:
    """Direct children of ``pid`` (from /proc/*/status PPid), zombies included."""
    result = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and _ppid(int(entry)) == pid:
            result.append(int(entry))
    return result


def descendants_of(pid: int) -> list[int]:
    """All descendants of ``pid`` (breadth first), zombies included."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            ppid = _ppid(int(entry))
            if ppid is not None:
                parents.setdefault(ppid, []).append(int(entry))
    result, queue = [], [pid]
    while queue:
        for child in parents.get(queue.pop(0), []):
            result.append(child)
            queue.append(child)
    return result


def reap(pid: int) -> None:
    """Reap ``pid`` if it is an exited child of ours (no-op otherwise)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def signal_pids(pids: Iterable[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def stop_pid(pid: int | None, timeout: float = 10, sig: int = signal.SIGTERM) -> bool:
    """Stop a process: SIGCONT + ``sig``, wait ``timeout`` s, then SIGKILL.

    Returns True if the process was alive when called.  Zombies count as dead; our own exited
    children (including adopted orphans, see ``become_subreaper``) are reaped.
    """
    if not pid or pid <= 0:
        return False
    if not pid_alive(pid):
        reap(pid)
        return False
    signal_pids([pid], signal.SIGCONT)
    signal_pids([pid], sig)
    for kill_sig, wait in ((None, timeout), (signal.SIGKILL, 10.0)):
        if kill_sig is not None:
            signal_pids([pid], kill_sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            reap(pid)
            if not pid_alive(pid):
                return True
            time.sleep(0.02)
    raise RuntimeError(f"process {pid} survived SIGKILL (state {pid_state(pid)})")


def kill_tree(pid: int, timeout: float = 10, sig: int = signal.SIGTERM) -> None:
    """Stop ``pid`` and every descendant (collected before signalling, so orphans are covered)."""
    family = descendants_of(pid)
    stop_pid(pid, timeout=timeout, sig=sig)
    family += [p for p in descendants_of(pid) if p not in family]
    for child in family:
        stop_pid(child, timeout=2, sig=signal.SIGKILL)


_PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> bool:
    """Make this process adopt orphaned descendants (Linux prctl), so they can be reaped."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def reap_exited_children() -> None:
    """Reap every child of ours that has exited (adopted orphans included), without waiting.

    For the end of a run, when no Popen object needs an exit status any more."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def reap_orphans() -> int:
    """Reap zombie children of ours that are not owned by root; returns how many were reaped.

    With ``become_subreaper()`` every orphaned descendant ends up as our child: postmasters
    started by pg_ctl, and notably sshd's per-connection processes (uid sshd / pgpush-backup),
    ~2 per SSH login.  pid_max is only 32768 here, so they must be reaped during long runs.
    Only non-root zombies are touched: the children tests spawn themselves are root-owned
    (runuser, python, sshd -D), so their Popen objects keep their exit status.  (A test that
    keeps a ``Popen(..., user="postgres")`` across tests should use ``popen_as`` instead.)
    """
    me, reaped = os.getpid(), 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _status_fields(int(entry))
        if (
            fields
            and fields.get("PPid") == str(me)
            and fields.get("State", "").startswith("Z")
            and fields.get("Uid", "0").split()[0] != "0"
        ):
            reap(int(entry))
            reaped += 1
    return reaped


def start_reaper(interval: float = 2.0) -> threading.Event:
    """Run ``reap_orphans`` every ``interval`` s in a daemon thread; set the returned event to stop."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(interval):
            try:
                reap_orphans()
            except Exception:  # noqa: BLE001 - never let the reaper die
                pass

    threading.Thread(target=loop, name="pgpush-harness-reaper", daemon=True).start()
    return stop


# Daemons started by the harness (pid -> description); conftest kills leftovers at teardown.
_REGISTRY: dict[int, str] = {}


def register_pid(pid: int, description: str) -> None:
    _REGISTRY[pid] = description


def unregister_pid(pid: int | None) -> None:
    if pid is not None:
        _REGISTRY.pop(pid, None)


def registered_pids() -> dict[int, str]:
    return dict(_REGISTRY)


# ----------------------------------------------------------------------------------------------
# users, commands, files


def user_ids(user: str) -> tuple[int, int]:
    pw = pwd.getpwnam(user)
    return pw.pw_uid, pw.pw_gid


def _as_user_argv(user: str | None, cmd: Sequence[str | os.PathLike] | str) -> list[str]:
    argv = ["/bin/sh", "-c", cmd] if isinstance(cmd, str) else [os.fspath(c) for c in cmd]
    if user is None or user == pwd.getpwuid(os.geteuid()).pw_name:
        return argv
    return ["runuser", "-u", user, "--", *argv]


def run_as(
    user: str | None,
    cmd: Sequence[str | os.PathLike] | str,
    *,
    check: bool = True,
    cwd: str | os.PathLike = "/",
    env: Mapping[str, str] | None = None,
    timeout: float | None = 120,
    text: bool = True,
    capture_output: bool = True,
    **kw,
) -> subprocess.CompletedProcess:
    """Run ``cmd`` as ``user`` via ``runuser -u USER --`` (a str ``cmd`` goes through /bin/sh).

    ``cwd`` defaults to "/" (runuser keeps the cwd, which the user may not be able to read).
    Output is captured as text by default; on failure (``check=True``) raises CommandError
    whose message includes stdout and stderr.  Extra keyword arguments go to subprocess.run.
    """
    argv = _as_user_argv(user, cmd)
    if "input" not in kw and "stdin" not in kw:
        kw["stdin"] = subprocess.DEVNULL
    proc = subprocess.run(
        argv,
        cwd=cwd,
        env=dict(env) if env is not None else None,
        timeout=timeout,
        text=text,
        capture_output=capture_output,
        check=False,
        **kw,
    )
    if check and proc.returncode != 0:
        raise CommandError(proc.returncode, argv, proc.stdout, proc.stderr)
    return proc


def popen_as(
    user: str | None,
    cmd: Sequence[str | os.PathLike] | str,
    *,
    cwd: str | os.PathLike = "/",
    env: Mapping[str, str] | None = None,
    **kw,
) -> subprocess.Popen:
    """Popen counterpart of ``run_as`` (same runuser wrapping and cwd default)."""
    return subprocess.Popen(_as_user_argv(user, cmd), cwd=cwd, env=dict(env) if env is not None else None, **kw)


def chown_tree(path: str | os.PathLike, user: str) -> None:
    """Recursively chown ``path`` to ``user`` and its primary group (symlinks not followed)."""
    uid, gid = user_ids(user)
    root = Path(path)
    os.lchown(root, uid, gid)
    if root.is_symlink() or not root.is_dir():
        return
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.lchown(os.path.join(dirpath, name), uid, gid)


def make_tmp_dir(base: str | os.PathLike, name: str, owner: str = "postgres", mode: int = 0o700) -> Path:
    """Create ``base/name`` (parents as needed), owned by ``owner`` with ``mode``."""
    path = Path(base) / name
    path.mkdir(parents=True, exist_ok=True)
    uid, gid = user_ids(owner)
    os.chown(path, uid, gid)
    os.chmod(path, mode)
    return path
