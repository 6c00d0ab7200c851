"""`stemfleet scaler once | run | plan | simulate` (added through the stemfleet.commands entry
point)."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from app.cli_args import duration
from app.clock import SystemClock
from app.settings import Settings, get_settings
from scaler.model import Plan
from scaler.policy import fmt_duration
from scaler.reconcile import Inputs, RunOutcome, Scaler


def register(subparsers: Any) -> None:
    scaler = subparsers.add_parser(
        "scaler", help="start and stop worker machines from the backlog, under a budget"
    )
    sub = scaler.add_subparsers(dest="scaler_command", required=True, metavar="COMMAND")

    once = sub.add_parser("once", help="one reconcile (cron-safe: a second concurrent run exits)")
    once.add_argument(
        "--wait",
        type=duration,
        default=0.0,
        metavar="DURATION",
        help="after acting, wait up to this long for machines to reach their state",
    )
    once.set_defaults(handler=_once)

    run = sub.add_parser("run", help="reconcile in a loop")
    run.add_argument(
        "--interval",
        type=duration,
        default=None,
        metavar="DURATION",
        help="time between runs (default STEMFLEET_SCALER_INTERVAL, 30s)",
    )
    run.set_defaults(handler=_run)

    plan = sub.add_parser("plan", help="print what a run would do now, acting on nothing")
    plan.set_defaults(handler=_plan)

    simulate = sub.add_parser(
        "simulate", help="replay a day of arrivals through the policy and other strategies"
    )
    from scaler.simulate import add_arguments

    add_arguments(simulate)
    simulate.set_defaults(handler=_simulate)


def _scaler(settings: Settings) -> Scaler:
    from scaler.providers import make_provider

    return Scaler(settings, make_provider(settings))


def _print_outcome(outcome: RunOutcome) -> None:
    print(outcome.message)
    for result in outcome.results:
        mark = "ok" if result.ok else "FAILED"
        machine = result.machine_id or result.action.machine_id or "(new)"
        print(f"  {mark:6} {result.action.kind:8} {machine:24} {result.action.reason}")
        if result.detail and not result.ok:
            print(f"         {result.detail}")
    if outcome.plan:
        for note in outcome.plan.notes:
            print(f"  note: {note}")


class ChangeFilter:
    """`scaler run` prints a run only when something happened: an action, an error, or a
    different situation (backlog, target, notes) than the last run it printed; an idle loop
    stays quiet."""

    def __init__(self) -> None:
        self._last: object = None

    def eventful(self, outcome: RunOutcome) -> bool:
        plan = outcome.plan
        situation = (
            outcome.acted,
            outcome.message if not outcome.acted else None,
            (plan.target, plan.capacity, plan.billed, tuple(plan.notes)) if plan else None,
        )
        changed = situation != self._last
        self._last = situation
        return changed or bool(outcome.results or outcome.errors)


def _once(args: argparse.Namespace) -> int:
    scaler = _scaler(get_settings())
    try:
        outcome = scaler.run_once(wait=args.wait)
    finally:
        scaler.provider.close()
    _print_outcome(outcome)
    return 0


def _run(args: argparse.Namespace) -> int:
    settings = get_settings()
    interval = args.interval if args.interval is not None else settings.scaler_interval
    scaler = _scaler(settings)
    stop = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    clock = SystemClock()
    changes = ChangeFilter()
    try:
        while not stop.is_set():
            began = clock.monotonic()
            try:
                outcome = scaler.run_once()
                if changes.eventful(outcome):
                    _print_outcome(outcome)
            except Exception as exc:  # one bad run (database restart…) must not end the loop
                scaler.log.exception("scaler_run_failed", error=str(exc))
            sys.stdout.flush()
            clock.wait(stop, interval - (clock.monotonic() - began))
    finally:
        scaler.provider.close()
    return 0


def format_plan(plan: Plan, inputs: Inputs) -> str:
    b, s = inputs.backlog, inputs.spend
    oldest = b.oldest_queued_at
    lines = [
        f"backlog: {b.queued} queued ({b.queued_previews} previews), {b.delayed} waiting to "
        f"retry, {b.running} running"
        + (
            f", oldest waiting {fmt_duration((inputs.now - oldest).total_seconds())}"
            if oldest
            else ""
        ),
        f"fleet: {plan.billed} billed machines, {plan.capacity} taking jobs, "
        f"${plan.hourly_usd:.4f}/h; target {plan.target}",
        f"spend: ${s.today_usd:.2f} today, ${s.month_usd:.2f} this month",
        "",
    ]
    rows = [("ACTION", "MACHINE", "WORKER", "SIZE", "$/H", "REASON")]
    for a in plan.actions:
        rows.append(
            (
                a.kind,
                a.machine_id or "(new)",
                str(a.worker_id)[:8] if a.worker_id else "-",
                a.size or "-",
                f"{a.hourly_usd:.4f}",
                a.reason,
            )
        )
    if len(rows) == 1:
        lines.append("no actions: the fleet fits the backlog, ceilings and budgets")
    else:
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        for row in rows:
            cells = [row[i].ljust(widths[i]) for i in range(5)]
            lines.append("  ".join([*cells, row[5]]).rstrip())
    for note in plan.notes:
        lines.append(f"note: {note}")
    return "\n".join(lines)


def _plan(args: argparse.Namespace) -> int:
    scaler = _scaler(get_settings())
    try:
        plan, inputs = scaler.preview()
    finally:
        scaler.provider.close()
    print(format_plan(plan, inputs))
    return 0


def _simulate(args: argparse.Namespace) -> int:
    from scaler.simulate import run_cli

    return run_cli(
        args, get_settings(), out=sys.stdout, trace=Path(args.trace) if args.trace else None
    )
