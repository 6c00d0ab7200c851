"""What the policy concludes about each machine before deciding anything (pure, no I/O).

`see(fleet, settings, now)` sorts the provider's machines into slots (billed machines and the
role of their worker), machines to start, failed machines to destroy, and the stopped machines'
rate; a worker row from before a machine's current boot is ignored whatever its state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from app.queue import Worker
from app.settings import Settings
from scaler.model import Fleet, FleetMachine, Machine


def hourly_price(settings: Settings, size: str) -> float:
    """A size's price; an unknown size is priced as the configured machine size."""
    prices = settings.machine_prices
    return prices.get(size, prices[settings.machine_size])


def fmt_duration(seconds: float) -> str:
    """90 -> '1m30s', 600 -> '10m', 3900 -> '1h05m'."""
    whole = max(0, round(seconds))
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s" if whole % 60 else f"{whole // 60}m"
    return f"{whole // 3600}h{(whole % 3600) // 60:02d}m"


def age(since: datetime | None, now: datetime) -> float:
    return (now - since).total_seconds() if since is not None else 0.0


def shown(machine: Machine) -> str:
    """The machine's state for people: the provider's own name when it differs."""
    own = machine.provider_state
    return machine.state if not own or own == machine.state else f"{machine.state} ({own})"


def before_boot(worker: Worker, machine: Machine) -> bool:
    """A worker row from before the machine's current boot (registered and last heard from
    before it) belongs to no worker of this boot, whatever its state. Both times must be
    before the boot, so a live worker of this boot survives clock skew (its heartbeats move on)."""
    boot = machine.boot
    return boot is not None and worker.started_at < boot and worker.last_heartbeat_at < boot


@dataclass
class Slot:
    """A billed machine and what the policy concluded about it."""

    fm: FleetMachine
    role: str  # booting | idle | busy | draining_idle | draining_busy | stuck | lost | exited
    note: str = ""

    @property
    def machine(self) -> Machine:
        return self.fm.machine

    @property
    def holds_job(self) -> bool:
        worker = self.fm.worker
        return worker is not None and (worker.current_job_id is not None or worker.state == "busy")

    @property
    def capacity(self) -> bool:
        return self.role in ("booting", "idle", "busy")


@dataclass
class Seen:
    slots: list[Slot] = field(default_factory=list)  # billed machines, by id
    startable: list[Machine] = field(default_factory=list)  # stopped: may start again
    failed: list[Machine] = field(default_factory=list)  # cannot come back: destroy
    stuck: list[str] = field(default_factory=list)  # ids stuck in a transient state
    notes: list[str] = field(default_factory=list)
    parked_usd: float = 0.0  # stopped and failed machines' rate (e.g. their disks)


def see(fleet: Fleet, settings: Settings, now: datetime) -> Seen:
    seen = Seen()
    timeout = settings.transient_timeout
    for fm in fleet.sorted():
        machine, worker = fm.machine, fm.worker
        if machine.state == "gone":
            continue
        seen.parked_usd += 0.0 if machine.billed else machine.stopped_hourly_usd
        if machine.state == "failed":
            seen.failed.append(machine)
            continue
        if machine.state == "stopped":
            seen.startable.append(machine)
            continue
        since = age(machine.state_since, now)
        if machine.state == "stopping":
            if since > timeout:
                seen.stuck.append(machine.id)
                seen.notes.append(
                    f"machine {machine.id} stuck in {shown(machine)} for {fmt_duration(since)}"
                )
            seen.slots.append(Slot(fm, "going_down"))
            continue
        if worker is not None and before_boot(worker, machine):
            worker = None  # a row of an earlier boot: no worker of this boot registered yet
            fm = FleetMachine(machine)
        if worker is not None and worker.state == "stopped":
            seen.slots.append(Slot(fm, "exited", "its worker exited"))
            continue
        if worker is None or (machine.state == "starting" and worker.state not in ("idle", "busy")):
            if since > timeout:
                what = (
                    f"stuck in {shown(machine)}"
                    if machine.state == "starting"
                    else "no worker registered"
                )
                seen.stuck.append(machine.id)
                seen.notes.append(f"machine {machine.id} {what} for {fmt_duration(since)}")
                seen.slots.append(Slot(fm, "stuck", f"{what} for {fmt_duration(since)}"))
            else:
                seen.slots.append(Slot(fm, "booting"))
            continue
        silent = age(worker.last_heartbeat_at, now)
        if worker.state == "lost" or silent > timeout:
            seen.notes.append(
                f"machine {machine.id}: worker {worker.id} lost, no heartbeat for "
                f"{fmt_duration(silent)}"
            )
            seen.slots.append(
                Slot(fm, "lost", f"worker lost, no heartbeat for {fmt_duration(silent)}")
            )
            continue
        busy = worker.current_job_id is not None or worker.state == "busy"
        if worker.draining:
            seen.slots.append(Slot(fm, "draining_busy" if busy else "draining_idle"))
        else:
            seen.slots.append(Slot(fm, "busy" if busy else "idle"))
    return seen
