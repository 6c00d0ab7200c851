"""One input file to stem files: decode -> separate -> encode.

Inputs up to IN_MEMORY_SECONDS are decoded into memory and separated with
`Separator.separate`. Longer ones stream, so host memory stays bounded whatever the length:
the decoded mix goes block by block to a float32 file next to the outputs (the normalisation
statistics are summed on the way), the separator reads its segments' windows from that file,
and each finished output block goes straight to the stem encoders. Both paths run the same
separation engine, so the stems are identical either way.

`separate_files` separates several inputs together (the worker's cross-track batching): each is
decoded to its own file as above and streams to its own encoders, and the separator shares its
forward passes between them. One input failing (undecodable, too long, cancelled) ends only that
input; the others go on.

Stem files are written as `.{stem}.{ext}.part` and renamed when complete, so a job that runs
twice (after a lost lease) never leaves a half-written stem under the final name.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, TypedDict, Unpack

import numpy as np
import torch

from app.params import JobParams
from worker.audio import BLOCK_FRAMES, check_duration, decode, iter_decode, probe_duration
from worker.encode import OPUS_SAMPLERATE, StemWriter
from worker.engine import JobCancelled, MixReader, ProgressFn, StopFn, Stream
from worker.models import LoadedModel
from worker.separation import Separator

IN_MEMORY_SECONDS = 600.0


@dataclass
class SeparationResult:
    stems: dict[str, Path]  # output name -> file, e.g. {"vocals": .../vocals.wav}
    duration_s: float  # seconds of audio separated (the preview length for previews)
    samplerate: int  # of the stem files (48000 for opus)
    channels: int
    timings: dict[str, float] = field(default_factory=dict)  # seconds: decode, separate, encode


def output_plan(sources: list[str], params: JobParams) -> list[tuple[str, list[int]]]:
    """Each output stem with the model sources summed into it, in output order."""
    if params.two_stems is not None:
        index = sources.index(params.two_stems)
        others = [i for i in range(len(sources)) if i != index]
        return [(params.two_stems, [index]), (f"no_{params.two_stems}", others)]
    names = params.stems or sources
    return [(name, [sources.index(name)]) for name in names]


def _mix_sources(block: torch.Tensor, indices: list[int]) -> torch.Tensor:
    """Sum of the sources `indices` of a [S, C, n] block (Demucs' `--two-stems` rule)."""
    if len(indices) == 1:
        return block[indices[0]]
    total = torch.zeros_like(block[0])
    for index in indices:
        total += block[index]
    return total


class _Outputs:
    """Streaming writers for every output stem, renamed into place on success."""

    def __init__(
        self,
        stack: ExitStack,
        out_dir: Path,
        plan: list[tuple[str, list[int]]],
        samplerate: int,
        channels: int,
        params: JobParams,
    ) -> None:
        self.plan = plan
        self.final = {name: out_dir / f"{name}.{params.extension}" for name, _ in plan}
        self.writers = {
            name: stack.enter_context(
                StemWriter(
                    out_dir / f".{name}.{params.extension}.part", samplerate, channels, params
                )
            )
            for name, _ in plan
        }
        self.seconds = 0.0

    def write(self, block: torch.Tensor) -> None:
        started = time.perf_counter()
        for name, indices in self.plan:
            self.writers[name].write(_mix_sources(block, indices))
        self.seconds += time.perf_counter() - started

    def commit(self) -> dict[str, Path]:
        started = time.perf_counter()
        for name, writer in self.writers.items():
            writer.close()
            os.replace(writer.path, self.final[name])
        self.seconds += time.perf_counter() - started
        return dict(self.final)


def _file_reader(handle: BinaryIO, channels: int, length: int) -> MixReader:
    """A MixReader over an interleaved float32 [T, C] file (plain reads: no memory map, so
    the pages stay in the page cache and out of the process' resident memory)."""

    def read(start: int, count: int) -> torch.Tensor:
        out = torch.zeros(channels, count)
        lo, hi = max(0, start), min(length, start + count)
        if lo < hi:
            handle.seek(lo * channels * 4)
            data = np.fromfile(handle, dtype=np.float32, count=(hi - lo) * channels)
            out[:, lo - start : hi - start] = torch.from_numpy(data.reshape(-1, channels).T)
        return out

    return read


class FileOptions(TypedDict, total=False):
    """How `separate_file` runs a file: `preview_seconds`, only its first N seconds;
    `max_seconds`, the longest audio accepted (it applies to what is separated, so a preview of
    a long file passes); `progress` and `should_stop`, called as the model runs."""

    preview_seconds: float | None
    max_seconds: float | None
    progress: ProgressFn | None
    should_stop: StopFn | None


@dataclass
class FileJob:
    """One input to separate and its options (the arguments of `separate_file`)."""

    input_path: Path
    out_dir: Path
    params: JobParams
    preview_seconds: float | None = None
    max_seconds: float | None = None
    progress: ProgressFn | None = None
    should_stop: StopFn | None = None


def separate_file(
    separator: Separator,
    input_path: Path,
    out_dir: Path,
    params: JobParams,
    *,
    stream_over_seconds: float = IN_MEMORY_SECONDS,
    **options: Unpack[FileOptions],
) -> SeparationResult:
    """Separate `input_path` into `out_dir/{stem}.{ext}` for the stems `params` asks for, as
    `options` say (FileOptions).

    Raises PermanentJobError (undecodable / empty / too_long / invalid_params) and JobCancelled.
    Audio longer than `stream_over_seconds` streams through a temporary file in `out_dir` (see
    the module doc).
    """
    job = FileJob(input_path, out_dir, params, **options)
    loaded = separator.model_for(params.model)
    seconds = _check(separator, loaded, job)
    plan = output_plan(loaded.sources, params)
    run = _separate_in_memory if seconds <= stream_over_seconds else _separate_streamed
    stems, frames, timings = run(separator, loaded, job, plan)
    return SeparationResult(
        stems=stems,
        duration_s=frames / loaded.samplerate,
        samplerate=OPUS_SAMPLERATE if params.format == "opus" else loaded.samplerate,
        channels=loaded.audio_channels,
        timings=timings,
    )


_Run = tuple[dict[str, Path], int, dict[str, float]]


def _check(separator: Separator, loaded: LoadedModel, job: FileJob) -> float:
    """Everything that can fail before any work (params, a readable input, its duration), then
    the output folder. Returns the seconds of audio to separate."""
    separator.check_params(loaded, job.params)
    seconds = probe_duration(job.input_path)
    if job.preview_seconds is not None:
        seconds = min(seconds, job.preview_seconds)
    check_duration(job.input_path.name, seconds, job.max_seconds)
    job.out_dir.mkdir(parents=True, exist_ok=True)
    return seconds


def _separate_in_memory(
    separator: Separator, loaded: LoadedModel, job: FileJob, plan: list[tuple[str, list[int]]]
) -> _Run:
    started = time.perf_counter()
    wav = decode(
        job.input_path,
        samplerate=loaded.samplerate,
        channels=loaded.audio_channels,
        max_seconds=job.max_seconds,
        duration=job.preview_seconds,
    )
    decoded = time.perf_counter()
    stems = separator.separate(wav, job.params, progress=job.progress, should_stop=job.should_stop)
    separated = time.perf_counter()
    with ExitStack() as stack:
        outputs = _Outputs(
            stack, job.out_dir, plan, loaded.samplerate, loaded.audio_channels, job.params
        )
        for start in range(0, wav.shape[-1], BLOCK_FRAMES):
            end = start + BLOCK_FRAMES
            outputs.write(torch.stack([stems[name][..., start:end] for name in loaded.sources]))
        files = outputs.commit()
    timings = {
        "decode": decoded - started,
        "separate": separated - decoded,
        "encode": time.perf_counter() - separated,
    }
    return files, wav.shape[-1], timings


@dataclass
class _DecodedMix:
    """An input decoded to an interleaved float32 file, with its normalisation statistics."""

    path: Path
    frames: int
    mean: torch.Tensor
    std: torch.Tensor
    seconds: float  # spent decoding


def _decode_to_file(loaded: LoadedModel, job: FileJob, mix_path: Path) -> _DecodedMix:
    started = time.perf_counter()
    frames, total, squares = 0, 0.0, 0.0
    should_stop = job.should_stop
    with mix_path.open("wb") as handle:
        for block in iter_decode(
            job.input_path,
            samplerate=loaded.samplerate,
            channels=loaded.audio_channels,
            max_seconds=job.max_seconds,
            duration=job.preview_seconds,
        ):
            handle.write(block.t().contiguous().numpy().tobytes())
            ref = block.double().mean(0)
            total += float(ref.sum())
            squares += float((ref * ref).sum())
            frames += block.shape[-1]
            if should_stop is not None and should_stop():
                raise JobCancelled("the job was cancelled; decoding stopped")
    mean = total / frames
    variance = max(0.0, (squares - frames * mean * mean) / max(1, frames - 1))
    return _DecodedMix(
        mix_path,
        frames,
        torch.tensor(mean, dtype=torch.float32),
        torch.tensor(math.sqrt(variance) + 1e-8, dtype=torch.float32),
        time.perf_counter() - started,
    )


def _separate_streamed(
    separator: Separator, loaded: LoadedModel, job: FileJob, plan: list[tuple[str, list[int]]]
) -> _Run:
    with tempfile.TemporaryDirectory(prefix=".stemfleet-", dir=job.out_dir) as tmp:
        mix = _decode_to_file(loaded, job, Path(tmp) / "mix.f32")
        started = time.perf_counter()
        with ExitStack() as stack:
            outputs = _Outputs(
                stack, job.out_dir, plan, loaded.samplerate, loaded.audio_channels, job.params
            )
            separator.run(loaded, _stream(job, mix, outputs, loaded, stack))
            files = outputs.commit()
        finished = time.perf_counter()
    timings = {
        "decode": mix.seconds,
        "separate": finished - started - outputs.seconds,
        "encode": outputs.seconds,
    }
    return files, mix.frames, timings


@dataclass
class _Member:
    job: FileJob
    stack: ExitStack
    mix: _DecodedMix
    outputs: _Outputs


def separate_files(separator: Separator, jobs: list[FileJob]) -> list[SeparationResult | Exception]:
    """Separate several inputs with one model, sharing the forward passes (see the module doc).

    Returns, in order, each input's result or the exception that ended it (the same ones
    `separate_file` raises). All inputs must ask for the same model. An error of the model
    itself (out of memory, say) raises for all: the caller decides how to go on.
    """
    models = {job.params.model for job in jobs}
    if len(models) != 1:
        raise ValueError(f"separate_files needs one model for all inputs, got {models}")
    loaded = separator.model_for(jobs[0].params.model)
    results: list[SeparationResult | Exception | None] = [None] * len(jobs)
    members: dict[int, _Member] = {}
    with ExitStack() as outer:
        for index, job in enumerate(jobs):
            stack = outer.enter_context(ExitStack())
            try:
                members[index] = _open_member(loaded, separator, job, stack)
            except Exception as exc:
                stack.close()
                results[index] = exc
        order = sorted(members)
        started = time.perf_counter()
        streams = [
            _stream(m.job, m.mix, m.outputs, loaded, m.stack) for m in (members[i] for i in order)
        ]
        ended = separator.run_together(loaded, streams) if streams else []
        wall = time.perf_counter() - started
        for index, result in zip(order, ended, strict=True):
            member = members[index]
            try:
                if result.error is not None:
                    raise result.error
                files = member.outputs.commit()
            except Exception as exc:
                results[index] = exc
                continue
            finally:
                member.stack.close()
            results[index] = SeparationResult(
                stems=files,
                duration_s=member.mix.frames / loaded.samplerate,
                samplerate=OPUS_SAMPLERATE if member.job.params.format == "opus"
                else loaded.samplerate,
                channels=loaded.audio_channels,
                timings={
                    "decode": member.mix.seconds,
                    "separate": wall - member.outputs.seconds,
                    "encode": member.outputs.seconds,
                    "shared_with": float(len(streams) - 1),
                },
            )  # fmt: skip
    assert all(r is not None for r in results)
    return [r for r in results if r is not None]


def _open_member(
    loaded: LoadedModel, separator: Separator, job: FileJob, stack: ExitStack
) -> _Member:
    """Check, decode to a file and open the encoders of one input of `separate_files`."""
    _check(separator, loaded, job)
    tmp = Path(
        stack.enter_context(tempfile.TemporaryDirectory(prefix=".stemfleet-", dir=job.out_dir))
    )
    mix = _decode_to_file(loaded, job, tmp / "mix.f32")
    plan = output_plan(loaded.sources, job.params)
    outputs = _Outputs(
        stack, job.out_dir, plan, loaded.samplerate, loaded.audio_channels, job.params
    )
    return _Member(job, stack, mix, outputs)


def _stream(
    job: FileJob, mix: _DecodedMix, outputs: _Outputs, loaded: LoadedModel, stack: ExitStack
) -> Stream:
    """The separator's view of one decoded input: windows read from its mix file (opened on
    `stack`), finished output to its encoders."""
    handle = stack.enter_context(mix.path.open("rb"))
    return Stream(
        mix.frames,
        _file_reader(handle, loaded.audio_channels, mix.frames),
        mix.mean,
        mix.std,
        job.params,
        outputs.write,
        job.progress,
        job.should_stop,
    )
