"""Encoding stems: wav, flac, mp3 and opus, streamed block by block.

All encoders stream, so an hour of audio never sits in memory as one array:
- wav: int16 / int24 / float32 (soundfile)
- flac: int16 / int24 (soundfile)
- mp3: constant bitrate through libsndfile's LAME, which writes the gapless tag, so decoders
  give back exactly the encoded number of frames
- opus: Ogg Opus through libsndfile. Opus only runs at 48 kHz: stems are resampled to 48 kHz
  (`worker.audio.StreamResampler`, the same kernel as decoding) before encoding, so an opus stem
  has round(T * 48000 / samplerate) frames.
Values are written as the model produced them for float32 wav; every other format stores or
plays integers, so samples are clamped to [-1, 1] there (never rescaled).
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import Any

import soundfile as sf
import torch

from app.params import JobParams
from worker.audio import BLOCK_FRAMES, StreamResampler

OPUS_SAMPLERATE = 48000

_SUBTYPES = {"int16": "PCM_16", "int24": "PCM_24", "float32": "FLOAT"}


def _opus_level(bitrate_kbps: int, channels: int) -> float:
    # libsndfile maps compression level 0..1 linearly to 256..6 kbit/s per channel.
    per_channel = bitrate_kbps * 1000 / channels
    return min(1.0, max(0.0, (256000 - per_channel) / 250000))


def _mp3_level(bitrate_kbps: int) -> float:
    # libsndfile maps compression level 0..1 linearly to 320..32 kbit/s (constant bitrate);
    # LAME then picks the nearest MPEG bitrate. Level 1.0 is refused, 0.999 gives 32 kbit/s.
    return min(0.999, max(0.0, (320 - bitrate_kbps) / (320 - 32)))


class StemWriter:
    """Streams one stem to `path` in the format of `params`; write [C, n] float blocks."""

    def __init__(self, path: Path, samplerate: int, channels: int, params: JobParams) -> None:
        self.path = path
        self.format = params.format
        self.clamp = not (params.format == "wav" and params.sample_format == "float32")
        self.resampler: StreamResampler | None = None
        kwargs: dict[str, Any] = {"samplerate": samplerate, "channels": channels}
        bitrate = params.effective_bitrate
        if params.format in ("wav", "flac"):
            kwargs.update(format=params.format.upper(), subtype=_SUBTYPES[params.sample_format])
        elif params.format == "mp3":
            assert bitrate is not None
            kwargs.update(
                format="MP3",
                subtype="MPEG_LAYER_III",
                compression_level=_mp3_level(bitrate),
                bitrate_mode="CONSTANT",
            )
        else:
            assert bitrate is not None
            if samplerate != OPUS_SAMPLERATE:
                self.resampler = StreamResampler(samplerate, OPUS_SAMPLERATE)
            kwargs.update(
                samplerate=OPUS_SAMPLERATE,
                format="OGG",
                subtype="OPUS",
                compression_level=_opus_level(bitrate, channels),
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = sf.SoundFile(str(path), "w", **kwargs)

    def write(self, block: torch.Tensor) -> None:
        if self.resampler is not None:
            block = self.resampler.push(block.detach().float().cpu())
        self._write(block)

    def _write(self, block: torch.Tensor) -> None:
        if block.numel() == 0:
            return
        data = block.detach().float().cpu()
        if self.clamp:
            data = data.clamp(-1.0, 1.0)
        self._file.write(data.t().contiguous().numpy())

    def close(self) -> None:
        if self._file.closed:
            return
        if self.resampler is not None:
            self._write(self.resampler.finish())
        self._file.close()

    def abort(self) -> None:
        """Close and delete a half-written file."""
        if not self._file.closed:
            self._file.close()
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> StemWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def encode(wav: torch.Tensor, samplerate: int, path: Path, params: JobParams) -> None:
    """Write the float [C, T] `wav` to `path` in `params.format` (see the module docstring:
    opus is resampled to 48 kHz; integer formats, mp3 and opus are clamped to [-1, 1])."""
    if wav.dim() != 2:
        raise ValueError(f"encode expects a [channels, time] tensor, got shape {tuple(wav.shape)}")
    with StemWriter(path, samplerate, wav.shape[0], params) as writer:
        for offset in range(0, wav.shape[-1], BLOCK_FRAMES):
            writer.write(wav[:, offset : offset + BLOCK_FRAMES])
