"""Carrying out a plan: each action through the provider, recorded; a failure is recorded with
its kind, never raised. A create is sent under a name of its own and never twice; a start
refused for lack of capacity is replaced (destroy + create) within the same ceilings."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from app.db import Connection
from app.errors import QueueError
from app.queue import Queue
from app.settings import Settings
from scaler.model import Action, MachineState, Plan
from scaler.providers.base import Provider, ProviderError

# A create failing so ends the creates of this run (a later run tries again).
ENDS_CREATES = {
    "capacity": "the provider had no capacity",
    "no_balance": "the provider account has no balance",
    "config": "the provider refused the machine configuration",
    "over_ceiling": "no machine the provider could make fits the ceilings",
    "unknown_outcome": "a create's answer was lost",
}


@dataclass
class ActionResult:
    action: Action
    ok: bool
    detail: str = ""
    machine_id: str | None = None  # the created machine's id for a create
    error_kind: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            **self.action.as_json(),
            "machine_id": self.machine_id or self.action.machine_id,
            "ok": self.ok,
            "detail": self.detail,
            "error_kind": self.error_kind,
        }


class Actor:
    def __init__(self, settings: Settings, provider: Provider, queue: Queue, log: Any) -> None:
        self.settings, self.provider, self.queue, self.log = settings, provider, queue, log
        self._committed = 0.0  # the fleet's $/h while acting on a plan

    def act(self, conn: Connection, plan: Plan) -> list[ActionResult]:
        results: list[ActionResult] = []
        no_capacity: str | None = None  # why creates end for this run
        # The fleet's rate as the plan left it, corrected by what creates really cost: a create
        # may cost at most what is left under max_hourly_usd.
        self._committed = plan.hourly_usd_after
        for action in plan.actions:
            if action.kind == "create" and no_capacity:
                results.append(ActionResult(action, False, f"skipped: {no_capacity}"))
                continue
            try:
                results.append(self._do(conn, action))
            except ProviderError as exc:
                self.log.warning(
                    "scaler_action_failed",
                    action=action.kind,
                    machine_id=action.machine_id,
                    kind=exc.kind,
                    error=str(exc),
                )
                results.append(ActionResult(action, False, str(exc), error_kind=exc.kind))
                if action.kind == "create" and exc.kind in ENDS_CREATES:
                    no_capacity = f"{ENDS_CREATES[exc.kind]} ({exc})"
                if action.kind == "start" and exc.kind == "capacity":
                    results.extend(self._replace(conn, action))
            except QueueError as exc:
                results.append(ActionResult(action, False, str(exc), error_kind="queue"))
        return results

    def _create(self, conn: Connection, action: Action, room_usd: float) -> ActionResult:
        """One planned create, under a name of its own: never sent twice (see base.Provider)."""
        name = f"stemfleet-worker-{uuid.uuid4().hex[:12]}"
        machine = self.provider.create(name, room_usd)
        self._committed += machine.hourly_usd - action.hourly_usd
        self.queue.machine_started(
            conn,
            provider=self.provider.name,
            machine_id=machine.id,
            size=machine.size,
            hourly_usd=machine.hourly_usd,
        )
        return ActionResult(action, True, f"created {machine.id} ({name})", machine_id=machine.id)

    def _room(self, expected_usd: float) -> float:
        """The most a create planned at `expected_usd` may cost under max_hourly_usd."""
        return self.settings.max_hourly_usd - (self._committed - expected_usd)

    def _replace(self, conn: Connection, start: Action) -> list[ActionResult]:
        """A stopped machine that cannot start for lack of capacity: destroy it and create a
        new one in its place (within the same ceilings), instead of retrying it every run."""
        assert start.machine_id is not None
        destroy = Action(
            "destroy",
            f"machine {start.machine_id} cannot start for lack of capacity: replacing it",
            "repair",
            machine_id=start.machine_id,
            size=start.size,
        )
        create = Action(
            "create",
            f"replacing machine {start.machine_id} (no capacity to start it)",
            "up",
            size=self.provider.create_size,
            hourly_usd=self.provider.create_price().running,
        )
        results = []
        for action in (destroy, create):
            try:
                if action.kind == "destroy":
                    self.provider.destroy(start.machine_id)
                    results.append(ActionResult(action, True, "destroyed"))
                else:
                    room = self._room(start.hourly_usd)
                    results.append(self._create(conn, action, room))
            except ProviderError as exc:
                self.log.warning("scaler_replace_failed", action=action.kind, error=str(exc))
                results.append(ActionResult(action, False, str(exc), error_kind=exc.kind))
                break
        return results

    def _do(self, conn: Connection, action: Action) -> ActionResult:
        name = self.provider.name
        if action.kind in ("drain", "undrain"):
            assert action.worker_id is not None
            worker = self.queue.drain_worker(conn, action.worker_id, action.kind == "drain")
            return ActionResult(action, True, f"worker {worker.id} draining={worker.draining}")
        if action.kind == "stop":
            assert action.machine_id is not None
            if action.worker_id is not None:
                worker = self.queue.get_worker(conn, action.worker_id)
                if worker.current_job_id is not None or worker.state == "busy":
                    return ActionResult(
                        action, False, f"not stopped: worker {worker.id} took a job meanwhile"
                    )
            self.provider.stop(action.machine_id)
            self.queue.machine_stop_requested(
                conn, provider=name, machine_id=action.machine_id, reason=action.reason
            )
            return ActionResult(action, True, "stop requested")
        if action.kind == "destroy":
            assert action.machine_id is not None
            self.provider.destroy(action.machine_id)
            return ActionResult(action, True, "destroyed")
        if action.kind == "start":
            assert action.machine_id is not None
            self.provider.start(action.machine_id)
            self.queue.machine_started(
                conn,
                provider=name,
                machine_id=action.machine_id,
                size=action.size or self.provider.create_size,
                hourly_usd=action.hourly_usd,
            )
            return ActionResult(action, True, "start requested")
        return self._create(conn, action, self._room(action.hourly_usd))

    def wait_for(self, results: list[ActionResult], timeout: float) -> None:
        """After acting, wait (bounded) for started / stopped machines to get there; the outcome
        is added to each result's detail."""
        for result in results:
            if not result.ok or result.action.kind not in ("start", "create", "stop"):
                continue
            machine_id = result.machine_id or result.action.machine_id
            assert machine_id is not None
            state: MachineState = "stopped" if result.action.kind == "stop" else "started"
            try:
                reached = self.provider.wait(machine_id, state, timeout)
            except ProviderError as exc:
                result.detail += f"; wait failed: {exc}"
                continue
            result.detail += f"; {state}" if reached else f"; not {state} within {timeout:g}s"
