"""The worker loop end to end: real Postgres, a real S3 endpoint (moto's server through boto3)
and real Demucs (`demucs_unittest`). Time passes through an injected FakeClock where a test needs
it to; otherwise tests wait (bounded) on real events: the queue's NOTIFYs and threads ending."""

from __future__ import annotations

import itertools
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest
import soundfile as sf

import worker.executor as worker_executor
from app.clock import Clock, FakeClock
from app.db import Connection
from app.errors import PermanentJobError, StorageError, StorageKeyError
from app.queue import Queue
from app.settings import load_settings
from app.storage import S3Storage, Storage, storage_from_settings
from tests.audio_fixtures import write_clip, write_corrupt, write_not_audio, write_silent_wav
from tests.worker_helpers import (
    USER,
    libpq_url,
    stem_keys,
    submit,
    wait_for_job,
    wait_until_all_final,
)
from worker.executor import is_out_of_memory, smaller_segment
from worker.failures import classify
from worker.loop import Worker
from worker.runtime import detect_identity
from worker.separation import Separator

SOURCES = ["drums", "bass", "other", "vocals"]
# A job that keeps the tiny model busy for a few seconds on CPU: long enough to act on it
# (cancel, break storage, signal) while it runs.
LONG_PARAMS: dict[str, Any] = {"segment": 1, "shifts": 4}
LONG_SECONDS = 3.0

pytestmark = pytest.mark.slow


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


# --- permanent failures -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make_input", "kind", "words"),
    [
        (lambda p: write_corrupt(p / "corrupt.flac"), "undecodable", "decode"),
        (lambda p: write_empty(p / "empty.wav"), "empty", "empty"),
        (lambda p: write_silent_wav(p / "silent.wav"), "empty", "no audio"),
        (lambda p: write_not_audio(p / "picture.mp3"), "undecodable", "decode"),
        (lambda p: write_clip(p / "too-long.wav", 2.5), "too_long", "too-long.wav"),
        (lambda p: write_float_wav(p / "nan.wav", float("nan")), "not_finite", "not numbers"),
        (lambda p: write_float_wav(p / "inf.wav", float("inf")), "not_finite", "not numbers"),
        (lambda p: write_float_wav(p / "one.wav", 0.5, frames=1), "too_short", "too short"),
    ],
    ids=["corrupt", "empty-file", "zero-frames", "not-audio", "too-long", "nan", "inf", "one"],
)
def test_bad_inputs_fail_permanently_at_once(
    make_input: Callable[[Path], Path],
    kind: str,
    words: str,
    make_worker: Callable[..., Worker],
    storage: Storage,
    conn: Connection,
    tmp_path: Path,
) -> None:
    clip = make_input(tmp_path)
    job = submit(storage, conn, clip)
    worker = make_worker(max_duration=2.0)

    (outcome,) = worker.run_once()

    assert outcome.status == "failed"
    row = Queue().get(conn, job.id)
    assert row.status == "failed"
    assert row.attempts == 1
    assert row.error_kind == kind
    assert row.error is not None and words in row.error.lower(), row.error
    assert row.output is None
    assert stem_keys(job.id, storage, SOURCES, "wav") == []
    assert work_dir_is_clean(tmp_path)


def test_bad_params_and_missing_input_fail_permanently(
    make_worker: Callable[..., Worker], storage: Storage, conn: Connection, tmp_path: Path
) -> None:
    clip = write_clip(tmp_path / "a.wav", 1.0)
    bad = submit(storage, conn, clip, params={"format": "aiff", "shifts": 99})
    gone = submit(storage, conn, clip)
    storage.delete(gone.input_key)
    worker = make_worker()

    outcomes = [*worker.run_once(), *worker.run_once()]
    assert [o.status for o in outcomes] == ["failed", "failed"]

    bad_row = Queue().get(conn, bad.id)
    assert (bad_row.status, bad_row.error_kind, bad_row.attempts) == ("failed", "invalid_params", 1)
    assert bad_row.error is not None and "format" in bad_row.error and "shifts" in bad_row.error
    gone_row = Queue().get(conn, gone.id)
    assert (gone_row.status, gone_row.error_kind, gone_row.attempts) == (
        "failed",
        "input_missing",
        1,
    )
    assert gone_row.error is not None and "upload it again" in gone_row.error


