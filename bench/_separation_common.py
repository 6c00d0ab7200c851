"""Helpers shared by the separation benchmarks (bench_separation.py, bench_overhead.py).

- `prepare_model`: a random-weight htdemucs in a Demucs local model folder, written by
  scripts/fetch_model.py's own functions (the real weights cannot be downloaded everywhere; the
  architecture, and so the time, is the published one).
- `write_clips`: synthetic songs from scripts/sample_clip.py (44.1 kHz stereo wav int16).
- `use_threads`: one thread count for this process (torch) and its children (OMP / MKL).
- `ForwardTimer`: the seconds spent in the model's forward passes, from forward hooks on the
  model's members (no change to product code).
- `WorkerBench`: a throwaway Postgres (bench/_common.py), local storage in a temporary folder
  and one stemfleet `Worker` running its loop on a thread; `run_jobs` enqueues jobs and waits,
  woken by the queue's own NOTIFY events, until every one is final.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
for _path in (ROOT, ROOT / "scripts"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import soundfile as sf  # noqa: E402
import torch  # noqa: E402
from fetch_model import random_weights_model, save_local_repo  # noqa: E402
from sample_clip import RATE, song  # noqa: E402

from app.db import Listener, connect  # noqa: E402
from app.log import configure  # noqa: E402
from app.migrate import migrate  # noqa: E402
from app.queue import EVENTS_CHANNEL, Job, Queue  # noqa: E402
from app.settings import Settings, load_settings  # noqa: E402
from app.storage import LocalStorage, input_key, storage_from_settings  # noqa: E402
from bench._common import (  # noqa: E402
    bench_postgres,
    cpu_model,
    load_average,
    scratch_database,
)
from tests.worker_helpers import libpq_url  # noqa: E402
from worker.loop import Worker  # noqa: E402
from worker.separation import Separator  # noqa: E402

MODEL_NAME = "htdemucs"
STEMS = ["drums", "bass", "other", "vocals"]
BENCH_USER = uuid.UUID("00000000-0000-4000-8000-00000000be00")


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def quiet_logs() -> None:
    """The worker logs every job; the benchmarks print their own progress."""
    configure("WARNING")


def use_threads(threads: int) -> None:
    """`threads` for torch here and for every child process (the Demucs command line)."""
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(threads)
    torch.set_num_threads(threads)


def check_device(device: str, precision: str) -> None:
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device on this machine")
    if device == "cpu" and precision == "fp16":
        raise SystemExit("--precision fp16 runs on accelerators only: use fp32 or bf16 on CPU")


def machine_facts(threads: int, device: str) -> dict[str, str]:
    facts = {
        "cpus": str(os.cpu_count()),
        "cpu model": cpu_model(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads (torch, OMP_NUM_THREADS, STEMFLEET_THREADS)": str(threads),
        "device": device,
    }
    if device == "cuda":
        facts["gpu"] = torch.cuda.get_device_name(0)
    return facts


def add_run_arguments(parser: argparse.ArgumentParser, results: Path) -> None:
    """The options every separation benchmark takes: threads, device, precision, the worker's
    batch size, where the report goes (`results` by default) and the work folder."""
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    parser.add_argument("--batch-size", type=int, default=0, help="0: the worker's default")
    parser.add_argument("--results", type=Path, default=None, help=f"default: {results}")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the work folder")


def set_up_run(threads: int, device: str, precision: str) -> dict[str, str]:
    """What a separation benchmark does first: refuse a device or precision it cannot use, quiet
    the worker's logs, use `threads` threads here and in children; returns the machine's facts."""
    check_device(device, precision)
    quiet_logs()
    use_threads(threads)
    return machine_facts(threads, device)


TINY_MODEL = "htdemucs_tiny"


def prepare_model(dest: Path, name: str = MODEL_NAME) -> Path:
    """A random-weight model saved as a local model folder: htdemucs as released, or
    TINY_MODEL, the tests' small HTDemucs (tests/audio_fixtures.py) for `--quick` checks."""
    if name == TINY_MODEL:
        from tests.audio_fixtures import write_random_htdemucs_repo

        write_random_htdemucs_repo(dest, name=TINY_MODEL)
        return dest
    save_local_repo(name, random_weights_model(name), dest)
    return dest


def write_clips(folder: Path, count: int, seconds: float) -> list[Path]:
    """`count` different synthetic songs of `seconds` each: 44.1 kHz stereo wav int16."""
    folder.mkdir(parents=True, exist_ok=True)
    clips = []
    for index in range(count):
        path = folder / f"clip{index:02d}.wav"
        sf.write(str(path), song(seconds, seed=index + 1), RATE, subtype="PCM_16")
        clips.append(path)
    return clips


