"""Spend accounting and scaler records in SQL: machine runs opened and closed, reconciled with
what the provider reports, spend per day and per job, and every scaler run in admin views."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from app.clock import FakeClock
from app.db import Connection, as_user
from app.queue import Queue
from app.queue.fleet import MachineReport

USER = uuid.UUID("00000000-0000-4000-8000-0000000005c1")
PRICE = 0.3556


def report(machine_id: str, billed: bool, since: datetime | None = None) -> MachineReport:
    return MachineReport(machine_id, "performance-8x", PRICE, billed, since)


def test_spend_follows_machine_runs_and_a_self_stopped_machine_closes_at_its_last_heartbeat(
    tx: Connection, queue: Queue, clock: FakeClock
) -> None:
    t0 = clock.now()
    queue.machine_started(
        tx, provider="fly", machine_id="m1", size="performance-8x", hourly_usd=PRICE
    )
    again = queue.machine_started(
        tx, provider="fly", machine_id="m1", size="performance-8x", hourly_usd=PRICE
    )
    assert again.started_at == t0  # one open run per machine
    clock.advance(60)
    worker = queue.register_worker(tx, machine_id="m1", provider="fly")
    clock.advance(39 * 60)
    queue.worker_heartbeat(tx, worker.id)  # last sign of life at t0 + 40 min
    clock.advance(20 * 60)
    assert queue.spend(tx).today_usd == pytest.approx(PRICE)  # an hour so far, still open
    assert queue.spend(tx).hourly_usd == pytest.approx(PRICE)

    # The worker exited after its idle timeout and the machine stopped by itself.
    changes = queue.reconcile_machines(
        tx, provider="fly", machines=[report("m1", False, t0 + timedelta(minutes=55))]
    )
    assert changes == [("closed", "m1", t0 + timedelta(minutes=40))]
    (run,) = queue.machine_runs(tx, "fly")
    assert (run.stopped_at, run.worker_id, run.stop_reason) == (
        t0 + timedelta(minutes=40),
        worker.id,
        "seen stopped",
    )
    spent = queue.spend(tx)
    assert spent.today_usd == pytest.approx(PRICE * 40 / 60)
    assert spent.hourly_usd == 0


def test_reconcile_opens_runs_for_machines_started_elsewhere_and_closes_vanished_ones(
    tx: Connection, queue: Queue, clock: FakeClock
) -> None:
    t0 = clock.now()
    queue.machine_started(tx, provider="fly", machine_id="gone", size="x", hourly_usd=1.0)
    clock.advance(600)
    changes = queue.reconcile_machines(
        tx,
        provider="fly",
        machines=[
            report("manual", True, t0 + timedelta(minutes=5)),  # started with flyctl
            report("idle", False, t0),
        ],
    )
    assert sorted(changes) == [
        ("closed", "gone", t0 + timedelta(minutes=10)),  # no worker, no provider time: now
        ("opened", "manual", t0 + timedelta(minutes=5)),
    ]
    runs = {r.machine_id: r for r in queue.machine_runs(tx, "fly")}
    assert runs["gone"].stop_reason == "gone from the provider"
    assert runs["manual"].stopped_at is None
    # idempotent: a second reconcile with the same report changes nothing
    assert (
        queue.reconcile_machines(
            tx, provider="fly", machines=[report("manual", True, t0 + timedelta(minutes=5))]
        )
        == []
    )
    # other providers' runs are not touched
    assert queue.reconcile_machines(tx, provider="local", machines=[]) == []


def test_spend_splits_at_midnight_and_month_start(tx: Connection, queue: Queue) -> None:
    clock = FakeClock(datetime(2026, 2, 28, 23, 0, tzinfo=UTC))
    q = Queue(clock)
    q.machine_started(tx, provider="fly", machine_id="m1", size="s", hourly_usd=2.0)
    clock.advance(2 * 3600)  # 01:00 on March 1st
    spent = q.spend(tx)
    assert spent.today_usd == pytest.approx(2.0)
    assert spent.month_usd == pytest.approx(2.0)
    q.reconcile_machines(tx, provider="fly", machines=[])
    rows = tx.execute("select * from admin.spend_daily order by day").fetchall()
    assert [(str(r["day"]), float(r["machine_hours"]), float(r["cost_usd"])) for r in rows] == [
        ("2026-02-28", 1.0, 2.0),
        ("2026-03-01", 1.0, 2.0),
    ]


def test_spend_by_job_prices_each_job_by_its_run_time_on_its_machine(
    tx: Connection, queue: Queue, clock: FakeClock
) -> None:
    queue.machine_started(
        tx, provider="local", machine_id="m1", size="performance-8x", hourly_usd=PRICE
    )
    worker = queue.register_worker(tx, machine_id="m1")
    job, _ = queue.enqueue(tx, user_id=USER, input_key="inputs/a.wav", duration_s=200)
    (claimed,) = queue.claim(tx, worker.id, lease=3600)
    clock.advance(30 * 60)
    queue.complete(tx, claimed, output={"stems": {}})
    row = tx.execute("select * from admin.spend_by_job where job_id = %s", (job.id,)).fetchone()
    assert row is not None
    assert (row["machine_id"], row["provider"], row["size"]) == ("m1", "local", "performance-8x")
    assert row["run_s"] == pytest.approx(1800)
    assert float(row["cost_usd"]) == pytest.approx(PRICE / 2, abs=1e-6)


def test_backlog_counts_runnable_delayed_and_running_by_kind_and_priority(
    tx: Connection, queue: Queue, clock: FakeClock
) -> None:
    for i in range(3):
        queue.enqueue(tx, user_id=USER, input_key=f"inputs/{i}.wav")
    queue.enqueue(tx, user_id=USER, input_key="inputs/p.wav", kind="preview")
    worker = queue.register_worker(tx, machine_id="m1")
    (preview,) = queue.claim(tx, worker.id, lease=60)
    assert preview.kind == "preview"
    (job,) = queue.claim(tx, worker.id, lease=60)
    queue.fail(tx, job, error="flaky", error_kind="storage", retryable=True, backoff_base=60)
    clock.advance(5)
    groups = {(g.kind, g.priority): g for g in queue.backlog(tx)}
    separate = groups[("separate", 0)]
    assert (separate.queued, separate.delayed, separate.running) == (2, 1, 0)
    assert (groups[("preview", 10)].queued, groups[("preview", 10)].running) == (0, 1)


def test_runs_are_recorded_and_drive_the_cooldown_clock(
    tx: Connection, queue: Queue, clock: FakeClock
) -> None:
    assert queue.scale_history(tx).last_scale_up_at is None
    t0 = clock.now()
    up = {"kind": "create", "direction": "up", "ok": True, "reason": "r"}
    failed_up = {**up, "ok": False}
    down = {"kind": "drain", "direction": "down", "ok": True, "reason": "r"}
    inputs = {
        "backlog": {"queued": 12},
        "fleet": {"machines": 2},
        "settings": {"daily_budget_usd": 50},
    }
    queue.record_run(
        tx,
        provider="fly",
        started_at=t0,
        inputs=inputs,
        plan={"target": 3},
        actions=[up],
        errors=[],
    )
    clock.advance(60)
    queue.record_run(
        tx,
        provider="fly",
        started_at=clock.now(),
        inputs=inputs,
        plan={"target": 3},
        actions=[failed_up, down],
        errors=[{"stage": "create", "kind": "capacity"}],
    )
    history = queue.scale_history(tx)
    assert history.last_scale_up_at == t0  # the failed create does not count
    assert history.last_scale_down_at == t0 + timedelta(seconds=60)
    rows = tx.execute("select * from admin.scaler_runs").fetchall()
    assert [
        (r["queued"], r["machines"], r["target"], r["actions_count"], r["errors_count"])
        for r in rows
    ] == [(12, 2, 3, 2, 1), (12, 2, 3, 1, 0)]
    queue.machine_started(tx, provider="fly", machine_id="m1", size="s", hourly_usd=1.0)
    clock.advance(3600)
    queue.reconcile_machines(tx, provider="fly", machines=[])
    (day,) = tx.execute("select * from admin.spend_daily").fetchall()
    assert (float(day["cost_usd"]), float(day["daily_budget_usd"])) == (1.0, 50)
    assert float(day["budget_used_pct"]) == 2.0


def test_scaler_records_are_hidden_from_users(tx: Connection, queue: Queue) -> None:
    queue.machine_started(tx, provider="fly", machine_id="m1", size="s", hourly_usd=1.0)
    for relation in (
        "scaler.machine_runs",
        "scaler.runs",
        "admin.spend_daily",
        "admin.spend_by_job",
        "admin.scaler_runs",
    ):
        with pytest.raises(psycopg.errors.InsufficientPrivilege), as_user(tx, str(USER)):
            tx.execute(f"select * from {relation}")
    with pytest.raises(psycopg.errors.InsufficientPrivilege), as_user(tx, str(USER)):
        tx.execute("select * from scaler.spend()")


def test_a_machine_asked_to_stop_is_billed_at_least_until_then(
    tx: Connection, queue: Queue, clock: FakeClock
) -> None:
    t0 = clock.now()
    queue.machine_started(tx, provider="fly", machine_id="m1", size="s", hourly_usd=1.0)
    worker = queue.register_worker(tx, machine_id="m1", provider="fly")  # then went silent
    clock.advance(3600)
    run = queue.machine_stop_requested(tx, provider="fly", machine_id="m1", reason="stuck")
    assert run is not None and run.stop_requested_at == t0 + timedelta(hours=1)
    clock.advance(60)
    queue.reconcile_machines(tx, provider="fly", machines=[report("m1", False)])
    (closed,) = queue.machine_runs(tx, "fly")
    assert (closed.stopped_at, closed.stop_reason, closed.worker_id) == (
        t0 + timedelta(hours=1),
        "stuck",
        worker.id,
    )


def test_a_stopped_machine_with_a_stopped_price_is_counted_in_spend(
    tx: Connection, queue: Queue, clock: FakeClock
) -> None:
    t0 = clock.now()
    disk = 0.02  # $/h a provider bills for a stopped machine's disk

    def seen(billed: bool, since: datetime) -> MachineReport:
        return MachineReport(
            "p1", "rtx-a4000", 0.25, billed, since, stopped_hourly_usd=disk, parked=not billed
        )

    changes = queue.reconcile_machines(tx, provider="runpod", machines=[seen(False, t0)])
    assert changes == [("parked", "p1", t0)]
    clock.advance(3 * 3600)
    spent = queue.spend(tx)
    assert spent.today_usd == pytest.approx(3 * disk) and spent.hourly_usd == pytest.approx(disk)

    started = t0 + timedelta(hours=3)
    changes = queue.reconcile_machines(tx, provider="runpod", machines=[seen(True, started)])
    assert sorted(c[0] for c in changes) == ["opened", "unparked"]
    clock.advance(3600)
    spent = queue.spend(tx)
    assert spent.today_usd == pytest.approx(3 * disk + 0.25)
    assert spent.hourly_usd == pytest.approx(0.25)
    (parked,) = queue.parked_runs(tx, "runpod")
    assert (parked["started_at"], parked["stopped_at"]) == (t0, started)

    # A machine that costs nothing stopped (a Fly machine here) opens no parked run.
    assert (
        queue.reconcile_machines(tx, provider="fly", machines=[report("m1", False, clock.now())])
        == []
    )
