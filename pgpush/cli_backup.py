"""CLI commands for backups and the repository catalog: backup, restore, info, expire, verify, check.

Thin: options were parsed by :mod:`pgpush.config` (``cfg["type"]``,
``cfg["wait"]`` ...), each command configures its log group and calls its
core module, imported lazily so ``push``/``get`` never pay for them.
"""

from __future__ import annotations

import sys

from pgpush.cli import _configure_log, command
from pgpush.log import LOG


def _say(message: str) -> None:
    """A result line for the operator: on stdout, and in the log file."""
    LOG.info(message)
    print(message, flush=True)


@command("backup")
def backup_cmd() -> None:
    """Base backup of pg1 (a primary or a standby): --type full|diff|incr, --wait, --wait-timeout."""
    from pgpush import backup
    from pgpush.catalog import DONE

    cfg = _configure_log("backup")
    record = backup.run(cfg)
    if record["status"] == DONE:
        _say(f"backup {record['label']} is DONE: WAL {record['wal_start']} to {record['wal_stop']} is archived")
    else:
        _say(f"backup {record['label']} is {record['status']}: {record.get('status_detail')}; it becomes DONE "
             "once that WAL is archived (use --wait to wait for it)")


@command("restore")
def restore_cmd() -> None:
    """Restore a backup into pg1-path and configure recovery (restore_command = pgpush get)."""
    from pgpush import restore

    cfg = _configure_log("restore")
    _say(restore.run(cfg))


@command("info")
def info_cmd() -> None:
    """Stanzas, archive range, gaps and dropped WAL, backups with status (--output text|json)."""
    from pgpush import info

    cfg = _configure_log("info")
    sys.stdout.write(info.run(cfg))
    sys.stdout.flush()


@command("expire")
def expire_cmd() -> None:
    """Apply retention (repo1-retention-full): remove old backups and the WAL only they needed."""
    from pgpush import expire

    cfg = _configure_log("expire")
    _say(expire.run(cfg))


@command("verify")
def verify_cmd() -> None:
    """Re-read every file in the repository: checksums, WAL continuity."""
    from pgpush import verify

    cfg = _configure_log("verify")
    report, problems = verify.run(cfg)
    sys.stdout.write(report)
    sys.stdout.flush()
    if problems:
        raise verify.fail(problems)


@command("check")
def check_cmd() -> None:
    """Config, repository, stanza and archiving all work (forces a WAL switch on a primary)."""
    from pgpush import check

    cfg = _configure_log("check")
    _say(check.run(cfg))
