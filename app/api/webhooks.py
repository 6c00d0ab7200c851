"""Signed webhooks (Standard Webhooks) and the dispatcher that delivers the outbox.

Signature: `webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`, keyed with
the base64-decoded part of the secret after `whsec_`. `webhook-id` is the delivery id, the same
on every retry, so receivers can drop duplicates.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import json
import secrets
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
from structlog.contextvars import bound_contextvars

from app import __version__
from app.api.auth import secret_file
from app.api.ssrf import CallbackPolicy, CallbackTarget, IPAddress, UnsafeCallbackUrl
from app.api.views import job_view
from app.clock import Clock, SystemClock
from app.db import Connection, Listener
from app.errors import ConfigError, JobNotFound
from app.log import get_logger
from app.queue import Queue
from app.queue.webhooks import WEBHOOKS_CHANNEL, WebhookDelivery
from app.settings import Settings
from app.storage import Storage

SECRET_PREFIX = "whsec_"
USER_AGENT = f"stemfleet-webhooks/{__version__}"

ConnectionFactory = Callable[[], AbstractContextManager[Connection]]


def secret_key(secret: str) -> bytes:
    """The HMAC key inside a `whsec_<base64>` secret; ConfigError if malformed."""
    try:
        key = base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if not secret.startswith(SECRET_PREFIX) or len(key) < 16:
        raise ConfigError(
            "STEMFLEET_WEBHOOK_SECRET must be 'whsec_' followed by base64 of at least 16 "
            "random bytes, e.g. whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
        )
    return key


def generate_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(24)).decode()


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    content = f"{msg_id}.{timestamp}.".encode() + body
    mac = hmac.new(secret_key(secret), content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def webhook_secret_path(settings: Settings) -> Path:
    return settings.data_dir / "webhook-secret"


def ensure_webhook_secret(settings: Settings) -> str | None:
    """STEMFLEET_WEBHOOK_SECRET (validated); in dev mode a generated one kept in
    <data_dir>/webhook-secret; otherwise None (no webhooks)."""
    if settings.webhook_secret:
        secret = settings.webhook_secret.get_secret_value()
        secret_key(secret)
        return secret
    if not settings.dev_auth:
        return None
    secret = secret_file(webhook_secret_path(settings), generate_secret)
    secret_key(secret)
    return secret


@dataclass(frozen=True)
class Outcome:
    delivered: bool
    status_code: int | None = None
    error: str | None = None
    retryable: bool = True


def _url_for(target: CallbackTarget, address: IPAddress) -> str:
    """The callback URL with its host replaced by the vetted address (no second DNS lookup)."""
    parts = urlsplit(target.url)
    host = f"[{address}]" if isinstance(address, ipaddress.IPv6Address) else str(address)
    netloc = f"{host}:{target.port}"
    return urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))


def _host_header(target: CallbackTarget) -> str:
    default = 443 if target.scheme == "https" else 80
    host = f"[{target.host}]" if ":" in target.host else target.host
    return host if target.port == default else f"{host}:{target.port}"


class WebhookDispatcher:
    """Claims due deliveries, POSTs them signed, records each attempt. `run_once()` for tests
    and cron-like use; `run(stop)` loops, woken by NOTIFY on new deliveries."""

    def __init__(
        self,
        settings: Settings,
        *,
        connect: ConnectionFactory,
        storage: Storage,
        secret: str,
        policy: CallbackPolicy,
        clock: Clock | None = None,
        http: httpx.Client | None = None,
        batch: int = 20,
    ) -> None:
        secret_key(secret)
        self.settings = settings
        self.connect = connect
        self.storage = storage
        self.secret = secret
        self.policy = policy
        self.clock: Clock = clock or SystemClock()
        self.queue = Queue(self.clock)
        self.batch = batch
        self.http = http or httpx.Client(
            timeout=settings.webhook_timeout, follow_redirects=False, trust_env=False
        )
        self.log = get_logger()

    def run_once(self) -> int:
        """Attempt every due delivery (up to one batch); returns how many were attempted."""
        with self.connect() as conn:
            claimed = self.queue.claim_webhook_deliveries(
                conn, limit=self.batch, lease=self.settings.webhook_timeout * 3 + 30
            )
        for delivery in claimed:
            # the delivery's ids on every line logged meanwhile (httpx's request line too)
            with bound_contextvars(job_id=str(delivery.job_id), delivery_id=str(delivery.id)):
                self._deliver(delivery)
        return len(claimed)

    def _deliver(self, delivery: WebhookDelivery) -> None:
        """One attempt at a delivery, recorded (delivered, or when to retry, or failed)."""
        started = time.perf_counter()
        outcome = self.attempt(delivery)
        elapsed_ms = (time.perf_counter() - started) * 1000
        with self.connect() as conn:
            recorded = self.queue.record_webhook_attempt(
                conn,
                delivery,
                delivered=outcome.delivered,
                status_code=outcome.status_code,
                error=outcome.error,
                duration_ms=elapsed_ms,
                retryable=outcome.retryable,
                backoff_base=self.settings.webhook_retry_base,
                max_age=self.settings.webhook_max_age,
            )
        self.log.info(
            "webhook_attempted",
            attempt=delivery.attempts,
            status_code=outcome.status_code,
            error=outcome.error,
            delivery_status=recorded.status,
        )

    def body(self, delivery: WebhookDelivery) -> bytes:
        with self.connect() as conn:
            job = self.queue.get(conn, delivery.job_id)
        data = job_view(job, self.storage, expires=self.settings.presign_expires)
        envelope = {
            "type": delivery.event_type,
            "timestamp": delivery.created_at.isoformat(),
            "data": data.model_dump(mode="json"),
        }
        return json.dumps(envelope, separators=(",", ":")).encode()

    def attempt(self, delivery: WebhookDelivery) -> Outcome:
        try:
            body = self.body(delivery)
        except JobNotFound:
            return Outcome(False, error="the job no longer exists", retryable=False)
        try:
            target = self.policy.check(delivery.url)
        except UnsafeCallbackUrl as exc:
            return Outcome(False, error=f"refused at send time: {exc}", retryable=False)
        timestamp = int(self.clock.now().timestamp())
        msg_id = str(delivery.id)
        headers = {
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            "host": _host_header(target),
            "webhook-id": msg_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(self.secret, msg_id, timestamp, body),
        }
        extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
        error = "no address to connect to"
        for address in target.addresses:
            try:
                response = self.http.post(
                    _url_for(target, address), content=body, headers=headers, extensions=extensions
                )
            except httpx.ConnectError as exc:
                error = f"connection failed: {exc}"
                continue
            except httpx.HTTPError as exc:
                return Outcome(False, error=f"{type(exc).__name__}: {exc}")
            code = response.status_code
            if 200 <= code < 300:
                return Outcome(True, status_code=code)
            if 300 <= code < 400:
                return Outcome(False, code, "redirects are not followed: give the final URL")
            return Outcome(False, code, f"receiver answered HTTP {code}", retryable=code != 410)
        return Outcome(False, error=error)

    def seconds_until_due(self) -> float | None:
        with self.connect() as conn:
            due = self.queue.next_webhook_due(conn)
        if due is None:
            return None
        return max((due - self.clock.now()).total_seconds(), 0.0)

    def run(self, stop: threading.Event) -> None:
        """Deliver until `stop` is set (wake it with NOTIFY stemfleet_webhooks to stop fast)."""
        poll = self.settings.webhook_poll_interval
        self.log.info("webhook_dispatcher_started")
        listener: Listener | None = None
        while not stop.is_set():
            try:
                if listener is None:
                    listener = Listener(
                        self.settings.require_database_url(),
                        [WEBHOOKS_CHANNEL],
                        name="stemfleet-webhooks",
                    )
                if self.run_once() >= self.batch:
                    continue
                due = self.seconds_until_due()
                listener.wait(poll if due is None else min(poll, max(due, 0.05)))
            except Exception:
                self.log.exception("webhook_dispatcher_error")
                if listener is not None:
                    listener.close()
                    listener = None
                self.clock.wait(stop, poll)
        if listener is not None:
            listener.close()
        self.http.close()
        self.log.info("webhook_dispatcher_stopped")