def test_a_model_the_worker_cannot_load_fails_its_jobs_at_once_and_the_others_run(
    make_worker: Callable[..., Worker], storage: Storage, conn: Connection, tmp_path: Path
) -> None:
    repo = tmp_path / "models"
    repo.mkdir()
    (repo / "broken.yaml").write_text("models: ['0badc0de']\n")  # a bag whose weights are gone
    separator = Separator(
        load_settings(model="demucs_unittest", model_repo=repo, device="cpu", threads=1)
    )
    worker = make_worker(separator_=separator, model_repo=repo)  # it serves "broken" (its folder)
    clip = write_clip(tmp_path / "a.wav", 1.0)
    first = submit(storage, conn, clip, params={"model": "broken"})
    good = submit(storage, conn, clip)
    second = submit(storage, conn, clip, params={"model": "broken"})

    outcomes = [*worker.run_once(), *worker.run_once(), *worker.run_once()]

    assert [o.status for o in outcomes] == ["failed", "succeeded", "failed"]
    for job in (first, second):
        row = Queue().get(conn, job.id)
        assert (row.status, row.attempts, row.error_kind) == ("failed", 1, "model_unavailable")
        assert row.error is not None and "'broken'" in row.error, row.error
        assert "STEMFLEET_MODEL_REPO" in row.error and str(repo) not in row.error
    assert Queue().get(conn, good.id).status == "succeeded"


# --- retryable failures -------------------------------------------------------------------------


