"""Fly Machines REST API provider (httpx), per the published spec in
shared/reference/fly-machines-openapi.yaml.

Worker machines are those whose config metadata has stemfleet_role=worker. New ones are created
from the machine template (settings.machine_template, default deploy/worker-machine.json).
Calls are throttled per action and machine (a token bucket: about 1 request/s, burst 3, as the
API asks), and 429 / 5xx / connection failures are retried with exponential backoff and jitter,
honouring Retry-After. Machines are never destroyed.
"""

from __future__ import annotations

import copy
import json
import random
import time
from collections.abc import Callable
from datetime import datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import httpx

from app.clock import Clock, SystemClock
from app.errors import ConfigError
from app.log import get_logger
from app.settings import Settings
from scaler.model import Machine
from scaler.policy import hourly_price
from scaler.providers.base import ProviderError

ROLE_KEY = "stemfleet_role"
ROLE = "worker"
SIZE_KEY = "stemfleet_size"
DEFAULT_TEMPLATE = Path("deploy/worker-machine.json")
MAX_RETRY_AFTER = 120.0
WAIT_CHUNK = 60  # the API's longest wait per request, seconds

Sleep = Callable[[float], None]


class TokenBucket:
    """`rate` tokens per second, at most `burst` saved up. `take` reserves a token and returns
    how long to wait before using it (0 when one is there)."""

    def __init__(self, rate: float, burst: int, monotonic: Callable[[], float]) -> None:
        self.rate, self.burst, self._monotonic = rate, float(burst), monotonic
        self.tokens = float(burst)
        self.at = monotonic()

    def take(self) -> float:
        now = self._monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        self.tokens -= 1
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate


def backoff_delay(attempt: int, rng: random.Random, base: float = 0.5, cap: float = 30.0) -> float:
    """Exponential backoff with jitter: base * 2^attempt capped, then 50-100% of it."""
    delay = min(cap, base * 2**attempt)
    return delay * (0.5 + rng.random() / 2)


