"""The Fly Machines provider and the scaler against a fake Machines API (real HTTP on loopback,
requests checked against the published spec), with faults: 429, 500, slow and stuck starts,
creates refused for capacity. The scaler converges and records what went wrong."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.clock import FakeClock
from app.db import Connection
from app.errors import ConfigError
from app.queue import Queue
from scaler.providers.base import ProviderError
from scaler.providers.fly import FlyProvider, load_template
from scaler.providers.http import TokenBucket, backoff_delay, retry_after_seconds
from scaler.reconcile import Scaler
from tests.fake_fly import SHARED_SPEC_PATH, SPEC_PATH, FakeFly
from tests.scaler_support import TEMPLATE, fly_settings, settings

USER = uuid.UUID("00000000-0000-4000-8000-0000000005f1")


class Sleeps:
    """The provider's sleep: records each delay and moves the fake clock instead of waiting."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock, self.delays = clock, []  # type: ignore[var-annotated]

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        self.clock.advance(seconds)


def provider(fake: FakeFly, clock: FakeClock, sleeps: Sleeps, **overrides: Any) -> FlyProvider:
    return FlyProvider(
        fly_settings(fake, **overrides),
        template=TEMPLATE,
        clock=clock,
        sleep=sleeps,
        rng=random.Random(7),
    )


# --- the fake and the spec ----------------------------------------------------------------


def test_the_spec_copy_in_the_repo_is_the_published_one() -> None:
    copy = SPEC_PATH.read_text()
    assert "operationId: Machines_create" in copy
    if SHARED_SPEC_PATH.is_file():
        assert copy == SHARED_SPEC_PATH.read_text()


def test_the_fake_rejects_requests_that_break_the_spec(fake: FakeFly) -> None:
    headers = {"Authorization": f"Bearer {fake.token}"}
    base = f"{fake.url}/v1/apps/{fake.app}"
    bad = httpx.post(
        f"{base}/machines",
        json={"config": {"image": "x", "guest": {"cpus": "eight"}}},
        headers=headers,
    )
    assert bad.status_code == 400
    unknown = httpx.post(f"{base}/machines", json={"confg": {}}, headers=headers)
    assert unknown.status_code == 400
    assert httpx.get(f"{base}/machines/x/wait?state=sleeping", headers=headers).status_code == 400
    assert httpx.get(f"{base}/machines", headers={}).status_code == 401
    assert len(fake.violations) == 3
    assert any("'eight' is not of type 'integer'" in v for v in fake.violations)


# --- the provider ---------------------------------------------------------------------------


def test_list_create_start_stop_wait_follow_the_spec(fake: FakeFly, clock: FakeClock) -> None:
    sleeps = Sleeps(clock)
    fly = provider(fake, clock, sleeps, fly_region="ams")
    stopped = fake.add_machine("stopped")
    fake.add_machine("started", worker=False)  # not a stemfleet worker: never listed
    assert [(m.id, m.state) for m in fly.list()] == [(stopped, "stopped")]

    created = fly.create("stemfleet-worker-a", 1.0)
    assert (created.state, created.provider_state) == ("starting", "created")
    assert created.size == "performance-8x" and created.name == "stemfleet-worker-a"
    body = fake.calls[-1].body
    assert body["region"] == "ord"  # the template's region wins over STEMFLEET_FLY_REGION
    assert body["config"]["metadata"] == {
        "team": "audio",
        "stemfleet_role": "worker",
        "stemfleet_size": "performance-8x",
    }
    assert body["config"]["env"]["STEMFLEET_WORKER_PROVIDER"] == "fly"
    assert body["config"]["image"] == TEMPLATE["config"]["image"]

    fly.start(stopped)
    fake.tick(2)
    assert fly.wait(stopped, "started", timeout=5)
    fly.stop(stopped)
    assert fake.calls[-1].body == {"signal": "SIGTERM", "timeout": "30s"}
    assert not fly.wait(stopped, "stopped", timeout=5)  # still stopping: the wait times out
    fake.tick()
    assert fly.wait(stopped, "stopped", timeout=5)
    assert {m.id: m.state for m in fly.list()} == {stopped: "stopped", created.id: "started"}
    assert fake.violations == []
    assert fake.count("Machines_delete") == 0


