"""Keeps the leases of the jobs a worker holds alive, and carries their progress to the row.

One background thread heartbeats every held job (the one on the model, a prefetched one, one
whose stems are uploading): every STEMFLEET_HEARTBEAT_INTERVAL to extend the lease, and sooner
when progress moved, but at most once a second per job. The model's thread never touches the
database: it only records progress here. A heartbeat that answers 'cancelled' or raises LeaseLost
marks the job so the model's `should_stop()` turns true.

Intervals follow the injected clock's monotonic time, so with a FakeClock a lease is extended
only when a test moves the clock (leases live in the same fake time). The thread itself sleeps in
real time, at most `MAX_NAP` seconds, and then looks at the clock again.
"""

from __future__ import annotations

import math
import threading
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from app.clock import Clock
from app.db import Connection
from app.errors import JobNotFound, LeaseLost, QueueError
from app.queue import Job, Queue

PROGRESS_WRITE_INTERVAL = 1.0  # seconds between two progress writes of one job
MAX_NAP = 0.5


@dataclass(eq=False)
class HeldJob:
    """A job this worker claimed and has not finished yet."""

    job: Job
    claimed_at: float  # clock.monotonic() at claim
    workdir: Path
    cancelled: threading.Event = field(default_factory=threading.Event)
    lost: threading.Event = field(default_factory=threading.Event)
    release_requested: bool = False
    # written by the model's thread, read by the heartbeat thread
    progress: float = 0.0
    progress_pending: bool = False
    model_started_at: float | None = None
    # heartbeat bookkeeping
    lock: threading.Lock = field(default_factory=threading.Lock)
    written_at: float = -math.inf
    extended_at: float = 0.0
    forgotten: bool = False

    @property
    def id(self) -> Any:
        return self.job.id

    @property
    def stopped(self) -> bool:
        """True once the worker must drop the job: cancelled, lease lost, or to be released."""
        return self.cancelled.is_set() or self.lost.is_set() or self.release_requested

    def remaining_model_seconds(self, now: float) -> float | None:
        """Estimated model time left, from the progress rate so far; None before any progress."""
        if self.model_started_at is None or self.progress <= 0:
            return None
        elapsed = max(now - self.model_started_at, 0.0)
        return elapsed * (1.0 - self.progress) / self.progress


@dataclass(eq=False)
class LeaseKeeper:
    queue: Queue
    pool: ConnectionPool[Connection]
    clock: Clock
    _: KW_ONLY
    lease: float
    interval: float
    log: Any

    def __post_init__(self) -> None:
        self._held: list[HeldJob] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lease-keeper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._closed.set()
        self._wake.set()
        self._thread.join(timeout=10)

    # --- called from other threads -------------------------------------------------------------
    def hold(self, job: Job, workdir: Path) -> HeldJob:
        now = self.clock.monotonic()
        held = HeldJob(job=job, claimed_at=now, workdir=workdir, extended_at=now)
        with self._lock:
            self._held.append(held)
        return held

    def held(self) -> list[HeldJob]:
        with self._lock:
            return list(self._held)

    def report(self, held: HeldJob, progress: float) -> None:
        held.progress = min(max(progress, 0.0), 1.0)
        held.progress_pending = True
        if self.clock.monotonic() - held.written_at >= PROGRESS_WRITE_INTERVAL:
            self._wake.set()

    def forget(self, held: HeldJob) -> None:
        """Stop heartbeating `held` before finishing it, so no heartbeat races the finish."""
        with held.lock:
            held.forgotten = True
        with self._lock:
            if held in self._held:
                self._held.remove(held)

    # --- the thread ----------------------------------------------------------------------------
    def _due(self, held: HeldJob, now: float) -> bool:
        if now - held.extended_at >= self.interval:
            return True
        return held.progress_pending and now - held.written_at >= PROGRESS_WRITE_INTERVAL

    def _run(self) -> None:
        while not self._closed.is_set():
            now = self.clock.monotonic()
            for held in self.held():
                if self._due(held, now):
                    self._beat(held, now)
            self._wake.wait(self._nap(self.clock.monotonic()))
            self._wake.clear()

    def _nap(self, now: float) -> float:
        nap = MAX_NAP
        for held in self.held():
            nap = min(nap, max(held.extended_at + self.interval - now, 0.0))
            if held.progress_pending:
                nap = min(nap, max(held.written_at + PROGRESS_WRITE_INTERVAL - now, 0.0))
        return max(nap, 0.01)

    def _beat(self, held: HeldJob, now: float) -> None:
        with held.lock:
            if held.forgotten:
                return
            progress = held.progress if held.progress_pending else None
            held.progress_pending = False
            try:
                with self.pool.connection() as conn:
                    status = self.queue.heartbeat(
                        conn, held.job, progress=progress, lease=self.lease
                    )
            except (LeaseLost, JobNotFound) as exc:  # JobNotFound: the row was deleted
                self.log.warning("lease_lost", job_id=str(held.id), reason=str(exc))
                held.lost.set()
                held.forgotten = True
                return
            except (psycopg.Error, PoolTimeout, QueueError) as exc:
                # The lease still runs for a while: try again in a second.
                self.log.warning("heartbeat_failed", job_id=str(held.id), error=str(exc))
                held.progress_pending = held.progress_pending or progress is not None
                held.extended_at = now - max(self.interval - 1.0, 0.0)
                return
            held.extended_at = now
            if progress is not None:
                held.written_at = now
            if status == "cancelled":
                self.log.info("job_cancelled_seen", job_id=str(held.id))
                held.cancelled.set()
                held.forgotten = True
        if held.forgotten:
            with self._lock:
                if held in self._held:
                    self._held.remove(held)
