"""The queue's guarantees, proven against a real Postgres."""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from datetime import timedelta

import pytest

from app.clock import FakeClock
from app.db import Connection, Listener, connect
from app.errors import InvalidTransition, LeaseLost, ModelNotServed
from app.queue import QUEUED_CHANNEL, Job, Queue

USER = uuid.UUID("00000000-0000-4000-8000-00000000000a")


def enqueue(queue: Queue, conn: Connection, **kwargs: object) -> Job:
    args: dict[str, object] = {"user_id": USER, "input_key": f"inputs/{USER}/x.wav"}
    args.update(kwargs)
    job, created = queue.enqueue(conn, **args)  # type: ignore[arg-type]
    assert created
    return job


def worker(queue: Queue, conn: Connection, name: str = "m1") -> uuid.UUID:
    return queue.register_worker(conn, machine_id=name).id


def test_claim_order_is_priority_then_fifo(
    queue: Queue, conn: Connection, clock: FakeClock
) -> None:
    low_old = enqueue(queue, conn, priority=0)
    clock.advance(1)
    high = enqueue(queue, conn, priority=5)
    clock.advance(1)
    low_new = enqueue(queue, conn, priority=0)
    clock.advance(1)
    preview = enqueue(queue, conn, kind="preview")  # previews default to a higher priority
    w = worker(queue, conn)

    order = [queue.claim(conn, w, lease=60)[0].id for _ in range(4)]

    assert order == [preview.id, high.id, low_old.id, low_new.id]
    assert queue.claim(conn, w, lease=60) == []


def test_claim_sets_running_lease_attempts_and_worker(
    queue: Queue, conn: Connection, clock: FakeClock
) -> None:
    job = enqueue(queue, conn)
    w = worker(queue, conn)
    (claimed,) = queue.claim(conn, w, lease=30)
    assert claimed.id == job.id
    assert claimed.status == "running"
    assert claimed.worker_id == w
    assert claimed.attempts == 1
    assert claimed.lease_expires_at == clock.now() + timedelta(seconds=30)
    state = queue.get_worker(conn, w)
    assert state.state == "busy" and state.current_job_id == job.id


def test_run_after_is_honoured(queue: Queue, conn: Connection, clock: FakeClock) -> None:
    job = enqueue(queue, conn)
    conn.execute(
        "update public.jobs set run_after = %s where id = %s",
        (clock.now() + timedelta(seconds=60), job.id),
    )
    w = worker(queue, conn)
    assert queue.claim(conn, w, lease=60) == []
    clock.advance(59)
    assert queue.claim(conn, w, lease=60) == []
    clock.advance(2)
    assert [j.id for j in queue.claim(conn, w, lease=60)] == [job.id]


def test_concurrent_claimers_take_every_job_exactly_once(db_url: str) -> None:
    queue = Queue()  # the database's own clock: the rows are inserted with now()
    total = 2000
    with connect(db_url) as conn:
        conn.execute(
            "insert into public.jobs (user_id, input_key) "
            "select %s, 'inputs/x/' || g from generate_series(1, %s) g",
            (USER, total),
        )
    claimed: list[uuid.UUID] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def claimer(index: int) -> None:
        try:
            with connect(db_url) as conn:
                w = queue.register_worker(conn, machine_id=f"m{index}").id
                while True:
                    jobs = queue.claim(conn, w, lease=300)
                    if not jobs:
                        return
                    queue.complete(conn, jobs[0], output={"stems": {}})
                    with lock:
                        claimed.append(jobs[0].id)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=claimer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=240)
    assert not errors
    counts = Counter(claimed)
    assert len(counts) == total
    assert set(counts.values()) == {1}
    with connect(db_url) as conn:
        row = conn.execute(
            "select count(*) filter (where status = 'succeeded') as ok, "
            "max(attempts) as max_attempts from public.jobs"
        ).fetchone()
    assert row == {"ok": total, "max_attempts": 1}


