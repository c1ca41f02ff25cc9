"""pgpush: WAL archiver and backup tool for PostgreSQL.

Only the version and the line ``version`` prints live here: importing importlib.metadata costs ~30 ms,
which the hot path (one process per WAL segment) cannot afford.
"""

from __future__ import annotations

__version__ = "0.1.0"

# The zipapp's dependency set this process uses (e.g. "cp311-x86_64"), as the guarded entry was told.
bundle: str | None = None


def version_line() -> str:
    """``pgpush 0.1.0 (CPython 3.11.7, x86_64, bundle cp311-x86_64)``: the first two words stay the version
    scripts parse; the rest says which interpreter, machine and bundled set answer (no import: hot path)."""
    import os
    import sys

    impl = sys.implementation.name
    name = {"cpython": "CPython", "pypy": "PyPy"}.get(impl, impl)
    parts = [f"{name} {'.'.join(str(v) for v in sys.version_info[:3])}", os.uname().machine]
    if bundle:
        parts.append(f"bundle {bundle}")
    return f"pgpush {__version__} ({', '.join(parts)})"
