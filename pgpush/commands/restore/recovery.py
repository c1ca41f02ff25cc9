"""Recovery settings a restore writes: ``restore_command`` = this pgpush's ``get``, targets, signal files.

PostgreSQL 12+ reads them from ``postgresql.auto.conf`` plus
``recovery.signal``/``standby.signal``; 10 and 11 from ``recovery.conf``.
pgpush's own block in ``postgresql.auto.conf`` sits between two marker
lines and is replaced by the next restore; recovery settings found outside
it (from an earlier tool, or copied with the backup) are commented out, so
PostgreSQL never recovers with two different ``restore_command``s in mind.

The ``restore_command`` repeats every repository, log and spool option the
restore was given on its command line or in the environment, so the
restored cluster's ``get`` reaches the same repositories (all of them, in
their order, whichever one the backup came from: recovery falls back across
them as every ``get`` does); secrets are never
written into the data directory (they must come from the config file or
the server's environment).
"""

from __future__ import annotations

import os
import shlex
import time

from pgpush.config import Config, repo1_name
from pgpush.errors import OptionInvalidValueError
from pgpush.fsutil import self_command, write_atomic
from pgpush.log import LOG
from pgpush.options import BY_NAME

BEGIN = "# pgpush recovery settings: begin (written by pgpush restore; the next restore replaces this block)"
END = "# pgpush recovery settings: end"
RECOVERY_KEYS = frozenset({
    "restore_command", "recovery_target", "recovery_target_time", "recovery_target_lsn", "recovery_target_name",
    "recovery_target_xid", "recovery_target_inclusive", "recovery_target_action", "recovery_target_timeline",
    "standby_mode",
})
PROPAGATED = ("spool-path", "archive-async", "archive-get-queue-max", "archive-timeout", "process-max")
TYPES = ("default", "immediate", "time", "lsn", "name", "xid", "standby")
TARGET_KEY = {"time": "recovery_target_time", "lsn": "recovery_target_lsn", "name": "recovery_target_name",
              "xid": "recovery_target_xid"}


def _propagated(name: str) -> bool:
    """Every repository's options (``repo1-*`` .. ``repo4-*``, not ``--repo``: recovery falls back
    across them all, whichever one the backup came from), the log's, and :data:`PROPAGATED`."""
    return repo1_name(name).startswith("repo1-") or name.startswith("log-") or name in PROPAGATED


def restore_command(cfg: Config, quiet: bool = False) -> str:
    """The shell command PostgreSQL runs to fetch WAL: ``... get %f "%p"``."""
    argv = self_command() + [f"--stanza={cfg.stanza}"] + cfg.to_argv(_propagated, environment=True)
    skipped = [name for name in cfg.given(_propagated, environment=True) if BY_NAME[name].secret]
    if skipped and not quiet:
        LOG.warn(f"restore_command does not carry {', '.join(skipped)}: PostgreSQL's pgpush get must find "
                 "them in the config file or the server's environment")
    return " ".join(shlex.quote(a) for a in argv) + ' get %f "%p"'


# PostgreSQL 13 and older build the restore command in a buffer of MAXPGPATH (1024) bytes and cut what
# passes it; %f and %p are expanded in the same buffer (a WAL name and pg_wal/RECOVERYXLOG), so keep room.
SHORT_COMMAND_BEFORE = 14
COMMAND_MAX = 1023 - 64


def check_command_length(cfg: Config, pg_version: object) -> None:
    """Refuse, before anything is restored, a restore_command that PostgreSQL would cut short: with
    several repositories given on the command line it can pass 1 KB, and a cut command fetches WAL
    with half an option, or none.  Options from the config file travel as one ``--config``."""
    try:
        major = int(str(pg_version).split(".")[0])
    except ValueError:
        return
    command = restore_command(cfg, quiet=True)
    if major < SHORT_COMMAND_BEFORE and len(command) > COMMAND_MAX:
        raise OptionInvalidValueError(
            f"restore_command would be {len(command)} bytes, and PostgreSQL {major} cuts it at 1023 with the WAL "
            "file names: put the repository options in the config file (--config) instead of on the command line")


def settings(cfg: Config, rtype: str, target: str | None, action: str) -> list[tuple[str, str]]:
    """``(key, value)`` recovery settings for the restore type."""
    out = [("restore_command", restore_command(cfg))]
    if rtype == "immediate":
        out.append(("recovery_target", "immediate"))
    elif rtype in TARGET_KEY:
        out.append((TARGET_KEY[rtype], str(target)))
    if rtype not in ("default", "standby"):
        out.append(("recovery_target_action", action))
    return out


def conf_quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _key_of(line: str) -> str | None:
    text = line.strip()
    if not text or text.startswith("#") or "=" not in text:
        return None
    return text.split("=", 1)[0].strip().lower()


def rewrite_auto_conf(text: str, items: list[tuple[str, str]]) -> str:
    """``postgresql.auto.conf`` without pgpush's old block, other recovery settings commented out, our block appended."""
    out: list[str] = []
    inside = False
    for line in text.splitlines():
        if line.startswith(BEGIN.split(" (", 1)[0]):
            inside = True
            continue
        if inside:
            if line.startswith(END):
                inside = False
            continue
        if _key_of(line) in RECOVERY_KEYS:
            out.append(f"# disabled by pgpush restore: {line}")
            continue
        out.append(line)
    while out and not out[-1].strip():
        out.pop()
    out.append(BEGIN)
    out.append(f"# {time.strftime('%Y-%m-%d %H:%M:%S %z')}")
    out += [f"{key} = {conf_quote(value)}" for key, value in items]
    out.append(END)
    return "\n".join(out) + "\n"


def write(pgdata: str, version: int, rtype: str, items: list[tuple[str, str]], uid: int | None, gid: int | None) -> None:
    """Write the settings and the signal file (or recovery.conf before 12)."""
    for name in ("recovery.signal", "standby.signal"):
        _remove(os.path.join(pgdata, name))
    if version >= 12:
        path = os.path.join(pgdata, "postgresql.auto.conf")
        try:  # restored from the repository: not followed if a link, any bytes kept as they are
            with open(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC), encoding="utf-8",
                      errors="surrogateescape") as fh:
                old = fh.read()
        except FileNotFoundError:
            old = "# Do not edit this file manually!\n# It will be overwritten by the ALTER SYSTEM command.\n"
        _write(path, rewrite_auto_conf(old, items), uid, gid)
        _write(os.path.join(pgdata, "standby.signal" if rtype == "standby" else "recovery.signal"), "", uid, gid)
        return
    lines = [BEGIN] + [f"{k} = {conf_quote(v)}" for k, v in items]
    if rtype == "standby":
        lines.append("standby_mode = 'on'")
    _write(os.path.join(pgdata, "recovery.conf"), "\n".join(lines + [END]) + "\n", uid, gid)


def _write(path: str, text: str, uid: int | None, gid: int | None) -> None:
    """Replace ``path`` with ``text``, 0600, owned by the cluster's owner when restoring as root.

    Through a fresh temporary file (whatever is at its name, a link too, is replaced, never written
    through), synced before the rename.
    """
    owner = None if uid is None else (uid, gid if gid is not None else -1)
    write_atomic(path, text.encode("utf-8", "surrogateescape"), 0o600, owner=owner)


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
