"""Admin views return the right figures for a known data set, and only to the service role."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

import psycopg
import pytest

from app.db import Connection, as_user
from app.queue import Queue

USER = uuid.UUID("00000000-0000-4000-8000-00000000000c")


def add_job(
    conn: Connection,
    *,
    status: str,
    kind: str = "separate",
    created: datetime,
    started: datetime | None = None,
    finished: datetime | None = None,
    error_kind: str | None = None,
    error: str | None = None,
) -> None:
    worker_id = uuid.uuid4() if status == "running" else None
    lease = created + timedelta(hours=1) if status == "running" else None
    conn.execute(
        "insert into public.jobs (user_id, kind, status, input_key, created_at, started_at, "
        "finished_at, error_kind, error, worker_id, lease_expires_at) "
        "values (%s, %s, %s, 'inputs/x', %s, %s, %s, %s, %s, %s, %s)",
        (USER, kind, status, created, started, finished, error_kind, error, worker_id, lease),
    )


def test_admin_views_report_known_figures(tx: Connection) -> None:
    now = tx.execute("select now() as now").fetchone()["now"]  # type: ignore[index]
    hour = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=2)
    # succeeded separate jobs in one hour: waits 10, 20, 30, 40 s; runs 100, 200, 300, 400 s
    for i in range(1, 5):
        created = hour + timedelta(minutes=i)
        started = created + timedelta(seconds=10 * i)
        add_job(
            tx,
            status="succeeded",
            created=created,
            started=started,
            finished=started + timedelta(seconds=100 * i),
        )
    add_job(tx, status="queued", created=now - timedelta(seconds=300))
    add_job(tx, status="queued", created=now - timedelta(seconds=60))
    add_job(tx, status="queued", kind="preview", created=now - timedelta(seconds=5))
    add_job(tx, status="running", created=now - timedelta(seconds=30))
    for i, kind in enumerate(["undecodable", "undecodable", "storage"]):
        add_job(
            tx,
            status="failed",
            created=now - timedelta(hours=1),
            finished=now - timedelta(minutes=10 - i),
            error_kind=kind,
            error=f"error {i}",
        )

    depth = {
        (r["status"], r["kind"]): r["jobs"]
        for r in tx.execute("select * from admin.queue_depth").fetchall()
    }
    assert depth[("queued", "separate")] == 2
    assert depth[("queued", "preview")] == 1
    assert depth[("running", "separate")] == 1
    assert depth[("succeeded", "separate")] == 4
    assert depth[("failed", "separate")] == 3
    assert depth[("cancelled", "preview")] == 0

    oldest = {r["kind"]: r for r in tx.execute("select * from admin.queue_oldest").fetchall()}
    assert oldest["separate"]["queued"] == 2
    assert oldest["separate"]["oldest_age_s"] == pytest.approx(300, abs=1)
    assert oldest["preview"]["oldest_age_s"] == pytest.approx(5, abs=1)

    (times,) = tx.execute("select * from admin.job_times_hourly").fetchall()
    assert times["hour"] == hour and times["jobs"] == 4
    # percentile_cont over [10,20,30,40] and [100,200,300,400]
    assert times["wait_p50_s"] == pytest.approx(25)
    assert times["wait_p95_s"] == pytest.approx(38.5)
    assert times["run_p50_s"] == pytest.approx(250)
    assert times["run_p95_s"] == pytest.approx(385)

    failures = tx.execute("select * from admin.failures").fetchall()
    assert [(r["error_kind"], r["jobs"]) for r in failures] == [("undecodable", 2), ("storage", 1)]
    assert failures[0]["last_error"] == "error 1"


def test_admin_workers_view_reports_heartbeat_age(tx: Connection) -> None:
    tx.execute(
        "insert into public.workers (machine_id, last_heartbeat_at) values ('m1', now() - "
        "interval '42 seconds')"
    )
    tx.execute("insert into public.workers (machine_id, state) values ('gone', 'stopped')")
    (row,) = tx.execute("select * from admin.workers").fetchall()
    assert row["machine_id"] == "m1"
    assert row["heartbeat_age_s"] == pytest.approx(42, abs=1)
    assert row["running_jobs"] == 0


def test_admin_workers_view_counts_a_groups_running_jobs(tx: Connection) -> None:
    queue = Queue()
    for name in ("a", "b", "c"):
        queue.enqueue(tx, user_id=USER, input_key=f"inputs/{USER}/{name}.wav")
    worker = queue.register_worker(tx, machine_id="gpu-1")
    queue.claim(tx, worker.id, lease=60, limit=2)  # a group of two

    (row,) = tx.execute("select * from admin.workers").fetchall()
    assert (row["state"], row["running_jobs"]) == ("busy", 2)


@pytest.mark.parametrize(
    "view", ["queue_depth", "queue_oldest", "job_times_hourly", "failures", "workers"]
)
def test_admin_views_are_not_readable_by_users(tx: Connection, view: str) -> None:
    with pytest.raises(psycopg.errors.InsufficientPrivilege), as_user(tx, str(USER)):
        tx.execute(f"select * from admin.{view}")


def test_admin_views_are_readable_by_service_role(tx: Connection) -> None:
    with tx.transaction():
        tx.execute("set local role service_role")
        assert len(tx.execute("select * from admin.queue_depth").fetchall()) == 10
