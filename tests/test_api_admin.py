"""Health, readiness, Prometheus metrics, and the admin endpoints (service token)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.db import connect
from app.queue import Queue
from tests.api_support import ADMIN, USER_A, api_client, api_settings, audio_bytes, bearer


@pytest.fixture
def client(db_url: str, tmp_path: Path) -> Iterator[TestClient]:
    with api_client(api_settings(db_url, tmp_path)) as (client, _app):
        yield client


def test_healthz_and_readyz(client: TestClient, db_url: str) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"

    with connect(db_url) as conn:
        row = conn.execute(
            "delete from supabase_migrations.schema_migrations where version = "
            "(select max(version) from supabase_migrations.schema_migrations) returning version"
        ).fetchone()
    assert row is not None
    not_ready = client.get("/readyz")
    assert not_ready.status_code == 503
    error = not_ready.json()["error"]
    assert "stemfleet db migrate" in error["message"]
    assert error["details"]["pending_migrations"][0].startswith(row["version"])


def test_metrics_expose_queue_gauges_and_request_latencies(client: TestClient) -> None:
    response = client.post(
        "/v1/jobs", files={"file": ("a.wav", audio_bytes(), "audio/wav")}, headers=bearer(USER_A)
    )
    assert response.status_code == 202
    text = client.get("/metrics").text
    assert 'stemfleet_jobs{kind="separate",status="queued"} 1.0' in text
    assert 'stemfleet_jobs{kind="preview",status="running"} 0.0' in text
    assert 'stemfleet_queue_depth{kind="separate"} 1.0' in text
    assert 'stemfleet_queue_oldest_wait_seconds{kind="separate"}' in text
    assert "stemfleet_database_up 1.0" in text
    assert 'stemfleet_workers{state="idle"} 0.0' in text
    assert 'stemfleet_webhook_deliveries{status="pending"} 0.0' in text
    assert (
        'stemfleet_http_request_duration_seconds_count{method="POST",route="/v1/jobs",'
        'status="202"} 1.0'
    ) in text


def test_admin_queue_workers_and_spend(client: TestClient, db_url: str) -> None:
    with connect(db_url) as conn:
        queue = Queue()
        queue.enqueue(conn, user_id=USER_A, input_key=f"inputs/{USER_A}/x/a.wav")
        worker = queue.register_worker(conn, machine_id="gpu-1", gpu="L4", region="ams")

    body = client.get("/v1/admin/queue", headers=ADMIN).json()
    assert {"depth", "oldest", "hourly", "failures", "webhooks"} <= set(body)
    queued = [r for r in body["depth"] if r["status"] == "queued" and r["kind"] == "separate"]
    assert queued[0]["jobs"] == 1
    assert body["oldest"][0]["queued"] == 1

    workers = client.get("/v1/admin/workers", headers=ADMIN).json()["workers"]
    assert [(w["id"], w["machine_id"], w["state"]) for w in workers] == [
        (str(worker.id), "gpu-1", "idle")
    ]

    spend = client.get("/v1/admin/spend", headers=ADMIN).json()
    assert spend["now"] == {"today_usd": 0.0, "month_usd": 0.0, "hourly_usd": 0.0}
    assert spend["budget"]["daily_usd"] == 100.0
    assert spend["daily"] == [] and spend["scaler_runs"] == []


@pytest.mark.slow
def test_admin_scaler_run_runs_one_reconcile(client: TestClient) -> None:
    response = client.post("/v1/admin/scaler/run", headers=ADMIN)
    assert response.status_code == 200, response.text
    run = response.json()
    assert run["command"][-2:] == ["scaler", "once"]
    assert run["exit_code"] == 0 and run["ok"] is True, run["stderr"]
    # the reconcile was recorded, and the spend endpoint shows it
    runs = client.get("/v1/admin/spend", headers=ADMIN).json()["scaler_runs"]
    assert len(runs) == 1
    assert client.post("/v1/admin/scaler/run", headers=bearer(USER_A)).status_code == 403


def test_cors_lets_the_configured_browser_origins_in(db_url: str, tmp_path: Path) -> None:
    settings = api_settings(db_url, tmp_path, cors_origins=["https://stems.example"])
    with api_client(settings) as (client, _app):
        preflight = client.options(
            "/v1/jobs",
            headers={
                "Origin": "https://stems.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization,idempotency-key",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "https://stems.example"
        other = client.get("/healthz", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers
