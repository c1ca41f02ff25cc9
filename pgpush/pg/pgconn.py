"""psycopg connections to PostgreSQL, with pgpush's session settings.

Why a module of its own: ``backup``, ``check`` and the primary nudge all need
the same things (connect by socket/port or by a conninfo, autocommit, no
statement or idle timeout that could abort a long ``pg_backup_start``
session, the server version and identity), and every libpq failure must
become a :class:`~pgpush.errors.DbConnectError` (56, connecting) or
:class:`~pgpush.errors.DbQueryError` (57, a query) that names the server,
never a psycopg traceback.
"""

from __future__ import annotations

import math
import os
import socket
import threading
from typing import Any

from pgpush.config import Config
from pgpush.errors import DbConnectError, DbQueryError

CONNECT_TIMEOUT = 30
MIN_CONNECT_TIMEOUT = 2  # libpq's own floor for connect_timeout


class PgConn:
    """One autocommit session; ``what`` names the server in every error."""

    def __init__(self, conn: Any, what: str, timeout: float | None = None):
        self.conn = conn
        self.what = what
        self.timeout = timeout  # client-side limit per statement (None: none, as a backup session needs)
        self.version_num = int(conn.info.server_version)
        self.version = self.version_num // 10000

    # -- queries -------------------------------------------------------------

    def execute(self, query: str, params: tuple | dict | None = None) -> list[tuple]:
        """Run one statement and return its rows (empty for statements without rows).

        With ``timeout`` set, a server that does not answer in time (a frozen host: the
        kernel still acknowledges, so no TCP timeout ever fires) has its socket shut down
        under the waiting query, which then fails: a client-side limit libpq lacks.
        """
        import psycopg

        watchdog = _Watchdog(self.conn, self.timeout)
        try:
            with self.conn.cursor() as cur:
                cur.execute(query, params)
                if cur.description is None:
                    return []
                return list(cur.fetchall())
        except psycopg.Error as exc:
            if watchdog.fired:
                raise DbConnectError(f"no answer from {self.what} within {self.timeout:g}s: connection closed") from None
            if self.conn.closed:
                raise DbConnectError(f"lost the connection to {self.what}: {_pg_message(exc)}") from None
            raise DbQueryError(f"query on {self.what} failed: {_pg_message(exc)}") from None
        finally:
            watchdog.cancel()

    def scalar(self, query: str, params: tuple | dict | None = None) -> Any:
        rows = self.execute(query, params)
        if not rows:
            raise DbQueryError(f"query on {self.what} returned no row: {query}")
        return rows[0][0]

    def setting(self, name: str) -> str:
        return str(self.scalar("SELECT current_setting(%s)", (name,)))

    def in_recovery(self) -> bool:
        return bool(self.scalar("SELECT pg_is_in_recovery()"))

    def system_id(self) -> int:
        return int(self.scalar("SELECT system_identifier FROM pg_control_system()"))

    def data_directory(self) -> str:
        return self.setting("data_directory")

    def segment_size(self) -> int:
        """``wal_segment_size`` in bytes (the setting is reported in bytes since 11, in 8kB pages in 10)."""
        rows = self.execute("SELECT setting, unit FROM pg_settings WHERE name = 'wal_segment_size'")
        value, unit = int(rows[0][0]), rows[0][1]
        if unit == "8kB":
            return value * 8192
        return value

    def close(self) -> None:
        try:
            self.conn.close()
        except Exception:  # noqa: BLE001 - closing a broken connection must not mask the real error
            pass

    def __enter__(self) -> PgConn:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Watchdog:
    """Shut the connection's socket down if the statement has not ended after ``timeout`` seconds."""

    def __init__(self, conn: Any, timeout: float | None):
        self.fired = False
        self.timer: threading.Timer | None = None
        if timeout is not None:
            self.timer = threading.Timer(timeout, self._fire, (conn,))
            self.timer.daemon = True
            self.timer.start()

    def _fire(self, conn: Any) -> None:
        self.fired = True
        try:
            sock = socket.socket(fileno=os.dup(conn.pgconn.socket))  # a duplicate: closing it leaves libpq's fd
        except Exception:  # noqa: BLE001 - the connection ended meanwhile
            return
        try:
            sock.shutdown(socket.SHUT_RDWR)  # wakes the waiting query with an error
        except OSError:
            pass
        finally:
            sock.close()

    def cancel(self) -> None:
        if self.timer is not None:
            self.timer.cancel()


def _pg_message(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def connect(conninfo: str | None = None, *, what: str = "PostgreSQL", timeout: float | None = None,
            **params: Any) -> PgConn:
    """Open an autocommit session with ``statement_timeout`` and ``idle_session_timeout`` off.

    A backup holds its session open between ``pg_backup_start`` and
    ``pg_backup_stop`` while files are copied; a server-side timeout there
    would abort the backup (and on 15+ a closed session aborts it too).
    ``timeout`` (short sessions such as the primary nudge) bounds the connect and,
    client-side, every statement.
    """
    try:
        import psycopg
    except ImportError as exc:  # pragma: no cover - the zipapp always bundles psycopg
        raise DbConnectError(f"unable to load psycopg: {exc}") from None
    params = {k: v for k, v in params.items() if v is not None}
    limit = CONNECT_TIMEOUT if timeout is None else min(CONNECT_TIMEOUT, timeout)
    params.setdefault("connect_timeout", max(MIN_CONNECT_TIMEOUT, math.ceil(limit)))
    params.setdefault("application_name", "pgpush")
    try:
        conn = psycopg.connect(conninfo or "", autocommit=True, **params)
    except psycopg.Error as exc:
        raise DbConnectError(f"unable to connect to {what}: {_pg_message(exc)}") from None
    pg = PgConn(conn, what, timeout)
    pg.execute("SET statement_timeout = 0")
    if pg.version >= 14:
        pg.execute("SET idle_session_timeout = 0")
    pg.execute("SET client_min_messages = warning")
    return pg


def connect_pg1(cfg: Config) -> PgConn:
    """Connect to ``pg1`` by its socket directory and port, as ``pg1-user`` to ``pg1-database``."""
    host = str(cfg["pg1-socket-path"])
    port = int(cfg["pg1-port"])
    what = f"pg1 (socket {host}, port {port})"
    return connect(None, what=what, host=host, port=port, user=str(cfg["pg1-user"]), dbname=str(cfg["pg1-database"]))


def connect_primary(cfg: Config, timeout: float) -> PgConn:
    """Connect to the primary named by ``primary-conninfo`` (never logged: it may hold a password),
    with ``timeout`` on the connect and on every statement."""
    return connect(str(cfg.require("primary-conninfo")), what="the primary (primary-conninfo)", timeout=timeout)