def test_429_is_retried_after_retry_after_and_500_with_backoff(
    fake: FakeFly, clock: FakeClock
) -> None:
    sleeps = Sleeps(clock)
    fly = provider(fake, clock, sleeps)
    fake.fail(429, method="GET", retry_after="3")
    fake.fail(500, times=2, method="GET")
    assert fly.list() == []
    assert fake.count("Machines_list") == 4
    assert sleeps.delays[0] == 3.0  # Retry-After honoured
    assert 0.5 <= sleeps.delays[1] <= 1.0  # 2nd try: 1 s x jitter in [0.5, 1]
    assert 1.0 <= sleeps.delays[2] <= 2.0  # 3rd try: 2 s x jitter


def test_retries_give_up_with_a_named_error(fake: FakeFly, clock: FakeClock) -> None:
    fly = provider(fake, clock, Sleeps(clock), fly_max_retries=2)
    fake.fail(503, times=10, method="POST")
    with pytest.raises(ProviderError) as error:
        fly.start("whatever")
    assert error.value.kind == "server_error" and error.value.status == 503
    assert "after 3 tries" in str(error.value)


def test_a_create_refused_for_capacity_is_a_capacity_error(fake: FakeFly, clock: FakeClock) -> None:
    fly = provider(fake, clock, Sleeps(clock))
    fake.refuse_creates()
    with pytest.raises(ProviderError) as error:
        fly.create("stemfleet-worker-a", 1.0)
    assert error.value.kind == "capacity"
    assert "insufficient resources" in str(error.value)
    assert fly.create("stemfleet-worker-b", 1.0).state == "starting"


def test_calls_are_throttled_per_action_and_machine(fake: FakeFly, clock: FakeClock) -> None:
    sleeps = Sleeps(clock)
    fly = provider(fake, clock, sleeps)
    machine_id = fake.add_machine("started")
    for _ in range(5):
        fly.stop(machine_id)  # burst of 3, then one per second
    assert sleeps.delays == [pytest.approx(1.0), pytest.approx(1.0)]
    fly.start(fake.add_machine("stopped"))  # another machine and action: its own bucket
    assert len(sleeps.delays) == 2


def test_token_bucket_refills_at_its_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(1.0, 3, clock.monotonic)
    assert [bucket.take() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take() == pytest.approx(1.0)
    clock.advance(10)
    assert bucket.take() == 0.0


def test_backoff_and_retry_after_parsing() -> None:
    rng = random.Random(1)
    for attempt in range(8):
        delay = backoff_delay(attempt, rng)
        assert min(30.0, 0.5 * 2**attempt) / 2 <= delay <= min(30.0, 0.5 * 2**attempt)
    now = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)
    assert retry_after_seconds("7", now) == 7.0
    assert retry_after_seconds("Mon, 05 Jan 2026 12:00:30 GMT", now) == 30.0
    assert retry_after_seconds("soon", now) is None
    assert retry_after_seconds("9999", now) == 120.0


def test_missing_settings_and_templates_are_named(tmp_path: Any, fake: FakeFly) -> None:
    with pytest.raises(ConfigError, match="STEMFLEET_FLY_API_TOKEN"):
        FlyProvider(settings(provider="fly", fly_app="a"))
    with pytest.raises(ConfigError, match="STEMFLEET_FLY_APP"):
        FlyProvider(settings(provider="fly", fly_api_token="t"))
    with pytest.raises(ConfigError, match="no machine template at"):
        load_template(fly_settings(fake, machine_template=tmp_path / "missing.json"))
    (tmp_path / "bad.json").write_text('{"config": {"guest": {}}}')
    with pytest.raises(ConfigError, match=r"needs config\.image"):
        load_template(fly_settings(fake, machine_template=tmp_path / "bad.json"))
    (tmp_path / "bare.json").write_text('{"image": "img:1"}')
    assert load_template(fly_settings(fake, machine_template=tmp_path / "bare.json")) == {
        "config": {"image": "img:1"}
    }


# --- the scaler on Fly ----------------------------------------------------------------------


