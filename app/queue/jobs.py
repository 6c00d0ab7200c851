"""Jobs and workers: wrappers over the queue.* SQL functions (see app/queue/__init__.py)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

import psycopg
from psycopg.types.json import Jsonb

from app.clock import Clock, SystemClock
from app.db import Connection
from app.errors import InvalidTransition, JobNotFound, LeaseLost, ModelNotServed, QueueError

JobKind = Literal["separate", "preview"]
JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
FINAL_STATUSES: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})

QUEUED_CHANNEL = "stemfleet_jobs_queued"
EVENTS_CHANNEL = "stemfleet_job_events"


@dataclass(frozen=True, slots=True)
class Job:
    id: UUID
    user_id: UUID
    kind: JobKind
    status: JobStatus
    priority: int
    params: dict[str, Any]
    input_key: str
    input_sha256: str | None
    duration_s: float | None
    output: dict[str, Any] | None
    progress: float
    attempts: int
    max_attempts: int
    run_after: datetime
    lease_expires_at: datetime | None
    worker_id: UUID | None
    error: str | None
    error_kind: str | None
    timings: dict[str, Any]
    callback_url: str | None
    idempotency_key: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Job:
        return cls(**{f.name: row[f.name] for f in fields(cls)})

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATUSES


@dataclass(frozen=True, slots=True)
class Worker:
    id: UUID
    machine_id: str
    provider: str
    gpu: str | None
    region: str | None
    state: Literal["idle", "busy", "stopped", "lost"]
    draining: bool
    current_job_id: UUID | None
    started_at: datetime
    last_heartbeat_at: datetime
    idle_since: datetime | None
    stopped_at: datetime | None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Worker:
        return cls(**{f.name: row[f.name] for f in fields(cls)})


@dataclass(frozen=True, slots=True)
class Reaped:
    job_id: UUID
    status: JobStatus
    worker_id: UUID | None
    attempts: int


# Named queries: each SQL function is called from exactly one string here.
Q_ENQUEUE = """
select r.created, (r.job).* from queue.enqueue(
    p_user_id => %(user_id)s, p_input_key => %(input_key)s, p_kind => %(kind)s,
    p_params => %(params)s, p_priority => %(priority)s, p_input_sha256 => %(input_sha256)s,
    p_duration_s => %(duration_s)s, p_callback_url => %(callback_url)s,
    p_idempotency_key => %(idempotency_key)s, p_max_attempts => %(max_attempts)s,
    p_now => %(now)s) as r
"""
Q_CLAIM = """
select * from queue.claim(p_worker_id => %(worker_id)s, p_lease_seconds => %(lease)s,
    p_limit => %(limit)s, p_kinds => %(kinds)s::public.job_kind[], p_now => %(now)s)
"""
Q_HEARTBEAT = """
select queue.heartbeat(p_job_id => %(job_id)s, p_worker_id => %(worker_id)s,
    p_attempt => %(attempt)s, p_progress => %(progress)s, p_lease_seconds => %(lease)s,
    p_now => %(now)s)::text as status
"""
Q_COMPLETE = """
select * from queue.complete(p_job_id => %(job_id)s, p_worker_id => %(worker_id)s,
    p_attempt => %(attempt)s, p_output => %(output)s, p_timings => %(timings)s,
    p_duration_s => %(duration_s)s, p_now => %(now)s)
"""
Q_FAIL = """
select * from queue.fail(p_job_id => %(job_id)s, p_worker_id => %(worker_id)s,
    p_attempt => %(attempt)s, p_error => %(error)s, p_error_kind => %(error_kind)s,
    p_retryable => %(retryable)s, p_backoff_base_seconds => %(backoff)s,
    p_timings => %(timings)s, p_now => %(now)s)
"""
Q_RELEASE = """
select * from queue.release(p_job_id => %(job_id)s, p_worker_id => %(worker_id)s,
    p_attempt => %(attempt)s, p_now => %(now)s)
"""
Q_CANCEL = (
    "select * from queue.cancel(p_job_id => %(job_id)s, p_reason => %(reason)s, p_now => %(now)s)"
)
Q_CANCEL_AS_USER = "select * from public.cancel_job(%(job_id)s)"
Q_REAP = "select * from queue.reap(p_backoff_base_seconds => %(backoff)s, p_now => %(now)s)"
Q_REGISTER_WORKER = """
select * from queue.register_worker(p_machine_id => %(machine_id)s, p_provider => %(provider)s,
    p_gpu => %(gpu)s, p_region => %(region)s, p_now => %(now)s)
