"""Error classes that carry their pgBackRest-compatible code.

Every failure that reaches the user is a :class:`PgPushError`; the exit code of
the process is the error's ``code`` (docs/operations.md, "Exit codes of these commands"), decided in exactly one place:
:func:`exit_code_for`.  ``get`` exits 1 only for "not in the archive", which is
not an error class but a normal outcome (:class:`WalNotFound` is used
internally and mapped to 1).

The first paragraph of each class's docstring is its row in the exit-code table of
docs/operations.md (``make docs`` writes it, a test compares): say there what the
operator did or met, not how the code got there.
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

    def in_repo(self, label: str) -> PgPushError:
        """This error said of repository ``label`` (``repo2``): with several repositories every
        message names the one it is about (docs/operations.md, "Several repositories").  Same class
        and code; a message that names it already (the storage's ``repo2: ...``) is kept as it is."""
        if self.message.startswith(f"{label}: ") or f"\n{label}: " in self.message:
            return self
        named = type(self).__new__(type(self))
        PgPushError.__init__(named, f"{label}: {self.message}", self.code)
        named.__dict__.update({k: v for k, v in self.__dict__.items() if k != "message"})
        return named


class UnexpectedError(PgPushError):
    """An unexpected error: a bug in pgpush, or an OS error nobody expected (one ``ERROR: [025]: Type: message``
    line; the traceback is in the log at debug level)."""

    code = 25


class CommandError(PgPushError):
    """An unknown command."""

    code = 31


class FormatError(PgPushError):
    """A malformed input: a bad WAL header or a wrongly sized segment, a ``.history`` file PostgreSQL could not
    read, a spool status file that is not one."""

    code = 29


class OptionInvalidError(PgPushError):
    """A usage error: an unknown option or an extra argument on the command line, an option given to a command
    it does not belong to."""

    code = 31


class OptionInvalidValueError(PgPushError):
    """An invalid option value (e.g. ``--type``, ``primary-conninfo`` naming a standby, a wrong ``pg1-path``), or
    an unknown option in the environment or the config file."""

    code = 32


class OptionRequiredError(PgPushError):
    """A required option is missing (the message names it)."""

    code = 37


class FileReadError(PgPushError):
    """A repository file is corrupt or unreadable (restore, verify)."""

    code = 42


class ParamRequiredError(PgPushError):
    """A required argument is missing (``push`` without ``%p``, ``get`` without ``%f``/``%p``)."""

    code = 43


class ArchiveMismatchError(PgPushError):
    """pg1 (or the primary) is not the stanza's cluster: its system identifier or version differ."""

    code = 44


class ArchiveDuplicateError(PgPushError):
    """A WAL name is stored with another content (push after a split brain; ``get`` of a name stored twice)."""

    code = 45


class VersionNotSupportedError(PgPushError):
    """A WAL file or ``pg_control`` of a PostgreSQL version pgpush does not know (its magic or version)."""

    code = 46


class HostNotSupportedError(PgPushError):
    """This host cannot run this pgpush file: a CPython other than 3.9-3.13 (or older than the set's micro release, or
    a free-threaded `python3.13t`), another machine than x86_64 or aarch64 (or the other machine's file), no glibc
    2.17: one line says which, from the first call on (zipapp_root/__main__.py checks before anything else; the code
    is repeated there)."""

    code = 46


class PathCreateError(PgPushError):
    """A local path cannot be created or written, or would be reached through a symbolic link (spool, ``%p``,
    restore)."""

    code = 47


class FileWriteError(PgPushError):
    """Standard output (or another local stream) could not be written: full or closed."""

    code = 64


class FileMissingError(PgPushError):
    """A file that must exist does not: the WAL file to push, the stanza (``stanza-create`` first), pg1's
    ``pg_control``; or a backup ended ``FAILED``."""

    code = 55


class DbConnectError(PgPushError):
    """PostgreSQL could not be reached (connection failed)."""

    code = 56


class DbQueryError(PgPushError):
    """A query on PostgreSQL failed."""

    code = 57


class PgRunningError(PgPushError):
    """PostgreSQL runs in the data directory a restore was asked to write."""

    code = 38


class PathNotEmptyError(PgPushError):
    """A restore into a non-empty directory (or tablespace) without ``--delta``/``--force``."""

    code = 40


class BackupSetInvalidError(PgPushError):
    """No backup to restore, or ``--set`` names none."""

    code = 75


class ArchiveDisabledError(PgPushError):
    """WAL archiving is off on pg1: a backup's WAL would never reach the repository."""

    code = 87


class ArchiveTimeoutError(PgPushError):
    """Timed out within ``archive-timeout``: an async ``push``/``get`` waiting for its background parent;
    ``check`` waiting for the switched segment to be archived."""

    code = 82


class BackupWaitTimeout(PgPushError):
    """``backup --wait-timeout`` expired; the backup stays ``WAITING_FOR_WALS``."""

    code = 3


class RepoInvalidError(PgPushError):
    """The repository cannot be reached or used: the host or store is down or refuses the login, it is full, or it
    still fails after the retries."""

    code = 103


class LockAcquireError(PgPushError):
    """The repository's catalog lock (``backup/STANZA/catalog.lock``) could not be taken in time: another
    backup or expire holds it."""

    code = 50


class TermError(PgPushError):
    """Interrupted (SIGINT): pgBackRest's code, not the shell's 130 that PostgreSQL treats as fatal."""

    code = 63


class WalNotFound(Exception):
    """Not an error: ``get`` of a WAL file the archive does not hold (the only exit 1; PostgreSQL then ends
    recovery or moves on to its next source)."""


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
    return UnexpectedError(f"{type(exc).__name__}: {text}" if text else type(exc).__name__)


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
