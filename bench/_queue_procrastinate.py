"""Benchmark 1, procrastinate's side: its schema from its own schema manager, pick-up latency
of a no-op async task (LISTEN/NOTIFY, concurrency 1) and throughput in worker processes, through
its default pool (transaction mode) or, when asked, autocommit connections."""

from __future__ import annotations

import asyncio
import logging
import queue as stdqueue
import threading
import time
from contextlib import suppress
from typing import Any

import psycopg

from app.db import connect
from bench._queue_measure import Latency, Picked, Throughput, drain, measure_latency, settle

TASK_NAME = "bench_noop"
PC_RESET = "truncate procrastinate_jobs, procrastinate_workers restart identity cascade"
PC_STATUS = "select status::text as status from procrastinate_jobs where id = %s"
PC_SUCCEEDED = "select count(*) as n from procrastinate_jobs where status = 'succeeded'"


def prepare_procrastinate(url: str) -> None:
    import procrastinate

    quiet_procrastinate()
    app = procrastinate.App(connector=procrastinate.SyncPsycopgConnector(conninfo=url))
    with app.open():
        app.schema_manager.apply_schema()


def quiet_procrastinate() -> None:
    # No log output on either side (stemfleet's queue calls do not log); this also silences its
    # warning that the App lives in a __main__ module, which is deliberate here.
    logging.getLogger("procrastinate").setLevel(logging.ERROR)


def procrastinate_pool(concurrency: int, autocommit: bool) -> dict[str, Any]:
    """Pool arguments: one connection per concurrent job plus room for fetching and heartbeats
    (the pool's default of 4 would starve concurrency 8). Transaction mode unless asked."""
    size = max(4, concurrency + 2)
    pool: dict[str, Any] = {"min_size": size, "max_size": size}
    if autocommit:
        # Through `configure`: procrastinate passes autocommit=True itself to its LISTEN
        # connection, so the pool's connect kwargs must not carry it.
        pool["configure"] = _set_autocommit
    return pool


async def _set_autocommit(conn: psycopg.AsyncConnection[Any]) -> None:
    await conn.set_autocommit(True)


def procrastinate_latency(
    url: str, *, jobs: int, warmup: int, gap_s: float, autocommit: bool
) -> Latency:
    import procrastinate

    quiet_procrastinate()
    picked: Picked = stdqueue.Queue()
    app = procrastinate.App(
        connector=procrastinate.PsycopgConnector(conninfo=url, **procrastinate_pool(1, autocommit))
    )

    @app.task(name=TASK_NAME, pass_context=True)
    async def bench_noop(context: procrastinate.JobContext, seq: int) -> None:
        picked.put((context.job.id, time.monotonic(), None))

    loop = asyncio.new_event_loop()
    started = threading.Event()
    worker_task: list[asyncio.Task[None]] = []

    async def run_worker() -> None:
        async with app.open_async():
            worker_task.append(
                asyncio.create_task(
                    app.run_worker_async(
                        concurrency=1, install_signal_handlers=False, listen_notify=True
                    )
                )
            )
            started.set()
            with suppress(asyncio.CancelledError):
                await worker_task[0]

    def thread_main() -> None:
        try:
            loop.run_until_complete(run_worker())
        except BaseException as exc:
            picked.put(exc)
            started.set()

    thread = threading.Thread(target=thread_main, name="bench-pc-worker", daemon=True)
    thread.start()
    started.wait(30)
    # The deferring side: procrastinate's sync connector, one autocommit connection, so that the
    # defer is one statement that inserts and commits (as stemfleet's enqueue is).
    deferrer = procrastinate.App(
        connector=procrastinate.SyncPsycopgConnector(
            conninfo=url, min_size=1, max_size=1, kwargs={"autocommit": True}
        )
    )
    try:
        with deferrer.open(), connect(url, application_name="bench-pc-observe") as observer:
            task = deferrer.configure_task(name=TASK_NAME)

            def insert(seq: int) -> Any:
                return task.defer(seq=seq)

            return measure_latency(
                insert, picked, observer, PC_STATUS, jobs=jobs, warmup=warmup, gap_s=gap_s
            )
    finally:
        if worker_task:
            loop.call_soon_threadsafe(worker_task[0].cancel)
        thread.join(timeout=15)
        loop.close()


def procrastinate_throughput_worker(
    url: str, concurrency: int, autocommit: bool, barrier: Any, results: Any
) -> None:
    import procrastinate

    quiet_procrastinate()
    done = 0
    app = procrastinate.App(
        connector=procrastinate.PsycopgConnector(
            conninfo=url, **procrastinate_pool(concurrency, autocommit)
        )
    )

    @app.task(name=TASK_NAME)
    async def bench_noop(seq: int) -> None:
        nonlocal done
        done += 1

    async def main() -> None:
        async with app.open_async():
            barrier.wait()
            t0 = time.monotonic()
            # wait=False: stop once the queue is empty (after finishing what it holds).
            await app.run_worker_async(
                concurrency=concurrency,
                wait=False,
                install_signal_handlers=False,
                listen_notify=True,
            )
            results.put((done, t0, time.monotonic()))

    asyncio.run(main())


def fill_procrastinate(url: str, jobs: int) -> None:
    import procrastinate

    deferrer = procrastinate.App(connector=procrastinate.SyncPsycopgConnector(conninfo=url))
    with deferrer.open():
        task = deferrer.configure_task(name=TASK_NAME)
        for start in range(0, jobs, 1000):
            batch: list[dict[str, Any]] = [
                {"seq": seq} for seq in range(start, min(jobs, start + 1000))
            ]
            task.batch_defer(*batch)
    with connect(url) as conn:
        conn.execute("vacuum analyze procrastinate_jobs")


def procrastinate_throughput(
    url: str, *, jobs: int, processes: int, concurrency: int, autocommit: bool
) -> Throughput:
    settle(url, PC_RESET)
    fill_procrastinate(url, jobs)
    args = [(url, concurrency, autocommit) for _ in range(processes)]
    return drain("procrastinate", url, PC_SUCCEEDED, jobs, procrastinate_throughput_worker, args)
