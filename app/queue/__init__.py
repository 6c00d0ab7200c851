"""The queue's Python face: the one place in Python that knows the SQL functions' names.

Every method is a thin typed wrapper over one function in supabase/migrations/ (the source of
truth for all state). Each area keeps its named queries in its own file of this package; `Queue`
composes them. Methods take an autocommit connection, so each call is one short transaction.
Time comes from the injected clock (None in production: the database's now()).
"""

from __future__ import annotations

from app.queue.api import ApiQueries
from app.queue.base import SqlCaller, queue_errors
from app.queue.fleet import FleetQueries
from app.queue.jobs import (
    EVENTS_CHANNEL,
    FINAL_STATUSES,
    QUEUED_CHANNEL,
    Job,
    JobKind,
    JobQueries,
    JobStatus,
    Reaped,
)
from app.queue.profiles import ProfileQueries
from app.queue.rules import RuleQueries
from app.queue.webhooks import WebhookQueries
from app.queue.workers import Worker, WorkerQueries


class Queue(
    JobQueries,
    WorkerQueries,
    RuleQueries,
    ApiQueries,
    WebhookQueries,
    FleetQueries,
    ProfileQueries,
):
    """All SQL-function wrappers, one object."""


__all__ = [
    "EVENTS_CHANNEL",
    "FINAL_STATUSES",
    "QUEUED_CHANNEL",
    "Job",
    "JobKind",
    "JobStatus",
    "Queue",
    "Reaped",
    "SqlCaller",
    "Worker",
    "queue_errors",
]
