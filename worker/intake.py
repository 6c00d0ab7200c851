"""Intake, the worker's producer: claim a turn's jobs and download their inputs.

A turn is up to `group_size` queued jobs, claimed in one statement. Each claimed job is handed
to the `LeaseKeeper` at once (its lease is kept alive from then on) and its input is downloaded
into the worker's scratch folder under the user's own file name, so decoders' error messages
name the file the user sent.

**Prefetch**: when the jobs on the model are about to end (estimated from their progress rate),
`maybe_prefetch` claims and downloads the next turn on a background thread; the loop takes it
with `take_prefetched`. Claiming only near the end (rather than as soon as a job starts) keeps a
busy worker from sitting on jobs that another worker could start now.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path

import psycopg
from psycopg_pool import PoolTimeout

from app.queue import Job
from app.storage import safe_filename
from worker.leases import HeldJob
from worker.runtime import spawn
from worker.shared import Context, Prepared, queue_wait

PREFETCH_MIN_LEAD = 2.0  # claim the next job when the current one has this much model time left


class Intake:
    def __init__(self, ctx: Context, group_size: int) -> None:
        self.ctx = ctx
        self.group_size = group_size
        self._lock = threading.Lock()
        self._prefetching: Future[list[Prepared]] | None = None

    def claim_and_download(self) -> list[Prepared]:
        """Claim up to `group_size` jobs and download their inputs, in claim order."""
        ctx = self.ctx
        if ctx.shared.stop.is_set():
            return []
        with ctx.pool.connection() as conn:
            jobs = ctx.queue.claim(
                conn, ctx.worker_id, lease=ctx.settings.lease, limit=self.group_size
            )
        return [self._download(job) for job in jobs]

    def _download(self, job: Job) -> Prepared:
        ctx = self.ctx
        held = ctx.keeper.hold(job, ctx.scratch / f"{job.id}-{job.attempts}")
        ctx.log.info(
            "job_claimed",
            job_id=str(job.id),
            attempt=job.attempts,
            kind=job.kind,
            queue_wait_s=round(queue_wait(job), 3),
        )
        prepared = Prepared(held)
        started = ctx.clock.monotonic()
        # Keep the user's file name: decoders' error messages then name the file they sent.
        input_path = held.workdir / "input" / safe_filename(Path(job.input_key).name)
        try:
            input_path.parent.mkdir(parents=True)
            ctx.storage.get_file(job.input_key, input_path)
            prepared.input_path = input_path
        except Exception as exc:
            prepared.error = exc
        prepared.download_s = ctx.clock.monotonic() - started
        ctx.shared.record_download(prepared.download_s)
        return prepared

    # --- prefetch --------------------------------------------------------------------------------
    def maybe_prefetch(self, running: list[HeldJob]) -> None:
        """Claim the next turn once the jobs on the model (a group: the slowest) are about to
        end. Called from the model's progress callbacks."""
        shared = self.ctx.shared
        if shared.stop.is_set() or shared.draining or self._prefetching is not None:
            return
        now = self.ctx.clock.monotonic()
        remaining = [held.remaining_model_seconds(now) for held in running if not held.stopped]
        lead = max(PREFETCH_MIN_LEAD, 2 * shared.download_s)
        if any(r is None or r > lead for r in remaining):
            return
        with self._lock:
            if self._prefetching is None:
                self._prefetching = spawn(self.claim_and_download, "prefetch")

    def take_prefetched(self) -> list[Prepared]:
        """The next turn's jobs, when a prefetch ran (waits for one in flight)."""
        future = self._take_future()
        if future is None:
            return []
        try:
            return future.result()
        except (psycopg.OperationalError, PoolTimeout) as exc:
            self.ctx.log.warning("prefetch_failed", error=str(exc))
            return []

    def drain(self, timeout: float | None) -> list[Prepared]:
        """Shutting down: what a prefetch in flight claimed within `timeout` (to release)."""
        future = self._take_future()
        if future is None:
            return []
        try:
            return future.result(timeout=timeout)
        except (FutureTimeout, psycopg.Error, PoolTimeout):
            return []

    def _take_future(self) -> Future[list[Prepared]] | None:
        with self._lock:
            future, self._prefetching = self._prefetching, None
        return future
