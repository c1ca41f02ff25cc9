"""Entry point: answers the hot path with the stdlib, else hands over to the CLI.

PostgreSQL starts pgpush once per WAL segment.  In asynchronous mode the
foreground ``push``/``get`` only looks into the spool (and, when needed,
starts the background parent and waits), so this module resolves the options
and serves those commands without importing typer, rich, paramiko, psycopg or
the compression libraries.  ``bootstrap`` is supplied by the zipapp: it makes
the bundled third-party packages importable (extracting native extensions on
first use) and is called only when the full CLI is needed.

Every way into pgpush (the foreground push/get, the CLI, the background
parents, the workers, the ``pgpush`` console script) goes through :func:`main`, the one
guarded entry: whatever happens below it, the process ends with 0, 1 for
"not in the archive" on ``get`` and nothing else, or a code from 2 to 125
announced by exactly one ``ERROR: [NNN]:`` line, never a traceback (that goes
to the log at debug level).
"""

from __future__ import annotations

import sys
from collections.abc import Callable

# Not typing's: the hot path starts here and never imports typing (config.py does the same).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import TextIO


def main(argv: list[str] | None = None, bootstrap: Callable[[], None] | None = None, bundle: str | None = None) -> int:
    """Run one pgpush command and return its exit status (see the module docstring).

    ``bundle`` names the zipapp's dependency set for this interpreter (``version`` prints it)."""
    if bundle is not None:
        import pgpush

        pgpush.bundle = bundle
    argv = sys.argv[1:] if argv is None else list(argv)
    _open_standard_streams()
    from pgpush.log import LOG

    LOG.reset()
    seen: dict[str, str] = {}
    try:
        rc = _dispatch(argv, bootstrap, seen)
        _flush_stdout()
    except BaseException as exc:  # noqa: BLE001 - the one place every failure becomes an exit code
        if not _flush_stdout(report=False) and isinstance(exc, OSError):
            exc = _stdout_error(exc)  # the command's own write to a full or closed stdout
        status = _report(exc, seen.get("command"))
    else:
        status = _status(rc, seen.get("command"))
    try:
        _flush_or_silence(sys.stderr, 2)
    except OSError:
        pass  # the console is gone; the exit status still carries the verdict
    return status


def _open_standard_streams() -> None:
    """Give descriptors 0, 1 and 2 a target (``/dev/null``) when pgpush was started without them.

    A closed descriptor is handed to the next file opened: a lock file, a WAL file or a
    repository file would become "stdout" or "stderr" and receive what is meant for the
    console.  ``sys.stdout``/``sys.stderr`` are None in that case; they get ``/dev/null`` too, so
    output is dropped instead of failing the command.
    """
    import os

    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
    if sys.stdout is None:
        sys.stdout = open(os.devnull, "w")  # lives as long as the process: never closed
    if sys.stderr is None:
        sys.stderr = open(os.devnull, "w")


def _flush_stdout(report: bool = True) -> bool:
    """Flush what the command printed while its failure can still be reported: True when
    flushed; else 064 is raised (``report``), or False (the command failed already and its
    own error is the one to report)."""
    try:
        _flush_or_silence(sys.stdout, 1)
    except OSError as exc:
        if report:
            raise _stdout_error(exc) from None
        return False
    return True


def _flush_or_silence(stream: TextIO, fd: int) -> None:
    """Flush ``stream``; when that fails, point descriptor ``fd`` at ``/dev/null`` and re-raise.

    Left to the interpreter's exit, a failed flush (``> /dev/full``, a closed pipe) ends the
    process with status 120 and no ``ERROR:`` line; on ``/dev/null`` its last flush succeeds.
    """
    import os

    try:
        stream.flush()
    except (OSError, ValueError, AttributeError) as exc:
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(null, fd)
        finally:
            os.close(null)
        if isinstance(exc, OSError):
            raise


def _stdout_error(exc: OSError) -> BaseException:
    from pgpush.errors import FileWriteError

    return FileWriteError(f"unable to write to standard output: {exc.strerror or exc}")


# Positional arguments of the commands pgpush answers before the CLI: (fewest, most, what).
_ARGUMENTS = {
    "version": (0, 0, ""),
    "push": (1, 1, "the WAL file path (%p)"),
    "get": (2, 2, "the WAL file name (%f) and the destination path (%p)"),
    "push-async": (1, 2, "the WAL directory"),
    "get-async": (1, 2, "the data directory"),
    "worker": (1, 1, "the kind of work"),
}


