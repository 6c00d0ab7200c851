"""The scaling policy, rule by rule: plan() is pure, so each case is a table row of inputs."""

from __future__ import annotations

import random

import pytest

from scaler.model import FleetMachine, Plan
from scaler.policy import plan
from tests.scaler_support import (
    NOW,
    PRICE,
    backlog,
    check_plan,
    fleet,
    machine,
    settings,
    spend,
    up,
    worker,
)


def run(b=None, f=None, s=None, **overrides) -> Plan:  # type: ignore[no-untyped-def]
    the_settings = settings(**overrides)
    the_fleet = f if f is not None else fleet()
    the_spend = s if s is not None else spend()
    result = plan(b if b is not None else backlog(), the_fleet, the_spend, the_settings, NOW)
    check_plan(result, the_fleet, the_settings, the_spend)
    return result


def kinds(result: Plan) -> list[tuple[str, str | None]]:
    return [(a.kind, a.machine_id) for a in result.actions]


# --- floor ---------------------------------------------------------------------------------


def test_floor_creates_the_always_on_worker() -> None:
    result = run(min_machines=1)
    assert kinds(result) == [("create", None)]
    assert "floor: min_machines 1" in result.actions[0].reason
    assert result.target == 1


def test_floor_starts_a_stopped_machine_rather_than_creating() -> None:
    result = run(f=fleet(machine("m2", "stopped"), machine("m1", "stopped")), min_machines=1)
    assert kinds(result) == [("start", "m1")]


def test_floor_ignores_the_scale_up_cooldown() -> None:
    result = run(f=fleet(last_up=5), min_machines=2)
    assert [a.kind for a in result.actions] == ["create", "create"]


def test_floor_is_met_by_a_booting_machine() -> None:
    result = run(f=fleet(machine("m1", "starting", since=20)), min_machines=1)
    assert result.actions == ()


def test_nothing_to_do_on_an_empty_queue() -> None:
    result = run()
    assert result.actions == () and result.target == 0


# --- step rules and previews -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("queued", "added"),
    [(5, 0), (10, 0), (11, 1), (50, 1), (51, 3), (10_000, 3)],  # 1 busy + 3 = max_machines 4
)
def test_step_rules_on_the_backlog(queued: int, added: int) -> None:
    result = run(backlog(separate=queued, running=1), fleet(up("m1", "busy")))
    assert len(result.starts) == added
    if added:
        assert f"backlog {queued} queued" in result.starts[0].reason


def test_the_largest_matching_step_wins() -> None:
    result = run(backlog(separate=60, running=1), fleet(up("m1", "busy")), max_machines=10)
    assert len(result.starts) == 5
    assert "> 50: +5" in result.starts[0].reason


def test_step_rules_are_configurable() -> None:
    result = run(
        backlog(separate=4, running=1), fleet(up("m1", "busy")), scale_rules="3:2", max_machines=9
    )
    assert len(result.starts) == 2


def test_queued_work_with_no_worker_starts_one_below_the_threshold() -> None:
    result = run(backlog(separate=2))
    assert kinds(result) == [("create", None)]
    assert "2 queued and no worker" in result.actions[0].reason


def test_previews_weigh_more() -> None:
    # 3 previews x weight 5 = 15 > 10
    result = run(backlog(preview=3, running=1), fleet(up("m1", "busy")))
    assert len(result.starts) == 1
    assert "weighted 15" in result.starts[0].reason


def test_a_preview_with_no_idle_worker_gets_a_machine() -> None:
    result = run(backlog(preview=1, running=1), fleet(up("m1", "busy")), preview_weight=1)
    assert len(result.starts) == 1
    assert "preview(s) queued and no idle worker" in result.starts[0].reason


def test_a_preview_with_an_idle_worker_waits_for_it() -> None:
    result = run(
        backlog(preview=1, running=1),
        fleet(up("m1", "busy"), up("m2", "idle")),
        preview_weight=1,
    )
    assert result.starts == []


# --- ceilings --------------------------------------------------------------------------------


def test_max_machines_is_never_crossed() -> None:
    result = run(backlog(separate=500, running=2), fleet(up("m1", "busy"), up("m2", "busy")))
    assert len(result.starts) == 2
    assert any("max_machines 4 reached" in n for n in result.notes)


def test_stopping_and_booting_machines_count_toward_max_machines() -> None:
    f = fleet(
        up("m1", "busy"),
        machine("m2", "stopping", since=10),
        machine("m3", "starting", since=10),
        machine("m4", "starting", since=10),
    )
    result = run(backlog(separate=500, running=1), f)
    assert result.starts == []


def test_max_hourly_usd_is_never_crossed() -> None:
    # 2 running at 0.3556 = 0.7112; cap 1.5 leaves room for 2 more
    result = run(
        backlog(separate=500, running=2),
        fleet(up("m1", "busy"), up("m2", "busy")),
        max_machines=10,
        max_hourly_usd=1.5,
    )
    assert len(result.starts) == 2
    assert result.hourly_usd_after == pytest.approx(4 * PRICE)
    assert any("max_hourly_usd" in n for n in result.notes)


