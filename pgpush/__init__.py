"""pgpush: WAL archiver and backup tool for PostgreSQL.

Only the version literal lives here: importing importlib.metadata costs ~30 ms,
which the hot path (one process per WAL segment) cannot afford.
"""

__version__ = "0.1.0"
