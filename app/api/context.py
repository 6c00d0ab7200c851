"""What every endpoint needs, built once per app: settings, the database pool, storage, the
queue wrappers, the clock, authentication and the callback policy."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from uuid import UUID

from psycopg_pool import ConnectionPool, PoolTimeout

from app.api.auth import Authenticator
from app.api.errors import DatabaseUnavailable
from app.api.ssrf import CallbackPolicy
from app.clock import Clock
from app.db import Connection, as_user, create_pool
from app.queue import Queue
from app.settings import Settings
from app.storage import Storage

CONNECTION_TIMEOUT = 10.0


@dataclass
class ApiContext:
    settings: Settings
    clock: Clock
    queue: Queue
    storage: Storage
    auth: Authenticator
    callbacks: CallbackPolicy
    webhook_secret: str | None
    _pool: ConnectionPool[Connection] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def database_url(self) -> str:
        return self.settings.require_database_url()

    @property
    def max_upload_bytes(self) -> int:
        return int(self.settings.max_upload_mb * 1024 * 1024)

    def pool(self) -> ConnectionPool[Connection]:
        """The pool, opened on first use (so the app also works without its lifespan)."""
        with self._lock:
            if self._pool is None:
                try:
                    self._pool = create_pool(
                        self.database_url,
                        min_size=self.settings.db_pool_min,
                        max_size=self.settings.db_pool_max,
                        name="stemfleet-api",
                    )
                except PoolTimeout as exc:
                    raise DatabaseUnavailable(str(exc)) from exc
            return self._pool

    @contextmanager
    def connection(self) -> Iterator[Connection]:
        """A service connection (bypasses RLS): queue writes, positions, admin views."""
        with self.pool().connection(timeout=CONNECTION_TIMEOUT) as conn:
            yield conn

    @contextmanager
    def user_connection(self, user_id: UUID) -> Iterator[Connection]:
        """A transaction scoped to one user, as PostgREST does: RLS applies to every query."""
        with self.connection() as conn, as_user(conn, str(user_id)):
            yield conn

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.close()
                self._pool = None
