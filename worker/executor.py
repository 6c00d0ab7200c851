"""The executor: a turn's jobs on the model, on the loop's thread.

**Groups** (cross-track batching): where a forward pass holds several segments (accelerators),
a turn holds up to STEMFLEET_GROUP_JOBS jobs and they are separated together, their segments
sharing the passes, so short clips fill the batch. Jobs of another model or segment length, and
inputs over GROUP_MAX_SECONDS (they fill passes alone), run on their own. Each job keeps its own
result, errors and cancellation; if the model itself fails on a group, each job runs again alone.

**Out of memory**: a job alone that runs out of accelerator memory runs again with half the
segment length, down to OOM_SEGMENT_FLOOR; below that it fails as retryable.

A job that cannot go on (cancelled, lease lost, to be released on shutdown, failed) is ended
here through the completer; the others come out as `Separated`, ready to upload.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from app.errors import RetryableJobError
from app.params import JobParams, parse_params
from worker.audio import probe_duration
from worker.completer import Completer
from worker.engine import JobCancelled
from worker.leases import HeldJob
from worker.pipeline import FileJob, SeparationResult, separate_file, separate_files
from worker.shared import Context, Outcome, Prepared, Separated

OOM_SEGMENT_FLOOR = 1.0  # seconds: below this a segment holds too little context to separate well
GROUP_MAX_SECONDS = 600.0  # longer inputs fill forward passes alone: they run on their own

# Called with the jobs on the model whenever their progress moves (the loop's prefetch).
OnProgress = Callable[[list[HeldJob]], None]


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


class Executor:
    def __init__(self, ctx: Context, completer: Completer) -> None:
        self.ctx = ctx
        self.completer = completer

    def run(
        self, turn: list[Prepared], on_progress: OnProgress | None
    ) -> list[Outcome | Separated]:
        """Separate the turn's jobs (grouped where they can share forward passes), or end each
        job here that cannot go on. Results in claim order. `on_progress` is given to the last
        unit of the turn only (it claims ahead)."""
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
            hook = on_progress if number == len(units) else None
            if len(unit) == 1:
                stages[unit[0]] = self._alone(turn[unit[0]], hook)
            else:
                group = [(turn[index], params_of[index]) for index in unit]
                stages.update(zip(unit, self._group(group, hook), strict=True))
        return [stages[index] for index in range(len(turn))]

    def _groupable(self, prepared: Prepared) -> JobParams | None:
        """The job's params if it may share forward passes with others; None if it runs alone
        (it cannot start, its params or input are bad: its own path reports why; or it is long)."""
        held = prepared.held
        if held.stopped or self.ctx.shared.stop.is_set() or prepared.error is not None:
            return None
        assert prepared.input_path is not None
        try:
            params = parse_params(held.job.params)
            seconds = probe_duration(prepared.input_path)
        except Exception:
            return None
        preview = self._preview_seconds(held)
        if min(seconds, preview if preview is not None else seconds) > GROUP_MAX_SECONDS:
            return None
        name = params.model or self.ctx.separator.model_name
        return params.model_copy(update={"model": name})

    def _alone(self, prepared: Prepared, on_progress: OnProgress | None) -> Outcome | Separated:
        held = prepared.held
        stop = self.ctx.shared.stop
        try:
            if held.stopped or stop.is_set():
                if stop.is_set():
                    held.release_requested = True
                return self.completer.stopped(held, {})
            if prepared.error is not None:
                raise prepared.error
            params = parse_params(held.job.params)
            assert prepared.input_path is not None
            self.ctx.log.info("job_separating", job_id=str(held.id), input=held.job.input_key)
            result = self._separate(held, prepared.input_path, params, on_progress)
            return Separated(prepared, params, result)
        except JobCancelled:
            return self.completer.stopped(held, {"download": prepared.download_s})
        except Exception as exc:
            return self.completer.failed(held, exc, {"download": prepared.download_s})

    def _group(
        self, group: list[tuple[Prepared, JobParams]], on_progress: OnProgress | None
    ) -> list[Outcome | Separated]:
        """Jobs of one model and segment length separated together (`separate_files`). If the
        model itself fails (out of accelerator memory, say), each job runs again on its own,
        where such failures have their own handling."""
        ctx = self.ctx
        now = ctx.clock.monotonic()
        running = [prepared.held for prepared, _ in group]
        jobs: list[FileJob] = []
        for prepared, params in group:
            held = prepared.held
            held.model_started_at, held.progress = now, 0.0
            assert prepared.input_path is not None
            ctx.log.info(
                "job_separating",
                job_id=str(held.id),
                input=held.job.input_key,
                group=[str(p.held.id) for p, _ in group],
            )

            def progress(value: float, held: HeldJob = held) -> None:
                ctx.keeper.report(held, value)
                if on_progress is not None:
                    on_progress(running)

            def should_stop(held: HeldJob = held) -> bool:
                return self._should_stop(held)

            jobs.append(
                FileJob(
                    prepared.input_path,
                    held.workdir / "stems",
                    params,
                    preview_seconds=self._preview_seconds(held),
                    max_seconds=ctx.settings.max_duration,
                    progress=progress,
                    should_stop=should_stop,
                )
            )
        try:
            results = separate_files(ctx.separator, jobs)
        except Exception as exc:
            ctx.log.warning(
                "group_failed_running_alone",
                jobs=[str(p.held.id) for p, _ in group],
                error=f"{type(exc).__name__}: {exc}",
            )
            _free_accelerator_memory()
            for job in jobs:
                shutil.rmtree(job.out_dir, ignore_errors=True)
            return [self._alone(prepared, on_progress) for prepared, _ in group]
        stages: list[Outcome | Separated] = []
        for (prepared, params), result in zip(group, results, strict=True):
            timings = {"download": prepared.download_s}
            if isinstance(result, SeparationResult):
                stages.append(Separated(prepared, params, result))
            elif isinstance(result, JobCancelled):
                stages.append(self.completer.stopped(prepared.held, timings))
            else:
                stages.append(self.completer.failed(prepared.held, result, timings))
        return stages

    def _preview_seconds(self, held: HeldJob) -> float | None:
        return self.ctx.settings.preview_seconds if held.job.kind == "preview" else None

    def _separate(
        self, held: HeldJob, input_path: Path, params: JobParams, on_progress: OnProgress | None
    ) -> SeparationResult:
        """One job on the model; out of memory: again with half the segment (see the module)."""
        ctx = self.ctx
        out_dir = held.workdir / "stems"

        def progress(value: float) -> None:
            ctx.keeper.report(held, value)
            if on_progress is not None:
                on_progress([held])

        preview = self._preview_seconds(held)
        while True:
            held.model_started_at = ctx.clock.monotonic()
            held.progress = 0.0
            try:
                return separate_file(
                    ctx.separator,
                    input_path,
                    out_dir,
                    params,
                    preview_seconds=preview,
                    max_seconds=ctx.settings.max_duration,
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
                ctx.log.warning(
                    "out_of_memory_retry", job_id=str(held.id), segment=current, retry=smaller
                )
                _free_accelerator_memory()
                shutil.rmtree(out_dir, ignore_errors=True)
                params = params.model_copy(update={"segment": smaller})

    def _model_segment(self, params: JobParams) -> float:
        """The model's own segment length, the starting point when a job names none."""
        return float(self.ctx.separator.model_for(params.model).members[0].segment)

    def _should_stop(self, held: HeldJob) -> bool:
        if held.stopped:
            return True
        if self.ctx.shared.stop.is_set() and self._must_release(held):
            held.release_requested = True
            return True
        return False

    def _must_release(self, held: HeldJob) -> bool:
        """Shutting down: release unless the job will be done (and uploaded) before the grace."""
        shared = self.ctx.shared
        now = self.ctx.clock.monotonic()
        deadline = shared.stop_deadline if shared.stop_deadline is not None else now
        remaining = held.remaining_model_seconds(now)
        if now >= deadline or remaining is None:
            return True
        return now + remaining + shared.upload_s > deadline


def _free_accelerator_memory() -> None:
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass
