"""One input's separation, segment by segment, with the arithmetic of Demucs' own `apply_model`.

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

The forward passes themselves (several inputs sharing them, autocast, batch halving on
out-of-memory) are run by `worker.passes`; the `Separator` facade (`worker.separation`) chooses
the model and the batch size.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from demucs.apply import BagOfModels
from demucs.htdemucs import HTDemucs

from app.errors import StemfleetError
from app.params import JobParams
from worker.models import LoadedModel

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
class Segment:
    lane: _Lane
    offset: int  # lane frame
    length: int  # frames of output kept (chunk length)
    valid: int  # frames fed to the model (padded around the chunk as apply_model does)


class Engine:
    """One input's separation plan and state: hands out its segments in order, takes their
    model outputs back, and emits finished output. The forward passes are run by `run_shared`,
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

    def _next_segment(self, lane: _Lane) -> Segment:
        chunk = min(lane.length - lane.next_offset, lane.segment)
        valid = self._valid_length(self.members[lane.member], chunk)
        return Segment(lane, lane.next_offset, chunk, valid)

    @property
    def done(self) -> bool:
        return all(lane.done for lanes in self.lanes for lane in lanes)

    def take(
        self, limit: int, *, member: int | None = None, valid: int | None = None
    ) -> list[Segment]:
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
        batch: list[Segment] = []
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

    def window(self, segment: Segment) -> torch.Tensor:
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

    def absorb(self, batch: list[Segment], outputs: torch.Tensor) -> None:
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

    def _accumulate(self, segment: Segment, weighted: torch.Tensor, blend: torch.Tensor) -> None:
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
