"""Benchmark 1's measuring parts, whichever queue runs: the run's options, emptying the tables
between runs, timing one job at a time from insert to pick-up, timing worker processes that
drain a filled queue, and what the machine was doing meanwhile."""

from __future__ import annotations

import multiprocessing as mp
import queue as stdqueue
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.db import Connection, connect
from bench._common import disk_flush_ms, load_average, percentile

BENCH_USER = uuid.UUID("00000000-0000-4000-8000-00000000be4c")
LEASE_S = 60.0
PICKUP_TIMEOUT_S = 30.0  # far above procrastinate's 5 s fallback poll: a lost wake-up shows in p99
FINISH_POLL_S = 0.0005


@dataclass
class Settings:
    """The options of one run (bench/bench_queue.py's command line)."""

    latency_jobs: int
    warmup: int
    gap_ms: float
    throughput_jobs: int
    workers: list[int]
    autocommit: bool


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


@dataclass
class Latency:
    samples_ms: list[float]
    insert_ms: list[float]  # the insert statement's round trip (execute + commit)
    woken_ms: list[float]  # insert -> worker woken by the notification (stemfleet only)

    def pickup_ms(self, p: float) -> float:
        """Nearest-rank percentile of the pick-up latency (p = 100: the slowest)."""
        return percentile(self.samples_ms, p)


# (job key, when the worker held it, when its listener woke or None) or the worker's failure
Picked = stdqueue.Queue[tuple[Any, float, float | None] | BaseException]


def measure_latency(
    insert: Callable[[int], Any],
    picked: Picked,
    observer: Connection,
    status_sql: str,
    *,
    jobs: int,
    warmup: int,
    gap_s: float,
) -> Latency:
    """Insert one job at a time (`insert(seq)` returns its key), take the worker's pick-up from
    `picked`, and wait on `observer` until `status_sql` reads the job succeeded."""
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
        wait_finished(observer, status_sql, job_id, "succeeded")
        if seq >= warmup:
            result.samples_ms.append((t1 - t0) * 1000)
            result.insert_ms.append((t_inserted - t0) * 1000)
            if t_woken is not None:
                result.woken_ms.append((t_woken - t0) * 1000)
    return result


@dataclass
class Throughput:
    jobs: int
    seconds: float

    @property
    def per_s(self) -> float:
        return self.jobs / self.seconds


def drain(
    queue: str,
    url: str,
    succeeded_sql: str,
    jobs: int,
    worker: Callable[..., None],
    args: list[tuple[Any, ...]],
) -> Throughput:
    """Time `worker(*arg, barrier, results)` processes draining a queue filled with `jobs` jobs,
    and check that every job was done once and `succeeded_sql` counts it succeeded."""
    result = run_processes(worker, args)
    finished = count(url, succeeded_sql)
    if result.jobs != jobs or finished != jobs:
        raise RuntimeError(f"{queue}: {result.jobs} done, {finished} succeeded of {jobs}")
    return result


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
