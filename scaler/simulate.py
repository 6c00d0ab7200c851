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

from __future__ import annotations

import argparse
import csv
import heapq
import math
import random
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

from app.errors import ConfigError
from app.queue import JobKind, Worker
from app.settings import Settings, parse_duration
from scaler.model import Backlog, Fleet, FleetMachine, Machine, Plan, Spend
from scaler.policy import fmt_duration, hourly_price, plan

DAY_S = 86400.0
SIM_START = datetime(2026, 1, 5, tzinfo=UTC)  # a Monday, midnight UTC
# Relative arrival rate per hour of the day: quiet nights, a busy evening.
DAY_SHAPE = (
    0.3,
    0.2,
    0.15,
    0.1,
    0.1,
    0.15,
    0.3,
    0.5,
    0.8,
    1.0,
    1.1,
    1.2,
    1.2,
    1.1,
    1.1,
    1.2,
    1.4,
    1.6,
    1.8,
    2.0,
    1.9,
    1.5,
    1.0,
    0.6,
)


@dataclass(frozen=True, slots=True)
class Arrival:
    at_s: float  # seconds after the start of the trace
    audio_s: float
    kind: JobKind = "separate"


@dataclass(frozen=True)
class SimModel:
    boot_s: float = 45.0  # a stopped machine until its worker takes jobs
    create_boot_s: float = 90.0  # a new machine (image pull, first boot)
    rtf: float = 0.1  # seconds of processing per second of audio
    job_overhead_s: float = 5.0  # download, decode, encode, upload
    cold_start_s: float = 30.0  # serverless container start + model load
    serverless_hourly_usd: float | None = None  # default: 2x the machine price
    serverless_idle_s: float = 60.0  # how long a serverless container stays warm
    scale_to_zero_idle_s: float = 300.0
    drain_horizon_s: float = 6 * 3600.0  # keep simulating this long for a leftover queue

    def service_s(self, arrival: Arrival) -> float:
        return self.job_overhead_s + arrival.audio_s * self.rtf


# --- traces -----------------------------------------------------------------------------------


def builtin_day(
    seed: int = 1,
    *,
    jobs: int = 600,
    preview_share: float = 0.3,
    bursts: int = 3,
    burst_jobs: int = 150,
    hours: float = 24.0,
) -> list[Arrival]:
    """A day shaped like DAY_SHAPE with `jobs` arrivals spread by a Poisson process, plus
    `bursts` spikes of `burst_jobs` jobs each within two minutes (a link going viral)."""
    rng = random.Random(seed)
    total_weight = sum(DAY_SHAPE)
    arrivals: list[Arrival] = []

    def one(at: float) -> Arrival:
        if rng.random() < preview_share:
            return Arrival(at, 30.0, "preview")
        audio = min(1800.0, max(20.0, rng.lognormvariate(math.log(210.0), 0.5)))
        return Arrival(at, round(audio, 1), "separate")

    for hour in range(math.ceil(hours)):
        rate = jobs * DAY_SHAPE[hour % 24] / total_weight / 3600.0  # per second
        t = hour * 3600.0
        end = min((hour + 1) * 3600.0, hours * 3600.0)
        while rate > 0:
            t += rng.expovariate(rate)
            if t >= end:
                break
            arrivals.append(one(t))
    for _ in range(bursts):
        start = rng.uniform(0.3, 0.95) * hours * 3600.0
        for _ in range(burst_jobs):
            arrivals.append(one(start + rng.uniform(0.0, 120.0)))
    return sorted(arrivals, key=lambda a: (a.at_s, a.audio_s, a.kind))


