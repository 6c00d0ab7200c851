"""End to end through a real HTTP server (uvicorn on a loopback port) and a real worker running
Demucs' tiny model: upload -> job -> server-sent events in order -> stems downloaded from the
presigned URLs; and the Supabase-client path (a row inserted as role `authenticated`)."""

from __future__ import annotations

import io
import json
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import soundfile as sf

from app.api.main import create_app
from app.db import as_user, connect
from app.settings import Settings, load_settings
from app.storage import input_key, storage_from_settings
from tests.api_support import USER_A, USER_B, api_settings, audio_bytes, bearer, served
from worker.loop import Worker
from worker.separation import Separator

pytestmark = pytest.mark.slow

STATUS_ORDER = ["queued", "running", "succeeded"]
SOURCES = {"drums", "bass", "other", "vocals"}


@pytest.fixture(scope="module")
def separator() -> Separator:
    return Separator(load_settings(model="demucs_unittest", device="cpu", model_repo=None))


@pytest.fixture
def settings(db_url: str, s3_env: dict[str, str], tmp_path: Path) -> Settings:
    return api_settings(
        db_url,
        tmp_path,
        model="demucs_unittest",
        model_repo=None,
        device="cpu",
        lease=10,
        heartbeat_interval=0.2,
        machine_id=f"api-flow-{uuid.uuid4().hex[:8]}",
    )


@pytest.fixture
def server(settings: Settings) -> Iterator[str]:
    """The API served by uvicorn on a free loopback port, lifespan and all."""
    with served(create_app(settings)) as url:
        yield url


@pytest.fixture
def worker(settings: Settings, separator: Separator, tmp_path: Path) -> Iterator[Worker]:
    with Worker(settings, separator=separator, prefetch=False, work_dir=tmp_path / "work") as w:
        yield w


def run_in_thread(target: Any) -> tuple[threading.Thread, list[Any]]:
    box: list[Any] = []
    thread = threading.Thread(target=lambda: box.append(target()), daemon=True)
    thread.start()
    return thread, box


def read_events(response: httpx.Response, on_first: Any) -> list[dict[str, Any]]:
    events = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            events.append(json.loads(line.removeprefix("data: ")))
            if len(events) == 1:
                on_first()
    return events


def check_stems(job: dict[str, Any], seconds: float) -> None:
    assert set(job["stems"]) == SOURCES
    for stem in job["stems"].values():
        assert stem["key"].startswith(f"outputs/{job['id']}/")
        download = httpx.get(stem["url"], timeout=30)
        assert download.status_code == 200
        data, rate = sf.read(io.BytesIO(download.content))
        assert len(data) / rate == pytest.approx(seconds, abs=0.05)


def test_upload_job_events_and_stems_over_http(server: str, worker: Worker) -> None:
    headers = bearer(USER_A)
    seconds = 2.0
    data = audio_bytes("WAV", seconds, samplerate=44100)
    with httpx.Client(base_url=server, headers=headers, timeout=120) as client:
        ticket = client.post("/v1/uploads", json={"filename": "mix.wav", "size": len(data)}).json()
        put = httpx.put(ticket["upload_url"], content=data, headers=ticket["headers"])
        assert put.status_code == 200
        created = client.post("/v1/jobs", json={"input_key": ticket["input_key"]})
        assert created.status_code == 202, created.text
        job_id = created.json()["id"]

        started: list[tuple[threading.Thread, list[Any]]] = []
        with client.stream("GET", f"/v1/jobs/{job_id}/events") as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            # the worker starts only once the stream is open, so every change is seen live
            events = read_events(stream, lambda: started.append(run_in_thread(worker.run_once)))
        thread, box = started[0]
        thread.join(timeout=120)
        assert box and [o.status for o in box[0]] == ["succeeded"]

        statuses = [e["status"] for e in events]
        assert statuses[0] == "queued" and statuses[-1] == "succeeded"
        assert [STATUS_ORDER.index(s) for s in statuses] == sorted(
            STATUS_ORDER.index(s) for s in statuses
        )
        progress = [e["progress"] for e in events]
        assert progress == sorted(progress) and progress[-1] == 1
        assert len(events) >= 3  # queued, at least one running/progress update, succeeded

        final = client.get(f"/v1/jobs/{job_id}").json()
        assert final["status"] == "succeeded"
        assert final["timings"]["run_s"] > 0
        check_stems(events[-1], seconds)
        check_stems(final, seconds)


def test_an_aiff_upload_is_accepted_and_separated(server: str, worker: Worker) -> None:
    """`stemfleet process` collects AIFF files and the worker decodes them: the API takes them."""
    seconds = 1.5
    data = audio_bytes("AIFF", seconds, samplerate=44100)
    with httpx.Client(base_url=server, headers=bearer(USER_A), timeout=60) as client:
        created = client.post(
            "/v1/jobs",
            files={"file": ("take 3.aif", data, "application/octet-stream")},
            data={"kind": "separate"},
        )
        assert created.status_code == 202, created.text
        assert created.json()["duration_s"] == pytest.approx(seconds, abs=0.01)

        (outcome,) = worker.run_once()
        assert outcome.status == "succeeded"
        done = client.get(f"/v1/jobs/{created.json()['id']}").json()
        assert done["status"] == "succeeded"
        check_stems(done, seconds)


def test_supabase_client_insert_is_visible_through_the_api_and_processed(
    server: str, worker: Worker, settings: Settings
) -> None:
    seconds = 1.5
    key = input_key(USER_A, "phone.flac")
    storage_from_settings(settings).put_bytes(key, audio_bytes("FLAC", seconds, 44100))
    with connect(settings.require_database_url()) as conn, as_user(conn, str(USER_A)):
        # what supabase.table("jobs").insert({...}) sends through PostgREST
        row = conn.execute(
            "insert into public.jobs (input_key, kind, params) values (%s, 'separate', %s)"
            " returning id, user_id, status",
            (key, json.dumps({"format": "wav"})),
        ).fetchone()
    assert row is not None and row["user_id"] == USER_A and row["status"] == "queued"
    job_id = row["id"]

    with httpx.Client(base_url=server, timeout=60) as client:
        mine = client.get(f"/v1/jobs/{job_id}", headers=bearer(USER_A))
        assert mine.status_code == 200 and mine.json()["queue_position"] == 1
        assert client.get(f"/v1/jobs/{job_id}", headers=bearer(USER_B)).status_code == 404

        (outcome,) = worker.run_once()
        assert outcome.status == "succeeded"

        done = client.get(f"/v1/jobs/{job_id}", headers=bearer(USER_A)).json()
        assert done["status"] == "succeeded"
        check_stems(done, seconds)
        listed = client.get("/v1/jobs", headers=bearer(USER_A)).json()["jobs"]
        assert [j["id"] for j in listed] == [str(job_id)]
