"""The typer application: thin commands that call a core function.

Options are parsed once by :mod:`pgpush.config` (they may stand before or
after the command, come from the environment or the config file); typer
dispatches the command, checks its positional arguments and renders help.
Exit codes are decided in one place: :func:`pgpush.errors.exit_code_for`.
"""

from __future__ import annotations

import sys

import typer

from pgpush import __version__, config
from pgpush.errors import OptionInvalidError, WalNotFound
from pgpush.log import LOG
from pgpush.options import OPTIONS, SECTION_HELP

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  context_settings={"help_option_names": ["--help", "-h"]},
                  help="pgpush: WAL archiver and backup tool for PostgreSQL. Options may stand before or after the "
                       "command; see `pgpush OPTION-LIST` below or docs/configuration.md.")
_CFG: config.Config | None = None
LOG_GROUPS = {"push": "archive-push", "get": "archive-get"}


def _options_epilog(command: str | None) -> str:
    lines = []
    for section, title in SECTION_HELP.items():
        opts = [o for o in OPTIONS if o.section == section and (not o.commands if command is None else command in o.commands)]
        if not opts:
            continue
        lines.append(f"{title}:")
        for o in opts:
            lines.append(f"  --{o.name}  {o.help}")
    return "\n".join(lines)


def _cfg() -> config.Config:
    assert _CFG is not None
    return _CFG


def _configure_log(group: str) -> config.Config:
    cfg = _cfg()
    LOG.configure(cfg, group)
    return cfg


def command(name: str, **kw):
    """Register a typer command whose epilog lists its options from the table."""
    epilog = _options_epilog(name) or None
    return app.command(name, epilog=epilog, **kw)


@command("version")
def version_cmd() -> None:
    """Print the version."""
    print(f"pgpush {__version__}")


@command("push")
def push_cmd(wal_path: str = typer.Argument(..., help="WAL file to archive (%p)")) -> None:
    """Archive one WAL file (archive_command)."""
    from pgpush import archive

    cfg = _configure_log("archive-push")
    archive.push(cfg, wal_path)


@command("get")
def get_cmd(wal_name: str = typer.Argument(..., help="WAL file name (%f)"),
            dest_path: str = typer.Argument(..., help="where to write it (%p)")) -> None:
    """Restore one WAL file (restore_command); exit 1 when not in the archive."""
    from pgpush import archive

    cfg = _configure_log("archive-get")
    if archive.get(cfg, wal_name, dest_path) == 1:
        raise WalNotFound(wal_name)


@command("stanza-create")
def stanza_create_cmd() -> None:
    """Create the stanza, recording the cluster's system identifier and version."""
    from pgpush import stanza

    cfg = _configure_log("stanza-create")
    message = stanza.create(cfg)
    LOG.info(message)
    print(message)


def run(argv: list[str], cfg: config.Config | None = None) -> int:
    """Dispatch a parsed command to typer; usage errors become pgBackRest's usage code (31).

    Everything else propagates to the guarded entry, :func:`pgpush.__main__.main`, the one
    place that turns exceptions into exit codes.
    """
    global _CFG
    cfg = config.load(argv) if cfg is None else cfg
    _CFG = cfg
    if cfg.command == "help":
        typer_args = cfg.args + ["--help"]
    else:
        typer_args = [cfg.command] + cfg.args
    try:
        app(typer_args, standalone_mode=False, prog_name="pgpush")
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        raise KeyboardInterrupt from None
    except _usage_error() as exc:
        raise OptionInvalidError(" ".join(exc.format_message().split())) from None
    return 0


def _usage_error() -> type[Exception]:
    """The usage-error class of the click typer runs on: recent typer vendors its own copy
    (no ``click`` package is bundled), older typer uses ``click``; either way it is a base of
    the public ``typer.BadParameter``."""
    return next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")


def main() -> None:
    """The ``pgpush`` console script: through the guarded entry like every other way in."""
    from pgpush.__main__ import main as guarded_main

    sys.exit(guarded_main(sys.argv[1:]))


from pgpush import cli_backup  # noqa: E402,F401
