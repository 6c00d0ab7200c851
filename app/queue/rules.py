"""A job's rules, which live in SQL (supabase/migrations/*_job_rules.sql): the deployment's
defaults, the models it serves, and the check both insert paths share. A Supabase client's insert
runs queue.check_job in its insert guard; the API calls it here before it reads the input."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from psycopg.types.json import Jsonb

from app.db import Connection
from app.queue.base import INPUT_KEY_ERRORS, SqlCaller, queue_errors

Q_SERVE_MODELS = "select queue.serve_models(%(names)s)"
Q_CONFIGURE_JOBS = """
select max_attempts, model from queue.configure_jobs(p_max_attempts => %(max_attempts)s,
    p_model => %(model)s)
"""
Q_CHECK_JOB = """
select queue.check_job(p_user_id => %(user_id)s, p_params => %(params)s,
    p_input_key => %(input_key)s) as params
"""


class RuleQueries(SqlCaller):
    def serve_models(self, conn: Connection, names: list[str]) -> None:
        """Add models to those a job may name (queue.served_models): what a worker or the API
        knows the fleet can load."""
        self._one(conn, Q_SERVE_MODELS, {"names": names})

    def configure_jobs(self, conn: Connection, *, max_attempts: int, model: str) -> None:
        """Record the deployment's defaults of a new job (queue.job_settings), which every
        insert path reads: STEMFLEET_MAX_ATTEMPTS and STEMFLEET_MODEL."""
        self._one(conn, Q_CONFIGURE_JOBS, {"max_attempts": max_attempts, "model": model})

    def check_job(
        self,
        conn: Connection,
        *,
        user_id: UUID | str,
        params: dict[str, Any],
        input_key: str | None = None,
    ) -> dict[str, Any]:
        """The job's params with every default written in, or the first rule it breaks:
        InputKeyRefused (not one of the user's uploads, or a malformed key), InvalidParams,
        ModelNotServed."""
        args = {"user_id": user_id, "params": Jsonb(params), "input_key": input_key}
        with queue_errors(INPUT_KEY_ERRORS):
            row = conn.execute(Q_CHECK_JOB, args).fetchone()
        assert row is not None
        checked: dict[str, Any] = row["params"]
        return checked
