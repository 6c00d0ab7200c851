"""/v1/files/{key}: the served side of LocalStorage's signed URLs (the embedded default).
With S3 storage, presigned URLs point at the S3 endpoint and nothing is served here."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from pydantic import BaseModel

from app.api.deps import Ctx, errors
from app.api.errors import ApiError
from app.api.intake import write_stream
from app.errors import StorageKeyError
from app.storage import LocalStorage, validate_key

router = APIRouter(prefix="/v1/files", tags=["files"])

Expires = Annotated[int, Query(ge=0, le=2**62, description="unix time the URL expires")]
Signature = Annotated[str, Query(pattern="^[0-9a-fA-F]{1,128}$", description="hex HMAC")]


class Stored(BaseModel):
    key: str
    size: int


def _local(ctx: Ctx, method: str, key: str, expires: int, signature: str) -> LocalStorage:
    storage = ctx.storage
    if not isinstance(storage, LocalStorage):
        raise ApiError(404, "not_found", "files are served by the S3 endpoint, not by this API")
    try:
        validate_key(key)
    except StorageKeyError as exc:
        raise ApiError(404, "not_found", str(exc)) from None
    if not storage.verify(method, key, expires, signature, time.time()):
        raise ApiError(
            403,
            "invalid_signature",
            "this link is expired or its signature does not match; ask the API for a new URL",
        )
    return storage


@router.get(
    "/{key:path}",
    response_class=FileResponse,
    summary="Download a file by signed URL",
    responses=errors(403, 404, 422, extra={200: {"content": {"application/octet-stream": {}}}}),
)
def get_file(ctx: Ctx, key: str, expires: Expires, signature: Signature) -> FileResponse:
    storage = _local(ctx, "GET", key, expires, signature)
    path = storage.path(key)
    if not path.is_file():
        raise ApiError(404, "not_found", f"no file at {key!r}")
    return FileResponse(path, filename=path.name)


@router.put(
    "/{key:path}",
    response_model=Stored,
    summary="Upload a file by signed URL",
    responses=errors(400, 403, 404, 413, 422),
)
async def put_file(
    ctx: Ctx, request: Request, key: str, expires: Expires, signature: Signature
) -> Stored:
    storage = _local(ctx, "PUT", key, expires, signature)
    with tempfile.TemporaryDirectory(prefix="stemfleet-put-") as tmp:
        part = Path(tmp) / "body"  # the body's size is bounded as it streams (app/api/limits.py)
        size = await write_stream(request.stream(), part, ctx.max_upload_bytes)
        await run_in_threadpool(storage.put_file, key, part)
    return Stored(key=key, size=size)
