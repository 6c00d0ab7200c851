"""Builders for the scaler's policy inputs, shared by the scaler tests."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from app.clock import FakeClock
from app.db import Connection
from app.queue import Queue, Worker
from app.settings import Settings, load_settings
from scaler.model import Backlog, Fleet, FleetMachine, Machine, Plan, Spend
from scaler.providers.fly import FlyProvider
from scaler.reconcile import Scaler
from tests.fake_fly import FakeFly
from tests.worker_helpers import libpq_url

NOW = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)
PRICE = 0.3556  # performance-8x

# A worker machine template as the tests create machines from it (valid per the spec).
TEMPLATE: dict[str, Any] = {
    "region": "ord",
    "config": {
        "image": "registry.fly.io/stemfleet-worker:test",
        "guest": {"cpu_kind": "performance", "cpus": 8, "memory_mb": 16384},
        "env": {"STEMFLEET_MODEL": "htdemucs", "STEMFLEET_WORKER_IDLE_EXIT": "10m"},
        "restart": {"policy": "no"},
        "auto_destroy": False,
        "metadata": {"team": "audio"},
        "stop_config": {"signal": "SIGTERM", "timeout": "30s"},
    },
}

BASE_SETTINGS: dict[str, Any] = {
    "provider": "fly",
    "min_machines": 0,
    "max_machines": 4,
    "max_hourly_usd": 10.0,
    "daily_budget_usd": 100.0,
    "monthly_budget_usd": 1000.0,
    "scale_rules": "10:1,50:5",
    "preview_weight": 5.0,
    "scale_down_idle": 600.0,
    "scale_up_cooldown": 60.0,
    "scale_down_cooldown": 120.0,
    "transient_timeout": 300.0,
    "machine_size": "performance-8x",
    "scaler_interval": 30.0,
    "budget_lookahead": 900.0,
}


def settings(**overrides: Any) -> Settings:
    return load_settings(**{**BASE_SETTINGS, **overrides})


def ago(seconds: float) -> datetime:
    return NOW - timedelta(seconds=seconds)


def machine(
    machine_id: str,
    state: str = "started",
    *,
    since: float = 3600.0,
    size: str = "performance-8x",
    price: float = PRICE,
    stopped_price: float = 0.0,
    booted: float | None = None,
) -> Machine:
    """A machine in `state` (an interface state) for `since` seconds, its current boot begun
    `booted` seconds ago (None: when it entered a starting/started state)."""
    return Machine(
        machine_id,
        state,
        size,
        price,
        state_since=ago(since),
        stopped_hourly_usd=stopped_price,
        booted_at=ago(booted) if booted is not None else None,
    )


def worker(
    machine_id: str,
    state: str = "idle",
    *,
    idle: float = 0.0,
    draining: bool = False,
    job: bool = False,
    heartbeat: float = 5.0,
    started: float = 3000.0,
) -> Worker:
    holds = job or state == "busy"
    return Worker(
        id=uuid.uuid5(uuid.NAMESPACE_DNS, machine_id),
        machine_id=machine_id,
        provider="fly",
        gpu=None,
        region="ord",
        state=state,  # type: ignore[arg-type]
        draining=draining,
        current_job_id=uuid.uuid5(uuid.NAMESPACE_URL, machine_id) if holds else None,
        started_at=ago(started),
        last_heartbeat_at=ago(min(heartbeat, started)),
        idle_since=None if holds else ago(idle),
        stopped_at=ago(min(heartbeat, started)) if state == "stopped" else None,
    )


def up(machine_id: str, state: str = "idle", **kw: Any) -> FleetMachine:
    """A started machine with a live worker."""
    return FleetMachine(machine(machine_id), worker(machine_id, state, **kw))


def fleet(
    *machines: FleetMachine | Machine,
    last_up: float | None = None,
    last_down: float | None = None,
    create_size: str = "performance-8x",
) -> Fleet:
    items = tuple(m if isinstance(m, FleetMachine) else FleetMachine(m) for m in machines)
    return Fleet(
        items,
        create_size,
        last_scale_up_at=ago(last_up) if last_up is not None else None,
        last_scale_down_at=ago(last_down) if last_down is not None else None,
    )


def spend(today: float = 0.0, month: float | None = None, hourly: float = 0.0) -> Spend:
    return Spend(today_usd=today, month_usd=today if month is None else month, hourly_usd=hourly)


def backlog(separate: int = 0, preview: int = 0, running: int = 0) -> Backlog:
    return Backlog.of(separate=separate, preview=preview, running=running, oldest=ago(120))


def of_this_boot(fm: FleetMachine) -> Worker | None:
    """The machine's worker row if it belongs to the machine's current boot (registered or heard
    from since the boot began)."""
    w, boot = fm.worker, fm.machine.boot
    if w is None or boot is None:
        return w
    return w if w.started_at >= boot or w.last_heartbeat_at >= boot else None


def rate_of(the_fleet: Fleet) -> float:
    """The fleet's $/h: billed machines at their running price, the others at their stopped one."""
    return sum(fm.machine.rate_usd for fm in the_fleet.machines)


