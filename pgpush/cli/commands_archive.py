"""CLI commands of the archive: version, push, get (synchronous), stanza-create.

Thin: each command configures its log group and calls its core module, imported lazily.
"""

from __future__ import annotations

import typer

from pgpush.cli.app import command, configure_log, say
from pgpush.errors import WalNotFound


@command("version")
def version_cmd() -> None:
    """Print the version, the interpreter and the bundled set."""
    from pgpush import version_line

    print(version_line())


@command("push")
def push_cmd(ctx: typer.Context, wal_path: str = typer.Argument(..., help="WAL file to archive (%p)")) -> None:
    """Archive one WAL file (archive_command)."""
    from pgpush.archive import core

    core.push(configure_log(ctx, "archive-push"), wal_path)


@command("get")
def get_cmd(ctx: typer.Context, wal_name: str = typer.Argument(..., help="WAL file name (%f)"),
            dest_path: str = typer.Argument(..., help="where to write it (%p)")) -> None:
    """Restore one WAL file (restore_command); exit 1 when not in the archive."""
    from pgpush.archive import core

    if core.get(configure_log(ctx, "archive-get"), wal_name, dest_path) == 1:
        raise WalNotFound(wal_name)


@command("stanza-create")
def stanza_create_cmd(ctx: typer.Context) -> None:
    """Create the stanza, recording the cluster's system identifier and version."""
    from pgpush.commands import stanza

    say(stanza.create(configure_log(ctx, "stanza-create")))
