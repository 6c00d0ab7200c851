"""The scaling policy: a pure function from what the scaler sees to what it should do.

`plan(backlog, fleet, spend, settings, now)` never does I/O and is deterministic (machines are
taken in id order), so `scaler plan`, `scaler once` and the simulator all run the same code.
Every action carries a reason. The rules, in the order they apply (scaler/README.md):

1. Budgets reached: nothing starts, every worker is drained, drained idle machines stop.
2. Ceilings: `max_machines` and `max_hourly_usd` count every billed machine (starting, started,
   stopping, draining ones too) and stopped machines at their stopped price. A start must fit
   both and leave the budgets room for `budget_lookahead`. A fleet over a ceiling is drained
   back under it, and no draining worker is taken back while it is over.
3. Scale up: the floor; step rules on the weighted backlog; queued work with no worker; not
   within `scale_up_cooldown`. Undrain, then start a stopped machine, then create.
4. Scale down, only with nothing runnable queued: idle workers drained, stopped once seen idle.
   A machine whose worker holds a job is never stopped.
5. Repairs: failed machines are destroyed; a machine stuck in a transient state, whose worker
   exited or was lost, is stopped if it holds no job (scaler/seeing.py says which is which).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from app.settings import Settings
from scaler.model import Action, ActionKind, Backlog, Direction, Fleet, Machine, Plan, Spend
from scaler.seeing import Slot, age, fmt_duration, hourly_price, see, shown

__all__ = ["fmt_duration", "hourly_price", "plan"]

_EPS = 1e-9


def on_slot(kind: ActionKind, reason: str, direction: Direction, slot: Slot) -> Action:
    """An action on the machine of `slot` (and its worker, where it has one)."""
    worker = slot.fm.worker
    return Action(
        kind,
        reason,
        direction,
        machine_id=slot.machine.id,
        worker_id=worker.id if worker else None,
        size=slot.machine.size,
        hourly_usd=slot.machine.hourly_usd,
    )


@dataclass
class _Planner:
    backlog: Backlog
    fleet: Fleet
    spend: Spend
    settings: Settings
    now: datetime
    actions: list[Action] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    slots: list[Slot] = field(default_factory=list)
    startable: list[Machine] = field(default_factory=list)
    stuck: list[str] = field(default_factory=list)
    stopping: set[str] = field(default_factory=set)
    failed: list[Machine] = field(default_factory=list)
    parked_usd: float = 0.0  # stopped and failed machines' rate (e.g. their disks)
    added_usd: float = 0.0  # what the plan's starts and creates add to the rate

    # --- seeing ---------------------------------------------------------------------------
    def classify(self) -> None:
        seen = see(self.fleet, self.settings, self.now)
        self.slots, self.startable, self.failed = seen.slots, seen.startable, seen.failed
        self.stuck, self.parked_usd = seen.stuck, seen.parked_usd
        self.notes.extend(seen.notes)

    @property
    def capacity(self) -> list[Slot]:
        return [s for s in self.slots if s.capacity]

    def hourly(self) -> float:
        """The fleet's rate now: billed machines at their running price, stopped and failed ones
        at their stopped price."""
        return sum(s.machine.hourly_usd for s in self.slots) + self.parked_usd

    # --- acting ---------------------------------------------------------------------------
    def add(self, action: Action) -> None:
        self.actions.append(action)
        if action.kind == "stop" and action.machine_id:
            self.stopping.add(action.machine_id)

    def stop(self, slot: Slot, reason: str, direction: Direction) -> None:
        if slot.holds_job or slot.machine.id in self.stopping:
            return
        self.add(on_slot("stop", reason, direction, slot))

    def drain(self, slot: Slot, reason: str) -> None:
        assert slot.fm.worker is not None
        self.add(on_slot("drain", reason, "down", slot))
        slot.role = "draining_busy" if slot.role == "busy" else "draining_idle"

    def repairs(self) -> None:
        for machine in self.failed:
            self.add(
                Action(
                    "destroy",
                    f"machine {machine.id} is {shown(machine)}: it cannot come back",
                    "repair",
                    machine_id=machine.id,
                    size=machine.size,
                    hourly_usd=machine.stopped_hourly_usd,
                )
            )
        for slot in self.slots:
            if slot.role in ("stuck", "lost", "exited"):
                if (
                    slot.role == "lost"
                    and age(slot.fm.worker.last_heartbeat_at if slot.fm.worker else None, self.now)
                    <= self.settings.transient_timeout
                ):
                    continue  # reaped or slow: give it the transient timeout to come back
                self.stop(slot, slot.note, "repair")

    def budget_exhausted(self) -> str | None:
        s, rate_h = self.settings, self.hourly() * self.settings.scaler_interval / 3600
        if self.spend.today_usd + rate_h >= s.daily_budget_usd:
            return (
                f"daily budget reached: ${self.spend.today_usd:.2f} spent of "
                f"${s.daily_budget_usd:.2f}"
            )
        if self.spend.month_usd + rate_h >= s.monthly_budget_usd:
            return (
                f"monthly budget reached: ${self.spend.month_usd:.2f} spent of "
                f"${s.monthly_budget_usd:.2f}"
            )
        return None

    def wind_down(self, why: str) -> None:
        """Budget spent: no starts, drain everyone, stop what holds no job."""
        for slot in self.slots:
            if slot.role in ("idle", "busy"):
                self.drain(slot, f"{why}: draining (a running job may finish)")
            elif slot.role == "booting":
                self.stop(slot, f"{why}: stopping a machine that holds no job", "down")

    def shed_excess(self) -> bool:
        """Bring a fleet that is over max_machines or max_hourly_usd back under them. Draining
        workers are billed until their machines stop: they count, and are shed first (nothing
        more to do for them). Returns whether the fleet was over a ceiling."""
        s = self.settings
        shedding = ("draining_idle", "draining_busy")
        staying = [x for x in self.slots if x.role in ("booting", "idle", "busy", *shedding)]
        staying += [
            x
            for x in self.slots
            if x.role in ("stuck", "lost", "exited") and x.machine.id not in self.stopping
        ]
        over = False
        order = {
            "draining_idle": 0,
            "draining_busy": 0,
            "booting": 1,
            "stuck": 1,
            "exited": 1,
            "lost": 2,
            "idle": 3,
            "busy": 4,
        }
        for slot in sorted(staying, key=lambda x: (order[x.role], x.machine.id)):
            count = len(staying)
            rate = sum(x.machine.hourly_usd for x in staying) + self.parked_usd
            if count <= s.max_machines and rate <= s.max_hourly_usd + _EPS:
                break
            over = True
            why = (
                f"over max_machines ({count} > {s.max_machines})"
                if count > s.max_machines
                else f"over max_hourly_usd (${rate:.4f}/h > ${s.max_hourly_usd:.4f}/h)"
            )
            if slot.role in ("idle", "busy"):
                self.drain(slot, f"{why}: draining")
            elif slot.role not in shedding and not slot.holds_job:
                self.stop(slot, f"{why}: stopping a machine that holds no job", "down")
            staying.remove(slot)
        return over

    def over_ceiling(self) -> str | None:
        """Why the billed fleet is over a ceiling now, or None: then no worker is taken back."""
        s, billed, rate = self.settings, len(self.slots), self.hourly()
        if billed > s.max_machines:
            return f"max_machines {s.max_machines}: {billed} billed"
        if rate > s.max_hourly_usd + _EPS:
            return f"max_hourly_usd ${s.max_hourly_usd:.4f}/h: ${rate:.4f}/h billed"
        return None

    def scale_up(self) -> int:
        """Returns how many machines were added (undrained, started or created)."""
        s, backlog = self.settings, self.backlog
        capacity = len(self.capacity)
        free = sum(1 for x in self.capacity if x.role in ("idle", "booting"))
        weighted = backlog.weighted(s.preview_weight)
        want, reasons = 0, []
        for threshold, add in s.rules:
            if weighted > threshold and add >= want:
                want = add
                reasons = [
                    f"backlog {backlog.queued} queued (weighted {weighted:g}) > {threshold}: +{add}"
                ]
        if backlog.queued > 0 and capacity == 0 and want < 1:
            want, reasons = 1, [f"{backlog.queued} queued and no worker"]
        if backlog.queued_previews > 0 and free == 0 and want < 1:
            want, reasons = 1, [f"{backlog.queued_previews} preview(s) queued and no idle worker"]
        if want and self.fleet.last_scale_up_at is not None:
            left = s.scale_up_cooldown - age(self.fleet.last_scale_up_at, self.now)
            if left > 0:
                self.notes.append(
                    f"scale-up cooldown: {fmt_duration(left)} left ({'; '.join(reasons)})"
                )
                want, reasons = 0, []
        floor = max(0, s.min_machines - capacity)
        if floor > want:
            want, reasons = floor, [f"floor: min_machines {s.min_machines}, capacity {capacity}"]
        if want <= 0:
            return 0
        reason = "; ".join(reasons)
        added = 0
        over = self.over_ceiling()
        if over:
            self.notes.append(f"not taking draining workers back ({reason}): {over}")
        for slot in (
            []
            if over
            else sorted(
                (x for x in self.slots if x.role in ("draining_idle", "draining_busy")),
                key=lambda x: (x.role != "draining_idle", x.machine.id),
            )
        ):
            if added == want:
                break
            assert slot.fm.worker is not None
            self.add(on_slot("undrain", f"{reason}: taking back a draining worker", "up", slot))
            slot.role = "idle" if slot.role == "draining_idle" else "busy"
            added += 1
        billed = len(self.slots)
        rate = self.hourly()
        candidates = iter(self.startable)
        create_price = self.fleet.create_hourly_usd
        if create_price is None:
            create_price = hourly_price(s, self.fleet.create_size)
        while added < want:
            machine = next(candidates, None)
            price = machine.hourly_usd if machine else create_price
            adds = price - machine.stopped_hourly_usd if machine else price
            blocked = self.ceiling(billed, rate, adds)
            if blocked:
                self.notes.append(f"not starting more ({reason}): {blocked}")
                break
            if machine is not None:
                self.add(
                    Action(
                        "start",
                        f"{reason}: starting a stopped machine",
                        "up",
                        machine_id=machine.id,
                        size=machine.size,
                        hourly_usd=price,
                    )
                )
            else:
                self.add(
                    Action(
                        "create",
                        f"{reason}: creating a machine (none stopped)",
                        "up",
                        size=self.fleet.create_size,
                        hourly_usd=price,
                    )
                )
            billed += 1
            rate += adds
            self.added_usd += adds
            added += 1
        return added

    def ceiling(self, billed: int, rate: float, price: float) -> str | None:
        """Why one more machine at `price` would cross a ceiling, or None."""
        s = self.settings
        if billed + 1 > s.max_machines:
            return f"max_machines {s.max_machines} reached ({billed} billed)"
        if rate + price > s.max_hourly_usd + _EPS:
            return (
                f"max_hourly_usd ${s.max_hourly_usd:.4f}/h: ${rate:.4f}/h now, "
                f"+${price:.4f}/h would cross it"
            )
        ahead_h = s.budget_lookahead / 3600
        projected = (rate + price) * ahead_h
        if self.spend.today_usd + projected > s.daily_budget_usd + _EPS:
            return (
                f"daily budget ${s.daily_budget_usd:.2f}: ${self.spend.today_usd:.2f} spent, "
                f"${projected:.2f} more over the next {fmt_duration(s.budget_lookahead)} "
                "would cross it"
            )
        if self.spend.month_usd + projected > s.monthly_budget_usd + _EPS:
            return (
                f"monthly budget ${s.monthly_budget_usd:.2f}: ${self.spend.month_usd:.2f} "
                f"spent, ${projected:.2f} more over the next "
                f"{fmt_duration(s.budget_lookahead)} would cross it"
            )
        return None

    def scale_down(self) -> None:
        s = self.settings
        if self.backlog.queued > 0:
            return
        idle_long = [
            x
            for x in self.slots
            if x.role == "idle"
            and x.fm.worker is not None
            and age(x.fm.worker.idle_since, self.now) >= s.scale_down_idle
        ]
        removable = len(self.capacity) - s.min_machines
        if not idle_long or removable <= 0:
            return
        if self.fleet.last_scale_down_at is not None:
            left = s.scale_down_cooldown - age(self.fleet.last_scale_down_at, self.now)
            if left > 0:
                self.notes.append(f"scale-down cooldown: {fmt_duration(left)} left")
                return
        for slot in idle_long[:removable]:
            assert slot.fm.worker is not None
            idle = age(slot.fm.worker.idle_since, self.now)
            self.drain(
                slot,
                f"idle {fmt_duration(idle)} >= scale_down_idle "
                f"{fmt_duration(s.scale_down_idle)}: draining, stop once seen idle",
            )

    def stop_drained(self, reason: str) -> None:
        """Workers drained by an earlier run and seen idle now: stop their machines. One drained
        in this run waits for the next, so a claim racing the drain has long committed."""
        drained_now = {a.machine_id for a in self.actions if a.kind == "drain"}
        for slot in self.slots:
            if slot.role == "draining_idle" and slot.machine.id not in drained_now:
                self.stop(slot, reason, "down")

    # --- the plan -------------------------------------------------------------------------
    def run(self) -> Plan:
        self.classify()
        capacity_before = len(self.capacity)
        hourly_before = self.hourly()
        self.repairs()
        exhausted = self.budget_exhausted()
        if exhausted:
            self.notes.append(exhausted)
            self.wind_down(exhausted)
        elif not self.shed_excess() and self.scale_up() == 0:
            self.scale_down()
        self.stop_drained(f"{exhausted}: drained and idle" if exhausted else "drained and idle")
        order = {"destroy": 0, "stop": 0, "drain": 1, "undrain": 2, "start": 3, "create": 4}
        actions = sorted(self.actions, key=lambda a: (order[a.kind], a.machine_id or ""))
        target = len(self.capacity) + len([a for a in actions if a.kind in ("start", "create")])
        return Plan(
            at=self.now,
            actions=tuple(actions),
            notes=tuple(self.notes),
            billed=len(self.slots),
            capacity=capacity_before,
            target=target,
            hourly_usd=hourly_before,
            hourly_usd_after=hourly_before + self.added_usd,
            budget_exhausted=exhausted is not None,
            stuck=tuple(self.stuck),
        )


def plan(backlog: Backlog, fleet: Fleet, spend: Spend, settings: Settings, now: datetime) -> Plan:
    """What to do now. Pure: same inputs, same plan."""
    return _Planner(backlog, fleet, spend, settings, now).run()
