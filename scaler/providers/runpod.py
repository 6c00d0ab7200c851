"""RunPod pods through the REST API v2 (httpx), per shared/reference/runpod-openapi.json.

Which pods are ours: v2 has no tags, so a pod is a worker of this fleet only when its name
starts with STEMFLEET_RUNPOD_NAME_PREFIX *and* its env carries STEMFLEET_FLEET=<fleet>; nothing
else in the account is ever listed, stopped or terminated.

Create places one GPU type per call and never falls back by itself: it walks an ordered list of
candidates (GPU type x cloud x data centre, from the settings; optionally ordered and filtered
by the catalog's availability) and follows the spec's table of outcomes:

| status | what happens |
|---|---|
| 201 | the pod is ours |
| 400 | next candidate, keeping the last `detail` (no capacity, or a rule every candidate breaks) |
| 402 | stop: "no balance" (ProviderError kind no_balance), no candidate will succeed |
| 403 | skip the candidate (the account cannot use that pool) |
| 422 | the body is wrong: a configuration error (kind config), never retried |
| 429 | wait Retry-After (and the RateLimit windows), then the same candidate |
| 5xx, lost answer | the same candidate again, only when the pod surely was not made (below) |

Every planned create has a unique name; after a 5xx or a lost answer the pods are looked up by
that name before anything is resent, and a pod found is adopted: one create, one pod.

A candidate whose price would cross the caller's $/h headroom is never sent. Running pods are
priced by the `cost` the API reports; a stopped pod costs its persistent volume only (container
disk is not billed while stopped), which `stopped_hourly_usd` reports.

A stopped pod is not a reservation: `start` that comes back without a GPU (someone else took
the card) or is refused for capacity raises kind "capacity", so the policy terminates the pod
and creates on the next candidate; a RUNNING pod with no GPU lists as "failed".
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from app.clock import Clock, SystemClock
from app.log import get_logger
from app.settings import Settings
from scaler.model import Machine
from scaler.providers.base import ProviderError
from scaler.providers.fly import backoff_delay, parse_time, retry_after_seconds
from scaler.providers.runpod_settings import (
    HOURS_PER_MONTH,
    RunPodSettings,
    load_pod_template,
    load_runpod_settings,
)

FLEET_ENV = "STEMFLEET_FLEET"
# RunPod pod status -> the interface's machine state (scaler/model.py phases)
STATES = {
    "PROVISIONING": "created",
    "STARTING": "starting",
    "RUNNING": "started",
    "EXITED": "stopped",
    "ERROR": "failed",
    "TERMINATED": "destroyed",
}
_EPS = 1e-9

Sleep = Callable[[float], None]


@dataclass(frozen=True, slots=True)
class Candidate:
    gpu: str
    cloud: str
    data_center: str | None
    hourly_usd: float

    @property
    def size(self) -> str:
        return f"{self.cloud}/{self.gpu}"

    def describe(self) -> str:
        where = f" in {self.data_center}" if self.data_center else ""
        return f"{self.gpu} ({self.cloud}{where}, ${self.hourly_usd:.2f}/h)"


def ratelimit_wait(header: str | None) -> float:
    """Seconds until a window with no requests left resets, from the RateLimit header
    (`"minute";r=0;t=12, "hour";r=2800;t=1812`); 0 when every window has some left."""
    wait = 0.0
    for member in (header or "").split(","):
        params = dict(part.strip().split("=", 1) for part in member.split(";")[1:] if "=" in part)
        try:
            if int(params.get("r", "1")) <= 0:
                wait = max(wait, float(params.get("t", "0")))
        except ValueError:
            continue
    return wait


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:300] or response.reason_phrase
    if isinstance(body, dict):
        detail = str(body.get("detail") or body.get("title") or "")
        errors = body.get("errors")
        if errors:
            detail += ": " + "; ".join(str(e) for e in errors)
        return detail[:500]
    return str(body)[:300]


class RunPodProvider:
    name = "runpod"

    def __init__(
        self,
        settings: Settings,
        runpod: RunPodSettings | None = None,
        *,
        client: httpx.Client | None = None,
        clock: Clock | None = None,
        sleep: Sleep | None = None,
        rng: random.Random | None = None,
        new_name: Callable[[], str] | None = None,
    ) -> None:
        self.settings = settings
        self.rp = runpod or load_runpod_settings()
        self._template = load_pod_template(self.rp)
        self._clock = clock or SystemClock()
        self._sleep: Sleep = sleep or time.sleep
        self._rng = rng or random.Random()
        self._new_name = new_name or (lambda: uuid.uuid4().hex[:12])
        self._client = client or httpx.Client(timeout=httpx.Timeout(self.rp.timeout))
        self._base = self.rp.api_url.rstrip("/") + "/v2"
        assert self.rp.api_key is not None
        self._headers = {
            "Authorization": f"Bearer {self.rp.api_key.get_secret_value()}",
            "Accept": "application/json",
        }
        self._prices = {(g, c): p for g, by in self.rp.prices.items() for c, p in by.items()}
        self._not_before = 0.0  # monotonic time before which no request is sent (RateLimit)
        self.create_size = self.candidates()[0].size
        self.requests = 0
        self.log = get_logger(provider="runpod")

    # --- HTTP -----------------------------------------------------------------------------
    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One request; 429 waits (Retry-After / RateLimit) and is sent again, as are
        connection failures before anything was sent. Everything else is the caller's."""
        attempt = 0
        while True:
            wait = self._not_before - self._clock.monotonic()
            if wait > 0:
                self._sleep(wait)
            self.requests += 1
            try:
                response = self._client.request(
                    method, self._base + path, headers=self._headers, **kwargs
                )
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                if attempt >= self.rp.max_retries:
                    raise ProviderError(
                        f"RunPod API unreachable after {attempt + 1} tries: {exc}",
                        kind="unreachable",
                    ) from exc
                delay, why = backoff_delay(attempt, self._rng), type(exc).__name__
            else:
                limit_wait = ratelimit_wait(response.headers.get("RateLimit"))
                if limit_wait > 0:
                    self._not_before = self._clock.monotonic() + limit_wait
                if response.status_code != 429:
                    return response
                if attempt >= self.rp.max_retries:
                    raise ProviderError(
                        f"RunPod API {method} {path}: rate limited after {attempt + 1} tries: "
                        f"{_detail(response)}",
                        kind="rate_limited",
                        status=429,
                    )
                after = retry_after_seconds(response.headers.get("Retry-After"), self._clock.now())
                delay = max(after if after is not None else backoff_delay(attempt, self._rng), 0)
                why = "HTTP 429"
            self.log.warning(
                "runpod_api_retry", path=path, attempt=attempt + 1, delay_s=delay, reason=why
            )
            self._sleep(delay)
            attempt += 1

    def _call(self, method: str, path: str, what: str, **kwargs: Any) -> httpx.Response:
        """An idempotent call (read, action, delete): 5xx and lost answers are retried."""
        attempt = 0
        while True:
            status: int | None = None
            try:
                response = self._send(method, path, **kwargs)
            except httpx.TransportError as exc:
                why = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code < 500:
                    return response
                status, why = (
                    response.status_code,
                    f"HTTP {response.status_code}: {_detail(response)}",
                )
            if attempt >= self.rp.max_retries:
                raise ProviderError(
                    f"RunPod API could not {what} after {attempt + 1} tries: {why}",
                    kind="server_error" if status else "unreachable",
                    status=status,
                )
            self._sleep(backoff_delay(attempt, self._rng))
            attempt += 1

    # --- candidates and prices ------------------------------------------------------------
    def candidates(
        self, catalog: dict[tuple[str, str], dict[str, Any]] | None = None
    ) -> list[Candidate]:
        """Every (GPU type, cloud, data centre) in the settings' order; with a catalog read,
        those the catalog says have no stock are left out and prices are the catalog's."""
        found = []
        for gpu in self.rp.gpu_types:
            for cloud in self.rp.clouds:
                entry = (catalog or {}).get((gpu, cloud))
                if catalog is not None and entry is None:
                    continue
                price = (entry or {}).get("price") or self._prices.get((gpu, cloud))
                if price is None:
                    continue
                stocked = (entry or {}).get("data_centers")
                places: list[str | None] = list(self.rp.data_centers) or [None]
                for dc in places:
                    if stocked is not None and dc is not None and dc not in stocked:
                        continue
                    found.append(Candidate(gpu, cloud, dc, float(price)))
        return found

    def read_catalog(self) -> dict[tuple[str, str], dict[str, Any]] | None:
        """Availability and list prices per (GPU type, cloud); None when unreachable."""
        wanted = set(self.rp.gpu_types)
        result: dict[tuple[str, str], dict[str, Any]] = {}
        for cloud in self.rp.clouds:
            try:
                response = self._call(
                    "GET",
                    "/catalog/gpus",
                    "read the GPU catalog",
                    params={"include": "AVAILABILITY", "product": "POD", "cloud": cloud},
                )
            except ProviderError as exc:
                self.log.warning("runpod_catalog_unreachable", error=str(exc))
                return None
            if response.status_code != 200:
                self.log.warning(
                    "runpod_catalog_refused", status=response.status_code, detail=_detail(response)
                )
                return None
            for gpu in response.json().get("gpus") or []:
                if gpu.get("id") not in wanted or gpu.get("availability") == "NONE":
                    continue
                price = (gpu.get("price") or {}).get(cloud.lower())
                if price is not None:
                    self._prices[(gpu["id"], cloud)] = float(price)
                dcs = gpu.get("dataCenters")
                result[(gpu["id"], cloud)] = {
                    "price": price,
                    "data_centers": None
                    if dcs is None
                    else {d["id"] for d in dcs if d.get("availability") != "NONE"},
                }
        return result

    def price(self, size: str) -> float:
        """The $/h a new pod of `size` ("CLOUD/GPU type") costs."""
        cloud, _, gpu = size.partition("/")
        return self._prices.get((gpu, cloud), max(self._prices.values()))

    def stopped_hourly_usd(self, pod: dict[str, Any]) -> float:
        """A stopped pod bills its persistent volume (container disk is released)."""
        persistent = ((pod.get("mounts") or {}).get("persistent")) or {}
        size_gb = float(persistent.get("size") or 0)
        return size_gb * self.rp.volume_usd_per_gb_month / HOURS_PER_MONTH

    # --- the provider interface -----------------------------------------------------------
    def is_ours(self, pod: dict[str, Any]) -> bool:
        env = pod.get("env") or {}
        return str(pod.get("name") or "").startswith(self.rp.name_prefix) and (
            env.get(FLEET_ENV) == self.rp.fleet
        )

    def list_pods(self) -> list[dict[str, Any]]:
        response = self._call("GET", "/pods", "list pods")
        self._raise_for(response, "list pods")
        return [p for p in response.json().get("pods") or [] if self.is_ours(p)]

    def list(self) -> list[Machine]:
        return sorted((self.machine(p) for p in self.list_pods()), key=lambda m: m.id)

    def create(self, max_hourly_usd: float | None = None) -> Machine:
        """One new pod on the first candidate that places it (see the module's table).
        `max_hourly_usd`: the $/h this pod may add without crossing the ceiling."""
        catalog = self.read_catalog() if self.rp.catalog else None
        candidates = self.candidates(catalog)
        if not candidates:
            raise ProviderError(
                "no candidate has stock: the catalog lists none of STEMFLEET_RUNPOD_GPU_TYPES "
                "as available in STEMFLEET_RUNPOD_CLOUDS / DATA_CENTERS",
                kind="capacity",
            )
        name = self.rp.name_prefix + self._new_name()
        tried: list[str] = []
        last_detail = ""
        for candidate in candidates:
            if max_hourly_usd is not None and candidate.hourly_usd > max_hourly_usd + _EPS:
                tried.append(f"{candidate.describe()}: over the ${max_hourly_usd:.2f}/h left")
                continue
            response = self._create_on(candidate, name)
            if isinstance(response, dict):
                pod = response
                self.log.info(
                    "runpod_pod_created",
                    pod_id=pod["id"],
                    name=name,
                    gpu=candidate.gpu,
                    cloud=candidate.cloud,
                )
                return self.machine(pod)
            status, detail = response.status_code, _detail(response)
            if status == 402:
                raise ProviderError(
                    f"no balance: RunPod refused to create ({detail})",
                    kind="no_balance",
                    status=402,
                )
            if status in (401, 422):
                raise ProviderError(
                    f"configuration error: RunPod rejected the pod body (HTTP {status}): "
                    f"{detail}; fix deploy/runpod-pod.json or STEMFLEET_RUNPOD_*",
                    kind="config",
                    status=status,
                )
            if status == 403:
                tried.append(f"{candidate.describe()}: no access (403: {detail})")
                continue
            last_detail = detail
            tried.append(f"{candidate.describe()}: {status} {detail}")
        if not last_detail:
            kind, what = "rejected", "no candidate could be tried"
        else:
            kind, what = "capacity", f"no candidate placed a pod; last detail: {last_detail}"
        raise ProviderError(f"{what} (tried: {'; '.join(tried)})", kind=kind, status=400)

    def _create_on(self, candidate: Candidate, name: str) -> dict[str, Any] | httpx.Response:
        """The created (or adopted) pod, or the final refusal for this candidate."""
        body = {
            **self._template,
            "name": name,
            "cloud": candidate.cloud,
            "gpu": {**(self._template.get("gpu") or {}), "id": candidate.gpu, "count": 1},
            "env": {
                **self._template["env"],
                FLEET_ENV: self.rp.fleet,
                "STEMFLEET_WORKER_PROVIDER": self.name,
            },
        }
        if candidate.data_center:
            body["dataCenterIds"] = [candidate.data_center]
        attempt = 0
        while True:
            try:
                response = self._send("POST", "/pods", json=body)
            except httpx.TransportError as exc:
                why = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code == 201:
                    return dict(response.json())
                if response.status_code < 500:
                    return response
                why = f"HTTP {response.status_code}: {_detail(response)}"
            # The answer is lost or 5xx: the pod may exist. Never send it again blind.
            adopted = next((p for p in self.list_pods() if p.get("name") == name), None)
            if adopted is not None:
                self.log.warning(
                    "runpod_create_adopted", pod_id=adopted["id"], name=name, reason=why
                )
                return adopted
            if attempt >= self.rp.max_retries:
                raise ProviderError(
                    f"RunPod create on {candidate.describe()} failed {attempt + 1} times "
                    f"and no pod named {name} exists: {why}",
                    kind="server_error",
                )
            self.log.warning("runpod_create_retry", name=name, attempt=attempt + 1, reason=why)
            self._sleep(backoff_delay(attempt, self._rng))
            attempt += 1

    def start(self, machine_id: str) -> None:
        response = self._action(machine_id, "start")
        if response.status_code == 200 and not self.has_gpu(response.json(), starting=True):
            raise ProviderError(
                f"pod {machine_id} resumed with zero GPUs (its card was taken while it was "
                "stopped): replace it",
                kind="capacity",
                status=200,
            )
        if response.status_code == 400:
            raise ProviderError(
                f"pod {machine_id} cannot start: {_detail(response)}", kind="capacity", status=400
            )
        self._raise_for(response, f"start pod {machine_id}")

    def stop(self, machine_id: str) -> None:
        response = self._action(machine_id, "stop")
        if response.status_code == 409:
            return  # not running any more: nothing to stop
        self._raise_for(response, f"stop pod {machine_id}")

    def destroy(self, machine_id: str) -> None:
        """Terminate a pod for good (it cannot come back: no GPU, ERROR, stuck)."""
        response = self._call("DELETE", f"/pods/{machine_id}", f"terminate pod {machine_id}")
        if response.status_code == 404:
            return
        self._raise_for(response, f"terminate pod {machine_id}")

    def wait(self, machine_id: str, state: str, timeout: float) -> bool:
        deadline = self._clock.monotonic() + timeout
        while True:
            response = self._call("GET", f"/pods/{machine_id}", f"read pod {machine_id}")
            self._raise_for(response, f"read pod {machine_id}")
            if self.machine(response.json()).state == state:
                return True
            if self._clock.monotonic() >= deadline:
                return False
            self._sleep(min(5.0, max(0.5, deadline - self._clock.monotonic())))

    def close(self) -> None:
        self._client.close()

    # --- pods -----------------------------------------------------------------------------
    def _action(self, machine_id: str, action: str) -> httpx.Response:
        return self._call(
            "POST",
            f"/pods/{machine_id}/action",
            f"{action} pod {machine_id}",
            json={"action": action},
        )

    @staticmethod
    def has_gpu(pod: dict[str, Any], *, starting: bool = False) -> bool:
        """False for a GPU pod that came back without its card: no `gpu` block, a count of 0,
        or (when RUNNING) a runtime that shows no GPU."""
        gpu = pod.get("gpu")
        if not gpu or int(gpu.get("count") or 0) < 1:
            return False
        runtime = pod.get("runtime")
        if not starting and pod.get("status") == "RUNNING" and isinstance(runtime, dict):
            return runtime.get("gpus") != []
        return True

    def machine(self, pod: dict[str, Any]) -> Machine:
        status = str(pod.get("status") or "")
        state = STATES.get(status, "unknown")
        if status in ("RUNNING", "STARTING") and not self.has_gpu(pod):
            state = "failed"  # zero-GPU resume: it cannot take GPU work
        gpu = (pod.get("gpu") or {}).get("id") or "?"
        size = f"{pod.get('cloud') or 'SECURE'}/{gpu}"
        running = state in ("created", "starting", "started", "failed") and status != "EXITED"
        cost = float(pod.get("cost") or 0.0)
        return Machine(
            id=str(pod["id"]),
            state=state,
            size=size,
            hourly_usd=cost
            if running and cost > 0
            else (self.price(size) if running else self.stopped_hourly_usd(pod)),
            state_since=parse_time(pod.get("startedAt")) or parse_time(pod.get("createdAt")),
            region=pod.get("dataCenterId"),
        )

    @staticmethod
    def _raise_for(response: httpx.Response, what: str) -> None:
        if response.status_code < 400:
            return
        kind = "not_found" if response.status_code == 404 else "rejected"
        raise ProviderError(
            f"RunPod API could not {what}: HTTP {response.status_code}: {_detail(response)}",
            kind=kind,
            status=response.status_code,
        )
