"""Peak host memory (RSS) and wall time to separate a long input on CPU (issue 8, benchmark 4).

Run from the repository root:

    .venv/bin/python bench/bench_memory.py                      # 60 min, htdemucs architecture
    .venv/bin/python bench/bench_memory.py --minutes 60 --arch small --threads 2
    .venv/bin/python bench/bench_memory.py --minutes 2 --arch htdemucs --stream-over 60
    .venv/bin/python bench/bench_memory.py --minutes 60 --stop-after-batches 6

`--stop-after-batches N` cancels the job (the worker's own should_stop path) after N batches:
the whole input is still decoded to disk and the normalisation statistics computed over all of
it, and the encoders are open and written to, so every allocation that grows with the input's
length has happened; only the time-consuming rest of the model's batches (constant memory per
batch) is skipped. On the 2-core development machine the whole hour took 84 minutes on one
thread (bench/results/memory.md).

It writes a random-weight model into a local Demucs model folder (the architecture of
`htdemucs`: 42 M parameters, 7.8 s segments; or `small`, the tests' 0.4 M-parameter HTDemucs)
and an N-minute stereo 44.1 kHz wav, then runs `worker.pipeline.separate_file` as the worker
does (default job params: 4 stems, wav int16, shifts=1, overlap=0.25) and prints one JSON line:
peak RSS (ru_maxrss, MiB), RSS sampled at 10/50/90% progress, wall time, audio seconds per wall
second. Inputs longer than --stream-over seconds (default: the pipeline's 600 s) stream from
disk, so the peak should not grow with the input's length. Work files go to --workdir (a fresh
temporary folder by default; removed at the end unless --keep).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from audio_fixtures import (  # noqa: E402
    small_htdemucs_kwargs,
    tone,
    write_random_htdemucs_repo,
)

from app.params import JobParams  # noqa: E402
from app.settings import load_settings  # noqa: E402
from worker.engine import JobCancelled  # noqa: E402
from worker.pipeline import IN_MEMORY_SECONDS, separate_file  # noqa: E402
from worker.separation import Separator  # noqa: E402

sys.path.insert(0, str(ROOT / "scripts"))
from fetch_model import HTDEMUCS_KWARGS  # noqa: E402  (the published architecture)


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def write_long_wav(path: Path, minutes: float) -> None:
    block = tone(60.0).T  # one minute, repeated: the content does not change the memory
    with sf.SoundFile(str(path), "w", samplerate=44100, channels=2, subtype="PCM_16") as out:
        whole, rest = divmod(minutes * 60, 60)
        for _ in range(int(whole)):
            out.write(block)
        out.write(block[: round(rest * 44100)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--arch", choices=["htdemucs", "small"], default="htdemucs")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--batch-size", type=int, default=0, help="0: the worker's default")
    parser.add_argument("--stream-over", type=float, default=IN_MEMORY_SECONDS)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--stop-after-batches", type=int, default=0, help="0: run to the end")
    args = parser.parse_args()

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="stemfleet-bench-memory-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        kwargs = HTDEMUCS_KWARGS if args.arch == "htdemucs" else small_htdemucs_kwargs()
        repo, name = write_random_htdemucs_repo(
            workdir / "models", name=f"random_{args.arch}", kwargs=kwargs
        )
        source = workdir / "input.wav"
        write_long_wav(source, args.minutes)
        settings = load_settings(
            model=name,
            model_repo=repo,
            device="cpu",
            threads=args.threads,
            batch_size=args.batch_size,
        )
        separator = Separator(settings)
        marks: dict[str, float] = {}

        batches = [0]

        def progress(value: float) -> None:
            batches[0] += 1
            for mark in (0.1, 0.5, 0.9):
                if value >= mark and f"rss_at_{mark:.0%}_mib" not in marks:
                    marks[f"rss_at_{mark:.0%}_mib"] = round(rss_mib(), 1)

        peak_sampled = [0.0]
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.5):
                peak_sampled[0] = max(peak_sampled[0], rss_mib())

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        rss_before = rss_mib()
        started = time.perf_counter()
        stop_after = args.stop_after_batches
        try:
            result = separate_file(
                separator,
                source,
                workdir / "out",
                JobParams(),
                max_seconds=None,
                progress=progress,
                should_stop=lambda: bool(stop_after) and batches[0] >= stop_after,
                stream_over_seconds=args.stream_over,
            )
            separated_s: float | None = result.duration_s
            timings = result.timings
        except JobCancelled:
            separated_s, timings = None, {}
        wall = time.perf_counter() - started
        done.set()
        sampler.join()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(
            json.dumps(
                {
                    "benchmark": "memory",
                    "arch": args.arch,
                    "minutes": args.minutes,
                    "threads": args.threads or None,
                    "batch_size": separator.batch_size_for(
                        separator.loaded, int(float(kwargs["segment"]) * 44100)
                    ),
                    "streamed": args.minutes * 60 > args.stream_over,
                    "batches_run": batches[0],
                    "stopped_early": bool(stop_after) and batches[0] >= stop_after,
                    "peak_rss_mib": round(peak, 1),
                    "peak_rss_sampled_mib": round(peak_sampled[0], 1),
                    "rss_after_model_load_mib": round(rss_before, 1),
                    **marks,
                    "wall_s": round(wall, 1),
                    "audio_s_per_wall_s": separated_s and round(separated_s / wall, 3),
                    "timings_s": {k: round(v, 1) for k, v in timings.items()},
                    "date": time.strftime("%Y-%m-%d"),
                }
            )
        )
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
