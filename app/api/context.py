"""What every endpoint needs, built once per app: settings, the database pool, storage, the
queue wrappers, the clock, authentication and the callback policy."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from uuid import UUID

import anyio
from psycopg_pool import ConnectionPool, PoolTimeout

from app.api.auth import Authenticator
from app.api.broadcast import JobEventBroadcaster, JobState
from app.api.errors import DatabaseUnavailable
from app.api.limits import max_upload_bytes
from app.api.ssrf import CallbackPolicy
from app.api.views import JobOut, job_view
from app.clock import Clock
from app.db import Connection, as_user, create_pool
from app.queue import Job, Queue
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
    _broadcaster: JobEventBroadcaster | None = None

    @property
    def database_url(self) -> str:
        return self.settings.require_database_url()

    @property
    def max_upload_bytes(self) -> int:
        return max_upload_bytes(self.settings)

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

    # --- jobs as the API shows them -------------------------------------------------------
    def view(self, job: Job, *, position: int | None = None) -> JobOut:
        return job_view(job, self.storage, expires=self.settings.presign_expires, position=position)

    def views(self, jobs: list[Job]) -> list[JobOut]:
        """Jobs with their places in line (one definition: queue.queue_positions)."""
        queued = [job.id for job in jobs if job.status == "queued"]
        positions: dict[UUID, int] = {}
        if queued:
            with self.connection() as conn:
                positions = self.queue.queue_positions(conn, queued)
        return [self.view(job, position=positions.get(job.id)) for job in jobs]

    def read_states(self, job_ids: list[UUID]) -> dict[UUID, JobState]:
        """Jobs and their places in line, whoever owns them (for the broadcaster)."""
        with self.connection() as conn:
            jobs = self.queue.get_jobs(conn, job_ids)
            queued = [job.id for job in jobs if job.status == "queued"]
            positions = self.queue.queue_positions(conn, queued) if queued else {}
        return {job.id: JobState(job, positions.get(job.id)) for job in jobs}

    def read_state_as_user(self, user_id: UUID, job_id: UUID) -> JobState:
        """The user's job (JobNotFound if not theirs) and its place in line."""
        with self.user_connection(user_id) as conn:
            job = self.queue.get(conn, job_id)
        return self.read_states([job.id]).get(job.id) or JobState(job, None)

    def broadcaster(self) -> JobEventBroadcaster:
        """The process's one LISTEN connection for event streams, made on first use."""
        if self._broadcaster is None:

            async def read(job_ids: list[UUID]) -> dict[UUID, JobState]:
                return await anyio.to_thread.run_sync(self.read_states, job_ids)

            self._broadcaster = JobEventBroadcaster(
                self.database_url,
                read,
                max_streams_per_user=self.settings.sse_max_streams_per_user,
            )
        return self._broadcaster

    async def aclose(self) -> None:
        """Stop the broadcaster (in the event loop that runs it), then close the pool."""
        if self._broadcaster is not None:
            await self._broadcaster.close()
            self._broadcaster = None
        await anyio.to_thread.run_sync(self.close)

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.close()
                self._pool = None
