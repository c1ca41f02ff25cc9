"""Nudge the primary so a standby's backup can finalize (``primary-conninfo``).

A backup taken on a standby ends at a WAL position inside the segment the
standby is receiving.  On an idle primary that segment may stay open for
ever, so the backup stays ``WAITING_FOR_WALS`` (the Barman issue).  A
``pg_switch_wal()`` on the primary completes it; when that switch is a no-op
(nothing written since the last switch, the insert position sits at a
segment start) a standby may still hold the finished segment unarchived
until WAL of the next one arrives, so a small WAL record is written first
(a logical message, or a ``CHECKPOINT`` where that function is not allowed)
and the switch repeated.
"""

from __future__ import annotations

from pgpush import pgconn, wal
from pgpush.errors import ArchiveMismatchError, DbConnectError, DbQueryError, OptionInvalidValueError
from pgpush.log import LOG


class PrimaryNudge:
    """A session on the primary, checked to be the standby's primary before any use."""

    def __init__(self, cfg, system_id: int, segment_size: int):
        self.segment_size = segment_size
        self.db = pgconn.connect_primary(cfg)
        try:
            if self.db.in_recovery():
                raise OptionInvalidValueError("primary-conninfo names a server that is in recovery: it must be the primary")
            primary_id = self.db.system_id()
            if primary_id != system_id:
                raise ArchiveMismatchError(
                    f"primary-conninfo names a server with system identifier {primary_id}, but pg1 has {system_id}")
        except BaseException:
            self.db.close()
            raise
        self.disabled = False

    def nudge(self) -> None:
        """Switch WAL on the primary; when the switch would be a no-op, write a record and switch again."""
        if self.disabled:
            return
        try:
            insert = wal.lsn_to_int(str(self.db.scalar("SELECT pg_current_wal_insert_lsn()::text")))
            switched = self.db.scalar("SELECT pg_switch_wal()::text")
            LOG.detail(f"switched WAL on the primary at {switched}")
            if insert % self.segment_size <= wal.LONG_HEADER.size:  # nothing but the page header in this segment
                self._emit_record()
                switched = self.db.scalar("SELECT pg_switch_wal()::text")
                LOG.detail(f"wrote a WAL record and switched WAL on the primary at {switched}")
        except (DbConnectError, DbQueryError) as exc:
            LOG.warn(f"unable to switch WAL on the primary, no further attempt: {exc}")
            self.disabled = True

    def _emit_record(self) -> None:
        try:
            self.db.execute("SELECT pg_logical_emit_message(false, 'pgpush', 'nudge')")
        except DbQueryError:
            self.db.execute("CHECKPOINT")

    def close(self) -> None:
        self.db.close()
