"""A connection whose work is rolled back at the end of the test (River's TestTx).

Most database tests only read and write rows through one connection: they need neither a fresh
database nor cleanup. `tx_connection` opens one transaction on the once-migrated shared test
database and the test runs inside it; nothing it does is ever committed, so the next test sees
the database as the migrations left it.

Inside that transaction, every statement runs in its own savepoint, so the connection behaves
like the autocommit connections the application uses: a statement that fails (a `LeaseLost`, an
RLS refusal the test expects) undoes itself alone, and the test goes on. `conn.transaction()`
blocks become savepoints, as they would in any caller that is already inside a transaction.

What it cannot show, and which tests therefore keep a fresh database (`db_url` / `conn`): a
NOTIFY (delivered only at commit), rows seen by another connection or process (an API, a worker,
a second claimer), what a commit itself does (synchronous_commit), and a crash.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Self

import psycopg
from psycopg.abc import Params, Query
from psycopg.rows import dict_row

from app.db import Connection


class SavepointPerStatement(psycopg.Cursor[Any]):
    """Each `execute` in a savepoint of its own: an error undoes that statement only. A cursor
    factory, so that statements run through `conn.cursor(row_factory=...)` (the queue's
    `class_row` reads) get their savepoint as well as `conn.execute`."""

    def execute(
        self,
        query: Query,
        params: Params | None = None,
        *,
        prepare: bool | None = None,
        binary: bool | None = None,
    ) -> Self:
        with self.connection.transaction():
            return super().execute(query, params, prepare=prepare, binary=binary)


@contextmanager
def tx_connection(url: str) -> Iterator[Connection]:
    """A connection to `url` inside a transaction that is rolled back when the block ends."""
    conn = psycopg.connect(
        url,
        autocommit=True,
        row_factory=dict_row,
        cursor_factory=SavepointPerStatement,
        application_name="stemfleet-test-tx",
    )
    try:
        with conn.transaction(force_rollback=True):
            yield conn
    finally:
        conn.close()
