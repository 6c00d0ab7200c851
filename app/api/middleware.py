"""The base of our pure ASGI middleware (a stream stays a stream: no BaseHTTPMiddleware)."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.types import ASGIApp, Receive, Scope, Send


@dataclass(eq=False)
class HttpMiddleware:
    """Runs `handle` for each HTTP request; other scopes (lifespan, websocket) go on to `app`
    untouched. Added with `app.add_middleware(Subclass, field=value, ...)`."""

    app: ASGIApp

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await self.handle(scope, receive, send)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        raise NotImplementedError
