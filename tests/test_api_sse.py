"""Live status over server-sent events through a real HTTP server (uvicorn on loopback): every
stream of the process shares one LISTEN connection, each user holds a bounded number of streams,
a dropped LISTEN connection is replaced without losing a change, and the stream shows the job's
place in line."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx

from app.api.main import create_app
from app.db import connect
from app.queue import Job, Queue
from app.storage import input_key
from tests.api_support import USER_A, USER_B, api_settings, bearer, served

A = bearer(USER_A)
STREAMS = 30
API_BACKENDS = """
select count(*)::integer as n from pg_stat_activity
 where datname = current_database() and application_name like 'stemfleet-api%%'
"""


def enqueue(db_url: str, name: str = "song.wav") -> Job:
    with connect(db_url) as conn:
        job, _ = Queue().enqueue(conn, user_id=USER_A, input_key=input_key(USER_A, name))
    return job


def cancel(db_url: str, job_id: UUID) -> None:
    with connect(db_url) as conn:
        Queue().cancel(conn, job_id, reason="test")


def api_backends(db_url: str) -> int:
    with connect(db_url) as conn:
        row = conn.execute(API_BACKENDS).fetchone()
    assert row is not None
    return int(row["n"])


async def events(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    assert response.status_code == 200, await response.aread()
    async for line in response.aiter_lines():
        if line.startswith("data: "):
            yield json.loads(line.removeprefix("data: "))


def test_many_streams_hold_one_listen_connection_not_one_each(db_url: str, tmp_path: Path) -> None:
    settings = api_settings(db_url, tmp_path, sse_max_streams_per_user=STREAMS)
    job = enqueue(db_url)

    async def scenario(url: str) -> tuple[list[str], int, list[str]]:
        async with (
            httpx.AsyncClient(base_url=url, headers=A, timeout=30) as client,
            AsyncExitStack() as stack,
        ):
            readers = []
            for _ in range(STREAMS):
                response = await stack.enter_async_context(
                    client.stream("GET", f"/v1/jobs/{job.id}/events")
                )
                readers.append(events(response))
            first = [(await anext(r))["status"] for r in readers]
            held = api_backends(db_url)
            cancel(db_url, job.id)
            last = [(await anext(r))["status"] for r in readers]
            return first, held, last

    with served(create_app(settings)) as url:
        first, held, last = asyncio.run(scenario(url))
    assert first == ["queued"] * STREAMS
    # the pool (db_pool_max) plus the one LISTEN connection, whatever the number of streams
    assert held <= settings.db_pool_max + 1, f"{STREAMS} streams held {held} connections"
    assert last == ["cancelled"] * STREAMS


def test_streams_per_user_are_capped_with_a_429(db_url: str, tmp_path: Path) -> None:
    settings = api_settings(db_url, tmp_path, sse_max_streams_per_user=2)
    job = enqueue(db_url)

    async def scenario(url: str) -> tuple[httpx.Response, int]:
        async with (
            httpx.AsyncClient(base_url=url, timeout=30) as client,
            AsyncExitStack() as stack,
        ):
            readers = []
            for _ in range(2):
                response = await stack.enter_async_context(
                    client.stream("GET", f"/v1/jobs/{job.id}/events", headers=A)
                )
                readers.append(events(response))
                await anext(readers[-1])
            # (a bounded read: without the cap this third stream would simply stay open)
            refused = await client.get(f"/v1/jobs/{job.id}/events", headers=A, timeout=10)
            # another user is not refused for A's streams (the job is not theirs: 404)
            other = await client.get(f"/v1/jobs/{job.id}/events", headers=bearer(USER_B))
            return refused, other.status_code

    with served(create_app(settings)) as url:
        refused, other = asyncio.run(scenario(url))
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert error["code"] == "too_many_streams"
    assert "2" in error["message"] and "STEMFLEET_SSE_MAX_STREAMS_PER_USER" in error["message"]
    assert refused.headers["retry-after"]
    assert other == 404


def test_a_dropped_listen_connection_is_replaced_and_no_change_is_lost(
    db_url: str, tmp_path: Path
) -> None:
    settings = api_settings(db_url, tmp_path)
    job = enqueue(db_url)

    async def scenario(url: str) -> list[str]:
        async with (
            httpx.AsyncClient(base_url=url, headers=A, timeout=30) as client,
            client.stream("GET", f"/v1/jobs/{job.id}/events") as response,
        ):
            reader = events(response)
            seen = [(await anext(reader))["status"]]
            with connect(db_url) as conn:  # as a Postgres restart would, to every API backend
                conn.execute(
                    "select pg_terminate_backend(pid) from pg_stat_activity"
                    " where datname = current_database() and application_name like 'stemfleet-api%'"
                )
            cancel(db_url, job.id)  # while the listener is away
            seen += [event["status"] async for event in reader]
            return seen

    with served(create_app(settings)) as url:
        assert asyncio.run(scenario(url)) == ["queued", "cancelled"]


def test_the_stream_shows_the_place_in_line_as_it_moves(db_url: str, tmp_path: Path) -> None:
    settings = api_settings(db_url, tmp_path)
    ahead = enqueue(db_url, "first.wav")
    job = enqueue(db_url, "second.wav")

    async def scenario(url: str) -> list[tuple[str, int | None]]:
        async with (
            httpx.AsyncClient(base_url=url, headers=A, timeout=30) as client,
            client.stream("GET", f"/v1/jobs/{job.id}/events") as response,
        ):
            reader = events(response)
            seen = [await anext(reader)]
            cancel(db_url, ahead.id)
            seen.append(await anext(reader))
            cancel(db_url, job.id)
            seen.append(await anext(reader))
            return [(e["status"], e["queue_position"]) for e in seen]

    with served(create_app(settings)) as url:
        assert asyncio.run(scenario(url)) == [("queued", 2), ("queued", 1), ("cancelled", None)]
