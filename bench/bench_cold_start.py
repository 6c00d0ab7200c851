"""Worker cold start per engine: process start to first job claimed, and the first job's time.

A real `python -m worker` process is started with a job already queued (a clip of `--seconds`),
for each engine in turn: `eager`, `compiled` with an empty compile cache (a fresh machine) and
`compiled` with the cache the previous run left (a restart, or an image whose cache was warmed
at build time). Reported per run: process start to the job claimed (imports, model load,
engine preparation), the job's run (claimed to succeeded: decode, separation, encode, upload)
and the worker's CPU seconds. The model is a random-weight htdemucs folder given by --repo
(scripts/fetch_model.py --random-weights), or with --small the tests' small htdemucs.

    .venv/bin/python bench/bench_cold_start.py --small --seconds 10
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import psutil
import soundfile as sf

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench"), str(ROOT / "tests")]

from _common import (  # noqa: E402
    bench_postgres,
    load_average,
    machine_info,
    markdown_table,
    now_utc,
    scratch_database,
    write_result,
)
from bench_dead_worker import as_url  # noqa: E402

from app.db import connect  # noqa: E402
from app.migrate import migrate  # noqa: E402
from app.queue import Queue  # noqa: E402
from app.settings import load_settings  # noqa: E402
from app.storage import input_key, storage_from_settings  # noqa: E402

USER = uuid.UUID("00000000-0000-4000-8000-00000000be16")
# label -> engine; the compiled runs share one cache folder: empty at the first, warm after
RUNS = {"eager": "eager", "compiled-cold": "compiled", "compiled-warm": "compiled"}


def one_run(url: str, data: Path, *, engine: str, model: str, repo: Path, cache: Path,
            seconds: float, threads: int, timeout: float) -> dict[str, float] | None:  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("STEMFLEET_")}
    env |= {
        "STEMFLEET_DATABASE_URL": as_url(url),
        "STEMFLEET_STORAGE": "local",
        "STEMFLEET_DATA_DIR": str(data),
        "STEMFLEET_MODEL": model,
        "STEMFLEET_MODEL_REPO": str(repo),
        "STEMFLEET_DEVICE": "cpu",
        "STEMFLEET_ENGINE": engine,
        "STEMFLEET_COMPILE_CACHE": str(cache),
        "STEMFLEET_THREADS": str(threads),
        "STEMFLEET_LEASE": "3600",
        "STEMFLEET_LOG_LEVEL": "WARNING",
    }
    settings = load_settings(database_url=as_url(url), data_dir=data, storage="local")
    clip = data / "clip.wav"
    rng = np.random.default_rng(1)
    sf.write(clip, rng.uniform(-0.3, 0.3, (int(44100 * seconds), 2)).astype("float32"), 44100)
    key = input_key(USER, f"{uuid.uuid4().hex}.wav")
    storage_from_settings(settings).put_file(key, clip)
    with connect(url) as conn:
        job, _ = Queue().enqueue(conn, user_id=USER, input_key=key, params={"model": model})
    started = time.monotonic()
    process = subprocess.Popen([sys.executable, "-m", "worker"], env=env, cwd=ROOT)
    watched = psutil.Process(process.pid)
    claimed = finished = None
    cpu = 0.0
    try:
        with connect(url) as conn:
            while finished is None:
                if time.monotonic() - started > timeout:
                    return None  # reported as "more than the timeout"
                if process.poll() is not None:
                    raise SystemExit(f"the worker exited ({process.returncode}) before the job")
                status = Queue().get(conn, job.id).status
                if status != "queued" and claimed is None:
                    claimed = time.monotonic()
                if status in ("succeeded", "failed"):
                    if status == "failed":
                        raise SystemExit(f"the job failed: {Queue().get(conn, job.id).error}")
                    finished = time.monotonic()
                    times = watched.cpu_times()
                    cpu = times.user + times.system + times.children_user + times.children_system
                time.sleep(0.02)
    finally:
        process.terminate()  # a worker mid-compile finishes its job first: kill it then
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    assert claimed is not None
    return {"start_to_claim": claimed - started, "job": finished - claimed, "cpu": cpu}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, help="a model folder (fetch_model.py)")
    parser.add_argument("--model", default="htdemucs")
    parser.add_argument("--small", action="store_true", help="the tests' small htdemucs")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", default=",".join(RUNS), help="of " + ", ".join(RUNS))
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per run")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp, bench_postgres() as pg:
        repo, model = args.repo, args.model
        if args.small:
            from audio_fixtures import write_random_htdemucs_repo

            repo, model = write_random_htdemucs_repo(Path(tmp) / "models", name="htdemucs")
        if repo is None:
            raise SystemExit("give --repo (scripts/fetch_model.py --random-weights) or --small")
        cache = Path(tmp) / "compile-cache"
        with scratch_database(pg.admin_url, "bench_cold") as url:
            migrate(url)
            for label in args.runs.split(","):
                data = Path(tempfile.mkdtemp(dir=tmp))
                result = one_run(url, data, engine=RUNS[label], model=model, repo=repo,
                                 cache=cache, seconds=args.seconds, threads=args.threads,
                                 timeout=args.timeout)  # fmt: skip
                if result is None:
                    print(label, f"no result within {args.timeout:g} s", flush=True)
                    rows.append((label, f"> {args.timeout:g} (no result)", "", "", ""))
                    break  # a warm run after a cold one that never finished would be cold
                print(label, {k: round(v, 2) for k, v in result.items()}, flush=True)
                rows.append((label, f"{result['start_to_claim']:.1f}", f"{result['job']:.1f}",
                             f"{result['start_to_claim'] + result['job']:.1f}",
                             f"{result['cpu']:.1f}"))  # fmt: skip
    facts = {**machine_info(), "load average": load_average()}
    described = "the tests' small random-weight HTDemucs (~0.4 M parameters)"
    if not args.small:
        described = model
    write_result(
        "cold_start.md",
        "# Worker cold start per engine\n\n"
        f"Run {now_utc()} with `.venv/bin/python bench/bench_cold_start.py "
        f"{'--small' if args.small else '--repo ...'} --seconds {args.seconds:g} --threads "
        f"{args.threads} --runs {args.runs}`: model {described}, a {args.seconds:g} s clip queued "
        "before the worker starts.\n\n"
        + markdown_table(
            ["engine", "start to claim, s", "first job, s", "start to done, s", "worker CPU, s"],
            rows,
        )
        + "\n\n"
        + "\n".join(f"- {k}: {v}" for k, v in facts.items())
        + "\n",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
