"""Foreground ``push``/``get`` in asynchronous mode, with the stdlib only.

This is what PostgreSQL runs once per WAL segment.  It answers from the spool
when the background parent has already done the work, else starts the parent
(see :mod:`pgpush.archive.lock` for the hand-off) and waits up to
``archive-timeout``.  Returning ``None`` hands the call over to the full CLI
(files that are never spooled: ``.history``, ``.partial``, ``.backup`` on get).
"""

from __future__ import annotations

import contextlib
import os
import time

from pgpush import fsutil, wal
from pgpush.archive import lock, spool
from pgpush.config import Config
from pgpush.errors import (
    ArchiveTimeoutError,
    FileMissingError,
    FormatError,
    PathCreateError,
    PgPushError,
    error_from_text,
)
from pgpush.log import LOG, open_log_file


def start_parent(cfg: Config, command: str, lock_fd: int, extra_args: list[str], log_file: str | None) -> None:
    """Start the detached background parent, handing it the locked ``lock_fd``.

    Double fork: the parent gets its own session and is re-parented, so it
    outlives the foreground and PostgreSQL does not wait for it.
    """
    argv = fsutil.self_command() + [command] + cfg.to_argv() + extra_args
    env = dict(os.environ)
    env.update(cfg.secret_env())
    env["PGPUSH_LOCK_FD"] = str(lock_fd)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            os.setsid()
            if os.fork() != 0:
                os._exit(0)
            os.set_inheritable(lock_fd, True)
            null = os.open(os.devnull, os.O_RDWR)
            os.dup2(null, 0)
            out = null
            if log_file:
                with contextlib.suppress(OSError):  # a FIFO or unwritable file: run without it
                    out = open_log_file(log_file)
            os.dup2(out, 1)
            os.dup2(out, 2)
            os.execve(argv[0], argv, env)
        finally:
            os._exit(127)
    os.waitpid(pid, 0)


def _ensure_parent(cfg: Config, sdir: str, qdir: str, direction: str, extra: list[str]) -> bool:
    """Start a parent if none holds the lock.  True when we started one."""
    path = lock.lock_path(sdir, direction)
    fd = lock.try_lock(path)
    if fd is None:
        return False
    try:
        # No parent runs: errors on file are stale, the new parent tries again.
        spool.remove(os.path.join(qdir, spool.GLOBAL_ERROR))
        for name in extra[-1:]:
            spool.remove(os.path.join(qdir, os.path.basename(name) + ".error"))
        log_file = None
        if cfg["log-level-file"] != "off":
            log_file = os.path.join(str(cfg["log-path"]), f"{cfg.stanza}-archive-{'push' if direction == 'out' else 'get'}-async.log")
            if not os.access(os.path.dirname(log_file), os.W_OK):
                log_file = None
        start_parent(cfg, "push-async" if direction == "out" else "get-async", fd, extra, log_file)
    finally:
        os.close(fd)
    return True


def _sleep_steps():
    """Poll intervals: fast at first (the parent is often done within ms), then 100 ms."""
    yield from (0.002, 0.005, 0.01, 0.02, 0.05)
    while True:
        yield 0.1


def run(cfg: Config) -> int | None:
    if cfg.command == "push":
        return push(cfg)
    return get(cfg)


