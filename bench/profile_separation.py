"""Where one segment's time goes: htdemucs (released architecture, random weights) on one 7.8 s
segment under torch.profiler, grouped into STFT/iSTFT, encoder convolutions, the cross-domain
transformer, decoder convolutions, normalisation (GroupNorm/LayerNorm) and the rest (overlap-add,
padding, the mix's normalisation, masks).

    .venv/bin/python bench/profile_separation.py                    # CPU: results/profile_cpu.md
    .venv/bin/python bench/profile_separation.py --device cuda      # results/profile_cuda.md
    .venv/bin/python bench/profile_separation.py --quick            # a small HTDemucs: a check

The segment goes through Demucs' own `apply_model` (shifts=1, overlap 0.25), the CLI's path,
on a mix exactly one segment long. Every op's *self* time (CPU time on CPU, kernel time on CUDA)
is charged to the innermost labelled region that launched it: the model's `_spec`/`_ispec` and
`_magnitude`/`_mask` (STFT), its `encoder`/`tencoder` (+ `freq_emb`), `crosstransformer` (+ the
1x1 `channel_upsampler`/`downsampler` convolutions around it), `decoder`/`tdecoder`; GroupNorm and
LayerNorm ops count as normalisation wherever they run. Conv and matmul FLOPs come from the
profiler's own count (`with_flops`). Before the profiled pass: one warm-up pass and `--repeats`
timed passes without the profiler (wall and CPU time), so the profiler's own overhead is visible.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
for _path in (ROOT, ROOT / "scripts"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile, record_function  # noqa: E402

from bench._common import load_average, machine_info, markdown_table, publish, report_head  # noqa: E402

GROUPS = (
    "STFT / iSTFT",
    "encoder convolutions",
    "cross-domain transformer",
    "decoder convolutions",
    "normalisation (GroupNorm / LayerNorm)",
    "overlap-add and the rest",
)
# module attribute -> group (the label's name is "sf::<attribute>")
MODULE_GROUPS = {
    "encoder": GROUPS[1],
    "tencoder": GROUPS[1],
    "freq_emb": GROUPS[1],
    "crosstransformer": GROUPS[2],
    "channel_upsampler": GROUPS[2],
    "channel_downsampler": GROUPS[2],
    "channel_upsampler_t": GROUPS[2],
    "channel_downsampler_t": GROUPS[2],
    "decoder": GROUPS[3],
    "tdecoder": GROUPS[3],
}
METHOD_GROUPS = {
    "_spec": GROUPS[0],
    "_ispec": GROUPS[0],
    "_magnitude": GROUPS[0],
    "_mask": GROUPS[0],
}
NORM_OPS = ("group_norm", "layer_norm", "native_group_norm", "native_layer_norm")
LABEL = "sf::"


def build_model(quick: bool) -> Any:
    """htdemucs as released (scripts/fetch_model.py), or the tests' small HTDemucs."""
    if quick:
        from demucs.htdemucs import HTDemucs

        from tests.audio_fixtures import small_htdemucs_kwargs

        torch.manual_seed(0)
        return HTDemucs(**small_htdemucs_kwargs()).eval()
    from fetch_model import random_weights_model

    return random_weights_model("htdemucs").models[0].eval()


@contextmanager
def labelled(model: torch.nn.Module) -> Iterator[None]:
    """Profiler ranges around the model's parts: forward hooks on its modules, wrappers on its
    STFT methods (instance attributes, removed afterwards)."""
    handles: list[Any] = []
    ranges: dict[int, Any] = {}

    def before(name: str) -> Callable[..., None]:
        def hook(module: torch.nn.Module, args: Any) -> None:
            ranges[id(module)] = record_function(LABEL + name).__enter__()

        return hook

    def after(module: torch.nn.Module, args: Any, output: Any) -> None:
        ranges.pop(id(module)).__exit__(None, None, None)

    for name in MODULE_GROUPS:
        part = getattr(model, name, None)
        if isinstance(part, torch.nn.ModuleList):
            modules = list(part)
        elif isinstance(part, torch.nn.Module):
            modules = [part]
        else:
            modules = []
        for module in modules:
            handles.append(module.register_forward_pre_hook(before(name)))
            handles.append(module.register_forward_hook(after))
    wrapped = []
    for name in METHOD_GROUPS:
        method = getattr(model, name, None)
        if method is None:
            continue

        def wrapper(*args: Any, _method: Any = method, _name: str = name, **kwargs: Any) -> Any:
            with record_function(LABEL + _name):
                return _method(*args, **kwargs)

        setattr(model, name, wrapper)
        wrapped.append(name)
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        for name in wrapped:
            delattr(model, name)


def group_of(event: Any) -> str:
    """The group an op's self time belongs to (see the module docstring)."""
    node = event
    while node is not None:
        if any(node.name.endswith(op) for op in NORM_OPS):
            return GROUPS[4]
        if node.name.startswith(LABEL):
            key = node.name[len(LABEL) :]
            return MODULE_GROUPS.get(key) or METHOD_GROUPS[key]
        node = node.cpu_parent
    return GROUPS[5]


def self_time_us(event: Any, device: str) -> float:
    if device == "cuda":
        return float(event.self_device_time_total)
    return float(event.self_cpu_time_total)


def separate_once(model: Any, mix: torch.Tensor, device: str) -> None:
    from demucs.apply import apply_model

    with torch.inference_mode():
        apply_model(model, mix[None], shifts=1, split=True, overlap=0.25, device=device)
    if device == "cuda":
        torch.cuda.synchronize()


