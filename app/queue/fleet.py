"""The scaler's records: machine run time (spend), scaler runs, backlog and fleet reads.

Wrappers over the scaler.* SQL functions (supabase/migrations/20261122000400_scaler.sql).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from psycopg.rows import class_row
from psycopg.types.json import Jsonb

from app.db import Connection
from app.queue.base import SqlCaller
from app.queue.jobs import REAPED, JobKind, Reaped
from app.queue.workers import WORKER, Worker

# One scaler acts at a time: a session-level advisory lock ("SCAL").
SCALER_LOCK_KEY = 0x5343414C


@dataclass(frozen=True, slots=True)
class BacklogGroup:
    """Jobs of one kind and priority: runnable now, waiting for a retry backoff, running."""

    kind: JobKind
    priority: int
    queued: int
    delayed: int
    running: int
    oldest_queued_at: datetime | None


@dataclass(frozen=True, slots=True)
class SpendSoFar:
    today_usd: float
    month_usd: float
    hourly_usd: float  # machines billed right now


@dataclass(frozen=True, slots=True)
class ScaleHistory:
    last_scale_up_at: datetime | None
    last_scale_down_at: datetime | None


@dataclass(frozen=True, slots=True)
class MachineRun:
    id: int
    provider: str
    machine_id: str
    size: str
    hourly_usd: float
    started_at: datetime
    stop_requested_at: datetime | None
    stopped_at: datetime | None
    stop_reason: str | None
    worker_id: UUID | None

    def __post_init__(self) -> None:  # numeric comes as Decimal
        object.__setattr__(self, "hourly_usd", float(self.hourly_usd))


@dataclass(frozen=True, slots=True)
class ScalerRun:
    id: int
    started_at: datetime
    finished_at: datetime
    provider: str
    dry_run: bool
    inputs: dict[str, Any]
    plan: dict[str, Any]
    actions: list[dict[str, Any]]
    errors: list[dict[str, Any]]
    scaled_up: bool
    scaled_down: bool


@dataclass(frozen=True, slots=True)
class MachineReport:
    """One machine as the provider reports it, for reconcile_machines."""

    id: str
    size: str
    hourly_usd: float
    billed: bool  # started, starting or stopping: the provider charges for it
    state_since: datetime | None
    stopped_hourly_usd: float = 0.0  # what it costs while stopped (e.g. its disk)
    parked: bool = False  # stopped or failed: billed at stopped_hourly_usd

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "size": self.size,
            "hourly_usd": self.hourly_usd,
            "billed": self.billed,
            "state_since": self.state_since.isoformat() if self.state_since else None,
            "stopped_hourly_usd": self.stopped_hourly_usd,
            "parked": self.parked,
        }


BACKLOG_GROUP = class_row(BacklogGroup)
MACHINE_RUN = class_row(MachineRun)
SCALER_RUN = class_row(ScalerRun)

Q_TRY_LOCK = "select pg_try_advisory_lock(%(key)s) as locked"
Q_UNLOCK = "select pg_advisory_unlock(%(key)s) as unlocked"
Q_BACKLOG = "select * from scaler.backlog(p_now => %(now)s)"
Q_FLEET_WORKERS = "select * from scaler.fleet_workers(%(machine_ids)s::text[])"
Q_SPEND = "select * from scaler.spend(p_now => %(now)s)"
Q_HISTORY = "select * from scaler.history()"
Q_MACHINE_STARTED = """
select * from scaler.machine_started(p_provider => %(provider)s, p_machine_id => %(machine_id)s,
    p_size => %(size)s, p_hourly_usd => %(hourly_usd)s, p_now => %(now)s)
"""
Q_MACHINE_STOP_REQUESTED = """
select * from scaler.machine_stop_requested(p_provider => %(provider)s,
    p_machine_id => %(machine_id)s, p_reason => %(reason)s, p_now => %(now)s)
"""
Q_RECONCILE_MACHINES = """
select * from scaler.reconcile_machines(p_provider => %(provider)s, p_machines => %(machines)s,
    p_now => %(now)s)
"""
Q_RECONCILE_PARKED = """
select * from scaler.reconcile_parked(p_provider => %(provider)s, p_machines => %(machines)s,
    p_now => %(now)s)
"""
Q_PARKED_RUNS = """
select * from scaler.parked_runs where provider = %(provider)s order by started_at, id
"""
Q_RECORD_RUN = """
select * from scaler.record_run(p_provider => %(provider)s, p_started_at => %(started_at)s,
    p_inputs => %(inputs)s, p_plan => %(plan)s, p_actions => %(actions)s,
    p_errors => %(errors)s, p_dry_run => %(dry_run)s, p_now => %(now)s)
"""
Q_MACHINE_RUNS = """
select * from scaler.machine_runs where provider = %(provider)s order by started_at, id
"""
Q_LAST_RUNS = "select * from scaler.runs order by id desc limit %(limit)s"
Q_RELEASE_DEAD_WORKERS = """
select * from queue.release_dead_workers(p_machines => %(machines)s,
    p_backoff_base_seconds => %(backoff)s, p_now => %(now)s)
