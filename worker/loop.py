"""The worker loop: claim a job, download its input, separate, upload the stems, finish the row.

`Worker.run_once()` claims what one turn takes (one job, or a group, below), processes it start
to end and says what happened. `Worker.run()` is the long-lived loop: it keeps the model busy by
overlapping the jobs' input/output work with the model's work:

- **groups** (cross-track batching): where a forward pass holds several segments (accelerators),
  a turn claims up to STEMFLEET_GROUP_JOBS queued jobs and separates them together, their
  segments sharing the passes, so short clips fill the batch. Jobs of another model or segment
  length, and inputs over GROUP_MAX_SECONDS (they fill passes alone), run on their own. Each
  job keeps its own result, errors and cancellation.
- **prefetch**: when the running job is about to finish (estimated from its progress rate), a
  background thread claims the next turn's jobs and downloads their inputs. Claiming only near
  the end (rather than as soon as a job starts) keeps a busy worker from sitting on jobs that
  another worker could start now; the leases of prefetched jobs are kept alive like any held job.
- **upload behind**: the stems of a finished turn upload and the rows complete on a background
  thread while the next turn is already on the model (one upload in flight at a time).

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
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar
from uuid import UUID

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from app.clock import Clock, SystemClock
from app.db import Connection, create_pool
from app.errors import JobNotFound, LeaseLost, RetryableJobError
from app.log import get_logger
from app.params import JobParams, fleet_model_names, parse_params
from app.queue import Job, Queue
from app.settings import Settings
from app.storage import Storage, output_key, safe_filename, storage_from_settings
from worker.audio import probe_duration
from worker.failures import classify
from worker.leases import HeldJob, LeaseKeeper
from worker.pipeline import FileJob, SeparationResult, separate_file, separate_files
from worker.runtime import WorkerIdentity, detect_identity, spawn
from worker.scratch import scratch_name, sweep_dead
from worker.separation import JobCancelled, Separator
from worker.wakeup import QueueWatcher

T = TypeVar("T")

OutcomeStatus = Literal[
    "succeeded",  # stems uploaded, row completed
    "failed",  # failed for good (permanent error, or retries used up)
    "retrying",  # failed, back to queued with backoff
    "cancelled",  # somebody cancelled it while it ran; left cancelled
    "released",  # handed back to the queue on shutdown, no attempt charged
    "lease_lost",  # the reaper or another worker owns it now; nothing written
    "abandoned",  # the database stayed unreachable at the finish; the reaper will requeue it
]
ExitReason = Literal["stopped", "idle", "drained", "deregistered"]

OOM_SEGMENT_FLOOR = 1.0  # seconds: below this a segment holds too little context to separate well
PREFETCH_MIN_LEAD = 2.0  # claim the next job when the current one has this much model time left
FINISH_RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0)
MAX_DB_RETRY_DELAY = 30.0
FINAL_UPLOAD_WAIT = 1.0  # seconds close() still gives an upload whose job it released
GROUP_MAX_SECONDS = 600.0  # longer inputs fill forward passes alone: they run on their own
CONTENT_TYPES = {"wav": "audio/wav", "flac": "audio/flac", "mp3": "audio/mpeg", "opus": "audio/ogg"}


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


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA (or other accelerator) out-of-memory, as torch raises it."""
    try:
        import torch

        if isinstance(exc, torch.cuda.OutOfMemoryError):
            return True
    except ImportError:
        pass
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def smaller_segment(segment: float) -> float | None:
    """Half the segment, or None once that would go below the floor."""
    half = segment / 2
    return half if half >= OOM_SEGMENT_FLOOR else None


