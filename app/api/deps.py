"""FastAPI dependencies: the app's context and who the caller is."""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

from fastapi import Depends, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.api.context import ApiContext
from app.api.errors import ErrorResponse

bearer = HTTPBearer(
    auto_error=False,
    description="A Supabase access token (JWT), the local dev token, or (admin) the service token",
)
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


def get_ctx(request: Request) -> ApiContext:
    ctx: ApiContext = request.app.state.ctx
    return ctx


Ctx = Annotated[ApiContext, Depends(get_ctx)]


def current_user(ctx: Ctx, credentials: Credentials) -> UUID:
    return ctx.auth.user(credentials.credentials if credentials else None)


def current_user_or_query_token(
    ctx: Ctx,
    credentials: Credentials,
    access_token: Annotated[
        str | None,
        Query(
            max_length=8192,
            description="the bearer token, for clients that cannot set headers (EventSource)",
        ),
    ] = None,
) -> UUID:
    token = credentials.credentials if credentials else access_token
    return ctx.auth.user(token)


def require_admin(ctx: Ctx, credentials: Credentials) -> None:
    ctx.auth.admin(credentials.credentials if credentials else None)


User = Annotated[UUID, Depends(current_user)]
StreamUser = Annotated[UUID, Depends(current_user_or_query_token)]


def errors(
    *codes: int, extra: dict[int | str, dict[str, Any]] | None = None
) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error answers an endpoint can give (plus `extra` entries)."""
    text = {
        400: "Malformed request",
        401: "Missing or invalid credentials",
        403: "Not allowed",
        404: "Not found (or not yours)",
        409: "Conflict with the job's state",
        413: "File too large",
        415: "Not a supported audio type",
        422: "Invalid input",
        429: "Too many queued jobs (or, on an event stream, too many open streams)",
        503: "A dependency (database, storage, key server) is unavailable",
        504: "Timed out",
    }
    entries: dict[int | str, dict[str, Any]] = dict(extra or {})
    for code in codes:
        entries[code] = {"model": ErrorResponse, "description": text.get(code, "Error")}
    return entries