def serve_workers(conn: Connection, queue: Queue, fake: FakeFly) -> dict[str, Any]:
    """Workers register on machines that reached `started` (what the worker process does)."""
    known = {
        row["machine_id"]: row["id"]
        for row in conn.execute("select machine_id, id from public.workers").fetchall()
    }
    for machine_id, state in fake.states().items():
        if (
            state == "started"
            and machine_id not in known
            and fake.machines[machine_id].data["config"]["metadata"].get("stemfleet_role")
            == "worker"
        ):
            known[machine_id] = queue.register_worker(
                conn, machine_id=machine_id, provider="fly"
            ).id
    return known


def test_the_scaler_converges_through_faults_and_records_them(
    fake: FakeFly, clock: FakeClock, conn: Connection, db_url: str, queue: Queue
) -> None:
    the_settings = fly_settings(
        fake,
        db_url,
        max_machines=3,
        scale_down_idle=600,
        scale_up_cooldown=60,
        scale_down_cooldown=0,
    )
    sleeps = Sleeps(clock)
    fly = FlyProvider(
        the_settings, template=TEMPLATE, clock=clock, sleep=sleeps, rng=random.Random(3)
    )
    scaler = Scaler(the_settings, fly, database_url=db_url, clock=clock)
    old = fake.add_machine("stopped")  # left stopped by an earlier day
    outsider = fake.add_machine("started", worker=False)
    for i in range(60):
        queue.enqueue(conn, user_id=USER, input_key=f"inputs/{i}.wav")

    # Run 1: the list is retried (429 then 500); 60 queued -> +5, capped at 3: start the stopped
    # machine (it sticks in `starting`), create two: the first is refused for capacity, so the
    # second is not even tried.
    fake.fail(429, method="GET", path="/machines$", retry_after="2")
    fake.fail(500, method="GET", path="/machines$")
    fake.stick_next_start()
    fake.refuse_creates()
    first = scaler.run_once()
    assert first.acted and sleeps.delays[0] == 2.0
    assert [(r.action.kind, r.ok) for r in first.results] == [
        ("start", True),
        ("create", False),
        ("create", False),
    ]
    assert [e["kind"] for e in first.errors] == ["capacity"]
    assert "skipped" in first.results[2].detail

    # Run 2, after the cooldown: the booting machine counts, two more are created (one slow).
    clock.advance(61)
    fake.slow_start(3)
    second = scaler.run_once()
    assert [r.action.kind for r in second.results] == ["create", "create"]
    assert all(r.ok for r in second.results)
    fake.tick(2)
    serve_workers(conn, queue, fake)

    # Run 3, six minutes on: the old machine is still `starting`: reported, stopped, not capacity.
    clock.advance(301)
    fake.tick(2)
    workers = serve_workers(conn, queue, fake)
    for worker_id in workers.values():
        queue.worker_heartbeat(conn, worker_id)
    third = scaler.run_once()
    assert third.plan is not None and third.plan.stuck == (old,)
    assert [(r.action.kind, r.action.machine_id) for r in third.results] == [("stop", old)]
    fake.tick()

    # Run 4: at the ceiling no longer, the stopped machine is started again (not a new create).
    clock.advance(61)
    fourth = scaler.run_once()
    assert [(r.action.kind, r.action.machine_id) for r in fourth.results] == [("start", old)]
    fake.tick(2)
    workers = serve_workers(conn, queue, fake)
    assert len(workers) == 3

    # The workers drain the queue.
    while True:
        claimed = [j for w in workers.values() for j in queue.claim(conn, w, lease=600)]
        if not claimed:
            break
        clock.advance(30)
        for job in claimed:
            queue.complete(conn, job, output={"stems": {}})

    # Idle past the window: drained, then stopped; each worker exits when its machine stops.
    clock.advance(601)
    for worker_id in workers.values():
        queue.worker_heartbeat(conn, worker_id)
    fifth = scaler.run_once()
    assert sorted(r.action.kind for r in fifth.results) == ["drain"] * 3
    sixth = scaler.run_once()
    assert sorted(r.action.kind for r in sixth.results) == ["stop"] * 3
    clock.advance(20)
    for worker_id in workers.values():
        queue.worker_stopped(conn, worker_id)
    fake.tick()
    last = scaler.run_once()
    assert last.results == [] and last.errors == []

    states = fake.states()
    assert states.pop(outsider) == "started"  # never touched
    assert set(states.values()) == {"stopped"}
    assert fake.violations == []
    assert fake.count("Machines_delete") == 0
    assert not [c for c in fake.calls if outsider in c.path]
    runs = queue.machine_runs(conn, "fly")
    assert len(runs) == 4 and all(r.stopped_at is not None for r in runs)
    assert queue.spend(conn).today_usd > 0
    recorded = conn.execute(
        "select errors_count, scaled_up, scaled_down from admin.scaler_runs order by id"
    ).fetchall()
    assert len(recorded) == 7
    assert recorded[0]["errors_count"] == 1 and recorded[0]["scaled_up"]
    assert [r["scaled_down"] for r in recorded] == [False] * 4 + [True, True, False]
    assert queue.last_scaler_runs(conn, 7)[-1].errors[0]["kind"] == "capacity"


