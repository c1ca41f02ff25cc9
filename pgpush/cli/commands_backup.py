"""CLI commands for backups and the repository catalog: backup, restore, info, expire, verify, check, repo-sync.

Thin: options were parsed by :mod:`pgpush.config` (``cfg["type"]``,
``cfg["wait"]`` ...), each command configures its log group and calls its
core module, imported lazily so ``push``/``get`` never pay for them.
"""

from __future__ import annotations

import sys

import typer

from pgpush.cli.app import command, configure_log, say


@command("backup")
def backup_cmd(ctx: typer.Context) -> None:
    """Base backup of pg1 (a primary or a standby): --type full|diff|incr, --wait, --wait-timeout."""
    from pgpush.commands import backup
    from pgpush.repo.catalog import DONE

    cfg = configure_log(ctx, "backup")
    record = backup.run(cfg)
    if record["status"] == DONE:
        say(f"backup {record['label']} is DONE: WAL {record['wal_start']} to {record['wal_stop']} is archived")
    else:
        say(f"backup {record['label']} is {record['status']}: {record.get('status_detail')}; it becomes DONE "
             "once that WAL is archived (use --wait to wait for it)")


@command("restore")
def restore_cmd(ctx: typer.Context) -> None:
    """Restore a backup into pg1-path and configure recovery (restore_command = pgpush get)."""
    from pgpush.commands import restore

    cfg = configure_log(ctx, "restore")
    say(restore.run(cfg))


@command("info")
def info_cmd(ctx: typer.Context) -> None:
    """Stanzas, archive range, gaps and dropped WAL, backups with status (--output text|json)."""
    from pgpush.commands import info

    cfg = configure_log(ctx, "info")
    sys.stdout.write(info.run(cfg))
    sys.stdout.flush()


@command("expire")
def expire_cmd(ctx: typer.Context) -> None:
    """Apply retention (repo1-retention-full): remove old backups and the WAL only they needed."""
    from pgpush.commands import expire

    cfg = configure_log(ctx, "expire")
    say(expire.run(cfg))


@command("verify")
def verify_cmd(ctx: typer.Context) -> None:
    """Re-read every file in the repository: checksums, WAL continuity."""
    from pgpush.commands import verify

    cfg = configure_log(ctx, "verify")
    report, problems = verify.run(cfg)
    sys.stdout.write(report)
    sys.stdout.flush()
    if problems:
        raise verify.fail(problems)


@command("check")
def check_cmd(ctx: typer.Context) -> None:
    """Config, repository, stanza and archiving all work (forces a WAL switch on a primary)."""
    from pgpush.commands import check

    cfg = configure_log(ctx, "check")
    say(check.run(cfg))


@command("repo-sync")
def repo_sync_cmd(ctx: typer.Context) -> None:
    """Copy into repository --to what it lacks of repository --from: the stanza, WAL and backups,
    each file verified by its checksum; resumable, safe while archiving goes on."""
    from pgpush.commands import reposync

    cfg = configure_log(ctx, "repo-sync")
    summary, problems = reposync.run(cfg)
    say(summary)
    if problems:
        raise reposync.failure(problems)
