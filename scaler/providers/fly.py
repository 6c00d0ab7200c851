"""Fly Machines REST API provider (httpx), per the published spec in
shared/reference/fly-machines-openapi.yaml.

Worker machines are those whose config metadata has stemfleet_role=worker. New ones are created
from the machine template (settings.machine_template, default deploy/worker-machine.json), each
under the unique name the scaler gives the planned create: a create whose answer was lost is
never sent again; the machine with that name is adopted instead. Throttling and retries are the
shared rules of scaler.providers.http. Fly's states map onto the interface's (see
scaler/providers/base.py); failed machines are destroyed, and a start refused for lack of
capacity is reported as such so the scaler replaces the machine.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Unpack

import httpx

from app.errors import ConfigError
from app.log import get_logger
from app.settings import Settings, reveal
from scaler.model import Machine, MachineState
from scaler.policy import hourly_price
from scaler.providers.base import Price, ProviderError, read_template
from scaler.providers.http import ApiClient, HttpOptions, response_text

ROLE_KEY = "stemfleet_role"
ROLE = "worker"
SIZE_KEY = "stemfleet_size"
DEFAULT_TEMPLATE = Path("deploy/worker-machine.json")
WAIT_CHUNK = 60  # the API's longest wait per request, seconds
BOOT_EVENTS = ("launch", "start")

# Fly's machine states onto the interface's (scaler/providers/base.py).
FLY_STATES: dict[str, MachineState] = {
    "created": "starting",
    "starting": "starting",
    "replacing": "starting",
    "updating": "starting",
    "started": "started",
    "stopping": "stopping",
    "suspending": "stopping",
    "destroying": "stopping",
    "stopped": "stopped",
    "suspended": "stopped",
    "failed": "failed",
    "destroyed": "gone",
    "replaced": "gone",
}


def fly_state(state: str) -> MachineState:
    """Unknown states count as starting: billed and transient."""
    return FLY_STATES.get(state, "starting")


def parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def booted_at(item: dict[str, Any]) -> datetime | None:
    """When the machine's current boot began: its latest launch or start event."""
    stamps = [
        e["timestamp"]
        for e in item.get("events") or []
        if isinstance(e, dict)
        and e.get("type") in BOOT_EVENTS
        and isinstance(e.get("timestamp"), int)
    ]
    return datetime.fromtimestamp(max(stamps) / 1000, UTC) if stamps else None


def load_template(settings: Settings) -> dict[str, Any]:
    """The machine template as a CreateMachineRequest: a JSON file holding either a whole
    request ({"config": {...}, "region": ...}) or just the MachineConfig."""
    data, path = read_template(
        settings.machine_template,
        DEFAULT_TEMPLATE,
        "STEMFLEET_MACHINE_TEMPLATE",
        "machine template",
        "write one (a Fly CreateMachineRequest or MachineConfig as JSON, e.g. "
        "deploy/worker-machine.json) or point STEMFLEET_MACHINE_TEMPLATE at it",
    )
    return template_request(data, str(path))


def template_request(data: Any, source: str = "machine template") -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ConfigError(f"STEMFLEET_MACHINE_TEMPLATE: {source} must be a JSON object")
    request = copy.deepcopy(data) if "config" in data else {"config": copy.deepcopy(data)}
    config = request.get("config")
    if not isinstance(config, dict) or not isinstance(config.get("image"), str):
        raise ConfigError(
            f"STEMFLEET_MACHINE_TEMPLATE: {source} needs config.image (the worker's Docker "
            "image), per the Machines API's MachineConfig"
        )
    return request


