"""A fake Fly Machines API: real HTTP on 127.0.0.1, machine state kept in memory, every request
checked against the published spec (tests/data/fly-machines-openapi.yaml, a copy of
shared/reference/fly-machines-openapi.yaml), and faults on demand.

The spec's schemas allow any extra property; the fake is stricter: an object schema that lists
its properties rejects others, so a misspelt field fails here instead of being ignored by Fly.

Time is a FakeClock; machines move through their states only on `tick()`:
create -> created -(tick)-> starting -(boot ticks)-> started; stop -> stopping -(tick)-> stopped.
"""

from __future__ import annotations

import copy
import functools
import json
import re
import threading
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml

from app.clock import FakeClock
from tests.openapi_check import LoopbackServer, SpecChecker

SPEC_PATH = Path(__file__).parent / "data" / "fly-machines-openapi.yaml"
SHARED_SPEC_PATH = (
    Path(__file__).resolve().parents[2] / "shared/reference/fly-machines-openapi.yaml"
)
API_PREFIX = "/v1"


@functools.cache  # read once a run (as fake_runpod's): parsing the YAML took 0.7 s a fake
def load_spec() -> dict[str, Any]:
    spec: dict[str, Any] = yaml.safe_load(SPEC_PATH.read_text())
    return spec


@dataclass
class Call:
    method: str
    path: str
    operation: str | None
    query: dict[str, str]
    body: Any
    status: int


@dataclass
class Fault:
    status: int
    times: int
    method: str | None = None
    path: re.Pattern[str] | None = None
    retry_after: str | None = None
    body: dict[str, Any] | None = None

    def matches(self, method: str, path: str) -> bool:
        return (self.method is None or self.method == method) and (
            self.path is None or bool(self.path.search(path))
        )


@dataclass
class _Machine:
    data: dict[str, Any]
    boot_left: int = 0
    stuck: bool = False
    stop_left: int = 0


