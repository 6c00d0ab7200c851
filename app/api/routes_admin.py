"""/v1/admin: operator views (service token), served from the admin SQL views, and a trigger
for one scaler reconcile."""

from __future__ import annotations

import os
import subprocess
import time
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.encoders import jsonable_encoder
from pydantic import BaseModel

from app.api.deps import Ctx, errors, require_admin
from app.api.errors import ApiError
from app.processes import stemfleet_command

router = APIRouter(prefix="/v1/admin", tags=["admin"], dependencies=[Depends(require_admin)])

ADMIN_ERRORS = errors(401, 403, 503)
OUTPUT_LIMIT = 20_000  # characters of scaler output returned


def _rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    encoded: list[dict[str, Any]] = jsonable_encoder(rows)
    return encoded


@router.get(
    "/queue", summary="Queue depth, oldest waits, timings, failures", responses=ADMIN_ERRORS
)
def admin_queue(ctx: Ctx) -> dict[str, Any]:
    with ctx.connection() as conn:
        return {
            name: _rows(ctx.queue.admin_view(conn, view))
            for name, view in (
                ("depth", "queue_depth"),
                ("oldest", "queue_oldest"),
                ("hourly", "job_times_hourly"),
                ("failures", "failures"),
                ("webhooks", "webhook_deliveries"),
            )
        }


@router.get("/workers", summary="The fleet and its heartbeats", responses=ADMIN_ERRORS)
def admin_workers(ctx: Ctx) -> dict[str, Any]:
    with ctx.connection() as conn:
        return {"workers": _rows(ctx.queue.admin_view(conn, "workers"))}


@router.get(
    "/spend", summary="Spend against the budget, per day, and scaler runs", responses=ADMIN_ERRORS
)
def admin_spend(ctx: Ctx) -> dict[str, Any]:
    settings = ctx.settings
    with ctx.connection() as conn:
        now = ctx.queue.spend_now(conn)
        daily = ctx.queue.admin_view(conn, "spend_daily")
        runs = ctx.queue.admin_view(conn, "scaler_runs")
    return {
        "now": jsonable_encoder(now),
        "budget": {
            "daily_usd": settings.daily_budget_usd,
            "monthly_usd": settings.monthly_budget_usd,
            "max_hourly_usd": settings.max_hourly_usd,
        },
        "daily": _rows(daily),
        "scaler_runs": _rows(runs),
    }


@router.get(
    "/activity",
    summary="Cost per job and the scaler's recent decisions with their reasons",
    responses=ADMIN_ERRORS,
)
def admin_activity(ctx: Ctx) -> dict[str, Any]:
    with ctx.connection() as conn:
        return {
            "job_costs": _rows(ctx.queue.admin_view(conn, "spend_by_job")),
            "decisions": _rows(ctx.queue.admin_view(conn, "scaler_decisions")),
        }


class ScalerRun(BaseModel):
    command: list[str]
    exit_code: int
    ok: bool
    duration_s: float
    stdout: str
    stderr: str


def scaler_command() -> list[str]:
    """`stemfleet scaler once` run by this interpreter (the scaler lives outside `app`)."""
    return stemfleet_command("scaler", "once")


@router.post(
    "/scaler/run",
    response_model=ScalerRun,
    summary="Run one scaler reconcile now (`stemfleet scaler once`)",
    responses=errors(401, 403, 503, 504),
)
def admin_scaler_run(ctx: Ctx) -> ScalerRun:
    command = scaler_command()
    # The API's own settings win over its environment (they may have been given in code).
    env = {
        **os.environ,
        "STEMFLEET_DATABASE_URL": ctx.settings.database_url.get_secret_value(),
        "STEMFLEET_DATA_DIR": str(ctx.settings.data_dir),
    }
    started = time.monotonic()
    try:
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=ctx.settings.scaler_run_timeout,
            env=env,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise ApiError(
            504,
            "scaler_timeout",
            f"`stemfleet scaler once` did not finish within {ctx.settings.scaler_run_timeout:g} s "
            "(STEMFLEET_SCALER_RUN_TIMEOUT); see the scaler's logs",
            details={"stdout": _text(exc.stdout), "stderr": _text(exc.stderr)},
        ) from None
    if done.returncode == 2 and "invalid choice: 'scaler'" in done.stderr:
        raise ApiError(
            503,
            "scaler_unavailable",
            "the scaler is not installed with this API (no `stemfleet scaler` command); install "
            "the full stemfleet package",
            details={"stderr": done.stderr[-OUTPUT_LIMIT:]},
        )
    return ScalerRun(
        command=command,
        exit_code=done.returncode,
        ok=done.returncode == 0,
        duration_s=round(time.monotonic() - started, 3),
        stdout=done.stdout[-OUTPUT_LIMIT:],
        stderr=done.stderr[-OUTPUT_LIMIT:],
    )


def _text(value: str | bytes | None) -> str:
    if value is None:
        return ""
    text = value.decode(errors="replace") if isinstance(value, bytes) else value
    return text[-OUTPUT_LIMIT:]
