"""``restore``: write a backup into ``pg1-path`` and configure recovery through pgpush ``get``.

What it promises (docs/operations.md, "Restore and point-in-time recovery"):

- The data directory must be empty (or missing) unless ``--delta`` (files
  whose size and SHA-1 match the manifest are left untouched, others are
  rewritten, files not in the backup are removed) or ``--force`` (every file
  rewritten, whatever its size or checksum; with or without ``--delta``).
- A running PostgreSQL (``postmaster.pid`` naming a live process) is never
  written over.
- Every file's size and SHA-1 are checked; a corrupt file in the repository
  fails the restore (42), it is never silently restored.
- Success is reported only once the restored files are on stable storage.
- The asynchronous get spool is emptied: WAL prefetched for an earlier
  restore must never be served to this one.
- The manifest comes from whoever can write the repository: it is checked
  whole before anything is written (:mod:`pgpush.repo.manifest_check`), and
  every path is opened without following a symbolic link
  (:mod:`pgpush.safepath`).
- Without ``--set`` the latest ``DONE`` backup is restored; the choice is
  logged and printed.

One module per step, in the order :mod:`.command` runs them: :mod:`.choose`
(which backup; the recovery type and target), :mod:`.clean` (what the
destination holds before), :mod:`.layout` (where each manifest entry goes; the
directories and tablespace links), :mod:`.files` (fetch, check and write each
file), :mod:`.remap` (tablespaces elsewhere), :mod:`.recovery` (the settings
PostgreSQL recovers with), :mod:`.durability` (the sync before success).
"""

from __future__ import annotations

from pgpush.commands.restore.command import run

__all__ = ["run"]