def test_a_start_must_fit_the_daily_budget_for_the_lookahead() -> None:
    # $9.60 spent of $10; each machine-quarter-hour costs 0.0889: room for 4 at most
    result = run(backlog(separate=500), s=spend(today=9.6), max_machines=10, daily_budget_usd=10)
    assert len(result.starts) == 4
    assert any("daily budget $10.00" in n for n in result.notes)


def test_a_start_must_fit_the_monthly_budget() -> None:
    result = run(
        backlog(separate=500),
        s=spend(today=1, month=999.9),
        max_machines=10,
        monthly_budget_usd=1000,
    )
    assert len(result.starts) == 1
    assert any("monthly budget" in n for n in result.notes)


def test_spike_of_ten_thousand_jobs_with_a_low_budget() -> None:
    # $0.05 a day carries two performance-2x machines ($0.0889/h) for the 15 min lookahead
    # ($0.0444), not three ($0.0667)
    the_settings = settings(
        machine_size="performance-2x", max_machines=50, max_hourly_usd=100, daily_budget_usd=0.05
    )
    the_fleet = fleet(create_size="performance-2x")
    result = plan(backlog(separate=10_000, preview=500), the_fleet, spend(), the_settings, NOW)
    check_plan(result, the_fleet, the_settings, spend())
    assert len(result.starts) == 2
    assert result.hourly_usd_after == pytest.approx(2 * 0.0889)
    assert any("daily budget $0.05" in n for n in result.notes)


def test_budget_reached_drains_everything_and_stops_what_is_idle() -> None:
    f = fleet(
        up("m1", "busy"),
        up("m2", "idle", idle=30),
        up("m3", "idle", draining=True),
        up("m4", "busy", draining=True),
        machine("m5", "starting", since=10),
    )
    result = run(backlog(separate=10_000, running=2), f, s=spend(today=100.0))
    assert result.budget_exhausted
    assert result.starts == []
    assert sorted(kinds(result)) == [
        ("drain", "m1"),
        ("drain", "m2"),
        ("stop", "m3"),
        ("stop", "m5"),
    ]
    assert "daily budget reached" in result.actions[0].reason
    assert ("stop", "m4") not in kinds(result)  # busy: its job may finish


def test_budget_counts_as_reached_one_interval_early() -> None:
    # $99.99 spent, 4 machines x $0.3556/h for the next 30 s = $0.012 -> over $100
    f = fleet(*(up(f"m{i}", "busy") for i in range(4)))
    result = run(backlog(running=4), f, s=spend(today=99.99))
    assert result.budget_exhausted
    assert [a.kind for a in result.actions] == ["drain"] * 4


def test_monthly_budget_reached_stops_starts() -> None:
    result = run(backlog(separate=100), s=spend(today=1.0, month=1000.0), min_machines=1)
    assert result.budget_exhausted and result.actions == ()
    assert any("monthly budget reached" in n for n in result.notes)


def test_a_fleet_over_a_lowered_max_is_drained_back_idle_first() -> None:
    f = fleet(up("m1", "busy"), up("m2", "idle"), up("m3", "busy"), up("m4", "idle"))
    result = run(backlog(running=2), f, max_machines=2)
    assert kinds(result) == [("drain", "m2"), ("drain", "m4")]
    assert "over max_machines (4 > 2)" in result.actions[0].reason


def test_over_the_hourly_cap_drains_busy_workers_too_but_never_stops_them() -> None:
    f = fleet(up("m1", "busy"), up("m2", "busy"))
    result = run(backlog(running=2), f, max_hourly_usd=0.4)
    assert kinds(result) == [("drain", "m1")]
    assert "over max_hourly_usd" in result.actions[0].reason


# --- scale down ------------------------------------------------------------------------------


def test_an_idle_worker_past_the_window_is_drained_first() -> None:
    result = run(f=fleet(up("m1", "idle", idle=601)))
    assert kinds(result) == [("drain", "m1")]
    assert result.actions[0].direction == "down"
    assert "idle 10m01s >= scale_down_idle 10m" in result.actions[0].reason


def test_an_idle_worker_within_the_window_stays() -> None:
    assert run(f=fleet(up("m1", "idle", idle=599))).actions == ()


def test_scale_down_keeps_the_floor() -> None:
    f = fleet(up("m1", "idle", idle=9000), up("m2", "idle", idle=9000))
    result = run(f=f, min_machines=1)
    assert kinds(result) == [("drain", "m1")]


def test_no_scale_down_while_jobs_are_queued() -> None:
    f = fleet(up("m1", "idle", idle=9000), up("m2", "busy"))
    assert run(backlog(separate=3, running=1), f).of_kind("drain") == []


