"""Server-sent events for one job, driven by the database's NOTIFY on `stemfleet_job_events`
(payload: a job id). Each notification for this job re-reads the row as the user; an event is
sent when status or progress changed, and the stream ends after a final status."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from uuid import UUID

import psycopg
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from psycopg import sql

from app.api.context import ApiContext
from app.api.views import job_view
from app.errors import JobNotFound
from app.log import get_logger
from app.queue import EVENTS_CHANNEL, Job

STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def format_event(data: str, event_id: int) -> bytes:
    return f"id: {event_id}\ndata: {data}\n\n".encode()


async def job_event_stream(ctx: ApiContext, user_id: UUID, job_id: UUID) -> StreamingResponse:
    """LISTEN first, then read the job (404 if not the user's), so no change is missed."""

    def read() -> Job:
        with ctx.user_connection(user_id) as conn:
            return ctx.queue.get(conn, job_id)

    listener = await psycopg.AsyncConnection.connect(
        ctx.database_url, autocommit=True, application_name="stemfleet-api-sse"
    )
    try:
        await listener.execute(sql.SQL("listen {}").format(sql.Identifier(EVENTS_CHANNEL)))
        job = await run_in_threadpool(read)
    except BaseException:
        await listener.close()
        raise

    def render(job: Job, event_id: int) -> bytes:
        view = job_view(job, ctx.storage, expires=ctx.settings.presign_expires)
        return format_event(json.dumps(view.model_dump(mode="json")), event_id)

    async def events() -> AsyncIterator[bytes]:
        log = get_logger(job_id=job_id)
        keepalive = ctx.settings.sse_keepalive
        current = job
        sent = 1
        last_write = time.monotonic()
        try:
            yield render(current, sent)
            while not current.is_final:
                mine = False
                async for note in listener.notifies(timeout=keepalive, stop_after=1):
                    mine = note.payload == str(job_id)
                idle = time.monotonic() - last_write >= keepalive
                if idle:
                    yield b": keepalive\n\n"
                    last_write = time.monotonic()
                if not mine and not idle:
                    continue
                # Re-read on our notification, and on every idle period as a safety net.
                try:
                    latest = await run_in_threadpool(read)
                except JobNotFound:
                    log.info("sse_job_gone")
                    return
                if (latest.status, latest.progress) != (current.status, current.progress):
                    sent += 1
                    current = latest
                    yield render(current, sent)
                    last_write = time.monotonic()
        finally:
            await listener.close()

    return StreamingResponse(events(), media_type="text/event-stream", headers=STREAM_HEADERS)
