"""`stemfleet api` and `uvicorn app.api.main:app` as real processes: they serve, and dev auth
prints the local token to use."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.pgserver import free_port
from tests.api_support import as_url

pytestmark = pytest.mark.slow


def _env(db_url: str, tmp_path: Path, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STEMFLEET_")}
    env.update(
        {
            "STEMFLEET_DATABASE_URL": as_url(db_url),
            "STEMFLEET_DATA_DIR": str(tmp_path / "data"),
            "STEMFLEET_API_PORT": str(port),
            "STEMFLEET_DEV_AUTH": "true",
            "STEMFLEET_LOG_LEVEL": "WARNING",
        }
    )
    return env


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_healthy(base: str, proc: subprocess.Popen[str], timeout: float = 60) -> None:
    gate = threading.Event()
    deadline = threading.Timer(timeout, gate.set)
    deadline.start()
    try:
        while not gate.is_set():
            assert proc.poll() is None, "the server exited early"
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                gate.wait(0.1)
        raise AssertionError(f"{base} did not answer within {timeout}s")
    finally:
        deadline.cancel()


def test_stemfleet_api_prints_the_dev_token_and_serves(
    db_url: str, tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "api"],
        env=_env(db_url, tmp_path, port),
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    processes.append(proc)
    assert proc.stderr is not None
    token = None
    for line in proc.stderr:
        if "Authorization: Bearer " in line:
            token = line.split("Bearer ", 1)[1].split("`", 1)[0]
            break
    assert token and (tmp_path / "data" / "dev-token").read_text() == token
    base = f"http://127.0.0.1:{port}"
    _wait_healthy(base, proc)
    mine = httpx.get(f"{base}/v1/jobs", headers={"Authorization": f"Bearer {token}"})
    assert mine.status_code == 200 and mine.json() == {"jobs": [], "next_cursor": None}
    assert httpx.get(f"{base}/v1/jobs").status_code == 401
    assert httpx.get(f"{base}/docs").status_code == 200
    assert "/v1/jobs" in httpx.get(f"{base}/openapi.json").json()["paths"]


def test_uvicorns_own_lines_come_out_as_json_lines(
    db_url: str, tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    port = free_port()
    env = {**_env(db_url, tmp_path, port), "STEMFLEET_LOG_LEVEL": "INFO", "STEMFLEET_LOG_JSON": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "api"],
        env=env,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    processes.append(proc)
    assert proc.stderr is not None
    logged = []
    for line in proc.stderr:  # ends if the server exits
        if line.startswith("{"):
            logged.append(json.loads(line))
        if "Uvicorn running on" in line:
            break
    running = [entry for entry in logged if "Uvicorn running on" in str(entry["event"])]
    assert running, f"uvicorn's startup line is not a JSON line with an event: {logged}"
    assert running[0]["logger"] == "uvicorn.error" and running[0]["level"] == "info"


def test_uvicorn_serves_the_module_level_app(
    db_url: str, tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "app.api.main:app", "--port", str(port)],
        env=_env(db_url, tmp_path, port),
        stderr=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    processes.append(proc)
    base = f"http://127.0.0.1:{port}"
    _wait_healthy(base, proc)
    assert httpx.get(f"{base}/readyz").json()["status"] == "ready"


def test_the_api_imports_neither_torch_nor_the_worker() -> None:
    """Nor the worker's decoders (the `worker` extra): the API reads audio headers with mutagen."""
    probe = (
        "import sys, app.api.main, app.api.cli\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'demucs', 'worker', 'scaler', 'av', 'soundfile'))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", probe], check=True, timeout=120)
