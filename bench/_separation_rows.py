"""The rows of benchmark 2 (bench/bench_separation.py): each one separates every clip once per
round and says how long that took.

- `WorkerRow`: a real `python -m worker` process with STEMFLEET_ENGINE=<engine>, started after
  all the clips' jobs are queued (a user's uploads, then a worker that comes up to a backlog):
  wall time from the process' start to the last job seen succeeded, so its start-up (imports,
  model load, any compilation) is in it, as the CLI's is in the CLI's; the start-up itself
  (process start → first job claimed, database clock) is reported too. The engine's artefact
  cache (STEMFLEET_COMPILE_CACHE) is kept across rounds: the first round compiles or exports
  cold, later ones start like a restarted worker. CPU time: the worker
  process and its children (psutil), read when the last job is final.
- `CliAllRow`: `python -m demucs.separate` given every clip in one invocation (`demucs *.wav`).
- `CliPerClipRow`: the same command once per clip.
- `ApplyRow`: Demucs' `apply_model` in a loop in this process, the model loaded once beforehand
  (not timed): the CLI's arithmetic without its start-up, the reference a runner must beat.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import torch

from app.db import connect
from app.migrate import migrate
from app.queue import Queue
from app.settings import load_settings
from app.storage import LocalStorage, input_key, storage_from_settings
from bench._common import load_average, scratch_database
from bench._separation_common import (
    BENCH_USER,
    STEMS,
    check_stem_files,
    children_cpu_s,
    frames_of,
)
from tests.worker_helpers import libpq_url
from worker.engines import autocast


@dataclass
class Options:
    """What every row shares: the clips' settings, the model folder, device and threads."""

    model: str
    repo: Path
    device: str
    precision: str
    threads: int
    workdir: Path
    batch_size: int = 0
    group_jobs: int = 0


@dataclass
class Round:
    """One row's pass over all clips."""

    wall_s: float
    cpu_s: float
    load_before: str
    load_after: str
    extra: dict[str, float] = field(default_factory=dict)


class Row:
    """A way to separate the clips; `run` does it once and returns the round's figures."""

    key = ""
    name = ""

    def __init__(self, options: Options) -> None:
        self.options = options

    def run(self, clips: list[Path], round_index: int) -> Round:
        raise NotImplementedError

    def close(self) -> None:
        """Release what the row holds (a loaded model, a database)."""


def _check_folder(folder: Path, clip: Path, label: str) -> None:
    check_stem_files({stem: folder / f"{stem}.wav" for stem in STEMS}, frames_of(clip), label)


# --- stemfleet: a worker process per engine ------------------------------------------------------
class WorkerRow(Row):
    def __init__(self, options: Options, engine: str, admin_url: str) -> None:
        super().__init__(options)
        self.engine, self.admin_url = engine, admin_url
        self.key = f"stemfleet-{engine}"
        self.name = f"stemfleet worker, STEMFLEET_ENGINE={engine}"

    def _environment(self, db_url: str, root: Path) -> dict[str, str]:
        o = self.options
        env = {
            **os.environ,
            "STEMFLEET_DATABASE_URL": db_url,
            "STEMFLEET_STORAGE": "local",
            "STEMFLEET_STORAGE_ROOT": str(root / "storage"),
            "STEMFLEET_DATA_DIR": str(root / "data"),
            "STEMFLEET_MODEL": o.model,
            "STEMFLEET_MODEL_REPO": str(o.repo),
            "STEMFLEET_DEVICE": o.device,
            "STEMFLEET_PRECISION": o.precision,
            "STEMFLEET_THREADS": str(o.threads),
            "STEMFLEET_BATCH_SIZE": str(o.batch_size),
            "STEMFLEET_GROUP_JOBS": str(o.group_jobs),
            "STEMFLEET_WORKER_IDLE_EXIT": "0",
            "STEMFLEET_LOG_LEVEL": "WARNING",
            "STEMFLEET_MACHINE_ID": f"bench-{self.engine}-{uuid.uuid4().hex[:6]}",
            "STEMFLEET_ENGINE": self.engine,
            # one artefact cache per engine across rounds: round 1 starts cold (compile or
            # export inside its time), later rounds start as a restarted worker does
            "STEMFLEET_COMPILE_CACHE": str(o.workdir / f"engine-cache-{self.engine}"),
        }
        return env

    def run(self, clips: list[Path], round_index: int) -> Round:
        root = self.options.workdir / f"{self.key}-{round_index}"
        with ExitStack() as stack:
            db_url = libpq_url(stack.enter_context(scratch_database(self.admin_url, "sep")))
            migrate(db_url)
            env = self._environment(db_url, root)
            settings = load_settings(
                database_url=db_url, storage="local", storage_root=root / "storage"
            )
            storage = storage_from_settings(settings)
            assert isinstance(storage, LocalStorage)
            queue = Queue()
            with connect(db_url) as conn:
                queue.serve_models(conn, [self.options.model])
                ids = []
                for clip in clips:
                    key = input_key(BENCH_USER, clip.name)
                    storage.put_file(key, clip, "audio/wav")
                    job, _ = queue.enqueue(
                        conn,
                        user_id=BENCH_USER,
                        input_key=key,
                        params={"model": self.options.model},
                    )
                    ids.append(job.id)
                load = load_average()
                spawned_db = conn.execute("select clock_timestamp() as t").fetchone()["t"]
                started = time.perf_counter()
                process = subprocess.Popen([sys.executable, "-m", "worker"], env=env)
                stack.callback(_stop, process)
                jobs, cpu = _wait_all_final(conn, queue, ids, process)
                wall = time.perf_counter() - started
        failed = [(j.id, j.status, j.error) for j in jobs if j.status != "succeeded"]
        if failed:
            raise SystemExit(f"{self.name}: jobs did not succeed: {failed}")
        for job, clip in zip(jobs, clips, strict=True):
            assert job.output is not None
            files = {stem: storage.path(key) for stem, key in job.output["stems"].items()}
            check_stem_files(files, frames_of(clip), f"{self.name}, job {job.id}")
        first_claim = min(j.started_at for j in jobs if j.started_at is not None)
        last_done = max(j.finished_at for j in jobs if j.finished_at is not None)
        stages = {
            name: sum(float(j.timings.get(name, 0.0)) for j in jobs)
            for name in ("decode", "separate", "encode")
        }
        return Round(
            wall,
            cpu,
            load,
            load_average(),
            {
                "startup_s": (first_claim - spawned_db).total_seconds(),
                "claimed_to_done_s": (last_done - first_claim).total_seconds(),
                **{f"{name}_s": value for name, value in stages.items()},
            },
        )


