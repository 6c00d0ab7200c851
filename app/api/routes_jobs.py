"""/v1/jobs: submit, read, list, cancel, and follow a job."""

from __future__ import annotations

from typing import Annotated, Any, Literal
from uuid import UUID

from fastapi import APIRouter, Header, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from sse_starlette import EventSourceResponse
from starlette.datastructures import UploadFile

from app.api.deps import Ctx, StreamUser, User, errors
from app.api.errors import ApiError, validation_message
from app.api.limits import load_json, max_json_bytes
from app.api.sse import job_event_stream
from app.api.submit import JobCreate, JobSpec, Submitted, Submitter, Upload
from app.api.views import BadCursor, JobList, JobOut, decode_cursor, encode_cursor
from app.settings import Settings

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

StatusFilter = Literal["queued", "running", "succeeded", "failed", "cancelled"]


def _inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """A pydantic JSON schema with its $defs inlined, to embed in an OpenAPI requestBody."""
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return walk(defs[ref.removeprefix("#/$defs/")])
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    inlined: dict[str, Any] = walk(schema)
    return inlined


_SPEC_SCHEMA = _inline_refs(JobSpec.model_json_schema())
_CREATE_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "Either JSON naming an uploaded input_key (see POST /v1/uploads), or a "
        "multipart form carrying the file itself.",
        "content": {
            "application/json": {"schema": _inline_refs(JobCreate.model_json_schema())},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "kind": _SPEC_SCHEMA["properties"]["kind"],
                        "params": {
                            "type": "string",
                            "description": "JobParams as a JSON object, e.g. "
                            '{"format": "mp3", "stems": ["vocals"]}',
                        },
                        "callback_url": {"type": "string", "maxLength": 2048},
                    },
                }
            },
        },
    }
}


def _invalid(exc: ValidationError) -> ApiError:
    return ApiError(422, "invalid_request", validation_message(list(exc.errors())))


async def _parse_json(request: Request, settings: Settings) -> JobCreate:
    data = load_json(await request.body(), settings)
    try:
        return JobCreate.model_validate(data)
    except ValidationError as exc:
        raise _invalid(exc) from None


async def _parse_form(request: Request, settings: Settings) -> tuple[JobSpec, UploadFile]:
    """The body's size was bounded before it streamed in (app/api/limits.py)."""
    form = await request.form(max_files=1, max_fields=10, max_part_size=max_json_bytes(settings))
    file = form.get("file")
    if not isinstance(file, UploadFile):
        raise ApiError(
            422, "invalid_request", "the multipart form needs the audio file in a field named file"
        )
    fields: dict[str, Any] = {}
    for name in ("kind", "callback_url"):
        value = form.get(name)
        if isinstance(value, str) and value != "":
            fields[name] = value
    raw_params = form.get("params")
    if isinstance(raw_params, str) and raw_params.strip():
        try:
            fields["params"] = load_json(raw_params, settings)
        except ApiError as exc:
            if exc.status != 400:
                raise
            raise ApiError(
                422, "invalid_request", 'params must be a JSON object, e.g. {"format": "mp3"}'
            ) from None
    try:
        return JobSpec.model_validate(fields), file
    except ValidationError as exc:
        raise _invalid(exc) from None


def _answer(submitted: Submitted) -> JSONResponse:
    headers = {"Location": f"/v1/jobs/{submitted.job.id}"}
    if submitted.replayed:
        headers["Idempotent-Replayed"] = "true"
    if submitted.deduplicated:
        headers["Stemfleet-Deduplicated"] = "true"
    return JSONResponse(
        submitted.job.model_dump(mode="json"),
        status_code=202 if submitted.created else 200,
        headers=headers,
    )


@router.post(
    "",
    status_code=202,
    response_model=JobOut,
    summary="Submit a job",
    description="Answers 202 with the new job; 200 with the existing job when the same request "
    "came with this Idempotency-Key before (409 if the key came with another file, input_key, "
    "kind, params or callback_url), or when the same audio with the same kind and params was "
    "submitted within the deduplication window (`reused_from` then names that job).",
    openapi_extra=_CREATE_OPENAPI,
    responses=errors(
        400,
        401,
        409,
        413,
        415,
        422,
        429,
        extra={200: {"model": JobOut, "description": "An existing job"}},
    ),
)
async def create_job(
    request: Request,
    ctx: Ctx,
    user: User,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            min_length=1,
            max_length=255,
            description="the same key returns the same job (per user)",
        ),
    ] = None,
) -> JSONResponse:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    submitter = Submitter(ctx)
    if content_type == "application/json":
        spec = await _parse_json(request, ctx.settings)
        submitted = await run_in_threadpool(
            submitter.submit, user, spec, spec.input_key, idempotency_key
        )
    elif content_type == "multipart/form-data":
        form_spec, file = await _parse_form(request, ctx.settings)
        try:
            upload = Upload(file=file.file, filename=file.filename or "")
            submitted = await run_in_threadpool(
                submitter.submit, user, form_spec, upload, idempotency_key
            )
        finally:
            await file.close()
    else:
        raise ApiError(
            415,
            "unsupported_media_type",
            "send application/json with an input_key, or multipart/form-data with the file",
        )
    return _answer(submitted)


@router.get(
    "",
    response_model=JobList,
    summary="List my jobs, newest first",
    responses=errors(401, 422),
)
def list_jobs(
    ctx: Ctx,
    user: User,
    status: Annotated[list[StatusFilter] | None, Query(description="only these statuses")] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> JobList:
    try:
        before = decode_cursor(cursor) if cursor else None
    except BadCursor as exc:
        raise ApiError(422, "invalid_cursor", str(exc)) from None
    with ctx.user_connection(user) as conn:
        jobs = ctx.queue.list_mine(
            conn, limit=limit + 1, statuses=list(status) if status else None, before=before
        )
    page = jobs[:limit]
    return JobList(
        jobs=ctx.views(page),
        next_cursor=encode_cursor(page[-1]) if len(jobs) > limit else None,
    )


@router.get(
    "/{job_id}",
    response_model=JobOut,
    summary="A job: status, progress, queue position, timings, error, stem URLs",
    responses=errors(401, 404, 422),
)
def get_job(ctx: Ctx, user: User, job_id: UUID) -> JobOut:
    with ctx.user_connection(user) as conn:
        job = ctx.queue.get(conn, job_id)
    return ctx.views([job])[0]


@router.post(
    "/{job_id}/cancel",
    response_model=JobOut,
    summary="Cancel a queued or running job",
    responses=errors(401, 404, 409, 422),
)
def cancel_job(ctx: Ctx, user: User, job_id: UUID) -> JobOut:
    with ctx.user_connection(user) as conn:
        job = ctx.queue.cancel_as_user(conn, job_id)
    return ctx.view(job)


@router.get(
    "/{job_id}/events",
    summary="Server-sent events: the job on every status or progress change",
    description="Each event's data is the job (as GET /v1/jobs/{id}); the stream ends after a "
    "final status (succeeded, failed, cancelled). EventSource clients may pass the token as "
    "?access_token=.",
    response_class=EventSourceResponse,
    responses=errors(401, 404, 422, 429, extra={200: {"content": {"text/event-stream": {}}}}),
)
async def job_events(ctx: Ctx, user: StreamUser, job_id: UUID) -> EventSourceResponse:
    return await job_event_stream(ctx, user, job_id)
