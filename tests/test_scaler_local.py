"""The local provider end to end: the scaler spawns real `python -m worker` processes that run
real jobs with the tiny model, then drains and stops them once idle; a stopped machine is
started again rather than a new one created, and stop is a SIGTERM the worker obeys."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.db import Connection
from app.queue import Queue, Worker
from app.settings import load_settings
from app.storage import Storage, storage_from_settings
from scaler.providers.base import ProviderError
from scaler.providers.local import LocalProvider
from scaler.reconcile import Scaler
from tests.audio_fixtures import write_clip
from tests.scaler_support import settings
from tests.worker_helpers import libpq_url, submit, wait_for_job

pytestmark = pytest.mark.slow


@pytest.fixture
def storage(s3_env: dict[str, str]) -> Storage:
    return storage_from_settings(load_settings())


@pytest.fixture
def local(db_url: str, s3_env: dict[str, str], tmp_path: Path) -> Iterator[LocalProvider]:
    (tmp_path / "tmp").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("STEMFLEET_")}
    env.update(s3_env)
    env.update(
        {
            "TMPDIR": str(tmp_path / "tmp"),
            "STEMFLEET_MODEL": "demucs_unittest",
            "STEMFLEET_DEVICE": "cpu",
            "STEMFLEET_LEASE": "30",
            "STEMFLEET_HEARTBEAT_INTERVAL": "0.5",
            "STEMFLEET_POLL_INTERVAL": "0.5",
            "STEMFLEET_WORKER_IDLE_EXIT": "600",
            "STEMFLEET_DATA_DIR": str(tmp_path / "data"),
        }
    )
    the_settings = settings(
        provider="local",
        database_url=libpq_url(db_url),
        data_dir=tmp_path / "data",
        max_machines=2,
        scale_rules="1:2",
        scale_down_idle=0,
        scale_up_cooldown=0,
        scale_down_cooldown=0,
        transient_timeout=240,
    )
    provider = LocalProvider(the_settings, env=env)
    yield provider
    for child in provider._children.values():
        if child.poll() is None:
            child.kill()
            child.wait(timeout=30)


def converge_to_stopped(scaler: Scaler, local: LocalProvider, timeout: float = 180.0) -> list[str]:
    """Run the scaler until every machine is stopped, waiting (bounded) on the processes in
    between, then once more to record the stops; returns the kinds of all actions taken."""
    kinds: list[str] = []
    deadline = time.monotonic() + timeout
    while running := [m.id for m in local.list() if m.state != "stopped"]:
        assert time.monotonic() < deadline, f"still running: {running}"
        outcome = scaler.run_once()
        assert outcome.errors == []
        kinds += [r.action.kind for r in outcome.results if r.ok]
        for machine_id in running:
            local.wait(machine_id, "stopped", timeout=2)
    final = scaler.run_once()  # the next run records the stops
    assert final.results == [] and final.errors == []
    return kinds


def test_the_local_provider_runs_real_workers_and_stops_them_when_idle(
    local: LocalProvider, db_url: str, conn: Connection, storage: Storage, tmp_path: Path
) -> None:
    scaler = Scaler(local.settings, local, database_url=db_url)
    jobs = [submit(storage, conn, write_clip(tmp_path / f"song{i}.wav", 1.0)) for i in range(3)]

    first = scaler.run_once()
    assert [(r.action.kind, r.ok) for r in first.results] == [("create", True)] * 2
    machines = sorted(r.machine_id for r in first.results if r.machine_id)
    assert {m.id: m.state for m in local.list()} == dict.fromkeys(machines, "started")

    for job in jobs:
        wait_for_job(db_url, job.id, lambda j: j.status == "succeeded", timeout=300)
    workers = conn.execute(
        "select machine_id, provider from public.workers order by machine_id"
    ).fetchall()
    assert {w["machine_id"] for w in workers} <= set(machines)
    assert {w["provider"] for w in workers} == {"local"}

    # Idle: drained (a draining worker claims nothing and exits), the machines stop.
    kinds = converge_to_stopped(scaler, local)
    assert "drain" in kinds and "create" not in kinds and "start" not in kinds
    assert all(child.returncode == 0 for child in local._children.values())
    states = conn.execute("select distinct state::text as s from public.workers").fetchall()
    assert states == [{"s": "stopped"}]
    runs = Queue().machine_runs(conn, "local")
    assert sorted(r.machine_id for r in runs) == machines
    assert all(r.stopped_at is not None for r in runs)
    priced = conn.execute(
        "select machine_id from admin.spend_by_job where job_id = any(%s)", ([j.id for j in jobs],)
    ).fetchall()
    assert len(priced) == 3 and {p["machine_id"] for p in priced} <= set(machines)

    # A new job: the first stopped machine is started again, not a new one created.
    late = submit(storage, conn, write_clip(tmp_path / "late.wav", 1.0))
    again = scaler.run_once()
    assert [(r.action.kind, r.action.machine_id) for r in again.results] == [("start", machines[0])]
    wait_for_job(db_url, late.id, lambda j: j.status == "succeeded", timeout=300)

    # Stop is SIGTERM: the idle worker exits 0 and records itself stopped.
    child = local._children[machines[0]]
    local.stop(machines[0])
    assert local.wait(machines[0], "stopped", timeout=60)
    assert child.returncode == 0
    last = conn.execute(
        "select state::text as s from public.workers where machine_id = %s "
        "order by started_at desc limit 1",
        (machines[0],),
    ).fetchone()
    assert last == {"s": "stopped"}


def test_local_machines_survive_the_scaler_process_and_bad_commands_are_named(
    tmp_path: Path,
) -> None:
    the_settings = settings(provider="local", data_dir=tmp_path)
    sleeper = LocalProvider(
        the_settings, command=["/bin/sh", "-c", "exec sleep 60"], env={"PATH": "/usr/bin:/bin"}
    )
    machine = sleeper.create("stemfleet-worker-a", 0.0)
    assert machine.size == "local" and machine.hourly_usd == 0.0
    assert machine.booted_at is not None and machine.state == "started"
    assert sleeper.create("stemfleet-worker-a", 0.0).id == machine.id  # a name is made once
    # A new provider object (the next `scaler once`) finds the machine from its state file and
    # recognises the process as that machine's.
    later = LocalProvider(the_settings, command=["/bin/false"])
    assert [(m.id, m.state) for m in later.list()] == [(machine.id, "started")]
    later.stop(machine.id)
    assert later.wait(machine.id, "stopped", timeout=30)
    assert [(m.id, m.state) for m in sleeper.list()] == [(machine.id, "stopped")]
    later.destroy(machine.id)
    assert later.list() == []

    broken = LocalProvider(the_settings, command=[str(tmp_path / "no-such-worker")])
    with pytest.raises(ProviderError, match="STEMFLEET_LOCAL_WORKER_COMMAND") as error:
        broken.create("stemfleet-worker-b", 0.0)
    assert error.value.kind == "spawn_failed"
    with pytest.raises(ProviderError, match="no local machine"):
        broken.start("local-missing")


def test_a_local_machine_is_recognised_whatever_its_command_does_to_its_environment(
    tmp_path: Path,
) -> None:
    # A worker command may be a wrapper that replaces its environment or execs again (here: env
    # -i); a new provider object must still know the process as the machine's. Recognising it by
    # its environment read a wrapper mid-exec as dead (14 of 300 reads of `sh -c "exec sleep"`).
    the_settings = settings(provider="local", data_dir=tmp_path)
    wrapper = ["/bin/sh", "-c", "exec /usr/bin/env -i /bin/sleep 60"]
    first = LocalProvider(the_settings, command=wrapper, env={"PATH": "/usr/bin:/bin"})
    machine = first.create("stemfleet-worker-w", 0.0)
    child = first._children[machine.id]
    with contextlib.suppress(subprocess.TimeoutExpired):
        child.wait(timeout=0.5)  # past the wrapper's exec: the marker is gone from its environ
    assert child.poll() is None
    later = LocalProvider(the_settings, command=["/bin/false"])
    assert [(m.id, m.state) for m in later.list()] == [(machine.id, "started")]
    later.stop(machine.id)
    assert later.wait(machine.id, "stopped", timeout=30)


def _registered(
    conn: Connection, machine_id: str, child: subprocess.Popen[bytes], timeout: float = 120.0
) -> Worker:
    """The worker row of `machine_id` once its process has registered. The worker publishes no
    event for it, so the row is read again each time a short wait on the process's exit ends:
    a worker that exits before registering fails the test at once."""
    deadline = time.monotonic() + timeout
    while True:
        row = conn.execute(
            "select * from public.workers where machine_id = %s and state <> 'stopped'",
            (machine_id,),
        ).fetchone()
        if row is not None:
            return Worker(**row)
        assert time.monotonic() < deadline, f"no worker registered for {machine_id}"
        with contextlib.suppress(subprocess.TimeoutExpired):
            code = child.wait(timeout=0.05)
            raise AssertionError(f"the worker of {machine_id} exited ({code}) before registering")


def test_a_drained_worker_exits_0_even_when_sigtermed_while_it_shuts_down(
    local: LocalProvider, conn: Connection
) -> None:
    # The flaky converge_to_stopped: a run stops a drained worker that is already exiting on its
    # own; a SIGTERM landing after its signal relay was removed killed it (-15). Here SIGTERMs
    # arrive throughout its shutdown, from the drain until the process is gone.
    machine = local.create("stemfleet-worker-drained", 1.0)
    child = local._children[machine.id]
    worker = _registered(conn, machine.id, child)
    Queue().drain_worker(conn, worker.id, True)
    while child.poll() is None:
        os.kill(child.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=0.002)  # the next SIGTERM as soon as this one is not the end
    assert child.returncode == 0, Path(str(child.args)).name


def test_a_sigkilled_workers_job_is_requeued_by_the_next_scaler_run(
    local: LocalProvider, db_url: str, conn: Connection, storage: Storage, tmp_path: Path
) -> None:
    scaler = Scaler(local.settings, local, database_url=db_url)
    job = submit(storage, conn, write_clip(tmp_path / "long.wav", 30.0))
    (created,) = [r.machine_id for r in scaler.run_once().results if r.action.kind == "create"]
    assert created is not None
    running = wait_for_job(db_url, job.id, lambda j: j.status == "running", timeout=300)
    assert running.attempts == 1
    child = local._children[created]
    child.send_signal(signal.SIGKILL)  # mid-job: no chance to release anything
    child.wait(timeout=30)
    assert Queue().get(conn, job.id).status == "running"  # only the lease would bring it back

    outcome = scaler.run_once()  # the machine is seen stopped: its worker's job is released
    row = Queue().get(conn, job.id)
    assert (row.status, row.error_kind, row.attempts) == ("queued", "worker_died", 1)
    assert outcome.errors == []
