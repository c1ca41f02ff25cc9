"""The command line: typer parses nothing (pgpush.config does), it dispatches and renders help (docs/architecture.md)."""