class FlyProvider:
    name = "fly"

    def __init__(
        self,
        settings: Settings,
        *,
        template: dict[str, Any] | None = None,
        **http: Unpack[HttpOptions],
    ) -> None:
        token = reveal(settings.fly_api_token)
        if not token:
            raise ConfigError(
                "STEMFLEET_FLY_API_TOKEN is not set: create a token with `fly tokens create "
                "deploy` and set it, or use STEMFLEET_PROVIDER=local"
            )
        if not settings.fly_app:
            raise ConfigError("STEMFLEET_FLY_APP is not set: the Fly app the workers run in")
        self.settings = settings
        self.app = settings.fly_app
        self.create_size = settings.machine_size
        self._template = template_request(template) if template is not None else None
        self._base = settings.fly_api_url.rstrip("/") + "/v1"
        self.api = ApiClient(
            "Fly",
            f"{self._base}/apps/{self.app}",
            {"Authorization": f"Bearer {token}", "Accept": "application/json"},
            max_retries=settings.fly_max_retries,
            **http,
        )
        self._clock = self.api.clock
        self.log = get_logger(provider="fly", app=self.app)

    # --- the Provider interface -----------------------------------------------------------
    def create_price(self) -> Price:
        return Price(hourly_price(self.settings, self.create_size))

    def list(self) -> list[Machine]:
        response = self.api.request("GET", "/machines", action="list", key=self.app)
        _raise_for(response, "list machines")
        machines = []
        for item in response.json() or []:
            metadata = ((item.get("config") or {}).get("metadata")) or {}
            if metadata.get(ROLE_KEY) != ROLE:
                continue
            machines.append(self._machine(item))
        return sorted(machines, key=lambda m: m.id)

    def create(self, name: str, max_hourly_usd: float) -> Machine:
        price = self.create_price().running
        if price > max_hourly_usd + 1e-9:
            raise ProviderError(
                f"a {self.create_size} machine costs ${price:.4f}/h, more than the "
                f"${max_hourly_usd:.4f}/h left under the ceilings",
                kind="over_ceiling",
            )
        request = copy.deepcopy(self._template or load_template(self.settings))
        request["name"] = name
        config = request["config"]
        config["metadata"] = {
            **(config.get("metadata") or {}),
            ROLE_KEY: ROLE,
            SIZE_KEY: self.create_size,
        }
        config["env"] = {**(config.get("env") or {}), "STEMFLEET_WORKER_PROVIDER": "fly"}
        if self.settings.fly_region and not request.get("region"):
            request["region"] = self.settings.fly_region
        try:
            response = self.api.request(
                "POST", "/machines", action="create", key=self.app, json=request, creates=True
            )
        except ProviderError as exc:
            if exc.kind != "unknown_outcome":
                raise
            adopted = self._named(name)
            if adopted is None:
                raise
            self.log.warning("fly_machine_adopted", machine_id=adopted.id, name=name)
            return adopted
        if response.status_code == 409 or (
            response.status_code >= 400 and "already exists" in response_text(response)
        ):
            adopted = self._named(name)  # our own earlier try made it
            if adopted is not None:
                self.log.warning("fly_machine_adopted", machine_id=adopted.id, name=name)
                return adopted
        if response.status_code >= 400:
            text = response_text(response)
            raise ProviderError(
                f"Fly refused to create a machine (HTTP {response.status_code}): {text}",
                kind="capacity"
                if response.status_code == 412 or _no_capacity(text)
                else "rejected",
                status=response.status_code,
            )
        machine = self._machine(response.json())
        self.log.info("fly_machine_created", machine_id=machine.id, state=machine.state, name=name)
        return machine

    def _named(self, name: str) -> Machine | None:
        return next((m for m in self.list() if m.name == name), None)

    def start(self, machine_id: str) -> None:
        response = self.api.request(
            "POST", f"/machines/{machine_id}/start", action="start", key=machine_id
        )
        if response.status_code >= 400 and _no_capacity(response_text(response)):
            raise ProviderError(
                f"Fly could not start machine {machine_id} for lack of capacity on its host: "
                f"{response_text(response)}",
                kind="capacity",
                status=response.status_code,
            )
        _raise_for(response, f"start machine {machine_id}")

    def stop(self, machine_id: str) -> None:
        grace = max(1, int(self.settings.shutdown_grace))
        response = self.api.request(
            "POST",
            f"/machines/{machine_id}/stop",
            action="stop",
            key=machine_id,
            json={"signal": "SIGTERM", "timeout": f"{grace}s"},
        )
        _raise_for(response, f"stop machine {machine_id}")

    def destroy(self, machine_id: str) -> None:
        response = self.api.request(
            "DELETE",
            f"/machines/{machine_id}",
            action="destroy",
            key=machine_id,
        )
        if response.status_code == 404:
            return  # already gone
        _raise_for(response, f"destroy machine {machine_id}")
        self.log.info("fly_machine_destroyed", machine_id=machine_id)

    def wait(self, machine_id: str, state: MachineState, timeout: float) -> bool:
        deadline = self._clock.monotonic() + timeout
        while True:
            chunk = int(min(WAIT_CHUNK, max(1.0, deadline - self._clock.monotonic())))
            response = self.api.request(
                "GET",
                f"/machines/{machine_id}/wait",
                action="wait",
                key=machine_id,
                params={"state": state, "timeout": chunk},
                timeout=chunk + 10.0,
            )
            if response.status_code == 200:
                return True
            if response.status_code not in (408, 504):
                _raise_for(response, f"wait for machine {machine_id} to be {state}")
            if self._clock.monotonic() >= deadline:
                return False

    def close(self) -> None:
        self.api.close()

    def _machine(self, item: dict[str, Any]) -> Machine:
        config = item.get("config") or {}
        metadata = config.get("metadata") or {}
        size = metadata.get(SIZE_KEY) or _guest_size(config.get("guest") or {}) or self.create_size
        own = str(item.get("state") or "unknown")
        return Machine(
            id=str(item["id"]),
            state=fly_state(own),
            size=size,
            hourly_usd=hourly_price(self.settings, size),
            state_since=parse_time(item.get("updated_at")) or parse_time(item.get("created_at")),
            region=item.get("region"),
            booted_at=booted_at(item),
            provider_state=own,
            name=item.get("name"),
        )


def _guest_size(guest: dict[str, Any]) -> str | None:
    kind, cpus = guest.get("cpu_kind"), guest.get("cpus")
    if not kind or not cpus:
        return None
    return f"shared-cpu-{cpus}x" if kind == "shared" else f"{kind}-{cpus}x"


def _no_capacity(text: str) -> bool:
    """Fly answers a create or start it has no room for with 412 insufficient_capacity."""
    return "capacity" in text.lower()


def _raise_for(response: httpx.Response, what: str) -> None:
    if response.status_code < 400:
        return
    kind = "not_found" if response.status_code == 404 else "rejected"
    raise ProviderError(
        f"Fly API could not {what}: HTTP {response.status_code}: {response_text(response)}",
        kind=kind,
        status=response.status_code,
    )