def retry_after_seconds(value: str | None, now: datetime) -> float | None:
    """Retry-After as delta-seconds or an HTTP date; None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = (parsedate_to_datetime(value) - now).total_seconds()
        except (TypeError, ValueError):
            return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def load_template(settings: Settings) -> dict[str, Any]:
    """The machine template as a CreateMachineRequest: a JSON file holding either a whole
    request ({"config": {...}, "region": ...}) or just the MachineConfig."""
    path = settings.machine_template
    if path is None:
        root = Path(__file__).resolve().parents[2]
        candidates = [Path.cwd() / DEFAULT_TEMPLATE, root / DEFAULT_TEMPLATE]
        path = next((p for p in candidates if p.is_file()), candidates[0])
    if not path.is_file():
        raise ConfigError(
            f"STEMFLEET_MACHINE_TEMPLATE: no machine template at {path}: write one (a Fly "
            "CreateMachineRequest or MachineConfig as JSON, e.g. deploy/worker-machine.json) "
            "or point STEMFLEET_MACHINE_TEMPLATE at it"
        )
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"STEMFLEET_MACHINE_TEMPLATE: {path} is not valid JSON: {exc}") from None
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
        client: httpx.Client | None = None,
        clock: Clock | None = None,
        sleep: Sleep | None = None,
        rng: random.Random | None = None,
        rate: float = 1.0,
        burst: int = 3,
    ) -> None:
        if not settings.fly_api_token:
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
        self._clock = clock or SystemClock()
        self._sleep: Sleep = sleep or time.sleep
        self._rng = rng or random.Random()
        self._rate, self._burst = rate, burst
        self._buckets: dict[tuple[str, str], TokenBucket] = {}
        self._client = client or httpx.Client(timeout=httpx.Timeout(30.0, connect=10.0))
        self._base = settings.fly_api_url.rstrip("/") + "/v1"
        self._headers = {
            "Authorization": f"Bearer {settings.fly_api_token}",
            "Accept": "application/json",
        }
        self.log = get_logger(provider="fly", app=self.app)

    # --- HTTP -----------------------------------------------------------------------------
    def _throttle(self, action: str, key: str) -> None:
        bucket = self._buckets.get((action, key))
        if bucket is None:
            bucket = TokenBucket(self._rate, self._burst, self._clock.monotonic)
            self._buckets[(action, key)] = bucket
        delay = bucket.take()
        if delay > 0:
            self._sleep(delay)

    def _request(
        self,
        method: str,
        path: str,
        *,
        action: str,
        key: str,
        body: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> httpx.Response:
        url = f"{self._base}/apps/{self.app}{path}"
        retries = self.settings.fly_max_retries
        attempt = 0
        while True:
            self._throttle(action, key)
            try:
                response = self._client.request(
                    method,
                    url,
                    json=body,
                    params=params,
                    headers=self._headers,
                    timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
                )
            except httpx.TransportError as exc:
                if attempt >= retries:
                    raise ProviderError(
                        f"Fly API unreachable at {self._base} after {attempt + 1} tries: {exc}",
                        kind="unreachable",
                    ) from exc
                delay = backoff_delay(attempt, self._rng)
                reason = type(exc).__name__
            else:
                status = response.status_code
                if status != 429 and status < 500:
                    return response
                if attempt >= retries:
                    raise ProviderError(
                        f"Fly API {method} {path}: HTTP {status} after {attempt + 1} tries: "
                        f"{_error_text(response)}",
                        kind="rate_limited" if status == 429 else "server_error",
                        status=status,
                    )
                after = retry_after_seconds(response.headers.get("Retry-After"), self._clock.now())
                delay = after if after is not None else backoff_delay(attempt, self._rng)
                reason = f"HTTP {status}"
            self.log.warning(
                "fly_api_retry",
                action=action,
                key=key,
                attempt=attempt + 1,
                delay_s=delay,
                reason=reason,
            )
            self._sleep(delay)
            attempt += 1

    # --- the Provider interface -----------------------------------------------------------
    def list(self) -> list[Machine]:
        response = self._request("GET", "/machines", action="list", key=self.app)
        _raise_for(response, "list machines")
        machines = []
        for item in response.json() or []:
            metadata = ((item.get("config") or {}).get("metadata")) or {}
            if metadata.get(ROLE_KEY) != ROLE:
                continue
            machines.append(self._machine(item))
        return sorted(machines, key=lambda m: m.id)

    def create(self) -> Machine:
        request = copy.deepcopy(self._template or load_template(self.settings))
        config = request["config"]
        config["metadata"] = {
            **(config.get("metadata") or {}),
            ROLE_KEY: ROLE,
            SIZE_KEY: self.create_size,
        }
        config["env"] = {**(config.get("env") or {}), "STEMFLEET_WORKER_PROVIDER": "fly"}
        if self.settings.fly_region and not request.get("region"):
            request["region"] = self.settings.fly_region
        response = self._request("POST", "/machines", action="create", key=self.app, body=request)
        if response.status_code >= 400:
            text = _error_text(response)
            capacity = response.status_code == 412 or "capacity" in text.lower()
            raise ProviderError(
                f"Fly refused to create a machine (HTTP {response.status_code}): {text}",
                kind="capacity" if capacity else "rejected",
                status=response.status_code,
            )
        machine = self._machine(response.json())
        self.log.info("fly_machine_created", machine_id=machine.id, state=machine.state)
        return machine

    def start(self, machine_id: str) -> None:
        response = self._request(
            "POST", f"/machines/{machine_id}/start", action="start", key=machine_id
        )
        _raise_for(response, f"start machine {machine_id}")

    def stop(self, machine_id: str) -> None:
        grace = max(1, int(self.settings.shutdown_grace))
        response = self._request(
            "POST",
            f"/machines/{machine_id}/stop",
            action="stop",
            key=machine_id,
            body={"signal": "SIGTERM", "timeout": f"{grace}s"},
        )
        _raise_for(response, f"stop machine {machine_id}")

    def wait(self, machine_id: str, state: str, timeout: float) -> bool:
        deadline = self._clock.monotonic() + timeout
        while True:
            chunk = int(min(WAIT_CHUNK, max(1.0, deadline - self._clock.monotonic())))
            response = self._request(
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
        self._client.close()

    def _machine(self, item: dict[str, Any]) -> Machine:
        config = item.get("config") or {}
        metadata = config.get("metadata") or {}
        size = metadata.get(SIZE_KEY) or _guest_size(config.get("guest") or {})
        return Machine(
            id=str(item["id"]),
            state=str(item.get("state") or "unknown"),
            size=size or self.create_size,
            hourly_usd=hourly_price(self.settings, size or self.create_size),
            state_since=parse_time(item.get("updated_at")) or parse_time(item.get("created_at")),
            region=item.get("region"),
        )


def _guest_size(guest: dict[str, Any]) -> str | None:
    kind, cpus = guest.get("cpu_kind"), guest.get("cpus")
    if not kind or not cpus:
        return None
    return f"shared-cpu-{cpus}x" if kind == "shared" else f"{kind}-{cpus}x"


def _error_text(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:300] or response.reason_phrase
    if isinstance(body, dict) and body.get("error"):
        status = body.get("status")
        return f"{body['error']}" + (f" ({status})" if status else "")
    return str(body)[:300]


def _raise_for(response: httpx.Response, what: str) -> None:
    if response.status_code < 400:
        return
    kind = "not_found" if response.status_code == 404 else "rejected"
    raise ProviderError(
        f"Fly API could not {what}: HTTP {response.status_code}: {_error_text(response)}",
        kind=kind,
        status=response.status_code,
    )
