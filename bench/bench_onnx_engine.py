"""The ONNX Runtime engine against eager PyTorch on the released htdemucs architecture (CPU).

Random weights with the released architecture (scripts/fetch_model.py's HTDEMUCS_KWARGS with
`dconv_mode=3`, 41.98 M parameters): same layers, same FLOPs as the real weights.

    .venv/bin/python bench/bench_onnx_engine.py --threads 2 --rounds 3

Measures, and writes to bench/results/onnx_engine.md:
- export cold (no cache) and prepare warm (the cached, already optimised model), seconds;
- one 7.8 s segment through the model's forward pass, eager vs onnx (and the ONNX Runtime
  variants named by --variants), same threads, in rotating order: wall and CPU seconds per
  audio second, and the max abs difference of the onnx output to eager.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

from _common import machine_info, markdown_table, now_utc, write_result
from demucs.htdemucs import HTDemucs
from fetch_model import HTDEMUCS_KWARGS

from worker.engines import htdemucs_split, onnx_runtime

Forward = Callable[[torch.Tensor], torch.Tensor]


def released_model(seed: int = 0) -> HTDemucs:
    torch.manual_seed(seed)
    model = HTDemucs(**{**HTDEMUCS_KWARGS, "dconv_mode": 3})
    return model.eval()


def timed(
    forward: Forward, mix: torch.Tensor, lanes: ThreadPoolExecutor | None
) -> tuple[float, float, torch.Tensor]:
    """One pass over `mix`: as one call, or one segment per lane (as worker.passes does)."""

    def run(segment: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return forward(segment)

    wall, cpu = time.perf_counter(), time.process_time()
    out = run(mix) if lanes is None else torch.cat(list(lanes.map(run, mix.split(1))))
    return time.perf_counter() - wall, time.process_time() - cpu, out


def openvino_forward(model: HTDemucs, cache: Path, threads: int) -> Forward:
    """The same exported network on OpenVINO's CPU plugin (`pip install openvino`; not a
    dependency of stemfleet), STFT and iSTFT in PyTorch as in the onnx engine."""
    import openvino

    exported = next(p for p in (cache / "onnx").glob("*.onnx") if ".opt." not in p.name)
    compiled = openvino.Core().compile_model(
        str(exported), "CPU", {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32"}
    )

    def forward(mix: torch.Tensor) -> torch.Tensor:
        z, mag, padded = htdemucs_split.front(model, mix)
        result = compiled({"mag": mag.numpy(), "mix": padded.numpy()})
        x, xt = (torch.from_numpy(result[name]) for name in ("x", "xt"))
        return htdemucs_split.back(model, z, x, xt, mix.shape[-1])

    return forward


def variant(model: HTDemucs, name: str, cache: Path) -> Forward:
    """An onnx Forward with the settings `name` (an optimisation level "all", "extended",
    "basic"; "sessions2": two sessions of half the threads; "nospin": intra-op threads that do
    not spin), or OpenVINO's ("openvino")."""
    if name == "openvino":
        return openvino_forward(model, cache, torch.get_num_threads())
    if name == "nospin":
        onnx_runtime.SPIN = False
        try:
            return variant(model, onnx_runtime.OPTIMIZATION, cache)
        finally:
            onnx_runtime.SPIN = True
    if name.startswith("sessions"):
        return onnx_runtime.prepare(
            model, device="cpu", precision="fp32", cache_dir=cache, sessions=int(name[8:])
        )
    previous = onnx_runtime.OPTIMIZATION
    onnx_runtime.OPTIMIZATION = name
    try:
        return onnx_runtime.prepare(model, device="cpu", precision="fp32", cache_dir=cache)
    finally:
        onnx_runtime.OPTIMIZATION = previous


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument(
        "--lanes", action="store_true", help="one segment per thread of one intra-op thread"
    )
    parser.add_argument("--variants", default="all", help="comma list: all,extended,basic,...")
    parser.add_argument("--name", default="onnx_engine.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = released_model()
    params = sum(p.numel() for p in model.parameters())
    cache = Path(tempfile.mkdtemp(prefix="stemfleet-onnx-bench-"))

    started, started_cpu = time.perf_counter(), time.process_time()
    engines: dict[str, Forward] = {"eager": model}
    for name in args.variants.split(","):
        label = name if name == "openvino" else f"onnx-{name}"
        engines[label] = variant(model, name, cache)
        if len(engines) == 2:
            cold = time.perf_counter() - started
            cold_cpu = time.process_time() - started_cpu
    first = args.variants.split(",")[0]
    started, started_cpu = time.perf_counter(), time.process_time()
    variant(model, first, cache)
    warm, warm_cpu = time.perf_counter() - started, time.process_time() - started_cpu

    length = int(model.segment * model.samplerate)
    audio_s = args.batch * length / model.samplerate
    mix = torch.randn(args.batch, 2, length, generator=torch.Generator().manual_seed(1))
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in engines}
    outputs: dict[str, Any] = {}
    names = list(engines)
    lanes = None
    if args.lanes:
        lanes = ThreadPoolExecutor(args.batch, initializer=lambda: torch.set_num_threads(1))
    timed(engines["eager"], mix, lanes)  # warm-up: first-call allocations
    for round_ in range(args.rounds):
        order = names[round_ % len(names) :] + names[: round_ % len(names)]
        for name in order:
            wall, cpu, out = timed(engines[name], mix, lanes)
            samples[name].append((wall, cpu))
            outputs[name] = out
            print(name, round(wall, 2), round(cpu, 2), flush=True)
    rows = []
    eager_best = min(w for w, _ in samples["eager"])
    for name, values in samples.items():
        wall = min(w for w, _ in values)
        cpu = min(c for _, c in values)
        diff = (outputs[name] - outputs["eager"]).abs().max().item()
        rows.append(
            [
                name,
                f"{audio_s / wall:.3f}",
                f"{audio_s / cpu:.3f}",
                f"{eager_best / wall:.2f}x",
                " ".join(f"{w:.2f}" for w, _ in values),
                f"{diff:.2e}",
            ]
        )
    text = "\n".join(
        [
            f"# ONNX Runtime engine vs eager, released htdemucs ({params:,} parameters)",
            "",
            f"{now_utc()} · `bench/bench_onnx_engine.py --threads {args.threads} "
            f"--rounds {args.rounds} --batch {args.batch} --variants {args.variants}"
            f"{' --lanes' if args.lanes else ''}`",
            "",
            "Machine: " + ", ".join(f"{k}: {v}" for k, v in machine_info().items()),
            "",
            f"Export cold (trace + ONNX + ORT optimisation, no cache, `{first}`): {cold:.1f} s "
            f"wall, {cold_cpu:.1f} s CPU; prepare warm (the cached optimised model): "
            f"{warm:.2f} s wall, {warm_cpu:.2f} s CPU.",
            "",
            f"Largest output value (eager): {outputs['eager'].abs().max().item():.3g}.",
            "",
            f"One forward of {args.batch} x 7.8 s segment(s), best of {args.rounds} "
            "(rotating order):",
            "",
            markdown_table(
                [
                    "engine",
                    "audio s / wall s",
                    "audio s / CPU s",
                    "speed vs eager (wall)",
                    "wall s per round",
                    "max abs diff to eager",
                ],
                rows,
            ),
        ]
    )
    path = write_result(args.name, text + "\n")
    print(text)
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
