"""How the worker fails a job, end to end (real Postgres, S3 endpoint and Demucs): permanent
failures at once, retryable ones retried, error classes and what a user reads, a cancel or a
lost lease while the job runs."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3
import pytest

from app.clock import FakeClock
from app.db import Connection
from app.errors import PermanentJobError, StorageError, StorageKeyError
from app.queue import Queue
from app.settings import load_settings
from app.storage import Storage
from tests.audio_fixtures import write_clip, write_corrupt, write_not_audio, write_silent_wav
from tests.worker_helpers import (
    stem_keys,
    submit,
    wait_for_job,
)
from tests.worker_loop_support import (
    LONG_PARAMS,
    LONG_SECONDS,
    SOURCES,
    base_settings,
    joined,
    make_worker,
    run_in_thread,
    separator,
    storage,
    work_dir_is_clean,
    write_empty,
    write_float_wav,
)
from worker.executor import is_out_of_memory, smaller_segment
from worker.failures import classify
from worker.loop import Worker
from worker.separation import Separator

# the shared fixtures this module uses, and those they depend on
__all__ = ["base_settings", "make_worker", "separator", "storage"]

pytestmark = pytest.mark.slow


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