def _wait_all_final(
    conn: Any, queue: Queue, ids: list[uuid.UUID], process: subprocess.Popen[bytes]
) -> tuple[list[Any], float]:
    """Poll the jobs (every 0.1 s: a benchmark's clock, not a test's wait) until all are final;
    returns them and the worker process' CPU seconds (children included) at that moment."""
    watched = psutil.Process(process.pid)
    pending = set(ids)
    cpu = 0.0
    while pending:
        if process.poll() is not None:
            raise SystemExit(f"the worker exited with {process.returncode} before the jobs ended")
        times = watched.cpu_times()
        cpu = times.user + times.system + times.children_user + times.children_system
        pending = {i for i in pending if not queue.get(conn, i).is_final}
        if pending:
            time.sleep(0.1)
    return [queue.get(conn, i) for i in ids], cpu


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# --- the Demucs command line ---------------------------------------------------------------------
def _cli(options: Options, out: Path, clips: list[Path]) -> tuple[float, float]:
    command = [
        sys.executable, "-m", "demucs.separate", "-n", options.model, "--repo", str(options.repo),
        "-o", str(out), "-d", options.device, *map(str, clips),
    ]  # fmt: skip
    cpu0, started = children_cpu_s(), time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"demucs.separate failed:\n{done.stderr[-3000:]}")
    for clip in clips:
        _check_folder(out / options.model / clip.stem, clip, f"Demucs CLI on {clip.name}")
    return wall, children_cpu_s() - cpu0


class CliAllRow(Row):
    key = "cli-all"
    name = "Demucs CLI, all clips in one invocation (`demucs *.wav`)"

    def run(self, clips: list[Path], round_index: int) -> Round:
        load = load_average()
        wall, cpu = _cli(self.options, self.options.workdir / f"{self.key}-{round_index}", clips)
        return Round(wall, cpu, load, load_average())


class CliPerClipRow(Row):
    key = "cli-each"
    name = "Demucs CLI, one invocation per clip"

    def run(self, clips: list[Path], round_index: int) -> Round:
        load = load_average()
        out = self.options.workdir / f"{self.key}-{round_index}"
        walls, cpus = zip(*(_cli(self.options, out, [clip]) for clip in clips), strict=True)
        return Round(sum(walls), sum(cpus), load, load_average())


# --- apply_model in a loop -----------------------------------------------------------------------
class ApplyRow(Row):
    key = "apply"
    name = "Demucs `apply_model` loop (this process, model loaded once, not timed)"

    def __init__(self, options: Options) -> None:
        from demucs.pretrained import get_model

        super().__init__(options)
        started = time.perf_counter()
        self.model = get_model(options.model, repo=options.repo)
        self.model.to(options.device).eval()
        self.load_s = time.perf_counter() - started

    def _one(self, clip: Path, out: Path) -> None:
        """The CLI's own steps: sphn decode, convert_audio, normalise, apply_model, save_audio."""
        import sphn
        from demucs.apply import apply_model
        from demucs.audio import convert_audio, save_audio

        model = self.model
        data, rate = sphn.read(str(clip))
        wav = convert_audio(torch.from_numpy(data), int(rate), model.samplerate, 2)
        ref = wav.mean(0)
        mean, std = ref.mean(), ref.std() + 1e-8
        with autocast(self.options.device, self.options.precision), torch.inference_mode():
            sources = apply_model(
                model, ((wav - mean) / std)[None], shifts=1, split=True, overlap=0.25,
                device=self.options.device,
            )  # fmt: skip
        sources = sources.float().cpu() * std + mean
        folder = out / clip.stem
        folder.mkdir(parents=True, exist_ok=True)
        for name, source in zip(model.sources, sources[0], strict=True):
            save_audio(source, folder / f"{name}.wav", samplerate=model.samplerate)
        _check_folder(folder, clip, f"apply_model loop on {clip.name}")

    def run(self, clips: list[Path], round_index: int) -> Round:
        load = load_average()
        out = self.options.workdir / f"{self.key}-{round_index}"
        cpu0, started = time.process_time(), time.perf_counter()
        for clip in clips:
            self._one(clip, out)
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu0
        return Round(wall, cpu, load, load_average(), {"model_load_s": self.load_s})

    def close(self) -> None:
        del self.model