def push(cfg: Config) -> int:
    """Foreground asynchronous push of ``cfg.args[0]``."""
    LOG.configure(cfg, "archive-push")
    if len(cfg.args) != 1:
        raise FormatError("push requires exactly one argument: the WAL file path (%p)")
    wal_path = os.path.join(os.getcwd(), cfg.args[0])  # not abspath: 'x/../f' must not be collapsed
    name = os.path.basename(wal_path)
    wal.kind(name)
    stanza = cfg.stanza
    sdir = spool.stanza_dir(str(cfg["spool-path"]), stanza)
    qdir = spool.queue_dir(str(cfg["spool-path"]), stanza, "out")
    ok = os.path.join(qdir, name + ".ok")
    content = spool.read_status(ok)
    if content is None:
        if not os.path.exists(wal_path):
            raise FileMissingError(f"WAL file '{wal_path}' does not exist")
        deadline = time.monotonic() + float(cfg["archive-timeout"])
        started = _ensure_parent(cfg, sdir, qdir, "out", [os.path.dirname(wal_path), name])
        steps = _sleep_steps()
        last_check = time.monotonic()
        while True:
            content = spool.read_status(ok)
            if content is not None:
                break
            text = _first_error(qdir, name)
            if text is not None and not started:
                # Left by a parent that tried before this call; if that parent has exited
                # since, the verdict is about an earlier attempt (the host may be back):
                # start a fresh parent once, and report what that one finds.
                started = _ensure_parent(cfg, sdir, qdir, "out", [os.path.dirname(wal_path), name])
                last_check = time.monotonic()
                text = None if started else _first_error(qdir, name)
            if text is not None:
                raise error_from_text(text)
            now = time.monotonic()
            if now >= deadline:
                raise ArchiveTimeoutError(
                    f"unable to push WAL file '{name}' to the archive asynchronously after {cfg['archive-timeout']:g} second(s)"
                )
            if now - last_check > 0.5:
                # The parent we saw may have finished before our file was ready, or the one we
                # started may have died (killed, out of memory) without a verdict: start another.
                started = _ensure_parent(cfg, sdir, qdir, "out", [os.path.dirname(wal_path), name]) or started
                last_check = now
            time.sleep(next(steps))
    warning = spool.ok_warning(content)
    if warning:
        LOG.warn(warning)
    else:
        LOG.info(f"pushed WAL file '{name}' to the archive asynchronously")
    return 0


def _first_error(qdir: str, name: str) -> str | None:
    """The text of ``NAME.error`` or, failing that, ``global.error``."""
    for err in (name + ".error", spool.GLOBAL_ERROR):
        text = spool.read_status(os.path.join(qdir, err))
        if text is not None:
            return text
    return None


def get(cfg: Config) -> int | None:
    """Foreground asynchronous get: ``cfg.args`` is ``WAL_NAME DEST_PATH``."""
    if len(cfg.args) != 2:
        raise FormatError("get requires two arguments: the WAL file name (%f) and the destination path (%p)")
    name, dest = cfg.args
    if wal.kind(name) != "segment":
        return None  # history, partial, backup: fetched directly, never cached
    LOG.configure(cfg, "archive-get")
    sdir = spool.stanza_dir(str(cfg["spool-path"]), cfg.stanza)
    qdir = spool.queue_dir(str(cfg["spool-path"]), cfg.stanza, "in")
    deadline = time.monotonic() + float(cfg["archive-timeout"])
    pgdata = os.path.abspath(str(cfg.get("pg1-path") or os.getcwd()))
    steps = _sleep_steps()
    last_check = 0.0
    request: str | None = None  # what this call wrote into in/request
    while True:
        if _take(os.path.join(qdir, name), dest):
            LOG.info(f"found {name} in the archive asynchronously")
            try:
                _refill_if_low(cfg, sdir, qdir, name, pgdata)
            except PgPushError as exc:
                # The segment is at %p: any failure now would make PostgreSQL take it for the
                # end of the archive.  Prefetching is only an optimisation; the next call asks.
                LOG.warn(f"unable to ask for the next WAL file in advance: [{exc.code:03d}]: {exc.message}")
            return 0
        ok = os.path.join(qdir, name + ".ok")
        if request is not None and spool.read_status(ok) == request:
            # Only the parent's answer to this very request: a marker written for an
            # earlier one may be stale (the segment archived since); the parent looks again.
            spool.remove(ok)
            LOG.info(f"unable to find {name} in the archive asynchronously")
            return 1
        text = spool.read_status(os.path.join(qdir, name + ".error"))
        if text is not None and request is not None:
            spool.remove(os.path.join(qdir, name + ".error"))
            raise error_from_text(text)
        text = spool.read_status(os.path.join(qdir, spool.GLOBAL_ERROR))
        if text is not None and request is not None:
            # The repository is unreachable.  Exit 1 would end recovery as if the
            # archive were exhausted, so ride the outage out until archive-timeout,
            # restarting the parent, and fail with the real error only then.
            if time.monotonic() + 0.5 >= deadline:
                spool.remove(os.path.join(qdir, spool.GLOBAL_ERROR))
                raise error_from_text(text)
            if not lock.is_locked(lock.lock_path(sdir, "in")):
                last_check = time.monotonic() + 0.5  # retry the parent about once a second
        if request is None:
            request = _write_request(qdir, name)
            # A NAME.error there now answered an earlier request (a prefetch): the repository
            # may serve the file since, and PostgreSQL takes any failure as the end of the
            # archive.  Only an error the parent writes for this request is the answer.
            spool.remove(os.path.join(qdir, name + ".error"))
        now = time.monotonic()
        if now >= deadline:
            raise ArchiveTimeoutError(
                f"unable to get WAL file '{name}' from the archive asynchronously after {cfg['archive-timeout']:g} second(s)"
            )
        if now - last_check > 0.5:
            # No parent yet, or the one we started died (killed, out of memory) without answering
            # our request: start another rather than wait out archive-timeout for nothing.
            _ensure_parent(cfg, sdir, qdir, "in", [pgdata, name])
            last_check = now
        time.sleep(next(steps))


