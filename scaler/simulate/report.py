"""`stemfleet scaler simulate`: the comparison as a table."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TextIO

from app.settings import Settings, parse_duration
from scaler.policy import fmt_duration, hourly_price
from scaler.simulate.engine import SimModel, SimResult
from scaler.simulate.prices import RUNPOD_OFFERS, with_offer
from scaler.simulate.strategies import compare
from scaler.simulate.traces import builtin_day, load_trace


def format_results(results: Iterable[SimResult]) -> str:
    rows = [("strategy", "cost $", "machine-h", "wait p50", "wait p95", "wait max", "done", "peak")]
    for r in results:
        rows.append(
            (
                r.name,
                f"{r.cost_usd:.2f}",
                f"{r.machine_hours:.1f}",
                fmt_duration(r.p50),
                fmt_duration(r.p95),
                fmt_duration(r.max_wait),
                f"{r.done}/{r.jobs}",
                str(r.peak_machines),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        lines.append("  ".join(cells))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


# --- CLI --------------------------------------------------------------------------------------


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# SimModel's fields on the command line: option, field, type, help (the default is SimModel's)
MODEL_OPTIONS: tuple[tuple[str, str, Callable[[str], float], str], ...] = (
    ("--boot", "boot_s", _duration, "stopped machine to worker"),
    ("--create-boot", "create_boot_s", _duration, "new machine to worker"),
    ("--rtf", "rtf", float, "processing s per audio s"),
    ("--job-overhead", "job_overhead_s", _duration, "per-job fixed time"),
    ("--cold-start", "cold_start_s", _duration, "serverless start"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trace", metavar="CSV", help="arrivals: arrival_s,audio_s[,kind]")
    parser.add_argument("--seed", type=int, default=1, help="seed of the built-in day")
    parser.add_argument("--jobs", type=int, default=600, help="built-in day: jobs besides bursts")
    parser.add_argument("--bursts", type=int, default=3, help="built-in day: number of spikes")
    parser.add_argument("--burst-jobs", type=int, default=150, help="built-in day: jobs per spike")
    defaults = SimModel()
    for option, name, kind, what in MODEL_OPTIONS:
        parser.add_argument(
            option, dest=name, type=kind, default=getattr(defaults, name), help=what
        )
    parser.add_argument("--always-on", type=int, default=None, help="N (default max_machines)")
    parser.add_argument(
        "--serverless-usd-per-hour",
        type=float,
        default=None,
        help="serverless price per busy hour (default: 2x the machine price, or the offer's)",
    )
    parser.add_argument(
        "--runpod",
        choices=sorted(RUNPOD_OFFERS),
        help="price the machines as this RunPod pod and the serverless row at RunPod "
        "Serverless' per-second price for its class",
    )
    parser.add_argument(
        "--pod-usd-per-hour", type=float, default=None, help="with --runpod: the pod's $/h"
    )
    parser.add_argument(
        "--serverless-usd-per-second",
        type=float,
        default=None,
        help="with --runpod: the serverless worker's $/s",
    )


def run_cli(
    args: argparse.Namespace, settings: Settings, *, out: TextIO, trace: Path | None
) -> int:
    arrivals = (
        load_trace(trace)
        if trace
        else builtin_day(args.seed, jobs=args.jobs, bursts=args.bursts, burst_jobs=args.burst_jobs)
    )
    serverless_hourly = args.serverless_usd_per_hour
    if args.runpod:
        offer = RUNPOD_OFFERS[args.runpod]
        settings = with_offer(settings, offer, args.pod_usd_per_hour)
        per_s = args.serverless_usd_per_second or offer.serverless_usd_per_s
        serverless_hourly = serverless_hourly or per_s * 3600
    knobs = {name: getattr(args, name) for _, name, _, _ in MODEL_OPTIONS}
    model = SimModel(**knobs, serverless_hourly_usd=serverless_hourly)
    always_on = args.always_on if args.always_on is not None else max(1, settings.max_machines)
    results = compare(arrivals, settings, model, always_on=always_on, seed=args.seed)
    price = hourly_price(settings, settings.machine_size)
    source = str(trace) if trace else f"built-in day (seed {args.seed})"
    print(
        f"{len(arrivals)} jobs from {source}; machine {settings.machine_size} ${price:.4f}/h, "
        f"max {settings.max_machines} machines, ${settings.max_hourly_usd:.2f}/h cap, "
        f"${settings.daily_budget_usd:.2f}/day budget; boot {fmt_duration(model.boot_s)}, "
        f"rtf {model.rtf:g}"
        + (
            f"; serverless ${model.serverless_hourly_usd / 3600:.5f}/s"
            if model.serverless_hourly_usd
            else ""
        ),
        file=out,
    )
    print(format_results(results), file=out)
    for violation in results[0].violations:
        print(f"VIOLATION: {violation}", file=out)
    return 1 if results[0].violations else 0
