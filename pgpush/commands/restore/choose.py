"""Which backup a restore writes, and the recovery type and target it was asked for.

Without ``--set`` the latest ``DONE`` backup is restored (for ``--type time``
the latest ``DONE`` backup that stopped before the target); the choice and why
it was made are logged and printed (docs/operations.md, "Restore and
point-in-time recovery").  The options are checked before anything is read.
"""

from __future__ import annotations

import datetime as dt

from pgpush.commands.restore import recovery
from pgpush.config import Config
from pgpush.errors import BackupSetInvalidError, OptionInvalidValueError, OptionRequiredError
from pgpush.log import LOG
from pgpush.repo import status
from pgpush.repo.records import BackupRecord
from pgpush.repo.status import DONE, WAITING


def recovery_options(cfg: Config) -> tuple[str, str | None, str]:
    """(``--type``, ``--target``, ``--target-action``), refused when they do not go together."""
    rtype = cfg.get("type") or "default"
    if rtype not in recovery.TYPES:
        raise OptionInvalidValueError(
            f"option 'type' has invalid value '{rtype}' {cfg.sources.get('type', '')}: one of "
            + ", ".join(recovery.TYPES) + " is expected")
    target = cfg.get("target")
    if rtype in recovery.TARGET_KEY and not target:
        raise OptionRequiredError(f"restore --type={rtype} requires option: target")
    if target and rtype not in recovery.TARGET_KEY:
        raise OptionInvalidValueError(f"option 'target' is only valid with --type time, lsn, name or xid (not {rtype})")
    return rtype, target, str(cfg["target-action"])


def parse_time(text: str) -> float | None:
    """A recovery_target_time as seconds since the epoch (a time without zone is taken as local time)."""
    try:
        return dt.datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:
        return None


def choose_backup(backups: list[BackupRecord], set_label: str | None, rtype: str,
                  target: str | None) -> tuple[BackupRecord, str]:
    """(backup, why it was chosen)."""
    if set_label:
        for b in backups:
            if b["label"] == set_label:
                if b["status"] != DONE:
                    LOG.warn(f"backup {set_label} is {b['status']}: recovery may not reach consistency "
                             f"({b.get('status_detail')})")
                return b, "given by --set"
        raise BackupSetInvalidError(f"backup set {set_label} is not valid: it is not in the repository")
    done = [b for b in backups if b["status"] == DONE]
    if rtype == "time" and target:
        when = parse_time(target)
        if when is None:
            LOG.warn(f"unable to read recovery target time '{target}': the latest backup is chosen")
        else:
            before = [b for b in done if status.parse_iso(b["stop_time"]) <= when]
            if before:
                return before[-1], "latest DONE backup that stopped before the target time"
            LOG.warn("no DONE backup stopped before the target time: the latest one is chosen")
    if done:
        return done[-1], "latest DONE backup"
    waiting = [b for b in backups if b["status"] == WAITING]
    if waiting:
        LOG.warn(f"no DONE backup: restoring {waiting[-1]['label']}, which is still WAITING_FOR_WALS")
        return waiting[-1], "latest backup (none is DONE yet)"
    raise BackupSetInvalidError("no backup to restore: the stanza has no DONE or WAITING_FOR_WALS backup")
