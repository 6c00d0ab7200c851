"""Local provider: each "machine" is a `stemfleet worker` process on this host (the embedded
default). Start spawns the worker, stop sends it SIGTERM (it finishes or releases its job).

State lives in files under <data_dir>/local-machines/<id>.json so that every `scaler once`
(a new process each time, e.g. from cron) sees the machines earlier runs started. A process
is recognised as the machine's by its pid and its start time (psutil), so a recycled pid is
never mistaken for a worker, and a worker command that execs again or replaces its environment
(a wrapper script) is still known. State files written before the start time was recorded fall
back to the environment (STEMFLEET_MACHINE_ID=<id>).
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil

from app.clock import Clock, SystemClock
from app.log import get_logger
from app.settings import Settings
from scaler.model import Machine, MachineState
from scaler.policy import hourly_price
from scaler.providers.base import Price, ProviderError

LOCAL_SIZE = "local"
POLL_S = 0.05


def default_command(settings: Settings) -> list[str]:
    if settings.local_worker_command.strip():
        return shlex.split(settings.local_worker_command)
    return [sys.executable, "-m", "worker"]


class LocalProvider:
    name = "local"

    def __init__(
        self,
        settings: Settings,
        *,
        root: Path | None = None,
        command: Sequence[str] | None = None,
        env: Mapping[str, str] | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.settings = settings
        self.root = root or settings.data_dir / "local-machines"
        self.root.mkdir(parents=True, exist_ok=True)
        self.command = list(command) if command else default_command(settings)
        self.env = dict(os.environ if env is None else env)
        self.clock = clock or SystemClock()
        self.create_size = (
            LOCAL_SIZE if LOCAL_SIZE in settings.machine_prices else (settings.machine_size)
        )
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        self.log = get_logger(provider="local")

    # --- state files ----------------------------------------------------------------------
    def _path(self, machine_id: str) -> Path:
        return self.root / f"{machine_id}.json"

    def _load(self, machine_id: str) -> dict[str, Any]:
        path = self._path(machine_id)
        if not path.is_file():
            raise ProviderError(
                f"no local machine {machine_id} under {self.root}", kind="not_found"
            )
        data: dict[str, Any] = json.loads(path.read_text())
        return data

    def _save(self, record: dict[str, Any]) -> None:
        path = self._path(record["id"])
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=1))
        tmp.replace(path)

    def _set_state(self, record: dict[str, Any], state: str) -> None:
        record["state"] = state
        record["state_since"] = self.clock.now().isoformat()
        self._save(record)

    # --- processes ------------------------------------------------------------------------
    def _alive(self, record: dict[str, Any]) -> bool:
        pid = record.get("pid")
        if not pid:
            return False
        child = self._children.get(record["id"])
        if child is not None and child.pid == pid:
            return child.poll() is None
        with contextlib.suppress(ChildProcessError, OSError):
            done, _ = os.waitpid(pid, os.WNOHANG)  # reap our own exited children
            if done == pid:
                return False
        try:
            process = psutil.Process(pid)
            if process.status() == psutil.STATUS_ZOMBIE:
                return False
            started = record.get("process_started")
            if started is not None:
                return bool(process.create_time() == started)
            marker = f"STEMFLEET_MACHINE_ID={record['id']}"
            return marker in (f"{k}={v}" for k, v in process.environ().items())
        except psutil.Error:
            return False

    def _spawn(self, record: dict[str, Any]) -> None:
        env = {
            **self.env,
            "STEMFLEET_MACHINE_ID": record["id"],
            "STEMFLEET_WORKER_PROVIDER": "local",
        }
        if self.settings.database_url:
            env["STEMFLEET_DATABASE_URL"] = self.settings.database_url.get_secret_value()
        log_path = self.root / f"{record['id']}.log"
        try:
            with log_path.open("ab") as log_file:
                child = subprocess.Popen(
                    self.command,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # outlives the scaler; not hit by its Ctrl-C
                )
        except OSError as exc:
            raise ProviderError(
                f"could not run the local worker {shlex.join(self.command)!r}: {exc}; set "
                "STEMFLEET_LOCAL_WORKER_COMMAND",
                kind="spawn_failed",
            ) from exc
        self._children[record["id"]] = child
        record["pid"] = child.pid
        with contextlib.suppress(psutil.Error):  # gone already: seen stopped at the next look
            record["process_started"] = psutil.Process(child.pid).create_time()
        record["log"] = str(log_path)
        record["booted_at"] = self.clock.now().isoformat()
        self._set_state(record, "started")
        self.log.info("local_worker_spawned", machine_id=record["id"], pid=child.pid)

    def _refresh(self, record: dict[str, Any]) -> dict[str, Any]:
        if record.get("state") in ("started", "stopping") and not self._alive(record):
            self._set_state(record, "stopped")
        return record

    def _machine(self, record: dict[str, Any]) -> Machine:
        size = record.get("size") or self.create_size
        since, booted = record.get("state_since"), record.get("booted_at")
        state: MachineState = "starting" if record["state"] == "created" else record["state"]
        return Machine(
            id=record["id"],
            state=state,
            size=size,
            hourly_usd=hourly_price(self.settings, size),
            state_since=datetime.fromisoformat(since) if since else None,
            region="local",
            booted_at=datetime.fromisoformat(booted) if booted else None,
            provider_state=record["state"],
            name=record.get("name"),
        )

    # --- the Provider interface -----------------------------------------------------------
    def list(self) -> list[Machine]:
        machines = []
        for path in sorted(self.root.glob("*.json")):
            try:
                record = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            machines.append(self._machine(self._refresh(record)))
        return machines

    def create_price(self) -> Price:
        return Price(hourly_price(self.settings, self.create_size))

    def create(self, name: str, max_hourly_usd: float) -> Machine:
        for machine in self.list():
            if machine.name == name:
                return machine  # made by an earlier try: adopted, never made twice
        price = self.create_price().running
        if price > max_hourly_usd + 1e-9:
            raise ProviderError(
                f"a local machine costs ${price:.4f}/h, more than the ${max_hourly_usd:.4f}/h "
                "left under the ceilings",
                kind="over_ceiling",
            )
        record: dict[str, Any] = {
            "id": f"local-{uuid.uuid4().hex[:12]}",
            "name": name,
            "size": self.create_size,
            "state": "created",
            "created_at": self.clock.now().isoformat(),
        }
        self._spawn(record)
        return self._machine(record)

    def start(self, machine_id: str) -> None:
        record = self._refresh(self._load(machine_id))
        if record["state"] == "started":
            return
        if record["state"] == "stopping":
            raise ProviderError(f"machine {machine_id} is still stopping", kind="rejected")
        self._spawn(record)

    def stop(self, machine_id: str) -> None:
        record = self._refresh(self._load(machine_id))
        if record["state"] != "started":
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(record["pid"], signal.SIGTERM)
        self._set_state(record, "stopping")
        self.log.info("local_worker_stopping", machine_id=machine_id, pid=record["pid"])

    def destroy(self, machine_id: str) -> None:
        record = self._refresh(self._load(machine_id))
        if record["state"] in ("started", "stopping") and record.get("pid"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(record["pid"], signal.SIGKILL)
        self._path(machine_id).unlink(missing_ok=True)
        self.log.info("local_machine_destroyed", machine_id=machine_id)

    def wait(self, machine_id: str, state: MachineState, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        child = self._children.get(machine_id)
        while True:
            record = self._refresh(self._load(machine_id))
            if record["state"] == state:
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if state == "stopped" and child is not None and child.pid == record.get("pid"):
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.wait(timeout=left)
            else:
                time.sleep(min(POLL_S, left))

    def close(self) -> None:
        for child in self._children.values():
            child.poll()
