"""What the policy sees and what it returns: plain frozen dataclasses, no I/O."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from app.queue import Worker
from app.queue.fleet import BacklogGroup, SpendSoFar

# The interface's machine states (documented in scaler/providers/base.py): every provider maps
# its own states onto these; the policy sees nothing else.
MachineState = Literal["starting", "started", "stopping", "stopped", "failed", "gone"]

# What the policy returns: an action of one of these kinds, taken to scale up, down or repair.
ActionKind = Literal["start", "create", "undrain", "drain", "stop", "destroy"]
Direction = Literal["up", "down", "repair"]


@dataclass(frozen=True, slots=True)
class Machine:
    """One machine as its provider reports it, in the interface's terms."""

    id: str
    state: str  # a MachineState (typed str so plain strings from simulators need no cast)
    size: str
    hourly_usd: float  # while billed (starting, started, stopping)
    state_since: datetime | None = None  # when it entered `state`, if the provider says
    region: str | None = None
    stopped_hourly_usd: float = 0.0  # while stopped or failed (e.g. its disk)
    booted_at: datetime | None = None  # when its current boot began (start or create request)
    provider_state: str | None = None  # the provider's own name for the state, for people
    name: str | None = None  # the name given at create, if the provider keeps names

    @property
    def billed(self) -> bool:
        """Starting, started or stopping: billed at the running price, counts toward the
        ceilings as a machine."""
        return self.state not in ("stopped", "failed", "gone")

    @property
    def startable(self) -> bool:
        return self.state == "stopped"

    @property
    def rate_usd(self) -> float:
        """What it costs per hour in its state now."""
        if self.state == "gone":
            return 0.0
        return self.hourly_usd if self.billed else self.stopped_hourly_usd

    @property
    def boot(self) -> datetime | None:
        """When its current boot began: a worker row from before it belongs to an earlier boot."""
        if self.booted_at is not None:
            return self.booted_at
        return self.state_since if self.state in ("starting", "started") else None


@dataclass(frozen=True, slots=True)
class FleetMachine:
    machine: Machine
    worker: Worker | None = None  # the newest worker registered with this machine id


@dataclass(frozen=True, slots=True)
class Fleet:
    machines: tuple[FleetMachine, ...]
    create_size: str  # what the provider creates when asked for a new machine
    last_scale_up_at: datetime | None = None
    last_scale_down_at: datetime | None = None
    create_hourly_usd: float | None = None  # the provider's price for a create; None: by size

    def sorted(self) -> list[FleetMachine]:
        return sorted(self.machines, key=lambda fm: fm.machine.id)


@dataclass(frozen=True, slots=True)
class Backlog:
    groups: tuple[BacklogGroup, ...] = ()

    @property
    def queued(self) -> int:
        return sum(g.queued for g in self.groups)

    @property
    def queued_previews(self) -> int:
        return sum(g.queued for g in self.groups if g.kind == "preview")

    @property
    def delayed(self) -> int:
        return sum(g.delayed for g in self.groups)

    @property
    def running(self) -> int:
        return sum(g.running for g in self.groups)

    @property
    def oldest_queued_at(self) -> datetime | None:
        times = [g.oldest_queued_at for g in self.groups if g.oldest_queued_at is not None]
        return min(times) if times else None

    def weighted(self, preview_weight: float) -> float:
        """Queued jobs, a preview counting as `preview_weight` jobs so that previews start
        promptly."""
        previews = self.queued_previews
        return (self.queued - previews) + preview_weight * previews

    @classmethod
    def of(
        cls,
        *,
        separate: int = 0,
        preview: int = 0,
        running: int = 0,
        delayed: int = 0,
        oldest: datetime | None = None,
    ) -> Backlog:
        """A backlog from plain counts (the simulator, tests)."""
        groups = []
        if separate or running or delayed:
            groups.append(BacklogGroup("separate", 0, separate, delayed, running, oldest))
        if preview:
            groups.append(BacklogGroup("preview", 10, preview, 0, 0, oldest))
        return cls(tuple(groups))

    def as_json(self, now: datetime) -> dict[str, Any]:
        oldest = self.oldest_queued_at
        return {
            "queued": self.queued,
            "queued_previews": self.queued_previews,
            "delayed": self.delayed,
            "running": self.running,
            "oldest_wait_s": round((now - oldest).total_seconds(), 1) if oldest else None,
            "groups": [
                {
                    "kind": g.kind,
                    "priority": g.priority,
                    "queued": g.queued,
                    "delayed": g.delayed,
                    "running": g.running,
                }
                for g in self.groups
            ],
        }


Spend = SpendSoFar


@dataclass(frozen=True, slots=True)
class Action:
    kind: ActionKind
    reason: str
    direction: Direction
    machine_id: str | None = None  # None for create
    worker_id: UUID | None = None
    size: str | None = None
    hourly_usd: float = 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "direction": self.direction,
            "machine_id": self.machine_id,
            "worker_id": str(self.worker_id) if self.worker_id else None,
            "size": self.size,
            "hourly_usd": self.hourly_usd,
            "reason": self.reason,
        }


@dataclass(frozen=True, slots=True)
class Plan:
    at: datetime
    actions: tuple[Action, ...]
    notes: tuple[str, ...]
    billed: int  # machines counted toward the ceilings before the plan
    capacity: int  # machines that run (or are booting) a worker that may take jobs
    target: int  # capacity the plan aims for
    hourly_usd: float  # fleet rate before the plan
    hourly_usd_after: float  # worst case right after it: starts added, stops not yet done
    budget_exhausted: bool = False
    stuck: tuple[str, ...] = field(default=())  # machine ids stuck in a transient state

    def of_kind(self, *kinds: ActionKind) -> list[Action]:
        return [a for a in self.actions if a.kind in kinds]

    @property
    def starts(self) -> list[Action]:
        return self.of_kind("start", "create")

    def as_json(self) -> dict[str, Any]:
        return {
            "at": self.at.isoformat(),
            "billed": self.billed,
            "capacity": self.capacity,
            "target": self.target,
            "hourly_usd": round(self.hourly_usd, 6),
            "hourly_usd_after": round(self.hourly_usd_after, 6),
            "budget_exhausted": self.budget_exhausted,
            "stuck": list(self.stuck),
            "notes": list(self.notes),
            "actions": [a.as_json() for a in self.actions],
        }
