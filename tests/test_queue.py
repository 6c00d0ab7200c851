"""The queue's guarantees, proven against a real Postgres, each test inside a transaction that is
rolled back at its end (the `tx` fixture). Tests that need commits: test_queue_commits.py."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest

from app.clock import FakeClock
from app.db import Connection
from app.errors import InvalidTransition, LeaseLost, ModelNotServed
from app.queue import Queue
from tests.queue_support import USER, enqueue, worker


def test_claim_order_is_priority_then_fifo(queue: Queue, tx: Connection, clock: FakeClock) -> None:
    low_old = enqueue(queue, tx, priority=0)
    clock.advance(1)
    high = enqueue(queue, tx, priority=5)
    clock.advance(1)
    low_new = enqueue(queue, tx, priority=0)
    clock.advance(1)
    preview = enqueue(queue, tx, kind="preview")  # previews default to a higher priority
    w = worker(queue, tx)

    order = [queue.claim(tx, w, lease=60)[0].id for _ in range(4)]

    assert order == [preview.id, high.id, low_old.id, low_new.id]
    assert queue.claim(tx, w, lease=60) == []


def test_claim_sets_running_lease_attempts_and_worker(
    queue: Queue, tx: Connection, clock: FakeClock
) -> None:
    job = enqueue(queue, tx)
    w = worker(queue, tx)
    (claimed,) = queue.claim(tx, w, lease=30)
    assert claimed.id == job.id
    assert claimed.status == "running"
    assert claimed.worker_id == w
    assert claimed.attempts == 1
    assert claimed.lease_expires_at == clock.now() + timedelta(seconds=30)
    state = queue.get_worker(tx, w)
    assert state.state == "busy" and state.current_job_id == job.id


def test_run_after_is_honoured(queue: Queue, tx: Connection, clock: FakeClock) -> None:
    job = enqueue(queue, tx)
    tx.execute(
        "update public.jobs set run_after = %s where id = %s",
        (clock.now() + timedelta(seconds=60), job.id),
    )
    w = worker(queue, tx)
    assert queue.claim(tx, w, lease=60) == []
    clock.advance(59)
    assert queue.claim(tx, w, lease=60) == []
    clock.advance(2)
    assert [j.id for j in queue.claim(tx, w, lease=60)] == [job.id]


def test_expired_lease_is_reaped_and_the_job_runs_again(
    queue: Queue, tx: Connection, clock: FakeClock
) -> None:
    job = enqueue(queue, tx)
    w1 = worker(queue, tx, "m1")
    (first,) = queue.claim(tx, w1, lease=30)
    clock.advance(29)
    assert queue.reap(tx) == []
    clock.advance(2)
    (reaped,) = queue.reap(tx, backoff_base=10)
    assert (reaped.job_id, reaped.status, reaped.worker_id) == (job.id, "queued", w1)
    assert queue.get_worker(tx, w1).state == "lost"

    requeued = queue.get(tx, job.id)
    assert requeued.error_kind == "lease_expired"
    assert requeued.run_after == clock.now() + timedelta(seconds=10)
    w2 = worker(queue, tx, "m2")
    assert queue.claim(tx, w2, lease=30) == []  # backoff first
    clock.advance(10)
    (second,) = queue.claim(tx, w2, lease=30)
    assert second.id == job.id and second.attempts == 2 and second.worker_id == w2
    done = queue.complete(tx, second, output={"stems": {"vocals": "k"}})
    assert done.status == "succeeded" and done.error is None

    # the first worker comes back: it can change nothing
    with pytest.raises(LeaseLost):
        queue.complete(tx, first, output={"stems": {}})
    assert queue.get(tx, job.id).output == {"stems": {"vocals": "k"}}


def test_stale_worker_cannot_complete_fail_heartbeat_or_release(
    queue: Queue, tx: Connection, clock: FakeClock
) -> None:
    enqueue(queue, tx, max_attempts=5)
    w1, w2 = worker(queue, tx, "m1"), worker(queue, tx, "m2")
    (stale,) = queue.claim(tx, w1, lease=10)
    clock.advance(11)
    queue.reap(tx, backoff_base=0)
    (fresh,) = queue.claim(tx, w2, lease=10)

    with pytest.raises(LeaseLost):
        queue.heartbeat(tx, stale, progress=0.5, lease=10)
    with pytest.raises(LeaseLost):
        queue.complete(tx, stale, output={})
    with pytest.raises(LeaseLost):
        queue.fail(tx, stale, error="x", error_kind="x", retryable=False)
    with pytest.raises(LeaseLost):
        queue.release(tx, stale)

    current = queue.get(tx, fresh.id)
    assert current.status == "running"
    assert current.worker_id == w2 and current.attempts == 2 and current.progress == 0
    assert queue.heartbeat(tx, fresh, progress=0.25, lease=10) == "running"
    assert queue.get(tx, fresh.id).progress == pytest.approx(0.25)


def test_retryable_failures_back_off_exponentially_until_max_attempts(
    queue: Queue, tx: Connection, clock: FakeClock
) -> None:
    job = enqueue(queue, tx, max_attempts=3)
    w = worker(queue, tx)
    delays = []
    for attempt in (1, 2):
        (claimed,) = queue.claim(tx, w, lease=60)
        assert claimed.attempts == attempt
        after = queue.fail(
            tx, claimed, error="S3 timeout", error_kind="storage", retryable=True, backoff_base=5
        )
        assert after.status == "queued" and after.worker_id is None
        assert after.error == f"S3 timeout (attempt {attempt} of 3; it will be tried again)"
        delays.append((after.run_after - clock.now()).total_seconds())
        clock.advance(delays[-1])
    assert delays == [5, 10]

    (last,) = queue.claim(tx, w, lease=60)
    final = queue.fail(tx, last, error="S3 timeout", error_kind="storage", retryable=True)
    assert final.status == "failed" and final.attempts == 3
    # the row says what happened to the job, not what the worker hoped would happen next
    assert final.error == "S3 timeout (gave up after 3 attempts)"
    assert final.finished_at == clock.now()
    assert queue.get_worker(tx, w).state == "idle"
    assert job.id == final.id


def test_permanent_failure_fails_at_once(queue: Queue, tx: Connection) -> None:
    enqueue(queue, tx, max_attempts=5)
    w = worker(queue, tx)
    (claimed,) = queue.claim(tx, w, lease=60)
    failed = queue.fail(tx, claimed, error="not audio", error_kind="undecodable", retryable=False)
    assert (failed.status, failed.attempts, failed.error_kind) == ("failed", 1, "undecodable")
    assert queue.claim(tx, w, lease=60) == []


def test_release_charges_no_attempt(queue: Queue, tx: Connection) -> None:
    job = enqueue(queue, tx)
    w = worker(queue, tx)
    (claimed,) = queue.claim(tx, w, lease=60)
    released = queue.release(tx, claimed)
    assert (released.status, released.attempts, released.worker_id) == ("queued", 0, None)
    (again,) = queue.claim(tx, w, lease=60)
    assert again.id == job.id and again.attempts == 1


def test_cancel_queued_and_running(queue: Queue, tx: Connection) -> None:
    queued = enqueue(queue, tx)
    cancelled = queue.cancel(tx, queued.id)
    assert cancelled.status == "cancelled" and cancelled.finished_at is not None

    running_job = enqueue(queue, tx)
    w = worker(queue, tx)
    (running,) = queue.claim(tx, w, lease=60)
    assert running.id == running_job.id
    assert queue.cancel(tx, running.id).status == "cancelled"
    # the worker learns it at its next heartbeat, and can no longer complete it
    assert queue.heartbeat(tx, running, progress=0.5, lease=60) == "cancelled"
    with pytest.raises(LeaseLost):
        queue.complete(tx, running, output={})
    assert queue.get(tx, running.id).status == "cancelled"
    with pytest.raises(InvalidTransition):
        queue.cancel(tx, running.id)


def test_idempotency_key_returns_the_existing_job(queue: Queue, tx: Connection) -> None:
    first, created = queue.enqueue(tx, user_id=USER, input_key="inputs/a", idempotency_key="k1")
    again, created_again = queue.enqueue(
        tx, user_id=USER, input_key="inputs/other", idempotency_key="k1"
    )
    assert created and not created_again
    assert again.id == first.id and again.input_key == "inputs/a"
    other_user = uuid.uuid4()
    theirs, created_theirs = queue.enqueue(
        tx, user_id=other_user, input_key="inputs/b", idempotency_key="k1"
    )
    assert created_theirs and theirs.id != first.id


def test_draining_worker_claims_nothing(queue: Queue, tx: Connection) -> None:
    enqueue(queue, tx)
    w = worker(queue, tx)
    assert queue.drain_worker(tx, w).draining
    assert queue.claim(tx, w, lease=60) == []
    queue.drain_worker(tx, w, draining=False)
    assert len(queue.claim(tx, w, lease=60)) == 1


def test_prune_removes_only_old_finished_rows(
    queue: Queue, tx: Connection, clock: FakeClock
) -> None:
    old = enqueue(queue, tx)
    queue.cancel(tx, old.id)
    clock.advance(3600 * 24 * 8)
    keep_queued = enqueue(queue, tx)
    assert queue.prune_finished(tx, older_than=7 * 24 * 3600) == 1
    remaining = [r["id"] for r in tx.execute("select id from public.jobs").fetchall()]
    assert remaining == [keep_queued.id]


def test_a_job_must_name_a_model_the_fleet_serves(queue: Queue, tx: Connection) -> None:
    """Checked at insert (both paths: queue.enqueue here, a Supabase-client insert in
    test_security), so a model no worker can load never reaches a worker."""
    assert enqueue(queue, tx, params={"model": "htdemucs_ft"}).status == "queued"
    assert enqueue(queue, tx, params={}).status == "queued"  # the fleet's default
    with pytest.raises(ModelNotServed, match=r"'my_model' is not served.*htdemucs_ft"):
        enqueue(queue, tx, params={"model": "my_model"})

    queue.serve_models(tx, ["my_model"])  # a worker (or the API) that has it started
    assert enqueue(queue, tx, params={"model": "my_model"}).params == {"model": "my_model"}


def test_progress_moves_forward_within_an_attempt_and_restarts_with_the_next(
    queue: Queue, tx: Connection, clock: FakeClock
) -> None:
    job = enqueue(queue, tx)
    w = worker(queue, tx)
    (first,) = queue.claim(tx, w, lease=60)
    seen = []
    for value in (0.25, 0.0, 0.5, 0.4, None, 1.0):
        queue.heartbeat(tx, first, progress=value, lease=60)
        seen.append(queue.get(tx, job.id).progress)
    assert seen == [0.25, 0.25, 0.5, 0.5, 0.5, 1.0]

    requeued = queue.fail(
        tx, first, error="storage down", error_kind="storage", retryable=True, backoff_base=0
    )
    assert (requeued.status, requeued.progress) == ("queued", 0)  # no stale progress

    (second,) = queue.claim(tx, w, lease=60)
    assert second.progress == 0
    queue.heartbeat(tx, second, progress=0.3, lease=60)
    clock.advance(61)
    (reaped,) = queue.reap(tx, backoff_base=0)
    assert reaped.status == "queued"
    assert queue.get(tx, job.id).progress == 0


def test_every_way_an_attempt_ends_says_what_happens_next_alike(
    queue: Queue, tx: Connection, clock: FakeClock
) -> None:
    # queue.fail, the reaper (lease expired) and a dead worker's release end a running attempt
    # by one rule: back to queued with "it will be tried again", or failed with "gave up after
    # n attempts" on the last one; never a worker's id in what the user reads.
    job = enqueue(queue, tx, max_attempts=2)
    w1 = worker(queue, tx, "m1")
    queue.claim(tx, w1, lease=30)
    clock.advance(31)
    (reaped,) = queue.reap(tx, backoff_base=0)
    assert (reaped.job_id, reaped.status, reaped.worker_id) == (job.id, "queued", w1)
    first = queue.get(tx, job.id)
    assert first.status == "queued" and str(w1) not in (first.error or "")
    assert first.error == (
        "the worker stopped answering (its lease expired) (attempt 1 of 2; it will be tried again)"
    )

    w2 = worker(queue, tx, "m2")
    (claimed,) = queue.claim(tx, w2, lease=30)
    assert claimed.attempts == 2
    seen = clock.now()
    clock.advance(1)
    (released,) = queue.release_dead_workers(tx, {"m2": seen})
    assert (released.job_id, released.status, released.worker_id) == (job.id, "failed", w2)
    last = queue.get(tx, job.id)
    assert (last.status, last.attempts, last.error_kind) == ("failed", 2, "worker_died")
    assert last.error == "the machine running this job went down (gave up after 2 attempts)"
