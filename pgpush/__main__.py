"""Entry point: answers the hot path with the stdlib, else hands over to the CLI.

PostgreSQL starts pgpush once per WAL segment.  In asynchronous mode the
foreground ``push``/``get`` only looks into the spool (and, when needed,
starts the background parent and waits), so this module resolves the options
and serves those commands without importing typer, rich, paramiko, psycopg or
the compression libraries.  ``bootstrap`` is supplied by the zipapp: it makes
the bundled third-party packages importable (extracting native extensions on
first use) and is called only when the full CLI is needed.
"""

from __future__ import annotations

import sys
from collections.abc import Callable


def main(argv: list[str] | None = None, bootstrap: Callable[[], None] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    from pgpush.errors import PgPushError, exit_code_for

    try:
        from pgpush import config

        cfg = config.load(argv)
        if cfg.command == "version":
            from pgpush import __version__

            print(f"pgpush {__version__}")
            return 0
        if cfg.command in ("push", "get") and cfg["archive-async"]:
            from pgpush import hotpath

            rc = hotpath.run(cfg)
            if rc is not None:
                return rc
        if cfg.command in ("push", "get"):
            # Synchronous, or a file async get never caches (.history, .partial): the
            # repository libraries are needed, the CLI (typer, rich) is not.
            if bootstrap is not None:
                bootstrap()
            from pgpush import archive

            return archive.run_command(cfg)
        if cfg.command in ("push-async", "get-async"):
            # The background parents only hand out names and write status files: the
            # stdlib suffices, so they never pay for (or hold in memory) paramiko & co.
            if cfg.command == "push-async":
                from pgpush import asyncpush as parent
            else:
                from pgpush import asyncget as parent
            return parent.run(cfg)
        if cfg.command == "worker":
            if bootstrap is not None:
                bootstrap()
            from pgpush import worker  # repository work, but no CLI (typer, rich)

            return worker.run(cfg)
    except PgPushError as exc:
        # Errors of option parsing are reported here too; the CLI would say the same.
        from pgpush import log

        log.console_error(exc)
        return exit_code_for(exc)
    if bootstrap is not None:
        bootstrap()
    from pgpush.cli import run

    return run(argv)


if __name__ == "__main__":
    sys.exit(main())
