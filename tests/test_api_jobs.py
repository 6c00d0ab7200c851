"""Submitting, reading, listing and cancelling jobs through the API, and every input limit."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from app.db import connect
from app.queue import Queue
from tests.api_support import (
    USER_A,
    api_client,
    api_settings,
    audio_bytes,
    bearer,
    m4a_bytes,
)

A = bearer(USER_A)


def submit(
    client: TestClient,
    data: bytes,
    *,
    headers: dict[str, str] | None = None,
    filename: str = "song.wav",
    **fields: Any,
) -> httpx.Response:
    form = {k: (json.dumps(v) if k == "params" else v) for k, v in fields.items()}
    return client.post(
        "/v1/jobs",
        files={"file": (filename, data, "application/octet-stream")},
        data=form,
        headers={**A, **(headers or {})},
    )


def error_of(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"}, body
    assert body["error"]["message"], body
    error: dict[str, Any] = body["error"]
    return error


@pytest.fixture
def client(db_url: str, tmp_path: Path) -> Any:
    with api_client(api_settings(db_url, tmp_path)) as (client, _app):
        yield client


def test_multipart_submit_then_get_and_list(client: TestClient) -> None:
    response = submit(client, audio_bytes("FLAC", 2.0), params={"format": "mp3", "bitrate": 192})
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] == "queued"
    assert job["kind"] == "separate"
    assert job["params"]["format"] == "mp3" and job["params"]["bitrate"] == 192
    assert job["duration_s"] == pytest.approx(2.0, abs=0.01)
    assert len(job["input_sha256"]) == 64
    assert job["input_key"].startswith(f"inputs/{USER_A}/") and job["input_key"].endswith(
        "song.wav"
    )

    got = client.get(f"/v1/jobs/{job['id']}", headers=A).json()
    assert got["queue_position"] == 1
    assert got["stems"] is None

    listed = client.get("/v1/jobs", headers=A).json()
    assert [j["id"] for j in listed["jobs"]] == [job["id"]]
    assert listed["next_cursor"] is None


def test_queue_position_counts_jobs_ahead_by_priority(client: TestClient) -> None:
    first = submit(client, audio_bytes("WAV", 1.0)).json()
    second = submit(client, audio_bytes("WAV", 1.1)).json()
    preview = submit(client, audio_bytes("WAV", 1.2), kind="preview").json()
    position = {
        j["id"]: client.get(f"/v1/jobs/{j['id']}", headers=A).json()["queue_position"]
        for j in (first, second, preview)
    }
    # previews run first (higher priority), then the oldest
    assert position == {preview["id"]: 1, first["id"]: 2, second["id"]: 3}


def test_presigned_upload_then_submit_by_key(
    s3_env: dict[str, str], db_url: str, tmp_path: Path
) -> None:
    with api_client(api_settings(db_url, tmp_path)) as (client, _app):
        data = audio_bytes("OGG", 1.5)
        ticket = client.post(
            "/v1/uploads",
            json={"filename": "big mix.ogg", "content_type": "audio/ogg", "size": len(data)},
            headers=A,
        )
        assert ticket.status_code == 201, ticket.text
        body = ticket.json()
        assert body["input_key"].startswith(f"inputs/{USER_A}/")
        assert body["upload_url"].startswith(s3_env["STEMFLEET_S3_ENDPOINT_URL"])
        put = httpx.put(body["upload_url"], content=data, headers=body["headers"])
        assert put.status_code == 200, put.text

        response = client.post("/v1/jobs", json={"input_key": body["input_key"]}, headers=A)
        assert response.status_code == 202, response.text
        job = response.json()
        assert job["input_key"] == body["input_key"]
        assert job["duration_s"] == pytest.approx(1.5, abs=0.01)


def test_local_storage_serves_signed_put_and_get(client: TestClient) -> None:
    ticket = client.post("/v1/uploads", json={"filename": "a.m4a"}, headers=A).json()
    url = httpx.URL(ticket["upload_url"])
    path = url.raw_path.decode()
    data = m4a_bytes(4.0)

    tampered = path.replace("signature=", "signature=0")
    assert client.put(tampered, content=data).status_code == 403
    assert client.put(path, content=data).json() == {"key": ticket["input_key"], "size": len(data)}
    # a PUT signature does not allow a GET
    assert client.get(path).status_code == 403

    job = client.post("/v1/jobs", json={"input_key": ticket["input_key"]}, headers=A).json()
    assert job["duration_s"] == pytest.approx(4.0)


def test_input_key_must_be_the_callers_and_exist(client: TestClient) -> None:
    other = f"inputs/{uuid.uuid4()}/x/song.wav"
    response = client.post("/v1/jobs", json={"input_key": other}, headers=A)
    assert response.status_code == 422
    assert "one of your uploads" in error_of(response)["message"]

    missing = f"inputs/{USER_A}/nothing/song.wav"
    response = client.post("/v1/jobs", json={"input_key": missing}, headers=A)
    assert response.status_code == 422
    assert error_of(response)["code"] == "input_not_found"

    response = client.post("/v1/jobs", json={"input_key": f"inputs/{USER_A}/../x"}, headers=A)
    assert response.status_code == 422


def test_upload_over_the_size_limit_is_413(db_url: str, tmp_path: Path) -> None:
    settings = api_settings(db_url, tmp_path, max_upload_mb=0.01)
    with api_client(settings) as (client, _app):
        response = submit(client, audio_bytes("WAV", 1.0))  # 16 kB > 10 kB
        assert response.status_code == 413
        assert "limit of 0.01 MB" in error_of(response)["message"]

        ticket = client.post("/v1/uploads", json={"filename": "a.wav", "size": 20_000}, headers=A)
        assert ticket.status_code == 413


def test_not_audio_is_415_whatever_its_name(client: TestClient) -> None:
    response = submit(client, b"%PDF-1.4 this is a document" * 10, filename="song.mp3")
    assert response.status_code == 415
    error = error_of(response)
    assert error["code"] == "unsupported_media_type"
    assert "WAV, FLAC, MP3" in error["message"]


def test_undecodable_and_empty_audio_are_422(client: TestClient) -> None:
    response = submit(client, b"fLaC" + bytes(range(256)) * 8)
    assert response.status_code == 422
    assert error_of(response)["code"] == "undecodable_audio"

    response = submit(client, b"")
    assert response.status_code == 422
    assert "empty" in error_of(response)["message"]


def test_audio_longer_than_the_limit_is_422(db_url: str, tmp_path: Path) -> None:
    with api_client(api_settings(db_url, tmp_path, max_duration=5)) as (client, _app):
        response = submit(client, m4a_bytes(6.0), filename="long.m4a")
        assert response.status_code == 422
        error = error_of(response)
        assert error["code"] == "audio_too_long"
        assert "limit of 5 s" in error["message"]
        assert submit(client, m4a_bytes(4.0)).status_code == 202


def test_too_many_queued_jobs_is_429_with_retry_after(db_url: str, tmp_path: Path) -> None:
    with api_client(api_settings(db_url, tmp_path, max_queued_per_user=2)) as (client, _app):
        for seconds in (1.0, 1.1):
            assert submit(client, audio_bytes("WAV", seconds)).status_code == 202
        response = submit(client, audio_bytes("WAV", 1.2))
        assert response.status_code == 429
        assert int(response.headers["retry-after"]) > 0
        assert "limit is 2" in error_of(response)["message"]
        # cancelling one frees a place
        first = client.get("/v1/jobs", headers=A).json()["jobs"][0]
        client.post(f"/v1/jobs/{first['id']}/cancel", headers=A)
        assert submit(client, audio_bytes("WAV", 1.2)).status_code == 202


def test_bad_params_and_bodies_are_4xx_with_the_cause(client: TestClient) -> None:
    response = submit(client, audio_bytes(), params={"format": "wav", "bitrate": 128})
    assert response.status_code == 422
    assert "bitrate applies to mp3 and opus" in error_of(response)["message"]

    response = submit(client, audio_bytes(), params={"stems": ["kazoo"]})
    assert "unknown stems" in error_of(response)["message"]

    response = submit(client, audio_bytes(), kind="karaoke")
    assert response.status_code == 422 and "kind" in error_of(response)["message"]

    response = client.post(
        "/v1/jobs", content=b"{not json", headers={**A, "Content-Type": "application/json"}
    )
    assert response.status_code == 400

    response = client.post("/v1/jobs", content=b"x", headers={**A, "Content-Type": "text/plain"})
    assert response.status_code == 415

    response = client.post("/v1/jobs", data={"kind": "separate"}, headers=A)
    assert response.status_code in (415, 422)


def test_idempotency_key_returns_the_same_job(client: TestClient) -> None:
    data = audio_bytes("WAV", 1.0)
    first = submit(client, data, headers={"Idempotency-Key": "order-17"})
    assert first.status_code == 202
    again = submit(client, data, headers={"Idempotency-Key": "order-17"})
    assert again.status_code == 200
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    other = submit(client, audio_bytes("WAV", 1.3), headers={"Idempotency-Key": "order-18"})
    assert other.status_code == 202 and other.json()["id"] != first.json()["id"]


def test_same_bytes_within_the_window_are_deduplicated(client: TestClient) -> None:
    data = audio_bytes("WAV", 1.0)
    first = submit(client, data).json()
    again = submit(client, data, filename="renamed.wav")
    assert again.status_code == 200
    assert again.headers["stemfleet-deduplicated"] == "true"
    assert again.json()["id"] == first["id"]
    # other params are another job
    mp3 = submit(client, data, params={"format": "mp3"})
    assert mp3.status_code == 202 and mp3.json()["id"] != first["id"]
    # a cancelled job is not reused
    client.post(f"/v1/jobs/{first['id']}/cancel", headers=A)
    assert submit(client, data).status_code == 202


def test_jobs_record_the_fleet_model_and_dedup_respects_it(db_url: str, tmp_path: Path) -> None:
    data = audio_bytes("WAV", 1.0)
    with api_client(api_settings(db_url, tmp_path, model="htdemucs")) as (client, _app):
        first = submit(client, data).json()
        assert first["params"]["model"] == "htdemucs"
    # the fleet's default model changed: the same bytes are another job
    with api_client(api_settings(db_url, tmp_path, model="htdemucs_ft")) as (client, _app):
        again = submit(client, data)
        assert again.status_code == 202 and again.json()["id"] != first["id"]
        assert again.json()["params"]["model"] == "htdemucs_ft"


def test_dedup_window_zero_turns_it_off(db_url: str, tmp_path: Path) -> None:
    with api_client(api_settings(db_url, tmp_path, dedup_window=0)) as (client, _app):
        data = audio_bytes("WAV", 1.0)
        ids = {submit(client, data).json()["id"] for _ in range(2)}
        assert len(ids) == 2


def test_list_is_newest_first_with_cursor_pages_and_status_filter(
    client: TestClient, db_url: str
) -> None:
    with connect(db_url) as conn:
        ids = [
            Queue().enqueue(conn, user_id=USER_A, input_key=f"inputs/{USER_A}/k/{i}.wav")[0].id
            for i in range(5)
        ]
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = client.get("/v1/jobs", params=params, headers=A).json()
        seen += [j["id"] for j in page["jobs"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert seen == [str(i) for i in reversed(ids)]

    client.post(f"/v1/jobs/{ids[1]}/cancel", headers=A)
    cancelled = client.get("/v1/jobs", params={"status": "cancelled"}, headers=A).json()
    assert [j["id"] for j in cancelled["jobs"]] == [str(ids[1])]
    both = client.get("/v1/jobs", params=[("status", "cancelled"), ("status", "queued")], headers=A)
    assert len(both.json()["jobs"]) == 5

    bad = client.get("/v1/jobs", params={"cursor": "not-a-cursor"}, headers=A)
    assert bad.status_code == 422 and error_of(bad)["code"] == "invalid_cursor"
    assert client.get("/v1/jobs", params={"status": "done"}, headers=A).status_code == 422


def test_cancel_then_cancel_again_is_409(client: TestClient) -> None:
    job = submit(client, audio_bytes()).json()
    cancelled = client.post(f"/v1/jobs/{job['id']}/cancel", headers=A)
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    again = client.post(f"/v1/jobs/{job['id']}/cancel", headers=A)
    assert again.status_code == 409
    assert "already cancelled" in error_of(again)["message"]


def test_unknown_and_malformed_job_ids(client: TestClient) -> None:
    missing = client.get(f"/v1/jobs/{uuid.uuid4()}", headers=A)
    assert missing.status_code == 404 and error_of(missing)["code"] == "job_not_found"
    assert client.get("/v1/jobs/not-a-uuid", headers=A).status_code == 422
    assert client.post(f"/v1/jobs/{uuid.uuid4()}/cancel", headers=A).status_code == 404
    nowhere = client.get("/v2/nothing")
    assert nowhere.status_code == 404 and "no such endpoint" in error_of(nowhere)["message"]