class Worker:
    """One worker process's engine. Use as a context manager, or call start() then close()."""

    def __init__(
        self,
        settings: Settings,
        *,
        separator: Separator | None = None,
        storage: Storage | None = None,
        clock: Clock | None = None,
        identity: WorkerIdentity | None = None,
        prefetch: bool = True,
        work_dir: Path | None = None,
    ) -> None:
        self.settings = settings
        self.clock: Clock = clock or SystemClock()
        self.queue = Queue(self.clock)
        self.storage: Storage = storage or storage_from_settings(settings)
        self.separator = separator
        self.identity = identity or detect_identity(settings)
        self.prefetch = prefetch
        self.work_dir = work_dir
        self._scratch_dir: Path | None = None
        self.worker_id: UUID | None = None
        self.draining = False
        self.stats: Counter[str] = Counter()
        self.recent: deque[Outcome] = deque(maxlen=100)
        # Set while the loop waits for work (useful to embedders and benchmarks).
        self.idle = threading.Event()
        self.log: Any = get_logger()
        self._stop = threading.Event()
        self._stop_deadline: float | None = None
        self._wakeup = threading.Event()
        self._pool: ConnectionPool[Connection] | None = None
        self._keeper: LeaseKeeper | None = None
        self._watcher: QueueWatcher | None = None
        self._prefetch_lock = threading.Lock()
        self._prefetching: Future[list[Prepared]] | None = None
        self._uploading: Future[list[Outcome]] | None = None
        self.group_size = 1  # jobs claimed per turn; set by start() from the separator
        self._download_s = 0.0  # moving average, sizes the prefetch lead
        self._upload_s = 0.0  # moving average, used by the shutdown estimate
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
        self.group_size = self.settings.group_jobs or self.separator.auto_group_size()
        self._pool = create_pool(url, min_size=1, max_size=6, name="stemfleet-worker")
        try:
            with self._pool.connection() as conn:
                row = self.queue.register_worker(
                    conn,
                    machine_id=self.identity.machine_id,
                    provider=self.identity.provider,
                    gpu=self.identity.gpu,
                    region=self.identity.region,
                )
                models = fleet_model_names(self.separator.model_name, self.settings.model_repo)
                self.queue.serve_models(conn, models)  # jobs may name them (submit checks)
            self.worker_id = row.id
            self.log = get_logger(worker_id=row.id)
            self._keeper = LeaseKeeper(
                self.queue,
                self._pool,
                self.clock,
                lease=self.settings.lease,
                interval=self.settings.heartbeat_interval,
                log=self.log,
            )
            self._keeper.start()
            self._watcher = QueueWatcher(url, self._wakeup.set, log=self.log)
            self._watcher.start()
        except BaseException:
            self._pool.close()
            self._pool = None
            raise
        sweep_dead(self._scratch_base(), self.log)  # what killed workers left behind
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
            model=self.separator.model_name,
            device=str(self.separator.device),
            group_size=self.group_size,
        )

    def _scratch_base(self) -> Path:
        return self.work_dir or Path(tempfile.gettempdir())

    def _scratch(self) -> Path:
        """This worker's own folder for inputs and stems (created on a job's first write),
        removed whole by close(): whatever path a job ended on (cancel, release, a stop
        mid-upload), nothing is left behind."""
        if self._scratch_dir is None:
            assert self.worker_id is not None
            self._scratch_dir = self._scratch_base() / scratch_name(self.worker_id)
        return self._scratch_dir

    def close(self) -> None:
        """Hand back every job still held, mark the worker stopped, close connections."""
        if self._pool is None:
            return
        self._drain_background(self._stop_deadline)
        if self._keeper is not None:
            for held in self._keeper.held():
                self._record(self._release(held))
        if self._uploading is not None:
            # An upload past the grace: its job was just released, so its finish fails fast
            # (or it had already completed); record what it says.
            self._collect_upload(wait=True, timeout=FINAL_UPLOAD_WAIT)
        if self._watcher is not None:
            self._watcher.close()
        if self._keeper is not None:
            self._keeper.close()
        if self.worker_id is not None:
            try:
                with self._pool.connection() as conn:
                    self.queue.worker_stopped(conn, self.worker_id)
            except (psycopg.Error, PoolTimeout) as exc:
                self.log.warning("worker_stopped_not_recorded", error=str(exc))
        self._pool.close()
        self._pool = None
        if self._scratch_dir is not None:
            shutil.rmtree(self._scratch_dir, ignore_errors=True)
            self._scratch_dir = None
        self.log.info("worker_closed", **dict(self.stats))

    def __enter__(self) -> Worker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request_stop(self, *, now: bool = False) -> None:
        """Stop claiming; the running job finishes if it can within STEMFLEET_SHUTDOWN_GRACE,
        else it is released. A second request (or now=True) releases at once."""
        immediate = now or self._stop.is_set()
        grace = 0.0 if immediate else self.settings.shutdown_grace
        self._stop_deadline = self.clock.monotonic() + grace
        self._stop.set()
        self._wakeup.set()
        self.log.info("worker_stop_requested", grace=grace)

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    # --- the public steps --------------------------------------------------------------------
    def run_once(self) -> list[Outcome]:
        """Claim one turn's jobs (at most `group_size`) and process them to the end, in claim
        order; an empty list when nothing was claimable."""
        self._require_started()
        outcomes = [
            stage if isinstance(stage, Outcome) else self._upload_stage(stage)
            for stage in self._model_stage(self._claim_and_download(), prefetch_next=False)
        ]
        for outcome in outcomes:
            self._record(outcome)
        return outcomes

    def run(self) -> ExitReason:
        """The loop, until a stop request, idle exit, a drain with no job, or deregistration."""
        self.start()
        reason: ExitReason = "stopped"
        delay = 0.5
        try:
            while not self._stop.is_set():
                try:
                    step = self._loop_step()
                except (psycopg.OperationalError, PoolTimeout) as exc:
                    self.log.warning("database_unavailable", error=str(exc), retry_in=delay)
                    self.clock.wait(self._stop, delay)
                    delay = min(delay * 2, MAX_DB_RETRY_DELAY)
                    continue
                except Exception:
                    # Jobs' own errors never get here; this is the loop's machinery failing.
                    # Keep the process up (a restart would lose the warm model) but slow down.
                    self.log.exception("worker_loop_error", retry_in=delay)
                    self.clock.wait(self._stop, delay)
                    delay = min(delay * 2, MAX_DB_RETRY_DELAY)
                    continue
                delay = 0.5
                if step is not None:
                    reason = step
                    break
        finally:
            self.idle.clear()
            self.log.info("worker_exiting", reason=reason)
            self.close()
        return reason

    # --- one turn of the loop ----------------------------------------------------------------
    def _loop_step(self) -> ExitReason | None:
        """Process one job, or wait for work once; an exit reason ends the loop."""
        self._collect_upload(wait=False)
        if self._maintain() == "deregistered":
            return "deregistered"
        prepared = self._take_prefetched()
        if not prepared:
            self._wakeup.clear()
            prepared = self._claim_and_download()
        if prepared:
            self.idle.clear()
            separated: list[Separated] = []
            for stage in self._model_stage(prepared, prefetch_next=self.prefetch):
                if isinstance(stage, Outcome):
                    self._record(stage)
                else:
                    separated.append(stage)
            if separated:
                self._start_upload(separated)
            return None
        return self._idle_step()

    def _idle_step(self) -> ExitReason | None:
        if self._stop.is_set():
            return "stopped"
        if self.draining:
            self._collect_upload(wait=True)
            self.log.info("worker_drained")
            return "drained"
        now = self.clock.monotonic()
        idle_for = now - self._last_busy
        idle_exit = self.settings.worker_idle_exit
        if idle_exit and idle_for >= idle_exit and self._uploading is None:
            self.log.info("worker_idle_exit", idle_s=round(idle_for, 3))
            return "idle"
        timeout = self.settings.poll_interval
        if idle_exit:
            timeout = min(timeout, idle_exit - idle_for)
        timeout = min(timeout, self._next_reap - now, self._next_worker_beat - now)
        if self._uploading is not None:
            # Not idle: the last job is still uploading (its done-callback sets the event).
            # Wait in real time, so an injected clock never runs past that job's lease.
            self._wakeup.wait(max(timeout, 0.0))
            return None
        self.idle.set()
        self.clock.wait(self._wakeup, max(timeout, 0.0))
        return None

    def _maintain(self) -> ExitReason | None:
        """Reap expired leases and heartbeat the worker row when due (learns about draining)."""
        pool = self._require_started()
        now = self.clock.monotonic()
        if now >= self._next_reap:
            self._next_reap = now + max(self.settings.lease / 2, 1.0)
            with pool.connection() as conn:
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
            assert self.worker_id is not None
            try:
                with pool.connection() as conn:
                    row = self.queue.worker_heartbeat(conn, self.worker_id)
            except JobNotFound:
                # Stopped by someone else, or this machine id registered again elsewhere.
                self.log.warning("worker_deregistered")
                return "deregistered"
            if row.draining and not self.draining:
                self.log.info("worker_draining")
            self.draining = row.draining
        return None

    # --- claim and download ------------------------------------------------------------------
    def _claim_and_download(self) -> list[Prepared]:
        """Claim up to `group_size` jobs and download their inputs, in claim order."""
        if self._stop.is_set():
            return []
        pool = self._require_started()
        assert self.worker_id is not None
        with pool.connection() as conn:
            jobs = self.queue.claim(
                conn, self.worker_id, lease=self.settings.lease, limit=self.group_size
            )
        return [self._download(job) for job in jobs]

    def _download(self, job: Job) -> Prepared:
        assert self._keeper is not None
        workdir = self._scratch() / f"{job.id}-{job.attempts}"
        held = self._keeper.hold(job, workdir)
        self.log.info(
            "job_claimed",
            job_id=str(job.id),
            attempt=job.attempts,
            kind=job.kind,
            queue_wait_s=round(_queue_wait(job), 3),
        )
        prepared = Prepared(held)
        started = self.clock.monotonic()
        # Keep the user's file name: decoders' error messages then name the file they sent.
        input_path = held.workdir / "input" / safe_filename(Path(job.input_key).name)
        try:
            input_path.parent.mkdir(parents=True)
            self.storage.get_file(job.input_key, input_path)
            prepared.input_path = input_path
        except Exception as exc:
            prepared.error = exc
        prepared.download_s = self.clock.monotonic() - started
        self._download_s = _average(self._download_s, prepared.download_s)
        return prepared

    def _take_prefetched(self) -> list[Prepared]:
        with self._prefetch_lock:
            future, self._prefetching = self._prefetching, None
        if future is None:
            return []
        try:
            return future.result()
        except (psycopg.OperationalError, PoolTimeout) as exc:
            self.log.warning("prefetch_failed", error=str(exc))
            return []

    def _maybe_prefetch(self, running: list[HeldJob]) -> None:
        """Claim the next turn once the jobs on the model (a group: the slowest) are about to
        end."""
        if self._stop.is_set() or self.draining or self._prefetching is not None:
            return
        now = self.clock.monotonic()
        remaining = [held.remaining_model_seconds(now) for held in running if not held.stopped]
        lead = max(PREFETCH_MIN_LEAD, 2 * self._download_s)
        if any(r is None or r > lead for r in remaining):
            return
        with self._prefetch_lock:
            if self._prefetching is None:
                self._prefetching = spawn(self._claim_and_download, "prefetch")

    # --- the model -----------------------------------------------------------------------------
    def _model_stage(
        self, turn: list[Prepared], *, prefetch_next: bool
    ) -> list[Outcome | Separated]:
        """On the calling thread: separate the turn's jobs (grouped where they can share
        forward passes), or end each job here that cannot go on. Results in claim order."""
        units: list[list[int]] = []  # each runs alone (one job) or as a group
        groups: dict[tuple[str | None, float | None], list[int]] = {}
        params_of: dict[int, JobParams] = {}
        for index, prepared in enumerate(turn):
            params = self._groupable(prepared) if len(turn) > 1 else None
            if params is None:
                units.append([index])
            else:
                params_of[index] = params
                groups.setdefault((params.model, params.segment), []).append(index)
        units += groups.values()
        stages: dict[int, Outcome | Separated] = {}
        for number, unit in enumerate(units, start=1):
            prefetch = prefetch_next and number == len(units)  # the last unit claims ahead
            if len(unit) == 1:
                stages[unit[0]] = self._model_stage_alone(turn[unit[0]], prefetch)
            else:
                group = [(turn[index], params_of[index]) for index in unit]
                stages.update(zip(unit, self._model_stage_group(group, prefetch), strict=True))
        return [stages[index] for index in range(len(turn))]

    def _groupable(self, prepared: Prepared) -> JobParams | None:
        """The job's params if it may share forward passes with others; None if it runs alone
        (it cannot start, its params or input are bad: its own path reports why; or it is long)."""
        held = prepared.held
        if held.stopped or self._stop.is_set() or prepared.error is not None:
            return None
        assert prepared.input_path is not None and self.separator is not None
        try:
            params = parse_params(held.job.params)
            seconds = probe_duration(prepared.input_path)
        except Exception:
            return None
        preview = self._preview_seconds(held)
        if min(seconds, preview if preview is not None else seconds) > GROUP_MAX_SECONDS:
            return None
        name = params.model or self.separator.model_name
        return params.model_copy(update={"model": name})

    def _model_stage_alone(self, prepared: Prepared, prefetch_next: bool) -> Outcome | Separated:
        held = prepared.held
        try:
            if held.stopped or self._stop.is_set():
                if self._stop.is_set():
                    held.release_requested = True
                return self._stopped(held, {})
            if prepared.error is not None:
                raise prepared.error
            params = parse_params(held.job.params)
            assert prepared.input_path is not None
            self.log.info("job_separating", job_id=str(held.id), input=held.job.input_key)
            result = self._separate(held, prepared.input_path, params, prefetch_next)
            return Separated(prepared, params, result)
        except JobCancelled:
            return self._stopped(held, {"download": prepared.download_s})
        except Exception as exc:
            return self._failed(held, exc, {"download": prepared.download_s})

    def _model_stage_group(
        self, group: list[tuple[Prepared, JobParams]], prefetch_next: bool
    ) -> list[Outcome | Separated]:
        """Jobs of one model and segment length separated together (`separate_files`). If the
        model itself fails (out of accelerator memory, say), each job runs again on its own,
        where such failures have their own handling."""
        assert self.separator is not None and self._keeper is not None
        keeper = self._keeper
        now = self.clock.monotonic()
        running = [prepared.held for prepared, _ in group]
        jobs: list[FileJob] = []
        for prepared, params in group:
            held = prepared.held
            held.model_started_at, held.progress = now, 0.0
            assert prepared.input_path is not None
            self.log.info(
                "job_separating",
                job_id=str(held.id),
                input=held.job.input_key,
                group=[str(p.held.id) for p, _ in group],
            )

            def progress(value: float, held: HeldJob = held) -> None:
                keeper.report(held, value)
                if prefetch_next:
                    self._maybe_prefetch(running)

            def should_stop(held: HeldJob = held) -> bool:
                return self._should_stop(held)

            jobs.append(
                FileJob(
                    prepared.input_path,
                    held.workdir / "stems",
                    params,
                    preview_seconds=self._preview_seconds(held),
                    max_seconds=self.settings.max_duration,
                    progress=progress,
                    should_stop=should_stop,
                )
            )
        try:
            results = separate_files(self.separator, jobs)
        except Exception as exc:
            self.log.warning(
                "group_failed_running_alone",
                jobs=[str(p.held.id) for p, _ in group],
                error=f"{type(exc).__name__}: {exc}",
            )
            _free_accelerator_memory()
            for job in jobs:
                shutil.rmtree(job.out_dir, ignore_errors=True)
            return [self._model_stage_alone(prepared, prefetch_next) for prepared, _ in group]
        stages: list[Outcome | Separated] = []
        for (prepared, params), result in zip(group, results, strict=True):
            timings = {"download": prepared.download_s}
            if isinstance(result, SeparationResult):
                stages.append(Separated(prepared, params, result))
            elif isinstance(result, JobCancelled):
                stages.append(self._stopped(prepared.held, timings))
            else:
                stages.append(self._failed(prepared.held, result, timings))
        return stages

    def _preview_seconds(self, held: HeldJob) -> float | None:
        return self.settings.preview_seconds if held.job.kind == "preview" else None

    def _separate(
        self, held: HeldJob, input_path: Path, params: JobParams, prefetch_next: bool
    ) -> SeparationResult:
        assert self.separator is not None and self._keeper is not None
        keeper = self._keeper
        out_dir = held.workdir / "stems"

        def progress(value: float) -> None:
            keeper.report(held, value)
            if prefetch_next:
                self._maybe_prefetch([held])

        preview = self._preview_seconds(held)
        while True:
            held.model_started_at = self.clock.monotonic()
            held.progress = 0.0
            try:
                return separate_file(
                    self.separator,
                    input_path,
                    out_dir,
                    params,
                    preview_seconds=preview,
                    max_seconds=self.settings.max_duration,
                    progress=progress,
                    should_stop=lambda: self._should_stop(held),
                )
            except Exception as exc:
                if not is_out_of_memory(exc):
                    raise
                current = params.segment or self._model_segment(params)
                smaller = smaller_segment(current)
                if smaller is None:
                    raise RetryableJobError(
                        f"out of accelerator memory even with segment={current:g}s; the job "
                        "will be retried, possibly on a machine with more memory",
                        kind="out_of_memory",
                    ) from exc
                self.log.warning(
                    "out_of_memory_retry", job_id=str(held.id), segment=current, retry=smaller
                )
                _free_accelerator_memory()
                shutil.rmtree(out_dir, ignore_errors=True)
                params = params.model_copy(update={"segment": smaller})

    def _model_segment(self, params: JobParams) -> float:
        """The model's own segment length, the starting point when a job names none."""
        assert self.separator is not None
        return float(self.separator.model_for(params.model).members[0].segment)

    def _should_stop(self, held: HeldJob) -> bool:
        if held.stopped:
            return True
        if self._stop.is_set() and self._must_release(held):
            held.release_requested = True
            return True
        return False

    def _must_release(self, held: HeldJob) -> bool:
        """Shutting down: release unless the job will be done (and uploaded) before the grace."""
        now = self.clock.monotonic()
        deadline = self._stop_deadline if self._stop_deadline is not None else now
        remaining = held.remaining_model_seconds(now)
        if now >= deadline or remaining is None:
            return True
        return now + remaining + self._upload_s > deadline

    # --- upload and complete -------------------------------------------------------------------
    def _start_upload(self, turn: list[Separated]) -> None:
        """Upload a turn's jobs in the background, one after the other; one turn in flight at a
        time: wait for the previous one first."""
        self._collect_upload(wait=True)
        job_id = turn[0].prepared.held.id
        self._uploading = spawn(
            lambda: [self._upload_stage(separated) for separated in turn], f"upload-{job_id}"
        )
        # Wake the loop when it ends, so an idle worker records it and may exit.
        self._uploading.add_done_callback(lambda _: self._wakeup.set())

    def _collect_upload(self, *, wait: bool, timeout: float | None = None) -> None:
        future = self._uploading
        if future is None or (not wait and not future.done()):
            return
        try:
            outcomes = future.result(timeout=timeout)
        except FutureTimeout:
            return
        self._uploading = None
        for outcome in outcomes:
            self._record(outcome)

    def _upload_stage(self, separated: Separated) -> Outcome:
        prepared, params, result = separated.prepared, separated.params, separated.result
        held, job = prepared.held, prepared.held.job
        timings = {"download": prepared.download_s, **result.timings}
        try:
            started = self.clock.monotonic()
            stems: dict[str, str] = {}
            for stem, path in result.stems.items():
                if held.cancelled.is_set() or held.lost.is_set():
                    return self._stopped(held, timings)
                ext = path.suffix.lstrip(".") or params.extension
                key = output_key(job.id, stem, ext)
                self.storage.put_file(key, path, CONTENT_TYPES.get(ext))
                stems[stem] = key
            timings["upload"] = self.clock.monotonic() - started
            self._upload_s = _average(self._upload_s, timings["upload"])
            timings["queue_wait"] = _queue_wait(job)
            timings["total"] = self.clock.monotonic() - held.claimed_at
            output = {
                "stems": stems,
                "format": params.format,
                "samplerate": result.samplerate,
                "channels": result.channels,
                "model": self.separator.model_name if self.separator else None,
            }
            if params.effective_bitrate is not None:
                output["bitrate"] = params.effective_bitrate
            assert self._keeper is not None
            self._keeper.forget(held)
            self._finish(
                held,
                lambda conn: self.queue.complete(
                    conn, job, output=output, timings=timings, duration_s=result.duration_s
                ),
            )
            self.log.info(
                "job_succeeded",
                job_id=str(job.id),
                duration_s=round(result.duration_s, 3),
                **{k: round(v, 4) for k, v in timings.items()},
            )
            return Outcome(job.id, "succeeded", timings=timings, output=output)
        except _Unfinished as gone:
            return gone.outcome
        except Exception as exc:
            return self._failed(held, exc, timings)
        finally:
            shutil.rmtree(held.workdir, ignore_errors=True)

    # --- ending a job --------------------------------------------------------------------------
    def _finish(self, held: HeldJob, call: Callable[[Connection], T]) -> T:
        """Run a finishing queue call; retry while the database is unreachable (the lease still
        protects the job), turn LeaseLost into the right outcome."""
        pool = self._require_started()
        for delay in (*FINISH_RETRY_DELAYS, None):
            try:
                with pool.connection() as conn:
                    return call(conn)
            except (LeaseLost, JobNotFound) as exc:  # JobNotFound: the row was deleted
                raise _Unfinished(self._lease_lost_outcome(held, str(exc))) from exc
            except (psycopg.OperationalError, PoolTimeout) as exc:
                if delay is None:
                    self.log.error("job_finish_abandoned", job_id=str(held.id), error=str(exc))
                    raise _Unfinished(Outcome(held.id, "abandoned", error=str(exc))) from exc
                self.log.warning("job_finish_retry", job_id=str(held.id), error=str(exc))
                self.clock.wait(threading.Event(), delay)
        raise AssertionError("unreachable")

    def _lease_lost_outcome(self, held: HeldJob, reason: str) -> Outcome:
        status: OutcomeStatus = "lease_lost"
        if held.cancelled.is_set():
            status = "cancelled"
        else:
            try:
                with self._require_started().connection() as conn:
                    if self.queue.get(conn, held.id).status == "cancelled":
                        status = "cancelled"
            except (psycopg.Error, PoolTimeout, JobNotFound):
                pass
        self.log.info(f"job_{status}", job_id=str(held.id), reason=reason)
        return Outcome(held.id, status, error=reason)

    def _stopped(self, held: HeldJob, timings: dict[str, float]) -> Outcome:
        """The job stopped before its end: cancelled, lease lost, or to be released."""
        assert self._keeper is not None
        self._keeper.forget(held)
        shutil.rmtree(held.workdir, ignore_errors=True)
        if held.cancelled.is_set():
            self.log.info("job_cancelled", job_id=str(held.id))
            return Outcome(held.id, "cancelled", timings=timings)
        if held.lost.is_set():
            self.log.info("job_lease_lost", job_id=str(held.id))
            return Outcome(held.id, "lease_lost", timings=timings)
        return self._release(held)

    def _release(self, held: HeldJob) -> Outcome:
        assert self._keeper is not None
        self._keeper.forget(held)
        shutil.rmtree(held.workdir, ignore_errors=True)
        try:
            self._finish(held, lambda conn: self.queue.release(conn, held.job))
        except _Unfinished as gone:
            return gone.outcome
        self.log.info("job_released", job_id=str(held.id), progress=round(held.progress, 3))
        return Outcome(held.id, "released")

    def _failed(self, held: HeldJob, exc: Exception, timings: dict[str, float]) -> Outcome:
        assert self._keeper is not None
        self._keeper.forget(held)
        shutil.rmtree(held.workdir, ignore_errors=True)
        if held.cancelled.is_set():
            return Outcome(held.id, "cancelled", timings=timings)
        message, kind, retryable = classify(exc, held.job.input_key)
        try:
            row = self._finish(
                held,
                lambda conn: self.queue.fail(
                    conn,
                    held.job,
                    error=message,
                    error_kind=kind,
                    retryable=retryable,
                    backoff_base=self.settings.backoff_base,
                    timings=timings,
                ),
            )
        except _Unfinished as gone:
            return gone.outcome
        status: OutcomeStatus = "failed" if row.status == "failed" else "retrying"
        log = self.log.error if kind == "internal" else self.log.warning
        log(
            f"job_{status}",
            job_id=str(held.id),
            error=message,
            detail=f"{type(exc).__name__}: {exc}",
            error_kind=kind,
            attempt=held.job.attempts,
            exc_info=kind == "internal",
        )
        return Outcome(held.id, status, error=message, error_kind=kind, timings=timings)

    # --- helpers -------------------------------------------------------------------------------
    def _record(self, outcome: Outcome) -> None:
        self.stats[outcome.status] += 1
        self.recent.append(outcome)
        self._last_busy = self.clock.monotonic()

    def _drain_background(self, deadline: float | None) -> None:
        """Let the prefetch and the upload in flight end (within the grace when stopping);
        what does not make it in time is released by close()."""

        def left() -> float | None:
            return None if deadline is None else max(deadline - self.clock.monotonic(), 0.0)

        with self._prefetch_lock:
            future, self._prefetching = self._prefetching, None
        if future is not None:
            try:
                prepared = future.result(timeout=left())
            except (FutureTimeout, psycopg.Error, PoolTimeout):
                prepared = []
            for item in prepared:
                self._record(self._release(item.held))
        if self._uploading is not None:
            self._collect_upload(wait=True, timeout=left())

    def _require_started(self) -> ConnectionPool[Connection]:
        if self._pool is None or self.worker_id is None:
            raise RuntimeError("Worker.start() first (or use the worker as a context manager)")
        return self._pool


class _Unfinished(Exception):
    """A finishing call could not apply; carries the outcome to report instead."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.status)
        self.outcome = outcome


def _average(previous: float, sample: float) -> float:
    return sample if previous == 0.0 else 0.7 * previous + 0.3 * sample


def _queue_wait(job: Job) -> float:
    if job.started_at is None:
        return 0.0
    return max((job.started_at - job.created_at).total_seconds(), 0.0)


def _free_accelerator_memory() -> None:
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass
