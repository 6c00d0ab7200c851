"""The accelerator sweep (issue 16): the worker's own `Separator` on one device, in process, over
what only an accelerator has. Run by bench/gpu.sh; alone:

    .venv/bin/python bench/bench_gpu.py --device cuda                # htdemucs, released arch
    .venv/bin/python bench/bench_gpu.py --device cpu --quick         # tiny model: a check

1. A 3-minute track (`--track-seconds`) per variant: engine (STEMFLEET_ENGINE) x precision
   (fp32 with TF32 off, fp32 with TF32 on, bf16 and fp16 autocast) at the batch size the worker
   sizes from free memory, then bf16 at fixed batch sizes. Per variant: its set-up (model load,
   engine preparation, e.g. compilation, and one warm-up pass), the track's device time
   (synchronised), real-time factor, and the quality against eager fp32 without TF32 (max abs
   difference, and relative error ||a-b|| / ||b||, on the stems).
2. CUDA graphs: the worker's engines do not capture graphs, so one member's forward pass is
   captured with `torch.cuda.CUDAGraph` at the chosen batch size and replayed, against the same
   pass launched eagerly (a probe of what graphs would give; the capture's failure is reported
   if it fails).
3. Cross-job batching: `--group` clips of `--group-seconds` separated one after another against
   all at once (`Separator.run_together`, the worker's STEMFLEET_GROUP_JOBS path).

Random weights give the time and memory of the real ones; quality is stated as a difference to
fp32 on the same weights. Variants stop being started once `--budget-s` has passed (skipped ones
are listed). Writes a markdown report (`--results`, default bench/results/gpu_DEVICE.md).
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
for _path in (ROOT, ROOT / "scripts"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import torch  # noqa: E402

from app.params import parse_params  # noqa: E402
from app.settings import load_settings  # noqa: E402
from bench._common import load_average, machine_info, markdown_table, publish, report_head  # noqa: E402
from worker.engine import Stream, normalisation, tensor_reader  # noqa: E402
from worker.separation import Separator  # noqa: E402


@dataclass
class Variant:
    engine: str
    precision: str
    tf32: bool = False
    batch_size: int = 0  # 0: the worker's choice from free memory
    setup_s: float = 0.0
    track_s: float = 0.0
    chosen_batch: int = 0
    max_abs: float | None = None
    rel_err: float | None = None
    error: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        tf32 = " +TF32" if self.tf32 else ""
        batch = f"batch {self.batch_size}" if self.batch_size else "batch auto"
        return f"{self.engine} {self.precision}{tf32}, {batch}"


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def set_tf32(on: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on


def music(seconds: float, seed: int) -> torch.Tensor:
    from sample_clip import RATE, song

    return (
        torch.from_numpy(song(seconds, seed=seed)).float().T.contiguous()[:, : int(seconds * RATE)]
    )


def separator_for(args: argparse.Namespace, variant: Variant) -> Separator:
    settings = load_settings(
        model=args.model,
        model_repo=args.repo,
        device=args.device,
        precision=variant.precision,
        engine=variant.engine,
        batch_size=variant.batch_size,
        threads=args.threads,
        data_dir=args.workdir / "data",
    )
    return Separator(settings)


def stems_tensor(stems: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.stack([stems[name] for name in sorted(stems)])


def run_variant(
    args: argparse.Namespace, variant: Variant, track: torch.Tensor, warm: torch.Tensor
) -> torch.Tensor | None:
    """Set up, warm up, then separate the track; fills the variant's figures."""
    set_tf32(variant.tf32)
    params = parse_params({"model": args.model})
    try:
        started = time.perf_counter()
        separator = separator_for(args, variant)
        separator.separate(warm, params)
        sync(args.device)
        variant.setup_s = time.perf_counter() - started
        loaded = separator.model_for(args.model)
        segment = int(float(loaded.members[0].segment) * loaded.samplerate)
        variant.chosen_batch = separator.batch_size_for(loaded, segment)
        if args.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        random.seed(0)  # HTDemucs' transformer draws a positional shift on every pass
        torch.manual_seed(0)
        started = time.perf_counter()
        stems = separator.separate(track, params)
        sync(args.device)
        variant.track_s = time.perf_counter() - started
        if args.device == "cuda":
            variant.extra["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        return stems_tensor(stems)
    except Exception as exc:  # a variant that cannot run is reported, the sweep goes on
        variant.error = f"{type(exc).__name__}: {str(exc)[:200]}"
        return None
    finally:
        set_tf32(False)


def graph_probe(args: argparse.Namespace, batch: int) -> dict[str, Any]:
    """One member's forward pass at `batch` segments: eager launches against a captured CUDA
    graph's replay (fp32 and bf16 autocast)."""
    if args.device != "cuda":
        return {"skipped": "CUDA graphs exist on CUDA only"}
    from demucs.pretrained import get_model

    member = get_model(args.model, repo=args.repo).models[0].to("cuda").eval()
    frames = int(float(member.segment) * member.samplerate)
    static = torch.randn(batch, 2, frames, device="cuda")
    found: dict[str, Any] = {"batch": batch}
    for precision, dtype in (("fp32", None), ("bf16", torch.bfloat16)):

        def eager(dtype: Any = dtype) -> torch.Tensor:
            with torch.inference_mode(), torch.autocast("cuda", dtype=dtype, enabled=bool(dtype)):
                return member(static)

        def timed(fn: Any, repeats: int = 5) -> float:
            fn()
            torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(repeats):
                fn()
            torch.cuda.synchronize()
            return (time.perf_counter() - start) / repeats

        found[f"eager_{precision}_ms"] = 1000 * timed(eager)
        try:
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(2):
                    eager()
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                eager()
            found[f"graph_{precision}_ms"] = 1000 * timed(graph.replay)
        except Exception as exc:  # capture can fail on host syncs inside the model
            found[f"graph_{precision}_error"] = f"{type(exc).__name__}: {str(exc)[:160]}"
    return found


def group_probe(args: argparse.Namespace, precision: str) -> dict[str, Any]:
    """`--group` clips separated one after another, then together (run_together)."""
    variant = Variant("eager", precision)
    separator = separator_for(args, variant)
    loaded = separator.model_for(args.model)
    params = parse_params({"model": args.model})
    clips = [music(args.group_seconds, seed=10 + i) for i in range(args.group)]
    separator.separate(clips[0], params)  # warm-up
    sync(args.device)
    started = time.perf_counter()
    for clip in clips:
        separator.separate(clip, params)
    sync(args.device)
    alone = time.perf_counter() - started
    streams = []
    for clip in clips:
        mean, std = normalisation(clip)
        streams.append(
            Stream(clip.shape[-1], tensor_reader(clip), mean, std, params, lambda block: None)
        )
    started = time.perf_counter()
    results = separator.run_together(loaded, streams)
    sync(args.device)
    together = time.perf_counter() - started
    errors = [str(r.error) for r in results if r.error is not None]
    audio = args.group * args.group_seconds
    return {"precision": precision, "alone_s": alone, "together_s": together,
            "audio_s": audio, "errors": errors}  # fmt: skip


def gpu_name(device: str) -> str:
    if device != "cuda":
        return "none (CPU run)"
    try:
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, check=True, timeout=20,
        )  # fmt: skip
        return f"{torch.cuda.get_device_name(0)} (nvidia-smi: {smi.stdout.strip()})"
    except (OSError, subprocess.SubprocessError):
        return torch.cuda.get_device_name(0)


