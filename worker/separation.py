"""Demucs separation with several segments per forward pass, equal to Demucs' own `apply_model`.

`demucs.apply.apply_model` cuts the (normalised) mix into segments of `segment` seconds every
`stride = (1 - overlap) * segment`, runs the model on one segment at a time, and blends them
with a triangular weight; with `shifts` it repeats this on copies of the mix delayed by random
offsets (0-0.5 s) and averages; a bag of models is a weighted average of its models. We do the
same arithmetic in the same order, but:

- segments of every shift (and successive offsets) go through the model together, `batch_size`
  at a time (0 = from free accelerator memory on CUDA, 1 on CPU);
- several inputs can share the forward passes (`Separator.run_together`): a pass filled with one
  input's segments is topped up with the next segments of the others (same model member, same
  segment length), so short clips fill a large accelerator batch. Each input keeps its own
  segment order, so its result is the same as when it runs alone;
- the mix is read through a window function and the output leaves through a sink as soon as no
  later segment can touch it, so an hour-long input can stream from disk to the encoders with
  only a few segments in memory (see worker/pipeline.py);
- `torch.inference_mode`, optional autocast (fp16 / bf16) and a cancel check between batches.

In fp32 the result equals `apply_model` up to float rounding (tested: max abs difference
<= 1e-5). Shift offsets are drawn with `random.randint(0, max_shift)` in apply_model's order
(model by model, shift by shift). Seeding `random` alone does not reproduce apply_model's
offsets for HTDemucs with several shifts or bags, because HTDemucs' transformer consumes the
same generator on every forward pass (a random positional shift, even in eval) and we make
fewer forward passes; the equivalence test replays apply_model's offsets instead.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from demucs.apply import BagOfModels
from demucs.htdemucs import HTDemucs

from app.clock import Clock, SystemClock
from app.errors import ConfigError, PermanentJobError, StemfleetError
from app.log import get_logger
from app.params import JobParams
from app.settings import Settings
from worker.models import ModelFailures, load_model

# On CPU a batch of several segments is slower than one at a time (bench/results/separation.md:
# htdemucs forward passes took 36-79 % longer at batch 4 on 2 cores): cores are already busy
# within one segment, and bigger activations miss the caches. Batching pays on accelerators.
CPU_BATCH_SIZE = 1
MAX_AUTO_BATCH = 32
MAX_AUTO_GROUP = 8  # jobs separated together by default where a pass holds several segments
CACHED_MODELS = 2  # models loaded on demand, besides the configured one

ProgressFn = Callable[[float], None]
StopFn = Callable[[], bool]
# (start, length) in mix frames -> float32 [C, length]: the raw (not normalised) mix, with
# zeros outside [0, mix length)
MixReader = Callable[[int, int], torch.Tensor]
# receives the finished output in order: float32 [S, C, n] (denormalised)
Sink = Callable[[torch.Tensor], None]


@dataclass
class Stream:
    """One input's separation: where its mix comes from and where its output goes."""

    length: int  # mix frames
    read_mix: MixReader
    mean: torch.Tensor
    std: torch.Tensor
    params: JobParams
    sink: Sink
    progress: ProgressFn | None = None
    should_stop: StopFn | None = None


@dataclass
class StreamResult:
    """How one stream of a shared run ended: `error` is None when all its output reached the
    sink; `forward_s` is its share of the forward passes' time (by segments)."""

    forward_s: float = 0.0
    error: BaseException | None = None


class JobCancelled(StemfleetError):
    """should_stop() turned true: the separation stopped between two batches."""


def pick_device(setting: str) -> str:
    """'auto' -> cuda if available, else mps, else cpu; an explicit device must exist."""
    if setting == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if setting == "cuda" and not torch.cuda.is_available():
        raise ConfigError("STEMFLEET_DEVICE=cuda but torch sees no CUDA device: use auto or cpu")
    if setting == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("STEMFLEET_DEVICE=mps but MPS is not available: use auto or cpu")
    return setting


