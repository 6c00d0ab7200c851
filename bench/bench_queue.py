"""Benchmark 1 (issue 8): stemfleet's queue against procrastinate, same Postgres, same run.

    .venv/bin/python bench/bench_queue.py            # prints a table, writes bench/results/queue.md

Two databases on one server (a throwaway cluster with normal durability unless
STEMFLEET_BENCH_DATABASE_URL names one): ours, built by app.migrate, and procrastinate's, built by
its own schema manager.

1. Pick-up latency: one job at a time, so the worker is idle at each insert. The inserter (main
   thread, its own connection) takes a monotonic timestamp just before the statement that inserts
   and commits the job; the worker (a thread of the same process, its own connections) takes one
   when it holds the job: for stemfleet when Queue.claim returns it after app.db.Listener woke on
   `stemfleet_jobs_queued`; for procrastinate when the no-op task starts, its worker
   (concurrency 1) woken by its own LISTEN/NOTIFY. Once the job is finished the inserter waits a
   fixed gap, then inserts the next.
2. Throughput: N no-op jobs inserted up front, then W worker processes drain them (each
   claim -> complete with its own connection; processes, because two cores and the GIL would make
   threads measure Python, not the queue). jobs/s = N / (last worker done - first worker started).
   procrastinate runs both ways it offers: one worker process with concurrency W (its documented
   way to run async tasks concurrently) and W worker processes with concurrency 1; the ratio uses
   the better of the two.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import multiprocessing as mp
import queue as stdqueue
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.db import Connection, Listener, connect
from app.migrate import migrate
from app.queue import QUEUED_CHANNEL, Queue
from bench._common import (
    bench_postgres,
    disk_flush_ms,
    load_average,
    machine_info,
    markdown_table,
    now_utc,
    percentile,
    postgres_info,
    scratch_database,
    write_result,
)

BENCH_USER = uuid.UUID("00000000-0000-4000-8000-00000000be4c")
LEASE_S = 60.0
TASK_NAME = "bench_noop"
PICKUP_TIMEOUT_S = 30.0  # far above procrastinate's 5 s fallback poll: a lost wake-up shows in p99
FINISH_POLL_S = 0.0005

# --------------------------------------------------------------------------------------------
# Databases
# --------------------------------------------------------------------------------------------


def prepare_stemfleet(url: str) -> None:
    migrate(url)


def prepare_procrastinate(url: str) -> None:
    import procrastinate

    quiet_procrastinate()
    app = procrastinate.App(connector=procrastinate.SyncPsycopgConnector(conninfo=url))
    with app.open():
        app.schema_manager.apply_schema()


SF_RESET = "truncate public.jobs, public.workers cascade"
PC_RESET = "truncate procrastinate_jobs, procrastinate_workers restart identity cascade"
SF_STATUS = "select status::text as status from public.jobs where id = %s"
PC_STATUS = "select status::text as status from procrastinate_jobs where id = %s"
SF_SUCCEEDED = "select count(*) as n from public.jobs where status = 'succeeded'"
PC_SUCCEEDED = "select count(*) as n from procrastinate_jobs where status = 'succeeded'"
SF_FILL = """
select count(*) as n from (
    select queue.enqueue(p_user_id => %s, p_input_key => 'bench/' || g)
      from generate_series(1, %s) g) s
"""


def settle(url: str, reset_sql: str) -> None:
    """Empty the queue's tables and flush dirty pages, so no run pays for the last one."""
    with connect(url) as conn:
        conn.execute(reset_sql)
        conn.execute("vacuum analyze")
        conn.execute("checkpoint")


def count(url: str, query: str) -> int:
    with connect(url) as conn:
        row = conn.execute(query).fetchone()
        assert row is not None
        return int(row["n"])


def wait_finished(conn: Connection, query: str, job_id: Any, done: str) -> None:
    deadline = time.monotonic() + PICKUP_TIMEOUT_S
    while True:
        row = conn.execute(query, (job_id,)).fetchone()
        if row is not None and row["status"] == done:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"job {job_id} did not finish in {PICKUP_TIMEOUT_S} s: {row}")
        time.sleep(FINISH_POLL_S)


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