def load_trace(path: Path) -> list[Arrival]:
    """CSV with a header: an arrival column (`arrival_s` seconds from the start, or `arrival`
    as seconds or an ISO timestamp), `audio_s` (or `audio_seconds`/`duration_s`), and an
    optional `kind` (separate | preview)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"--trace {path}: cannot read it: {exc}") from None
    rows = list(csv.DictReader(text.splitlines()))
    if not rows:
        raise ConfigError(f"--trace {path}: no rows (expected a header and one row per job)")
    header = {h.strip().lower(): h for h in rows[0] if h}
    time_col = next((header[c] for c in ("arrival_s", "arrival", "t", "at") if c in header), None)
    audio_col = next(
        (header[c] for c in ("audio_s", "audio_seconds", "duration_s", "duration") if c in header),
        None,
    )
    if time_col is None or audio_col is None:
        raise ConfigError(
            f"--trace {path}: needs an arrival column (arrival_s or arrival) and an audio column "
            f"(audio_s); found {', '.join(header) or 'none'}"
        )
    kind_col = header.get("kind")
    times: list[float] = []
    parsed: list[tuple[float, float, JobKind]] = []
    origin: datetime | None = None
    for number, row in enumerate(rows, start=2):
        raw_t, raw_a = (row.get(time_col) or "").strip(), (row.get(audio_col) or "").strip()
        try:
            at = float(raw_t)
        except ValueError:
            try:
                stamp = datetime.fromisoformat(raw_t.replace("Z", "+00:00"))
            except ValueError:
                raise ConfigError(
                    f"--trace {path} line {number}: arrival {raw_t!r} is neither seconds nor "
                    "an ISO timestamp"
                ) from None
            if stamp.tzinfo is None:
                stamp = stamp.replace(tzinfo=UTC)
            origin = origin or stamp
            at = (stamp - origin).total_seconds()
        try:
            audio = float(raw_a)
        except ValueError:
            raise ConfigError(
                f"--trace {path} line {number}: audio seconds {raw_a!r} is not a number"
            ) from None
        kind = (row.get(kind_col) or "separate").strip() if kind_col else "separate"
        if kind not in ("separate", "preview"):
            raise ConfigError(
                f"--trace {path} line {number}: kind {kind!r} (use separate or preview)"
            )
        if audio < 0:
            raise ConfigError(f"--trace {path} line {number}: negative audio seconds")
        times.append(at)
        parsed.append((at, audio, "preview" if kind == "preview" else "separate"))
    first = min(times)
    return sorted(
        (Arrival(at - first, audio, kind) for at, audio, kind in parsed),
        key=lambda a: (a.at_s, a.audio_s, a.kind),
    )


# --- results ----------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass
class SimResult:
    name: str
    cost_usd: float
    machine_hours: float
    waits: list[float]
    jobs: int
    done: int
    peak_machines: int
    daily_cost: dict[int, float] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    plans: int = 0

    @property
    def p50(self) -> float:
        return percentile(self.waits, 50)

    @property
    def p95(self) -> float:
        return percentile(self.waits, 95)

    @property
    def max_wait(self) -> float:
        return max(self.waits, default=0.0)


# --- the engine -------------------------------------------------------------------------------


@dataclass
class _Worker:
    id: uuid.UUID
    machine_id: str
    started_at: float
    idle_since: float | None
    job: Arrival | None = None
    draining: bool = False


@dataclass
class _Machine:
    id: str
    size: str
    price: float
    state: str = "stopped"  # stopped | starting | started
    since: float = 0.0
    billed_since: float | None = None
    worker: _Worker | None = None
    epoch: int = 0  # bumped on each stop, so stale boot / idle events are ignored


class _Engine:
    """Jobs, machines and billing; strategies decide when machines start and stop."""

    def __init__(
        self,
        arrivals: Sequence[Arrival],
        model: SimModel,
        *,
        size: str,
        price: float,
        idle_exit_s: float,
        seed: int,
    ) -> None:
        self.model = model
        self.size, self.price, self.idle_exit_s = size, price, idle_exit_s
        self.rng = random.Random(seed)
        self.t = 0.0
        self.events: list[tuple[float, int, str, Any]] = []
        self.seq = 0
        self.previews: deque[Arrival] = deque()
        self.separates: deque[Arrival] = deque()
        self.machines: dict[str, _Machine] = {}
        self.closed_cost = 0.0
        self.closed_seconds = 0.0
        self.day_cost: dict[int, float] = {}
        self.waits: list[float] = []
        self.jobs = len(arrivals)
        self.done = 0
        self.peak = 0
        self.last_arrival = arrivals[-1].at_s if arrivals else 0.0
        self.on_change: Callable[[], None] = lambda: None
        for arrival in arrivals:
            self.push(arrival.at_s, "arrive", arrival)

    # --- plumbing -------------------------------------------------------------------------
    def push(self, at: float, kind: str, data: Any) -> None:
        self.seq += 1
        heapq.heappush(self.events, (at, self.seq, kind, data))

    @property
    def queued(self) -> int:
        return len(self.previews) + len(self.separates)

    def billed(self) -> list[_Machine]:
        return [m for m in self.machines.values() if m.billed_since is not None]

    def _bill(self, machine: _Machine, until: float) -> None:
        assert machine.billed_since is not None
        self.closed_seconds += until - machine.billed_since
        self.closed_cost += machine.price * (until - machine.billed_since) / 3600
        day, t = int(machine.billed_since // DAY_S), machine.billed_since
        while t < until:
            end = min(until, (day + 1) * DAY_S)
            self.day_cost[day] = self.day_cost.get(day, 0.0) + machine.price * (end - t) / 3600
            day, t = day + 1, end
        machine.billed_since = None

    def spend_today(self) -> float:
        day = int(self.t // DAY_S)
        return self.day_cost.get(day, 0.0) + sum(
            m.price * (self.t - max(m.billed_since, day * DAY_S)) / 3600
            for m in self.billed()
            if m.billed_since is not None
        )

    def spend_total(self) -> float:
        return self.closed_cost + sum(
            m.price * (self.t - m.billed_since) / 3600
            for m in self.billed()
            if m.billed_since is not None
        )

    # --- machines -------------------------------------------------------------------------
    def new_machine(self, size: str | None = None, price: float | None = None) -> _Machine:
        machine = _Machine(
            id=f"sim-{len(self.machines) + 1:04d}",
            size=size or self.size,
            price=self.price if price is None else price,
        )
        self.machines[machine.id] = machine
        return machine

    def start(self, machine: _Machine, boot_s: float) -> None:
        assert machine.state == "stopped"
        machine.state, machine.since, machine.billed_since = "starting", self.t, self.t
        self.push(self.t + boot_s, "boot", (machine.id, machine.epoch))
        self.peak = max(self.peak, len(self.billed()))

    def stop(self, machine: _Machine) -> None:
        if machine.billed_since is not None:
            self._bill(machine, self.t)
        machine.state, machine.since, machine.worker = "stopped", self.t, None
        machine.epoch += 1

    def _idle(self, worker: _Worker, machine: _Machine) -> None:
        worker.job, worker.idle_since = None, self.t
        if self.idle_exit_s > 0:
            self.push(self.t + self.idle_exit_s, "idle_exit", (machine.id, machine.epoch, self.t))

    def dispatch(self) -> None:
        for machine in sorted(self.machines.values(), key=lambda m: m.id):
            if not self.queued:
                return
            worker = machine.worker
            if machine.state != "started" or worker is None or worker.job or worker.draining:
                continue
            job = self.previews.popleft() if self.previews else self.separates.popleft()
            worker.job, worker.idle_since = job, None
            self.waits.append(self.t - job.at_s)
            self.push(self.t + self.model.service_s(job), "done", (machine.id, machine.epoch))

    # --- the loop -------------------------------------------------------------------------
    def run(self, until: float, horizon: float) -> None:
        """Process events up to `until`, then on while jobs are left, up to `horizon`."""
        while self.events:
            at, _, kind, data = self.events[0]
            if at > horizon or (at > until and self.queued == 0 and self.busy() == 0):
                break
            heapq.heappop(self.events)
            self.t = at
            self.handle(kind, data)
        self.t = max(self.t, until) if self.queued == 0 and self.busy() == 0 else self.t
        for machine in self.billed():
            self._bill(machine, self.t)

    def busy(self) -> int:
        return sum(1 for m in self.machines.values() if m.worker and m.worker.job)

    def handle(self, kind: str, data: Any) -> None:
        if kind == "arrive":
            (self.previews if data.kind == "preview" else self.separates).append(data)
        elif kind == "boot":
            machine = self.machines[data[0]]
            if machine.epoch != data[1] or machine.state != "starting":
                return
            machine.state, machine.since = "started", self.t
            machine.worker = _Worker(
                uuid.UUID(int=self.rng.getrandbits(128)), machine.id, self.t, self.t
            )
            self._idle(machine.worker, machine)
        elif kind == "done":
            machine = self.machines[data[0]]
            if machine.epoch != data[1] or machine.worker is None:
                return
            self.done += 1
            self._idle(machine.worker, machine)
        elif kind == "idle_exit":
            machine = self.machines[data[0]]
            worker = machine.worker
            if (
                machine.epoch == data[1]
                and worker is not None
                and worker.job is None
                and worker.idle_since == data[2]
            ):
                self.stop(machine)  # the worker exits after its idle timeout; the machine stops
        elif kind == "tick":
            data()
        self.on_change()
        self.dispatch()

    def result(self, name: str, violations: list[str] | None = None, plans: int = 0) -> SimResult:
        return SimResult(
            name=name,
            cost_usd=self.closed_cost,
            machine_hours=self.closed_seconds / 3600,
            waits=self.waits,
            jobs=self.jobs,
            done=self.done,
            peak_machines=self.peak,
            daily_cost=dict(self.day_cost),
            violations=violations or [],
            plans=plans,
        )


def _end(arrivals: Sequence[Arrival]) -> float:
    return max(DAY_S, arrivals[-1].at_s if arrivals else 0.0)


# --- strategies -------------------------------------------------------------------------------


def simulate_policy(
    arrivals: Sequence[Arrival], settings: Settings, model: SimModel, *, seed: int = 1
) -> SimResult:
    """The scaler's own plan() every scaler_interval; violations of its invariants are listed."""
    size = settings.machine_size
    engine = _Engine(
        arrivals,
        model,
        size=size,
        price=hourly_price(settings, size),
        idle_exit_s=settings.worker_idle_exit,
        seed=seed,
    )
    violations: list[str] = []
    history: dict[str, float | None] = {"up": None, "down": None}
    plans = 0
    end = _end(arrivals)
    horizon = end + model.drain_horizon_s

    def at(seconds: float) -> datetime:
        return SIM_START + timedelta(seconds=seconds)

    def fleet() -> Fleet:
        items = []
        for m in sorted(engine.machines.values(), key=lambda m: m.id):
            worker = None
            if m.worker is not None:
                w = m.worker
                worker = Worker(
                    id=w.id,
                    machine_id=m.id,
                    provider="sim",
                    gpu=None,
                    region=None,
                    state="busy" if w.job else "idle",
                    draining=w.draining,
                    current_job_id=uuid.UUID(int=1) if w.job else None,
                    started_at=at(w.started_at),
                    last_heartbeat_at=at(engine.t),
                    idle_since=at(w.idle_since) if w.idle_since is not None else None,
                    stopped_at=None,
                )
            items.append(
                FleetMachine(
                    Machine(m.id, m.state, m.size, m.price, state_since=at(m.since)), worker
                )
            )
        return Fleet(
            tuple(items),
            size,
            last_scale_up_at=at(history["up"]) if history["up"] is not None else None,
            last_scale_down_at=at(history["down"]) if history["down"] is not None else None,
        )

    def tick() -> None:
        nonlocal plans
        oldest = [q[0].at_s for q in (engine.previews, engine.separates) if q]
        backlog = Backlog.of(
            separate=len(engine.separates),
            preview=len(engine.previews),
            running=engine.busy(),
            oldest=at(min(oldest)) if oldest else None,
        )
        today = engine.spend_today()
        rate = sum(m.price for m in engine.billed())
        spend = Spend(today_usd=today, month_usd=engine.spend_total(), hourly_usd=rate)
        decided = plan(backlog, fleet(), spend, settings, at(engine.t))
        plans += 1
        apply(decided, today)
        if engine.t + settings.scaler_interval <= horizon:
            engine.push(engine.t + settings.scaler_interval, "tick", tick)

    def apply(decided: Plan, today: float) -> None:
        for action in decided.actions:
            machine = engine.machines.get(action.machine_id or "")
            if action.kind in ("drain", "undrain"):
                assert machine is not None and machine.worker is not None
                machine.worker.draining = action.kind == "drain"
            elif action.kind == "stop":
                assert machine is not None
                if machine.worker is not None and machine.worker.job is not None:
                    violations.append(f"t={engine.t:.0f}s stop of busy worker on {machine.id}")
                    continue
                engine.stop(machine)
            else:
                if machine is None:
                    machine = engine.new_machine(action.size, action.hourly_usd)
                    boot = model.create_boot_s
                else:
                    boot = model.boot_s
                rate_after = sum(m.price for m in engine.billed()) + machine.price
                ahead = rate_after * settings.budget_lookahead / 3600
                if today + ahead > settings.daily_budget_usd + 1e-9:
                    violations.append(
                        f"t={engine.t:.0f}s start with ${today:.2f} spent + ${ahead:.2f} "
                        f"ahead > daily budget ${settings.daily_budget_usd:.2f}"
                    )
                engine.start(machine, boot)
            if action.direction in ("up", "down"):
                history[action.direction] = engine.t
        billed = engine.billed()
        if len(billed) > settings.max_machines:
            violations.append(f"t={engine.t:.0f}s {len(billed)} machines > max_machines")
        rate = sum(m.price for m in billed)
        if rate > settings.max_hourly_usd + 1e-9:
            violations.append(f"t={engine.t:.0f}s ${rate:.4f}/h > max_hourly_usd")

    engine.push(0.0, "tick", tick)
    engine.run(end, horizon)
    result = engine.result("policy (this scaler)", violations, plans)
    longest = max((model.service_s(a) for a in arrivals), default=0.0)
    allowance = (
        settings.max_machines
        * hourly_price(settings, size)
        * (longest + settings.scaler_interval)
        / 3600
    )
    for day, cost in result.daily_cost.items():
        if cost > settings.daily_budget_usd + allowance + 1e-6:
            result.violations.append(
                f"day {day}: ${cost:.2f} > daily budget ${settings.daily_budget_usd:.2f} "
                f"+ ${allowance:.2f} for jobs running when it was reached"
            )
    return result


