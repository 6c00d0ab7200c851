"""Audio in: probe and decode (whole or streamed in blocks); encoding stems is `worker.encode`.

Decoders, in order:
1. soundfile (libsndfile 1.2): wav, flac, ogg vorbis / opus, mp3, aiff. Sample exact: it trims
   mp3 encoder delay and padding (LAME gapless tag) and the opus pre-skip, so stems line up with
   the original to the sample.
2. sphn, Demucs 4.1's own decoder: everything symphonia reads.
3. PyAV (FFmpeg's libraries bundled in its wheel): m4a/aac (symphonia rejects many real m4a
   files) and other containers, with no ffmpeg binary on the machine.
4. the ffmpeg command, only if it is installed (the core never needs it).

Everything is converted to the model's channels and sample rate the way Demucs does it
(`demucs.audio.convert_audio`: channel rule, then `julius.resample_frac`). The streamed variant
resamples block by block with the same kernel and gives the same samples as a whole-file pass.

Encoders: see `worker.encode` (it resamples opus stems with `StreamResampler` below).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import julius
import numpy as np
import soundfile as sf
import sphn
import torch
from demucs.audio import convert_audio_channels

from app.errors import PermanentJobError

ACCEPTED_FORMATS = (
    "wav, flac, mp3, ogg (vorbis or opus), aiff, m4a/aac (and any format ffmpeg reads when it "
    "is installed on the worker)"
)
# Shortest input separated: below it a mix holds too little to separate (one sample gives a
# standard deviation of NaN, and the model NaNs), and nobody means to send it.
MIN_SECONDS = 0.1
BLOCK_FRAMES = 1 << 18  # frames read or written per step when streaming


class _Source:
    """An opened input file: native sample rate and channels, blocks of float32 [C, n]."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.samplerate = 0
        self.channels = 0
        self.frames = 0
        self.backend = ""
        errors: list[str] = []
        for backend in (self._open_soundfile, self._open_sphn, self._open_av, self._open_ffmpeg):
            try:
                if backend():
                    return
            except Exception as exc:  # every decoder reports bad input its own way
                errors.append(f"{backend.__name__.removeprefix('_open_')}: {exc}")
        raise PermanentJobError(
            f"could not decode {path.name!r}: it is not audio we can read, or it is corrupt "
            f"({'; '.join(errors) or 'no decoder accepted it'}). Accepted formats: "
            f"{ACCEPTED_FORMATS}.",
            kind="undecodable",
        )

    def _open_soundfile(self) -> bool:
        with sf.SoundFile(str(self.path)) as handle:
            self.samplerate, self.channels, self.frames = (
                handle.samplerate,
                handle.channels,
                handle.frames,
            )
            if self.frames > 0:  # the first block must decode too, or the file is corrupt
                handle.read(min(self.frames, 4096), dtype="float32")
        self.backend = "soundfile"
        return True

    def _open_sphn(self) -> bool:
        duration = sphn.durations([str(self.path)])[0]
        if duration is None:
            raise ValueError("unreadable")
        reader = sphn.FileReader(str(self.path))
        self.samplerate, self.channels = int(reader.sample_rate), int(reader.channels)
        self.frames = round(float(duration) * self.samplerate)
        self.backend = "sphn"
        return True

    def _open_av(self) -> bool:
        """PyAV (FFmpeg's libraries, bundled in its wheel): m4a/aac and other containers the two
        above do not read, without an ffmpeg binary on the machine."""
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
        self.backend = "av"
        return True

    def _open_ffmpeg(self) -> bool:
        if shutil.which("ffprobe") is None or shutil.which("ffmpeg") is None:
            return False
        from demucs.audio import AudioFile

        audio = AudioFile(self.path)
        self.samplerate, self.channels = audio.samplerate(), audio.channels()
        self.frames = round(audio.duration * self.samplerate)
        self.backend = "ffmpeg"
        return True

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
            raise PermanentJobError(
                f"could not decode {self.path.name!r}: the file is corrupt or truncated "
                f"({exc}). Accepted formats: {ACCEPTED_FORMATS}.",
                kind="undecodable",
            ) from None

    def _raw_blocks(self, start: int, frames: int | None, block: int) -> Iterator[np.ndarray]:
        if self.backend == "soundfile":
            yield from self._soundfile_blocks(start, frames, block)
        elif self.backend == "av":
            yield from self._av_blocks(start, frames, block)
        else:
            yield self._whole(start, frames)

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

    def _whole(self, start: int, frames: int | None) -> np.ndarray:
        if self.backend == "sphn":
            start_sec = start / self.samplerate
            duration_sec = None if frames is None else frames / self.samplerate
            data, _ = sphn.read(str(self.path), start_sec=start_sec, duration_sec=duration_sec)
            data = np.asarray(data, dtype=np.float32)
        else:
            from demucs.audio import AudioFile

            seek = start / self.samplerate if start else None
            duration = None if frames is None else frames / self.samplerate
            data = AudioFile(self.path).read(seek_time=seek, duration=duration, streams=0).numpy()
        if data.ndim == 1:
            data = data[None]
        return data if frames is None else data[:, :frames]


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
    source = _open(path)
    return source.duration


def _span(source: _Source, start: float, duration: float | None) -> tuple[int, int]:
    first = min(source.frames, max(0, round(start * source.samplerate)))
    frames = source.frames - first
    if duration is not None:
        frames = min(frames, round(duration * source.samplerate))
    return first, frames


def iter_decode(
    path: Path,
    *,
    samplerate: int,
    channels: int,
    max_seconds: float | None = None,
    start: float = 0.0,
    duration: float | None = None,
    block_frames: int = BLOCK_FRAMES,
) -> Iterator[torch.Tensor]:
    """Stream `path` as float32 [channels, n] blocks at `samplerate`.

    The concatenated blocks equal `decode(...)` with the same arguments. `max_seconds` applies to
    the span decoded (from `start`, `duration` long), so a preview of a long file is allowed.
    """
    source = _open(path)
    first, frames = _span(source, start, duration)
    check_duration(path.name, frames / source.samplerate if source.samplerate else 0, max_seconds)
    resampler = StreamResampler(source.samplerate, samplerate)
    produced = 0
    for block in source.blocks(first, frames, block_frames):
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


def decode(
    path: Path,
    *,
    samplerate: int,
    channels: int,
    max_seconds: float | None = None,
    start: float = 0.0,
    duration: float | None = None,
) -> torch.Tensor:
    """Decode `path` to a float32 [channels, T] tensor at `samplerate`.

    Raises PermanentJobError: "undecodable" (not audio, corrupt), "empty" (no samples),
    "too_long" (the decoded span is over `max_seconds`).
    """
    source = _open(path)
    first, frames = _span(source, start, duration)
    check_duration(path.name, frames / source.samplerate if source.samplerate else 0, max_seconds)
    blocks = [torch.from_numpy(b) for b in source.blocks(first, frames)]
    if not blocks or sum(b.shape[-1] for b in blocks) == 0:
        raise PermanentJobError(f"{path.name!r} contains no audio (0 samples)", kind="empty")
    wav = torch.cat(blocks, dim=-1) if len(blocks) > 1 else blocks[0]
    wav = convert_audio_channels(wav, channels)
    if source.samplerate != samplerate:
        wav = julius.resample_frac(wav, source.samplerate, samplerate)
    return wav.contiguous()