def check_plan(result: Plan, the_fleet: Fleet, the_settings: Settings, the_spend: Spend) -> None:
    """Invariants every plan keeps, whatever its inputs."""
    by_id = {fm.machine.id: fm for fm in the_fleet.machines}
    billed = sum(fm.machine.billed for fm in the_fleet.machines)
    for action in result.actions:
        assert action.reason.strip(), action
        if action.kind == "destroy":  # only what cannot come back
            assert by_id[action.machine_id or ""].machine.state == "failed", action
        if action.kind == "stop":
            w = of_this_boot(by_id[action.machine_id or ""])
            assert w is None or (w.current_job_id is None and w.state != "busy"), action
        if action.kind == "undrain":  # taking a worker back must fit both ceilings
            assert billed <= the_settings.max_machines, action
            assert rate_of(the_fleet) <= the_settings.max_hourly_usd + 1e-9, action
    starts = result.starts
    if starts:
        billed_after = result.billed + len(starts)
        assert billed_after <= the_settings.max_machines
        assert result.hourly_usd_after <= the_settings.max_hourly_usd + 1e-9
        ahead = result.hourly_usd_after * the_settings.budget_lookahead / 3600
        assert the_spend.today_usd + ahead <= the_settings.daily_budget_usd + 1e-9
        assert the_spend.month_usd + ahead <= the_settings.monthly_budget_usd + 1e-9
        started = [a.machine_id for a in starts if a.machine_id]
        assert len(started) == len(set(started))


class Sleeps:
    """A provider's sleep in tests: records each delay and moves the fake clock instead of
    waiting."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock, self.delays = clock, []  # type: ignore[var-annotated]

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        self.clock.advance(seconds)


def fly_settings(fake: FakeFly, db_url: str = "", **overrides: Any) -> Settings:
    """Settings for the Fly provider talking to `fake` (and the database at `db_url`)."""
    return settings(
        provider="fly",
        fly_api_url=fake.url,
        fly_api_token=fake.token,
        fly_app=fake.app,
        database_url=libpq_url(db_url) if db_url else "",
        **overrides,
    )


def fly_scaler(fake: FakeFly, clock: FakeClock, db_url: str, **overrides: Any) -> Scaler:
    """A scaler on the fake Fly whose waits move the fake clock instead of sleeping."""
    the_settings = fly_settings(fake, db_url, **overrides)
    fly = FlyProvider(
        the_settings, template=TEMPLATE, clock=clock, sleep=clock.advance, rng=random.Random(5)
    )
    return Scaler(the_settings, fly, database_url=db_url, clock=clock)


def apply_plan(result: Plan, the_fleet: Fleet) -> Fleet:
    """The fleet as the next run sees it, the world standing still otherwise: drains and
    undrains applied, stopped machines stopped (their workers gone), started ones started."""
    flips = {a.machine_id: a.kind == "drain" for a in result.of_kind("drain", "undrain")}
    stopped = {a.machine_id for a in result.of_kind("stop", "destroy")}
    started = {a.machine_id for a in result.of_kind("start")}
    items = []
    for fm in the_fleet.machines:
        m, w = fm.machine, fm.worker
        if m.id in stopped:
            items.append(FleetMachine(machine(m.id, "stopped", since=0, price=m.hourly_usd)))
            continue
        if m.id in started:
            m = machine(m.id, "started", since=0, price=m.hourly_usd)
        if w is not None and m.id in flips:
            busy = w.current_job_id is not None or w.state == "busy"
            w = worker(m.id, w.state, draining=flips[m.id], job=busy)
        items.append(FleetMachine(m, w))
    return fleet(*items, create_size=the_fleet.create_size)


def enqueue_many(conn: Connection, queue: Queue, user_id: UUID, count: int, prefix: str) -> None:
    """`count` jobs of `user_id`, inputs `inputs/<prefix><i>.wav`, in one statement: the same
    queue.enqueue per job as the API calls, one round trip for all (for tests that queue
    thousands)."""
    if count == 0:
        return
    created = conn.execute(
        "select count(*) filter (where (r).created) as n from ("
        " select queue.enqueue(p_user_id => %(user)s,"
        " p_input_key => 'inputs/' || %(prefix)s || i || '.wav', p_now => %(now)s) as r"
        " from generate_series(0, %(count)s - 1) as i) as e",
        {"user": user_id, "prefix": prefix, "count": count, "now": queue.clock.db_now()},
    ).fetchone()
    assert created == {"n": count}
