"""Audio in: decode (whole or streamed in blocks); encoding stems is `worker.encode`.

What a file is comes from `app.audio_probe` (its bytes, never its name), the one list of formats
the API, this worker, `stemfleet process` and the docs share; each format names its decoders:
1. soundfile (libsndfile 1.2): wav, flac, ogg vorbis / opus, mp3, aiff. Sample exact: it trims
   mp3 encoder delay and padding (LAME gapless tag) and the opus pre-skip, so stems line up with
   the original to the sample.
2. PyAV (FFmpeg's libraries bundled in its wheel): m4a/mp4 and ADTS aac, and any file of the
   formats above that libsndfile refuses, with no ffmpeg binary on the machine.

Everything is converted to the model's channels and sample rate the way Demucs does it
(`demucs.audio.convert_audio`: channel rule, then `julius.resample_frac`). The streamed variant
resamples block by block with the same kernel and gives the same samples as a whole-file pass.

Encoders: see `worker.encode` (it resamples opus stems with `StreamResampler` below).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TypedDict, Unpack

import julius
import numpy as np
import soundfile as sf
import torch
from demucs.audio import convert_audio_channels

from app.audio_probe import (
    ACCEPTED,
    EmptyAudio,
    UndecodableAudio,
    UnsupportedAudio,
    error_reason,
    probe,
)
from app.errors import PermanentJobError

# Shortest input separated: below it a mix holds too little to separate (one sample gives a
# standard deviation of NaN, and the model NaNs), and nobody means to send it.
MIN_SECONDS = 0.1
BLOCK_FRAMES = 1 << 18  # frames read or written per step when streaming
DECODED_SLACK_S = 0.5  # decoded audio may run past a header's length by codec padding


class _Source:
    """An opened input file: native sample rate and channels, blocks of float32 [C, n]."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.samplerate = 0
        self.channels = 0
        self.frames = 0
        self.backend = ""
        try:
            found = probe(path)
        except UnsupportedAudio:
            raise _undecodable(path, "it is not audio in a format we accept") from None
        except EmptyAudio:
            raise PermanentJobError(
                f"{path.name!r} contains no audio (0 samples)", kind="empty"
            ) from None
        except UndecodableAudio as exc:
            raise _undecodable(path, str(exc)) from None
        openers = {"soundfile": self._open_soundfile, "av": self._open_av}
        errors: list[str] = []
        for decoder in found.decoders:
            try:
                openers[decoder]()
                self.backend = decoder
                return
            except Exception as exc:  # every decoder reports bad input its own way
                errors.append(f"{decoder}: {error_reason(exc)}")
        raise _undecodable(path, f"the {found.format.label} data is corrupt ({'; '.join(errors)})")

    def _open_soundfile(self) -> None:
        with sf.SoundFile(str(self.path)) as handle:
            self.samplerate, self.channels, self.frames = (
                handle.samplerate,
                handle.channels,
                handle.frames,
            )
            if self.frames > 0:  # the first block must decode too, or the file is corrupt
                handle.read(min(self.frames, 4096), dtype="float32")

    def _open_av(self) -> None:
        import av

        with av.open(str(self.path)) as container:
            if not container.streams.audio:
                raise ValueError("no audio stream")
            stream = container.streams.audio[0]
            if stream.duration is not None and stream.time_base is not None:
                seconds = float(stream.duration * stream.time_base)
            elif container.duration is not None:
                seconds = container.duration / av.time_base
            else:
                raise ValueError("the container does not say how long it is")
            next(iter(container.decode(stream)))  # the first frame must decode too
            self.samplerate = int(stream.codec_context.sample_rate)
            self.channels = int(stream.codec_context.channels)
        self.frames = round(seconds * self.samplerate)

    @property
    def duration(self) -> float:
        return self.frames / self.samplerate if self.samplerate else 0.0

    def blocks(
        self, start: int = 0, frames: int | None = None, block: int = BLOCK_FRAMES
    ) -> Iterator[np.ndarray]:
        """Yield float32 [C, n] blocks from frame `start`, `frames` at most (None: to the end).
        Raises PermanentJobError "not_finite" at the first NaN or infinite sample."""
        position = start
        try:
            for data in self._raw_blocks(start, frames, block):
                _check_finite(self.path.name, data, position, self.samplerate)
                position += data.shape[-1]
                yield data
        except PermanentJobError:
            raise
        except Exception as exc:
            raise _undecodable(
                self.path, f"the file is corrupt or truncated ({error_reason(exc)})"
            ) from None

    def _raw_blocks(self, start: int, frames: int | None, block: int) -> Iterator[np.ndarray]:
        if self.backend == "soundfile":
            yield from self._soundfile_blocks(start, frames, block)
        else:
            yield from self._av_blocks(start, frames, block)

    def _soundfile_blocks(self, start: int, frames: int | None, block: int) -> Iterator[np.ndarray]:
        left = frames if frames is not None else -1
        with sf.SoundFile(str(self.path)) as handle:
            if start:
                handle.seek(start)
            while left != 0:
                count = block if left < 0 else min(block, left)
                data = handle.read(count, dtype="float32", always_2d=True)
                if len(data) == 0:
                    return
                if left > 0:
                    left -= len(data)
                yield np.ascontiguousarray(data.T)

    def _av_blocks(self, start: int, frames: int | None, block: int) -> Iterator[np.ndarray]:
        import av

        skip, left = start, frames if frames is not None else -1
        pending: list[np.ndarray] = []
        held = 0
        with av.open(str(self.path)) as container:
            stream = container.streams.audio[0]
            to_float = av.AudioResampler(format="fltp", rate=self.samplerate)
            for packet_frame in container.decode(stream):
                for frame in to_float.resample(packet_frame):
                    data = frame.to_ndarray().astype(np.float32, copy=False)
                    if skip:
                        cut = min(skip, data.shape[1])
                        data, skip = data[:, cut:], skip - cut
                    if left >= 0:
                        data = data[:, :left]
                        left -= data.shape[1]
                    pending.append(data)
                    held += data.shape[1]
                    if held >= block:
                        merged = np.concatenate(pending, axis=1)
                        whole = (held // block) * block
                        for offset in range(0, whole, block):
                            yield np.ascontiguousarray(merged[:, offset : offset + block])
                        pending, held = [merged[:, whole:]], held - whole
                if left == 0:
                    break
        if held:
            yield np.ascontiguousarray(np.concatenate(pending, axis=1))


def _undecodable(path: Path, reason: str) -> PermanentJobError:
    return PermanentJobError(
        f"could not decode {path.name!r}: {reason}. Accepted formats: {ACCEPTED}.",
        kind="undecodable",
    )


class StreamResampler:
    """`julius.resample_frac` applied block by block with the same result as one whole pass.

    julius pads the signal by replicating its edges, then convolves with a stride of `old`
    (after dividing both rates by their gcd): output frame j reads input [j*old - W, j*old +
    old + W). We keep the padded stream and emit every frame whose window is complete.
    """

    def __init__(self, old_sr: int, new_sr: int) -> None:
        self.identity = old_sr == new_sr
        self.resample = julius.ResampleFrac(old_sr, new_sr)
        self.old, self.new = self.resample.old_sr, self.resample.new_sr
        self.width = 0 if self.identity else int(self.resample._width)
        self.buffer: torch.Tensor | None = None  # padded stream not consumed yet
        self.seen = 0  # input frames pushed
        self.emitted = 0  # output frames returned

    def push(self, x: torch.Tensor) -> torch.Tensor:
        if self.identity:
            return x
        if x.shape[-1] == 0:
            return x[..., :0]
        if self.buffer is None:
            self.buffer = torch.cat([x[..., :1].expand(*x.shape[:-1], self.width), x], dim=-1)
        else:
            self.buffer = torch.cat([self.buffer, x], dim=-1)
        self.seen += x.shape[-1]
        out = self._frames()
        self.emitted += out.shape[-1]
        return out

    def finish(self) -> torch.Tensor:
        """The last frames, once the input has ended (replicate padding on the right)."""
        if self.identity or self.buffer is None:
            return torch.zeros(0)
        last = self.buffer[..., -1:]
        self.buffer = torch.cat(
            [self.buffer, last.expand(*last.shape[:-1], self.width + self.old)], dim=-1
        )
        total = int(self.new * self.seen / self.old)  # julius' default (floored) length
        out = self._frames()[..., : max(0, total - self.emitted)]
        self.emitted += out.shape[-1]
        return out

    def _frames(self) -> torch.Tensor:
        assert self.buffer is not None
        kernel = 2 * self.width + self.old
        count = (self.buffer.shape[-1] - kernel) // self.old + 1
        if count <= 0:
            return self.buffer[..., :0]
        used = (count - 1) * self.old + kernel
        shape = self.buffer.shape[:-1]
        flat = self.buffer[..., :used].reshape(-1, 1, used)
        kernel_weights: torch.Tensor = self.resample.kernel  # type: ignore[assignment]
        ys = torch.nn.functional.conv1d(flat, kernel_weights, stride=self.old)
        self.buffer = self.buffer[..., count * self.old :]
        return ys.transpose(1, 2).reshape(*shape, -1)


def _open(path: Path) -> _Source:
    if not path.is_file():
        raise PermanentJobError(f"input file {path.name!r} does not exist", kind="undecodable")
    if path.stat().st_size == 0:
        raise PermanentJobError(
            f"{path.name!r} is empty (0 bytes): upload the audio file again", kind="empty"
        )
    return _Source(path)


def _format_seconds(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _check_finite(name: str, block: np.ndarray, position: int, samplerate: int) -> None:
    """A [C, n] block starting at frame `position` must hold numbers only."""
    finite = np.isfinite(block).all(axis=0)
    if finite.all():
        return
    first = position + int(np.flatnonzero(~finite)[0])
    raise PermanentJobError(
        f"{name!r} contains samples that are not numbers (NaN or infinite values), the first "
        f"at {first / samplerate if samplerate else 0:.3f} s: the file is damaged. "
        "Export it again from your audio editor (e.g. as 16- or 24-bit PCM) and resubmit it.",
        kind="not_finite",
    )


def check_duration(name: str, seconds: float, max_seconds: float | None) -> None:
    """Raise PermanentJobError "empty", "too_short" or "too_long" for `seconds` of audio."""
    if seconds <= 0:
        raise PermanentJobError(f"{name!r} contains no audio (0 samples)", kind="empty")
    if seconds < MIN_SECONDS:
        raise PermanentJobError(
            f"{name!r} is too short to separate: {seconds * 1000:.2f} ms of audio; send at "
            f"least {MIN_SECONDS:g} s",
            kind="too_short",
        )
    if max_seconds is not None and max_seconds > 0 and seconds > max_seconds:
        raise PermanentJobError(
            f"{name!r} is {_format_seconds(seconds)} long ({seconds:.1f} s); the limit is "
            f"{_format_seconds(max_seconds)} ({max_seconds:.0f} s). Send a shorter file or a "
            "preview, or raise STEMFLEET_MAX_DURATION on the workers.",
            kind="too_long",
        )


def probe_duration(path: Path) -> float:
    """Duration in seconds, from the container's header (no full decode)."""
    return _open(path).duration


def _span(
    name: str, source: _Source, start: float, duration: float | None, max_seconds: float | None
) -> tuple[int, int | None]:
    """(first frame, frames to read: None reads to the end of the stream, which may hold more
    than a header that estimates its length says), once the span's length by the header is
    within `max_seconds` (check_duration)."""
    first = min(source.frames, max(0, round(start * source.samplerate)))
    frames = source.frames - first
    read = None if duration is None else min(frames, round(duration * source.samplerate))
    span_frames = frames if read is None else read
    check_duration(name, span_frames / source.samplerate if source.samplerate else 0, max_seconds)
    return first, read


def _limited(
    source: _Source, blocks: Iterator[np.ndarray], max_seconds: float | None
) -> Iterator[np.ndarray]:
    """`blocks`, stopped with "too_long" once the samples decoded pass `max_seconds` (and a
    frame's slack): the header's duration was checked first, but it is an estimate for some
    files (MP3 without a Xing header, ADTS AAC), and the limit holds for what is decoded."""
    limit = None
    if max_seconds is not None and max_seconds > 0 and source.samplerate:
        limit = (max_seconds + DECODED_SLACK_S) * source.samplerate
    decoded = 0
    for block in blocks:
        decoded += block.shape[-1]
        if limit is not None and max_seconds is not None and decoded > limit:
            raise PermanentJobError(
                f"{source.path.name!r} is longer than its header says: over "
                f"{decoded / source.samplerate:.1f} s decoded so far; the limit is "
                f"{_format_seconds(max_seconds)} ({max_seconds:.0f} s). Send a shorter file or a "
                "preview, or raise STEMFLEET_MAX_DURATION on the workers.",
                kind="too_long",
            )
        yield block


class Span(TypedDict, total=False):
    """The part of a file to decode: from `start` seconds (default 0), `duration` long (default:
    to the end). `max_seconds` limits that part's length (default: no limit), so a preview of a
    long file is allowed."""

    max_seconds: float | None
    start: float
    duration: float | None


def _span_blocks(
    path: Path, span: Span, block_frames: int = BLOCK_FRAMES
) -> tuple[_Source, Iterator[np.ndarray]]:
    """`path` opened, and the blocks of its `span` as it reads them (see _span, _limited)."""
    source = _open(path)
    max_seconds = span.get("max_seconds")
    start, duration = span.get("start", 0.0), span.get("duration")
    first, read = _span(path.name, source, start, duration, max_seconds)
    return source, _limited(source, source.blocks(first, read, block_frames), max_seconds)


def iter_decode(
    path: Path,
    *,
    samplerate: int,
    channels: int,
    block_frames: int = BLOCK_FRAMES,
    **span: Unpack[Span],
) -> Iterator[torch.Tensor]:
    """Stream `span` of `path` as float32 [channels, n] blocks at `samplerate`; the blocks put
    together equal `decode(...)` with the same arguments."""
    source, blocks = _span_blocks(path, span, block_frames)
    resampler = StreamResampler(source.samplerate, samplerate)
    produced = 0
    for block in blocks:
        wav = convert_audio_channels(torch.from_numpy(block), channels)
        out = resampler.push(wav)
        produced += out.shape[-1]
        if out.shape[-1]:
            yield out.contiguous()
    tail = resampler.finish()
    produced += tail.shape[-1]
    if tail.numel():
        yield tail.contiguous()
    if produced == 0:
        raise PermanentJobError(f"{path.name!r} contains no audio (0 samples)", kind="empty")


def decode(path: Path, *, samplerate: int, channels: int, **span: Unpack[Span]) -> torch.Tensor:
    """Decode `span` of `path` to a float32 [channels, T] tensor at `samplerate`.

    Raises PermanentJobError: "undecodable" (not audio, corrupt), "empty" (no samples),
    "too_long" (the decoded span is over `max_seconds`).
    """
    source, read = _span_blocks(path, span)
    blocks = [torch.from_numpy(b) for b in read]
    if not blocks or sum(b.shape[-1] for b in blocks) == 0:
        raise PermanentJobError(f"{path.name!r} contains no audio (0 samples)", kind="empty")
    wav = torch.cat(blocks, dim=-1) if len(blocks) > 1 else blocks[0]
    wav = convert_audio_channels(wav, channels)
    if source.samplerate != samplerate:
        wav = julius.resample_frac(wav, source.samplerate, samplerate)
    return wav.contiguous()
