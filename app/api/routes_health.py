"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.api.deps import Ctx
from app.api.errors import error_response
from app.migrate import pending

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The process is up")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="The database is reachable and its migrations are current",
    responses={503: {"description": "Not ready; the message says why"}},
)
def readyz(ctx: Ctx) -> Any:
    try:
        with ctx.connection() as conn:
            missing = pending(conn)
    except Exception as exc:
        return error_response(
            503, "not_ready", f"the database is unreachable: {exc}", headers={"Retry-After": "5"}
        )
    if missing:
        names = [f"{m.version}_{m.name}" for m in missing]
        return error_response(
            503,
            "not_ready",
            f"{len(names)} migrations are not applied: run `stemfleet db migrate`",
            details={"pending_migrations": names},
        )
    return JSONResponse({"status": "ready", "database": "ok", "pending_migrations": []})


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {}}}},
)
def metrics(request: Request) -> Response:
    registry = request.app.state.metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
