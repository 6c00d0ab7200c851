"""The scaler on RunPod, end to end: real Postgres, the real Scaler.run_once(), the RunPod
provider against the spec-checking fake (tests/fake_runpod.py), on a FakeClock.

`replay_day` replays a day with a 10,000-job spike and faults (429/5xx, lost create answers,
capacity running out, 402, zero-GPU resumes, stuck and broken pods). Workers are played by the
test, as the worker process would act: they register on RUNNING pods that have their GPU, refuse
(with the reason on their row) on pods that came back without one, heartbeat, hold the jobs they
claim through a scaler run, and die with their pod. After every round it checks what the fake
bills: never more pods than max_machines, never a rate over max_hourly_usd, never a bill over
the daily or monthly budget, never a stop or terminate of a pod whose worker holds a job.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from psycopg.types.json import Jsonb

from app.clock import FakeClock
from app.db import Connection, connect
from app.queue import Job, Queue
from app.settings import Settings
from scaler.providers.runpod import RunPodProvider
from scaler.reconcile import Scaler
from tests.fake_runpod import FakeRunPod
from tests.scaler_support import Sleeps, enqueue_many, settings
from tests.test_scaler_runpod import A4000, A4500, RTX3090, TEMPLATE, fake, rp_settings
from tests.worker_helpers import libpq_url

USER = uuid.UUID("00000000-0000-4000-8000-00000000a4a0")
HOLDING = ("PROVISIONING", "STARTING", "RUNNING", "ERROR")  # the fake bills these at full rate
ROUND_S = 60.0
__all__ = ["fake"]  # the fake RunPod server fixture, shared with test_scaler_runpod.py
JOBS_PER_ROUND = 10  # one GPU worker: about 6 s a job


def day_settings(db_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "provider": "runpod",
        "database_url": libpq_url(db_url),
        "min_machines": 1,
        "max_machines": 4,
        "max_hourly_usd": 0.80,
        "daily_budget_usd": 12.0,
        "monthly_budget_usd": 300.0,
        "scaler_interval": ROUND_S,
        "scale_up_cooldown": 60.0,
        "scale_down_cooldown": 120.0,
        "scale_down_idle": 600.0,
        "transient_timeout": 300.0,
        "budget_lookahead": 900.0,
        **overrides,
    }
    return settings(**values)


def runpod(
    fake: FakeRunPod, clock: FakeClock, the_settings: Settings, template: Path
) -> RunPodProvider:
    return RunPodProvider(
        the_settings,
        rp_settings(
            fake,
            gpu_types=[A4000, RTX3090, A4500],
            clouds=["COMMUNITY", "SECURE"],
            catalog=True,
            template=template,
        ),
        clock=clock,
        sleep=Sleeps(clock),
        rng=random.Random(11),
    )


@dataclass
class Workers:
    """The worker processes, played: one per pod boot."""

    conn: Connection
    queue: Queue
    fake: FakeRunPod
    ids: dict[tuple[str, str], UUID] = field(default_factory=dict)  # (pod, startedAt) -> worker
    held: dict[str, list[Job]] = field(default_factory=dict)  # pod -> jobs its worker holds
    refused: set[tuple[str, str]] = field(default_factory=set)

    def sync(self) -> None:
        """Workers register on pods that run with their GPU, refuse on pods without, and die
        with their pod (jobs they held come back through the scaler or their lease)."""
        for pod_id, status in self.fake.states().items():
            pod = self.fake.pod(pod_id)
            boot = (pod_id, str(pod.get("startedAt")))
            live = [k for k in self.ids if k[0] == pod_id]
            for key in live:
                if key != boot or status != "RUNNING":
                    self.queue.worker_stopped(self.conn, self.ids.pop(key))
                    self.held.pop(pod_id, None)
            if status != "RUNNING" or boot in self.ids or boot in self.refused:
                continue
            if "gpu" not in pod:  # resumed without its card: the GPU self-check refuses
                self.queue.worker_refused(
                    self.conn,
                    machine_id=pod_id,
                    provider="runpod",
                    gpu=None,
                    region=pod.get("dataCenterId"),
                    reason="no usable GPU: the machine has zero GPUs",
                )
                self.refused.add(boot)
                continue
            worker = self.queue.register_worker(
                self.conn, machine_id=pod_id, provider="runpod", gpu=pod["gpu"]["id"]
            )
            self.ids[boot] = worker.id

    def work(self) -> int:
        """Finish what each worker held since the last round, then claim the next batch
        (unless draining): it is held through the scaler's run. Returns jobs finished."""
        finished = [job for pod_id, _ in sorted(self.ids) for job in self.held.pop(pod_id, [])]
        complete_all(self.conn, self.queue, finished)
        for (pod_id, _), worker_id in sorted(self.ids.items()):
            worker = self.queue.worker_heartbeat(self.conn, worker_id)
            if not worker.draining:
                self.held[pod_id] = self.queue.claim(
                    self.conn, worker_id, lease=600, limit=JOBS_PER_ROUND
                )
        return len(finished)


