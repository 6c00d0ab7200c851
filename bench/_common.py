"""Helpers shared by the benchmarks: a Postgres to run against, machine facts for the results,
percentiles and result files.

Postgres comes from STEMFLEET_BENCH_DATABASE_URL (a server we may create databases on), else a
throwaway cluster started from the machine's binaries with app.pgserver.LocalPostgres, with
normal durability (fsync and synchronous_commit on), stopped and deleted at the end.
"""

from __future__ import annotations

import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from psycopg import sql

from app.db import connect
from app.pgserver import scratch_database, throwaway_postgres

__all__ = ["scratch_database"]  # the benchmarks' way to a database of their own

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "bench" / "results"
BENCH_DATABASE_ENV = "STEMFLEET_BENCH_DATABASE_URL"


@dataclass(frozen=True)
class BenchPostgres:
    admin_url: str  # a maintenance database on a server we may create databases on
    source: str  # how it was obtained, for the results
    data_dir: Path | None = None  # the cluster's folder when we started it (for disk probes)


@contextmanager
def bench_postgres() -> Iterator[BenchPostgres]:
    """The server to benchmark against (see the module docstring)."""
    env_url = os.environ.get(BENCH_DATABASE_ENV)
    if env_url:
        yield BenchPostgres(env_url, f"{BENCH_DATABASE_ENV} (an existing server)")
        return
    with throwaway_postgres("stemfleet-bench-pg-", fast_unsafe=False) as server:
        yield BenchPostgres(
            server.url,
            "throwaway cluster (app.pgserver.LocalPostgres, initdb defaults) in "
            f"{server.data_dir.parent}",
            server.data_dir,
        )


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def machine_info() -> dict[str, str]:
    return {
        "cpus": str(os.cpu_count()),
        "cpu model": cpu_model(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
    }


def disk_flush_ms(directory: Path, writes: int = 200) -> tuple[float, float]:
    """p50 and p99 of one 8 kB write + fdatasync in `directory`: the floor under every durable
    commit (what pg_test_fsync measures for wal_sync_method=fdatasync)."""
    block = os.urandom(8192)
    samples: list[float] = []
    fd, name = tempfile.mkstemp(prefix="flush-probe-", dir=directory)
    try:
        for _ in range(writes):
            os.lseek(fd, 0, os.SEEK_SET)
            t0 = time.perf_counter()
            os.write(fd, block)
            os.fdatasync(fd)
            samples.append((time.perf_counter() - t0) * 1000)
    finally:
        os.close(fd)
        os.unlink(name)
    return percentile(samples, 50), percentile(samples, 99)


POSTGRES_SETTINGS = (
    "fsync",
    "synchronous_commit",
    "wal_sync_method",
    "full_page_writes",
    "shared_buffers",
    "max_connections",
)


def postgres_info(url: str) -> dict[str, str]:
    with connect(url) as conn:
        row = conn.execute("select version() as v").fetchone()
        info = {"postgres": str(row["v"]) if row else "unknown"}
        for name in POSTGRES_SETTINGS:
            setting = conn.execute(sql.SQL("show {}").format(sql.Identifier(name))).fetchone()
            info[name] = str(next(iter(setting.values()))) if setting else "?"
    return info


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty sequence."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(p / 100 * len(ordered))))
    return ordered[rank - 1]


def now_utc() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def report_head(
    title: str,
    command: str,
    facts: dict[str, str],
    runtime_s: float | None = None,
    *,
    machine_heading: bool = True,
) -> list[str]:
    """The opening lines every benchmark report shares: its title, when and how it ran (and for
    how long), and the machine's facts as a table, under a `## Machine` heading unless the
    report leaves it out."""
    run = f"Run {now_utc()} with `{command}`"
    if runtime_s is not None:
        run += f" (whole run: {runtime_s / 60:.1f} min)"
    run += "."
    heading = ["## Machine", ""] if machine_heading else []
    return [f"# {title}", "", run, "", *heading, markdown_table(["", ""], list(facts.items()))]


def write_result(name: str, text: str) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / name
    path.write_text(text)
    return path


def publish(text: str, path: Path | None) -> None:
    """Print a report and, when `path` is given, write it there."""
    print(text)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path}", file=sys.stderr)
