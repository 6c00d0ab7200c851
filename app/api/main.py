"""The FastAPI service: `create_app(settings)`; `uvicorn app.api.main:app` builds one from the
environment on first access."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from app import __version__
from app.api import routes_admin, routes_files, routes_health, routes_jobs, routes_uploads
from app.api.auth import Authenticator, ensure_dev_token
from app.api.context import ApiContext
from app.api.errors import install_error_handlers
from app.api.limits import BodyLimits
from app.api.metrics import ApiMetrics, LatencyMiddleware
from app.api.routes_web import mount_web
from app.api.ssrf import CallbackPolicy, Resolver, system_resolver
from app.api.webhooks import WebhookDispatcher, ensure_webhook_secret
from app.clock import Clock, SystemClock
from app.log import get_logger
from app.params import fleet_model_names
from app.queue import Queue
from app.queue.webhooks import WEBHOOKS_CHANNEL
from app.settings import Settings, get_settings
from app.storage import Storage, storage_from_settings

DESCRIPTION = """
Stem separation jobs: upload audio, follow the job live, download the stems.

1. Small files: `POST /v1/jobs` as multipart with `file`. Big files: `POST /v1/uploads` for a
   presigned PUT URL, PUT the file there, then `POST /v1/jobs` with JSON `{"input_key": ...}`.
2. Follow it: `GET /v1/jobs/{id}`, or the event stream `GET /v1/jobs/{id}/events`, or a signed
   webhook to `callback_url` (Standard Webhooks) on its final status.
3. Once `succeeded`, `stems` holds a presigned download URL per stem.

Authenticate with `Authorization: Bearer <Supabase access token>`. Errors are
`{"error": {"code", "message"}}`.
"""


class DispatcherThread:
    """Runs the webhook dispatcher beside the API; stopping wakes it through NOTIFY."""

    def __init__(self, ctx: ApiContext, dispatcher: WebhookDispatcher) -> None:
        self.ctx = ctx
        self.dispatcher = dispatcher
        self.stop_event = threading.Event()
        self.thread = threading.Thread(
            target=dispatcher.run, args=(self.stop_event,), name="webhook-dispatcher", daemon=True
        )

    def start(self) -> None:
        self.thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self.stop_event.set()
        try:
            with self.ctx.connection() as conn:
                conn.execute("select pg_notify(%s, '')", (WEBHOOKS_CHANNEL,))
        except Exception as exc:
            get_logger().warning("webhook_dispatcher_wake_failed", error=str(exc))
        self.thread.join(timeout)


def create_app(
    settings: Settings,
    *,
    clock: Clock | None = None,
    storage: Storage | None = None,
    resolver: Resolver = system_resolver,
    run_dispatcher: bool = True,
    webhook_http: httpx.Client | None = None,
) -> FastAPI:
    """The API. `run_dispatcher=False` leaves webhook delivery to someone calling
    `app.state.dispatcher.run_once()` (tests) or to another API process."""
    clock = clock or SystemClock()
    dev_token = ensure_dev_token(settings) if settings.dev_auth else None
    secret = ensure_webhook_secret(settings)
    ctx = ApiContext(
        settings=settings,
        clock=clock,
        queue=Queue(clock),
        storage=storage or storage_from_settings(settings),
        auth=Authenticator(settings, dev_token=dev_token),
        callbacks=CallbackPolicy(settings.callback_allowlist, resolver),
        webhook_secret=secret,
    )
    dispatcher = (
        WebhookDispatcher(
            settings,
            connect=ctx.connection,
            storage=ctx.storage,
            secret=secret,
            policy=ctx.callbacks,
            clock=clock,
            http=webhook_http,
        )
        if secret
        else None
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        log = get_logger()
        thread = None
        if dispatcher is not None and run_dispatcher:
            thread = DispatcherThread(ctx, dispatcher)
            thread.start()
        elif dispatcher is None:
            log.warning(
                "webhooks_disabled", reason="no STEMFLEET_WEBHOOK_SECRET: callbacks are refused"
            )
        try:  # jobs may name the models this deployment serves (queue.served_models), and get
            # its defaults (queue.job_settings) whichever way they come in
            with ctx.connection() as conn:
                ctx.queue.serve_models(conn, fleet_model_names(settings.model, settings.model_repo))
                ctx.queue.configure_jobs(
                    conn, max_attempts=settings.max_attempts, model=settings.model
                )
        except Exception as exc:  # the database may be down or not migrated yet: not fatal
            log.warning("served_models_not_recorded", error=str(exc))
        log.info("api_started", dev_auth=settings.dev_auth, storage=settings.storage)
        try:
            yield
        finally:
            if thread is not None:
                thread.stop()
            await ctx.aclose()

    app = FastAPI(
        title="stemfleet",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # mount_web serves /docs with assets from the package (offline)
        redoc_url=None,
    )
    metrics = ApiMetrics(ctx)
    app.state.ctx = ctx
    app.state.metrics = metrics
    app.state.dispatcher = dispatcher
    app.state.dev_token = dev_token
    mount_web(app)  # the pages, /docs, the stems archive
    install_error_handlers(app)
    for module in (routes_jobs, routes_uploads, routes_files, routes_admin, routes_health):
        app.include_router(module.router)
    app.add_middleware(BodyLimits, settings=settings)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PUT"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key"],
            expose_headers=["Location", "Idempotent-Replayed", "Stemfleet-Deduplicated"],
        )
    app.add_middleware(LatencyMiddleware, histogram=metrics.requests)
    return app


_app: FastAPI | None = None
_app_lock = threading.Lock()


def __getattr__(name: str) -> Any:
    """`app`: built from the environment on first access, for `uvicorn app.api.main:app`."""
    global _app
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    with _app_lock:
        if _app is None:
            _app = create_app(get_settings())
        return _app