@dataclass
class LoadedModel:
    """A model ready on its device, with what the pipeline needs to know about it."""

    name: str
    model: Any
    samplerate: int
    audio_channels: int
    sources: list[str]
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def members(self) -> list[Any]:
        return list(self.model.models) if isinstance(self.model, BagOfModels) else [self.model]

    def max_segment(self) -> float:
        """Longest segment (s) every member accepts: HTDemucs cannot go past its training one."""
        limits = [float(m.segment) for m in self.members if isinstance(m, HTDemucs)]
        return min(limits) if limits else float("inf")


@dataclass
class _Lane:
    """One pass of one member over the mix delayed by `shift` (apply_model's shift trick).

    Lane frame t' reads mix frame t' + shift (shift <= 0); its output at t' belongs to mix
    frame t' + shift. Segments start every `stride` lane frames.
    """

    member: int
    shift: int
    length: int
    segment: int
    stride: int
    next_offset: int = 0
    base: int = 0  # lane frame of acc[..., 0]
    acc: torch.Tensor | None = None
    weight_sum: torch.Tensor | None = None

    @property
    def done(self) -> bool:
        return self.next_offset >= self.length

    @property
    def next_mix_start(self) -> int:
        return self.next_offset + self.shift

    @property
    def finished_until(self) -> int:
        """Mix frame before which this lane's output will not change any more."""
        return (self.length if self.done else self.next_offset) + self.shift


@dataclass
class _Segment:
    lane: _Lane
    offset: int  # lane frame
    length: int  # frames of output kept (chunk length)
    valid: int  # frames fed to the model (padded around the chunk as apply_model does)