def variants_for(args: argparse.Namespace) -> tuple[list[Variant], list[Variant]]:
    """The eager variants (run first), then the other engines' (compilation can be long)."""
    if args.device == "cuda":  # TF32 and fp16 autocast exist on CUDA only
        eager = [Variant("eager", "fp32"), Variant("eager", "fp32", tf32=True)]
        eager += [Variant("eager", "bf16"), Variant("eager", "fp16")]
    else:
        eager = [Variant("eager", "fp32"), Variant("eager", "bf16")]
    eager += [Variant("eager", "bf16", batch_size=b) for b in args.batches]
    others = [Variant(e, p) for e in args.engines if e != "eager" for p in ("fp32", "bf16")]
    return eager, others


def sweep(args: argparse.Namespace, save: Any) -> dict[str, Any]:
    """Every variant, the probes, then the other engines; `save(found)` after each step, so a
    sweep stopped at its time limit leaves what it measured."""
    started = time.perf_counter()
    track = music(args.track_seconds, seed=1)
    warm = music(min(args.track_seconds, 10.0), seed=2)
    found: dict[str, Any] = {"variants": [], "skipped": [], "graphs": {}, "group": None}
    reference: list[torch.Tensor] = []

    def run_all(variants: list[Variant]) -> None:
        for variant in variants:
            if time.perf_counter() - started > args.budget_s:
                found["skipped"].append(variant.label)
                continue
            stems = run_variant(args, variant, track, warm)
            if stems is not None and not reference:
                reference.append(stems)  # the first variant is eager fp32 without TF32
            if stems is not None:
                diff = stems - reference[0]
                variant.max_abs = float(diff.abs().max())
                variant.rel_err = float(diff.norm() / reference[0].norm().clamp_min(1e-12))
            print(f"{variant.label}: {variant.track_s:.3f} s {variant.error}", file=sys.stderr)
            found["variants"].append(variant)
            found["elapsed_s"] = time.perf_counter() - started
            save(found)

    eager, others = variants_for(args)
    run_all(eager)
    best = min((v for v in found["variants"] if not v.error), key=lambda v: v.track_s, default=None)
    found["graphs"] = graph_probe(args, best.chosen_batch if best else 1)
    found["group"] = group_probe(args, "bf16" if args.device == "cuda" else "fp32")
    found["elapsed_s"] = time.perf_counter() - started
    save(found)
    run_all(others)
    return found