def audio_seconds(paths: Iterable[Path]) -> float:
    return sum(sf.info(str(p)).duration for p in paths)


def check_stem_files(files: dict[str, Path], frames: int, label: str) -> None:
    """Four int16 stereo wav stems of the input's length, or SystemExit naming the problem."""
    if sorted(files) != sorted(STEMS):
        raise SystemExit(f"{label}: stems {sorted(files)}, expected {sorted(STEMS)}")
    for stem, path in files.items():
        info = sf.info(str(path))
        if (info.subtype, info.channels, info.samplerate) != ("PCM_16", 2, RATE):
            raise SystemExit(f"{label}: {stem} is {info.subtype} {info.channels} ch")
        if abs(info.frames - frames) > 1:
            raise SystemExit(f"{label}: {stem} has {info.frames} frames, expected {frames}")


def frames_of(path: Path) -> int:
    return int(sf.info(str(path)).frames)


class ForwardTimer:
    """Seconds inside the forward passes of `modules` (forward pre/post hooks), the number of
    passes and of segments they carried. On CUDA the hooks synchronise, so the time is the
    device's work, not the launch."""

    def __init__(self, modules: Iterable[torch.nn.Module], device: str) -> None:
        self.seconds = 0.0
        self.calls = 0
        self.items = 0
        self._sync = device.startswith("cuda")
        self._started = 0.0
        self._handles = []
        for module in modules:
            self._handles.append(module.register_forward_pre_hook(self._before))
            self._handles.append(module.register_forward_hook(self._after))

    def _before(self, module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        if self._sync:
            torch.cuda.synchronize()
        self._started = time.perf_counter()

    def _after(self, module: torch.nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if self._sync:
            torch.cuda.synchronize()
        self.seconds += time.perf_counter() - self._started
        self.calls += 1
        self.items += int(args[0].shape[0]) if args and hasattr(args[0], "shape") else 1

    def reset(self) -> None:
        self.seconds, self.calls, self.items = 0.0, 0, 0

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def members(model: Any) -> list[torch.nn.Module]:
    """The models that run forward passes: a bag's members, else the model itself."""
    return list(getattr(model, "models", [model]))


@dataclass
class JobsRun:
    """What `WorkerBench.run_jobs` measured."""

    wall_s: float  # first enqueue called -> last job seen succeeded (client clock)
    cpu_s: float  # this process' CPU time (all threads) over the same window
    forward_s: float  # model forward passes over the same window
    forward_calls: int
    forward_items: int
    jobs: list[Job]
    db_span_s: float  # first created_at -> last finished_at (database clock)
    load_before: str
    load_after: str

    def stage_sum(self, name: str) -> float:
        return sum(float(job.timings.get(name, 0.0)) for job in self.jobs)


# WorkerBench's fields that are the worker's settings of the same name
WORKER_KNOBS = ("threads", "device", "precision", "batch_size", "group_jobs", "engine")


@dataclass
class WorkerBench:
    """Postgres + local storage + one Worker looping on a thread (use as a context manager)."""

    workdir: Path
    model_repo: Path
    threads: int
    device: str = "cpu"
    precision: str = "fp32"
    batch_size: int = 0
    group_jobs: int = 0
    # the forward timer hooks the members' PyTorch forward, which only eager runs (onnx and
    # compiled run the network outside it): the overhead is the worker's around any engine
    engine: str = "eager"
    settings: Settings | None = None
    separator: Separator | None = None
    worker: Worker | None = None
    timer: ForwardTimer | None = None
    postgres: str = ""
    model_load_s: float = 0.0
    worker_start_s: float = 0.0
    db_url: str = ""
    _stack: ExitStack = field(default_factory=ExitStack)
    _thread: threading.Thread | None = None
    _exit: dict[str, Any] = field(default_factory=dict)

    def __enter__(self) -> WorkerBench:
        try:
            self._start()
        except BaseException:
            self._stack.close()
            raise
        return self

    def _start(self) -> None:
        pg = self._stack.enter_context(bench_postgres())
        self.postgres = pg.source
        self.db_url = libpq_url(self._stack.enter_context(scratch_database(pg.admin_url, "sep")))
        migrate(self.db_url)
        self.settings = load_settings(
            database_url=self.db_url,
            storage="local",
            storage_root=self.workdir / "storage",
            data_dir=self.workdir / "data",
            model=MODEL_NAME,
            model_repo=self.model_repo,
            **{knob: getattr(self, knob) for knob in WORKER_KNOBS},
            worker_idle_exit=0,
            machine_id=f"bench-{uuid.uuid4().hex[:8]}",
        )
        started = time.perf_counter()
        self.separator = Separator(self.settings)
        self.model_load_s = time.perf_counter() - started
        self.timer = ForwardTimer(self.separator.loaded.members, self.separator.device)
        self._stack.callback(self.timer.close)
        worker = Worker(self.settings, separator=self.separator, work_dir=self.workdir / "work")
        started = time.perf_counter()
        worker.start()
        self.worker_start_s = time.perf_counter() - started
        self.worker = worker
        self._thread = threading.Thread(target=self._run, name="bench-worker", daemon=True)
        self._thread.start()
        self._stack.callback(self._stop)
        if not worker.idle.wait(120):
            raise SystemExit(f"the worker did not become idle: {self._exit}")

    def _run(self) -> None:
        assert self.worker is not None
        try:
            self._exit["reason"] = self.worker.run()
        except BaseException as exc:
            self._exit["error"] = exc

    def _stop(self) -> None:
        assert self.worker is not None and self._thread is not None
        self.worker.request_stop()
        self._thread.join(120)

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    @property
    def storage(self) -> LocalStorage:
        assert self.settings is not None
        storage = storage_from_settings(self.settings)
        assert isinstance(storage, LocalStorage)
        return storage

    def upload(self, clips: list[Path]) -> list[str]:
        """The inputs as a user's uploads: in storage before any job exists."""
        keys = []
        for clip in clips:
            key = input_key(BENCH_USER, clip.name)
            self.storage.put_file(key, clip, "audio/wav")
            keys.append(key)
        return keys

    def run_jobs(
        self, keys: list[str], params: dict[str, Any] | None = None, *, timeout: float = 3600
    ) -> JobsRun:
        """Enqueue a job per key back to back, then wait until all are final; every job must
        succeed."""
        assert self.timer is not None
        queue = Queue()
        with Listener(self.db_url, [EVENTS_CHANNEL]) as listener, connect(self.db_url) as conn:
            load_before = load_average()
            self.timer.reset()
            cpu0 = time.process_time()
            t0 = time.perf_counter()
            ids = [
                queue.enqueue(conn, user_id=BENCH_USER, input_key=key, params=params or {})[0].id
                for key in keys
            ]
            pending = {str(job_id): job_id for job_id in ids}
            to_check = list(pending)  # every job once, then those an event names
            deadline = t0 + timeout
            while pending:
                for name in to_check:
                    if name in pending and queue.get(conn, pending[name]).is_final:
                        del pending[name]
                if not pending:
                    break
                left = deadline - time.perf_counter()
                if left <= 0 or "error" in self._exit or "reason" in self._exit:
                    raise SystemExit(f"jobs not finished ({len(pending)} left): {self._exit}")
                events = listener.wait(min(left, 5.0))
                # no event for a while: look at every job (a missed NOTIFY cannot hang us)
                to_check = [payload for _, payload in events] if events else list(pending)
            wall = time.perf_counter() - t0
            cpu = time.process_time() - cpu0
            forward = (self.timer.seconds, self.timer.calls, self.timer.items)
            jobs = [queue.get(conn, job_id) for job_id in ids]
        failed = [(j.id, j.status, j.error) for j in jobs if j.status != "succeeded"]
        if failed:
            raise SystemExit(f"jobs did not succeed: {failed}")
        finished = [j.finished_at for j in jobs if j.finished_at is not None]
        db_span = (max(finished) - min(j.created_at for j in jobs)).total_seconds()
        return JobsRun(
            wall_s=wall,
            cpu_s=cpu,
            forward_s=forward[0],
            forward_calls=forward[1],
            forward_items=forward[2],
            jobs=jobs,
            db_span_s=db_span,
            load_before=load_before,
            load_after=load_average(),
        )

    def stem_files(self, job: Job) -> dict[str, Path]:
        assert job.output is not None
        return {stem: self.storage.path(key) for stem, key in job.output["stems"].items()}


def children_cpu_s() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def fmt(value: float, digits: int = 1) -> str:
    return f"{value:,.{digits}f}"


def iter_pairs(mapping: dict[str, str]) -> Iterator[list[str]]:
    for key, value in mapping.items():
        yield [key, value]
