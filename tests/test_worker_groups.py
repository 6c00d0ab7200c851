"""Groups and the pipeline, end to end (real Postgres, S3 endpoint and Demucs): queued jobs share
forward passes and still end on their own; the next job's download and the last one's upload
overlap the model stage without mixing anything up."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path

import pytest

import worker.executor as worker_executor
from app.db import Connection
from app.queue import Queue
from app.storage import Storage
from tests.audio_fixtures import write_clip, write_corrupt
from tests.worker_helpers import (
    USER,
    stem_keys,
    submit,
    wait_for_job,
    wait_until_all_final,
)
from tests.worker_loop_support import (
    LONG_PARAMS,
    LONG_SECONDS,
    SOURCES,
    base_settings,
    batching_separator,
    joined,
    make_worker,
    run_in_thread,
    separator,
    storage,
    work_dir_is_clean,
)
from worker.loop import Worker
from worker.separation import Separator

# the shared fixtures this module uses, and those they depend on
__all__ = ["base_settings", "batching_separator", "make_worker", "separator", "storage"]

pytestmark = pytest.mark.slow


# --- groups: queued jobs share forward passes ---------------------------------------------------


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
