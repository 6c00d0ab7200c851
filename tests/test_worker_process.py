"""The worker as a process (`python -m worker`): SIGTERM mid-job, and kill -9 mid-job.

The subprocesses run the real model against the test's Postgres and S3 endpoint; the tests wait
(bounded) for real events: the job's progress NOTIFYs and the process's exit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from app.cli import build_parser
from app.clock import FakeClock
from app.db import Connection
from app.queue import Queue
from app.settings import load_settings
from app.storage import Storage, storage_from_settings
from tests.audio_fixtures import write_clip
from tests.worker_helpers import libpq_url, stem_keys, submit, wait_for_job
from worker.cli import run_worker, settings_for
from worker.loop import Worker
from worker.scratch import scratch_name
from worker.separation import Separator

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ["drums", "bass", "other", "vocals"]
LONG_PARAMS: dict[str, Any] = {"segment": 1, "shifts": 4}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def separator() -> Separator:
    return Separator(
        load_settings(model="demucs_unittest", device="cpu", model_repo=None, threads=1)
    )


@pytest.fixture
def storage(s3_env: dict[str, str]) -> Storage:
    return storage_from_settings(load_settings())


@pytest.fixture
def spawn_worker(db_url: str, s3_env: dict[str, str], tmp_path: Path) -> Iterator[Any]:
    procs: list[subprocess.Popen[bytes]] = []

    def spawn(**settings: str) -> tuple[subprocess.Popen[bytes], str]:
        machine_id = f"proc-{uuid.uuid4().hex[:8]}"
        (tmp_path / "tmp").mkdir(exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("STEMFLEET_")}
        env.update(s3_env)
        env.update(
            {
                "TMPDIR": str(tmp_path / "tmp"),
                "STEMFLEET_DATABASE_URL": libpq_url(db_url),
                "STEMFLEET_MODEL": "demucs_unittest",
                "STEMFLEET_DEVICE": "cpu",
                "STEMFLEET_THREADS": "1",
                "STEMFLEET_MACHINE_ID": machine_id,
                "STEMFLEET_LEASE": "2",
                "STEMFLEET_HEARTBEAT_INTERVAL": "0.5",
                "STEMFLEET_POLL_INTERVAL": "0.5",
                "STEMFLEET_WORKER_IDLE_EXIT": "300",
                "STEMFLEET_BACKOFF_BASE": "0",
                "STEMFLEET_DATA_DIR": str(tmp_path / "data"),
                **{f"STEMFLEET_{k.upper()}": v for k, v in settings.items()},
            }
        )
        log = (tmp_path / f"{machine_id}.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "worker"], cwd=ROOT, env=env, stdout=log, stderr=log
        )
        procs.append(proc)
        return proc, machine_id

    yield spawn
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def worker_state(conn: Connection, machine_id: str) -> str:
    row = conn.execute(
        "select state::text as state from public.workers where machine_id = %s", (machine_id,)
    ).fetchone()
    assert row is not None
    return str(row["state"])


def finishing_worker(
    db_url: str,
    separator: Separator,
    tmp_path: Path,
    clock: FakeClock | None = None,
    work_dir: Path | None = None,
    **extra: Any,
) -> Worker:
    settings = load_settings(
        database_url=libpq_url(db_url),
        model="demucs_unittest",
        model_repo=None,
        device="cpu",
        threads=1,
        machine_id=f"second-{uuid.uuid4().hex[:8]}",
        backoff_base=0,
        data_dir=tmp_path / "data",
        **extra,
    )
    work_dir = work_dir or tmp_path / "second"
    return Worker(settings, separator=separator, clock=clock, work_dir=work_dir)


def test_sigterm_mid_job_releases_it_and_another_worker_completes_it(
    spawn_worker: Any,
    storage: Storage,
    conn: Connection,
    db_url: str,
    separator: Separator,
    tmp_path: Path,
) -> None:
    job = submit(storage, conn, write_clip(tmp_path / "song.wav", 3.0), params=LONG_PARAMS)
    proc, machine_id = spawn_worker(shutdown_grace="0")

    wait_for_job(db_url, job.id, lambda j: j.progress > 0, timeout=120, what="progress")
    proc.send_signal(signal.SIGTERM)

    assert proc.wait(timeout=60) == 0
    row = Queue().get(conn, job.id)
    assert (row.status, row.attempts, row.worker_id, row.progress) == ("queued", 0, None, 0)
    assert worker_state(conn, machine_id) == "stopped"
    assert not any((tmp_path / "tmp").glob("stemfleet-*")), "temp files left behind"

    with finishing_worker(db_url, separator, tmp_path) as second:
        (outcome,) = second.run_once()
    assert outcome.status == "succeeded"
    row = Queue().get(conn, job.id)
    assert (row.status, row.attempts) == ("succeeded", 1)
    assert len(stem_keys(job.id, storage, SOURCES, "wav")) == 4


def test_sigterm_lets_a_job_that_ends_within_the_grace_finish(
    spawn_worker: Any, storage: Storage, conn: Connection, db_url: str, tmp_path: Path
) -> None:
    job = submit(storage, conn, write_clip(tmp_path / "song.wav", 3.0), params={"shifts": 6})
    proc, machine_id = spawn_worker(shutdown_grace="120")

    wait_for_job(db_url, job.id, lambda j: j.progress > 0, timeout=120, what="progress")
    proc.send_signal(signal.SIGTERM)

    assert proc.wait(timeout=120) == 0
    row = Queue().get(conn, job.id)
    assert (row.status, row.attempts) == ("succeeded", 1)
    assert worker_state(conn, machine_id) == "stopped"


def test_kill_9_mid_job_is_reaped_and_completed_once_by_another_worker(
    spawn_worker: Any,
    storage: Storage,
    conn: Connection,
    db_url: str,
    separator: Separator,
    tmp_path: Path,
) -> None:
    job = submit(storage, conn, write_clip(tmp_path / "song.wav", 3.0), params=LONG_PARAMS)
    proc, _ = spawn_worker()
    wait_for_job(db_url, job.id, lambda j: j.progress > 0, timeout=120, what="progress")
    proc.kill()
    proc.wait(timeout=30)
    assert Queue().get(conn, job.id).status == "running"  # nobody finished it
    scratch = tmp_path / "tmp"
    (left,) = scratch.glob("stemfleet-worker-*")  # the killed worker's input and stems
    assert any(p.is_file() for p in left.rglob("*"))
    alive = scratch / scratch_name(uuid.uuid4())  # a live worker's (this process's)
    alive.mkdir()  # never swept

    # Another worker, at a time past the 2 s lease: it sweeps the dead worker's folder when it
    # starts, then its loop reaps, claims and completes.
    clock = FakeClock(datetime.now(UTC) + timedelta(seconds=30))
    second = finishing_worker(
        db_url,
        separator,
        tmp_path,
        clock,
        work_dir=scratch,
        worker_idle_exit=60,
        lease=2,
        heartbeat_interval=0.5,
    )
    assert second.run() == "idle"
    assert not left.exists()
    assert alive.is_dir()

    row = Queue().get(conn, job.id)
    assert (row.status, row.attempts, row.error) == ("succeeded", 2, None)
    assert [o.status for o in second.recent] == ["succeeded"]
    assert len(stem_keys(job.id, storage, SOURCES, "wav")) == 4


def test_cli_registers_the_worker_command() -> None:
    args = build_parser().parse_args(
        ["worker", "--once", "--idle-exit", "30s", "--machine-id", "m-7", "--no-prefetch"]
    )
    assert args.handler is run_worker
    assert args.once and args.no_prefetch
    settings = settings_for(args)
    assert (settings.worker_idle_exit, settings.machine_id) == (30.0, "m-7")