# --------------------------------------------------------------------------------------------
# Pick-up latency
# --------------------------------------------------------------------------------------------


@dataclass
class Latency:
    samples_ms: list[float]
    insert_ms: list[float]  # the insert statement's round trip (execute + commit)
    woken_ms: list[float]  # insert -> worker woken by the notification (stemfleet only)

    @property
    def p50(self) -> float:
        return percentile(self.samples_ms, 50)

    @property
    def p99(self) -> float:
        return percentile(self.samples_ms, 99)

    @property
    def max(self) -> float:
        return max(self.samples_ms)


# (job key, when the worker held it, when its listener woke or None) or the worker's failure
Picked = stdqueue.Queue[tuple[Any, float, float | None] | BaseException]


def measure_latency(
    insert: Callable[[int], Any],
    picked: Picked,
    wait_done: Callable[[Any], None],
    *,
    jobs: int,
    warmup: int,
    gap_s: float,
) -> Latency:
    result = Latency([], [], [])
    for seq in range(warmup + jobs):
        time.sleep(gap_s)
        t0 = time.monotonic()
        job_id = insert(seq)
        t_inserted = time.monotonic()
        got = picked.get(timeout=PICKUP_TIMEOUT_S)
        if isinstance(got, BaseException):
            raise RuntimeError("the worker thread failed") from got
        got_id, t1, t_woken = got
        if got_id != job_id:
            raise RuntimeError(f"inserted {job_id} but the worker picked {got_id}")
        wait_done(job_id)
        if seq >= warmup:
            result.samples_ms.append((t1 - t0) * 1000)
            result.insert_ms.append((t_inserted - t0) * 1000)
            if t_woken is not None:
                result.woken_ms.append((t_woken - t0) * 1000)
    return result


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
                insert,
                picked,
                lambda job_id: wait_finished(observer, SF_STATUS, job_id, "succeeded"),
                jobs=jobs,
                warmup=warmup,
                gap_s=gap_s,
            )
        finally:
            stop.set()
            thread.join(timeout=5)


def procrastinate_latency(
    url: str, *, jobs: int, warmup: int, gap_s: float, autocommit: bool
) -> Latency:
    import procrastinate

    quiet_procrastinate()
    picked: Picked = stdqueue.Queue()
    app = procrastinate.App(
        connector=procrastinate.PsycopgConnector(conninfo=url, **procrastinate_pool(1, autocommit))
    )

    @app.task(name=TASK_NAME)
    async def bench_noop(seq: int) -> None:
        picked.put((seq, time.monotonic(), None))

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
            seq_to_id: dict[int, int] = {}

            def insert(seq: int) -> Any:
                seq_to_id[seq] = task.defer(seq=seq)
                return seq

            return measure_latency(
                insert,
                picked,
                lambda seq: wait_finished(observer, PC_STATUS, seq_to_id[seq], "succeeded"),
                jobs=jobs,
                warmup=warmup,
                gap_s=gap_s,
            )
    finally:
        if worker_task:
            loop.call_soon_threadsafe(worker_task[0].cancel)
        thread.join(timeout=15)
        loop.close()


# --------------------------------------------------------------------------------------------
# Throughput (worker processes)
# --------------------------------------------------------------------------------------------


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


@dataclass
class Throughput:
    jobs: int
    seconds: float

    @property
    def per_s(self) -> float:
        return self.jobs / self.seconds


