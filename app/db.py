"""Database access: connections, a pool, and a LISTEN helper.

All connections are autocommit: every queue operation is a single SQL function call, so each
statement is its own short transaction and nothing stays open while a model runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg import pq, sql
from psycopg.rows import DictRow, dict_row
from psycopg.types.json import Json
from psycopg_pool import ConnectionPool

from app.closing import Closing

Connection = psycopg.Connection[DictRow]

Q_ROLE_AND_CLAIMS = (
    "select current_setting('role') as role, "
    "coalesce(current_setting('request.jwt.claims', true), '') as claims"
)
Q_RESTORE_ROLE_AND_CLAIMS = (
    "select set_config('role', %(role)s, true), set_config('request.jwt.claims', %(claims)s, true)"
)


def connect(url: str, *, application_name: str = "stemfleet") -> Connection:
    return psycopg.connect(
        url, autocommit=True, row_factory=dict_row, application_name=application_name
    )


def create_pool(
    url: str, *, min_size: int = 1, max_size: int = 10, name: str = "stemfleet"
) -> ConnectionPool[Connection]:
    pool: ConnectionPool[Connection] = ConnectionPool(
        url,
        min_size=min_size,
        max_size=max_size,
        kwargs={"autocommit": True, "row_factory": dict_row, "application_name": name},
        open=False,
        name=name,
        check=ConnectionPool.check_connection,
    )
    pool.open(wait=True, timeout=30)
    return pool


@contextmanager
def as_user(conn: Connection, user_id: str, role: str = "authenticated") -> Iterator[Connection]:
    """Run statements in a transaction scoped to one end user, the way PostgREST does:
    `SET LOCAL ROLE authenticated` plus the JWT claims, so RLS applies to every query."""
    claims = Json({"sub": str(user_id), "role": role})
    nested = conn.info.transaction_status != pq.TransactionStatus.IDLE
    with conn.transaction():
        # Nested, this is a savepoint, which SET LOCAL outlives: remember what to put back.
        before = conn.execute(Q_ROLE_AND_CLAIMS).fetchone() if nested else None
        conn.execute(sql.SQL("set local role {}").format(sql.Identifier(role)))
        conn.execute("select set_config('request.jwt.claims', %s::text, true)", (claims,))
        yield conn
        if before is not None:
            conn.execute(Q_RESTORE_ROLE_AND_CLAIMS, before)


class Listener(Closing):
    """A dedicated session connection LISTENing on channels; `wait` returns payloads as soon as
    a NOTIFY arrives (milliseconds), or an empty list after `timeout` seconds."""

    def __init__(self, url: str, channels: list[str], *, name: str = "stemfleet-listener") -> None:
        self._conn = connect(url, application_name=name)
        for channel in channels:
            self._conn.execute(sql.SQL("listen {}").format(sql.Identifier(channel)))
        self.channels = channels

    def wait(self, timeout: float) -> list[tuple[str, str]]:
        received: list[tuple[str, str]] = []
        gen = self._conn.notifies(timeout=max(timeout, 0.0), stop_after=1)
        for note in gen:
            received.append((note.channel, note.payload))
        # Drain whatever else already arrived, without waiting.
        for note in self._conn.notifies(timeout=0.0):
            received.append((note.channel, note.payload))
        return received

    def close(self) -> None:
        self._conn.close()