def simulate_always_on(
    arrivals: Sequence[Arrival], settings: Settings, model: SimModel, machines: int
) -> SimResult:
    size = settings.machine_size
    engine = _Engine(
        arrivals, model, size=size, price=hourly_price(settings, size), idle_exit_s=0, seed=1
    )
    for _ in range(machines):
        engine.start(engine.new_machine(), 0.0)
    end = _end(arrivals)
    engine.run(end, end + model.drain_horizon_s)
    return engine.result(f"always-on {machines}")


def _on_demand(
    arrivals: Sequence[Arrival],
    model: SimModel,
    *,
    name: str,
    size: str,
    price: float,
    boot_s: float,
    idle_s: float,
    limit: int | None,
) -> SimResult:
    engine = _Engine(arrivals, model, size=size, price=price, idle_exit_s=idle_s, seed=1)

    def react() -> None:
        free = sum(
            1
            for m in engine.machines.values()
            if m.state == "starting" or (m.worker is not None and m.worker.job is None)
        )
        need = engine.queued - free
        stopped = sorted(
            (m for m in engine.machines.values() if m.state == "stopped"), key=lambda m: m.id
        )
        while need > 0 and (limit is None or len(engine.billed()) < limit):
            engine.start(stopped.pop(0) if stopped else engine.new_machine(), boot_s)
            need -= 1

    engine.on_change = react
    end = _end(arrivals)
    engine.run(end, end + model.drain_horizon_s)
    return engine.result(name)


