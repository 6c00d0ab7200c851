"""Kill to requeued: how long a SIGKILLed local worker's job waits before it is queued again.

A real `python -m worker` (tiny model, CPU) started by the scaler's local provider claims a
30-second clip; it is SIGKILLed mid-job; the scaler then runs every `--interval` seconds (as
`stemfleet scaler run --interval` does; the embedded default is 1 s, the setting's default
30 s) until the job is queued again. Prints the seconds from the kill to the job back in the
queue (the lease, STEMFLEET_LEASE, was the only way back before: about 1 min 52 s).

    .venv/bin/python bench/bench_dead_worker.py [--rounds 3] [--interval 1]
"""

from __future__ import annotations

import argparse
import os
import signal
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import soundfile as sf
from _common import (
    bench_postgres,
    load_average,
    machine_info,
    markdown_table,
    percentile,
    report_head,
    scratch_database,
    write_result,
)
from psycopg.conninfo import conninfo_to_dict

from app.db import connect
from app.migrate import migrate
from app.queue import Queue
from app.settings import load_settings
from app.storage import input_key, storage_from_settings
from scaler.providers.local import LocalProvider
from scaler.reconcile import Scaler

USER = uuid.UUID("00000000-0000-4000-8000-00000000be01")


def wait_status(url: str, job_id: uuid.UUID, status: str, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    with connect(url) as conn:
        while Queue().get(conn, job_id).status != status:
            if time.monotonic() > deadline:
                raise SystemExit(f"job {job_id} never became {status}")
            time.sleep(0.02)
    return time.monotonic()


def as_url(conninfo: str) -> str:
    """A libpq conninfo as the postgresql:// URL STEMFLEET_DATABASE_URL takes."""
    if conninfo.startswith(("postgres://", "postgresql://")):
        return conninfo
    i = conninfo_to_dict(conninfo)
    auth = f"{i.get('user', 'postgres')}" + (f":{i['password']}" if i.get("password") else "")
    return f"postgresql://{auth}@{i.get('host', '127.0.0.1')}:{i.get('port', 5432)}/{i['dbname']}"


def one_round(url: str, data: Path, interval: float) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STEMFLEET_")}
    env |= {
        "STEMFLEET_STORAGE": "local",
        "STEMFLEET_DATA_DIR": str(data),
        "STEMFLEET_MODEL": "demucs_unittest",
        "STEMFLEET_DEVICE": "cpu",
        "STEMFLEET_LEASE": "60",
        "STEMFLEET_HEARTBEAT_INTERVAL": "1",
    }
    settings = load_settings(
        provider="local",
        database_url=as_url(url),
        data_dir=data,
        storage="local",
        max_machines=1,
        scale_up_cooldown=0,
    )
    clip = data / "clip.wav"
    rng = np.random.default_rng(1)
    sf.write(clip, rng.uniform(-0.3, 0.3, (44100 * 30, 2)).astype("float32"), 44100)
    key = input_key(USER, f"{uuid.uuid4().hex}.wav")
    storage_from_settings(settings).put_file(key, clip)
    provider = LocalProvider(settings, env=env)
    scaler = Scaler(settings, provider, database_url=url)
    with connect(url) as conn:
        job, _ = Queue().enqueue(conn, user_id=USER, input_key=key)
    outcome = scaler.run_once()
    created = next((r.machine_id for r in outcome.results if r.action.kind == "create"), None)
    assert created is not None, (outcome.message, outcome.plan)
    wait_status(url, job.id, "running", 300)
    child = provider._children[created]
    killed = time.monotonic()
    child.send_signal(signal.SIGKILL)
    while True:  # `scaler run --interval`: a run, then the rest of the interval
        began = time.monotonic()
        scaler.run_once()
        with connect(url) as conn:
            if Queue().get(conn, job.id).status == "queued":
                back = time.monotonic()
                break
        time.sleep(max(0.0, interval - (time.monotonic() - began)))
    for other in provider._children.values():
        if other.poll() is None:
            other.kill()
            other.wait()
    return back - killed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between runs")
    args = parser.parse_args()
    seconds = []
    with bench_postgres() as pg, scratch_database(pg.admin_url, "bench_dead") as url:
        migrate(url)
        for n in range(args.rounds):
            with tempfile.TemporaryDirectory() as tmp:
                seconds.append(one_round(url, Path(tmp), args.interval))
            print(f"round {n + 1}: kill to requeued {seconds[-1]:.2f} s", flush=True)
    summary = (
        f"kill to requeued, scaler every {args.interval:g} s: median "
        f"{percentile(seconds, 50):.2f} s, max {max(seconds):.2f} s over {len(seconds)} rounds"
    )
    print(summary)
    rows = [(n + 1, f"{value:.2f}") for n, value in enumerate(seconds)]
    command = (
        f".venv/bin/python bench/bench_dead_worker.py --rounds {args.rounds} "
        f"--interval {args.interval:g}"
    )
    facts = {
        **machine_info(),
        "load average": load_average(),
        "scaler interval": f"{args.interval:g} s",
    }
    head = report_head("Kill to requeued (a SIGKILLed local worker)", command, facts)
    table = markdown_table(["round", "kill to requeued, s"], rows)
    write_result("dead_worker.md", "\n".join([*head, "", table, "", summary, ""]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
