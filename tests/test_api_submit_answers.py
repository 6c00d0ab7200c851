"""What a submit answer tells the user: a reused Idempotency-Key with another request is a 409,
a deduplicated submit names the job whose stems are reused, and queue_position has one meaning
(jobs due to run, in claim order) in the submit answer, GET and the list."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from app.db import connect
from tests.api_support import USER_A, api_client, api_settings, audio_bytes, bearer
from tests.test_api_jobs import error_of, submit

A = bearer(USER_A)


@pytest.fixture
def client(db_url: str, tmp_path: Path) -> Any:
    with api_client(api_settings(db_url, tmp_path)) as (client, _app):
        yield client


def test_an_idempotency_key_reused_with_another_file_or_params_is_409(
    client: TestClient,
) -> None:
    data = audio_bytes("WAV", 1.0)
    key = {"Idempotency-Key": "order-42"}
    first = submit(client, data, headers=key, params={"format": "mp3"})
    assert first.status_code == 202

    other_file = submit(client, audio_bytes("WAV", 1.3), headers=key, params={"format": "mp3"})
    assert other_file.status_code == 409
    error = error_of(other_file)
    assert error["code"] == "idempotency_key_reused"
    assert "order-42" in error["message"] and "file" in error["message"]
    assert str(first.json()["id"]) in error["message"]

    other_params = submit(client, data, headers=key, params={"format": "flac"})
    assert other_params.status_code == 409
    assert "params" in error_of(other_params)["message"]

    other_kind = submit(client, data, headers=key, params={"format": "mp3"}, kind="preview")
    assert other_kind.status_code == 409 and "kind" in error_of(other_kind)["message"]

    same = submit(client, data, headers=key, params={"format": "mp3"}, filename="renamed.wav")
    assert same.status_code == 200 and same.json()["id"] == first.json()["id"]
    assert same.headers["idempotent-replayed"] == "true"


def test_an_idempotency_key_reused_with_another_input_key_is_409(client: TestClient) -> None:
    keys = []
    for seconds in (1.0, 1.2):
        ticket = client.post("/v1/uploads", json={"filename": "song.wav"}, headers=A).json()
        path = httpx.URL(ticket["upload_url"]).raw_path.decode()
        assert client.put(path, content=audio_bytes("WAV", seconds)).status_code == 200
        keys.append(ticket["input_key"])
    header = {**A, "Idempotency-Key": "k-1"}
    first = client.post("/v1/jobs", json={"input_key": keys[0]}, headers=header)
    assert first.status_code == 202, first.text
    again = client.post("/v1/jobs", json={"input_key": keys[0]}, headers=header)
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    other = client.post("/v1/jobs", json={"input_key": keys[1]}, headers=header)
    assert other.status_code == 409 and "input_key" in error_of(other)["message"]


def test_a_deduplicated_submit_names_the_job_whose_stems_are_reused(client: TestClient) -> None:
    data = audio_bytes("WAV", 1.0)
    first = submit(client, data)
    assert first.status_code == 202 and first.json()["reused_from"] is None
    again = submit(client, data, filename="renamed.wav")
    assert again.status_code == 200
    assert again.json()["reused_from"] == first.json()["id"]
    # reading the job later is not a reuse
    got = client.get(f"/v1/jobs/{first.json()['id']}", headers=A).json()
    assert got["reused_from"] is None


def test_queue_position_is_one_number_everywhere_and_counts_only_due_jobs(
    client: TestClient, db_url: str
) -> None:
    waiting = submit(client, audio_bytes("WAV", 1.0)).json()
    assert waiting["queue_position"] == 1  # in the submit answer too
    # `waiting` is retried later (a backoff): it is not in line until then
    with connect(db_url) as conn:
        conn.execute(
            "update public.jobs set run_after = now() + interval '1 hour' where id = %s",
            (uuid.UUID(waiting["id"]),),
        )
    due = submit(client, audio_bytes("WAV", 1.1)).json()
    assert due["queue_position"] == 1

    def position(job: dict[str, Any]) -> Any:
        return client.get(f"/v1/jobs/{job['id']}", headers=A).json()["queue_position"]

    assert (position(waiting), position(due)) == (None, 1)
    listed = {
        j["id"]: j["queue_position"] for j in client.get("/v1/jobs", headers=A).json()["jobs"]
    }
    assert listed == {waiting["id"]: None, due["id"]: 1}
