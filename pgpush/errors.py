"""Error classes that carry their pgBackRest-compatible code.

Every failure that reaches the user is a :class:`PgPushError`; the exit code of
the process is the error's ``code`` (docs/operations.md, "Exit codes of these commands"), decided in exactly one place:
:func:`exit_code_for`.  ``get`` exits 1 only for "not in the archive", which is
not an error class but a normal outcome (:class:`WalNotFound` is used
internally and mapped to 1).
"""

from __future__ import annotations


class PgPushError(Exception):
    """Base class: ``code`` is the exit code and the number in ``ERROR: [NNN]``."""

    code = 25

    def __init__(self, message: str, code: int | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return self.message

    def render(self) -> str:
        """The console form: ``ERROR: [082]: message`` (first line only)."""
        return f"ERROR: [{self.code:03d}]: {self.message}"


class AssertError(PgPushError):
    """An internal assertion failed: this is a bug in pgpush."""

    code = 25


class CommandError(PgPushError):
    """The command line is malformed (unknown command, missing argument)."""

    code = 31


class FormatError(PgPushError):
    """Malformed input: bad WAL header, wrongly sized segment, bad status file."""

    code = 29


class OptionInvalidError(PgPushError):
    """An option that does not exist, or a command line that cannot be parsed (a usage error)."""

    code = 31


class OptionInvalidValueError(PgPushError):
    """An option's value is invalid (or the option is unknown)."""

    code = 32


class OptionRequiredError(PgPushError):
    """A required option is missing."""

    code = 37


class FileReadError(PgPushError):
    """A repository file could not be read or is corrupt."""

    code = 42


class ParamRequiredError(PgPushError):
    """A required argument is missing (``push`` without ``%p``, ``get`` without ``%f``/``%p``)."""

    code = 43


class ArchiveMismatchError(PgPushError):
    """The cluster's system identifier or version differ from the stanza."""

    code = 44


class ArchiveDuplicateError(PgPushError):
    """The WAL file is already archived with a different checksum."""

    code = 45


class VersionNotSupportedError(PgPushError):
    """Unknown WAL magic or pg_control version."""

    code = 46


class PathCreateError(PgPushError):
    """A local path (spool, log) cannot be created or written."""

    code = 47


class FileWriteError(PgPushError):
    """A local file or stream could not be written (e.g. standard output is full or closed)."""

    code = 64


class FileMissingError(PgPushError):
    """A file that must exist does not."""

    code = 55


class DbConnectError(PgPushError):
    """PostgreSQL could not be reached or queried."""

    code = 56


class DbQueryError(PgPushError):
    """A query on PostgreSQL failed."""

    code = 57


class PgRunningError(PgPushError):
    """PostgreSQL runs in the data directory a restore was asked to write."""

    code = 38


class PathNotEmptyError(PgPushError):
    """A restore into a non-empty data directory without --delta or --force."""

    code = 40


class BackupSetInvalidError(PgPushError):
    """The backup named by --set does not exist, or no backup can be restored."""

    code = 75


class ArchiveDisabledError(PgPushError):
    """archive_mode is off: a backup's WAL would never reach the repository."""

    code = 87


class ArchiveTimeoutError(PgPushError):
    """Timed out waiting for the async parent (``archive-timeout``)."""

    code = 82


class BackupWaitTimeout(PgPushError):
    """``backup --wait-timeout`` expired before the backup's WAL was archived."""

    code = 3


class RepoInvalidError(PgPushError):
    """The repository cannot be reached or used."""

    code = 103


class TermError(PgPushError):
    """Interrupted (SIGINT): pgBackRest's code, not the shell's 130 that PostgreSQL treats as fatal."""

    code = 63


class WalNotFound(Exception):
    """Not an error: ``get`` of a file the archive does not hold (exit 1)."""


def exit_code_for(exc: BaseException) -> int:
    """The single mapping from an exception to the process exit code.

    Codes are clamped to 2..125 so that nothing but "not found" exits 1 and
    nothing makes PostgreSQL abort recovery (126+).
    """
    if isinstance(exc, WalNotFound):
        return 1
    if isinstance(exc, PgPushError):
        code = exc.code
    else:
        code = 25
    return min(max(code, 2), 125)


def unexpected(exc: BaseException) -> PgPushError:
    """Wrap an exception that is not a pgpush error (a bug, or an OS error nobody expected)
    as code 25, on one line: the console must show exactly one ``ERROR: [025]:`` line."""
    text = " ".join(str(exc).split())
    return AssertError(f"{type(exc).__name__}: {text}" if text else type(exc).__name__)


def error_from_text(text: str) -> PgPushError:
    """Rebuild an error from a spool ``.error`` file: first line the code."""
    lines = text.split("\n", 1)
    try:
        code = int(lines[0].strip())
    except ValueError:
        code = 0
    if not 2 <= code <= 125:  # a code nothing could have written: not a verdict to pass on
        return FormatError(f"status file is malformed: {text[:200]!r}")
    message = lines[1].rstrip("\n") if len(lines) > 1 else "unknown error"
    return PgPushError(message, code)
