"""One scaler run: take the advisory lock, read the inputs, plan, act, record.

`Scaler.run_once()` is what `scaler once` (cron) and each turn of `scaler run` call. A second
run while one holds the lock returns at once with `acted=False`. `Scaler.preview()` reads the
same inputs and plans without acting or writing anything (`scaler plan`).
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from app.clock import Clock, SystemClock
from app.db import Connection, connect
from app.log import get_logger
from app.queue import Queue, Reaped
from app.queue.fleet import MachineReport
from app.settings import Settings
from scaler.acting import ActionResult, Actor
from scaler.model import Backlog, Fleet, FleetMachine, Machine, Plan, Spend
from scaler.policy import plan as make_plan
from scaler.providers.base import Provider, ProviderError

# A provider's boot time and the database's clock may disagree: a worker row counts as an earlier
# boot's only when it is older than the boot by this much (else the lease brings its job back).
REBOOT_CLOCK_SKEW = timedelta(seconds=30)

LOCKED_MESSAGE = (
    "another scaler run holds the lock (Postgres advisory lock): this run did nothing; "
    "the other one is acting"
)


@dataclass
class Inputs:
    backlog: Backlog
    fleet: Fleet
    spend: Spend
    now: datetime
    reaped: int = 0
    records: list[tuple[str, str, datetime]] = field(default_factory=list)
    released: list[Reaped] = field(default_factory=list)  # jobs of dead workers, requeued

    def as_json(self, settings: Settings) -> dict[str, Any]:
        return {
            "backlog": self.backlog.as_json(self.now),
            "fleet": {
                "machines": len(self.fleet.machines),
                "create_size": self.fleet.create_size,
                "last_scale_up_at": _iso(self.fleet.last_scale_up_at),
                "last_scale_down_at": _iso(self.fleet.last_scale_down_at),
                "list": [_machine_json(fm, self.now) for fm in self.fleet.sorted()],
            },
            "spend": {
                "today_usd": round(self.spend.today_usd, 6),
                "month_usd": round(self.spend.month_usd, 6),
                "hourly_usd": round(self.spend.hourly_usd, 6),
            },
            "reaped": self.reaped,
            "released": [
                {"job_id": str(r.job_id), "worker_id": str(r.worker_id), "status": r.status}
                for r in self.released
            ],
            "records": [
                {"change": change, "machine_id": mid, "at": at.isoformat()}
                for change, mid, at in self.records
            ],
            "settings": settings_json(settings),
        }


@dataclass
class RunOutcome:
    acted: bool
    message: str
    plan: Plan | None = None
    results: list[ActionResult] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    run_id: int | None = None


def settings_json(settings: Settings) -> dict[str, Any]:
    names = (
        "provider",
        "min_machines",
        "max_machines",
        "max_hourly_usd",
        "daily_budget_usd",
        "monthly_budget_usd",
        "scale_rules",
        "preview_weight",
        "scale_down_idle",
        "scale_up_cooldown",
        "scale_down_cooldown",
        "transient_timeout",
        "machine_size",
        "budget_lookahead",
        "scaler_interval",
    )
    return {name: getattr(settings, name) for name in names}


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _machine_json(fm: FleetMachine, now: datetime) -> dict[str, Any]:
    m, w = fm.machine, fm.worker
    return {
        "id": m.id,
        "state": m.state,
        "size": m.size,
        "hourly_usd": m.hourly_usd,
        "state_since": _iso(m.state_since),
        "worker": None
        if w is None
        else {
            "id": str(w.id),
            "state": w.state,
            "draining": w.draining,
            "job_id": str(w.current_job_id) if w.current_job_id else None,
            "idle_s": round((now - w.idle_since).total_seconds(), 1) if w.idle_since else None,
            "heartbeat_age_s": round((now - w.last_heartbeat_at).total_seconds(), 1),
        },
    }


class Scaler:
    def __init__(
        self,
        settings: Settings,
        provider: Provider,
        *,
        database_url: str | None = None,
        clock: Clock | None = None,
        conn: Connection | None = None,
    ) -> None:
        self.settings = settings
        self.provider = provider
        self.url = database_url or settings.require_database_url()
        # every run on this one connection (a test replaying a day of runs); else each its own
        self.conn = conn
        self.clock = clock or SystemClock()
        self.queue = Queue(self.clock)
        self.log = get_logger(provider=provider.name)
        self.actor = Actor(settings, provider, self.queue, self.log)

    # --- inputs ---------------------------------------------------------------------------
    def gather(
        self,
        conn: Connection,
        machines: list[Machine],
        *,
        record: bool,
        seen_at: datetime | None = None,
    ) -> Inputs:
        records: list[tuple[str, str, datetime]] = []
        released: list[Reaped] = []
        if record:
            records = self.queue.reconcile_machines(
                conn,
                provider=self.provider.name,
                machines=[
                    MachineReport(
                        m.id,
                        m.size,
                        m.hourly_usd,
                        m.billed,
                        m.state_since,
                        stopped_hourly_usd=m.stopped_hourly_usd,
                        parked=m.state in ("stopped", "failed"),
                    )
                    for m in machines
                ],
            )
            released = self.release_dead(conn, machines, records, seen_at or self.clock.now())
        workers = self.queue.fleet_workers(conn, [m.id for m in machines])
        history = self.queue.scale_history(conn)
        fleet = Fleet(
            machines=tuple(FleetMachine(m, workers.get(m.id)) for m in machines),
            create_size=self.provider.create_size,
            create_hourly_usd=self.provider.create_price().running,
            last_scale_up_at=history.last_scale_up_at,
            last_scale_down_at=history.last_scale_down_at,
        )
        return Inputs(
            backlog=Backlog(tuple(self.queue.backlog(conn))),
            fleet=fleet,
            spend=self.queue.spend(conn),
            now=self.clock.now(),
            records=records,
            released=released,
        )

    def release_dead(
        self,
        conn: Connection,
        machines: list[Machine],
        records: list[tuple[str, str, datetime]],
        seen_at: datetime,
    ) -> list[Reaped]:
        """Machines reported stopped, failed or gone (or gone from the list): their workers are
        dead, so their jobs go back to the queue now rather than when the lease runs out. So are
        the workers of a machine's earlier boot (registered before its current one began)."""
        gone = ("stopped", "failed", "gone")
        down = {m.id: seen_at for m in machines if m.state in gone}
        down |= {mid: seen_at for change, mid, _ in records if change == "closed"}
        rebooted = {  # when the provider says its current boot began (never guessed)
            m.id: m.booted_at - REBOOT_CLOCK_SKEW
            for m in machines
            if m.state not in gone and m.booted_at is not None
        }
        released = self.queue.release_dead_workers(
            conn, down, rebooted=rebooted, backoff_base=self.settings.backoff_base
        )
        for item in released:
            self.log.info(
                "scaler_released_dead_worker_job",
                job_id=str(item.job_id),
                worker_id=str(item.worker_id),
                status=item.status,
                attempts=item.attempts,
            )
        return released

    def preview(self) -> tuple[Plan, Inputs]:
        """The plan for now, from the same inputs, acting on nothing and recording nothing."""
        with self._connect("stemfleet-scaler-plan") as conn:
            inputs = self.gather(conn, self.provider.list(), record=False)
        return self._plan(inputs), inputs

    def _plan(self, inputs: Inputs) -> Plan:
        return make_plan(inputs.backlog, inputs.fleet, inputs.spend, self.settings, inputs.now)

    def _connect(self, application_name: str) -> AbstractContextManager[Connection]:
        if self.conn is not None:
            return nullcontext(self.conn)
        return connect(self.url, application_name=application_name)

    # --- one run --------------------------------------------------------------------------
    def run_once(self, *, dry_run: bool = False, wait: float = 0.0) -> RunOutcome:
        started = self.clock.now()
        with self._connect("stemfleet-scaler") as conn:
            if not self.queue.try_scaler_lock(conn):
                self.log.info("scaler_locked_out")
                return RunOutcome(acted=False, message=LOCKED_MESSAGE)
            try:
                return self._locked_run(conn, started, dry_run=dry_run, wait=wait)
            finally:
                self.queue.release_scaler_lock(conn)

    def _locked_run(
        self, conn: Connection, started: datetime, *, dry_run: bool, wait: float
    ) -> RunOutcome:
        errors: list[dict[str, Any]] = []
        reaped = (
            0 if dry_run else len(self.queue.reap(conn, backoff_base=self.settings.backoff_base))
        )
        try:
            machines = self.provider.list()
        except ProviderError as exc:
            errors.append({"stage": "list", "kind": exc.kind, "error": str(exc)})
            self.log.error("scaler_list_failed", kind=exc.kind, error=str(exc))
            run = self.queue.record_run(
                conn,
                provider=self.provider.name,
                started_at=started,
                inputs={"reaped": reaped, "settings": settings_json(self.settings)},
                plan={},
                actions=[],
                errors=errors,
                dry_run=dry_run,
            )
            return RunOutcome(
                acted=True,
                message=f"could not list machines: {exc}",
                errors=errors,
                run_id=run.id,
            )
        inputs = self.gather(conn, machines, record=not dry_run, seen_at=started)
        inputs.reaped = reaped
        plan = self._plan(inputs)
        for machine_id in plan.stuck:
            self.log.warning("scaler_machine_stuck", machine_id=machine_id)
        results = [] if dry_run else self.actor.act(conn, plan)
        for result in results:
            if not result.ok and result.error_kind:
                errors.append(
                    {
                        "stage": result.action.kind,
                        "machine_id": result.machine_id or result.action.machine_id,
                        "kind": result.error_kind,
                        "error": result.detail,
                    }
                )
        if wait > 0 and results:
            self.actor.wait_for(results, wait)
        run = self.queue.record_run(
            conn,
            provider=self.provider.name,
            started_at=started,
            inputs=inputs.as_json(self.settings),
            plan=plan.as_json(),
            actions=[r.as_json() for r in results],
            errors=errors,
            dry_run=dry_run,
        )
        done = sum(r.ok for r in results)
        # an idle run (nothing to do, nothing failed) logs at debug: the loop runs every few s
        log = self.log.info if results or errors else self.log.debug
        log(
            "scaler_run",
            run_id=run.id,
            actions=len(results),
            ok=done,
            errors=len(errors),
            queued=inputs.backlog.queued,
            capacity=plan.capacity,
            target=plan.target,
        )
        return RunOutcome(
            acted=True,
            message=f"run {run.id}: {done} of {len(results)} actions done, {len(errors)} errors",
            plan=plan,
            results=results,
            errors=errors,
            run_id=run.id,
        )
