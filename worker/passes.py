"""The forward passes of a separation: several inputs' segments share them.

`run_streams` runs one `Engine` per input (`worker.engine`) to its end. Each pass is led by the
inputs in turn: the leader fills it with its next segments, the others top it up with theirs
when they are at the same model member and input length, so short clips fill a large
accelerator batch. Each input keeps its own segment order, so its result is the same as when
it runs alone. `ModelRunner` runs a pass: optional autocast (fp16 / bf16), and on CUDA
out-of-memory the batch halves (for the rest of the run) instead of failing. On CPU a pass of
several segments runs in lanes: one thread per segment, each with one intra-op thread (torch
releases the GIL inside its ops), which measured 1.8x less CPU time per segment than one
segment on all cores (bench/results/engines.md).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch

from app.log import get_logger
from worker.engine import Engine, JobCancelled, Segment, Stream, StreamResult
from worker.engines import Forward, autocast
from worker.models import LoadedModel


@dataclass(frozen=True)
class PassPlan:
    """How the forward passes of a run go: on `device` at `precision`, `batch_size` segments
    per pass at most (see `run_shared`), a pass's segments in `lanes` threads at once on CPU."""

    device: str
    precision: str
    batch_size: int
    lanes: int = 1


def run_streams(loaded: LoadedModel, streams: list[Stream], plan: PassPlan) -> list[StreamResult]:
    """Separate `streams` with `loaded` as `plan` says; one run at a time per model."""
    device = plan.device
    engines = [Engine(loaded, stream, device) for stream in streams]
    with loaded.lock, _lane_pool(plan.lanes if device == "cpu" else 1) as pool:
        runner = ModelRunner(loaded.forwards, device, plan.precision, plan.batch_size, pool)
        run_shared(engines, runner)
    return [engine.result for engine in engines]


def _single_thread() -> None:
    torch.set_num_threads(1)


@contextlib.contextmanager
def _lane_pool(lanes: int) -> Iterator[ThreadPoolExecutor | None]:
    """`lanes` threads of one intra-op thread each, or None for one lane (the calling thread,
    all intra-op threads)."""
    if lanes <= 1:
        yield None
        return
    with ThreadPoolExecutor(lanes, "segment-lane", initializer=_single_thread) as pool:
        yield pool


@dataclass(eq=False)
class ModelRunner:
    """Forward passes of one model on one device, each member run by its prepared forward
    (worker/engines): autocast, and on CUDA out-of-memory the batch halves (for the rest of the
    run) instead of failing."""

    forwards: list[Forward]
    device: str
    precision: str
    batch_size: int
    lanes: ThreadPoolExecutor | None = None

    def __call__(self, member: int, inputs: torch.Tensor) -> torch.Tensor:
        if self.lanes is not None:
            return torch.cat(list(self.lanes.map(self._lane(member), inputs.split(1))))
        while True:
            try:
                with autocast(self.device, self.precision):
                    return self.forwards[member](inputs).float()
            except torch.cuda.OutOfMemoryError:
                if inputs.shape[0] == 1:
                    raise
                self.batch_size = max(1, inputs.shape[0] // 2)
                if self.device == "cuda":
                    torch.cuda.empty_cache()
                get_logger().warning("batch_out_of_memory", batch_size=self.batch_size)
                halves = inputs.split(self.batch_size)
                return torch.cat([self(member, half) for half in halves])

    def _lane(self, member: int) -> Any:
        def run(segment: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode(), autocast(self.device, self.precision):  # per thread
                return self.forwards[member](segment).float()

        return run


def run_shared(engines: list[Engine], model: ModelRunner) -> None:
    """Run the engines to their end, sharing forward passes. Each pass is led by the engines in
    turn: the leader fills it with its next segments, the others top it up with theirs when
    they are at the same member and input length. An engine whose stop check, reader or sink
    fails ends with that error in its result; the others go on. A failing forward pass (the
    model itself) raises for all."""
    active = list(engines)
    turn = 0

    def drop(engine: Engine, error: BaseException) -> None:
        engine.result.error = error
        active.remove(engine)

    with torch.inference_mode():
        while active:
            for engine in list(active):
                if engine.stop_requested():
                    drop(engine, JobCancelled("the job was cancelled; separation stopped"))
                elif engine.done:
                    try:
                        engine.finish()
                    except Exception as exc:
                        drop(engine, exc)
                    else:
                        active.remove(engine)
            if not active:
                break
            order = active[turn % len(active) :] + active[: turn % len(active)]
            turn += 1
            parts: list[tuple[Engine, list[Segment], torch.Tensor]] = []
            member = valid = None
            for engine in order:
                room = model.batch_size - sum(len(batch) for _, batch, _ in parts)
                if room <= 0:
                    break
                batch = engine.take(room, member=member, valid=valid)
                if not batch:
                    continue
                try:
                    windows = torch.stack([engine.window(s) for s in batch])
                except Exception as exc:
                    drop(engine, exc)
                    continue
                parts.append((engine, batch, windows))
                member, valid = batch[0].lane.member, batch[0].valid
            if not parts:
                continue
            assert member is not None
            started = time.perf_counter()
            outputs = model(member, torch.cat([w for _, _, w in parts]).to(model.device))
            seconds = time.perf_counter() - started
            items = outputs.shape[0]
            for engine, batch, _ in parts:
                engine.result.forward_s += seconds * len(batch) / items
                try:
                    engine.absorb(batch, outputs[: len(batch)])
                except Exception as exc:
                    drop(engine, exc)
                outputs = outputs[len(batch) :]
