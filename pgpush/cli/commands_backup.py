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
    """Base backup of pg1 (a primary or a standby) into every repository (--repo=N: that one): --type
    full|diff|incr, --wait, --wait-timeout."""
    from pgpush.commands import backup

    cfg = configure_log(ctx, "backup")
    outcome = backup.run(cfg)
    for repo, record in outcome.records:
        where = f" in {repo}" if outcome.several else ""
        if record["status"] == backup.DONE:
            say(f"backup {record['label']} is DONE{where}: WAL {record['wal_start']} to {record['wal_stop']} "
                "is archived")
        else:
            say(f"backup {record['label']} is {record['status']}{where}: {record.get('status_detail')}; it becomes "
                "DONE once that WAL is archived (use --wait to wait for it)")
    if outcome.failed:  # several repositories, some of which hold the backup: the cron job must see who missed it
        held = ", ".join(repo for repo, _ in outcome.records)
        for target in outcome.failed:
            kept = f"backup {target.record['label']} is kept there, not usable yet" if target.committed and \
                target.record else "it does not hold the backup"
            say(f"{target.name} failed: {kept}; the backup is stored in {held}")
        error = outcome.failed[0].error  # the first failed repository's, named after it
        assert error is not None
        raise error


@command("restore")
def restore_cmd(ctx: typer.Context) -> None:
    """Restore a backup into pg1-path and configure recovery (restore_command = pgpush get)."""
    from pgpush.commands import restore

    cfg = configure_log(ctx, "restore")
    say(restore.run(cfg))


@command("info")
def info_cmd(ctx: typer.Context) -> None:
    """Stanzas, archive range, gaps and dropped WAL, backups with status, per repository (--repo, --output text|json)."""
    from pgpush.commands import info

    cfg = configure_log(ctx, "info")
    sys.stdout.write(info.run(cfg))
    sys.stdout.flush()


@command("expire")
def expire_cmd(ctx: typer.Context) -> None:
    """Apply retention (repoN-retention-full, each repository its own; --repo): remove old backups and the WAL only they needed."""
    from pgpush.commands import expire

    cfg = configure_log(ctx, "expire")
    report, failure = expire.run(cfg)
    if report:
        say(report)
    if failure is not None:
        raise failure


@command("verify")
def verify_cmd(ctx: typer.Context) -> None:
    """Re-read every file in every repository (--repo: one): checksums, WAL continuity."""
    from pgpush.commands import verify

    cfg = configure_log(ctx, "verify")
    report, _problems, failure = verify.run(cfg)
    sys.stdout.write(report)
    sys.stdout.flush()
    if failure is not None:
        raise failure


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
