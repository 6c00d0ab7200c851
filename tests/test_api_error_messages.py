"""Errors tell the user what to do, not how the server is laid out: no API temp paths, no bucket
name, no storage endpoint in a message; a storage that answers 500 is "answered with an error",
not "unreachable"; the internals stay in the logs."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.pgserver import free_port
from app.storage import S3Storage
from tests.api_support import USER_A, api_client, api_settings, audio_bytes, bearer

A = bearer(USER_A)
BUCKET = "secret-bucket-name"


class FailingS3(BaseHTTPRequestHandler):
    """An S3 endpoint that answers every request with a 500 InternalError (S3's XML error)."""

    def _fail(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        body = (
            b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>InternalError</Code>'
            b"<Message>We encountered an internal error.</Message></Error>"
        )
        self.send_response(500)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _fail

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def failing_s3() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FailingS3)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def s3(endpoint: str) -> S3Storage:
    return S3Storage(
        bucket=BUCKET,
        endpoint_url=endpoint,
        region="us-east-1",
        access_key_id="test",
        secret_access_key="test",
    )


def submit(client: TestClient) -> Any:
    return client.post(
        "/v1/jobs", files={"file": ("song.wav", audio_bytes(), "audio/wav")}, headers=A
    )


def assert_no_internals(message: str, *internals: str) -> None:
    for internal in ("/tmp", "stemfleet-api-", BUCKET, "127.0.0.1", *internals):
        assert internal not in message, f"{internal!r} shown to the user: {message}"


def test_a_storage_that_answers_500_is_not_called_unreachable(
    db_url: str, tmp_path: Path, failing_s3: str
) -> None:
    with api_client(api_settings(db_url, tmp_path), storage=s3(failing_s3)) as (client, _app):
        response = submit(client)
    assert response.status_code == 502, response.text
    error = response.json()["error"]
    assert error["code"] == "storage_error"
    assert "answered with an error" in error["message"] and "500" in error["message"]
    assert "unreachable" not in error["message"]
    assert_no_internals(error["message"], failing_s3)


def test_a_storage_that_cannot_be_reached_says_so_without_its_endpoint(
    db_url: str, tmp_path: Path
) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    with api_client(api_settings(db_url, tmp_path), storage=s3(closed)) as (client, _app):
        response = submit(client)
    assert response.status_code == 503, response.text
    error = response.json()["error"]
    assert error["code"] == "storage_unavailable" and "could not be reached" in error["message"]
    assert_no_internals(error["message"], closed)


def test_undecodable_audio_names_no_temp_path(db_url: str, tmp_path: Path) -> None:
    broken = audio_bytes()[:44] + b"\xff" * 10  # a WAV header over garbage
    broken = broken[:4] + b"\xff\xff\xff\xff" + broken[8:20] + b"\x00\x00" + broken[22:]
    with api_client(api_settings(db_url, tmp_path)) as (client, _app):
        response = client.post(
            "/v1/jobs", files={"file": ("song.wav", broken, "audio/wav")}, headers=A
        )
    assert response.status_code == 422, response.text
    assert_no_internals(response.json()["error"]["message"])


def test_a_missing_local_file_names_no_server_folder(db_url: str, tmp_path: Path) -> None:
    settings = api_settings(db_url, tmp_path)
    with api_client(settings) as (client, app):
        url = app.state.ctx.storage.presign_get(f"outputs/{USER_A}/gone.wav", 60)
        response = client.get(url.removeprefix(app.state.ctx.storage.base_url))
    assert response.status_code == 404, response.text
    assert_no_internals(response.json()["error"]["message"], str(settings.data_dir))
