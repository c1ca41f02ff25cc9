"""Talking to PostgreSQL: connections, the data directory scan, the primary nudge (docs/architecture.md)."""
