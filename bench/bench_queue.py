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

This file is the run (options, order, output); the parts: bench/_queue_measure.py (timing and
draining, whichever queue), bench/_queue_stemfleet.py and bench/_queue_procrastinate.py (the two
sides), bench/_queue_report.py (tables, targets, the results page).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import bench_postgres, postgres_info, scratch_database, write_result
from bench._queue_measure import Settings, ThroughputRow, environment, settle
from bench._queue_procrastinate import (
    PC_RESET,
    prepare_procrastinate,
    procrastinate_latency,
    procrastinate_throughput,
)
from bench._queue_report import latency_table, render, targets, throughput_table
from bench._queue_stemfleet import (
    SF_RESET,
    prepare_stemfleet,
    stemfleet_latency,
    stemfleet_throughput,
)


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


if __name__ == "__main__":
    sys.exit(main())
