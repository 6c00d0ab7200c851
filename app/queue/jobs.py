"""Jobs: wrappers over the queue.* SQL functions of a job's life (see app/queue/__init__.py)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from psycopg.rows import class_row, kwargs_row
from psycopg.types.json import Jsonb

from app.db import Connection
from app.errors import JobNotFound
from app.queue.base import SqlCaller

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

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATUSES


@dataclass(frozen=True, slots=True)
class Reaped:
    job_id: UUID
    status: JobStatus
    worker_id: UUID | None
    attempts: int


def _enqueued(*, created: bool, **job: Any) -> tuple[Job, bool]:
    return Job(**job), created


JOB = class_row(Job)
REAPED = class_row(Reaped)
ENQUEUED = kwargs_row(_enqueued)

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
Q_PRUNE = "select queue.prune_finished(make_interval(secs => %(older_than)s), %(now)s) as n"
Q_GET_JOB = "select * from public.jobs where id = %(job_id)s"


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
        max_attempts: int | None = None,
    ) -> tuple[Job, bool]:
        """Insert a queued job (max_attempts: the deployment's setting, queue.job_settings,
        unless given). With an idempotency key already used by this user, returns the existing
        job and created=False."""
        return self._made(
            conn,
            ENQUEUED,
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

    def claim(
        self,
        conn: Connection,
        worker_id: UUID,
        *,
        lease: float,
        limit: int = 1,
        kinds: list[JobKind] | None = None,
    ) -> list[Job]:
        return self._rows(
            conn,
            JOB,
            Q_CLAIM,
            {"worker_id": worker_id, "lease": lease, "limit": limit, "kinds": kinds},
        )

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
        return self._made(
            conn,
            JOB,
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
        return self._made(
            conn,
            JOB,
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

    def release(self, conn: Connection, job: Job) -> Job:
        """Back to queued at once; the attempt is not charged."""
        return self._made(
            conn,
            JOB,
            Q_RELEASE,
            {"job_id": job.id, "worker_id": job.worker_id, "attempt": job.attempts},
        )

    def cancel(
        self, conn: Connection, job_id: UUID | str, *, reason: str = "cancelled by user"
    ) -> Job:
        return self._made(conn, JOB, Q_CANCEL, {"job_id": job_id, "reason": reason})

    def cancel_as_user(self, conn: Connection, job_id: UUID | str) -> Job:
        """Cancel through public.cancel_job(): the caller must be inside db.as_user()."""
        return self._made(conn, JOB, Q_CANCEL_AS_USER, {"job_id": job_id})

    def reap(self, conn: Connection, *, backoff_base: float = 10.0) -> list[Reaped]:
        return self._rows(conn, REAPED, Q_REAP, {"backoff": backoff_base})

    def get(self, conn: Connection, job_id: UUID | str) -> Job:
        job = self._row(conn, JOB, Q_GET_JOB, {"job_id": job_id})
        if job is None:
            raise JobNotFound(f"job {job_id} not found")
        return job

    def prune_finished(self, conn: Connection, *, older_than: float) -> int:
        row = self._one(conn, Q_PRUNE, {"older_than": older_than})
        assert row is not None
        return int(row["n"])
