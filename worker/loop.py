"""The worker loop: claim a job, download its input, separate, upload the stems, finish the row.

`Worker.run_once()` claims what one turn takes (one job, or a group of jobs that share the
model's forward passes), processes it start to end and says what happened. `Worker.run()` is the
long-lived loop: it keeps the model busy by overlapping the jobs' input/output work with the
model's work. The work is split by role, the way River splits its client (`worker.shared` says
what the parts hand each other):

- **intake** (`worker.intake`): claims a turn's jobs and downloads their inputs; near the end of
  the running turn it *prefetches* the next one on a background thread;
- **executor** (`worker.executor`): runs a turn on the model, grouped where jobs can share the
  forward passes, and retries a job that ran out of accelerator memory with a smaller segment;
- **completer** (`worker.completer`): uploads the stems and writes each job's end to its row
  (*upload behind*: on a background thread while the next turn is already on the model);
- this **loop**: the lifecycle (register, heartbeats, LISTEN, shutdown), the turns, the
  maintenance (reaping expired leases, the worker row's heartbeat, draining), the idle waits.

Correctness does not depend on the overlap: every held job is heartbeated (lease + progress +
cancel detection) by `LeaseKeeper`, every finish applies only under this worker's lease, and
outputs are whole-object writes that are safe to repeat after a lease loss.

Time comes from the injected clock: every idle wait of the loop is `clock.wait(event, seconds)`
(woken at once by a NOTIFY or a stop request), so with a FakeClock polling, reaping and idle exit
run without sleeping. Waits for the worker's own background work (an upload or a prefetch in
flight) are real, so an injected clock never runs past the leases of jobs it still holds.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypedDict, Unpack
from uuid import UUID

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from app.clock import Clock, SystemClock
from app.db import Connection, create_pool
from app.errors import JobNotFound
from app.log import get_logger
from app.params import fleet_model_names
from app.queue import Queue
from app.retry import exponential, retrying
from app.settings import Settings
from app.storage import Storage, storage_from_settings
from worker.completer import Completer
from worker.executor import Executor
from worker.intake import Intake
from worker.leases import LeaseKeeper
from worker.runtime import WorkerIdentity, detect_identity
from worker.scratch import scratch_name, sweep_dead
from worker.separation import Separator
from worker.shared import Context, Outcome, OutcomeStatus, Separated, Shared
from worker.wakeup import QueueWatcher

__all__ = ["ExitReason", "Outcome", "OutcomeStatus", "Worker"]

ExitReason = Literal["stopped", "idle", "drained", "deregistered"]

MAX_DB_RETRY_DELAY = 30.0
DATABASE_DOWN = (psycopg.OperationalError, PoolTimeout)
FINAL_UPLOAD_WAIT = 1.0  # seconds close() still gives an upload whose job it released


@dataclass(frozen=True, eq=False)
class _Parts:
    """A started worker's parts (made by start(), ended by close())."""

    ctx: Context
    intake: Intake
    executor: Executor
    completer: Completer
    watcher: QueueWatcher


class WorkerParts(TypedDict, total=False):
    """What a Worker may be handed instead of making it from its settings (tests, benchmarks)."""

    separator: Separator | None  # default: made by start()
    storage: Storage | None  # default: the STEMFLEET_S3_* bucket
    clock: Clock | None  # default: the system's
    identity: WorkerIdentity | None  # default: detected (machine id, provider, GPU)
    prefetch: bool  # claim and download the next job while the model runs (default True)
    work_dir: Path | None  # where job folders go (default: the system's temporary folder)


