"""Logging: our lines and the standard library's (uvicorn, httpx, the psycopg pool) come out in
one format, JSON when STEMFLEET_LOG_JSON is on, each with its `event`."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from app.log import configure, get_logger

# Loggers of libraries: an in-process uvicorn of another test (tests/api_support.py) leaves its
# own handler, level and propagate=False on "uvicorn"; here they start as a process's do.
LIBRARY_LOGGERS = ("uvicorn", "uvicorn.error", "httpx", "psycopg.pool")


@pytest.fixture
def logs(capsys: pytest.CaptureFixture[str]) -> Iterator[pytest.CaptureFixture[str]]:
    saved = []
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        saved.append((logger, logger.level, logger.propagate, logger.handlers[:], logger.disabled))
        logger.setLevel(logging.NOTSET)
        logger.propagate, logger.handlers, logger.disabled = True, [], False
    yield capsys
    for logger, level, propagate, handlers, disabled in saved:
        logger.setLevel(level)
        logger.propagate, logger.handlers, logger.disabled = propagate, handlers, disabled
    configure()  # back to the defaults for the tests that follow


def _lines(capsys: pytest.CaptureFixture[str]) -> list[dict[str, object]]:
    return [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.strip()]


def test_stdlib_records_come_out_as_json_with_an_event(
    logs: pytest.CaptureFixture[str],
) -> None:
    configure("INFO", json=True)
    get_logger(job_id="j1").info("job_claimed", attempt=1)
    logging.getLogger("uvicorn.error").info("Started server process [%d]", 42)
    logging.getLogger("httpx").warning("HTTP Request: %s %s", "GET", "http://x/")
    logging.getLogger("psycopg.pool").debug("below the level: not shown")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("psycopg.pool").exception("error connecting")

    ours, uvicorn, httpx, pool = _lines(logs)
    assert ours["event"] == "job_claimed" and ours["job_id"] == "j1"
    assert uvicorn["event"] == "Started server process [42]"
    assert (uvicorn["logger"], uvicorn["level"]) == ("uvicorn.error", "info")
    assert (httpx["event"], httpx["level"]) == ("HTTP Request: GET http://x/", "warning")
    assert pool["event"] == "error connecting" and "RuntimeError: boom" in str(pool["exception"])
    for line in (ours, uvicorn, httpx, pool):
        assert {"event", "level", "timestamp"} <= line.keys()


def test_reconfiguring_keeps_one_handler_and_its_level(logs: pytest.CaptureFixture[str]) -> None:
    configure("INFO", json=True)
    configure("WARNING", json=True)
    logging.getLogger("httpx").info("not shown")
    logging.getLogger("httpx").warning("shown once")
    assert [line["event"] for line in _lines(logs)] == ["shown once"]


def test_console_format_when_json_is_off(logs: pytest.CaptureFixture[str]) -> None:
    configure("INFO", json=False)
    logging.getLogger("uvicorn.error").info("Started server process [%d]", 42)
    err = logs.readouterr().err
    assert "Started server process [42]" in err and not err.lstrip().startswith("{")
