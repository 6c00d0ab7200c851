"""Benchmark 7: live status for many event streams on one API process.

Starts a throwaway Postgres (or STEMFLEET_BENCH_DATABASE_URL), runs the API as its own process
(uvicorn, one worker, STEMFLEET_DB_POOL_MAX=1 so the process may hold its pool's one connection
plus the LISTEN connection), and opens `--streams` concurrent GET /v1/jobs/{id}/events from one
asyncio client (raw sockets, `--streams-per-job` streams on each job, `--streams-per-user` per
user). The jobs are running; the benchmark then changes each job twice, paced at `--rate`
changes per second (a heartbeat with new progress, then its completion), and records for every
stream the time from just before the change's statement was sent to the moment its event arrived.
Meanwhile it samples the API's database connections (pg_stat_activity, application_name
stemfleet-api*) every 100 ms.

`--api-src DIR` runs the API from another source tree (e.g. `git archive main` unpacked) for a
before/after comparison with the same client.

    .venv/bin/python bench/bench_sse.py --streams 10000
    .venv/bin/python bench/bench_sse.py --streams 50 --api-src /tmp/main --out sse_before.md
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import jwt
from psycopg.conninfo import conninfo_to_dict

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.db import connect
from app.migrate import migrate
from app.pgserver import free_port
from app.queue import Queue
from app.storage import input_key
from bench._common import (
    REPO_ROOT,
    bench_postgres,
    load_average,
    machine_info,
    markdown_table,
    now_utc,
    percentile,
    postgres_info,
    scratch_database,
    write_result,
)

JWT_SECRET = "bench-sse-jwt-secret-with-at-least-32-characters"
API_BACKENDS = (
    "select count(*)::integer as n from pg_stat_activity"
    " where datname = current_database() and application_name like 'stemfleet-api%%'"
)


def user_token(user: uuid.UUID) -> str:
    now = int(time.time())
    claims = {"sub": str(user), "aud": "authenticated", "role": "authenticated", "iat": now}
    return jwt.encode({**claims, "exp": now + 7200}, JWT_SECRET, algorithm="HS256")


@dataclass
class Stream:
    job_id: str
    token: str
    received: dict[tuple[str, float], float] = field(default_factory=dict)  # (status, progress)
    opened: asyncio.Event = field(default_factory=asyncio.Event)
    error: str | None = None


async def follow(port: int, stream: Stream) -> None:
    """One event stream over a raw socket: record when each (status, progress) first arrived."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            f"GET /v1/jobs/{stream.job_id}/events HTTP/1.1\r\nHost: bench\r\n"
            f"Authorization: Bearer {stream.token}\r\nAccept: text/event-stream\r\n\r\n".encode()
        )
        await writer.drain()
        status_line = await reader.readline()
        if b" 200 " not in status_line:
            stream.error = status_line.decode().strip()
            stream.opened.set()
            return
        while line := await reader.readline():
            if not line.startswith(b"data: "):
                continue
            now = time.time()
            job = json.loads(line[6:])
            stream.received.setdefault((job["status"], job["progress"]), now)
            stream.opened.set()
            if job["status"] in ("succeeded", "failed", "cancelled"):
                break
        writer.close()
    except OSError as exc:
        stream.error = str(exc)
        stream.opened.set()


