"""CPU thread layout and engines for one htdemucs forward pass, on the same cores.

Layouts of N segments on N cores (N = --threads):

- `pass`: one pass at a time, one segment each, N intra-op threads (STEMFLEET_CPU_LANES=1);
- `lanes`: N Python threads, each running one segment with 1 intra-op thread (torch releases
  the GIL inside its ops, so the lanes run at once; the worker's CPU default);
- `batch`: one pass of N segments, N intra-op threads.

Engines (`--engines`, default eager,compiled,onnx): each is the member forward the worker would
run (`worker.engines.prepare`), its preparation timed (export or compile: cold with an empty
`--cache` folder, warm when the folder holds a previous run's artefacts). Then every pair of
engine and layout is timed, rounds in rotating order; wall and CPU seconds (all threads) are
reported per segment. The model is htdemucs as released (scripts/fetch_model.py's kwargs with
`dconv_mode=3`) with random weights: the same layers and FLOPs as the real weights.
Results: bench/results/engines.md.

    .venv/bin/python bench/bench_engines.py --threads 2 --rounds 2 --layouts lanes
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
from worker.engines import prepare

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


def prepared(engines: list[str], model: Any, cache: Path, threads: int) -> dict[str, Any]:
    """engine -> its forward of `model`, each preparation (export, compile) timed, under
    `threads` intra-op threads (compiled graphs are specialised to the count: prepare under a
    lane's 1 to time lanes, as the worker does)."""
    forwards: dict[str, Any] = {}

    def make(engine: str) -> None:
        forwards[engine] = prepare(engine, model, device="cpu", precision="fp32", cache_dir=cache)

    for engine in engines:
        torch.set_num_threads(threads)
        wall, cpu = timed(lambda e=engine: make(e))
        print(f"prepare {engine}: {wall:.1f} s wall, {cpu:.1f} s CPU", flush=True)
    return forwards


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--segment", type=float, default=None, help="seconds (default 7.8)")
    parser.add_argument("--layouts", default="pass,lanes,batch")
    parser.add_argument("--engines", default="eager,compiled,onnx")
    parser.add_argument("--cache", type=Path, default=Path(".bench-engine-cache"))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    model = released_htdemucs(args.segment)
    frames = int(float(model.segment) * model.samplerate)
    segments = torch.randn(args.threads, 2, frames, generator=torch.Generator().manual_seed(1))
    layouts = args.layouts.split(",")
    call_threads = 1 if layouts == ["lanes"] else args.threads
    forwards = prepared(args.engines.split(","), model, args.cache, call_threads)
    runs = [(e, layout) for e in forwards for layout in layouts]
    results: dict[str, list[tuple[float, float]]] = {f"{e} {lay}": [] for e, lay in runs}
    with torch.inference_mode():
        one_pass(model, segments[:1], args.threads)  # warm-up: allocator, oneDNN primitives
        for index in range(args.rounds):
            for engine, layout in runs[index % len(runs) :] + runs[: index % len(runs)]:
                wall, cpu = timed(
                    lambda e=engine, n=layout: LAYOUTS[n](forwards[e], segments, args.threads)
                )
                results[f"{engine} {layout}"].append((wall / args.threads, cpu / args.threads))
                print(
                    f"round {index} {engine} {layout}: {wall / args.threads:.2f} s wall, "
                    f"{cpu / args.threads:.2f} s CPU per segment",
                    flush=True,
                )
    summary = {
        name: {
            "wall_per_segment": min(w for w, _ in timings),
            "cpu_per_segment": min(c for _, c in timings),
            "runs": timings,
        }
        for name, timings in results.items()
    }
    print(json.dumps(summary, indent=1))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
