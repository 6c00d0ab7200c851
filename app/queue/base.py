"""The base of the per-area query wrappers: named queries run with the clock's p_now, rows built
into dataclasses by psycopg's row factories (class_row), the queue's SQLSTATEs mapped to
exceptions."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar

import psycopg
from psycopg.rows import RowFactory

from app.clock import Clock, SystemClock
from app.db import Connection
from app.errors import (
    InputKeyRefused,
    InvalidParams,
    InvalidTransition,
    JobNotFound,
    LeaseLost,
    ModelNotServed,
    QueueError,
)

R = TypeVar("R")

ERRORS: dict[str, type[QueueError]] = {
    "SF001": LeaseLost,
    "SF002": JobNotFound,
    "SF003": InvalidTransition,
    "SF004": ModelNotServed,
    "SF005": InvalidParams,
}
# Raised by queue.check_job for an input key the user may not name (the same SQLSTATE a Supabase
# client gets from its insert); mapped only where that function is called.
INPUT_KEY_ERRORS: dict[str, type[QueueError]] = {"42501": InputKeyRefused}


@contextmanager
def queue_errors(extra: Mapping[str, type[QueueError]] | None = None) -> Iterator[None]:
    try:
        yield
    except psycopg.Error as exc:
        state = exc.sqlstate or ""
        error = ERRORS.get(state) or (extra or {}).get(state)
        if error is None:
            raise
        message = exc.diag.message_primary or str(exc)
        raise error(message) from exc


class SqlCaller:
    """Base of the per-area wrappers: runs a named query with the clock's p_now and maps the
    queue's SQLSTATEs to exceptions."""

    def __init__(self, clock: Clock | None = None) -> None:
        self.clock: Clock = clock or SystemClock()

    def _one(self, conn: Connection, query: str, params: dict[str, Any]) -> dict[str, Any] | None:
        with queue_errors():
            return conn.execute(query, {"now": self.clock.db_now(), **params}).fetchone()

    def _all(self, conn: Connection, query: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        with queue_errors():
            return conn.execute(query, {"now": self.clock.db_now(), **params}).fetchall()

    def _row(
        self, conn: Connection, rows: RowFactory[R], query: str, params: dict[str, Any]
    ) -> R | None:
        """One row built by `rows` (e.g. class_row(Job)), or None."""
        with queue_errors(), conn.cursor(row_factory=rows) as cur:
            return cur.execute(query, {"now": self.clock.db_now(), **params}).fetchone()

    def _rows(
        self, conn: Connection, rows: RowFactory[R], query: str, params: dict[str, Any]
    ) -> list[R]:
        with queue_errors(), conn.cursor(row_factory=rows) as cur:
            return cur.execute(query, {"now": self.clock.db_now(), **params}).fetchall()

    def _made(self, conn: Connection, rows: RowFactory[R], query: str, params: dict[str, Any]) -> R:
        """The one row a queue function always returns."""
        row = self._row(conn, rows, query, params)
        assert row is not None, query
        return row