def start_api(db_url: str, port: int, data_dir: Path, args: argparse.Namespace) -> subprocess.Popen:
    info = conninfo_to_dict(db_url)
    url = (
        f"postgresql://{info.get('user') or 'postgres'}@{info.get('host') or '127.0.0.1'}:"
        f"{info.get('port') or 5432}/{info['dbname']}"
    )
    env = {
        **os.environ,
        "STEMFLEET_DATABASE_URL": url,
        "STEMFLEET_JWT_SECRET": JWT_SECRET,
        "STEMFLEET_DATA_DIR": str(data_dir),
        "STEMFLEET_DB_POOL_MIN": "1",
        "STEMFLEET_DB_POOL_MAX": "1",
        "STEMFLEET_SSE_MAX_STREAMS_PER_USER": str(args.streams_per_user),
        "STEMFLEET_LOG_LEVEL": "WARNING",
        "PYTHONPATH": str(args.api_src),
    }
    env.pop("STEMFLEET_WEBHOOK_SECRET", None)
    command = [sys.executable, "-m", "uvicorn", "app.api.main:app", "--port", str(port)]
    command += ["--log-level", "warning", "--no-access-log", "--backlog", "4096"]
    process = subprocess.Popen(command, env=env, cwd=args.api_src)
    for _ in range(300):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        if process.poll() is not None:
            raise SystemExit("the API process exited at start")
        time.sleep(0.1)
    process.kill()
    raise SystemExit("the API did not answer /healthz")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (/proc; Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def run(db_url: str, args: argparse.Namespace, api_pid: int) -> dict[str, object]:
    queue = Queue()
    jobs_n = args.streams // args.streams_per_job
    users = [uuid.uuid4() for _ in range(max(1, args.streams // args.streams_per_user))]
    tokens = {u: user_token(u) for u in users}
    jobs: list[tuple[str, uuid.UUID]] = []
    with connect(db_url) as conn:
        worker = queue.register_worker(conn, machine_id="bench-sse")
        for i in range(jobs_n):
            user = users[(i * args.streams_per_job) // args.streams_per_user]
            job, _ = queue.enqueue(conn, user_id=user, input_key=input_key(user, "a.wav"))
            jobs.append((str(job.id), user))
        running = []
        while len(running) < jobs_n:
            running += queue.claim(conn, worker.id, lease=3600, limit=500)
    by_id = {str(j.id): j for j in running}
    streams = [
        Stream(job_id, tokens[user]) for job_id, user in jobs for _ in range(args.streams_per_job)
    ]
    port = args.port
    held: list[int] = []
    stop_sampling = asyncio.Event()

    async def sample() -> None:
        with connect(db_url) as conn:
            while not stop_sampling.is_set():
                row = conn.execute(API_BACKENDS).fetchone()
                held.append(int(row["n"]) if row else 0)
                await asyncio.sleep(0.1)

    sampler = asyncio.create_task(sample())
    opening = time.monotonic()
    tasks: list[asyncio.Task[None]] = []
    for start in range(0, len(streams), args.open_batch):
        batch = streams[start : start + args.open_batch]
        tasks += [asyncio.create_task(follow(port, s)) for s in batch]
        await asyncio.gather(*(s.opened.wait() for s in batch))
    open_s = time.monotonic() - opening
    errors = [s.error for s in streams if s.error]
    held_open = max(held) if held else 0

    sent: dict[tuple[str, tuple[str, float]], float] = {}
    interval = 1.0 / args.rate
    cpu_before, wall_before = cpu_seconds(api_pid), time.monotonic()
    client_before = time.process_time()
    with connect(db_url) as conn:
        for step in ("progress", "complete"):
            for job_id in by_id:
                job = by_id[job_id]
                due = time.monotonic() + interval
                t0 = time.time()
                if step == "progress":
                    queue.heartbeat(conn, job, progress=0.5, lease=3600)
                    sent[(job_id, ("running", 0.5))] = t0
                else:
                    queue.complete(conn, job, output={"stems": {}})
                    sent[(job_id, ("succeeded", 1.0))] = t0
                await asyncio.sleep(max(0.0, due - time.monotonic()))
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=300)
    api_cpu = cpu_seconds(api_pid) - cpu_before
    client_cpu = time.process_time() - client_before
    changes_wall = time.monotonic() - wall_before
    stop_sampling.set()
    await sampler
    latencies = []
    missing = 0
    for stream in streams:
        for (job_id, state), t0 in sent.items():
            if job_id != stream.job_id:
                continue
            got = stream.received.get(state)
            if got is None:
                missing += 1
            else:
                latencies.append((got - t0) * 1000)
    return {
        "streams": len(streams),
        "jobs": jobs_n,
        "users": len(users),
        "open_errors": len(errors),
        "first_error": errors[0] if errors else "",
        "open_s": open_s,
        "held_max": max(held) if held else 0,
        "held_open": held_open,
        "changes": len(sent),
        "api_cpu_share": api_cpu / changes_wall,
        "client_cpu_share": client_cpu / changes_wall,
        "deliveries": len(latencies),
        "missing": missing,
        "p50": percentile(latencies, 50) if latencies else float("nan"),
        "p99": percentile(latencies, 99) if latencies else float("nan"),
        "max": max(latencies) if latencies else float("nan"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=10_000)
    parser.add_argument("--streams-per-job", type=int, default=10)
    parser.add_argument("--streams-per-user", type=int, default=100)
    parser.add_argument("--rate", type=float, default=50.0, help="job changes per second")
    parser.add_argument("--open-batch", type=int, default=200)
    parser.add_argument("--api-src", type=Path, default=REPO_ROOT)
    parser.add_argument("--out", default="sse.md")
    args = parser.parse_args(argv)
    args.port = free_port()
    with bench_postgres() as pg, scratch_database(pg.admin_url, "bench_sse") as db_url:
        migrate(db_url, args.api_src / "supabase" / "migrations")
        with tempfile.TemporaryDirectory(prefix="stemfleet-bench-sse-") as tmp:
            api = start_api(db_url, args.port, Path(tmp), args)
            try:
                load_before = load_average()
                result = asyncio.run(run(db_url, args, api.pid))
                load_after = load_average()
            finally:
                api.terminate()
                api.wait(timeout=30)
        pg_facts = postgres_info(db_url)
    table = markdown_table(
        ["streams", "jobs", "API db connections (max)", "events", "missing", "p50 ms", "p99 ms",
         "max ms", "open s", "API CPU while changing"],
        [[
            result["streams"], result["jobs"], result["held_max"], result["deliveries"],
            result["missing"], f"{result['p50']:.1f}", f"{result['p99']:.1f}",
            f"{result['max']:.1f}", f"{result['open_s']:.1f}",
            f"{result['api_cpu_share']:.0%} of a core",
        ]],
    )  # fmt: skip
    text = "\n".join(
        [
            f"# Benchmark 7: event streams on one API process ({now_utc()})",
            "",
            table,
            "",
            f"- API source: {args.api_src}",
            f"- {result['users']} users, {args.streams_per_job} streams per job, "
            f"{args.rate:g} job changes per second (a progress heartbeat, then the completion, "
            "for every job); latency is from just before the change's statement was sent to "
            "its event's arrival at the client",
            f"- the client's own CPU while changing: {result['client_cpu_share']:.0%} of a core",
            f"- streams refused or failed at opening: {result['open_errors']} "
            f"{result['first_error']}",
            f"- load average before / after: {load_before} / {load_after}",
            f"- machine: {machine_info()}",
            f"- Postgres: {pg_facts}",
        ]
    )
    print(text)
    write_result(args.out, text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
