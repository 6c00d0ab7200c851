"""One JSON error shape for every answer that is not a success:
`{"error": {"code": "...", "message": "...", "details": ...}}`, with a message a caller can act on.
"""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass
from typing import Any

import psycopg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from psycopg_pool import PoolTimeout
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.api.auth import AuthError, AuthUnavailable, Forbidden
from app.errors import InvalidTransition, JobNotFound, ModelNotServed, StorageError
from app.log import get_logger
from app.storage import StorageUnreachable


class ErrorBody(BaseModel):
    code: str
    message: str
    details: Any = None


class ErrorResponse(BaseModel):
    error: ErrorBody


@dataclass(eq=False, repr=False)  # repr: Exception's, of the message
class ApiError(Exception):
    """An answer other than success, raised anywhere below an endpoint: `error_response` of it."""

    status: int
    code: str
    message: str
    _: KW_ONLY
    headers: dict[str, str] | None = None
    details: Any = None

    def __post_init__(self) -> None:
        super().__init__(self.message)


class DatabaseUnavailable(Exception):
    """The database could not be reached (HTTP 503)."""


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "too_many_requests",
}


def error_response(
    status: int,
    code: str,
    message: str,
    *,
    headers: dict[str, str] | None = None,
    details: Any = None,
) -> JSONResponse:
    body: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        body["details"] = details
    return JSONResponse({"error": body}, status_code=status, headers=headers)


def _location(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


def validation_message(errors: list[Any]) -> str:
    problems = []
    for error in errors[:5]:
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        problems.append(f"{_location(error.get('loc', ()))}: {message}")
    return "; ".join(problems)


# Our exceptions whose own message is the answer: their status, code and headers.
PLAIN: dict[type[Exception], tuple[int, str, dict[str, str] | None]] = {
    AuthError: (401, "unauthorized", {"WWW-Authenticate": "Bearer"}),
    Forbidden: (403, "forbidden", None),
    AuthUnavailable: (503, "auth_unavailable", {"Retry-After": "5"}),
    JobNotFound: (404, "job_not_found", None),
    InvalidTransition: (409, "invalid_transition", None),
    ModelNotServed: (422, "model_not_served", None),
}


def install_error_handlers(app: FastAPI) -> None:
    log = get_logger()

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(
            exc.status, exc.code, exc.message, headers=exc.headers, details=exc.details
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": e.get("type")}
            for e in exc.errors()
        ]
        return error_response(
            422, "invalid_request", validation_message(list(exc.errors())), details=errors
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "error")
        message = str(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = f"no such endpoint: {request.method} {request.url.path} (see /docs)"
        if exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path} (see /docs)"
        headers = dict(exc.headers) if exc.headers else None
        return error_response(exc.status_code, code, message, headers=headers)

    async def _plain(request: Request, exc: Exception) -> JSONResponse:
        status, code, headers = next(PLAIN[t] for t in type(exc).__mro__ if t in PLAIN)
        return error_response(status, code, str(exc), headers=headers)

    for plain in PLAIN:
        app.add_exception_handler(plain, _plain)

    @app.exception_handler(StorageError)
    async def _storage(request: Request, exc: StorageError) -> JSONResponse:
        # The message names the object and what happened; bucket and endpoint are only logged.
        log.warning("api_storage_error", error=str(exc), path=request.url.path)
        if isinstance(exc, StorageUnreachable):
            status, code = 503, "storage_unavailable"
        else:
            status, code = 502, "storage_error"
        return error_response(
            status,
            code,
            f"{exc}; nothing was lost: try again shortly, and tell the operator if it persists",
            headers={"Retry-After": "5"},
        )

    @app.exception_handler(DatabaseUnavailable)
    @app.exception_handler(PoolTimeout)
    @app.exception_handler(psycopg.OperationalError)
    async def _database(request: Request, exc: Exception) -> JSONResponse:
        log.warning("api_database_unavailable", error=str(exc))
        return error_response(
            503,
            "database_unavailable",
            "the database is unreachable or busy; try again shortly",
            headers={"Retry-After": "5"},
        )

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("api_internal_error", path=request.url.path)
        return error_response(
            500, "internal", "internal server error; the operator can find it in the logs"
        )
