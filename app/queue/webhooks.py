"""Webhook deliveries: wrappers over the outbox functions (supabase/migrations/*_webhooks.sql).

A trigger inserts one delivery when a job with a callback_url reaches a final status; the
dispatcher claims due ones, sends them and records each attempt here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from psycopg.rows import class_row

from app.db import Connection
from app.queue.base import SqlCaller

WEBHOOKS_CHANNEL = "stemfleet_webhooks"

DeliveryStatus = Literal["pending", "delivered", "failed"]


@dataclass(frozen=True, slots=True)
class WebhookDelivery:
    id: UUID
    job_id: UUID
    user_id: UUID
    url: str
    event_type: str
    payload: dict[str, Any]
    status: DeliveryStatus
    attempts: int
    next_attempt_at: datetime
    last_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    delivered_at: datetime | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class WebhookAttempt:
    delivery_id: UUID
    attempt: int
    attempted_at: datetime
    status_code: int | None
    error: str | None
    duration_ms: float | None


DELIVERY = class_row(WebhookDelivery)
ATTEMPT = class_row(WebhookAttempt)

Q_CLAIM_DELIVERIES = """
select * from queue.claim_webhook_deliveries(p_limit => %(limit)s,
    p_lease_seconds => %(lease)s, p_now => %(now)s)
"""
Q_RECORD_ATTEMPT = """
select * from queue.record_webhook_attempt(p_delivery_id => %(delivery_id)s,
    p_attempt => %(attempt)s, p_delivered => %(delivered)s, p_status_code => %(status_code)s,
    p_error => %(error)s, p_duration_ms => %(duration_ms)s, p_retryable => %(retryable)s,
    p_backoff_base_seconds => %(backoff)s, p_max_age_seconds => %(max_age)s, p_now => %(now)s)
"""
Q_DELIVERIES_FOR_JOB = """
select * from public.webhook_deliveries where job_id = %(job_id)s order by created_at, id
"""
Q_ATTEMPTS = """
select * from public.webhook_attempts where delivery_id = %(delivery_id)s order by attempt
"""
Q_NEXT_DUE = """
select min(next_attempt_at) as due from public.webhook_deliveries where status = 'pending'
"""


class WebhookQueries(SqlCaller):
    def claim_webhook_deliveries(
        self, conn: Connection, *, limit: int = 10, lease: float = 60.0
    ) -> list[WebhookDelivery]:
        return self._rows(conn, DELIVERY, Q_CLAIM_DELIVERIES, {"limit": limit, "lease": lease})

    def record_webhook_attempt(
        self,
        conn: Connection,
        delivery: WebhookDelivery,
        *,
        delivered: bool,
        status_code: int | None = None,
        error: str | None = None,
        duration_ms: float | None = None,
        retryable: bool = True,
        backoff_base: float = 10.0,
        max_age: float = 7200.0,
    ) -> WebhookDelivery:
        """`delivery` as claimed (its `attempts` is the attempt being recorded)."""
        return self._made(
            conn,
            DELIVERY,
            Q_RECORD_ATTEMPT,
            {
                "delivery_id": delivery.id,
                "attempt": delivery.attempts,
                "delivered": delivered,
                "status_code": status_code,
                "error": error,
                "duration_ms": duration_ms,
                "retryable": retryable,
                "backoff": backoff_base,
                "max_age": max_age,
            },
        )

    def webhook_deliveries_for_job(
        self, conn: Connection, job_id: UUID | str
    ) -> list[WebhookDelivery]:
        return self._rows(conn, DELIVERY, Q_DELIVERIES_FOR_JOB, {"job_id": job_id})

    def webhook_attempts(self, conn: Connection, delivery_id: UUID) -> list[WebhookAttempt]:
        return self._rows(conn, ATTEMPT, Q_ATTEMPTS, {"delivery_id": delivery_id})

    def next_webhook_due(self, conn: Connection) -> datetime | None:
        row = self._one(conn, Q_NEXT_DUE, {})
        return row["due"] if row else None
