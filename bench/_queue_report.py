"""Benchmark 1's results: the latency and throughput tables, the verdicts against the issue's
targets and the markdown page written to bench/results/queue.md."""

from __future__ import annotations

from importlib.metadata import version

from bench._common import machine_info, markdown_table, now_utc, percentile
from bench._queue_measure import Environment, Latency, Settings, ThroughputRow


def ms(value: float) -> str:
    return f"{value:.2f} ms"


def ratio(ours: float, theirs: float) -> str:
    return f"{ours / theirs:.2f}x"


def latency_table(sf: Latency, pc: Latency) -> str:
    rows = []
    for label, p in (("p50", 50), ("p99", 99), ("max", 100)):
        ours, theirs = sf.pickup_ms(p), pc.pickup_ms(p)
        rows.append([label, ms(ours), ms(theirs), ratio(ours, theirs)])
    insert = "p50 of the insert's own round trip (execute + commit)"
    rows.append([insert, ms(percentile(sf.insert_ms, 50)), ms(percentile(pc.insert_ms, 50)), ""])
    header = ["pick-up latency", "stemfleet", "procrastinate", "stemfleet / procrastinate"]
    return markdown_table(header, rows)


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
        f"pick-up p50 <= 5 ms: {ms(sf_lat.pickup_ms(50))}, {verdict(sf_lat.pickup_ms(50) <= 5)}",
        f"pick-up p99 <= 25 ms: {ms(sf_lat.pickup_ms(99))}, {verdict(sf_lat.pickup_ms(99) <= 25)}",
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