def simulate_scale_to_zero(
    arrivals: Sequence[Arrival], settings: Settings, model: SimModel
) -> SimResult:
    size = settings.machine_size
    return _on_demand(
        arrivals,
        model,
        name=f"scale-to-zero ({fmt_duration(model.scale_to_zero_idle_s)} idle)",
        size=size,
        price=hourly_price(settings, size),
        boot_s=model.boot_s,
        idle_s=model.scale_to_zero_idle_s,
        limit=settings.max_machines,
    )


def simulate_serverless(
    arrivals: Sequence[Arrival], settings: Settings, model: SimModel
) -> SimResult:
    price = model.serverless_hourly_usd
    if price is None:
        price = 2 * hourly_price(settings, settings.machine_size)
    return _on_demand(
        arrivals,
        model,
        name=f"serverless (per-second, {fmt_duration(model.cold_start_s)} cold start)",
        size="serverless",
        price=price,
        boot_s=model.cold_start_s,
        idle_s=model.serverless_idle_s,
        limit=None,
    )


def compare(
    arrivals: Sequence[Arrival],
    settings: Settings,
    model: SimModel,
    *,
    always_on: int,
    seed: int = 1,
) -> list[SimResult]:
    return [
        simulate_policy(arrivals, settings, model, seed=seed),
        simulate_always_on(arrivals, settings, model, always_on),
        simulate_scale_to_zero(arrivals, settings, model),
        simulate_serverless(arrivals, settings, model),
    ]


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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trace", metavar="CSV", help="arrivals: arrival_s,audio_s[,kind]")
    parser.add_argument("--seed", type=int, default=1, help="seed of the built-in day")
    parser.add_argument("--jobs", type=int, default=600, help="built-in day: jobs besides bursts")
    parser.add_argument("--bursts", type=int, default=3, help="built-in day: number of spikes")
    parser.add_argument("--burst-jobs", type=int, default=150, help="built-in day: jobs per spike")
    parser.add_argument("--boot", type=_duration, default=45.0, help="stopped machine to worker")
    parser.add_argument("--create-boot", type=_duration, default=90.0, help="new machine to worker")
    parser.add_argument("--rtf", type=float, default=0.1, help="processing s per audio s")
    parser.add_argument("--job-overhead", type=_duration, default=5.0, help="per-job fixed time")
    parser.add_argument("--always-on", type=int, default=None, help="N (default max_machines)")
    parser.add_argument("--cold-start", type=_duration, default=30.0, help="serverless start")
    parser.add_argument(
        "--serverless-usd-per-hour",
        type=float,
        default=None,
        help="serverless price per busy hour (default: 2x the machine price)",
    )


