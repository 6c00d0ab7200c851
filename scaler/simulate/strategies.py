"""The strategies compared on the same arrivals: this scaler's policy, always-on, scale-to-zero
and per-second serverless."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta

from app.queue import Worker
from app.settings import Settings
from scaler.model import Backlog, Fleet, FleetMachine, Machine, Plan, Spend
from scaler.policy import fmt_duration, hourly_price, plan
from scaler.simulate.engine import SIM_START, Engine, SimModel, SimResult, end_of
from scaler.simulate.traces import Arrival

# --- strategies -------------------------------------------------------------------------------


def simulate_policy(
    arrivals: Sequence[Arrival], settings: Settings, model: SimModel, *, seed: int = 1
) -> SimResult:
    """The scaler's own plan() every scaler_interval; violations of its invariants are listed."""
    size = settings.machine_size
    engine = Engine(
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
    end = end_of(arrivals)
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
    engine = Engine(
        arrivals, model, size=size, price=hourly_price(settings, size), idle_exit_s=0, seed=1
    )
    for _ in range(machines):
        engine.start(engine.new_machine(), 0.0)
    end = end_of(arrivals)
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
    engine = Engine(arrivals, model, size=size, price=price, idle_exit_s=idle_s, seed=1)

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
    end = end_of(arrivals)
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
