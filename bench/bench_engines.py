"""CPU thread layout and engines for one htdemucs forward pass, on the same cores.

Layouts of N segments on N cores (N = --threads):

- `pass`: one pass at a time, one segment each, N intra-op threads (the worker's CPU default);
- `lanes`: N Python threads, each running one segment with 1 intra-op thread (torch releases
  the GIL inside its ops, so the lanes run at once);
- `batch`: one pass of N segments, N intra-op threads.

Engines (with `--engines`): `compiled` (torch.compile) timed for its first pass (compile, cold
or warm cache) and its steady passes. The model is htdemucs as released (scripts/fetch_model.py's
kwargs with `dconv_mode=3`) with random weights: the same layers and FLOPs as the real weights.
Rounds run the layouts in rotating order; wall and CPU seconds (all threads) are reported per
segment. Results: bench/results/engines.md.

    .venv/bin/python bench/bench_engines.py --threads 2 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from demucs.htdemucs import HTDemucs

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from scripts.fetch_model import HTDEMUCS_KWARGS

Layout = Callable[[Any, torch.Tensor, int], None]


def released_htdemucs(segment: float | None) -> HTDemucs:
    kwargs = dict(HTDEMUCS_KWARGS, dconv_mode=3)  # the released architecture (issue 16)
    if segment is not None:
        kwargs["segment"] = segment
    torch.manual_seed(0)
    return HTDemucs(**kwargs).eval()


def one_pass(forward: Any, segments: torch.Tensor, threads: int) -> None:
    torch.set_num_threads(threads)
    for segment in segments:
        forward(segment[None])


def batched(forward: Any, segments: torch.Tensor, threads: int) -> None:
    torch.set_num_threads(threads)
    forward(segments)


def lanes(forward: Any, segments: torch.Tensor, threads: int) -> None:
    torch.set_num_threads(1)

    def lane(segment: torch.Tensor) -> None:
        torch.set_num_threads(1)
        with torch.inference_mode():
            forward(segment[None])

    workers = [threading.Thread(target=lane, args=(s,)) for s in segments]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()


LAYOUTS: dict[str, Layout] = {"pass": one_pass, "lanes": lanes, "batch": batched}


def timed(fn: Callable[[], None]) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--segment", type=float, default=None, help="seconds (default 7.8)")
    parser.add_argument("--layouts", default="pass,lanes,batch")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    model = released_htdemucs(args.segment)
    frames = int(float(model.segment) * model.samplerate)
    segments = torch.randn(args.threads, 2, frames, generator=torch.Generator().manual_seed(1))
    names = args.layouts.split(",")
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    with torch.inference_mode():
        one_pass(model, segments[:1], args.threads)  # warm-up: allocator, oneDNN primitives
        for index in range(args.rounds):
            order = names[index % len(names) :] + names[: index % len(names)]
            for name in order:
                wall, cpu = timed(lambda n=name: LAYOUTS[n](model, segments, args.threads))
                results[name].append((wall / args.threads, cpu / args.threads))
                print(
                    f"round {index} {name}: {wall / args.threads:.2f} s wall, "
                    f"{cpu / args.threads:.2f} s CPU per segment",
                    flush=True,
                )
    summary = {
        name: {
            "wall_per_segment": min(w for w, _ in runs),
            "cpu_per_segment": min(c for _, c in runs),
            "runs": runs,
        }
        for name, runs in results.items()
    }
    print(json.dumps(summary, indent=1))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
