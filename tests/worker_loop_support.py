"""The worker tests' shared parts: real Postgres (a fresh database per test: the worker's own
connections must see each other's commits), a real S3 endpoint (moto's server through boto3) and
real Demucs (`demucs_unittest`), a worker factory, and handmade bad inputs."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from app.clock import Clock
from app.settings import load_settings
from app.storage import Storage, storage_from_settings
from tests.worker_helpers import (
    libpq_url,
)
from worker.loop import Worker
from worker.separation import Separator

SOURCES = ["drums", "bass", "other", "vocals"]
# A job that keeps the tiny model busy for a few seconds on CPU: long enough to act on it
# (cancel, break storage, signal) while it runs.
LONG_PARAMS: dict[str, Any] = {"segment": 1, "shifts": 4}
LONG_SECONDS = 3.0


@pytest.fixture(scope="module")
def separator() -> Separator:
    return Separator(
        load_settings(model="demucs_unittest", device="cpu", model_repo=None, threads=1)
    )


@pytest.fixture
def base_settings(db_url: str, s3_env: dict[str, str], tmp_path: Path) -> dict[str, Any]:
    return {
        "database_url": libpq_url(db_url),
        "model": "demucs_unittest",
        "model_repo": None,
        "device": "cpu",
        "threads": 1,  # the tiny model runs much faster single-threaded on a busy machine
        "lease": 5,
        "heartbeat_interval": 0.2,
        "poll_interval": 0.5,
        "backoff_base": 0,
        "worker_idle_exit": 0,
        "shutdown_grace": 0,
        "data_dir": tmp_path / "data",
    }


@pytest.fixture
def storage(base_settings: dict[str, Any]) -> Storage:
    return storage_from_settings(load_settings(**base_settings))


@pytest.fixture
def make_worker(
    base_settings: dict[str, Any], separator: Separator, tmp_path: Path
) -> Iterator[Callable[..., Worker]]:
    workers: list[Worker] = []

    def make(
        clock: Clock | None = None,
        separator_: Separator | None = None,
        prefetch: bool = True,
        **overrides: Any,
    ) -> Worker:
        settings = load_settings(
            **{**base_settings, "machine_id": f"test-{uuid.uuid4().hex[:8]}", **overrides}
        )
        worker = Worker(
            settings,
            separator=separator_ or separator,
            clock=clock,
            prefetch=prefetch,
            work_dir=tmp_path / "work",
        )
        worker.start()
        workers.append(worker)
        return worker

    yield make
    for worker in workers:
        worker.close()


def run_in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = fn()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, box


def joined(thread: threading.Thread, box: dict[str, Any], timeout: float = 120) -> Any:
    thread.join(timeout)
    assert not thread.is_alive(), "the worker did not return in time"
    if "error" in box:
        raise box["error"]
    return box["result"]


def write_empty(path: Path) -> Path:
    path.write_bytes(b"")
    return path


def write_float_wav(path: Path, bad: float, *, frames: int = 44100) -> Path:
    """A float32 wav of `frames` frames whose middle sample is `bad` (NaN, infinite, or a
    plain value for a file that is only too short)."""
    data = np.full((frames, 2), 0.1, dtype=np.float32)
    data[frames // 2, 0] = bad
    sf.write(str(path), data, 44100, subtype="FLOAT")
    return path


def work_dir_is_clean(tmp_path: Path) -> bool:
    """No job file left (the worker's own scratch folder lives until it closes)."""
    work = tmp_path / "work"
    return not work.exists() or not any(p.is_file() for p in work.rglob("*"))


@pytest.fixture(scope="module")
def batching_separator() -> Separator:
    """A separator whose forward passes hold 8 segments, as on an accelerator."""
    return Separator(
        load_settings(
            model="demucs_unittest", device="cpu", model_repo=None, threads=1, batch_size=8
        )
    )
