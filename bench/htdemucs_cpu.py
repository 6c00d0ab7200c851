"""Seconds of compute per minute of audio for htdemucs on CPU: what a Fly CPU worker delivers.

Random weights give the published htdemucs architecture (same layers, same FLOPs), so the time is
the time of the real weights; only the stems are noise. The model is loaded from a local model
folder written by scripts/fetch_model.py, the way the worker image loads it:

    .venv/bin/python scripts/fetch_model.py --model htdemucs --random-weights --dest /tmp/models
    .venv/bin/python bench/htdemucs_cpu.py --repo /tmp/models --seconds 60 --threads 2

Separation is Demucs' own `apply_model` with the CLI's defaults (shifts=1, overlap=0.25, split
into 7.8 s segments). Reported: wall seconds per minute of audio at the given thread count, and
CPU seconds per minute of audio (all threads added up), from which other core counts are
estimated.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from pathlib import Path

import torch
from demucs.apply import apply_model
from demucs.pretrained import get_model


def music_like(seconds: float, samplerate: int, seed: int = 0) -> torch.Tensor:
    """Stereo chords plus noise bursts; content does not change the FLOPs, only realism."""
    generator = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * samplerate)) / samplerate
    tones = sum(torch.sin(2 * math.pi * f * t) for f in (110.0, 220.0, 277.2, 329.6))
    beat = (torch.rand(t.shape, generator=generator) - 0.5) * (torch.sin(2 * math.pi * 2 * t) > 0.9)
    mono = 0.2 * tones + 0.3 * beat
    return torch.stack([mono, torch.roll(mono, 441)])


def measure(repo: Path, name: str, seconds: float, threads: int, repeats: int) -> dict[str, object]:
    torch.set_num_threads(threads)
    model = get_model(name, repo=repo)
    mix = music_like(seconds, model.samplerate)
    ref = mix.mean(0)
    normalized = (mix - ref.mean()) / ref.std()
    runs = []
    for _ in range(repeats):
        wall0, cpu0 = time.perf_counter(), time.process_time()
        with torch.inference_mode():
            apply_model(model, normalized[None], shifts=1, split=True, overlap=0.25)
        runs.append((time.perf_counter() - wall0, time.process_time() - cpu0))
    wall, cpu = min(runs)  # the least disturbed run: other work shares these cores
    per_minute = 60.0 / seconds
    return {
        "model": name,
        "audio_seconds": seconds,
        "threads": threads,
        "repeats": repeats,
        "wall_s": [round(w, 2) for w, _ in runs],
        "cpu_s": [round(c, 2) for _, c in runs],
        "wall_s_per_audio_minute": round(wall * per_minute, 1),
        "cpu_s_per_audio_minute": round(cpu * per_minute, 1),
        "realtime_factor": round(wall / seconds, 2),
        "cpu": platform.processor() or platform.machine(),
        "cores_visible": os.cpu_count(),
        "torch": torch.__version__,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", type=Path, required=True, help="local model folder")
    parser.add_argument("--model", default="htdemucs")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the clip")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    print(json.dumps(measure(args.repo, args.model, args.seconds, args.threads, args.repeats)))


if __name__ == "__main__":
    main()