@dataclass
class DayFigures:
    rounds: int = 0
    jobs: int = 0
    requests: int = 0
    faults: int = 0
    max_pods: int = 0
    max_rate_usd: float = 0.0
    bill_usd: float = 0.0
    recorded_usd: float = 0.0
    converged_round: int | None = None
    violations: list[str] = field(default_factory=list)

    def line(self) -> str:
        diff = abs(self.recorded_usd - self.bill_usd) / self.bill_usd * 100 if self.bill_usd else 0
        return (
            f"runpod day: {self.rounds} rounds, {self.jobs} jobs, {self.requests} API requests, "
            f"{self.faults} faults injected, max {self.max_pods} pods billed, max "
            f"${self.max_rate_usd:.4f}/h, fake's bill ${self.bill_usd:.4f} vs recorded spend "
            f"${self.recorded_usd:.4f} ({diff:.2f} % apart), backlog cleared in round "
            f"{self.converged_round}"
        )


# The jobs that finish in a round finish in one statement (as its arrivals arrive, see
# enqueue_many): the same queue.complete, called once per job, as the workers call it, but one round
# trip a round instead of one a job.


def complete_all(conn: Connection, queue: Queue, jobs: list[Job]) -> None:
    if not jobs:
        return
    done = conn.execute(
        "select count(*) filter (where c.status = 'succeeded') as n from unnest("
        " %(ids)s::uuid[], %(workers)s::uuid[], %(attempts)s::int[]) as j(id, worker, attempt)"
        " cross join lateral queue.complete(p_job_id => j.id, p_worker_id => j.worker,"
        " p_attempt => j.attempt, p_output => %(output)s, p_now => %(now)s) as c",
        {
            "ids": [job.id for job in jobs],
            "workers": [job.worker_id for job in jobs],
            "attempts": [job.attempts for job in jobs],
            "output": Jsonb({"stems": {}}),
            "now": queue.clock.db_now(),
        },
    ).fetchone()
    assert done == {"n": len(jobs)}


def queued_or_running(conn: Connection) -> int:
    row = conn.execute(
        "select count(*) as n from public.jobs where status in ('queued', 'running')"
    ).fetchone()
    assert row is not None
    return int(row["n"])


def replay_day(
    conn: Connection,
    queue: Queue,
    fake: FakeRunPod,
    clock: FakeClock,
    the_settings: Settings,
    template: Path,
    scaler_conn: Connection,
    *,
    spike: int = 10_000,
    trickle: int = 240,
) -> DayFigures:
    rng = random.Random(4)
    scaler = Scaler(
        the_settings, runpod(fake, clock, the_settings, template), clock=clock, conn=scaler_conn
    )
    workers = Workers(conn, queue, fake)
    figures = DayFigures()
    arrivals: dict[int, int] = {}
    for _ in range(trickle):
        minute = rng.randrange(0, 1380)
        arrivals[minute] = arrivals.get(minute, 0) + 1

    def capacity(gpus: int) -> None:
        for gpu in (A4000, RTX3090, A4500):
            fake.set_capacity(gpu, gpus)

    def running_pod() -> str:
        return sorted(p for p, s in fake.states().items() if s == "RUNNING")[-1]

    faults: dict[int, list[Any]] = {
        30: [lambda: fake.fail_next("list", 429, retry_after=5)],
        31: [lambda: fake.fail_next("list", 500, times=2)],
        # the spike's creates: a 503 that made nothing, a 403 pool, a lost answer, A4000s short
        480: [
            lambda: fake.fail_next("create", 503),
            lambda: fake.fail_next("create", 403),
            lambda: fake.lose_next("create", status=502),
            lambda: fake.set_capacity(A4000, 2),
        ],
        555: [lambda: fake.stall_next()],  # the replacement of the pod broken next is stuck
        560: [lambda: fake.break_pod(running_pod())],
        563: [lambda: fake.error_next()],  # and the stuck one's replacement ends in ERROR
        600: [lambda: fake.lose_next("create", status=None)],
        995: [lambda: fake.set_balance(fake.charged_usd() + 0.01)],
        1010: [lambda: fake.set_balance(None), lambda: capacity(0)],  # starts come back GPU-less
        1016: [lambda: capacity(99), lambda: fake.zero_gpu_next_start()],
        1200: [lambda: fake.fail_next("list", 502)],
    }
    bursts = {480: spike, 1000: 3000}
    figures.jobs = spike + 3000 + trickle
    bill_at_day_start = fake.charged_usd()
    for minute in range(24 * 60):
        figures.rounds += 1
        clock.advance(ROUND_S)
        fake.tick()
        for fault in faults.get(minute, []):
            fault()
        enqueue_many(conn, queue, USER, bursts.get(minute, 0), f"burst{minute}-")
        enqueue_many(conn, queue, USER, arrivals.get(minute, 0), f"t{minute}-")
        workers.sync()
        workers.work()
        calls_before = len(fake.calls)
        holding = {pod for pod, jobs in workers.held.items() if jobs}
        scaler.run_once()
        for call in fake.calls[calls_before:]:
            stops = call.operation == "deletePod" or (
                call.operation == "podAction"
                and (call.body or {}).get("action") in ("stop", "terminate")
            )
            if not stops:
                continue
            pod_id = call.path.split("/")[3]
            if call.status < 300 and pod_id in holding:
                figures.violations.append(f"minute {minute}: {call.body} on {pod_id} holding jobs")
        billed = [p for p, s in fake.states().items() if s in HOLDING]
        rate = fake.rate_usd_per_hour()
        figures.max_pods = max(figures.max_pods, len(billed))
        figures.max_rate_usd = max(figures.max_rate_usd, rate)
        if len(billed) > the_settings.max_machines:
            figures.violations.append(f"minute {minute}: {len(billed)} pods billed")
        if rate > the_settings.max_hourly_usd + 1e-9:
            figures.violations.append(f"minute {minute}: ${rate:.4f}/h billed")
        spent = fake.charged_usd() - bill_at_day_start
        if spent > min(the_settings.daily_budget_usd, the_settings.monthly_budget_usd):
            figures.violations.append(f"minute {minute}: ${spent:.2f} billed today")
        if minute in bursts:
            figures.converged_round = None
        if minute > 480 and figures.converged_round is None and queued_or_running(conn) == 0:
            figures.converged_round = figures.rounds
    figures.requests = len(fake.calls)
    armed = sum(len(f) for f in faults.values()) - 3  # the capacity changes are not faults
    figures.faults = armed - len(fake.faults) - fake.next_stalled - fake.next_doomed
    figures.bill_usd = fake.charged_usd()
    figures.recorded_usd = queue.spend(conn).month_usd
    return figures