def measure(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    model = build_model(args.quick).to(args.device)
    frames = int(float(model.segment) * model.samplerate)
    generator = torch.Generator().manual_seed(1)
    mix = torch.randn(model.audio_channels, frames, generator=generator).to(args.device)
    separate_once(model, mix, args.device)  # warm-up: first-pass allocations, kernel choice
    timed = []
    for _ in range(args.repeats):
        wall0, cpu0 = time.perf_counter(), time.process_time()
        separate_once(model, mix, args.device)
        timed.append((time.perf_counter() - wall0, time.process_time() - cpu0))
    activities = [ProfilerActivity.CPU]
    if args.device == "cuda":
        activities.append(ProfilerActivity.CUDA)
    load = load_average()
    with labelled(model), profile(activities=activities, with_flops=True) as prof:
        wall0 = time.perf_counter()
        separate_once(model, mix, args.device)
        profiled_wall = time.perf_counter() - wall0
    events = [e for e in prof.events() if not e.name.startswith(LABEL)]
    groups: dict[str, float] = defaultdict(float)
    ops: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0.0])
    for event in events:
        spent = self_time_us(event, args.device)
        group = group_of(event)
        groups[group] += spent
        ops[(event.name, group)][0] += spent
        ops[(event.name, group)][1] += 1
    flops = sum(float(getattr(e, "flops", 0) or 0) for e in events)
    return {
        "model": "a small HTDemucs (tests/audio_fixtures.py; a check, not a published model)"
        if args.quick
        else "htdemucs (released architecture)",
        "parameters": sum(p.numel() for p in model.parameters()),
        "segment_s": float(model.segment),
        "timed": timed,
        "profiled_wall_s": profiled_wall,
        "groups": dict(groups),
        "ops": ops,
        "flops": flops,
        "load": load,
    }


def report(args: argparse.Namespace, figures: dict[str, Any], command: str) -> str:
    unit = (
        "kernel time"
        if args.device == "cuda"
        else "time inside each op on the calling thread: an op's worker threads are not added"
    )
    total_us = sum(figures["groups"].values()) or 1.0
    group_rows = [
        [name, f"{figures['groups'].get(name, 0.0) / 1000:,.1f}",
         f"{100 * figures['groups'].get(name, 0.0) / total_us:.1f} %"]
        for name in GROUPS
    ]  # fmt: skip
    group_rows.append(["**total**", f"**{total_us / 1000:,.1f}**", "100 %"])
    top = sorted(figures["ops"].items(), key=lambda item: -item[1][0])[: args.top]
    op_rows = [
        [f"`{name}`", group, f"{spent / 1000:,.1f}", int(calls), f"{100 * spent / total_us:.1f} %"]
        for (name, group), (spent, calls) in top
    ]
    walls = [w for w, _ in figures["timed"]]
    cpus = [c for _, c in figures["timed"]]
    best = min(walls) if walls else figures["profiled_wall_s"]
    seconds = figures["segment_s"]
    facts = {
        **machine_info(),
        "torch": torch.__version__,
        "device": args.device,
        "intra-op threads (torch.get_num_threads)": str(torch.get_num_threads()),
        "inter-op threads": str(torch.get_num_interop_threads()),
        "load average (1/5/15 min) before the profiled pass": figures["load"],
    }
    if args.device == "cuda":
        facts["gpu"] = torch.cuda.get_device_name(0)
    timing = [
        f"- Without the profiler ({len(walls)} passes after one warm-up): wall "
        + ", ".join(f"{w:.3f}" for w in walls)
        + " s; CPU "
        + ", ".join(f"{c:.2f}" for c in cpus)
        + f" s (CPU / wall {sum(cpus) / max(sum(walls), 1e-9):.2f}: the threads busy on average).",
        f"- Best pass: {best:.3f} s for {seconds:g} s of audio = {seconds / best:.2f} audio "
        f"seconds per second ({best / seconds * 60:.1f} s per audio minute).",
        f"- The profiled pass: {figures['profiled_wall_s']:.3f} s wall (the profiler's own "
        "overhead included); the table below sums its ops' self time.",
        f"- Conv + matmul FLOPs counted by the profiler: {figures['flops'] / 1e9:,.1f} GFLOP per "
        f"segment ({figures['flops'] / 1e9 / seconds:,.1f} GFLOP per audio second), "
        f"{figures['flops'] / 1e9 / best:,.1f} GFLOP/s at the best pass.",
    ]
    parts = [
        *report_head(
            f"Profile: one {seconds:g} s segment, {figures['model']}, {args.device}",
            command,
            facts,
            machine_heading=False,
        ),
        "",
        f"Model: {figures['model']}, {figures['parameters']:,} parameters, random weights; "
        "Demucs' `apply_model` (shifts=1, overlap 0.25) on a mix exactly one segment long.",
        "",
        *timing,
        "",
        f"## Where the time goes ({unit}, ms)",
        "",
        markdown_table(["group", "ms", "share"], group_rows),
        "",
        f"## Top {len(op_rows)} ops by self time",
        "",
        markdown_table(["op", "group", "ms", "calls", "share"], op_rows),
        "",
        "Method: bench/profile_separation.py (its docstring): every op's self time is charged "
        "to the innermost labelled part of the model that ran it; GroupNorm/LayerNorm ops count "
        "as normalisation wherever they run.",
    ]
    return "\n".join(parts) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeats", type=int, default=2, help="timed passes without profiler")
    parser.add_argument("--top", type=int, default=15, help="ops listed")
    parser.add_argument("--quick", action="store_true", help="a small HTDemucs: a check")
    parser.add_argument(
        "--results", type=Path, default=None, help="default: bench/results/profile_DEVICE.md"
    )
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device on this machine")
    if args.results is None:
        args.results = ROOT / "bench" / "results" / f"profile_{args.device}.md"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = " ".join(
        ["bench/profile_separation.py", *(argv if argv is not None else sys.argv[1:])]
    )
    text = report(args, measure(args), command)
    publish(text, args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