"""
Q_WORKER_HEARTBEAT = "select * from queue.worker_heartbeat(%(worker_id)s, p_now => %(now)s)"
Q_DRAIN_WORKER = "select * from queue.drain_worker(%(worker_id)s, %(draining)s)"
Q_WORKER_STOPPED = "select * from queue.worker_stopped(%(worker_id)s, p_now => %(now)s)"
Q_WORKER_REFUSED = """
select * from queue.worker_refused(p_machine_id => %(machine_id)s, p_provider => %(provider)s,
    p_gpu => %(gpu)s, p_region => %(region)s, p_reason => %(reason)s, p_now => %(now)s)
"""
Q_PRUNE = "select queue.prune_finished(make_interval(secs => %(older_than)s), %(now)s) as n"
Q_SERVE_MODELS = "select queue.serve_models(%(names)s)"
Q_GET_JOB = "select * from public.jobs where id = %(job_id)s"
Q_GET_WORKER = "select * from public.workers where id = %(worker_id)s"

_ERRORS: dict[str, type[QueueError]] = {
    "SF001": LeaseLost,
    "SF002": JobNotFound,
    "SF003": InvalidTransition,
    "SF004": ModelNotServed,
}


@contextmanager
def queue_errors() -> Iterator[None]:
    try:
        yield
    except psycopg.Error as exc:
        error = _ERRORS.get(exc.sqlstate or "")
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


class JobQueries(SqlCaller):
    # --- jobs -----------------------------------------------------------------------------
    def enqueue(
        self,
        conn: Connection,
        *,
        user_id: UUID | str,
        input_key: str,
        kind: JobKind = "separate",
        params: dict[str, Any] | None = None,
        priority: int | None = None,
        input_sha256: str | None = None,
        duration_s: float | None = None,
        callback_url: str | None = None,
        idempotency_key: str | None = None,
        max_attempts: int = 3,
    ) -> tuple[Job, bool]:
        """Insert a queued job. With an idempotency key already used by this user, returns the
        existing job and created=False."""
        row = self._one(
            conn,
            Q_ENQUEUE,
            {
                "user_id": user_id,
                "input_key": input_key,
                "kind": kind,
                "params": Jsonb(params or {}),
                "priority": priority,
                "input_sha256": input_sha256,
                "duration_s": duration_s,
                "callback_url": callback_url,
                "idempotency_key": idempotency_key,
                "max_attempts": max_attempts,
            },
        )
        assert row is not None
        return Job.from_row(row), bool(row["created"])

    def claim(
        self,
        conn: Connection,
        worker_id: UUID,
        *,
        lease: float,
        limit: int = 1,
        kinds: list[JobKind] | None = None,
    ) -> list[Job]:
        rows = self._all(
            conn,
            Q_CLAIM,
            {"worker_id": worker_id, "lease": lease, "limit": limit, "kinds": kinds},
        )
        return [Job.from_row(r) for r in rows]

    def heartbeat(
        self, conn: Connection, job: Job, *, progress: float | None, lease: float
    ) -> JobStatus:
        """Extend the lease; returns 'running', or 'cancelled' if the job was cancelled.
        Raises LeaseLost when another worker or the reaper owns the job now."""
        row = self._one(
            conn,
            Q_HEARTBEAT,
            {
                "job_id": job.id,
                "worker_id": job.worker_id,
                "attempt": job.attempts,
                "progress": progress,
                "lease": lease,
            },
        )
        assert row is not None
        status: JobStatus = row["status"]
        return status

    def complete(
        self,
        conn: Connection,
        job: Job,
        *,
        output: dict[str, Any],
        timings: dict[str, Any] | None = None,
        duration_s: float | None = None,
    ) -> Job:
        row = self._one(
            conn,
            Q_COMPLETE,
            {
                "job_id": job.id,
                "worker_id": job.worker_id,
                "attempt": job.attempts,
                "output": Jsonb(output),
                "timings": Jsonb(timings or {}),
                "duration_s": duration_s,
            },
        )
        assert row is not None
        return Job.from_row(row)

    def fail(
        self,
        conn: Connection,
        job: Job,
        *,
        error: str,
        error_kind: str,
        retryable: bool,
        backoff_base: float = 10.0,
        timings: dict[str, Any] | None = None,
    ) -> Job:
        """Retryable: back to queued with exponential backoff until max_attempts, then failed.
        Permanent: failed at once."""
        row = self._one(
            conn,
            Q_FAIL,
            {
                "job_id": job.id,
                "worker_id": job.worker_id,
                "attempt": job.attempts,
                "error": error,
                "error_kind": error_kind,
                "retryable": retryable,
                "backoff": backoff_base,
                "timings": Jsonb(timings or {}),
            },
        )
        assert row is not None
        return Job.from_row(row)

    def release(self, conn: Connection, job: Job) -> Job:
        """Back to queued at once; the attempt is not charged."""
        row = self._one(
            conn,
            Q_RELEASE,
            {"job_id": job.id, "worker_id": job.worker_id, "attempt": job.attempts},
        )
        assert row is not None
        return Job.from_row(row)

    def cancel(
        self, conn: Connection, job_id: UUID | str, *, reason: str = "cancelled by user"
    ) -> Job:
        row = self._one(conn, Q_CANCEL, {"job_id": job_id, "reason": reason})
        assert row is not None
        return Job.from_row(row)

    def cancel_as_user(self, conn: Connection, job_id: UUID | str) -> Job:
        """Cancel through public.cancel_job(): the caller must be inside db.as_user()."""
        with queue_errors():
            row = conn.execute(Q_CANCEL_AS_USER, {"job_id": job_id}).fetchone()
        assert row is not None
        return Job.from_row(row)

    def reap(self, conn: Connection, *, backoff_base: float = 10.0) -> list[Reaped]:
        rows = self._all(conn, Q_REAP, {"backoff": backoff_base})
        return [Reaped(**r) for r in rows]

    def get(self, conn: Connection, job_id: UUID | str) -> Job:
        row = self._one(conn, Q_GET_JOB, {"job_id": job_id})
        if row is None:
            raise JobNotFound(f"job {job_id} not found")
        return Job.from_row(row)

    def prune_finished(self, conn: Connection, *, older_than: float) -> int:
        row = self._one(conn, Q_PRUNE, {"older_than": older_than})
        assert row is not None
        return int(row["n"])

    # --- workers --------------------------------------------------------------------------
    def register_worker(
        self,
        conn: Connection,
        *,
        machine_id: str,
        provider: str = "local",
        gpu: str | None = None,
        region: str | None = None,
    ) -> Worker:
        row = self._one(
            conn,
            Q_REGISTER_WORKER,
            {"machine_id": machine_id, "provider": provider, "gpu": gpu, "region": region},
        )
        assert row is not None
        return Worker.from_row(row)

    def worker_heartbeat(self, conn: Connection, worker_id: UUID) -> Worker:
        row = self._one(conn, Q_WORKER_HEARTBEAT, {"worker_id": worker_id})
        assert row is not None
        return Worker.from_row(row)

    def drain_worker(self, conn: Connection, worker_id: UUID, draining: bool = True) -> Worker:
        row = self._one(conn, Q_DRAIN_WORKER, {"worker_id": worker_id, "draining": draining})
        assert row is not None
        return Worker.from_row(row)

    def worker_stopped(self, conn: Connection, worker_id: UUID) -> Worker | None:
        row = self._one(conn, Q_WORKER_STOPPED, {"worker_id": worker_id})
        return Worker.from_row(row) if row else None

    def serve_models(self, conn: Connection, names: list[str]) -> None:
        """Add models to those a job may name (queue.served_models): what a worker or the API
        knows the fleet can load."""
        self._one(conn, Q_SERVE_MODELS, {"names": names})

    def worker_refused(
        self,
        conn: Connection,
        *,
        machine_id: str,
        provider: str,
        gpu: str | None,
        region: str | None,
        reason: str,
    ) -> Worker:
        """Register this boot's worker as stopped at once, with the reason it cannot run."""
        row = self._one(
            conn,
            Q_WORKER_REFUSED,
            {
                "machine_id": machine_id,
                "provider": provider,
                "gpu": gpu,
                "region": region,
                "reason": reason,
            },
        )
        assert row is not None
        return Worker.from_row(row)

    def get_worker(self, conn: Connection, worker_id: UUID) -> Worker:
        row = self._one(conn, Q_GET_WORKER, {"worker_id": worker_id})
        if row is None:
            raise QueueError(f"worker {worker_id} not found")
        return Worker.from_row(row)
