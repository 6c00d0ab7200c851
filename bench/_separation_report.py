"""The markdown of benchmark 2 (bench/bench_separation.py): one row per way of separating the
clips, summed over the rounds, with the ratio to the Demucs CLI given all clips at once."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from bench._common import markdown_table, report_head
from bench._separation_rows import Round

TARGET = {"cpu": 1.5, "cuda": 2.0}
BASELINE = "cli-all"


@dataclass
class RowResult:
    key: str
    name: str
    audio_s: float  # per round
    rounds: list[Round] = field(default_factory=list)

    @property
    def wall_s(self) -> float:
        return sum(r.wall_s for r in self.rounds)

    @property
    def per_wall(self) -> float:
        return self.audio_s * len(self.rounds) / self.wall_s

    @property
    def per_cpu(self) -> float:
        return self.audio_s * len(self.rounds) / sum(r.cpu_s for r in self.rounds)

    def mean_extra(self, name: str) -> float | None:
        values = [r.extra[name] for r in self.rounds if name in r.extra]
        return sum(values) / len(values) if values else None


def results_table(results: list[RowResult]) -> str:
    baseline = next((r for r in results if r.key == BASELINE), None)
    rows = []
    for r in results:
        ratio = f"{r.per_wall / baseline.per_wall:.2f}x" if baseline else "-"
        cpu_ratio = f"{r.per_cpu / baseline.per_cpu:.2f}x" if baseline else "-"
        startup = r.mean_extra("startup_s")
        rows.append(
            [
                r.name,
                ", ".join(f"{x.wall_s:,.1f}" for x in r.rounds),
                ", ".join(f"{x.cpu_s:,.1f}" for x in r.rounds),
                f"**{r.per_wall:.3f}**",
                f"{r.per_cpu:.3f}",
                f"**{ratio}**",
                cpu_ratio,
                "-" if startup is None else f"{startup:.1f}",
                "; ".join(f"{x.load_before.split(' / ')[0]}→{x.load_after.split(' / ')[0]}"
                          for x in r.rounds),
            ]
        )  # fmt: skip
    header = [
        "row",
        "wall s (per round)",
        "CPU s (per round)",
        "audio s / wall s",
        "audio s / CPU s",
        "vs CLI (all clips), wall",
        "vs CLI, CPU",
        "start-up s (process → first job claimed)",
        "load avg 1 min (before→after, per round)",
    ]
    return markdown_table(header, rows)


def analysis(args: argparse.Namespace, results: list[RowResult]) -> list[str]:
    by_key = {r.key: r for r in results}
    baseline = by_key.get(BASELINE)
    lines = []
    target = TARGET[args.device]
    if baseline:
        for r in results:
            if not r.key.startswith("stemfleet-"):
                continue
            ratio = r.per_wall / baseline.per_wall
            verdict = "met" if ratio >= target else f"missed by {target / ratio:.2f}x"
            lines.append(
                f"- {r.name}: {ratio:.2f}x the CLI (all clips) by wall time, "
                f"{r.per_cpu / baseline.per_cpu:.2f}x by CPU time; target ≥ {target:g}x: "
                f"{verdict}."
            )
    each, loop = by_key.get("cli-each"), by_key.get("apply")
    if baseline and each:
        lines.append(
            f"- The CLI once per clip: {each.per_wall / baseline.per_wall:.2f}x the CLI given "
            f"all clips (its start-up, paid per clip: "
            f"{(each.wall_s - baseline.wall_s) / len(each.rounds):.1f} s more per round)."
        )  # fmt: skip
    if baseline and loop:
        lines.append(
            f"- The `apply_model` loop (no start-up, model already loaded): "
            f"{loop.per_wall / baseline.per_wall:.2f}x the CLI: the most a runner using the "
            "same eager kernels can get without faster forward passes."
        )
    for r in results:
        if not r.key.startswith("stemfleet-"):
            continue
        parts = [
            f"{name} {value:.1f} s"
            for name in ("startup_s", "claimed_to_done_s", "decode_s", "separate_s", "encode_s")
            if (value := r.mean_extra(name)) is not None
        ]
        lines.append(f"- {r.name}, mean per round: " + ", ".join(parts) + ".")
    return lines


def report(
    args: argparse.Namespace,
    facts: dict[str, str],
    results: list[RowResult],
    orders: list[list[str]],
    runtime_s: float,
    command: str,
) -> str:
    settings = [
        f"- Clips: {args.clips} x {args.seconds:g} s synthetic songs (scripts/sample_clip.py), "
        "44.1 kHz stereo wav int16; the same files for every row.",
        f"- Model: {args.model}, random weights (scripts/fetch_model.py --random-weights"
        + (
            ": the released architecture, 41,984,456 parameters, the same layers and FLOPs as "
            "the real weights"
            if args.model == "htdemucs"
            else ": a tiny htdemucs-shaped model for checking, not a published one"
        )
        + "), one local model folder loaded by every row.",
        "- Demucs' defaults for all: shifts=1, overlap=0.25, the model's segment; four stems "
        "written as wav int16.",
        f"- Device {args.device}, precision {args.precision} (stemfleet and the apply_model "
        "loop; the CLI has no precision option and runs fp32); "
        f"{args.threads} thread(s) for every row (STEMFLEET_THREADS, OMP_NUM_THREADS, "
        "MKL_NUM_THREADS, torch.set_num_threads).",
        f"- Rounds: {len(orders)}; each runs every row over all the clips, the order rotating "
        "by one row from round to round: "
        + "; ".join(f"round {i + 1}: {', '.join(order)}" for i, order in enumerate(orders))
        + ".",
    ]
    parts = [
        *report_head("Benchmark 2: separation throughput, side by side", command, facts, runtime_s),
        "",
        "## Settings",
        "",
        *settings,
        "",
        "## Results",
        "",
        results_table(results),
        "",
        *analysis(args, results),
        "",
        "## How it was measured",
        "",
        "- stemfleet rows: a throwaway Postgres (bench/_common.py), a fresh migrated database "
        "per row and round, local storage. The clips are put in storage and their jobs queued "
        "first; then `python -m worker` starts with STEMFLEET_ENGINE set, and the clock runs "
        "from its start to the last job seen succeeded (polled every 0.1 s). Its start-up "
        "(imports, model load, any compilation) is inside that time, as the CLI's is in the "
        "CLI's. CPU: the worker process and its children (psutil), not Postgres.",
        "- Demucs CLI: `python -m demucs.separate -n MODEL --repo DIR -o OUT -d DEVICE "
        "clip1.wav … clipN.wav` (one invocation), and the same once per clip; CPU from the "
        "children's rusage.",
        "- apply_model loop: in the benchmark process, the model loaded once before its clock; "
        "per clip sphn decode, `convert_audio`, normalise, `apply_model(shifts=1, split=True, "
        "overlap=0.25)`, `save_audio` per stem, as the CLI does.",
        "- Every row's stems are read back and checked (four int16 stereo wav files of the "
        "input's length).",
        "- The ratio column divides a row's audio seconds per wall second by the CLI's (all "
        "clips in one invocation).",
    ]
    return "\n".join(parts) + "\n"