"""


class FleetQueries(SqlCaller):
    # --- the lock -------------------------------------------------------------------------
    def try_scaler_lock(self, conn: Connection) -> bool:
        """Session-level: hold `conn` open for as long as the run acts."""
        row = conn.execute(Q_TRY_LOCK, {"key": SCALER_LOCK_KEY}).fetchone()
        return bool(row and row["locked"])

    def release_scaler_lock(self, conn: Connection) -> None:
        conn.execute(Q_UNLOCK, {"key": SCALER_LOCK_KEY})

    # --- inputs ---------------------------------------------------------------------------
    def backlog(self, conn: Connection) -> list[BacklogGroup]:
        return self._rows(conn, BACKLOG_GROUP, Q_BACKLOG, {})

    def fleet_workers(self, conn: Connection, machine_ids: Sequence[str]) -> dict[str, Worker]:
        """The newest worker registration of each machine, by machine id."""
        args = {"machine_ids": list(machine_ids)}
        return {w.machine_id: w for w in self._rows(conn, WORKER, Q_FLEET_WORKERS, args)}

    def spend(self, conn: Connection) -> SpendSoFar:
        row = self._one(conn, Q_SPEND, {})
        assert row is not None
        return SpendSoFar(
            today_usd=float(row["today_usd"]),
            month_usd=float(row["month_usd"]),
            hourly_usd=float(row["hourly_usd"]),
        )

    def scale_history(self, conn: Connection) -> ScaleHistory:
        row = self._one(conn, Q_HISTORY, {})
        assert row is not None
        return ScaleHistory(**row)

    def release_dead_workers(
        self,
        conn: Connection,
        down: Mapping[str, datetime],
        *,
        rebooted: Mapping[str, datetime] | None = None,
        backoff_base: float = 10.0,
    ) -> list[Reaped]:
        """The workers of dead machines, and their running jobs released now, as a lease expiry
        would release them. `down`: machine id -> when it was seen stopped, failed or gone (its
        workers registered by then are dead); `rebooted`: machine id -> when its current boot
        began (its workers registered and last heard from before then are dead)."""
        machines = [{"id": mid, "before": at.isoformat()} for mid, at in sorted(down.items())]
        machines += [
            {"id": mid, "before": at.isoformat(), "silent_since": at.isoformat()}
            for mid, at in sorted((rebooted or {}).items())
        ]
        args = {"machines": Jsonb(machines), "backoff": backoff_base}
        return self._rows(conn, REAPED, Q_RELEASE_DEAD_WORKERS, args)

    # --- records --------------------------------------------------------------------------
    def machine_started(
        self, conn: Connection, *, provider: str, machine_id: str, size: str, hourly_usd: float
    ) -> MachineRun:
        return self._made(
            conn,
            MACHINE_RUN,
            Q_MACHINE_STARTED,
            {
                "provider": provider,
                "machine_id": machine_id,
                "size": size,
                "hourly_usd": hourly_usd,
            },
        )

    def machine_stop_requested(
        self, conn: Connection, *, provider: str, machine_id: str, reason: str
    ) -> MachineRun | None:
        return self._row(
            conn,
            MACHINE_RUN,
            Q_MACHINE_STOP_REQUESTED,
            {"provider": provider, "machine_id": machine_id, "reason": reason},
        )

    def reconcile_machines(
        self, conn: Connection, *, provider: str, machines: Sequence[MachineReport]
    ) -> list[tuple[str, str, datetime]]:
        """Open runs for billed machines, close runs of stopped or vanished ones, and the same
        for parked runs (stopped machines with a stopped price); returns the changes as
        (opened|closed|parked|unparked, machine id, at)."""
        args = {"provider": provider, "machines": Jsonb([m.as_json() for m in machines])}
        rows = self._all(conn, Q_RECONCILE_MACHINES, args)
        rows += self._all(conn, Q_RECONCILE_PARKED, args)
        return [(row["change"], row["machine_id"], row["at"]) for row in rows]

    def parked_runs(self, conn: Connection, provider: str) -> list[dict[str, Any]]:
        """Stretches machines spent stopped at a nonzero stopped price, oldest first."""
        return self._all(conn, Q_PARKED_RUNS, {"provider": provider})

    def record_run(
        self,
        conn: Connection,
        *,
        provider: str,
        started_at: datetime,
        inputs: dict[str, Any],
        plan: dict[str, Any],
        actions: list[dict[str, Any]],
        errors: list[dict[str, Any]],
        dry_run: bool = False,
    ) -> ScalerRun:
        return self._made(
            conn,
            SCALER_RUN,
            Q_RECORD_RUN,
            {
                "provider": provider,
                "started_at": started_at,
                "inputs": Jsonb(inputs),
                "plan": Jsonb(plan),
                "actions": Jsonb(actions),
                "errors": Jsonb(errors),
                "dry_run": dry_run,
            },
        )

    def machine_runs(self, conn: Connection, provider: str) -> list[MachineRun]:
        return self._rows(conn, MACHINE_RUN, Q_MACHINE_RUNS, {"provider": provider})

    def last_scaler_runs(self, conn: Connection, limit: int = 10) -> list[ScalerRun]:
        return self._rows(conn, SCALER_RUN, Q_LAST_RUNS, {"limit": limit})