class Worker:
    """One worker process's engine. Use as a context manager, or call start() then close()."""

    def __init__(self, settings: Settings, **parts: Unpack[WorkerParts]) -> None:
        self.settings = settings
        self.clock: Clock = parts.get("clock") or SystemClock()
        self.queue = Queue(self.clock)
        self.storage: Storage = parts.get("storage") or storage_from_settings(settings)
        self.separator = parts.get("separator")
        self.identity = parts.get("identity") or detect_identity(settings)
        self.prefetch = parts.get("prefetch", True)
        self.work_dir = parts.get("work_dir")
        self.worker_id: UUID | None = None
        self.stats: Counter[str] = Counter()
        self.recent: deque[Outcome] = deque(maxlen=100)
        # Set while the loop waits for work (useful to embedders and benchmarks).
        self.idle = threading.Event()
        self.log: Any = get_logger()
        self.group_size = 1  # jobs claimed per turn; set by start() from the separator
        self._shared = Shared()
        self._parts: _Parts | None = None
        self._last_busy = 0.0
        self._next_reap = 0.0
        self._next_worker_beat = 0.0

    # --- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Load the model, register in `workers`, start heartbeats and LISTEN."""
        if self.worker_id is not None:
            return
        url = self.settings.require_database_url()
        if self.separator is None:
            self.separator = Separator(self.settings, clock=self.clock)
        separator = self.separator
        self.group_size = self.settings.group_jobs or separator.auto_group_size()
        pool: ConnectionPool[Connection] = create_pool(
            url, min_size=1, max_size=6, name="stemfleet-worker"
        )
        try:
            with pool.connection() as conn:
                row = self.queue.register_worker(
                    conn,
                    machine_id=self.identity.machine_id,
                    provider=self.identity.provider,
                    gpu=self.identity.gpu,
                    region=self.identity.region,
                )
                models = fleet_model_names(separator.model_name, self.settings.model_repo)
                self.queue.serve_models(conn, models)  # jobs may name them (submit checks)
            self.worker_id = row.id
            self.log = get_logger(worker_id=row.id)
            keeper = LeaseKeeper(
                self.queue,
                pool,
                self.clock,
                lease=self.settings.lease,
                interval=self.settings.heartbeat_interval,
                log=self.log,
            )
            keeper.start()
            watcher = QueueWatcher(url, self._shared.wakeup.set, log=self.log)
            watcher.start()
        except BaseException:
            pool.close()
            raise
        # This worker's own folder for inputs and stems (created on a job's first write),
        # removed whole by close(): whatever path a job ended on, nothing is left behind.
        base = self.work_dir or Path(tempfile.gettempdir())
        ctx = Context(
            settings=self.settings,
            clock=self.clock,
            queue=self.queue,
            storage=self.storage,
            separator=separator,
            pool=pool,
            keeper=keeper,
            worker_id=row.id,
            log=self.log,
            scratch=base / scratch_name(row.id),
            shared=self._shared,
        )
        completer = Completer(ctx)
        self._parts = _Parts(
            ctx, Intake(ctx, self.group_size), Executor(ctx, completer), completer, watcher
        )
        sweep_dead(base, self.log)  # what killed workers left behind
        now = self.clock.monotonic()
        self._last_busy = now
        self._next_reap = now
        self._next_worker_beat = now + self.settings.heartbeat_interval
        self.log.info(
            "worker_started",
            machine_id=self.identity.machine_id,
            provider=self.identity.provider,
            gpu=self.identity.gpu,
            region=self.identity.region,
            model=separator.model_name,
            device=str(separator.device),
            group_size=self.group_size,
        )

    def close(self) -> None:
        """Hand back every job still held, mark the worker stopped, close connections."""
        parts = self._parts
        if parts is None:
            return
        ctx, completer = parts.ctx, parts.completer
        self._drain_background(parts, self._shared.stop_deadline)
        for held in ctx.keeper.held():
            self._record(completer.release(held))
        if completer.uploading:
            # An upload past the grace: its job was just released, so its finish fails fast
            # (or it had already completed); record what it says.
            self._record_all(completer.collect(wait=True, timeout=FINAL_UPLOAD_WAIT))
        parts.watcher.close()
        ctx.keeper.close()
        try:
            with ctx.pool.connection() as conn:
                self.queue.worker_stopped(conn, ctx.worker_id)
        except (psycopg.Error, PoolTimeout) as exc:
            self.log.warning("worker_stopped_not_recorded", error=str(exc))
        ctx.pool.close()
        self._parts = None
        shutil.rmtree(ctx.scratch, ignore_errors=True)
        self.log.info("worker_closed", **dict(self.stats))

    def __enter__(self) -> Worker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request_stop(self, *, now: bool = False) -> None:
        """Stop claiming; the running job finishes if it can within STEMFLEET_SHUTDOWN_GRACE,
        else it is released. A second request (or now=True) releases at once."""
        shared = self._shared
        immediate = now or shared.stop.is_set()
        grace = 0.0 if immediate else self.settings.shutdown_grace
        shared.stop_deadline = self.clock.monotonic() + grace
        shared.stop.set()
        shared.wakeup.set()
        self.log.info("worker_stop_requested", grace=grace)

    @property
    def stopping(self) -> bool:
        return self._shared.stop.is_set()

    @property
    def draining(self) -> bool:
        """The worker row says drain: the held jobs finish, nothing new is claimed."""
        return self._shared.draining

    # --- the public steps --------------------------------------------------------------------
    def run_once(self) -> list[Outcome]:
        """Claim one turn's jobs (at most `group_size`) and process them to the end, in claim
        order; an empty list when nothing was claimable."""
        parts = self._require_started()
        turn = parts.intake.claim_and_download()
        outcomes = [
            stage if isinstance(stage, Outcome) else parts.completer.upload(stage)
            for stage in parts.executor.run(turn, on_progress=None)
        ]
        self._record_all(outcomes)
        return outcomes

    def run(self) -> ExitReason:
        """The loop, until a stop request, idle exit, a drain with no job, or deregistration."""
        self.start()
        stop = self._shared.stop
        reason: ExitReason = "stopped"
        # A failing turn is tried again with backoff: the database away, or the loop's own
        # machinery (jobs' own errors never get here; that one logs its traceback). The process
        # stays up, since a restart would lose the warm model.
        turns = retrying(
            on=Exception,
            wait=exponential(0.5, MAX_DB_RETRY_DELAY),
            sleep=lambda seconds: self.clock.wait(stop, seconds),
            until=stop,
            log=self.log,
            event="worker_loop_retry",
            traceback=lambda exc: not isinstance(exc, DATABASE_DOWN),
        )
        try:
            while not stop.is_set():
                try:
                    step = turns(lambda: self._loop_step(self._require_started()))
                except Exception as exc:  # raised only once a stop is requested
                    self.log.warning("worker_loop_error_while_stopping", error=str(exc))
                    break
                if step is not None:
                    reason = step
                    break
        finally:
            self.idle.clear()
            self.log.info("worker_exiting", reason=reason)
            self.close()
        return reason

    # --- one turn of the loop ----------------------------------------------------------------
    def _loop_step(self, parts: _Parts) -> ExitReason | None:
        """Process one turn, or wait for work once; an exit reason ends the loop."""
        self._record_all(parts.completer.collect(wait=False))
        if self._maintain(parts.ctx) == "deregistered":
            return "deregistered"
        turn = parts.intake.take_prefetched()
        if not turn:
            self._shared.wakeup.clear()
            turn = parts.intake.claim_and_download()
        if not turn:
            return self._idle_step(parts)
        self.idle.clear()
        on_progress = parts.intake.maybe_prefetch if self.prefetch else None
        separated: list[Separated] = []
        for stage in parts.executor.run(turn, on_progress):
            if isinstance(stage, Outcome):
                self._record(stage)
            else:
                separated.append(stage)
        if separated:
            self._record_all(parts.completer.start_upload(separated))
        return None

    def _idle_step(self, parts: _Parts) -> ExitReason | None:
        shared, completer = self._shared, parts.completer
        if shared.stop.is_set():
            return "stopped"
        if shared.draining:
            self._record_all(completer.collect(wait=True))
            self.log.info("worker_drained")
            return "drained"
        now = self.clock.monotonic()
        idle_for = now - self._last_busy
        idle_exit = self.settings.worker_idle_exit
        if idle_exit and idle_for >= idle_exit and not completer.uploading:
            self.log.info("worker_idle_exit", idle_s=round(idle_for, 3))
            return "idle"
        timeout = self.settings.poll_interval
        if idle_exit:
            timeout = min(timeout, idle_exit - idle_for)
        timeout = min(timeout, self._next_reap - now, self._next_worker_beat - now)
        if completer.uploading:
            # Not idle: the last job is still uploading (its done-callback sets the event).
            # Wait in real time, so an injected clock never runs past that job's lease.
            shared.wakeup.wait(max(timeout, 0.0))
            return None
        self.idle.set()
        self.clock.wait(shared.wakeup, max(timeout, 0.0))
        return None

    def _maintain(self, ctx: Context) -> ExitReason | None:
        """Reap expired leases and heartbeat the worker row when due (learns about draining)."""
        now = self.clock.monotonic()
        if now >= self._next_reap:
            self._next_reap = now + max(self.settings.lease / 2, 1.0)
            with ctx.pool.connection() as conn:
                reaped = self.queue.reap(conn, backoff_base=self.settings.backoff_base)
            for item in reaped:
                self.log.warning(
                    "job_reaped",
                    job_id=str(item.job_id),
                    status=item.status,
                    attempts=item.attempts,
                    dead_worker=str(item.worker_id),
                )
        if now >= self._next_worker_beat:
            self._next_worker_beat = now + self.settings.heartbeat_interval
            try:
                with ctx.pool.connection() as conn:
                    row = self.queue.worker_heartbeat(conn, ctx.worker_id)
            except JobNotFound:
                # Stopped by someone else, or this machine id registered again elsewhere.
                self.log.warning("worker_deregistered")
                return "deregistered"
            if row.draining and not self._shared.draining:
                self.log.info("worker_draining")
            self._shared.draining = row.draining
        return None

    # --- helpers -------------------------------------------------------------------------------
    def _record(self, outcome: Outcome) -> None:
        self.stats[outcome.status] += 1
        self.recent.append(outcome)
        self._last_busy = self.clock.monotonic()

    def _record_all(self, outcomes: Iterable[Outcome]) -> None:
        for outcome in outcomes:
            self._record(outcome)

    def _drain_background(self, parts: _Parts, deadline: float | None) -> None:
        """Let the prefetch and the upload in flight end (within the grace when stopping);
        what does not make it in time is released by close()."""

        def left() -> float | None:
            return None if deadline is None else max(deadline - self.clock.monotonic(), 0.0)

        for prepared in parts.intake.drain(left()):
            self._record(parts.completer.release(prepared.held))
        if parts.completer.uploading:
            self._record_all(parts.completer.collect(wait=True, timeout=left()))

    def _require_started(self) -> _Parts:
        if self._parts is None:
            raise RuntimeError("Worker.start() first (or use the worker as a context manager)")
        return self._parts