class _Engine:
    """One input's separation plan and state: hands out its segments in order, takes their
    model outputs back, and emits finished output. The forward passes are run by `_run_shared`,
    which may put several engines' segments in one pass."""

    def __init__(self, loaded: LoadedModel, stream: Stream, device: str) -> None:
        self.loaded = loaded
        self.stream = stream
        self.length = stream.length
        self.mean, self.std = stream.mean, stream.std
        self.params = stream.params
        self.device = device
        self.members = loaded.members
        self.is_bag = isinstance(loaded.model, BagOfModels)
        self.weights: list[list[float]] = (
            loaded.model.weights if self.is_bag else [[1.0] * len(loaded.sources)]
        )
        self.lanes: list[list[_Lane]] = [self._lanes(i, m) for i, m in enumerate(self.members)]
        self.blend = [self._blend_weight(m) for m in self.members]
        self.total = sum(self._count(lane) for lanes in self.lanes for lane in lanes)
        self.processed = 0
        self.emitted = 0
        self.result = StreamResult()

    # --- plan ------------------------------------------------------------------------------
    def _segment_seconds(self, member: Any) -> float:
        return float(self.params.segment) if self.params.segment else float(member.segment)

    def _lanes(self, index: int, member: Any) -> list[_Lane]:
        segment = int(member.samplerate * self._segment_seconds(member))
        stride = int((1 - self.params.overlap) * segment)
        if self.params.shifts:
            max_shift = int(0.5 * member.samplerate)
            lanes = []
            for _ in range(self.params.shifts):
                offset = random.randint(0, max_shift)
                shift = offset - max_shift
                lanes.append(_Lane(index, shift, self.length - shift, segment, stride, base=-shift))
            return lanes
        return [_Lane(index, 0, self.length, segment, stride)]

    @staticmethod
    def _count(lane: _Lane) -> int:
        return len(range(0, lane.length, lane.stride))

    def _blend_weight(self, member: Any) -> torch.Tensor:
        segment = int(member.samplerate * self._segment_seconds(member))
        weight = torch.cat(
            [
                torch.arange(1, segment // 2 + 1, device=self.device),
                torch.arange(segment - segment // 2, 0, -1, device=self.device),
            ]
        )
        return (weight / weight.max()) ** 1.0  # apply_model's transition_power = 1

    def _valid_length(self, member: Any, chunk: int) -> int:
        if isinstance(member, HTDemucs) and self.params.segment is not None:
            return int(self.params.segment * member.samplerate)
        if hasattr(member, "valid_length"):
            return int(member.valid_length(chunk))
        return chunk

    def _next_segment(self, lane: _Lane) -> _Segment:
        chunk = min(lane.length - lane.next_offset, lane.segment)
        valid = self._valid_length(self.members[lane.member], chunk)
        return _Segment(lane, lane.next_offset, chunk, valid)

    @property
    def done(self) -> bool:
        return all(lane.done for lanes in self.lanes for lane in lanes)

    def take(
        self, limit: int, *, member: int | None = None, valid: int | None = None
    ) -> list[_Segment]:
        """Up to `limit` next segments, all of one member and one input length, earliest mix
        position first. With `member` / `valid` given (topping up another input's pass), only
        if this input's next segments are of that member and length: the order in which an
        input's segments are handed out never depends on the inputs beside it."""
        pending = [lane for lanes in self.lanes for lane in lanes if not lane.done]
        if not pending:
            return []
        first = min(pending, key=lambda lane: lane.next_mix_start)
        if member is not None and first.member != member:
            return []
        lanes = [lane for lane in self.lanes[first.member] if not lane.done]
        batch: list[_Segment] = []
        while lanes and len(batch) < limit:
            lane = min(lanes, key=lambda lane: lane.next_mix_start)
            segment = self._next_segment(lane)
            wanted = valid if valid is not None else (batch[0].valid if batch else None)
            if wanted is not None and segment.valid != wanted:
                break  # a shorter tail segment: it goes in a pass of its own size
            batch.append(segment)
            lane.next_offset += lane.stride
            if lane.done:
                lanes.remove(lane)
        return batch

    # --- run -------------------------------------------------------------------------------
    def stop_requested(self) -> bool:
        should_stop = self.stream.should_stop
        return should_stop is not None and should_stop()

    def window(self, segment: _Segment) -> torch.Tensor:
        # TensorChunk.padded: centre the chunk in `valid` frames, zeros outside the mix
        start = segment.lane.shift + segment.offset - (segment.valid - segment.length) // 2
        raw = self.stream.read_mix(start, segment.valid)
        normalised = (raw - self.mean) / self.std
        first, last = max(0, -start), min(segment.valid, self.length - start)
        if first > 0 or last < segment.valid:  # apply_model pads the normalised mix with 0
            mask = torch.zeros(segment.valid, dtype=torch.bool)
            mask[first:last] = True
            normalised = normalised * mask
        return normalised

    def absorb(self, batch: list[_Segment], outputs: torch.Tensor) -> None:
        """The model's outputs for `batch` (in order): blend them in, emit what is finished."""
        blend = self.blend[batch[0].lane.member]
        for segment, out in zip(batch, outputs, strict=True):
            trimmed = _center_trim(out, segment.length)
            self._accumulate(segment, (blend[: segment.length] * trimmed).cpu(), blend)
        self.processed += len(batch)
        self._emit()
        if self.stream.progress is not None:
            self.stream.progress(self.processed / self.total)

    def finish(self) -> None:
        self._emit()

    def _accumulate(self, segment: _Segment, weighted: torch.Tensor, blend: torch.Tensor) -> None:
        lane = segment.lane
        end = segment.offset + segment.length
        sources, channels = weighted.shape[0], weighted.shape[1]
        if lane.acc is None or lane.weight_sum is None:
            lane.acc = torch.zeros(sources, channels, 0)
            lane.weight_sum = torch.zeros(0)
        missing = end - (lane.base + lane.acc.shape[-1])
        if missing > 0:
            lane.acc = torch.cat([lane.acc, torch.zeros(sources, channels, missing)], dim=-1)
            lane.weight_sum = torch.cat([lane.weight_sum, torch.zeros(missing)])
        skip = max(0, lane.base - segment.offset)  # frames before mix frame 0 (shift lanes)
        lo, hi = segment.offset + skip - lane.base, end - lane.base
        lane.acc[..., lo:hi] += weighted[..., skip:]
        lane.weight_sum[lo:hi] += blend[skip : segment.length].cpu()

    def _take(self, lane: _Lane, frames: int) -> torch.Tensor:
        """The lane's finished output for the next `frames` mix frames, dropped from its buffer."""
        assert lane.acc is not None and lane.weight_sum is not None
        out = lane.acc[..., :frames] / lane.weight_sum[:frames]
        lane.acc = lane.acc[..., frames:].clone()
        lane.weight_sum = lane.weight_sum[frames:].clone()
        lane.base += frames
        return out

    def _emit(self) -> None:
        until = min(lane.finished_until for lanes in self.lanes for lane in lanes)
        until = min(until, self.length)
        frames = until - self.emitted
        if frames <= 0:
            return
        estimates: torch.Tensor | float = 0.0
        totals = [0.0] * len(self.loaded.sources)
        for member_lanes, member_weights in zip(self.lanes, self.weights, strict=True):
            if self.params.shifts:
                out: torch.Tensor | float = 0.0
                for lane in member_lanes:
                    out = out + self._take(lane, frames)
                assert isinstance(out, torch.Tensor)
                out = out / self.params.shifts
            else:
                out = self._take(member_lanes[0], frames)
            if self.is_bag:
                for k, weight in enumerate(member_weights):
                    out[k] *= weight
                    totals[k] += weight
            estimates = estimates + out
        assert isinstance(estimates, torch.Tensor)
        if self.is_bag:
            for k in range(estimates.shape[0]):
                estimates[k] /= totals[k]
        self.emitted = until
        self.stream.sink(estimates * self.std + self.mean)


class _ModelRunner:
    """Forward passes of one model on one device: autocast, and on CUDA out-of-memory the
    batch halves (for the rest of the run) instead of failing."""

    def __init__(self, members: list[Any], device: str, precision: str, batch_size: int) -> None:
        self.members = members
        self.device = device
        self.precision = precision
        self.batch_size = batch_size

    def __call__(self, member: int, inputs: torch.Tensor) -> torch.Tensor:
        while True:
            try:
                with self._autocast():
                    return self.members[member](inputs).float()
            except torch.cuda.OutOfMemoryError:
                if inputs.shape[0] == 1:
                    raise
                self.batch_size = max(1, inputs.shape[0] // 2)
                if self.device == "cuda":
                    torch.cuda.empty_cache()
                get_logger().warning("batch_out_of_memory", batch_size=self.batch_size)
                halves = inputs.split(self.batch_size)
                return torch.cat([self(member, half) for half in halves])

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.precision)
        if dtype is None:
            return contextlib.nullcontext()
        device_type = "cuda" if self.device.startswith("cuda") else self.device
        return torch.autocast(device_type=device_type, dtype=dtype)


def _run_shared(engines: list[_Engine], model: _ModelRunner) -> None:
    """Run the engines to their end, sharing forward passes. Each pass is led by the engines in
    turn: the leader fills it with its next segments, the others top it up with theirs when
    they are at the same member and input length. An engine whose stop check, reader or sink
    fails ends with that error in its result; the others go on. A failing forward pass (the
    model itself) raises for all."""
    active = list(engines)
    turn = 0

    def drop(engine: _Engine, error: BaseException) -> None:
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
            parts: list[tuple[_Engine, list[_Segment], torch.Tensor]] = []
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


def _center_trim(tensor: torch.Tensor, length: int) -> torch.Tensor:
    delta = tensor.shape[-1] - length
    if delta:
        tensor = tensor[..., delta // 2 : tensor.shape[-1] - (delta - delta // 2)]
    return tensor


def normalisation(wav: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) of the mono mix, as demucs.api.Separator computes them."""
    ref = wav.mean(0)
    return ref.mean(), ref.std() + 1e-8


def tensor_reader(wav: torch.Tensor) -> MixReader:
    """A MixReader over an in-memory [C, T] mix."""

    def read(start: int, length: int) -> torch.Tensor:
        lo, hi = max(0, start), min(wav.shape[-1], start + length)
        if lo >= hi:
            return wav.new_zeros(wav.shape[0], length)
        window = wav[:, lo:hi]
        if lo - start or start + length - hi:
            window = torch.nn.functional.pad(window, (lo - start, start + length - hi))
        return window

    return read


class Separator:
    """The configured Demucs model, loaded once and kept warm, plus a few on-demand models."""

    def __init__(self, settings: Settings, *, clock: Clock | None = None) -> None:
        self.settings = settings
        self.failures = ModelFailures(clock or SystemClock())
        if settings.threads > 0:
            torch.set_num_threads(settings.threads)
        self.device = pick_device(settings.device)
        self.precision = settings.precision
        if self.precision == "fp16" and self.device == "cpu":
            get_logger().warning(
                "precision_unsupported", precision="fp16", device="cpu", using="fp32"
            )
            self.precision = "fp32"
        self.model_name = settings.model
        self._cache: OrderedDict[str, LoadedModel] = OrderedDict()
        self._batch_sizes: dict[tuple[str, int], int] = {}
        self.loaded = self._load(settings.model)
        self.samplerate = self.loaded.samplerate
        self.audio_channels = self.loaded.audio_channels
        self.sources = list(self.loaded.sources)

    # --- models ----------------------------------------------------------------------------
    def _load(self, name: str) -> LoadedModel:
        started = time.perf_counter()
        model = load_model(name, self.settings.model_repo)
        model.to(self.device)
        loaded = LoadedModel(
            name=name,
            model=model,
            samplerate=int(model.samplerate),
            audio_channels=int(model.audio_channels),
            sources=list(model.sources),
        )
        get_logger().info(
            "model_loaded",
            model=name,
            device=self.device,
            precision=self.precision,
            seconds=round(time.perf_counter() - started, 3),
        )
        return loaded

    def model_for(self, name: str | None) -> LoadedModel:
        """The model a job asks for (None: the configured one), loading it if needed. Up to
        CACHED_MODELS other models stay loaded, least recently used dropped first. A model that
        could not be loaded raises the same error again, without trying, for a while (see
        worker/models.py)."""
        if name is None or name == self.model_name:
            return self.loaded
        if name in self._cache:
            self._cache.move_to_end(name)
            return self._cache[name]
        self.failures.check(name)
        try:
            loaded = self._load(name)
        except PermanentJobError as exc:
            self.failures.remember(name, exc)
            raise
        self._cache[name] = loaded
        while len(self._cache) > CACHED_MODELS:
            self._cache.popitem(last=False)
            if self.device == "cuda":
                torch.cuda.empty_cache()
        return loaded

    def check_params(self, loaded: LoadedModel, params: JobParams) -> None:
        """Params that the model cannot honour -> PermanentJobError("invalid_params")."""
        wanted = list(params.stems or []) + ([params.two_stems] if params.two_stems else [])
        missing = [stem for stem in wanted if stem not in loaded.sources]
        if missing:
            raise PermanentJobError(
                f"model {loaded.name!r} has no stem {', '.join(map(repr, missing))}: it "
                f"separates {loaded.sources} (htdemucs_6s adds guitar and piano)",
                kind="invalid_params",
            )
        limit = loaded.max_segment()
        if params.segment is not None and params.segment > limit:
            raise PermanentJobError(
                f"segment {params.segment:g} s is longer than model {loaded.name!r} allows "
                f"({limit:.2f} s): give a segment of at most {limit:.2f} s or leave it unset",
                kind="invalid_params",
            )

    # --- batch size ------------------------------------------------------------------------
    def batch_size_for(self, loaded: LoadedModel, segment_frames: int) -> int:
        if self.settings.batch_size > 0:
            return self.settings.batch_size
        if self.device != "cuda":
            return CPU_BATCH_SIZE
        key = (loaded.name, segment_frames)
        if key not in self._batch_sizes:
            self._batch_sizes[key] = self._measure_batch_size(loaded, segment_frames)
        return self._batch_sizes[key]

    def auto_group_size(self) -> int:
        """How many queued jobs to separate together when STEMFLEET_GROUP_JOBS is 0: one where
        a forward pass holds one segment (CPU), else as many as a pass holds, up to
        MAX_AUTO_GROUP, so short clips fill large accelerator batches."""
        segment = int(float(self.loaded.members[0].segment) * self.loaded.samplerate)
        return max(1, min(MAX_AUTO_GROUP, self.batch_size_for(self.loaded, segment)))

    def _measure_batch_size(self, loaded: LoadedModel, segment_frames: int) -> int:
        """Run one segment, see how much memory it took, fill 70% of what is free."""
        member = loaded.members[0]
        probe = torch.zeros(1, loaded.audio_channels, segment_frames, device=self.device)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.precision)
        autocast: contextlib.AbstractContextManager[Any] = (
            torch.autocast("cuda", dtype=dtype) if dtype else contextlib.nullcontext()
        )
        with torch.inference_mode(), autocast:
            member(probe)
        per_item = max(1, torch.cuda.max_memory_allocated() - before)
        free, _ = torch.cuda.mem_get_info()
        size = int(max(1, min(MAX_AUTO_BATCH, 0.7 * free // per_item)))
        get_logger().info(
            "batch_size_chosen", model=loaded.name, batch_size=size, per_item=per_item
        )
        return size

    # --- separation ------------------------------------------------------------------------
    def separate(
        self,
        wav: torch.Tensor,
        params: JobParams,
        *,
        progress: ProgressFn | None = None,
        should_stop: StopFn | None = None,
    ) -> dict[str, torch.Tensor]:
        """Separate a float32 [C, T] mix at the model's rate into {source: [C, T]}."""
        loaded = self.model_for(params.model)
        if wav.dim() != 2 or wav.shape[0] != loaded.audio_channels:
            raise ValueError(
                f"expected a [{loaded.audio_channels}, T] mix, got shape {tuple(wav.shape)}"
            )
        mean, std = normalisation(wav)
        out = torch.empty(len(loaded.sources), wav.shape[0], wav.shape[-1])
        position = 0

        def collect(block: torch.Tensor) -> None:
            nonlocal position
            out[..., position : position + block.shape[-1]] = block
            position += block.shape[-1]

        self.run(
            loaded,
            Stream(
                wav.shape[-1], tensor_reader(wav), mean, std, params, collect, progress, should_stop
            ),
        )
        return dict(zip(loaded.sources, out, strict=True))

    def run(self, loaded: LoadedModel, stream: Stream) -> float:
        """Stream one separation: the mix comes from `stream.read_mix`, the finished output goes
        to `stream.sink` in order ([S, C, n] blocks adding up to `stream.length`). Returns the
        seconds spent in forward passes; raises what stopped it (JobCancelled, ...)."""
        (result,) = self.run_together(loaded, [stream])
        if result.error is not None:
            raise result.error
        return result.forward_s

    def run_together(self, loaded: LoadedModel, streams: list[Stream]) -> list[StreamResult]:
        """Several separations with the same model, sharing forward passes where their
        segments line up (see `_run_shared`). Each stream ends on its own: its result holds
        the error that stopped it, if any, and the others go on. Params the model cannot honour
        and a failing forward pass raise for all."""
        for stream in streams:
            self.check_params(loaded, stream.params)
        longest = max(s.params.segment or float(loaded.members[0].segment) for s in streams)
        model = _ModelRunner(
            loaded.members,
            self.device,
            self.precision,
            self.batch_size_for(loaded, int(longest * loaded.samplerate)),
        )
        engines = [_Engine(loaded, stream, self.device) for stream in streams]
        with loaded.lock:
            _run_shared(engines, model)
        return [engine.result for engine in engines]
