"""Reads the HTTP API needs beyond the queue operations.

User-scoped queries (`*_mine`) must run inside `app.db.as_user`: they filter on `auth.uid()` and
RLS applies on top, so a user can only ever reach their own rows. The others read across users
(positions, admin views) on the service connection.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from psycopg.types.json import Jsonb

from app.db import Connection
from app.queue.base import SqlCaller
from app.queue.jobs import JOB, Job

Q_LIST_MINE = """
select * from public.jobs
 where user_id = auth.uid()
   and (%(statuses)s::public.job_status[] is null
        or status = any (%(statuses)s::public.job_status[]))
   and (%(before_created)s::timestamptz is null
        or (created_at, id) < (%(before_created)s::timestamptz, %(before_id)s::uuid))
 order by created_at desc, id desc
 limit %(limit)s
"""
Q_COUNT_QUEUED_MINE = """
select count(*)::integer as n from public.jobs where user_id = auth.uid() and status = 'queued'
"""
Q_FIND_DUPLICATE_MINE = """
select * from public.jobs
 where user_id = auth.uid() and input_sha256 = %(sha256)s and kind = %(kind)s
   and params = %(params)s and status not in ('failed', 'cancelled')
   and created_at >= coalesce(%(now)s, now()) - make_interval(secs => %(window)s)
 order by created_at desc, id desc
 limit 1
"""
Q_FIND_IDEMPOTENT_MINE = """
select * from public.jobs where user_id = auth.uid() and idempotency_key = %(key)s
"""
# A queued job's place in line: the one definition (queue.queue_positions, in SQL) behind every
# queue_position the API shows. Jobs not in line (running, finished, waiting out a backoff) are
# absent from the answer.
Q_QUEUE_POSITIONS = """
select job_id, queue_position from queue.queue_positions(%(ids)s::uuid[], p_now => %(now)s)
"""
Q_GET_JOBS = "select * from public.jobs where id = any (%(ids)s::uuid[])"
Q_SPEND_NOW = "select * from scaler.spend(p_now => %(now)s)"

# Admin views, by the name the API serves them under.
ADMIN_VIEWS = {
    "queue_depth": "select * from admin.queue_depth",
    "queue_oldest": "select * from admin.queue_oldest",
    "failures": "select * from admin.failures",
    "job_times_hourly": "select * from admin.job_times_hourly limit 48",
    "workers": "select * from admin.workers",
    "webhook_deliveries": "select * from admin.webhook_deliveries",
    "spend_daily": "select * from admin.spend_daily limit 31",
    "scaler_runs": (
        "select id, started_at, finished_at, duration_ms, provider, dry_run, queued, machines,"
        " target, actions_count, errors_count, scaled_up, scaled_down, actions, errors"
        " from admin.scaler_runs limit 20"
    ),
    # the runs that did or tried something (an idle loop runs every few seconds)
    "scaler_decisions": (
        "select id, started_at, provider, dry_run, queued, machines, target, scaled_up,"
        " scaled_down, actions, errors, plan -> 'notes' as notes, plan -> 'budget_exhausted'"
        " as budget_exhausted from admin.scaler_runs"
        " where actions_count > 0 or errors_count > 0 limit 20"
    ),
    "spend_by_job": (
        "select job_id, kind, status, audio_s, machine_id, provider, size, started_at,"
        " finished_at, run_s, hourly_usd, cost_usd from admin.spend_by_job"
        " order by started_at desc, job_id limit 50"
    ),
}


class ApiQueries(SqlCaller):
    # --- user-scoped (inside as_user) -----------------------------------------------------
    def list_mine(
        self,
        conn: Connection,
        *,
        limit: int,
        statuses: list[str] | None = None,
        before: tuple[datetime, UUID] | None = None,
    ) -> list[Job]:
        return self._rows(
            conn,
            JOB,
            Q_LIST_MINE,
            {
                "limit": limit,
                "statuses": statuses or None,
                "before_created": before[0] if before else None,
                "before_id": before[1] if before else None,
            },
        )

    def count_queued_mine(self, conn: Connection) -> int:
        row = self._one(conn, Q_COUNT_QUEUED_MINE, {})
        return int(row["n"]) if row else 0

    def find_duplicate_mine(
        self,
        conn: Connection,
        *,
        sha256: str,
        kind: str,
        params: dict[str, Any],
        window: float,
    ) -> Job | None:
        return self._row(
            conn,
            JOB,
            Q_FIND_DUPLICATE_MINE,
            {"sha256": sha256, "kind": kind, "params": Jsonb(params), "window": window},
        )

    def find_idempotent_mine(self, conn: Connection, key: str) -> Job | None:
        return self._row(conn, JOB, Q_FIND_IDEMPOTENT_MINE, {"key": key})

    # --- service connection ---------------------------------------------------------------
    def queue_positions(self, conn: Connection, job_ids: list[UUID]) -> dict[UUID, int]:
        """Job id -> 1-based place in line, for those of `job_ids` that are in line."""
        if not job_ids:
            return {}
        rows = self._all(conn, Q_QUEUE_POSITIONS, {"ids": job_ids})
        return {row["job_id"]: row["queue_position"] for row in rows}

    def get_jobs(self, conn: Connection, job_ids: list[UUID]) -> list[Job]:
        """Several jobs by id, whoever owns them (the event broadcaster's re-read)."""
        return self._rows(conn, JOB, Q_GET_JOBS, {"ids": job_ids})

    def admin_view(self, conn: Connection, name: str) -> list[dict[str, Any]]:
        return self._all(conn, ADMIN_VIEWS[name], {})

    def spend_now(self, conn: Connection) -> dict[str, Any]:
        """Spent today and this month (UTC) and the hourly rate of machines billed now."""
        row = self._one(conn, Q_SPEND_NOW, {})
        return dict(row) if row else {"today_usd": 0.0, "month_usd": 0.0, "hourly_usd": 0.0}
