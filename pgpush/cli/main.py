"""Dispatch a parsed command line to the typer application (the commands beyond the fast paths)."""

from __future__ import annotations

from typing import Any

import typer

from pgpush import config
from pgpush.cli import commands_archive, commands_backup
from pgpush.cli.app import app
from pgpush.errors import OptionInvalidError

COMMAND_MODULES = (commands_archive, commands_backup)  # imported for their @command registrations


def run(argv: list[str], cfg: config.Config | None = None) -> int:
    """Run one CLI command; usage errors become pgBackRest's usage code (31).

    Everything else propagates to the guarded entry, :func:`pgpush.__main__.main`, the one
    place that turns exceptions into exit codes.
    """
    cfg = config.load(argv) if cfg is None else cfg
    typer_args = cfg.args + ["--help"] if cfg.command == "help" else [cfg.command] + cfg.args
    try:
        app(typer_args, standalone_mode=False, prog_name="pgpush", obj=cfg)
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        raise KeyboardInterrupt from None
    except _usage_error() as exc:
        raise OptionInvalidError(" ".join(exc.format_message().split())) from None
    return 0


def _usage_error() -> Any:
    """The usage-error class of the click typer runs on: recent typer vendors its own copy
    (no ``click`` package is bundled), older typer uses ``click``; either way it is a base of
    the public ``typer.BadParameter``."""
    return next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")