def group_line(args: argparse.Namespace, group: dict[str, Any]) -> str:
    if not group:
        return "- not run (yet)"
    return (
        f"- {args.group} clips of {args.group_seconds:g} s, {group['precision']}: one after "
        f"another {group['alone_s']:.2f} s, together (run_together) {group['together_s']:.2f} s "
        f"({group['alone_s'] / group['together_s']:.2f}x); "
        f"{group['audio_s'] / group['together_s']:,.0f}x real time together."
        + (f" Errors: {group['errors']}" if group["errors"] else "")
    )


def report(args: argparse.Namespace, found: dict[str, Any], command: str) -> str:
    seconds = args.track_seconds
    rows = []
    for v in found["variants"]:
        if v.error:
            rows.append([v.label, "-", "-", "-", "-", "-", "-", v.error])
            continue
        rows.append([
            v.label, f"{v.setup_s:.1f}", f"{v.track_s:.3f}", f"{seconds / v.track_s:,.0f}x",
            v.chosen_batch, f"{v.max_abs:.2e}", f"{v.rel_err:.2e}",
            f"{v.extra.get('peak_gib', 0):.1f} GiB" if args.device == "cuda" else "",
        ])  # fmt: skip
    header = ["variant", "set-up s (load, prepare, warm-up)", f"{seconds:g} s track, s",
              "x real time", "batch", "max abs diff vs fp32", "relative error",
              "peak / note"]  # fmt: skip
    group = found["group"] or {}
    graphs = ", ".join(
        f"{k}: {v:.2f}" if isinstance(v, float) else f"{k}: {v}" for k, v in found["graphs"].items()
    )
    facts = {
        **machine_info(),
        "torch": torch.__version__,
        "device": args.device,
        "gpu": gpu_name(args.device),
        "threads": str(torch.get_num_threads()),
        "load average": load_average(),
        "model": f"{args.model} (random weights)",
    }
    lines = [
        *report_head(
            f"Accelerator sweep: {args.model} on {args.device}",
            command,
            facts,
            found["elapsed_s"],
            machine_heading=False,
        ),
        "",
        f"## A {seconds:g} s track per variant (the worker's Separator, in process)",
        "",
        markdown_table(header, rows),
        "",
        "Skipped for time: " + (", ".join(found["skipped"]) or "none") + ".",
        "",
        "## CUDA graphs (one member's forward pass, probe)",
        "",
        "- " + (graphs or "not run"),
        "",
        "## Cross-job batching",
        "",
        group_line(args, group),
        "",
        "Method: bench/bench_gpu.py (its docstring).",
    ]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda")
    parser.add_argument("--quick", action="store_true", help="htdemucs_tiny, short clips")
    parser.add_argument("--model", default="htdemucs")
    parser.add_argument("--engines", default="eager,compiled", help="comma-separated")
    parser.add_argument("--batches", default="1,8,32", help="fixed bf16 batch sizes to time")
    parser.add_argument("--track-seconds", type=float, default=180.0)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--group-seconds", type=float, default=30.0)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--budget-s", type=float, default=240.0, help="start no variant after")
    parser.add_argument("--results", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device on this machine")
    if args.quick:
        args.model, args.track_seconds, args.group, args.group_seconds = (
            "htdemucs_tiny",
            4.0,
            2,
            2.0,
        )
        args.batches, args.engines, args.threads = "", "eager", 1
    args.engines = [e for e in args.engines.split(",") if e]
    args.batches = [int(b) for b in args.batches.split(",") if b]
    if args.results is None:
        args.results = ROOT / "bench" / "results" / f"gpu_{args.device}.md"
    return args


def main(argv: list[str] | None = None) -> int:
    from bench._separation_common import prepare_model

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    given = argv if argv is not None else sys.argv[1:]
    with tempfile.TemporaryDirectory(prefix="stemfleet-bench-gpu-") as work:
        args.workdir = Path(work)
        args.repo = args.workdir / "models"
        prepare_model(args.repo, args.model)
        command = " ".join(["bench/bench_gpu.py", *given])

        def save(found: dict[str, Any]) -> None:
            args.results.parent.mkdir(parents=True, exist_ok=True)
            args.results.write_text(report(args, found, command))

        text = report(args, sweep(args, save), command)
    publish(text, args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
