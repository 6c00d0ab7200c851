"""Three ways the ceilings broke (issue 12), each driven the way it was found: a fleet over a
lowered ceiling while work is queued, a create whose answer is lost, and a machine restarted
with its previous boot's worker row."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from app.clock import FakeClock
from app.db import Connection
from app.queue import Queue
from scaler.model import Fleet, FleetMachine
from scaler.policy import plan
from tests.fake_fly import FakeFly
from tests.scaler_support import (
    NOW,
    apply_plan,
    backlog,
    fleet,
    fly_scaler,
    machine,
    settings,
    spend,
    worker,
)

USER = uuid.UUID("00000000-0000-4000-8000-0000000005f2")


def kept(the_fleet: Fleet) -> list[str]:
    """Billed machines whose worker is not draining: what stays once the drained stop."""
    return [fm.machine.id for fm in the_fleet.machines if fm.worker and not fm.worker.draining]


@pytest.mark.parametrize(
    ("lowered", "kept_at_most"),
    [({"max_machines": 2}, 2), ({"max_hourly_usd": 0.5}, 1)],
    ids=["max_machines 5 -> 2", "max_hourly_usd 2.0 -> 0.5"],
)
def test_a_fleet_over_a_lowered_ceiling_gets_back_under_it_while_work_is_queued(
    lowered: dict[str, Any], kept_at_most: int
) -> None:
    the_settings = settings(**{"max_machines": 5, "max_hourly_usd": 2.0, **lowered})
    the_fleet = fleet(*(FleetMachine(machine(f"m{i}"), worker(f"m{i}", "busy")) for i in range(4)))
    queued = backlog(separate=10_000, running=4)
    for _ in range(4):  # every round: the excess stays drained, none is taken back
        result = plan(queued, the_fleet, spend(), the_settings, NOW)
        assert result.of_kind("undrain", "start", "create") == [], result.actions
        the_fleet = apply_plan(result, the_fleet)
        assert len(kept(the_fleet)) <= kept_at_most


def test_a_draining_worker_is_taken_back_when_the_fleet_fits_the_ceilings() -> None:
    the_fleet = fleet(
        FleetMachine(machine("m1"), worker("m1", "busy")),
        FleetMachine(machine("m2"), worker("m2", "idle", draining=True)),
    )
    result = plan(backlog(separate=60), the_fleet, spend(), settings(max_machines=2), NOW)
    assert [(a.kind, a.machine_id) for a in result.actions] == [("undrain", "m2")]


@pytest.mark.parametrize("state", ["lost", "idle", "busy", "stopped"])
def test_a_restarted_machine_is_not_judged_by_its_previous_boots_worker(state: str) -> None:
    # The machine was started 20 s ago; its newest worker row is the previous boot's, left in
    # `state` by a worker that hung or was killed 15 minutes ago.
    stale = worker("m1", state, heartbeat=900, started=3000, job=state == "busy")
    the_fleet = fleet(FleetMachine(machine("m1", "started", since=20), stale))
    result = plan(backlog(separate=3), the_fleet, spend(), settings(), NOW)
    assert result.of_kind("stop") == [], result.actions
    assert result.capacity == 1  # booting: its new worker is on its way
    assert not any("lost" in note for note in result.notes), result.notes


# --- creates whose answer is lost (real HTTP, the fake Fly server) ------------------------------


@pytest.mark.parametrize("lost", [500, 502, None], ids=["500", "502", "connection dropped"])
def test_a_create_whose_answer_is_lost_makes_one_machine_not_one_per_retry(
    fake: FakeFly,
    clock: FakeClock,
    conn: Connection,
    db_url: str,
    queue: Queue,
    lost: int | None,
) -> None:
    scaler = fly_scaler(fake, clock, db_url, max_machines=5, max_hourly_usd=2.0, fly_max_retries=5)
    for i in range(3):
        queue.enqueue(conn, user_id=USER, input_key=f"inputs/{i}.wav")
    fake.lose_create_answers(times=6, status=lost)
    outcome = scaler.run_once()
    creates = [r for r in outcome.results if r.action.kind == "create"]
    assert len(creates) == 1
    assert len(fake.machines) == 1  # one planned create, one machine, however the answer went
    assert fake.count("Machines_create") == 1
    assert fake.violations == []
    # adopted by its name: recorded and billed from now, so the ceilings count it
    (only,) = fake.machines
    assert creates[0].ok and creates[0].machine_id == only
    assert [r.machine_id for r in queue.machine_runs(conn, "fly")] == [only]


def test_a_create_refused_with_429_is_sent_again_after_retry_after(
    fake: FakeFly, clock: FakeClock, conn: Connection, db_url: str, queue: Queue
) -> None:
    scaler = fly_scaler(fake, clock, db_url)
    for i in range(3):
        queue.enqueue(conn, user_id=USER, input_key=f"inputs/{i}.wav")
    fake.fail(429, times=2, method="POST", path="/machines$", retry_after="2")
    outcome = scaler.run_once()
    assert [(r.action.kind, r.ok) for r in outcome.results] == [("create", True)]
    assert fake.count("Machines_create") == 3 and len(fake.machines) == 1
