"""Property-based: whatever the backlog, fleet, spend and settings, no plan crosses a ceiling
or a budget, or stops a worker that holds a job; and neither does a replayed day."""

from __future__ import annotations

import random
from typing import Any

from hypothesis import HealthCheck, given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st

from app.settings import Settings
from scaler.model import FleetMachine
from scaler.policy import plan
from scaler.simulate import SimModel, builtin_day, simulate_policy
from tests.scaler_support import NOW, backlog, check_plan, fleet, machine, settings, spend, worker

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