def test_expired_lease_is_reaped_and_the_job_runs_again(
    queue: Queue, conn: Connection, clock: FakeClock
) -> None:
    job = enqueue(queue, conn)
    w1 = worker(queue, conn, "m1")
    (first,) = queue.claim(conn, w1, lease=30)
    clock.advance(29)
    assert queue.reap(conn) == []
    clock.advance(2)
    (reaped,) = queue.reap(conn, backoff_base=10)
    assert (reaped.job_id, reaped.status, reaped.worker_id) == (job.id, "queued", w1)
    assert queue.get_worker(conn, w1).state == "lost"

    requeued = queue.get(conn, job.id)
    assert requeued.error_kind == "lease_expired"
    assert requeued.run_after == clock.now() + timedelta(seconds=10)
    w2 = worker(queue, conn, "m2")
    assert queue.claim(conn, w2, lease=30) == []  # backoff first
    clock.advance(10)
    (second,) = queue.claim(conn, w2, lease=30)
    assert second.id == job.id and second.attempts == 2 and second.worker_id == w2
    done = queue.complete(conn, second, output={"stems": {"vocals": "k"}})
    assert done.status == "succeeded" and done.error is None

    # the first worker comes back: it can change nothing
    with pytest.raises(LeaseLost):
        queue.complete(conn, first, output={"stems": {}})
    assert queue.get(conn, job.id).output == {"stems": {"vocals": "k"}}


def test_stale_worker_cannot_complete_fail_heartbeat_or_release(
    queue: Queue, conn: Connection, clock: FakeClock
) -> None:
    enqueue(queue, conn, max_attempts=5)
    w1, w2 = worker(queue, conn, "m1"), worker(queue, conn, "m2")
    (stale,) = queue.claim(conn, w1, lease=10)
    clock.advance(11)
    queue.reap(conn, backoff_base=0)
    (fresh,) = queue.claim(conn, w2, lease=10)

    with pytest.raises(LeaseLost):
        queue.heartbeat(conn, stale, progress=0.5, lease=10)
    with pytest.raises(LeaseLost):
        queue.complete(conn, stale, output={})
    with pytest.raises(LeaseLost):
        queue.fail(conn, stale, error="x", error_kind="x", retryable=False)
    with pytest.raises(LeaseLost):
        queue.release(conn, stale)

    current = queue.get(conn, fresh.id)
    assert current.status == "running"
    assert current.worker_id == w2 and current.attempts == 2 and current.progress == 0
    assert queue.heartbeat(conn, fresh, progress=0.25, lease=10) == "running"
    assert queue.get(conn, fresh.id).progress == pytest.approx(0.25)


def test_retryable_failures_back_off_exponentially_until_max_attempts(
    queue: Queue, conn: Connection, clock: FakeClock
) -> None:
    job = enqueue(queue, conn, max_attempts=3)
    w = worker(queue, conn)
    delays = []
    for attempt in (1, 2):
        (claimed,) = queue.claim(conn, w, lease=60)
        assert claimed.attempts == attempt
        after = queue.fail(
            conn, claimed, error="S3 timeout", error_kind="storage", retryable=True, backoff_base=5
        )
        assert after.status == "queued" and after.worker_id is None
        assert after.error == f"S3 timeout (attempt {attempt} of 3; it will be tried again)"
        delays.append((after.run_after - clock.now()).total_seconds())
        clock.advance(delays[-1])
    assert delays == [5, 10]

    (last,) = queue.claim(conn, w, lease=60)
    final = queue.fail(conn, last, error="S3 timeout", error_kind="storage", retryable=True)
    assert final.status == "failed" and final.attempts == 3
    # the row says what happened to the job, not what the worker hoped would happen next
    assert final.error == "S3 timeout (gave up after 3 attempts)"
    assert final.finished_at == clock.now()
    assert queue.get_worker(conn, w).state == "idle"
    assert job.id == final.id


def test_permanent_failure_fails_at_once(queue: Queue, conn: Connection) -> None:
    enqueue(queue, conn, max_attempts=5)
    w = worker(queue, conn)
    (claimed,) = queue.claim(conn, w, lease=60)
    failed = queue.fail(conn, claimed, error="not audio", error_kind="undecodable", retryable=False)
    assert (failed.status, failed.attempts, failed.error_kind) == ("failed", 1, "undecodable")
    assert queue.claim(conn, w, lease=60) == []


