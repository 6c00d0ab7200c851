"""Server-sent events for one job. The stream subscribes to the process's one broadcaster
(app/api/broadcast.py) first, then reads the job as the user (404 if not theirs), so no change is
missed; an event is sent when status, progress or place in line changed, and the stream ends after
a final status. The response side is sse-starlette (keepalive pings, disconnects, shutdown)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from uuid import UUID

from fastapi.concurrency import run_in_threadpool
from sse_starlette import EventSourceResponse, ServerSentEvent

from app.api.broadcast import BroadcasterUnavailable, JobState, TooManyStreams
from app.api.context import ApiContext
from app.api.errors import ApiError, DatabaseUnavailable
from app.log import get_logger

STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


async def job_event_stream(ctx: ApiContext, user_id: UUID, job_id: UUID) -> EventSourceResponse:
    broadcaster = ctx.broadcaster()
    try:
        subscription = await broadcaster.subscribe(user_id, job_id)
    except TooManyStreams as exc:
        raise ApiError(
            429,
            "too_many_streams",
            f"you already follow {exc.limit} jobs live, this server's limit per user "
            "(STEMFLEET_SSE_MAX_STREAMS_PER_USER); close a stream you no longer watch (or poll "
            "GET /v1/jobs/{id}), then retry",
            headers={"Retry-After": "5"},
        ) from None
    except BroadcasterUnavailable as exc:
        raise DatabaseUnavailable(str(exc)) from None
    try:
        first = await run_in_threadpool(ctx.read_state_as_user, user_id, job_id)
    except BaseException:
        subscription.close()
        raise

    def render(state: JobState, event_id: int) -> ServerSentEvent:
        subscription.last = state
        view = ctx.view(state.job, position=state.position)
        return ServerSentEvent(data=json.dumps(view.model_dump(mode="json")), id=str(event_id))

    async def events() -> AsyncIterator[ServerSentEvent]:
        sent = 1
        try:
            yield render(first, sent)
            if first.job.is_final:
                return
            async for state in subscription.updates():
                last = subscription.last
                # A re-read that began before the stream's own first read can arrive after it:
                # never step back to an older row.
                if last is not None and (
                    state.shown == last.shown or state.job.updated_at < last.job.updated_at
                ):
                    continue
                sent += 1
                yield render(state, sent)
                if state.job.is_final:
                    return
            get_logger(job_id=job_id).info("sse_job_gone")
        finally:
            subscription.close()

    return EventSourceResponse(events(), ping=ctx.settings.sse_keepalive, headers=STREAM_HEADERS)
