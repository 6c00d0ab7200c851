"""A chaos run's figures and verdict, printed as a short markdown table."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from app.queue import Job
from bench._common import percentile
from chaos.checks import Violation
from chaos.faults import FaultLog

CHECKS = ("lost", "twice", "stuck", "told", "scratch", "component")
SHOWN_PER_CHECK = 10
REQUEUE_TARGET_S = 15.0  # issue 13: a dead local worker's job is requeued within 15 s


@dataclass(frozen=True)
class Outcome:
    seed: int
    rounds: int
    rows: Mapping[uuid.UUID, Job]
    refused: Sequence[str]
    log: FaultLog
    requeue_s: Sequence[float | None]
    proxy_counts: Mapping[str, int]
    webhooks: int
    observer_disconnects: int
    violations: Sequence[Violation]
    total_s: float
    run_dir: Path


def _seconds(values: Sequence[float | None]) -> str:
    done = [v for v in values if v is not None]
    if not values:
        return "no kills"
    text = (
        f"p50 {percentile(done, 50):.1f} s, max {max(done):.1f} s (n={len(done)})"
        if done
        else "none requeued"
    )
    never = len(values) - len(done)
    met = done and not never and max(done) <= REQUEUE_TARGET_S
    return (
        text
        + (f", {never} never requeued" if never else "")
        + f" (target <= {REQUEUE_TARGET_S:g} s: {'met' if met else 'missed'})"
    )


def figures(outcome: Outcome) -> list[tuple[str, str]]:
    statuses = Counter(job.status for job in outcome.rows.values())
    failed_kinds = Counter(
        job.error_kind or "?" for job in outcome.rows.values() if job.status == "failed"
    )
    log = outcome.log
    crashes = f"{log.pg_crashes} ({log.crashes_after_success} right after a success)"
    proxy = outcome.proxy_counts
    return [
        ("seed", str(outcome.seed)),
        ("rounds", str(outcome.rounds)),
        ("jobs accepted", str(len(outcome.rows))),
        (
            "succeeded / failed / other",
            f"{statuses['succeeded']} / {statuses['failed']} / "
            f"{sum(statuses.values()) - statuses['succeeded'] - statuses['failed']}",
        ),
        ("failed by kind", ", ".join(f"{k} {n}" for k, n in sorted(failed_kinds.items())) or "-"),
        ("submissions refused", str(len(outcome.refused))),
        ("workers SIGKILLed mid-job", str(len(log.kills))),
        ("kill to requeue", _seconds(outcome.requeue_s)),
        ("Postgres clean restarts", str(log.pg_restarts)),
        ("Postgres crashes", crashes),
        ("storage faults (500s / stalls)", f"{log.storage_failures} / {log.storage_stalls}"),
        ("storage requests failed / held", f"{proxy.get('failed', 0)} / {proxy.get('stalled', 0)}"),
        ("faults skipped", str(len(log.skipped))),
        ("webhooks received", str(outcome.webhooks)),
        ("observer disconnects", str(outcome.observer_disconnects)),
        ("total time", f"{outcome.total_s:.0f} s"),
    ]


def print_figures(outcome: Outcome, say: Callable[[str], None] = print) -> None:
    say("")
    say("| figure | value |")
    say("|---|---|")
    for name, value in figures(outcome):
        say(f"| {name} | {value} |")
    by_check = Counter(v.check for v in outcome.violations)
    say("")
    for check in CHECKS:
        say(f"{check}: {'FAIL (' + str(by_check[check]) + ')' if by_check[check] else 'ok'}")
        shown = [v for v in outcome.violations if v.check == check][:SHOWN_PER_CHECK]
        for violation in shown:
            say(f"  - {violation.detail}")
    reasons = Counter(job.error for job in outcome.rows.values() if job.status == "failed")
    for reason, count in sorted(reasons.items(), key=lambda item: -item[1])[:SHOWN_PER_CHECK]:
        say(f"note: {count} job(s) failed with: {reason}")
    for line in outcome.log.skipped:
        say(f"note: {line}")
    for line in outcome.refused:
        say(f"note: submission refused: {line}")
    if outcome.violations:
        say(f"chaos: FAILED (seed {outcome.seed}); logs and database in {outcome.run_dir}")
    else:
        say(f"chaos: passed (seed {outcome.seed})")
