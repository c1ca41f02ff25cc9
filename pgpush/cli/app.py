"""The typer application and how a command registers with it; imports no command module.

Options are parsed once by :mod:`pgpush.config` (they may stand before or after the
command, come from the environment or the config file); typer dispatches the command,
checks its positional arguments and renders help.  The parsed :class:`~pgpush.config.Config`
reaches a command as the click context's ``obj`` (no module global), and exit codes are
decided in one place: :func:`pgpush.errors.exit_code_for`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import typer

from pgpush.config import Config
from pgpush.log import LOG
from pgpush.options import DOCUMENTED, REPO_NOTE, SECTION_HELP

F = TypeVar("F", bound=Callable[..., Any])

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  context_settings={"help_option_names": ["--help", "-h"]},
                  help="pgpush: WAL archiver and backup tool for PostgreSQL. Options may stand before or after the "
                       "command; see `pgpush OPTION-LIST` below or docs/configuration.md.")


def _options_epilog(command: str | None) -> str:
    lines = []
    for section, title in SECTION_HELP.items():
        opts = [o for o in DOCUMENTED if o.section == section and (not o.commands if command is None else command in o.commands)]
        if not opts:
            continue
        lines.append(f"{title}:")
        if section == "repo":
            lines.append("  " + REPO_NOTE)
        for o in opts:
            lines.append(f"  --{o.name}  {o.help}")
    return "\n".join(lines)


def command(name: str) -> Callable[[F], F]:
    """Register a typer command whose epilog lists its options from the table."""
    return app.command(name, epilog=_options_epilog(name) or None)


def configure_log(ctx: typer.Context, group: str) -> Config:
    """The command's parsed configuration, with the log set up for its log group."""
    cfg = ctx.obj
    if not isinstance(cfg, Config):  # pragma: no cover - run() always passes it
        raise TypeError("the CLI was started without a parsed configuration")
    LOG.configure(cfg, group)
    return cfg


def say(message: str) -> None:
    """A result line for the operator: on stdout, and in the log file."""
    LOG.info(message)
    print(message, flush=True)
