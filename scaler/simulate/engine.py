"""The discrete-event engine: jobs, machines and billing. Strategies decide when machines start
and stop (scaler/simulate/strategies.py)."""

from __future__ import annotations

import heapq
import math
import random
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from scaler.simulate.traces import Arrival

DAY_S = 86400.0
SIM_START = datetime(2026, 1, 5, tzinfo=UTC)  # a Monday, midnight UTC


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


class Engine:
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


def end_of(arrivals: Sequence[Arrival]) -> float:
    return max(DAY_S, arrivals[-1].at_s if arrivals else 0.0)
