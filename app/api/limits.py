"""Request bodies are bounded before they are parsed.

`BodyLimits` (ASGI middleware) sizes every request body before any endpoint reads it: a JSON body
by STEMFLEET_MAX_JSON_KB, any other body (a multipart upload, a PUT of a file) by
STEMFLEET_MAX_UPLOAD_MB. A Content-Length over the limit is refused before a byte is read; a body
without one (chunked) is counted as it streams. A JSON body is held (it is small by then) and its
nesting checked against STEMFLEET_MAX_JSON_DEPTH, so no parser ever recurses deeper than that.
`load_json` is the same check for JSON carried inside a form (the multipart `params` field).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from starlette.datastructures import Headers
from starlette.types import Message, Receive, Scope, Send

from app.api.errors import ApiError, error_response
from app.api.intake import too_large
from app.api.middleware import HttpMiddleware
from app.settings import Settings

MULTIPART_OVERHEAD = 256 * 1024  # form fields and boundaries around an uploaded file
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKET = re.compile(rb"[\[\]{}]")


def json_depth(raw: bytes) -> int:
    """How deep arrays and objects nest in `raw` (brackets inside strings do not count)."""
    depth = deepest = 0
    for match in _BRACKET.finditer(_STRING.sub(b"", raw)):
        if match.group() in (b"[", b"{"):
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def json_too_large(max_bytes: int) -> ApiError:
    return ApiError(
        413,
        "payload_too_large",
        f"the JSON is larger than this server's limit of {max_bytes / 1024:.3g} KB "
        "(STEMFLEET_MAX_JSON_KB); a job request is a few hundred bytes: send only its fields "
        "(the audio goes in the file field or through POST /v1/uploads)",
    )


def json_too_deep(max_depth: int) -> ApiError:
    return ApiError(
        422,
        "json_too_deep",
        f"the JSON nests arrays and objects more than {max_depth} levels deep "
        "(STEMFLEET_MAX_JSON_DEPTH); a job request needs two or three",
    )


def load_json(raw: str | bytes, settings: Settings) -> Any:
    """Parse JSON within the size and depth limits: 413 / 422 / 400 with the cause."""
    data = raw.encode() if isinstance(raw, str) else raw
    if len(data) > max_json_bytes(settings):
        raise json_too_large(max_json_bytes(settings))
    if json_depth(data) > settings.max_json_depth:
        raise json_too_deep(settings.max_json_depth)
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "bad_request", "the body is not valid JSON") from None


def max_json_bytes(settings: Settings) -> int:
    return int(settings.max_json_kb * 1024)


def max_upload_bytes(settings: Settings) -> int:
    return int(settings.max_upload_mb * 1024 * 1024)


@dataclass(eq=False)
class BodyLimits(HttpMiddleware):
    settings: Settings

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = Headers(scope=scope)
        media = headers.get("content-type", "").split(";")[0].strip().lower()
        is_json = media == "application/json" or media.endswith("+json")
        if is_json:
            limit, refusal = max_json_bytes(self.settings), json_too_large
        else:
            limit, refusal = max_upload_bytes(self.settings), too_large
        allowed = limit + (MULTIPART_OVERHEAD if media == "multipart/form-data" else 0)
        length = headers.get("content-length", "")
        try:
            if length.isdigit() and int(length) > allowed:
                raise refusal(limit)
            if is_json:
                receive = await self._held_json(receive, allowed, limit)
        except ApiError as exc:
            response = error_response(exc.status, exc.code, exc.message, headers=exc.headers)
            await response(scope, receive, send)
            return
        await self.app(scope, _counted(receive, allowed, lambda: refusal(limit)), send)

    async def _held_json(self, receive: Receive, allowed: int, limit: int) -> Receive:
        """Read the whole (small) JSON body, check its depth, and hand it on unchanged."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > allowed:
                raise json_too_large(limit)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if json_depth(body) > self.settings.max_json_depth:
            raise json_too_deep(self.settings.max_json_depth)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        return replay


def _counted(receive: Receive, allowed: int, refusal: Any) -> Receive:
    """`receive`, failing with `refusal()` (raised into the endpoint reading the body, which
    answers it) once more than `allowed` bytes streamed in."""
    seen = 0

    async def wrapped() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > allowed:
                raise refusal()
        return message

    return wrapped