@pytest.fixture
def scaler_conn(db_url: str) -> Iterator[Connection]:
    """The scaler's own connection, held for its 1,440 runs: a run needs a connection of its
    own, not a new one (a fresh backend for each run was most of this replay's time)."""
    with connect(db_url, application_name="stemfleet-scaler") as connection:
        yield connection


def test_a_day_with_a_10000_job_spike_and_faults_keeps_every_ceiling(
    fake: FakeRunPod,
    clock: FakeClock,
    conn: Connection,
    scaler_conn: Connection,
    db_url: str,
    queue: Queue,
    tmp_path: Path,
) -> None:
    # the repo's pod template with a 50 GB persistent volume: billed while the pod is stopped
    template = json.loads(TEMPLATE.read_text())
    template["mounts"] = {"persistent": {"size": 50, "path": "/workspace"}}
    (tmp_path / "pod.json").write_text(json.dumps(template))
    the_settings = day_settings(db_url)
    figures = replay_day(conn, queue, fake, clock, the_settings, tmp_path / "pod.json", scaler_conn)
    print("\n" + figures.line())
    assert figures.violations == []
    assert fake.violations == []
    # converged: every job done, the fleet back to its floor of one running pod
    assert figures.converged_round is not None
    done = conn.execute("select status, count(*) as n from public.jobs group by status").fetchall()
    assert {r["status"]: r["n"] for r in done} == {"succeeded": figures.jobs}
    running = [p for p, s in fake.states().items() if s == "RUNNING"]
    assert len(running) == 1
    assert figures.max_pods == the_settings.max_machines
    # every outcome is a recorded reason, not a crash
    kinds = {e["kind"] for run in queue.last_scaler_runs(conn, 2000) for e in run.errors}
    assert {"capacity", "no_balance"} <= kinds, kinds
    replaced = [a for run in queue.last_scaler_runs(conn, 2000) for a in run.actions]
    assert any(a["kind"] == "destroy" and a["ok"] for a in replaced)  # ERROR, stuck, zero-GPU
    names = [fake.pod(p)["name"] for p in fake.pods]
    assert len(names) == len(set(names)), "a lost create answer never made a second pod"
    stopped = [p for p, s in fake.states().items() if s == "EXITED"]
    assert stopped and fake.rate_usd_per_hour(stopped[0]) > 0, "stopped disk is billed"
    # the scaler's recorded spend matches the fake's bill, stopped disk included
    assert figures.recorded_usd == pytest.approx(figures.bill_usd, rel=0.01)