def run_processes(target: Callable[..., None], args: list[tuple[Any, ...]]) -> Throughput:
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(len(args) + 1)
    results = ctx.Queue()
    procs = [ctx.Process(target=target, args=(*a, barrier, results)) for a in args]
    for p in procs:
        p.start()
    try:
        barrier.wait(timeout=120)
        outcomes = [results.get(timeout=300) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.terminate()
    bad = [p.exitcode for p in procs if p.exitcode != 0]
    if bad:
        raise RuntimeError(f"worker processes exited with {bad}")
    done = sum(o[0] for o in outcomes)
    start = min(o[1] for o in outcomes)
    end = max(o[2] for o in outcomes)
    return Throughput(done, end - start)


def stemfleet_throughput(url: str, *, jobs: int, workers: int) -> Throughput:
    settle(url, SF_RESET)
    with connect(url) as conn:
        conn.execute(SF_FILL, (BENCH_USER, jobs))
        conn.execute("vacuum analyze public.jobs")
    result = run_processes(stemfleet_throughput_worker, [(url, i) for i in range(workers)])
    finished = count(url, SF_SUCCEEDED)
    if result.jobs != jobs or finished != jobs:
        raise RuntimeError(f"stemfleet: {result.jobs} done, {finished} succeeded of {jobs}")
    return result


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
    result = run_processes(
        procrastinate_throughput_worker,
        [(url, concurrency, autocommit) for _ in range(processes)],
    )
    finished = count(url, PC_SUCCEEDED)
    if result.jobs != jobs or finished != jobs:
        raise RuntimeError(f"procrastinate: {result.jobs} done, {finished} succeeded of {jobs}")
    return result


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


@dataclass
class Settings:
    latency_jobs: int
    warmup: int
    gap_ms: float
    throughput_jobs: int
    workers: list[int]
    autocommit: bool


def parse_args(argv: list[str] | None) -> Settings:
    parser = argparse.ArgumentParser(description="Benchmark 1: stemfleet queue vs procrastinate")
    parser.add_argument("--latency-jobs", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=20, help="latency jobs discarded first")
    parser.add_argument("--gap-ms", type=float, default=10.0, help="idle time before each insert")
    parser.add_argument("--throughput-jobs", type=int, default=3000)
    parser.add_argument("--workers", default="1,4,8", help="comma-separated worker counts")
    parser.add_argument(
        "--procrastinate-autocommit",
        action="store_true",
        help="run procrastinate's worker pool in autocommit (one round trip per call) instead of "
        "its default (BEGIN, call, COMMIT)",
    )
    args = parser.parse_args(argv)
    return Settings(
        latency_jobs=args.latency_jobs,
        warmup=args.warmup,
        gap_ms=args.gap_ms,
        throughput_jobs=args.throughput_jobs,
        workers=[int(w) for w in args.workers.split(",") if w.strip()],
        autocommit=args.procrastinate_autocommit,
    )


@contextmanager
def databases(admin_url: str) -> Iterator[tuple[str, str]]:
    with (
        scratch_database(admin_url, "bench_stemfleet") as sf_url,
        scratch_database(admin_url, "bench_procrastinate") as pc_url,
    ):
        prepare_stemfleet(sf_url)
        prepare_procrastinate(pc_url)
        yield sf_url, pc_url


@dataclass
class Environment:
    """What the machine was doing: the figures depend on the disk's flush time and on load."""

    load: str
    flush: tuple[float, float] | None


def environment(data_dir: Path | None) -> Environment:
    flush = disk_flush_ms(data_dir.parent) if data_dir is not None else None
    return Environment(load_average(), flush)


@dataclass
class ThroughputRow:
    workers: int
    stemfleet: Throughput
    procrastinate_one: Throughput  # one process, concurrency W
    procrastinate_many: Throughput | None  # W processes, concurrency 1 (None when W = 1)

    @property
    def best_procrastinate(self) -> float:
        many = self.procrastinate_many.per_s if self.procrastinate_many else 0.0
        return max(self.procrastinate_one.per_s, many)


def main(argv: list[str] | None = None) -> int:
    settings = parse_args(argv)
    started = time.monotonic()
    with bench_postgres() as pg, databases(pg.admin_url) as (sf_url, pc_url):
        env_start = environment(pg.data_dir)
        pg_facts = postgres_info(sf_url)
        say(f"postgres: {pg.source}")
        say("pick-up latency: stemfleet")
        settle(sf_url, SF_RESET)
        gap_s = settings.gap_ms / 1e3
        sf_lat = stemfleet_latency(
            sf_url, jobs=settings.latency_jobs, warmup=settings.warmup, gap_s=gap_s
        )
        say("pick-up latency: procrastinate")
        settle(pc_url, PC_RESET)
        pc_lat = procrastinate_latency(
            pc_url,
            jobs=settings.latency_jobs,
            warmup=settings.warmup,
            gap_s=gap_s,
            autocommit=settings.autocommit,
        )
        rows = [throughput_row(settings, sf_url, pc_url, w) for w in settings.workers]
        env_end = environment(pg.data_dir)
    elapsed = time.monotonic() - started

    tables = latency_table(sf_lat, pc_lat) + "\n\n" + throughput_table(rows)
    verdicts = targets(sf_lat, rows)
    report = render(settings, pg.source, pg_facts, env_start, env_end, sf_lat, pc_lat, rows)
    report += "\n## Targets\n\n" + "\n".join(f"- {v}" for v in verdicts) + "\n"
    report += f"\nWhole run: {elapsed:.0f} s.\n"
    path = write_result("queue.md", report)
    print(tables + "\n\n" + "\n".join(verdicts))
    say(f"written to {path} ({elapsed:.0f} s)")
    return 0


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def throughput_row(settings: Settings, sf_url: str, pc_url: str, workers: int) -> ThroughputRow:
    jobs = settings.throughput_jobs
    say(f"throughput, {workers} workers: stemfleet")
    sf = stemfleet_throughput(sf_url, jobs=jobs, workers=workers)
    say(f"throughput, {workers} workers: procrastinate, 1 process, concurrency {workers}")
    one = procrastinate_throughput(
        pc_url, jobs=jobs, processes=1, concurrency=workers, autocommit=settings.autocommit
    )
    many = None
    if workers > 1:
        say(f"throughput, {workers} workers: procrastinate, {workers} processes")
        many = procrastinate_throughput(
            pc_url, jobs=jobs, processes=workers, concurrency=1, autocommit=settings.autocommit
        )
    return ThroughputRow(workers, sf, one, many)


def ms(value: float) -> str:
    return f"{value:.2f} ms"


def ratio(ours: float, theirs: float) -> str:
    return f"{ours / theirs:.2f}x"


def latency_table(sf: Latency, pc: Latency) -> str:
    return markdown_table(
        ["pick-up latency", "stemfleet", "procrastinate", "stemfleet / procrastinate"],
        [
            ["p50", ms(sf.p50), ms(pc.p50), ratio(sf.p50, pc.p50)],
            ["p99", ms(sf.p99), ms(pc.p99), ratio(sf.p99, pc.p99)],
            ["max", ms(sf.max), ms(pc.max), ratio(sf.max, pc.max)],
            [
                "p50 of the insert's own round trip (execute + commit)",
                ms(percentile(sf.insert_ms, 50)),
                ms(percentile(pc.insert_ms, 50)),
                "",
            ],
        ],
    )


def throughput_table(rows: list[ThroughputRow]) -> str:
    return markdown_table(
        [
            "workers (W)",
            "stemfleet jobs/s (W processes)",
            "procrastinate jobs/s (1 process, concurrency W)",
            "procrastinate jobs/s (W processes)",
            "stemfleet / best procrastinate",
        ],
        [
            [
                str(r.workers),
                f"{r.stemfleet.per_s:,.0f}",
                f"{r.procrastinate_one.per_s:,.0f}",
                f"{r.procrastinate_many.per_s:,.0f}" if r.procrastinate_many else "(same)",
                ratio(r.stemfleet.per_s, r.best_procrastinate),
            ]
            for r in rows
        ],
    )


def targets(sf_lat: Latency, rows: list[ThroughputRow]) -> list[str]:
    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    lines = [
        f"pick-up p50 <= 5 ms: {ms(sf_lat.p50)}, {verdict(sf_lat.p50 <= 5)}",
        f"pick-up p99 <= 25 ms: {ms(sf_lat.p99)}, {verdict(sf_lat.p99 <= 25)}",
    ]
    for r in rows:
        if r.workers == 8:
            ours, theirs = r.stemfleet.per_s, r.best_procrastinate
            lines.append(
                f"throughput at 8 workers >= 2x procrastinate: {ours / theirs:.2f}x "
                f"({ours:,.0f} vs {theirs:,.0f} jobs/s), {verdict(ours >= 2 * theirs)}"
            )
    return lines


def describe(env: Environment) -> str:
    flush = f"flush p50 {ms(env.flush[0])}, p99 {ms(env.flush[1])}" if env.flush else "flush n/a"
    return f"load {env.load}; {flush}"


def render(
    settings: Settings,
    pg_source: str,
    pg_facts: dict[str, str],
    env_start: Environment,
    env_end: Environment,
    sf_lat: Latency,
    pc_lat: Latency,
    rows: list[ThroughputRow],
) -> str:
    machine = machine_info()
    facts = {
        **machine,
        "postgres server": pg_source,
        **pg_facts,
        "at start: load average (1/5/15 min); disk 8 kB write+fdatasync": describe(env_start),
        "at end": describe(env_end),
    }
    pc_mode = (
        "autocommit pool connections (`--procrastinate-autocommit`: one round trip per call)"
        if settings.autocommit
        else "its default pool (transaction mode: BEGIN, call, COMMIT)"
    )
    woken = percentile(sf_lat.woken_ms, 50) if sf_lat.woken_ms else float("nan")
    return f"""# Benchmark 1: queue pick-up latency and throughput, stemfleet vs procrastinate

Run {now_utc()} with `.venv/bin/python bench/bench_queue.py`.

## Machine and Postgres

{markdown_table(["", ""], [[k, v] for k, v in facts.items()])}

## Pick-up latency: insert → claimed by an idle worker ({settings.latency_jobs:,} jobs)

{latency_table(sf_lat, pc_lat)}

stemfleet, p50 from the insert to the worker's listener waking: {ms(woken)}.

## claim + complete throughput ({settings.throughput_jobs:,} no-op jobs inserted up front)

{throughput_table(rows)}

## How it was measured

- Same server, same run, two databases: stemfleet's schema from `app.migrate`, procrastinate
  {version("procrastinate")}'s from its own schema manager; psycopg {version("psycopg")}.
- Latency: one job at a time; the inserter (main thread, own connection) takes
  `time.monotonic()` just before the statement that inserts and commits the job; the worker
  thread (same process, own connections) takes it when it holds the job. stemfleet: an idle
  worker blocked in `app.db.Listener.wait` on `stemfleet_jobs_queued`, then `Queue.claim`;
  the insert is `Queue.enqueue` on an autocommit connection. procrastinate:
  `run_worker_async(concurrency=1, listen_notify=True)`, default 5 s fallback poll, {pc_mode};
  the time is taken when the no-op async task starts; the defer is
  `configure_task(...).defer()` on a one-connection autocommit `SyncPsycopgConnector`, so it
  too is one statement that inserts and commits. After each job is finished (status polled
  from a third connection) the inserter waits {settings.gap_ms:g} ms so the worker is idle
  again. {settings.warmup} warm-up jobs are discarded first. Percentiles are nearest-rank.
- Throughput: jobs inserted up front; before each run the tables are emptied, then
  `vacuum analyze` and `checkpoint`. stemfleet: W processes, each registers a worker and loops
  `Queue.claim` → `Queue.complete` on its own autocommit connection until the queue is empty.
  procrastinate: a no-op `async def` task, `run_worker_async(wait=False)` (stops once the
  queue is empty), pool of max(4, concurrency + 2) connections, {pc_mode}, its logs at
  ERROR. jobs/s = jobs / (last worker done - first worker started, after a common barrier);
  every job is checked `succeeded` afterwards. Processes, not threads: on
  {machine["cpus"]} cores threads would measure the GIL.
- Both queues keep finished rows (procrastinate `delete_jobs` = never). Durability is the
  server's (fsync and synchronous_commit above), except that stemfleet's `queue.claim` and
  `queue.complete` commit without waiting for their WAL flush (synchronous_commit off for their
  own transaction; a crash can roll back the last fraction of a second of them, and the lease
  re-runs those jobs once). Every other commit, procrastinate's included, waits for its flush,
  so the disk flush time above is a floor under the figures; on a shared machine it varies.
"""


if __name__ == "__main__":
    sys.exit(main())