def _dispatch(argv: list[str], bootstrap: Callable[[], None] | None, seen: dict[str, str]) -> int:
    """Parse the options and run the command: the fast paths here, the rest in the CLI."""
    from pgpush import config

    cfg = config.load(argv)
    seen["command"] = cfg.command
    _check_arguments(cfg.command, cfg.args)
    if cfg.command == "version":
        from pgpush import version_line

        print(version_line())
        return 0
    if cfg.command in ("push", "get") and cfg["archive-async"]:
        from pgpush.archive import foreground

        rc = foreground.run(cfg)
        if rc is not None:
            return rc
    if cfg.command in ("push", "get"):
        # Synchronous, or a file async get never caches (.history, .partial): the
        # repository libraries are needed, the CLI (typer, rich) is not.
        _bootstrap(bootstrap)
        from pgpush.archive import core

        return core.run_command(cfg)
    if cfg.command in ("push-async", "get-async"):
        # The background parents only hand out names and write status files: the
        # stdlib suffices, so they never pay for (or hold in memory) paramiko & co.
        if cfg.command == "push-async":
            from pgpush.archive import push_parent

            return push_parent.run(cfg)
        from pgpush.archive import get_parent

        return get_parent.run(cfg)
    if cfg.command == "worker":
        _bootstrap(bootstrap)
        from pgpush.archive import worker  # repository work, but no CLI (typer, rich)

        return worker.run(cfg)
    _bootstrap(bootstrap)
    from pgpush.cli.main import run

    return run(argv, cfg)


def _check_arguments(command: str, args: list[str]) -> None:
    """A missing argument is 043 (pgBackRest's ParamRequiredError, as for ``push`` without
    ``%p``), one too many a usage error (031): checked once, before any command runs."""
    if command not in _ARGUMENTS:
        return  # the CLI's commands: typer checks their arguments
    from pgpush.errors import OptionInvalidError, ParamRequiredError

    fewest, most, what = _ARGUMENTS[command]
    if len(args) < fewest:
        raise ParamRequiredError(f"{command} command requires {what}")
    if len(args) > most:
        extra = " ".join(repr(a) for a in args[most:])[:200]
        raise OptionInvalidError(f"{command} command takes {'no arguments' if not most else what}; extra argument(s): {extra}")


def _bootstrap(bootstrap: Callable[[], None] | None) -> None:
    if bootstrap is not None:
        bootstrap()


def _status(rc: object, command: str | None) -> int:
    """The exit status for a command that returned ``rc``: 1 is kept only for ``get``."""
    if rc == 0 or rc is None:
        return 0
    if rc == 1 and command == "get":
        return 1
    from pgpush.errors import UnexpectedError

    if not isinstance(rc, int):
        return _report(UnexpectedError(f"command ended with a non-numeric status {rc!r}"), command)
    if rc == 1:
        return _report(UnexpectedError("command failed without saying why (exit status 1)"), command)
    return min(max(rc, 2), 125)


def _report(exc: BaseException, command: str | None) -> int:
    """Report ``exc`` as one ``ERROR: [NNN]:`` line and return its exit code."""
    from pgpush.errors import PgPushError, TermError, UnexpectedError, WalNotFound, exit_code_for, unexpected
    from pgpush.log import LOG

    if isinstance(exc, WalNotFound) and command == "get":
        return 1
    if isinstance(exc, SystemExit):
        if isinstance(exc.code, int) or exc.code is None:
            return _status(exc.code, command)
        exc = UnexpectedError(" ".join(str(exc.code).split()))
    elif isinstance(exc, KeyboardInterrupt):
        exc = TermError("terminated on signal [SIGINT]")
    elif not isinstance(exc, PgPushError):
        import traceback

        # The three-argument form: the one-argument form is Python 3.10+, and on 3.9 its
        # TypeError escaped the guard as a traceback with exit 1 ("not in the archive").
        LOG.debug("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip())
        exc = unexpected(exc)
    code = exit_code_for(exc)
    if isinstance(exc, PgPushError) and exc.code != code:  # outside 2..125 (a bug): the line says the status
        exc = PgPushError(exc.message, code)
    try:
        LOG.exception(exc)
    except Exception:  # noqa: BLE001 - no console and no log: the exit code still says it
        pass
    return code


if __name__ == "__main__":
    sys.exit(main())