def _write_request(qdir: str, name: str) -> str:
    """Name the segment recovery wants, with a tag unique to this call: asking again for a
    segment the parent already found missing must still look like a new request to it.
    Returns the request's text, which the parent's "missing" answer to it carries."""
    text = f"{name} {os.getpid()}-{time.monotonic_ns()}"
    spool.write_atomic(qdir, "request", text.encode())
    return text


def _take(src: str, dest: str) -> bool:
    """Move a prefetched segment to ``dest`` (copy when across filesystems)."""
    try:
        os.replace(src, dest)
        return True
    except FileNotFoundError as exc:
        if not os.path.lexists(src):
            return False  # not prefetched (yet)
        raise PathCreateError(f"unable to write WAL file '{dest}': {exc.strerror}") from None  # %p's directory is gone
    except OSError as exc:
        import errno

        if exc.errno != errno.EXDEV:  # e.g. %p is a directory: say so with the path's code
            raise PathCreateError(f"unable to write WAL file '{dest}': {exc.strerror}") from None
    import shutil

    tmp = dest + fsutil.TMP_SUFFIX
    try:
        # 0600 whatever the caller's umask: WAL is the database's data
        with open(src, "rb") as fin, open(fsutil.create_temporary(dest, 0o600), "wb") as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)
        os.replace(tmp, dest)
    except OSError as exc:
        # %p's file system full or failing: no half copy beside %p, the segment stays in the
        # spool for the retry, and the failure has the path's code
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, FileNotFoundError) and not os.path.lexists(src):
            return False  # taken by another call meanwhile
        raise PathCreateError(f"unable to write WAL file '{dest}': {exc.strerror}") from None
    spool.remove(src)
    return True



def _refill_if_low(cfg: Config, sdir: str, qdir: str, name: str, pgdata: str) -> None:
    """Name the next segment for the parent; start one when none runs and the queue is below half."""
    seg_size = wal.control_segment_size(pgdata)
    nxt = wal.next_segment(name, seg_size)
    _write_request(qdir, nxt)
    try:
        ready = [n for n in os.listdir(qdir) if wal.is_segment(n)]
    except OSError:
        return
    window = max(1, int(cfg["archive-get-queue-max"]) // seg_size)
    if len(ready) < window // 2 + 1:
        _ensure_parent(cfg, sdir, qdir, "in", [pgdata, nxt])