def test_a_drained_idle_worker_is_stopped() -> None:
    result = run(f=fleet(up("m1", "idle", draining=True)))
    assert kinds(result) == [("stop", "m1")]
    assert result.actions[0].reason == "drained and idle"


def test_a_drained_busy_worker_is_not_stopped() -> None:
    assert run(backlog(running=1), fleet(up("m1", "busy", draining=True))).actions == ()


def test_scale_down_cooldown_delays_drains_but_not_stops_of_drained_workers() -> None:
    f = fleet(up("m1", "idle", idle=9000), up("m2", "idle", draining=True), last_down=60)
    result = run(f=f)
    assert kinds(result) == [("stop", "m2")]
    assert any("scale-down cooldown: 1m left" in n for n in result.notes)


def test_scale_up_cooldown_blocks_step_rules() -> None:
    result = run(backlog(separate=60, running=1), fleet(up("m1", "busy"), last_up=45))
    assert result.starts == []
    assert any("scale-up cooldown: 15s left" in n for n in result.notes)


def test_scale_up_after_the_cooldown() -> None:
    result = run(backlog(separate=60, running=1), fleet(up("m1", "busy"), last_up=61))
    assert len(result.starts) == 3


def test_backlog_returning_takes_back_a_draining_worker_before_starting() -> None:
    f = fleet(up("m1", "idle", draining=True), machine("m2", "stopped"))
    result = run(backlog(separate=3), f)
    assert kinds(result) == [("undrain", "m1")]


def test_a_busy_worker_is_never_stopped_whatever_the_state() -> None:
    f = fleet(
        up("m1", "busy", draining=True),
        FleetMachine(machine("m2"), worker("m2", "lost", job=True, heartbeat=3600)),
    )
    for overrides in ({}, {"max_machines": 0}, {"daily_budget_usd": 0.0}):
        result = run(backlog(running=2), f, **overrides)
        assert result.of_kind("stop") == []


# --- transient states and repairs -------------------------------------------------------------


def test_a_machine_stuck_starting_is_reported_stopped_and_not_capacity() -> None:
    f = fleet(machine("m1", "starting", since=301), machine("m2", "stopped"))
    result = run(backlog(separate=3), f)
    assert result.stuck == ("m1",)
    assert any("machine m1 stuck in starting for 5m01s" in n for n in result.notes)
    assert ("stop", "m1") in kinds(result)
    assert result.of_kind("stop")[0].direction == "repair"
    assert ("start", "m2") in kinds(result)  # the backlog still has no worker


def test_a_machine_booting_within_the_timeout_counts_as_capacity() -> None:
    result = run(backlog(separate=3), fleet(machine("m1", "starting", since=120)))
    assert result.actions == () and result.capacity == 1


def test_stuck_stopping_is_reported_only() -> None:
    result = run(f=fleet(machine("m1", "stopping", since=900)))
    assert result.stuck == ("m1",) and result.actions == ()


def test_a_started_machine_whose_worker_never_registered_is_stopped() -> None:
    result = run(f=fleet(machine("m1", "started", since=400)))
    assert kinds(result) == [("stop", "m1")]
    assert "no worker registered for 6m40s" in result.actions[0].reason


def test_a_lost_worker_is_not_capacity_and_its_machine_stops_after_the_timeout() -> None:
    lost_recently = FleetMachine(machine("m1"), worker("m1", "lost", heartbeat=60))
    result = run(backlog(separate=2), fleet(lost_recently))
    assert result.capacity == 0 and result.of_kind("stop") == []
    assert len(result.starts) == 1
    lost_long = FleetMachine(machine("m1"), worker("m1", "idle", heartbeat=400))
    result = run(f=fleet(lost_long))
    assert kinds(result) == [("stop", "m1")]
    assert "worker lost" in result.actions[0].reason


def test_a_machine_whose_worker_exited_is_stopped() -> None:
    exited = FleetMachine(machine("m1", since=900), worker("m1", "stopped"))
    result = run(f=fleet(exited))
    assert kinds(result) == [("stop", "m1")]
    assert result.actions[0].reason == "its worker exited"


def test_a_worker_from_before_the_restart_is_ignored() -> None:
    old = worker("m1", "stopped", started=5000)
    booted = FleetMachine(machine("m1", "started", since=0.5), old)
    result = run(backlog(separate=2), fleet(booted))
    assert result.actions == () and result.capacity == 1


# --- determinism ------------------------------------------------------------------------------


def test_the_plan_does_not_depend_on_the_order_machines_are_listed() -> None:
    items = [
        up("a", "idle", idle=9000),
        up("b", "busy"),
        up("c", "idle", draining=True),
        FleetMachine(machine("d", "stopped")),
        FleetMachine(machine("e", "starting", since=400)),
        up("f", "idle", idle=9000),
    ]
    first = run(backlog(), fleet(*items))
    for seed in range(5):
        shuffled = items[:]
        random.Random(seed).shuffle(shuffled)
        assert run(backlog(), fleet(*shuffled)) == first
