"""The worker loop end to end: real Postgres, a real S3 endpoint (moto's server through boto3)
and real Demucs (`demucs_unittest`). Time passes through an injected FakeClock where a test needs
it to; otherwise tests wait (bounded) on real events: the queue's NOTIFYs and threads ending.
Failures: test_worker_failures.py; groups and the pipeline: test_worker_groups.py."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import soundfile as sf

from app.clock import FakeClock
from app.db import Connection
from app.queue import Queue
from app.settings import load_settings
from app.storage import S3Storage, Storage
from tests.audio_fixtures import write_clip
from tests.worker_helpers import (
    submit,
    wait_for_job,
    wait_until_all_final,
)
from tests.worker_loop_support import (
    SOURCES,
    base_settings,
    joined,
    make_worker,
    run_in_thread,
    separator,
    storage,
    work_dir_is_clean,
)
from worker.loop import Worker
from worker.runtime import detect_identity
from worker.separation import Separator

# the shared fixtures this module uses, and those they depend on
__all__ = ["base_settings", "make_worker", "separator", "storage"]

pytestmark = pytest.mark.slow


# --- end to end ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "samplerate"), [("wav", 44100), ("flac", 44100), ("mp3", 44100), ("opus", 48000)]
)
def test_job_in_four_stems_out(
    fmt: str,
    samplerate: int,
    make_worker: Callable[..., Worker],
    storage: Storage,
    conn: Connection,
    tmp_path: Path,
) -> None:
    seconds = 1.5
    clip = write_clip(tmp_path / "song.wav", seconds)
    job = submit(storage, conn, clip, params={"format": fmt})
    worker = make_worker()

    (outcome,) = worker.run_once()

    assert outcome.status == "succeeded", outcome
    row = Queue().get(conn, job.id)
    assert row.status == "succeeded" and row.attempts == 1 and row.progress == 1
    assert row.output is not None
    assert row.output["stems"] == {s: f"outputs/{job.id}/{s}.{fmt}" for s in SOURCES}
    assert row.output["format"] == fmt
    assert row.output["model"] == "demucs_unittest"
    assert row.output["channels"] == 2
    assert row.duration_s == pytest.approx(seconds, abs=1 / 44100)
    for name in ("queue_wait", "download", "decode", "separate", "encode", "upload", "total"):
        assert row.timings[name] >= 0, name
    expected_frames = round(seconds * samplerate)
    for stem, key in row.output["stems"].items():
        local = tmp_path / "check" / f"{stem}.{fmt}"
        storage.get_file(key, local)
        info = sf.info(str(local))
        assert info.samplerate == samplerate, stem
        assert info.channels == 2, stem
        data, _ = sf.read(str(local), always_2d=True)
        assert abs(data.shape[0] - expected_frames) <= 1, (stem, data.shape)
    assert work_dir_is_clean(tmp_path)
    worker_row = Queue().get_worker(conn, worker.worker_id)  # type: ignore[arg-type]
    assert worker_row.state == "idle" and worker_row.current_job_id is None


def test_preview_separates_only_the_first_seconds(
    make_worker: Callable[..., Worker], storage: Storage, conn: Connection, tmp_path: Path
) -> None:
    clip = write_clip(tmp_path / "long.flac", 3.0)
    job = submit(storage, conn, clip, kind="preview")
    worker = make_worker(preview_seconds=1.0)
    (outcome,) = worker.run_once()
    assert outcome.status == "succeeded"
    row = Queue().get(conn, job.id)
    assert row.duration_s == pytest.approx(1.0, abs=1 / 44100)


# --- the loop: idle exit, drain, notify, two workers, prefetch -----------------------------------


def test_idle_worker_exits_after_the_idle_timeout(
    make_worker: Callable[..., Worker], conn: Connection
) -> None:
    clock = FakeClock()
    worker = make_worker(
        clock=clock, worker_idle_exit=600, poll_interval=5, heartbeat_interval=5, lease=60
    )
    started = clock.monotonic()

    assert worker.run() == "idle"

    assert clock.monotonic() - started >= 600
    assert Queue().get_worker(conn, worker.worker_id).state == "stopped"  # type: ignore[arg-type]


def test_draining_worker_with_no_job_exits(
    make_worker: Callable[..., Worker], conn: Connection
) -> None:
    clock = FakeClock()
    worker = make_worker(clock=clock, worker_idle_exit=0, heartbeat_interval=5, lease=60)
    assert worker.worker_id is not None
    Queue(clock).drain_worker(conn, worker.worker_id)

    assert worker.run() == "drained"
    assert Queue().get_worker(conn, worker.worker_id).state == "stopped"


def test_idle_worker_is_woken_by_notify_not_by_its_poll(
    make_worker: Callable[..., Worker],
    storage: Storage,
    conn: Connection,
    db_url: str,
    tmp_path: Path,
) -> None:
    # Polls, reaps and heartbeats are all far apart: only the NOTIFY can wake it in time.
    worker = make_worker(poll_interval=300, heartbeat_interval=120, lease=600)
    thread, box = run_in_thread(worker.run)
    assert worker.idle.wait(30), "the worker never went idle"

    job = submit(storage, conn, write_clip(tmp_path / "a.wav", 1.0))
    done = wait_for_job(db_url, job.id, lambda j: j.is_final, timeout=60, what="the end")

    assert done.status == "succeeded"
    worker.request_stop()
    assert joined(thread, box) == "stopped"


def test_two_workers_do_twenty_jobs_each_exactly_once(
    make_worker: Callable[..., Worker],
    storage: Storage,
    conn: Connection,
    db_url: str,
    tmp_path: Path,
) -> None:
    second_model = Separator(
        load_settings(model="demucs_unittest", device="cpu", model_repo=None, threads=1)
    )
    workers = [make_worker(), make_worker(separator_=second_model)]
    threads = [run_in_thread(w.run) for w in workers]
    clip = write_clip(tmp_path / "a.wav", 1.0)
    jobs = [submit(storage, conn, clip) for _ in range(20)]

    finished = wait_until_all_final(db_url, [j.id for j in jobs], timeout=240)

    for worker in workers:
        worker.request_stop()
    for thread, box in threads:
        assert joined(thread, box) == "stopped"
    assert {(j.status, j.attempts) for j in finished} == {("succeeded", 1)}
    done = [o.job_id for w in workers for o in w.recent if o.status == "succeeded"]
    assert sorted(done) == sorted(j.id for j in jobs)  # each exactly once
    assert all(w.stats["succeeded"] > 0 for w in workers)
    assert sum(sum(w.stats.values()) for w in workers) == 20


def test_identity_comes_from_settings_then_fly_then_host(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FLY_MACHINE_ID", "fly-123")
    monkeypatch.setenv("FLY_REGION", "ord")
    fly = detect_identity(load_settings(machine_id=None, region=None, worker_provider="fly"))
    assert (fly.machine_id, fly.region, fly.provider) == ("fly-123", "ord", "fly")
    own = detect_identity(load_settings(machine_id="box-1", region="home"))
    assert (own.machine_id, own.region) == ("box-1", "home")
    monkeypatch.delenv("FLY_MACHINE_ID")
    import socket

    assert detect_identity(load_settings(machine_id=None)).machine_id == socket.gethostname()


def test_worker_registers_itself(
    make_worker: Callable[..., Worker], conn: Connection, s3_env: dict[str, str]
) -> None:
    worker = make_worker(worker_provider="fly", region="ams")
    row = Queue().get_worker(conn, worker.worker_id)  # type: ignore[arg-type]
    assert (row.machine_id, row.provider, row.region, row.state) == (
        worker.identity.machine_id,
        "fly",
        "ams",
        "idle",
    )
    assert isinstance(worker.storage, S3Storage)