def test_storage_outage_during_upload_is_retried_then_succeeds(
    make_worker: Callable[..., Worker],
    storage: Storage,
    conn: Connection,
    db_url: str,
    s3_env: dict[str, str],
    tmp_path: Path,
) -> None:
    """The bucket disappears while the model runs (after the download): every upload fails,
    the job goes back to the queue; once the bucket is back the retry succeeds."""
    clip = write_clip(tmp_path / "song.wav", LONG_SECONDS)
    job = submit(storage, conn, clip, params=LONG_PARAMS)
    worker = make_worker()
    s3 = boto3.client(
        "s3",
        endpoint_url=s3_env["STEMFLEET_S3_ENDPOINT_URL"],
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    bucket = s3_env["STEMFLEET_S3_BUCKET"]

    thread, box = run_in_thread(worker.run_once)
    wait_for_job(db_url, job.id, lambda j: j.progress > 0, what="progress on the model")
    s3.delete_object(Bucket=bucket, Key=job.input_key)
    s3.delete_bucket(Bucket=bucket)
    (first,) = joined(thread, box)

    assert first.status == "retrying" and first.error_kind == "storage", first
    row = Queue().get(conn, job.id)
    assert (row.status, row.attempts, row.error_kind) == ("queued", 1, "storage")
    assert row.error is not None and "NoSuchBucket" in row.error

    s3.create_bucket(Bucket=bucket)
    storage.put_file(job.input_key, clip)
    (second,) = worker.run_once()

    assert second.status == "succeeded"
    row = Queue().get(conn, job.id)
    assert (row.status, row.attempts, row.error) == ("succeeded", 2, None)
    assert len(stem_keys(job.id, storage, SOURCES, "wav")) == 4


def test_worker_io_fault_is_retryable_and_the_worker_keeps_going(
    make_worker: Callable[..., Worker], storage: Storage, conn: Connection, tmp_path: Path
) -> None:
    clip = write_clip(tmp_path / "a.wav", 1.0)
    job = submit(storage, conn, clip)
    worker = make_worker()
    (tmp_path / "work").write_bytes(b"a file where the work folder should be")

    (broken,) = worker.run_once()

    assert (broken.status, broken.error_kind) == ("retrying", "io")
    row = Queue().get(conn, job.id)
    assert (row.status, row.attempts) == ("queued", 1)
    (tmp_path / "work").unlink()
    (fixed,) = worker.run_once()
    assert fixed.status == "succeeded"
    assert Queue().get(conn, job.id).attempts == 2


def test_error_classes_map_to_kinds() -> None:
    assert classify(PermanentJobError("bad", kind="too_long"), "k") == ("bad", "too_long", False)
    assert classify(StorageError("down"), "k")[1:] == ("storage", True)
    assert classify(ConnectionResetError("reset"), "k")[1:] == ("network", True)
    assert classify(OSError(28, "No space left on device"), "k")[1:] == ("io", True)
    message, kind, retryable = classify(KeyError("surprise"), "k")
    assert (kind, retryable) == ("internal", True) and "KeyError" in message
    assert classify(StorageKeyError("invalid object key 'a//b'"), "a//b")[1:] == (
        "invalid_input_key",
        False,
    )


def test_error_messages_keep_paths_buckets_and_endpoints_in_the_logs() -> None:
    """What a user reads names their file and what to do, never the worker's layout."""
    scratch = "/tmp/stemfleet-worker-0a1b/123-1/input/song.wav"
    endpoint = "http://10.0.0.7:9000/stemfleet-prod/inputs/u/song.wav"
    cases = [
        PermanentJobError(f"could not decode 'song.wav' (soundfile: Error opening {scratch!r})"),
        OSError(28, "No space left on device", scratch),
        KeyError(scratch),
        StorageError(f"storage unreachable for 'k': Could not connect to {endpoint}"),
    ]
    for exc in cases:
        message, _, _ = classify(exc, "inputs/u/song.wav")
        for secret in ("/tmp", "stemfleet-worker", "10.0.0.7", "stemfleet-prod", "9000"):
            assert secret not in message, (secret, message)
    assert "'song.wav'" in classify(cases[0], "k")[0]
    assert "No space left on device" in classify(cases[1], "k")[0]


def test_out_of_memory_is_recognised_and_segments_shrink_to_a_floor() -> None:
    import torch

    assert is_out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate"))
    assert is_out_of_memory(RuntimeError("CUDA error: out of memory"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    assert not is_out_of_memory(ValueError("out of memory"))
    sizes = []
    segment: float | None = 7.8
    while segment is not None:
        sizes.append(segment)
        segment = smaller_segment(segment)
    assert sizes == [7.8, 3.9, 1.95]


# --- cancel and lease loss ----------------------------------------------------------------------


def test_cancel_while_running_stops_the_work_and_leaves_it_cancelled(
    make_worker: Callable[..., Worker],
    storage: Storage,
    conn: Connection,
    db_url: str,
    tmp_path: Path,
) -> None:
    clip = write_clip(tmp_path / "song.wav", LONG_SECONDS)
    job = submit(storage, conn, clip, params=LONG_PARAMS)
    worker = make_worker()

    thread, box = run_in_thread(worker.run_once)
    running = wait_for_job(db_url, job.id, lambda j: j.progress > 0, what="progress")
    Queue().cancel(conn, job.id, reason="changed my mind")
    (outcome,) = joined(thread, box)

    assert outcome.status == "cancelled"
    row = Queue().get(conn, job.id)
    assert (row.status, row.error, row.output) == ("cancelled", "changed my mind", None)
    assert running.progress <= row.progress < 1  # stopped part way
    assert stem_keys(job.id, storage, SOURCES, "wav") == []
    assert work_dir_is_clean(tmp_path)
    # the worker goes on with the next job
    other = submit(storage, conn, write_clip(tmp_path / "next.wav", 1.0))
    (after,) = worker.run_once()
    assert (after.job_id, after.status) == (other.id, "succeeded")
    worker.close()
    assert not any((tmp_path / "work").iterdir()), "the worker's scratch folder is left"


def test_lost_lease_is_abandoned_without_overwriting(
    make_worker: Callable[..., Worker],
    storage: Storage,
    conn: Connection,
    db_url: str,
    tmp_path: Path,
) -> None:
    clip = write_clip(tmp_path / "song.wav", LONG_SECONDS)
    job = submit(storage, conn, clip, params=LONG_PARAMS)
    worker = make_worker()

    thread, box = run_in_thread(worker.run_once)
    wait_for_job(db_url, job.id, lambda j: j.progress > 0, what="progress")
    # The reaper, at a time past the lease, requeues the job as if this worker were gone.
    later = FakeClock(datetime.now(UTC) + timedelta(seconds=60))
    reaped = Queue(later).reap(conn, backoff_base=0)
    assert [r.job_id for r in reaped] == [job.id]
    (outcome,) = joined(thread, box)

    assert outcome.status == "lease_lost"
    row = Queue().get(conn, job.id)
    assert (row.status, row.worker_id, row.error_kind) == ("queued", None, "lease_expired")
    assert stem_keys(job.id, storage, SOURCES, "wav") == []


# --- groups: queued jobs share forward passes ---------------------------------------------------


@pytest.fixture(scope="module")
def batching_separator() -> Separator:
    """A separator whose forward passes hold 8 segments, as on an accelerator."""
    return Separator(
        load_settings(
            model="demucs_unittest", device="cpu", model_repo=None, threads=1, batch_size=8
        )
    )


def test_queued_jobs_are_separated_together_and_end_on_their_own(
    make_worker: Callable[..., Worker],
    batching_separator: Separator,
    storage: Storage,
    conn: Connection,
    tmp_path: Path,
) -> None:
    params = {"format": "wav", "shifts": 0, "segment": 0.8}
    jobs = [
        submit(storage, conn, write_clip(tmp_path / "a.wav", 2.0), params=params),
        submit(storage, conn, write_corrupt(tmp_path / "b.flac"), params=params),
        submit(
            storage, conn, write_clip(tmp_path / "c.flac", 1.5), params={**params, "format": "flac"}
        ),
        submit(storage, conn, write_clip(tmp_path / "d.wav", 1.0), params=params),
    ]
    passes: list[int] = []
    batching_separator.loaded.members[0].register_forward_hook(
        lambda _module, args, _out: passes.append(int(args[0].shape[0]))
    )
    worker = make_worker(separator_=batching_separator, group_jobs=3)
    assert worker.group_size == 3

    first = worker.run_once()  # a, b, c: b is undecodable and fails alone
    second = worker.run_once()  # d, alone

    assert [(o.job_id, o.status) for o in first] == [
        (jobs[0].id, "succeeded"),
        (jobs[1].id, "failed"),
        (jobs[2].id, "succeeded"),
    ]
    assert first[1].error_kind == "undecodable"
    assert [(o.job_id, o.status) for o in second] == [(jobs[3].id, "succeeded")]
    rows = {job.id: Queue().get(conn, job.id) for job in jobs}
    assert rows[jobs[0].id].timings["shared_with"] == rows[jobs[2].id].timings["shared_with"] == 1
    assert "shared_with" not in rows[jobs[3].id].timings
    assert len(stem_keys(jobs[0].id, storage, SOURCES, "wav")) == 4
    assert len(stem_keys(jobs[2].id, storage, SOURCES, "flac")) == 4
    # 0.8 s segments every 0.6 s: a (2 s) has 3 full segments and a 0.2 s tail, c (1.5 s) 2
    # and a 0.3 s tail. Together their 5 full segments take one pass and each tail one of its
    # own (another length); d alone: a full segment and a tail
    assert passes == [5, 1, 1, 1, 1]
    assert work_dir_is_clean(tmp_path)


def test_a_job_cancelled_in_a_group_stops_while_the_others_finish(
    make_worker: Callable[..., Worker],
    batching_separator: Separator,
    storage: Storage,
    conn: Connection,
    db_url: str,
    tmp_path: Path,
) -> None:
    doomed = submit(storage, conn, write_clip(tmp_path / "a.wav", LONG_SECONDS), params=LONG_PARAMS)
    kept = submit(storage, conn, write_clip(tmp_path / "b.wav", LONG_SECONDS), params=LONG_PARAMS)
    worker = make_worker(separator_=batching_separator, group_jobs=2)

    thread, box = run_in_thread(worker.run_once)
    wait_for_job(db_url, doomed.id, lambda j: j.progress > 0, what="progress")
    Queue().cancel(conn, doomed.id, reason="changed my mind")
    outcomes = joined(thread, box)

    assert [(o.job_id, o.status) for o in outcomes] == [
        (doomed.id, "cancelled"),
        (kept.id, "succeeded"),
    ]
    assert stem_keys(doomed.id, storage, SOURCES, "wav") == []
    assert len(stem_keys(kept.id, storage, SOURCES, "wav")) == 4
    assert Queue().get(conn, kept.id).timings["shared_with"] == 1


def test_long_inputs_and_other_models_are_not_grouped(
    make_worker: Callable[..., Worker],
    batching_separator: Separator,
    storage: Storage,
    conn: Connection,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(worker_executor, "GROUP_MAX_SECONDS", 1.5)
    params = {"shifts": 0, "segment": 0.8}
    long = submit(storage, conn, write_clip(tmp_path / "long.wav", 2.0), params=params)
    short = submit(storage, conn, write_clip(tmp_path / "short.wav", 1.0), params=params)
    other_segment = submit(
        storage, conn, write_clip(tmp_path / "other.wav", 1.0), params={"shifts": 0, "segment": 0.6}
    )
    worker = make_worker(separator_=batching_separator, group_jobs=3)

    outcomes = worker.run_once()

    assert [(o.job_id, o.status) for o in outcomes] == [
        (long.id, "succeeded"),
        (short.id, "succeeded"),
        (other_segment.id, "succeeded"),
    ]
    for job in (long, short, other_segment):
        assert "shared_with" not in Queue().get(conn, job.id).timings


def test_group_size_is_one_where_a_pass_holds_one_segment(
    make_worker: Callable[..., Worker], batching_separator: Separator
) -> None:
    assert make_worker().group_size == 1  # CPU: one segment per pass
    assert make_worker(separator_=batching_separator).group_size == 8


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


def test_prefetch_and_background_upload_keep_every_job_correct(
    make_worker: Callable[..., Worker],
    storage: Storage,
    conn: Connection,
    db_url: str,
    tmp_path: Path,
) -> None:
    """One worker, a queue of jobs with a cancelled one in the middle: the next job is claimed
    while the model runs, uploads run behind; every job ends right and the worker ends idle."""
    clip = write_clip(tmp_path / "a.wav", 2.0)
    jobs = [submit(storage, conn, clip, params={"shifts": 2}) for _ in range(5)]
    Queue().cancel(conn, jobs[2].id)
    worker = make_worker(prefetch=True)
    thread, box = run_in_thread(worker.run)

    finished = wait_until_all_final(db_url, [j.id for j in jobs], timeout=240)

    worker.request_stop()
    assert joined(thread, box) == "stopped"
    assert [j.status for j in finished] == ["succeeded"] * 2 + ["cancelled"] + ["succeeded"] * 2
    done = sorted(
        (j for j in finished if j.status == "succeeded"), key=lambda j: j.started_at or j.created_at
    )
    for job in done:
        assert job.attempts == 1
        assert len(stem_keys(job.id, storage, SOURCES, "wav")) == 4
    # Overlap: each next job was claimed before the previous one had finished.
    for previous, following in itertools.pairwise(done):
        assert following.started_at < previous.finished_at  # type: ignore[operator]
    row = Queue().get_worker(conn, worker.worker_id)  # type: ignore[arg-type]
    assert row.state == "stopped"
    assert work_dir_is_clean(tmp_path)


def test_groups_pipeline_like_single_jobs(
    make_worker: Callable[..., Worker],
    batching_separator: Separator,
    storage: Storage,
    conn: Connection,
    db_url: str,
    tmp_path: Path,
) -> None:
    """Turns of two jobs separated together: the next turn is claimed ahead and the last one
    uploads behind, as for single jobs."""
    clip = write_clip(tmp_path / "a.wav", 2.0)
    jobs = [submit(storage, conn, clip, params={"shifts": 2}) for _ in range(6)]
    worker = make_worker(separator_=batching_separator, group_jobs=2, prefetch=True)
    thread, box = run_in_thread(worker.run)

    finished = wait_until_all_final(db_url, [j.id for j in jobs], timeout=240)

    worker.request_stop()
    assert joined(thread, box) == "stopped"
    assert [j.status for j in finished] == ["succeeded"] * 6
    assert all(j.timings["shared_with"] == 1 and j.attempts == 1 for j in finished)
    turns = [finished[i : i + 2] for i in range(0, 6, 2)]
    for previous, following in itertools.pairwise(turns):
        # claimed together, and before the previous turn had finished
        assert following[0].started_at == following[1].started_at
        assert following[0].started_at < max(j.finished_at for j in previous)  # type: ignore[operator,type-var]
    assert work_dir_is_clean(tmp_path)


def test_stop_during_a_pipelined_run_leaves_nothing_running(
    make_worker: Callable[..., Worker],
    storage: Storage,
    conn: Connection,
    db_url: str,
    tmp_path: Path,
) -> None:
    """Stopped (no grace) while the next job is already claimed ahead: the job on the model and
    the prefetched one both go back to the queue uncharged; nothing is left running."""
    clip = write_clip(tmp_path / "song.wav", LONG_SECONDS)
    jobs = [submit(storage, conn, clip, params=LONG_PARAMS) for _ in range(3)]
    worker = make_worker(shutdown_grace=0)
    thread, box = run_in_thread(worker.run)

    wait_for_job(db_url, jobs[1].id, lambda j: j.status == "running", what="claimed ahead")
    worker.request_stop()

    assert joined(thread, box) == "stopped"
    rows = [Queue().get(conn, job.id) for job in jobs]
    for row in rows:
        assert (row.status, row.attempts) in {("succeeded", 1), ("queued", 0)}, row
    assert (rows[1].status, rows[2].status) == ("queued", "queued")
    assert Queue().get_worker(conn, worker.worker_id).state == "stopped"  # type: ignore[arg-type]
    assert work_dir_is_clean(tmp_path)


def test_finishing_one_of_two_held_jobs_keeps_the_worker_busy(
    queue: Queue, conn: Connection
) -> None:
    """The migration for overlapping jobs: the worker row stays busy on the job still held."""
    for _ in range(2):
        queue.enqueue(conn, user_id=USER, input_key=f"inputs/{USER}/x.wav")
    worker_id = queue.register_worker(conn, machine_id="m-overlap").id
    first, second = queue.claim(conn, worker_id, lease=60, limit=2)

    queue.complete(conn, first, output={"stems": {}})
    busy = queue.get_worker(conn, worker_id)
    assert (busy.state, busy.current_job_id, busy.idle_since) == ("busy", second.id, None)

    queue.fail(conn, second, error="x", error_kind="internal", retryable=False)
    idle = queue.get_worker(conn, worker_id)
    assert (idle.state, idle.current_job_id) == ("idle", None)
    assert idle.idle_since is not None


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
