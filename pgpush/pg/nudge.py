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

Every query here has a client-side end (:mod:`pgpush.pg.pgconn`): at most
``NUDGE_TIMEOUT`` seconds, or ``wait-timeout`` when that is shorter, and never
past the end of the backup's wait — a frozen primary must not keep a backup
past its ``--wait-timeout``.  A nudge that runs out of time is given up with a
warning, as any other failed nudge.
"""

from __future__ import annotations

import time

from pgpush import wal
from pgpush.config import Config
from pgpush.errors import ArchiveMismatchError, DbConnectError, DbQueryError, OptionInvalidValueError
from pgpush.log import LOG
from pgpush.pg import pgconn

NUDGE_TIMEOUT = float(pgconn.CONNECT_TIMEOUT)  # seconds a nudge (connect, or all its queries) may take


def budget(cfg: Config) -> float:
    """Time allowed to one nudge: ``NUDGE_TIMEOUT``, or ``wait-timeout`` when that is shorter."""
    wait_timeout = cfg.get("wait-timeout")
    return NUDGE_TIMEOUT if wait_timeout is None else max(0.1, min(NUDGE_TIMEOUT, float(wait_timeout)))


class PrimaryNudge:
    """A session on the primary, checked to be the standby's primary before any use."""

    def __init__(self, cfg: Config, system_id: int, segment_size: int):
        self.segment_size = segment_size
        self.budget = budget(cfg)
        self.db = pgconn.connect_primary(cfg, self.budget)
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

    def nudge(self, until: float | None = None) -> None:
        """Switch WAL on the primary; when the switch would be a no-op, write a record and switch again.

        All of it within ``budget`` seconds and before ``until`` (a ``time.monotonic()`` value:
        the end of the backup's wait), whichever comes first.
        """
        if self.disabled:
            return
        end = time.monotonic() + self.budget
        if until is not None:
            end = min(end, until)
        try:
            insert = wal.lsn_to_int(str(self._scalar("SELECT pg_current_wal_insert_lsn()::text", end)))
            switched = self._scalar("SELECT pg_switch_wal()::text", end)
            LOG.detail(f"switched WAL on the primary at {switched}")
            if insert % self.segment_size <= wal.LONG_HEADER.size:  # nothing but the page header in this segment
                self._emit_record(end)
                switched = self._scalar("SELECT pg_switch_wal()::text", end)
                LOG.detail(f"wrote a WAL record and switched WAL on the primary at {switched}")
        except (DbConnectError, DbQueryError) as exc:
            LOG.warn(f"unable to switch WAL on the primary, no further attempt: {exc}")
            self.disabled = True

    def _limit(self, end: float) -> None:
        """Give the next statement what is left of this nudge's time (none left: give up now)."""
        left = end - time.monotonic()
        if left <= 0:
            raise DbConnectError("no time left before the end of the backup's wait")
        self.db.timeout = left

    def _scalar(self, query: str, end: float):
        self._limit(end)
        return self.db.scalar(query)

    def _emit_record(self, end: float) -> None:
        try:
            self._limit(end)
            self.db.execute("SELECT pg_logical_emit_message(false, 'pgpush', 'nudge')")
        except DbQueryError:
            self._limit(end)
            self.db.execute("CHECKPOINT")

    def close(self) -> None:
        self.db.close()