def test_a_list_that_keeps_failing_is_recorded_not_raised(
    fake: FakeFly, clock: FakeClock, conn: Connection, db_url: str, queue: Queue
) -> None:
    the_settings = fly_settings(fake, db_url, fly_max_retries=3)
    fly = FlyProvider(the_settings, template=TEMPLATE, clock=clock, sleep=Sleeps(clock))
    fake.fail(429, times=10, method="GET", retry_after="1")
    outcome = Scaler(the_settings, fly, database_url=db_url, clock=clock).run_once()
    assert outcome.acted and outcome.results == []
    assert outcome.errors[0]["kind"] == "rate_limited" and outcome.errors[0]["stage"] == "list"
    assert fake.count("Machines_list") == 4
    (run,) = queue.last_scaler_runs(conn)
    assert run.errors == outcome.errors


def test_a_busy_worker_is_never_stopped_even_if_it_took_a_job_after_the_plan(
    fake: FakeFly, clock: FakeClock, conn: Connection, db_url: str, queue: Queue
) -> None:
    the_settings = fly_settings(fake, db_url)
    fly = FlyProvider(the_settings, template=TEMPLATE, clock=clock, sleep=Sleeps(clock))
    scaler = Scaler(the_settings, fly, database_url=db_url, clock=clock)
    machine_id = fake.add_machine("started")
    worker = queue.register_worker(conn, machine_id=machine_id, provider="fly")
    queue.drain_worker(conn, worker.id)
    plan, _ = scaler.preview()
    assert [a.kind for a in plan.actions] == ["stop"]
    # Between the plan and the act the worker takes a job (it was undrained meanwhile).
    queue.drain_worker(conn, worker.id, False)
    queue.enqueue(conn, user_id=USER, input_key="inputs/late.wav")
    assert queue.claim(conn, worker.id, lease=60)
    results = scaler.actor.act(conn, plan)
    assert [(r.action.kind, r.ok) for r in results] == [("stop", False)]
    assert "took a job" in results[0].detail
    assert fake.states()[machine_id] == "started"
    assert fake.count("Machines_stop") == 0


def test_preview_reads_but_records_nothing(
    fake: FakeFly, clock: FakeClock, conn: Connection, db_url: str, queue: Queue
) -> None:
    the_settings = fly_settings(fake, db_url, min_machines=1)
    fly = FlyProvider(the_settings, template=TEMPLATE, clock=clock, sleep=Sleeps(clock))
    plan, inputs = Scaler(the_settings, fly, database_url=db_url, clock=clock).preview()
    assert [a.kind for a in plan.actions] == ["create"]
    assert inputs.backlog.queued == 0
    assert fake.count("Machines_create") == 0
    assert queue.last_scaler_runs(conn) == [] and queue.machine_runs(conn, "fly") == []
    assert clock.now() - datetime(2026, 1, 5, 12, 0, tzinfo=UTC) < timedelta(seconds=1)


def test_the_repo_machine_template_creates_a_worker(fake: FakeFly, clock: FakeClock) -> None:
    repo_template = Path(__file__).resolve().parents[1] / "deploy/worker-machine.json"
    fly = FlyProvider(
        fly_settings(fake, machine_template=repo_template), clock=clock, sleep=Sleeps(clock)
    )
    machine = fly.create("stemfleet-worker-a", 1.0)
    assert [m.id for m in fly.list()] == [machine.id]
    assert fake.violations == []
