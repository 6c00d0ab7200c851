"""A dead worker's job comes back at once (issue 13, item 7): when the provider reports the
worker's machine stopped, failed or gone, the scaler releases the worker's running jobs in the
same run instead of waiting for the lease. (The local provider, with a real SIGKILLed worker, is
in test_scaler_local.py.)"""

from __future__ import annotations

import uuid

import pytest

from app.clock import FakeClock
from app.db import Connection
from app.queue import Queue
from tests.fake_fly import FakeFly
from tests.scaler_support import fly_scaler

USER = uuid.UUID("00000000-0000-4000-8000-0000000005f3")
LEASE = 600.0


def test_release_dead_workers_requeues_their_jobs_as_an_attempt(
    conn: Connection, queue: Queue, clock: FakeClock
) -> None:
    job, _ = queue.enqueue(conn, user_id=USER, input_key="inputs/a.wav", max_attempts=2)
    clock.advance(1)  # claimed oldest first
    other, _ = queue.enqueue(conn, user_id=USER, input_key="inputs/b.wav")
    dead = queue.register_worker(conn, machine_id="m1", provider="fly")
    alive = queue.register_worker(conn, machine_id="m2", provider="fly")
    assert [j.id for j in queue.claim(conn, dead.id, lease=LEASE)] == [job.id]
    assert [j.id for j in queue.claim(conn, alive.id, lease=LEASE)] == [other.id]
    seen = clock.now()

    clock.advance(5)
    (released,) = queue.release_dead_workers(conn, {"m1": seen, "m9": seen}, backoff_base=10)
    assert (released.job_id, released.status, released.worker_id, released.attempts) == (
        job.id,
        "queued",
        dead.id,
        1,
    )
    row = queue.get(conn, job.id)
    assert row.status == "queued" and row.worker_id is None and row.attempts == 1
    assert row.error_kind == "worker_died" and "went down" in (row.error or "")
    assert str(dead.id) not in (row.error or "")  # no internals in what the user reads
    assert queue.get_worker(conn, dead.id).state == "stopped"
    assert queue.get(conn, other.id).status == "running"  # another machine's job is untouched
    assert queue.release_dead_workers(conn, {"m1": seen}) == []  # once only

    # The second death uses up its attempts: failed for good, with the reason.
    clock.advance(3600)
    again = queue.register_worker(conn, machine_id="m1", provider="fly")
    assert [j.id for j in queue.claim(conn, again.id, lease=LEASE)] == [job.id]
    (final,) = queue.release_dead_workers(conn, {"m1": clock.now()})
    assert (final.status, final.attempts) == ("failed", 2)


def test_a_worker_registered_after_the_provider_was_asked_is_not_released(
    conn: Connection, queue: Queue, clock: FakeClock
) -> None:
    seen = clock.now()
    clock.advance(1)
    job, _ = queue.enqueue(conn, user_id=USER, input_key="inputs/c.wav")
    newer = queue.register_worker(conn, machine_id="m1", provider="fly")
    queue.claim(conn, newer.id, lease=LEASE)
    assert queue.release_dead_workers(conn, {"m1": seen}) == []
    assert queue.get(conn, job.id).status == "running"


@pytest.mark.parametrize("death", ["stopped", "failed", "destroyed"])
def test_the_scaler_releases_the_job_of_a_worker_whose_machine_went_down(
    fake: FakeFly, clock: FakeClock, conn: Connection, db_url: str, queue: Queue, death: str
) -> None:
    scaler = fly_scaler(fake, clock, db_url, scale_rules="10:1")
    machine_id = fake.add_machine("started")
    worker = queue.register_worker(conn, machine_id=machine_id, provider="fly")
    job, _ = queue.enqueue(conn, user_id=USER, input_key="inputs/d.wav")
    queue.claim(conn, worker.id, lease=LEASE)
    assert scaler.run_once().results == []  # busy: nothing to do
    assert queue.get(conn, job.id).status == "running"

    clock.advance(2)  # the machine dies under its busy worker, long before the lease ends
    if death == "destroyed":
        del fake.machines[machine_id]
    elif death == "failed":
        fake.fail_machine(machine_id)
    else:
        fake.machines[machine_id].data["state"] = "stopped"
    outcome = scaler.run_once()
    row = queue.get(conn, job.id)
    assert (row.status, row.error_kind, row.attempts) == ("queued", "worker_died", 1)
    assert queue.get_worker(conn, worker.id).state == "stopped"
    assert outcome.run_id is not None
    (recorded,) = queue.last_scaler_runs(conn, 1)
    assert [r["job_id"] for r in recorded.inputs["released"]] == [str(job.id)]
    if death == "failed":  # and the failed machine is destroyed, not left to pile up
        assert [(r.action.kind, r.ok) for r in outcome.results] == [("destroy", True)]
        assert machine_id not in fake.machines
    assert fake.violations == []


def test_a_machine_restarted_behind_the_scalers_back_releases_its_previous_workers_job(
    fake: FakeFly, clock: FakeClock, conn: Connection, db_url: str, queue: Queue
) -> None:
    scaler = fly_scaler(fake, clock, db_url, scale_rules="10:1")
    machine_id = fake.add_machine("stopped")
    scaler.provider.start(machine_id)
    fake.tick(2)
    worker = queue.register_worker(conn, machine_id=machine_id, provider="fly")
    job, _ = queue.enqueue(conn, user_id=USER, input_key="inputs/e.wav")
    queue.claim(conn, worker.id, lease=LEASE)
    assert scaler.run_once().results == []
    assert queue.get(conn, job.id).status == "running"  # its live worker keeps it

    clock.advance(90)  # the worker hangs; the machine restarts between two scaler runs
    fake.machines[machine_id].data["state"] = "stopped"
    scaler.provider.start(machine_id)
    fake.tick(2)
    clock.advance(5)
    outcome = scaler.run_once()
    row = queue.get(conn, job.id)
    assert (row.status, row.error_kind) == ("queued", "worker_died")
    assert outcome.results == []  # booting: its new worker is on its way, nothing is stopped

    newer = queue.register_worker(conn, machine_id=machine_id, provider="fly")
    clock.advance(60)
    queue.worker_heartbeat(conn, newer.id)
    scaler.run_once()
    assert queue.get_worker(conn, newer.id).state != "stopped"
