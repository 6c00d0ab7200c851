"""The fault menu. Each fault draws its details (which job, when, how long) from the run's
seeded RNG and records what it did; `FaultLog` keeps the record for the checks and figures.

- kill: SIGKILL the worker of a job that is running, at a random point mid-job (the scaler's
  floor starts a new worker, as it would after any machine loss);
- pg_restart: stop Postgres cleanly (`pg_ctl stop -m fast`), keep it down a while, start it;
- pg_crash: `pg_ctl stop -m immediate` at a random moment, then start (crash recovery);
- pg_crash_after_success: the same, the moment a job is seen to succeed: the worst time for a
  completion that is not durable yet;
- storage_fail: the storage proxy answers 500 to all or half of the requests for a while;
- storage_stall: the storage proxy holds every request for a few seconds, for a while.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from chaos.observer import JobObserver
from chaos.proxy import FaultProxy
from chaos.system import ChaosSystem

FAULTS = (
    "kill",
    "pg_restart",
    "pg_crash",
    "pg_crash_after_success",
    "storage_fail",
    "storage_stall",
)
# One deck of rounds: every fault at least once; kills (the common case) and crashes right after
# a success (a narrow window: other commits flush the WAL within milliseconds) twice.
DECK = ("kill", "pg_crash_after_success", *FAULTS)
WAIT_FOR_WORK_S = 120.0  # a fault that needs a running job (or a success) waits this long
KILL_TRIES = 5  # the job finished before the blow fell: pick another


@dataclass(frozen=True)
class Kill:
    at: float  # time.monotonic() of the SIGKILL
    job_id: uuid.UUID
    attempt: int
    worker_id: uuid.UUID
    pid: int


@dataclass
class FaultLog:
    kills: list[Kill] = field(default_factory=list)
    pg_restarts: int = 0
    pg_crashes: int = 0
    crashes_after_success: int = 0
    storage_failures: int = 0  # windows of 500s
    storage_stalls: int = 0  # windows of held requests
    skipped: list[str] = field(default_factory=list)  # faults that found nothing to hit
    last_fault_end: float = field(default_factory=time.monotonic)

    @property
    def killed_workers(self) -> set[uuid.UUID]:
        return {kill.worker_id for kill in self.kills}


class Faults:
    def __init__(self, system: ChaosSystem, rng: random.Random, log: FaultLog) -> None:
        self.system = system
        self.rng = rng
        self.log = log
        self._pause = threading.Event()  # never set: a fault's waits are part of the fault

    @property
    def observer(self) -> JobObserver:
        assert self.system.observer is not None
        return self.system.observer

    def inject(self, name: str) -> str:
        """Run fault `name`; a line saying what it did."""
        if name not in FAULTS:
            raise ValueError(f"unknown fault {name!r}: one of {', '.join(FAULTS)}")
        try:
            what: str = getattr(self, name)()
        finally:
            self.log.last_fault_end = time.monotonic()
        return what

    def kill(self) -> str:
        observer = self.observer
        for _ in range(KILL_TRIES):
            if not self._wait_for(lambda: bool(observer.running())):
                break
            job_id, seen = self.rng.choice(observer.running())
            self._pause.wait(self.rng.uniform(0.0, 0.5))  # somewhere mid-job
            now = observer.last(job_id)
            if now is None or not now.same_state(seen) or seen.worker_id is None:
                continue  # it finished meanwhile: pick again
            pid = self.system.kill_worker(seen.worker_id)
            if pid is None:
                continue
            kill = Kill(time.monotonic(), job_id, seen.attempts, seen.worker_id, pid)
            self.log.kills.append(kill)
            return f"SIGKILL worker pid {pid} running job {job_id} (attempt {seen.attempts})"
        self.log.skipped.append("kill: no job stayed running long enough to be hit")
        return "kill skipped: no job stayed running long enough"

    def pg_restart(self) -> str:
        down = self.rng.uniform(0.5, 3.0)
        self.system.restart_postgres(crash=False, down_s=down)
        self.log.pg_restarts += 1
        return f"Postgres stopped cleanly, down {down:.1f} s, started"

    def pg_crash(self) -> str:
        self._pause.wait(self.rng.uniform(0.0, 3.0))
        down = self.rng.uniform(0.5, 3.0)
        self.system.restart_postgres(crash=True, down_s=down)
        self.log.pg_crashes += 1
        return f"Postgres crashed (immediate stop), down {down:.1f} s, recovered"

    def pg_crash_after_success(self) -> str:
        observer = self.observer
        before = observer.successes
        if not self._wait_for(lambda: observer.successes > before):
            self.log.skipped.append("pg_crash_after_success: no job succeeded")
            return "crash skipped: no job succeeded"
        down = self.rng.uniform(0.5, 2.0)
        self.system.restart_postgres(crash=True, down_s=down)
        self.log.pg_crashes += 1
        self.log.crashes_after_success += 1
        return f"Postgres crashed right after a success, down {down:.1f} s, recovered"

    def _wait_for(self, predicate: Callable[[], bool]) -> bool:
        """Until `predicate()` holds (True), or every job has finished, or a long while passed."""
        observer = self.observer
        observer.wait_for(lambda: predicate() or observer.idle(), WAIT_FOR_WORK_S)
        return predicate()

    def storage_fail(self) -> str:
        rate = self.rng.choice((1.0, 0.5))
        seconds = self.rng.uniform(2.0, 8.0)
        self._storage_fault(lambda proxy: proxy.fail(rate), seconds)
        self.log.storage_failures += 1
        return f"storage answered 500 to {rate:.0%} of requests for {seconds:.1f} s"

    def storage_stall(self) -> str:
        hold = self.rng.uniform(1.0, 5.0)
        seconds = self.rng.uniform(3.0, 10.0)
        self._storage_fault(lambda proxy: proxy.stall(hold), seconds)
        self.log.storage_stalls += 1
        return f"storage held every request {hold:.1f} s for {seconds:.1f} s"

    def _storage_fault(self, begin: Callable[[FaultProxy], None], seconds: float) -> None:
        """Once a job is running (downloads and uploads under way): `begin` a fault on the
        proxy, hold it `seconds`, heal."""
        proxy = self.system.proxy
        assert proxy is not None
        self._wait_for(lambda: bool(self.observer.running()))
        begin(proxy)
        try:
            self._pause.wait(seconds)
        finally:
            proxy.heal()
