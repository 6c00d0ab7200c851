"""Helpers shared by the worker tests: submitting a job with its input in storage, and waiting
(bounded) for a job's row to reach a state, woken by the queue's own NOTIFY events."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from psycopg.conninfo import conninfo_to_dict

from app.db import Connection, Listener
from app.queue import EVENTS_CHANNEL, Job, Queue
from app.storage import Storage, input_key

USER = uuid.UUID("00000000-0000-4000-8000-0000000000b1")


def libpq_url(db_url: str) -> str:
    """The fixtures' conninfo as a postgresql:// URL (what STEMFLEET_DATABASE_URL accepts)."""
    if db_url.startswith(("postgres://", "postgresql://")):
        return db_url
    info = conninfo_to_dict(db_url)
    user = quote(str(info.get("user") or "postgres"))
    password = f":{quote(str(info['password']))}" if info.get("password") else ""
    host = info.get("host") or "127.0.0.1"
    port = info.get("port") or 5432
    return f"postgresql://{user}{password}@{host}:{port}/{info['dbname']}"


def submit(
    storage: Storage,
    conn: Connection,
    clip: Path,
    *,
    params: dict[str, Any] | None = None,
    kind: str = "separate",
    queue: Queue | None = None,
    max_attempts: int = 3,
) -> Job:
    """Upload `clip` as a user's input and enqueue a job for it."""
    key = input_key(USER, clip.name)
    storage.put_file(key, clip)
    job, created = (queue or Queue()).enqueue(
        conn,
        user_id=USER,
        input_key=key,
        kind=kind,  # type: ignore[arg-type]
        params=params or {},
        max_attempts=max_attempts,
    )
    assert created
    return job


def wait_for_job(
    db_url: str,
    job_id: uuid.UUID,
    predicate: Callable[[Job], bool],
    *,
    timeout: float = 60.0,
    what: str = "the expected state",
) -> Job:
    """Return the job's row once `predicate` holds; re-checks on every event the database
    publishes for jobs (status or progress changes), failing after `timeout` seconds."""
    from app.db import connect

    queue = Queue()
    with Listener(db_url, [EVENTS_CHANNEL]) as listener, connect(db_url) as conn:
        deadline = time.monotonic() + timeout
        while True:
            job = queue.get(conn, job_id)
            if predicate(job):
                return job
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    f"job {job_id} did not reach {what} within {timeout}s: status={job.status} "
                    f"progress={job.progress} attempts={job.attempts} error={job.error!r}"
                )
            listener.wait(min(left, 1.0))


def wait_until_all_final(db_url: str, job_ids: list[uuid.UUID], *, timeout: float) -> list[Job]:
    from app.db import connect

    queue = Queue()
    with Listener(db_url, [EVENTS_CHANNEL]) as listener, connect(db_url) as conn:
        deadline = time.monotonic() + timeout
        while True:
            jobs = [queue.get(conn, job_id) for job_id in job_ids]
            if all(job.is_final for job in jobs):
                return jobs
            left = deadline - time.monotonic()
            if left <= 0:
                pending = [(j.id, j.status) for j in jobs if not j.is_final]
                raise AssertionError(f"jobs not finished within {timeout}s: {pending}")
            listener.wait(min(left, 1.0))


def stem_keys(job_id: uuid.UUID, storage: Storage, stems: list[str], ext: str) -> list[str]:
    """The output keys of `job_id` that exist in storage."""
    keys = [f"outputs/{job_id}/{stem}.{ext}" for stem in stems]
    return [key for key in keys if storage.exists(key)]
