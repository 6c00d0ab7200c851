"""POST /v1/uploads: a presigned PUT URL for big files, which then go straight to storage."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter
from pydantic import BaseModel, Field

from app.api.deps import Ctx, User, errors
from app.api.errors import ApiError
from app.api.intake import too_large
from app.params import matching
from app.storage import input_key

router = APIRouter(prefix="/v1/uploads", tags=["uploads"])

_CONTENT_TYPE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,63}/[A-Za-z0-9!#$&^_.+-]{1,64}$")
ContentType = Annotated[str, matching(_CONTENT_TYPE, "content_type must look like audio/mpeg")]


class UploadRequest(BaseModel):
    filename: str = Field(min_length=1, max_length=255, description="the file's name (kept)")
    content_type: ContentType | None = Field(
        None, description="if given, the PUT must send this Content-Type header"
    )
    size: int | None = Field(None, ge=0, description="bytes; checked against the upload limit")


class UploadTicket(BaseModel):
    input_key: str = Field(description="pass as input_key to POST /v1/jobs after the PUT")
    upload_url: str
    method: str = "PUT"
    headers: dict[str, str] = Field(description="headers the PUT must carry")
    expires_in: float = Field(description="seconds the upload_url stays valid")
    max_bytes: int


@router.post(
    "",
    response_model=UploadTicket,
    status_code=201,
    summary="Get a presigned URL to PUT a big file to",
    responses=errors(400, 401, 413, 422),
)
def create_upload(ctx: Ctx, user: User, body: UploadRequest) -> UploadTicket:
    if body.size is not None and body.size > ctx.max_upload_bytes:
        raise too_large(ctx.max_upload_bytes)
    try:
        key = input_key(user, body.filename)
    except ValueError as exc:
        raise ApiError(422, "invalid_filename", str(exc)) from None
    expires = ctx.settings.presign_expires
    url = ctx.storage.presign_put(key, expires, content_type=body.content_type)
    headers = {"Content-Type": body.content_type} if body.content_type else {}
    return UploadTicket(
        input_key=key,
        upload_url=url,
        headers=headers,
        expires_in=expires,
        max_bytes=ctx.max_upload_bytes,
    )
