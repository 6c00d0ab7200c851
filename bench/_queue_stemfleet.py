"""Benchmark 1, stemfleet's side: its schema from app.migrate, pick-up latency through
app.db.Listener and Queue.claim, and claim -> complete throughput in worker processes."""

from __future__ import annotations

import queue as stdqueue
import threading
import time
from typing import Any

from app.db import Listener, connect
from app.migrate import migrate
from app.queue import QUEUED_CHANNEL, Queue
from bench._queue_measure import (
    BENCH_USER,
    LEASE_S,
    Latency,
    Picked,
    Throughput,
    drain,
    measure_latency,
    settle,
)

SF_RESET = "truncate public.jobs, public.workers cascade"
SF_STATUS = "select status::text as status from public.jobs where id = %s"
SF_SUCCEEDED = "select count(*) as n from public.jobs where status = 'succeeded'"
SF_FILL = """
select count(*) as n from (
    select queue.enqueue(p_user_id => %s, p_input_key => 'bench/' || g)
      from generate_series(1, %s) g) s
"""


def prepare_stemfleet(url: str) -> None:
    migrate(url)


def stemfleet_latency(url: str, *, jobs: int, warmup: int, gap_s: float) -> Latency:
    q = Queue()
    picked: Picked = stdqueue.Queue()
    stop = threading.Event()
    with (
        connect(url, application_name="bench-sf-worker") as wconn,
        connect(url, application_name="bench-sf-insert") as iconn,
        connect(url, application_name="bench-sf-observe") as observer,
        Listener(url, [QUEUED_CHANNEL], name="bench-sf-listen") as listener,
    ):
        worker = q.register_worker(wconn, machine_id="bench-latency")

        def work() -> None:
            woken: float | None = None
            try:
                while not stop.is_set():
                    claimed = q.claim(wconn, worker.id, lease=LEASE_S)
                    if claimed:
                        picked.put((claimed[0].id, time.monotonic(), woken))
                        q.complete(wconn, claimed[0], output={})
                        continue
                    woken = time.monotonic() if listener.wait(0.2) else None
            except BaseException as exc:
                picked.put(exc)

        thread = threading.Thread(target=work, name="bench-sf-worker", daemon=True)
        thread.start()
        try:

            def insert(seq: int) -> Any:
                job, _ = q.enqueue(iconn, user_id=BENCH_USER, input_key=f"bench/{seq}")
                return job.id

            return measure_latency(
                insert, picked, observer, SF_STATUS, jobs=jobs, warmup=warmup, gap_s=gap_s
            )
        finally:
            stop.set()
            thread.join(timeout=5)


def stemfleet_throughput_worker(url: str, index: int, barrier: Any, results: Any) -> None:
    q = Queue()
    with connect(url, application_name=f"bench-sf-worker-{index}") as conn:
        worker = q.register_worker(conn, machine_id=f"bench-throughput-{index}")
        barrier.wait()
        t0 = time.monotonic()
        done = 0
        while True:
            claimed = q.claim(conn, worker.id, lease=LEASE_S)
            if not claimed:
                break
            q.complete(conn, claimed[0], output={})
            done += 1
        results.put((done, t0, time.monotonic()))


def stemfleet_throughput(url: str, *, jobs: int, workers: int) -> Throughput:
    settle(url, SF_RESET)
    fill_stemfleet(url, jobs)
    args = [(url, i) for i in range(workers)]
    return drain("stemfleet", url, SF_SUCCEEDED, jobs, stemfleet_throughput_worker, args)


def fill_stemfleet(url: str, jobs: int) -> None:
    with connect(url) as conn:
        conn.execute(SF_FILL, (BENCH_USER, jobs))
        conn.execute("vacuum analyze public.jobs")