def test_release_charges_no_attempt(queue: Queue, conn: Connection) -> None:
    job = enqueue(queue, conn)
    w = worker(queue, conn)
    (claimed,) = queue.claim(conn, w, lease=60)
    released = queue.release(conn, claimed)
    assert (released.status, released.attempts, released.worker_id) == ("queued", 0, None)
    (again,) = queue.claim(conn, w, lease=60)
    assert again.id == job.id and again.attempts == 1


def test_cancel_queued_and_running(queue: Queue, conn: Connection) -> None:
    queued = enqueue(queue, conn)
    cancelled = queue.cancel(conn, queued.id)
    assert cancelled.status == "cancelled" and cancelled.finished_at is not None

    running_job = enqueue(queue, conn)
    w = worker(queue, conn)
    (running,) = queue.claim(conn, w, lease=60)
    assert running.id == running_job.id
    assert queue.cancel(conn, running.id).status == "cancelled"
    # the worker learns it at its next heartbeat, and can no longer complete it
    assert queue.heartbeat(conn, running, progress=0.5, lease=60) == "cancelled"
    with pytest.raises(LeaseLost):
        queue.complete(conn, running, output={})
    assert queue.get(conn, running.id).status == "cancelled"
    with pytest.raises(InvalidTransition):
        queue.cancel(conn, running.id)


def test_idempotency_key_returns_the_existing_job(queue: Queue, conn: Connection) -> None:
    first, created = queue.enqueue(conn, user_id=USER, input_key="inputs/a", idempotency_key="k1")
    again, created_again = queue.enqueue(
        conn, user_id=USER, input_key="inputs/other", idempotency_key="k1"
    )
    assert created and not created_again
    assert again.id == first.id and again.input_key == "inputs/a"
    other_user = uuid.uuid4()
    theirs, created_theirs = queue.enqueue(
        conn, user_id=other_user, input_key="inputs/b", idempotency_key="k1"
    )
    assert created_theirs and theirs.id != first.id


def test_idle_listener_is_woken_by_an_insert(db_url: str, queue: Queue) -> None:
    with Listener(db_url, [QUEUED_CHANNEL]) as listener:
        assert listener.wait(0) == []
        inserted: list[Job] = []

        def insert() -> None:
            with connect(db_url) as other:
                inserted.append(enqueue(queue, other))

        thread = threading.Thread(target=insert)
        thread.start()
        # a generous bound: the wait returns as soon as the NOTIFY arrives, not after it
        notes = listener.wait(30)
        thread.join()
    assert notes == [(QUEUED_CHANNEL, str(inserted[0].id))]


def test_requeue_notifies_idle_workers(db_url: str, queue: Queue, conn: Connection) -> None:
    enqueue(queue, conn)
    w = worker(queue, conn)
    (claimed,) = queue.claim(conn, w, lease=60)
    with Listener(db_url, [QUEUED_CHANNEL]) as listener:
        queue.release(conn, claimed)
        assert listener.wait(30) == [(QUEUED_CHANNEL, str(claimed.id))]


def test_draining_worker_claims_nothing(queue: Queue, conn: Connection) -> None:
    enqueue(queue, conn)
    w = worker(queue, conn)
    assert queue.drain_worker(conn, w).draining
    assert queue.claim(conn, w, lease=60) == []
    queue.drain_worker(conn, w, draining=False)
    assert len(queue.claim(conn, w, lease=60)) == 1


def test_prune_removes_only_old_finished_rows(
    queue: Queue, conn: Connection, clock: FakeClock
) -> None:
    old = enqueue(queue, conn)
    queue.cancel(conn, old.id)
    clock.advance(3600 * 24 * 8)
    keep_queued = enqueue(queue, conn)
    assert queue.prune_finished(conn, older_than=7 * 24 * 3600) == 1
    remaining = [r["id"] for r in conn.execute("select id from public.jobs").fetchall()]
    assert remaining == [keep_queued.id]


