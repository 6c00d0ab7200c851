"""Test audio and test models written into a test's tmp_path (never into the repository).

- `tone(seconds, samplerate, channels)`: a deterministic float32 [C, T] mix (two tones + noise).
- `write_clip(path, seconds, samplerate=44100, channels=2, fmt=None)`: a clip file; the format
  comes from `fmt` or the suffix: wav, flac, mp3, ogg (vorbis), opus (ogg opus). Returns path.
- `write_corrupt(path)`: a file that starts like a FLAC file and then holds garbage.
- `write_not_audio(path)`: a PNG header and bytes: a file that is not audio at all.
- `write_silent_wav(path)`: a valid wav header with zero frames.
- `write_random_htdemucs_repo(dir)`: a Demucs local model folder with a small random-weight
  HTDemucs (fast on CPU); returns (repo_dir, name) to use as STEMFLEET_MODEL_REPO / model.
- `one_torch_thread()`: a generator for a module fixture that runs torch on one thread and
  restores the previous count: on the shared 2-core test machine, torch's spinning worker
  threads cost 3-4x the CPU time of one thread for these tiny models.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
import yaml

SOURCES = ["drums", "bass", "other", "vocals"]

# libsndfile format / subtype per file kind
_FORMATS = {
    "wav": ("WAV", "PCM_16"),
    "flac": ("FLAC", "PCM_16"),
    "mp3": ("MP3", "MPEG_LAYER_III"),
    "ogg": ("OGG", "VORBIS"),
    "opus": ("OGG", "OPUS"),
}


def one_torch_thread() -> Iterator[None]:
    """Run torch single-threaded for the duration of a (module) fixture."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def tone(seconds: float, samplerate: int = 44100, channels: int = 2, seed: int = 0) -> np.ndarray:
    """A float32 [channels, T] test mix: 220 Hz + 3 kHz tones and some noise, peak < 0.6."""
    frames = round(seconds * samplerate)
    t = np.arange(frames) / samplerate
    rng = np.random.default_rng(seed)
    rows = []
    for ch in range(channels):
        wave = 0.3 * np.sin(2 * np.pi * 220 * t + ch) + 0.15 * np.sin(2 * np.pi * 3000 * t)
        rows.append(wave + 0.05 * rng.standard_normal(frames))
    return np.stack(rows).astype(np.float32)


def write_clip(
    path: Path,
    seconds: float,
    samplerate: int = 44100,
    channels: int = 2,
    fmt: str | None = None,
) -> Path:
    """Write `seconds` of `tone()` to `path` as wav / flac / mp3 / ogg / opus (opus: 48 kHz
    only, the one rate Opus runs at)."""
    kind = fmt or path.suffix.lstrip(".").lower()
    if kind == "opus" and samplerate != 48000:
        raise ValueError("opus clips are 48 kHz: pass samplerate=48000")
    container, subtype = _FORMATS[kind]
    data = tone(seconds, samplerate, channels)
    sf.write(str(path), data.T, samplerate, format=container, subtype=subtype)
    return path


def write_m4a(path: Path, seconds: float, samplerate: int = 44100) -> Path:
    """`seconds` of stereo `tone()` as AAC in an MP4 container (what phones and iTunes make),
    encoded with PyAV's bundled FFmpeg. AAC adds up to one frame (1024) of priming and padding."""
    import av

    data = np.ascontiguousarray(tone(seconds, samplerate, 2), dtype=np.float32)
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=samplerate, layout="stereo")
        frame = av.AudioFrame.from_ndarray(data, format="fltp", layout="stereo")
        frame.sample_rate = samplerate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    return path


def write_corrupt(path: Path) -> Path:
    """A FLAC stream header followed by garbage frames: looks like audio, does not decode."""
    buffer = io.BytesIO()
    sf.write(buffer, tone(1.0).T, 44100, format="FLAC")
    head = buffer.getvalue()[:200]
    garbage = np.random.default_rng(1).integers(0, 256, 20000, dtype=np.uint8).tobytes()
    path.write_bytes(head + garbage)
    return path


def write_not_audio(path: Path) -> Path:
    """A PNG signature and header chunk, then bytes: not audio in any format."""
    png = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(range(256)) * 8
    path.write_bytes(png)
    return path


def write_silent_wav(path: Path) -> Path:
    """A well-formed wav file holding zero frames."""
    sf.write(str(path), np.zeros((0, 2), dtype=np.float32), 44100, format="WAV")
    return path


def small_htdemucs_kwargs(segment: float = 2.0) -> dict[str, Any]:
    """HTDemucs arguments with few channels and one transformer layer: ~0.4 M parameters."""
    return {
        "sources": SOURCES,
        "audio_channels": 2,
        "samplerate": 44100,
        "segment": Fraction(segment).limit_denominator(100),
        "channels": 8,
        "t_layers": 1,
        "t_heads": 2,
        "dconv_comp": 4,
    }


def write_model(repo: Path, kwargs: dict[str, Any], seed: int) -> str:
    """Save a random-weight HTDemucs as `<sig>.th` (Demucs' package layout); return the sig."""
    from demucs.htdemucs import HTDemucs

    with torch.random.fork_rng():  # leave the caller's torch generator alone
        torch.manual_seed(seed)
        model = HTDemucs(**kwargs)
    package = {
        "klass": HTDemucs,
        "args": (),
        "kwargs": kwargs,
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
    }
    buffer = io.BytesIO()
    torch.save(package, buffer)
    described = repr(sorted((key, repr(value)) for key, value in kwargs.items()))
    sig = hashlib.sha256(f"{seed}-{described}".encode()).hexdigest()[:8]
    (repo / f"{sig}.th").write_bytes(buffer.getvalue())
    return sig


def write_random_htdemucs_repo(
    directory: Path,
    *,
    name: str = "tiny_htdemucs",
    models: int = 1,
    weights: list[list[float]] | None = None,
    kwargs: dict[str, Any] | None = None,
) -> tuple[Path, str]:
    """A Demucs local repo in `directory`: `models` random HTDemucs `<sig>.th` files and a
    `<name>.yaml` bag of them (optionally weighted). Returns (repo_dir, name)."""
    directory.mkdir(parents=True, exist_ok=True)
    arguments = kwargs or small_htdemucs_kwargs()
    sigs = [write_model(directory, arguments, seed) for seed in range(models)]
    bag: dict[str, Any] = {"models": sigs}
    if weights is not None:
        bag["weights"] = weights
    (directory / f"{name}.yaml").write_text(yaml.safe_dump(bag))
    return directory, name


def write_tiny_models(directory: Path) -> Path:
    """One folder: `tiny_htdemucs` (one random HTDemucs) and `tiny_bag` (two, weighted as
    htdemucs_ft is)."""
    write_random_htdemucs_repo(directory, name="tiny_htdemucs")
    write_random_htdemucs_repo(
        directory, name="tiny_bag", models=2, weights=[[1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0]]
    )
    return directory
