"""Console and file logging with the exec-id on every file line.

A tiny logger of our own rather than :mod:`logging`: it is on the hot path,
and pgpush's format is fixed by the contract.  Console lines are
``LEVEL: message`` (errors ``ERROR: [NNN]: message``) on stderr; file lines are
``YYYY-MM-DD HH:MM:SS.mmm EXEC-ID LEVEL: message`` in
``LOG-PATH/STANZA-GROUP.log``.  Secrets never reach this module: options
marked secret are redacted where they are described.
"""

from __future__ import annotations

import os
import sys
import time

# Not typing's: the hot path logs through this module and never imports typing (see config.py).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from pgpush.config import Config

LEVELS = {"off": 0, "error": 1, "warn": 2, "info": 3, "detail": 4, "debug": 5}
_NAMES = {1: "ERROR", 2: "WARN", 3: "INFO", 4: "DETAIL", 5: "DEBUG"}


def new_exec_id() -> str:
    """``PID-XXXXXXXX``: the process id and 8 random hex digits."""
    return f"{os.getpid()}-{os.urandom(4).hex()}"


def open_log_file(path: str) -> int:
    """Open ``path`` for appending; only a regular file will do (raises OSError otherwise).

    Non-blocking open: a FIFO put where the log goes would otherwise block every command, the
    archive_command included, until some reader appears.
    """
    import stat

    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK | os.O_CLOEXEC, 0o640)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(22, "not a regular file", path)
        os.set_blocking(fd, True)
    except OSError:
        os.close(fd)
        raise
    return fd


class Logger:
    def __init__(self) -> None:
        self._fd: int | None = None
        self.reset()

    def reset(self) -> None:
        """Back to the state of a fresh process (console at warn, no file): the guarded entry
        calls this first, so an in-process call never inherits a previous call's levels."""
        if self._fd is not None:
            os.close(self._fd)
        self.console_level = LEVELS["warn"]
        self.file_level = 0
        self.exec_id = new_exec_id()
        self.path: str | None = None
        self._fd = None
        self.console = None  # None: whatever sys.stderr is when a line is written

    def configure(self, cfg: Config, group: str, exec_id: str | None = None, console: bool = True) -> None:
        """Set levels from ``cfg`` and open ``LOG-PATH/STANZA-GROUP.log``.

        A log file that cannot be opened is a warning, not a failure (as in
        pgBackRest): archiving must not stop because /var/log is read-only.
        """
        if exec_id:
            self.exec_id = exec_id
        self.console_level = LEVELS[cfg["log-level-console"]] if console else 0
        self.file_level = LEVELS[cfg["log-level-file"]]
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self.file_level == 0:
            return
        stanza = cfg.get("stanza") or "all"
        path = os.path.join(str(cfg["log-path"]), f"{stanza}-{group}.log")
        try:
            from pgpush.fsutil import makedirs_private

            makedirs_private(os.path.dirname(path))
            self._fd = open_log_file(path)
            self.path = path
        except OSError as exc:
            self.file_level = 0
            self.warn(f"unable to open log file '{path}': {exc.strerror}\nNOTE: process will continue without log file.")

    def _emit(self, level: int, message: str) -> None:
        if level <= self.console_level:
            self._emit_console(f"{_NAMES[level]}: {message}\n")
        if self._fd is not None and level <= self.file_level:
            now = time.time()
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now)) + f".{int(now % 1 * 1000):03d}"
            line = f"{stamp} {self.exec_id} {_NAMES[level]:>6}: {message}\n"
            try:
                os.write(self._fd, line.encode("utf-8", "replace"))
            except OSError:
                pass

    def _emit_console(self, line: str) -> None:
        """Write one console line; a console that is gone loses the line, never the exit code.

        ``sys.stderr`` is None when pgpush was started with descriptor 2 closed (``2>&-``), and
        a full or closed pipe raises: either way the verdict must still reach PostgreSQL as the
        exit status, so a console failure is never an exception of its own.
        """
        console = self.console or sys.stderr
        if console is None:
            return
        try:
            try:
                console.write(line)
            except UnicodeEncodeError:  # a non-UTF-8 argument or file name: escape it, never lose the line
                console.write(line.encode("ascii", "backslashreplace").decode("ascii"))
            console.flush()
        except (OSError, ValueError, AttributeError):
            pass

    def error(self, message: str) -> None:
        self._emit(1, message)

    def warn(self, message: str) -> None:
        self._emit(2, message)

    def info(self, message: str) -> None:
        self._emit(3, message)

    def detail(self, message: str) -> None:
        self._emit(4, message)

    def debug(self, message: str) -> None:
        self._emit(5, message)

    def exception(self, exc: BaseException) -> None:
        """Log a PgPushError as ``[NNN]: message``."""
        code = getattr(exc, "code", 25)
        self._emit(1, f"[{code:03d}]: {exc}")


LOG = Logger()

