"""Request bodies are bounded before they are parsed, through a real HTTP server: a JSON body by
size (413) and nesting depth (422), the multipart `params` field likewise, and an upload sent
without a Content-Length (chunked) is cut off at the limit with a 413 that states that limit."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.api.limits import json_depth
from app.api.main import create_app
from tests.api_support import USER_A, api_settings, audio_bytes, bearer, served

A = bearer(USER_A)
DEEP = "[" * 1000 + "]" * 1000  # 2 KB


@pytest.fixture
def api(db_url: str, tmp_path: Path) -> Iterator[httpx.Client]:
    settings = api_settings(db_url, tmp_path, max_json_kb=16, max_upload_mb=1)
    with served(create_app(settings)) as url, httpx.Client(base_url=url, timeout=60) as client:
        yield client


def error_of(response: httpx.Response) -> dict[str, Any]:
    error: dict[str, Any] = response.json()["error"]
    return error


def chunks(total: int, size: int = 64 * 1024) -> Iterator[bytes]:
    sent = 0
    while sent < total:
        yield b" " * min(size, total - sent)
        sent += size


def test_json_depth_ignores_brackets_in_strings() -> None:
    assert json_depth(b'{"a": [1, {"b": "[[[{{{"}]}') == 3
    assert json_depth(b'"\\"[["') == 0
    assert json_depth(DEEP.encode()) == 1000


def test_a_json_body_over_the_limit_is_413_before_it_is_read(api: httpx.Client) -> None:
    big = json.dumps({"input_key": "x" * 20_000})
    response = api.post("/v1/jobs", content=big, headers={**A, "Content-Type": "application/json"})
    assert response.status_code == 413
    assert "16 KB" in error_of(response)["message"]
    assert "STEMFLEET_MAX_JSON_KB" in error_of(response)["message"]
    # without a Content-Length: counted as it streams
    streamed = api.post(
        "/v1/jobs",
        content=chunks(10 * 1024 * 1024),
        headers={**A, "Content-Type": "application/json"},
    )
    assert streamed.status_code == 413 and "16 KB" in error_of(streamed)["message"]


@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/uploads"])
def test_deeply_nested_json_is_422_not_a_500(api: httpx.Client, path: str) -> None:
    body = '{"params": ' + DEEP + "}"
    response = api.post(path, content=body, headers={**A, "Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    error = error_of(response)
    assert error["code"] == "json_too_deep" and "STEMFLEET_MAX_JSON_DEPTH" in error["message"]


def test_deeply_nested_multipart_params_are_422_not_a_500(api: httpx.Client) -> None:
    response = api.post(
        "/v1/jobs",
        files={"file": ("song.wav", audio_bytes(), "audio/wav")},
        data={"params": DEEP},
        headers=A,
    )
    assert response.status_code == 422, response.text
    assert error_of(response)["code"] == "json_too_deep"


def test_a_chunked_upload_over_the_limit_is_413_stating_the_limit(api: httpx.Client) -> None:
    boundary = "sf-boundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
        "Content-Type: audio/wav\r\n\r\n"
    ).encode()

    def body() -> Iterator[bytes]:
        yield head
        yield from chunks(3 * 1024 * 1024)
        yield f"\r\n--{boundary}--\r\n".encode()

    response = api.post(
        "/v1/jobs",
        content=body(),
        headers={**A, "Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert response.status_code == 413
    message = error_of(response)["message"]
    assert "limit of 1 MB" in message and "STEMFLEET_MAX_UPLOAD_MB" in message
