"""Property-based: whatever the backlog, fleet, spend and settings, no plan crosses a ceiling
or a budget, or stops a worker that holds a job; and neither does a replayed day."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime
from typing import Any

from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st

from app.clock import FakeClock
from app.db import Connection, connect
from app.queue import Queue, Worker
from app.settings import Settings
from scaler.model import FleetMachine
from scaler.policy import plan
from scaler.simulate import SimModel, builtin_day, simulate_policy
from tests.fake_fly import FakeFly
from tests.scaler_support import (
    NOW,
    PRICE,
    apply_plan,
    backlog,
    check_plan,
    enqueue_many,
    fleet,
    fly_scaler,
    machine,
    settings,
    spend,
    worker,
)

PROPERTY_USER = uuid.UUID("00000000-0000-4000-8000-0000000005f4")

SIZES = ["shared-cpu-1x", "performance-2x", "performance-8x", "performance-16x"]
STATES = ["starting", "starting", "started", "started", "started", "stopping", "stopped", "failed"]
STATES += ["gone"]
WORKER_STATES = [None, "idle", "idle", "busy", "busy", "lost", "stopped"]


@st.composite
def scaler_settings(draw: Any) -> Settings:
    max_machines = draw(st.integers(0, 12))
    return settings(
        machine_size=draw(st.sampled_from(SIZES)),
        max_machines=max_machines,
        min_machines=draw(st.integers(0, max_machines)),
        max_hourly_usd=draw(st.floats(0, 6, allow_nan=False)),
        daily_budget_usd=draw(st.floats(0, 60, allow_nan=False)),
        monthly_budget_usd=draw(st.floats(0, 600, allow_nan=False)),
        budget_lookahead=draw(st.sampled_from([0.0, 60.0, 900.0, 3600.0])),
        scale_rules=draw(st.sampled_from(["10:1,50:5", "0:1", "3:2,20:8", "100:1"])),
        preview_weight=draw(st.floats(0, 10, allow_nan=False)),
        scale_up_cooldown=draw(st.sampled_from([0.0, 60.0, 600.0])),
        scale_down_cooldown=draw(st.sampled_from([0.0, 120.0])),
        scale_down_idle=draw(st.sampled_from([0.0, 600.0])),
    )


@st.composite
def fleets(draw: Any, the_settings: Settings) -> Any:
    prices = the_settings.machine_prices
    items = []
    for n in range(draw(st.integers(0, 14))):
        machine_id = f"m{n:02d}"
        size = draw(st.sampled_from(SIZES))
        since = draw(st.floats(0, 3000))
        m = machine(
            machine_id,
            draw(st.sampled_from(STATES)),
            since=since,
            size=size,
            price=prices[size],
            stopped_price=draw(st.sampled_from([0.0, 0.0, 0.01, 0.2])),
            # restarted machines: a boot after the state change, before it, or unknown
            booted=draw(st.none() | st.floats(0, since)),
        )
        state = draw(st.sampled_from(WORKER_STATES))
        w = None
        if state is not None:
            w = worker(
                machine_id,
                state,
                idle=draw(st.floats(0, 3000)),
                draining=draw(st.booleans()),
                job=state in ("busy", "lost") and draw(st.booleans()),
                heartbeat=draw(st.floats(0, 900)),
                # rows of an earlier boot (registered and last heard from before it) included
                started=draw(st.sampled_from([3000.0, 3000.0, 200.0, 30.0])),
            )
        items.append(FleetMachine(m, w))
    last_up = draw(st.none() | st.floats(0, 900))
    last_down = draw(st.none() | st.floats(0, 900))
    return fleet(
        *items, last_up=last_up, last_down=last_down, create_size=the_settings.machine_size
    )


@st.composite
def situations(draw: Any) -> Any:
    the_settings = draw(scaler_settings())
    the_fleet = draw(fleets(the_settings))
    the_backlog = backlog(
        separate=draw(st.sampled_from([0, 1, 5, 11, 49, 51, 300, 10_000])),
        preview=draw(st.integers(0, 600)),
        running=draw(st.integers(0, 14)),
    )
    today = draw(st.floats(0, 80, allow_nan=False))
    the_spend = spend(today=today, month=today + draw(st.floats(0, 600, allow_nan=False)))
    return the_backlog, the_fleet, the_spend, the_settings


@hyp_settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(situations(), st.randoms(use_true_random=False))
def test_no_plan_crosses_a_ceiling_or_stops_a_busy_worker(case: Any, rng: random.Random) -> None:
    the_backlog, the_fleet, the_spend, the_settings = case
    result = plan(the_backlog, the_fleet, the_spend, the_settings, NOW)
    check_plan(result, the_fleet, the_settings, the_spend)
    if result.budget_exhausted:
        assert result.starts == [] and result.of_kind("undrain") == []
    shuffled = list(the_fleet.machines)
    rng.shuffle(shuffled)
    again = plan(
        the_backlog,
        fleet(
            *shuffled,
            create_size=the_fleet.create_size,
            last_up=None
            if the_fleet.last_scale_up_at is None
            else (NOW - the_fleet.last_scale_up_at).total_seconds(),
            last_down=None
            if the_fleet.last_scale_down_at is None
            else (NOW - the_fleet.last_scale_down_at).total_seconds(),
        ),
        the_spend,
        the_settings,
        NOW,
    )
    assert again == result


@hyp_settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    max_machines=st.integers(1, 8),
    min_machines=st.integers(0, 2),
    max_hourly=st.floats(0.05, 4.0),
    daily=st.floats(0.0, 8.0),
    burst=st.sampled_from([0, 400, 3000]),
)
def test_a_replayed_day_keeps_every_ceiling_and_never_stops_a_busy_worker(
    seed: int, max_machines: int, min_machines: int, max_hourly: float, daily: float, burst: int
) -> None:
    the_settings = settings(
        max_machines=max_machines,
        min_machines=min(min_machines, max_machines),
        max_hourly_usd=max_hourly,
        daily_budget_usd=daily,
        scale_up_cooldown=30.0,
        scale_down_cooldown=60.0,
        scale_down_idle=300.0,
        worker_idle_exit=900.0,
        scaler_interval=60.0,
    )
    arrivals = builtin_day(seed, jobs=150, bursts=1 if burst else 0, burst_jobs=burst, hours=8)
    result = simulate_policy(arrivals, the_settings, SimModel(drain_horizon_s=3600), seed=seed)
    assert result.violations == []
    assert result.peak_machines <= max_machines
    assert result.done <= result.jobs


# --- whole runs against a faulty Fly (real HTTP, real Postgres) -------------------------------

FAULTS = ["none", "none", "lost 500", "lost 502", "lost dropped", "429", "list 500", "kill", "fail"]


class World:
    """The fake Fly's machines and our workers on them: a worker registers some time after its
    machine starts (or not yet), claims jobs, heartbeats; a killed machine leaves its worker's row
    behind as it was."""

    def __init__(self, fake: FakeFly, queue: Queue, conn: Connection) -> None:
        self.fake, self.queue, self.conn = fake, queue, conn
        self.workers: dict[str, Worker] = {}  # machine id -> the worker of its current boot

    def boot(self, machine_id: str) -> datetime:
        events = self.fake.machines[machine_id].data["events"]
        stamp = max(e["timestamp"] for e in events if e["type"] in ("launch", "start"))
        return datetime.fromtimestamp(stamp / 1000, UTC)

    def step(self, data: Any) -> None:
        for machine_id, m in sorted(self.fake.machines.items()):
            worker = self.workers.get(machine_id)
            if m.data["state"] != "started":
                continue
            if worker is None or worker.started_at < self.boot(machine_id):
                if data.draw(st.booleans(), label=f"{machine_id} registers"):
                    worker = self.queue.register_worker(
                        self.conn, machine_id=machine_id, provider="fly"
                    )
                    self.workers[machine_id] = worker
                continue
            worker = self.queue.worker_heartbeat(self.conn, worker.id)
            idle = worker.state == "idle" and not worker.draining
            if idle and data.draw(st.booleans(), label=f"{machine_id} claims"):
                self.queue.claim(self.conn, worker.id, lease=3600)


@hyp_settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    phases=[Phase.explicit, Phase.reuse, Phase.generate],  # each example is whole runs: no shrink
)
@given(data=st.data())
def test_runs_against_a_faulty_fly_keep_the_ceilings_and_make_one_machine_per_create(
    data: Any, template_db: str, fresh_database: Any
) -> None:
    url = fresh_database(template_db)
    clock = FakeClock()
    queue = Queue(clock)
    fake = FakeFly(clock)
    fake.start()
    max_machines = data.draw(st.integers(1, 4), label="max_machines")
    max_hourly = data.draw(st.sampled_from([0.4, 0.75, 1.1, 2.0]), label="max_hourly_usd")
    scaler = fly_scaler(
        fake,
        clock,
        url,
        max_machines=max_machines,
        max_hourly_usd=max_hourly,
        min_machines=data.draw(st.integers(0, 1), label="min_machines"),
        scale_up_cooldown=0,
        scale_down_cooldown=0,
        scale_down_idle=0,
        transient_timeout=180,
        fly_max_retries=3,
    )
    try:
        with connect(url) as conn:
            world = World(fake, queue, conn)
            queued = data.draw(st.sampled_from([0, 3, 60, 400]), label="queued")
            enqueue_many(conn, queue, PROPERTY_USER, queued, "")
            planned = 0
            for _ in range(7):
                clock.advance(1)  # faults strike after the workers' last heartbeats
                fault = data.draw(st.sampled_from(FAULTS), label="fault")
                started = sorted(
                    k for k, m in fake.machines.items() if m.data["state"] == "started"
                )
                if fault.startswith("lost"):
                    status = None if fault == "lost dropped" else int(fault.split()[1])
                    fake.lose_create_answers(times=3, status=status)
                elif fault == "429":
                    fake.fail(429, times=2, method="POST", path="/machines$", retry_after="1")
                elif fault == "list 500":
                    fake.fail(500, times=2, method="GET", path="/machines$")
                elif fault in ("kill", "fail") and started:
                    victim = data.draw(st.sampled_from(started), label="victim")
                    if fault == "kill":  # stopped under its worker, whose row stays as it was
                        fake.machines[victim].data["state"] = "stopped"
                    else:
                        fake.fail_machine(victim)
                outcome = scaler.run_once()
                planned += sum(
                    r.action.kind == "create" and not r.detail.startswith("skipped")
                    for r in outcome.results
                )
                assert fake.violations == []
                # One planned create makes at most one machine, whatever happened to its answer.
                assert len(fake.created) <= planned
                billed = [
                    m
                    for m in fake.machines.values()
                    if m.data["state"] not in ("stopped", "failed")
                ]
                assert len(billed) <= max_machines
                assert len(billed) * PRICE <= max_hourly + 1e-9
                for result in outcome.results:
                    if result.action.kind != "stop" or not result.ok:
                        continue
                    machine_id = result.action.machine_id
                    holding = conn.execute(
                        "select count(*) as n from public.jobs j join public.workers w "
                        "on w.id = j.worker_id where j.status = 'running' and w.machine_id = %s "
                        "and w.state <> 'stopped'",
                        (machine_id,),
                    ).fetchone()
                    assert holding == {"n": 0}, result.action
                    # a freshly (re)started machine is never stopped as lost or stuck
                    boot_age = (clock.now() - world.boot(machine_id or "")).total_seconds()
                    assert result.action.direction != "repair" or boot_age > 180, result.action
                clock.advance(61)
                fake.tick(2)
                world.step(data)
    finally:
        fake.stop()


@hyp_settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    busy=st.integers(0, 8),
    idle=st.integers(0, 4),
    draining=st.integers(0, 4),
    max_machines=st.integers(0, 6),
    max_hourly=st.sampled_from([0.0, 0.3, 0.5, 0.75, 1.0, 2.0]),
)
def test_a_fleet_over_lowered_ceilings_stays_under_them_while_work_is_queued(
    busy: int, idle: int, draining: int, max_machines: int, max_hourly: float
) -> None:
    members = [FleetMachine(machine(f"b{i}"), worker(f"b{i}", "busy")) for i in range(busy)]
    members += [FleetMachine(machine(f"i{i}"), worker(f"i{i}", "idle")) for i in range(idle)]
    members += [
        FleetMachine(machine(f"d{i}"), worker(f"d{i}", "busy", draining=True))
        for i in range(draining)
    ]
    the_fleet = fleet(*members)
    the_settings = settings(
        max_machines=max_machines, max_hourly_usd=max_hourly, scale_up_cooldown=0
    )
    queued = backlog(separate=10_000, running=busy + draining)
    for _ in range(3):
        result = plan(queued, the_fleet, spend(), the_settings, NOW)
        check_plan(result, the_fleet, the_settings, spend())
        the_fleet = apply_plan(result, the_fleet)
    kept = [
        fm
        for fm in the_fleet.machines
        if fm.machine.billed and (fm.worker is None or not fm.worker.draining)
    ]
    assert len(kept) <= max_machines
    assert sum(fm.machine.hourly_usd for fm in kept) <= max_hourly + 1e-9