class FakeFly(LoopbackServer):
    def __init__(
        self,
        clock: FakeClock,
        *,
        app: str = "stemfleet-workers",
        token: str = "fake-fly-token",
        boot_ticks: int = 1,
    ) -> None:
        self.clock = clock
        self.app, self.token, self.boot_ticks = app, token, boot_ticks
        self.spec = load_spec()
        self.checker = SpecChecker(self.spec)
        self.machines: dict[str, _Machine] = {}
        self.calls: list[Call] = []
        self.violations: list[str] = []
        self.faults: deque[Fault] = deque()
        self.capacity_refusals = 0
        self.start_refusals = 0
        self.lost_create_answers: deque[int | None] = deque()
        self.lost_answers = 0
        self.created: list[str] = []  # machines made by Machines_create, answered or not
        self.next_boot_ticks: deque[int] = deque()
        self.next_stuck = 0
        self.list_gate: threading.Event | None = None
        self.list_entered = threading.Event()
        self._counter = 0
        self._lock = threading.RLock()

    # --- lifecycle ------------------------------------------------------------------------
    def stop(self) -> None:
        if self.list_gate is not None:
            self.list_gate.set()
        super().stop()

    # --- faults and time ------------------------------------------------------------------
    def fail(
        self,
        status: int,
        *,
        times: int = 1,
        method: str | None = None,
        path: str | None = None,
        retry_after: str | None = None,
    ) -> None:
        """The next `times` matching requests answer `status` (with Retry-After if given)."""
        with self._lock:
            self.faults.append(
                Fault(status, times, method, re.compile(path) if path else None, retry_after)
            )

    def refuse_creates(self, times: int = 1) -> None:
        """The next creates fail for lack of capacity (412, status insufficient_capacity)."""
        with self._lock:
            self.capacity_refusals += times

    def refuse_starts(self, times: int = 1) -> None:
        """The next starts fail: no capacity on the machine's host (412)."""
        with self._lock:
            self.start_refusals += times

    def lose_create_answers(self, times: int = 1, *, status: int | None = 500) -> None:
        """The next creates make their machine but the answer is lost: a `status` (5xx) answer,
        or (status None) the connection is closed without one, as after a timeout."""
        with self._lock:
            self.lost_create_answers.extend([status] * times)

    def fail_machine(self, machine_id: str) -> None:
        """The machine fails (Fly state `failed`), e.g. its host died."""
        with self._lock:
            self._set_state(self.machines[machine_id], "failed")

    def slow_start(self, ticks: int) -> None:
        """The next machine to start (or be created) takes `ticks` ticks in `starting`."""
        with self._lock:
            self.next_boot_ticks.append(ticks)

    def stick_next_start(self, times: int = 1) -> None:
        """The next machines to start stay in `starting` until stopped."""
        with self._lock:
            self.next_stuck += times

    def gate_list(self) -> threading.Event:
        """Hold every list request until the returned event is set; `list_entered` is set when
        one arrives."""
        self.list_gate = threading.Event()
        return self.list_gate

    def tick(self, n: int = 1) -> None:
        with self._lock:
            for _ in range(n):
                for machine in self.machines.values():
                    self._advance(machine)

    def add_machine(self, state: str = "stopped", *, worker: bool = True) -> str:
        """A machine that exists before the test (e.g. left stopped by an earlier deploy)."""
        with self._lock:
            machine_id = self._new_id()
            config = {"image": "registry.fly.io/stemfleet-worker:old", "metadata": {}}
            if worker:
                config["metadata"] = {"stemfleet_role": "worker"}
            self.machines[machine_id] = _Machine(self._machine_json(machine_id, state, config))
            return machine_id

    def states(self) -> dict[str, str]:
        with self._lock:
            return {mid: m.data["state"] for mid, m in sorted(self.machines.items())}

    def count(self, operation: str) -> int:
        return sum(1 for c in self.calls if c.operation == operation)

    # --- state machine --------------------------------------------------------------------
    def _new_id(self) -> str:
        self._counter += 1
        return f"e2865{self._counter:09x}"

    def _machine_json(
        self, machine_id: str, state: str, config: dict[str, Any], name: str | None = None
    ) -> dict[str, Any]:
        now = self.clock.now().isoformat().replace("+00:00", "Z")
        return {
            "id": machine_id,
            "name": name or f"worker-{machine_id[-4:]}",
            "state": state,
            "region": "ord",
            "instance_id": f"01J{machine_id.upper()}",
            "private_ip": "fdaa:0:1::2",
            "config": config,
            "image_ref": {
                "registry": "registry.fly.io",
                "repository": "stemfleet-worker",
                "tag": "test",
                "digest": "sha256:0",
                "labels": {},
            },
            "created_at": now,
            "updated_at": now,
            "events": [],
        }

    def _set_state(self, machine: _Machine, state: str) -> None:
        machine.data["state"] = state
        machine.data["updated_at"] = self.clock.now().isoformat().replace("+00:00", "Z")

    def _launch(self, machine: _Machine, event: str = "start") -> None:
        machine.data["events"].insert(
            0,
            {
                "id": f"01EV{len(machine.data['events']):06d}",
                "type": event,
                "status": "started" if event == "start" else "created",
                "source": "user",
                "timestamp": int(self.clock.now().timestamp() * 1000),
            },
        )
        machine.boot_left = (
            self.next_boot_ticks.popleft() if self.next_boot_ticks else (self.boot_ticks)
        )
        machine.stuck = self.next_stuck > 0
        if machine.stuck:
            self.next_stuck -= 1

    def _advance(self, machine: _Machine) -> None:
        state = machine.data["state"]
        if state == "created":
            self._set_state(machine, "starting")
        elif state == "starting" and not machine.stuck:
            machine.boot_left -= 1
            if machine.boot_left <= 0:
                self._set_state(machine, "started")
        elif state == "stopping":
            self._set_state(machine, "stopped")

    # --- HTTP -----------------------------------------------------------------------------
    def _serve(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        url = urlsplit(handler.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        body: Any = None
        problems: list[str] = []
        if raw:
            try:
                body = json.loads(raw)
            except json.JSONDecodeError:
                problems.append("body is not JSON")
        status, payload, headers, operation = self._respond(
            handler, method, url.path, query, body, problems
        )
        if operation == "Machines_create" and status == 200:
            with self._lock:
                lost = self.lost_create_answers.popleft() if self.lost_create_answers else 0
            if lost != 0:  # made, but the answer never reaches the client
                self.lost_answers += 1
                if lost is None:
                    with self._lock:
                        self.calls.append(Call("POST", url.path, operation, query, body, 200))
                    handler.close_connection = True
                    handler.connection.shutdown(2)
                    return
                status, payload, headers = lost, {"error": "upstream timeout"}, {}
        data = b"" if payload is None else json.dumps(payload).encode()
        # recorded before the answer goes out: a client that got its answer sees its call
        with self._lock:
            self.calls.append(Call(method.upper(), url.path, operation, query, body, status))
        handler.send_response(status)
        for name, value in headers.items():
            handler.send_header(name, value)
        if payload is not None:
            handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def _respond(
        self,
        handler: BaseHTTPRequestHandler,
        method: str,
        path: str,
        query: dict[str, str],
        body: Any,
        problems: list[str],
    ) -> tuple[int, Any, dict[str, str], str | None]:
        if handler.headers.get("Authorization") != f"Bearer {self.token}":
            return 401, {"error": "unauthorized"}, {}, None
        if not path.startswith(API_PREFIX):
            self.violations.append(f"{method.upper()} {path}: not under {API_PREFIX}")
            return 404, {"error": "not found"}, {}, None
        found = self.checker.find(method, path[len(API_PREFIX) :])
        if found is None:
            self.violations.append(f"{method.upper()} {path}: no such operation in the spec")
            return 404, {"error": "not found"}, {}, None
        op, params = found
        name = op.op["operationId"]
        problems += self.checker.request_problems(op, params, query, body)
        if problems:
            self.violations.extend(f"{name}: {p}" for p in problems)
            return 400, {"error": "; ".join(problems)}, {}, name
        with self._lock:
            fault = next((f for f in self.faults if f.matches(method.upper(), path)), None)
            if fault is not None:
                fault.times -= 1
                if fault.times <= 0:
                    self.faults.remove(fault)
        if fault is not None:
            headers = {"Retry-After": fault.retry_after} if fault.retry_after else {}
            return fault.status, {"error": f"injected fault {fault.status}"}, headers, name
        if params.get("app_name") != self.app:
            return 404, {"error": f"app {params.get('app_name')} not found"}, {}, name
        if name == "Machines_list" and self.list_gate is not None:
            self.list_entered.set()
            self.list_gate.wait(30)
        with self._lock:
            status, payload = self._operate(name, params, query, body)
        if status == 200 and payload is not None:
            self.violations.extend(self.checker.response_problems(op, status, payload))
        return status, payload, {}, name

    def _operate(
        self, name: str, params: dict[str, str], query: dict[str, str], body: Any
    ) -> tuple[int, Any]:
        if name == "Machines_list":
            return 200, [copy.deepcopy(m.data) for _, m in sorted(self.machines.items())]
        if name == "Machines_create":
            if self.capacity_refusals > 0:
                self.capacity_refusals -= 1
                return 412, {
                    "error": "insufficient resources to create new machine",
                    "status": "insufficient_capacity",
                }
            name = body.get("name")
            if name and any(m.data["name"] == name for m in self.machines.values()):
                return 409, {"error": f"a machine named {name} already exists"}
            machine_id = self._new_id()
            machine = _Machine(self._machine_json(machine_id, "created", body["config"], name))
            if body.get("region"):
                machine.data["region"] = body["region"]
            self._launch(machine, "launch")
            self.created.append(machine_id)
            self.machines[machine_id] = machine
            return 200, copy.deepcopy(machine.data)
        machine = self.machines.get(params.get("machine_id", ""))
        if machine is None:
            return 404, {"error": "machine not found"}
        state = machine.data["state"]
        if name == "Machines_show":
            return 200, copy.deepcopy(machine.data)
        if name == "Machines_start":
            if state in ("started", "starting", "created"):
                return 200, None
            if state != "stopped":
                return 412, {"error": f"failed_precondition: machine is {state}"}
            if self.start_refusals > 0:
                self.start_refusals -= 1
                return 412, {
                    "error": "insufficient resources to start the machine on its host",
                    "status": "insufficient_capacity",
                }
            self._set_state(machine, "starting")
            self._launch(machine)
            return 200, None
        if name == "Machines_delete":
            if state not in ("stopped", "failed", "created", "suspended"):
                return 412, {"error": f"failed_precondition: machine is {state}, stop it first"}
            del self.machines[params["machine_id"]]
            return 200, None
        if name == "Machines_stop":
            if state in ("stopped", "stopping"):
                return 200, None
            self._set_state(machine, "stopping")
            return 200, None
        if name == "Machines_wait":
            wanted = query.get("state", "started")
            if state == wanted:
                return 200, None
            # The real API holds the request for `timeout` seconds before giving up.
            self.clock.advance(float(query.get("timeout", 60)))
            return 408, {"error": f"deadline_exceeded: machine is {state}, not {wanted}"}
        return 501, {"error": f"{name} is not implemented by the fake"}
