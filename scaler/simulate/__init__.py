"""Replay a day of job arrivals through the scaling policy and compare strategies.

A discrete-event simulation (seeded, deterministic): jobs arrive, wait in the queue (previews
first, then oldest), run on a machine's worker for `job_overhead + audio x rtf` seconds.
Machines boot in `boot_s` (a stopped machine) or `create_boot_s` (a new one) and are billed from
the start request until they stop. Strategies:

- policy: the scaler's own `plan()` every `scaler_interval`, with the settings' ceilings,
  budgets, cooldowns and step rules (workers also exit after `worker_idle_exit` idle, as real
  ones do);
- always-on N: N machines up all the time;
- scale-to-zero: a machine starts whenever a job waits with no free worker (up to
  max_machines), and stops after 5 minutes idle;
- serverless: per-second billing at a serverless price, one container per waiting job, a cold
  start for each new container, kept warm for a minute after its last job.

The policy run also checks the invariants the tests rely on and lists any violation: never more
than max_machines billed, never over max_hourly_usd, no start that the budgets cannot carry,
never stopping a worker that holds a job.
"""

from scaler.simulate.engine import DAY_S, SIM_START, SimModel, SimResult, percentile
from scaler.simulate.report import add_arguments, format_results, run_cli
from scaler.simulate.strategies import (
    compare,
    simulate_always_on,
    simulate_policy,
    simulate_scale_to_zero,
    simulate_serverless,
)
from scaler.simulate.traces import DAY_SHAPE, Arrival, builtin_day, load_trace

__all__ = [
    "DAY_S",
    "DAY_SHAPE",
    "SIM_START",
    "Arrival",
    "SimModel",
    "SimResult",
    "add_arguments",
    "builtin_day",
    "compare",
    "format_results",
    "load_trace",
    "percentile",
    "run_cli",
    "simulate_always_on",
    "simulate_policy",
    "simulate_scale_to_zero",
    "simulate_serverless",
]
