"""The completer: upload a job's stems and write its end to the row.

Every end of a job goes through here: succeeded (stems uploaded, `queue.complete`), failed or
retrying (`queue.fail`, with the message and kind from `worker.failures.classify`), released
(handed back on shutdown), cancelled or lease lost (nothing written). Each finishing call applies
only under this worker's lease and is retried while the database is unreachable (the lease still
protects the job); outputs are whole-object writes that are safe to repeat after a lease loss.

**Upload behind**: `start_upload` uploads a turn's stems and completes its rows on a background
thread while the next turn is already on the model, one turn in flight at a time; the loop
collects the outcomes with `collect`.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TypeVar

import psycopg
from psycopg_pool import PoolTimeout

from app.db import Connection
from app.errors import JobNotFound, LeaseLost
from app.retry import exponential, retrying
from app.storage import output_key
from worker.failures import classify
from worker.leases import HeldJob
from worker.runtime import spawn
from worker.shared import Context, Outcome, OutcomeStatus, Separated, queue_wait

T = TypeVar("T")

FINISH_TRIES, FINISH_RETRY_FIRST, FINISH_RETRY_CAP = 5, 0.5, 4.0  # waits 0.5, 1, 2, 4 s
CONTENT_TYPES = {"wav": "audio/wav", "flac": "audio/flac", "mp3": "audio/mpeg", "opus": "audio/ogg"}


class Completer:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._uploading: Future[list[Outcome]] | None = None

    # --- upload behind ---------------------------------------------------------------------------
    @property
    def uploading(self) -> bool:
        """True while a turn's upload is in flight (or done but not collected)."""
        return self._uploading is not None

    def start_upload(self, turn: list[Separated]) -> list[Outcome]:
        """Upload a turn's jobs in the background, one after the other; one turn in flight at a
        time: wait for the previous one first, and return its outcomes."""
        previous = self.collect(wait=True)
        job_id = turn[0].prepared.held.id
        self._uploading = spawn(
            lambda: [self.upload(separated) for separated in turn], f"upload-{job_id}"
        )
        # Wake the loop when it ends, so an idle worker records it and may exit.
        self._uploading.add_done_callback(lambda _: self.ctx.shared.wakeup.set())
        return previous

    def collect(self, *, wait: bool, timeout: float | None = None) -> list[Outcome]:
        """The outcomes of the upload in flight once it ended (waiting for it if `wait`, at most
        `timeout` seconds); an empty list while it runs on."""
        future = self._uploading
        if future is None or (not wait and not future.done()):
            return []
        try:
            outcomes = future.result(timeout=timeout)
        except FutureTimeout:
            return []
        self._uploading = None
        return outcomes

    def upload(self, separated: Separated) -> Outcome:
        """Upload the stems of one job and complete its row."""
        ctx = self.ctx
        prepared, params, result = separated.prepared, separated.params, separated.result
        held, job = prepared.held, prepared.held.job
        timings = {"download": prepared.download_s, **result.timings}
        try:
            started = ctx.clock.monotonic()
            stems: dict[str, str] = {}
            for stem, path in result.stems.items():
                if held.cancelled.is_set() or held.lost.is_set():
                    return self.stopped(held, timings)
                ext = path.suffix.lstrip(".") or params.extension
                key = output_key(job.id, stem, ext)
                ctx.storage.put_file(key, path, CONTENT_TYPES.get(ext))
                stems[stem] = key
            timings["upload"] = ctx.clock.monotonic() - started
            ctx.shared.record_upload(timings["upload"])
            timings["queue_wait"] = queue_wait(job)
            timings["total"] = ctx.clock.monotonic() - held.claimed_at
            output = {
                "stems": stems,
                "format": params.format,
                "samplerate": result.samplerate,
                "channels": result.channels,
                "model": ctx.separator.model_name,
            }
            if params.effective_bitrate is not None:
                output["bitrate"] = params.effective_bitrate
            ctx.keeper.forget(held)
            self._finish(
                held,
                lambda conn: ctx.queue.complete(
                    conn, job, output=output, timings=timings, duration_s=result.duration_s
                ),
            )
            ctx.log.info(
                "job_succeeded",
                job_id=str(job.id),
                duration_s=round(result.duration_s, 3),
                **{k: round(v, 4) for k, v in timings.items()},
            )
            return Outcome(job.id, "succeeded", timings=timings, output=output)
        except _Unfinished as gone:
            return gone.outcome
        except Exception as exc:
            return self.failed(held, exc, timings)
        finally:
            shutil.rmtree(held.workdir, ignore_errors=True)

    # --- ending a job --------------------------------------------------------------------------
    def stopped(self, held: HeldJob, timings: dict[str, float]) -> Outcome:
        """The job stopped before its end: cancelled, lease lost, or to be released."""
        self.ctx.keeper.forget(held)
        shutil.rmtree(held.workdir, ignore_errors=True)
        if held.cancelled.is_set():
            self.ctx.log.info("job_cancelled", job_id=str(held.id))
            return Outcome(held.id, "cancelled", timings=timings)
        if held.lost.is_set():
            self.ctx.log.info("job_lease_lost", job_id=str(held.id))
            return Outcome(held.id, "lease_lost", timings=timings)
        return self.release(held)

    def release(self, held: HeldJob) -> Outcome:
        """Hand the job back to the queue, no attempt charged."""
        ctx = self.ctx
        ctx.keeper.forget(held)
        shutil.rmtree(held.workdir, ignore_errors=True)
        try:
            self._finish(held, lambda conn: ctx.queue.release(conn, held.job))
        except _Unfinished as gone:
            return gone.outcome
        ctx.log.info("job_released", job_id=str(held.id), progress=round(held.progress, 3))
        return Outcome(held.id, "released")

    def failed(self, held: HeldJob, exc: Exception, timings: dict[str, float]) -> Outcome:
        """The job raised `exc`: fail it for good or send it back with backoff (`classify`)."""
        ctx = self.ctx
        ctx.keeper.forget(held)
        shutil.rmtree(held.workdir, ignore_errors=True)
        if held.cancelled.is_set():
            return Outcome(held.id, "cancelled", timings=timings)
        message, kind, retryable = classify(exc, held.job.input_key)
        try:
            row = self._finish(
                held,
                lambda conn: ctx.queue.fail(
                    conn,
                    held.job,
                    error=message,
                    error_kind=kind,
                    retryable=retryable,
                    backoff_base=ctx.settings.backoff_base,
                    timings=timings,
                ),
            )
        except _Unfinished as gone:
            return gone.outcome
        status: OutcomeStatus = "failed" if row.status == "failed" else "retrying"
        log = ctx.log.error if kind == "internal" else ctx.log.warning
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

    def _finish(self, held: HeldJob, call: Callable[[Connection], T]) -> T:
        """Run a finishing queue call; retry while the database is unreachable (the lease still
        protects the job), turn LeaseLost into the right outcome."""
        ctx = self.ctx

        def once() -> T:
            try:
                with ctx.pool.connection() as conn:
                    return call(conn)
            except (LeaseLost, JobNotFound) as exc:  # JobNotFound: the row was deleted
                raise _Unfinished(self._lease_lost_outcome(held, str(exc))) from exc

        try:
            return retrying(
                on=(psycopg.OperationalError, PoolTimeout),
                wait=exponential(FINISH_RETRY_FIRST, FINISH_RETRY_CAP),
                sleep=lambda seconds: ctx.clock.wait(threading.Event(), seconds),
                attempts=FINISH_TRIES,
                log=ctx.log,
                event="job_finish_retry",
                job_id=str(held.id),
            )(once)
        except (psycopg.OperationalError, PoolTimeout) as exc:
            ctx.log.error("job_finish_abandoned", job_id=str(held.id), error=str(exc))
            raise _Unfinished(Outcome(held.id, "abandoned", error=str(exc))) from exc

    def _lease_lost_outcome(self, held: HeldJob, reason: str) -> Outcome:
        status: OutcomeStatus = "lease_lost"
        if held.cancelled.is_set():
            status = "cancelled"
        else:
            try:
                with self.ctx.pool.connection() as conn:
                    if self.ctx.queue.get(conn, held.id).status == "cancelled":
                        status = "cancelled"
            except (psycopg.Error, PoolTimeout, JobNotFound):
                pass
        self.ctx.log.info(f"job_{status}", job_id=str(held.id), reason=reason)
        return Outcome(held.id, status, error=reason)


class _Unfinished(Exception):
    """A finishing call could not apply; carries the outcome to report instead."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.status)
        self.outcome = outcome