def test_claim_skips_the_flush_wait_for_its_own_transaction_only_and_complete_waits(
    queue: Queue, conn: Connection
) -> None:
    def setting() -> str:
        row = conn.execute("show synchronous_commit").fetchone()
        assert row is not None
        return str(row["synchronous_commit"])

    conn.execute("set synchronous_commit = on")  # the test cluster's default is off
    with conn.transaction():
        job = enqueue(queue, conn)
        assert setting() == "on"  # a user's job is durable before the API answers
    w = worker(queue, conn)
    with conn.transaction():
        (claimed,) = queue.claim(conn, w, lease=60)
        assert setting() == "off"
    assert setting() == "on"  # nothing leaks into the (pooled) session
    conn.execute("set synchronous_commit = off")
    with conn.transaction():
        queue.complete(conn, claimed, output={})
        assert setting() == "on"  # a completion is never lost (tests/test_queue_crash.py)
    assert setting() == "off"
    conn.execute("set synchronous_commit = on")
    assert queue.get(conn, job.id).status == "succeeded"
    other = enqueue(queue, conn)
    with conn.transaction():
        queue.cancel(conn, other.id, reason="no")
        assert setting() == "on"


def test_a_job_must_name_a_model_the_fleet_serves(queue: Queue, conn: Connection) -> None:
    """Checked at insert (both paths: queue.enqueue here, a Supabase-client insert in
    test_security), so a model no worker can load never reaches a worker."""
    assert enqueue(queue, conn, params={"model": "htdemucs_ft"}).status == "queued"
    assert enqueue(queue, conn, params={}).status == "queued"  # the fleet's default
    with pytest.raises(ModelNotServed, match=r"'my_model' is not served.*htdemucs_ft"):
        enqueue(queue, conn, params={"model": "my_model"})

    queue.serve_models(conn, ["my_model"])  # a worker (or the API) that has it started
    assert enqueue(queue, conn, params={"model": "my_model"}).params == {"model": "my_model"}


def test_progress_moves_forward_within_an_attempt_and_restarts_with_the_next(
    queue: Queue, conn: Connection, clock: FakeClock
) -> None:
    job = enqueue(queue, conn)
    w = worker(queue, conn)
    (first,) = queue.claim(conn, w, lease=60)
    seen = []
    for value in (0.25, 0.0, 0.5, 0.4, None, 1.0):
        queue.heartbeat(conn, first, progress=value, lease=60)
        seen.append(queue.get(conn, job.id).progress)
    assert seen == [0.25, 0.25, 0.5, 0.5, 0.5, 1.0]

    requeued = queue.fail(
        conn, first, error="storage down", error_kind="storage", retryable=True, backoff_base=0
    )
    assert (requeued.status, requeued.progress) == ("queued", 0)  # no stale progress

    (second,) = queue.claim(conn, w, lease=60)
    assert second.progress == 0
    queue.heartbeat(conn, second, progress=0.3, lease=60)
    clock.advance(61)
    (reaped,) = queue.reap(conn, backoff_base=0)
    assert reaped.status == "queued"
    assert queue.get(conn, job.id).progress == 0


def test_every_way_an_attempt_ends_says_what_happens_next_alike(
    queue: Queue, conn: Connection, clock: FakeClock
) -> None:
    # queue.fail, the reaper (lease expired) and a dead worker's release end a running attempt
    # by one rule: back to queued with "it will be tried again", or failed with "gave up after
    # n attempts" on the last one; never a worker's id in what the user reads.
    job = enqueue(queue, conn, max_attempts=2)
    w1 = worker(queue, conn, "m1")
    queue.claim(conn, w1, lease=30)
    clock.advance(31)
    (reaped,) = queue.reap(conn, backoff_base=0)
    assert (reaped.job_id, reaped.status, reaped.worker_id) == (job.id, "queued", w1)
    first = queue.get(conn, job.id)
    assert first.status == "queued" and str(w1) not in (first.error or "")
    assert first.error == (
        "the worker stopped answering (its lease expired) (attempt 1 of 2; it will be tried again)"
    )

    w2 = worker(queue, conn, "m2")
    (claimed,) = queue.claim(conn, w2, lease=30)
    assert claimed.attempts == 2
    seen = clock.now()
    clock.advance(1)
    (released,) = queue.release_dead_workers(conn, {"m2": seen})
    assert (released.job_id, released.status, released.worker_id) == (job.id, "failed", w2)
    last = queue.get(conn, job.id)
    assert (last.status, last.attempts, last.error_kind) == ("failed", 2, "worker_died")
    assert last.error == "the machine running this job went down (gave up after 2 attempts)"
