"""WAL archiving: the foreground push/get PostgreSQL runs, the spool, the async parents and their workers (docs/architecture.md)."""
