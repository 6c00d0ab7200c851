"""What the worker's parts hand each other, and the little state their threads share.

The worker is split the way River splits its client: the loop (`worker.loop`) runs turns and
maintenance; intake (`worker.intake`) claims jobs and downloads their inputs, in the background
for the next turn; the executor (`worker.executor`) runs them on the model; the completer
(`worker.completer`) uploads the stems and writes each job's end to its row. A turn flows
through them as `Prepared` (claimed, input on disk) -> `Separated` (stems on disk) -> `Outcome`.

The parts never reach into each other's fields: what they use is the `Context` made by
`Worker.start()`, and what crosses threads is `Shared`, owned by the `Worker` from its creation.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from uuid import UUID

from psycopg_pool import ConnectionPool

from app.clock import Clock
from app.db import Connection
from app.params import JobParams
from app.queue import Job, Queue
from app.settings import Settings
from app.storage import Storage
from worker.leases import HeldJob, LeaseKeeper
from worker.pipeline import SeparationResult
from worker.separation import Separator

OutcomeStatus = Literal[
    "succeeded",  # stems uploaded, row completed
    "failed",  # failed for good (permanent error, or retries used up)
    "retrying",  # failed, back to queued with backoff
    "cancelled",  # somebody cancelled it while it ran; left cancelled
    "released",  # handed back to the queue on shutdown, no attempt charged
    "lease_lost",  # the reaper or another worker owns it now; nothing written
    "abandoned",  # the database stayed unreachable at the finish; the reaper will requeue it
]


@dataclass(frozen=True, slots=True)
class Outcome:
    job_id: UUID
    status: OutcomeStatus
    error: str | None = None
    error_kind: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    output: dict[str, Any] | None = None


@dataclass(eq=False)
class Prepared:
    """A claimed job with its input downloaded (or the error the download raised)."""

    held: HeldJob
    input_path: Path | None = None
    download_s: float = 0.0
    error: Exception | None = None


@dataclass(eq=False)
class Separated:
    """A job whose stems are on local disk, ready to upload."""

    prepared: Prepared
    params: JobParams
    result: SeparationResult


@dataclass(eq=False)
class Shared:
    """The state the worker's threads share (the loop, the model's progress callbacks, the
    prefetch thread, the upload thread, the signal relay)."""

    stop: threading.Event = field(default_factory=threading.Event)  # set by request_stop()
    wakeup: threading.Event = field(default_factory=threading.Event)  # NOTIFY, stop, upload end
    stop_deadline: float | None = None  # monotonic time the running job must be done by
    draining: bool = False  # the worker row says drain: finish what is held, claim nothing
    download_s: float = 0.0  # moving average (intake), sizes the prefetch lead
    upload_s: float = 0.0  # moving average (completer), used by the shutdown estimate

    def record_download(self, seconds: float) -> None:
        self.download_s = _average(self.download_s, seconds)

    def record_upload(self, seconds: float) -> None:
        self.upload_s = _average(self.upload_s, seconds)


@dataclass(frozen=True, eq=False)
class Context:
    """What every part of a started worker uses, fixed from `Worker.start()` to `close()`."""

    settings: Settings
    clock: Clock
    queue: Queue
    storage: Storage
    separator: Separator
    pool: ConnectionPool[Connection]
    keeper: LeaseKeeper
    worker_id: UUID
    log: Any
    scratch: Path  # this worker's own folder for inputs and stems, removed whole by close()
    shared: Shared


def queue_wait(job: Job) -> float:
    """Seconds the job waited in the queue before this attempt started."""
    if job.started_at is None:
        return 0.0
    return max((job.started_at - job.created_at).total_seconds(), 0.0)


def _average(previous: float, sample: float) -> float:
    return sample if previous == 0.0 else 0.7 * previous + 0.3 * sample
