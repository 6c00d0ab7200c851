"""The queue's guarantees that only committed work shows, against a fresh database each: claimers
on several connections at once, the NOTIFY that wakes an idle worker (delivered at commit), and
what a commit waits for. (Everything else is in test_queue.py, inside a rolled-back transaction.)
"""

from __future__ import annotations

import threading
import uuid
from collections import Counter

from app.db import Connection, Listener, connect
from app.queue import QUEUED_CHANNEL, Job, Queue
from tests.queue_support import USER, enqueue, worker


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