def run_cli(
    args: argparse.Namespace, settings: Settings, *, out: TextIO, trace: Path | None
) -> int:
    arrivals = (
        load_trace(trace)
        if trace
        else builtin_day(args.seed, jobs=args.jobs, bursts=args.bursts, burst_jobs=args.burst_jobs)
    )
    model = SimModel(
        boot_s=args.boot,
        create_boot_s=args.create_boot,
        rtf=args.rtf,
        job_overhead_s=args.job_overhead,
        cold_start_s=args.cold_start,
        serverless_hourly_usd=args.serverless_usd_per_hour,
    )
    always_on = args.always_on if args.always_on is not None else max(1, settings.max_machines)
    results = compare(arrivals, settings, model, always_on=always_on, seed=args.seed)
    price = hourly_price(settings, settings.machine_size)
    source = str(trace) if trace else f"built-in day (seed {args.seed})"
    print(
        f"{len(arrivals)} jobs from {source}; machine {settings.machine_size} ${price:.4f}/h, "
        f"max {settings.max_machines} machines, ${settings.max_hourly_usd:.2f}/h cap, "
        f"${settings.daily_budget_usd:.2f}/day budget; boot {fmt_duration(model.boot_s)}, "
        f"rtf {model.rtf:g}",
        file=out,
    )
    print(format_results(results), file=out)
    for violation in results[0].violations:
        print(f"VIOLATION: {violation}", file=out)
    return 1 if results[0].violations else 0
