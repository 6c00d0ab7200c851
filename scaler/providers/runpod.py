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

Every planned create has a unique name (given by the scaler). The shared HTTP layer
(scaler/providers/http.py) never resends a create by itself; after a 5xx or a lost answer the
pods are looked up by that name, a pod found is adopted (one create, one pod), and only when
none has it is the same candidate tried again, with backoff.

A candidate whose price would cross the caller's $/h headroom is never sent. Running pods are
priced by the `cost` the API reports; a stopped pod costs its persistent volume only (container
disk is not billed while stopped), which `stopped_hourly_usd` reports.

States (scaler/providers/base.py): PROVISIONING, STARTING -> starting; RUNNING -> started;
EXITED -> stopped; ERROR -> failed; TERMINATED -> gone. A pod that cannot serve lists as
"failed" and is terminated by the policy: ERROR, RUNNING without a GPU (a zero-GPU resume), or
PROVISIONING past STEMFLEET_TRANSIENT_TIMEOUT (RunPod could not place it; no container, so no
worker, runs in it). A stopped pod is not a reservation: a `start` that comes back without a
GPU or is refused for capacity raises kind "capacity", and the scaler terminates the pod and
creates on the next candidate in the same run, within the same ceilings.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any, Unpack

import httpx

from app.log import get_logger
from app.retry import jittered, retrying
from app.settings import Settings
from scaler.model import Machine, MachineState
from scaler.providers.base import Price, ProviderError
from scaler.providers.fly import parse_time
from scaler.providers.http import ApiClient, HttpOptions
from scaler.providers.runpod_catalog import Candidate, PriceList, detail_of
from scaler.providers.runpod_settings import RunPodSettings, load_pod_template, load_runpod_settings

FLEET_ENV = "STEMFLEET_FLEET"
STATES: dict[str, MachineState] = {
    "PROVISIONING": "starting",
    "STARTING": "starting",
    "RUNNING": "started",
    "EXITED": "stopped",
    "ERROR": "failed",
    "TERMINATED": "gone",
}
_EPS = 1e-9


class RunPodProvider:
    name = "runpod"

    def __init__(
        self,
        settings: Settings,
        runpod: RunPodSettings | None = None,
        **http: Unpack[HttpOptions],
    ) -> None:
        self.settings = settings
        self.rp = runpod or load_runpod_settings()
        self._template = load_pod_template(self.rp)
        assert self.rp.api_key is not None
        if http.get("client") is None:
            http["client"] = httpx.Client(timeout=httpx.Timeout(self.rp.timeout))
        self.api = ApiClient(
            "RunPod",
            self.rp.api_url.rstrip("/") + "/v2",
            {
                "Authorization": f"Bearer {self.rp.api_key.get_secret_value()}",
                "Accept": "application/json",
            },
            max_retries=self.rp.max_retries,
            error_text=detail_of,
            **http,
        )
        self._clock = self.api.clock
        self._rng = self.api.rng
        self.prices = PriceList(self.rp, self._template)
        self._stopped_at: dict[str, datetime] = {}  # pods this provider stopped, and when
        self.create_size = self.prices.candidates()[0].size
        self.log = get_logger(provider="runpod")

    def create_price(self) -> Price:
        return Price(self.prices.candidates()[0].hourly_usd, self.prices.volume_usd(self._template))

    # --- the provider interface -----------------------------------------------------------
    def is_ours(self, pod: dict[str, Any]) -> bool:
        env = pod.get("env") or {}
        return str(pod.get("name") or "").startswith(self.rp.name_prefix) and (
            env.get(FLEET_ENV) == self.rp.fleet
        )

    def _pods(self) -> list[dict[str, Any]]:
        response = self.api.request("GET", "/pods", action="list", key="pods")
        self.api.raise_for(response, "list pods")
        return [p for p in response.json().get("pods") or [] if self.is_ours(p)]

    def list(self) -> list[Machine]:
        return sorted((self.machine(p) for p in self._pods()), key=lambda m: m.id)

    def create(self, name: str, max_hourly_usd: float) -> Machine:
        """One new pod named `name` on the first candidate that places it (the module's table),
        costing at most `max_hourly_usd`."""
        name = name if name.startswith(self.rp.name_prefix) else self.rp.name_prefix + name
        stock = self.prices.read(self.api) if self.rp.catalog else None
        candidates = self.prices.candidates(stock)
        if not candidates:
            raise ProviderError(
                "no capacity: the catalog has no stock of any STEMFLEET_RUNPOD_GPU_TYPES in "
                "STEMFLEET_RUNPOD_CLOUDS / STEMFLEET_RUNPOD_DATA_CENTERS",
                kind="capacity",
            )
        fits = [c for c in candidates if c.hourly_usd <= max_hourly_usd + _EPS]
        if not fits:
            raise ProviderError(
                f"the cheapest candidate, {min(candidates, key=lambda c: c.hourly_usd).describe()}"
                f", costs more than the ${max_hourly_usd:.4f}/h left under the ceilings",
                kind="over_ceiling",
            )
        tried, last_detail = [], ""
        for candidate in fits:
            answer = self._create_on(candidate, name)
            if isinstance(answer, Machine):
                return answer
            status, detail = answer.status_code, detail_of(answer)
            if status == 402:
                raise ProviderError(f"no balance: {detail}", kind="no_balance", status=402)
            if status in (401, 404, 422):
                raise ProviderError(
                    f"configuration error, not retried: RunPod rejected the pod (HTTP "
                    f"{status}): {detail}; check deploy/runpod-pod.json and STEMFLEET_RUNPOD_*",
                    kind="config",
                    status=status,
                )
            tried.append(f"{candidate.describe()}: HTTP {status} {detail}")
            if status != 403:  # 403: no access to that pool, not a placement answer
                last_detail = detail
        what = f"last detail: {last_detail}" if last_detail else "no access to any (403)"
        raise ProviderError(
            f"no candidate placed a pod; {what} (tried {'; '.join(tried)})",
            kind="capacity" if last_detail else "rejected",
            status=400 if last_detail else 403,
        )

    def _create_on(self, candidate: Candidate, name: str) -> Machine | httpx.Response:
        """The created (or adopted) pod, or the final answer for this candidate."""
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

        def once() -> Machine | httpx.Response:
            try:
                response = self.api.request(
                    "POST", "/pods", action="create", key=name, json=body, creates=True
                )
            except ProviderError as exc:
                if exc.kind != "unknown_outcome":
                    raise
                adopted = next((p for p in self._pods() if p.get("name") == name), None)
                if adopted is None:  # no pod has the name: this try surely made nothing
                    raise
                self.log.warning("runpod_pod_adopted", pod_id=adopted["id"], name=name)
                return self.machine(adopted)
            if response.status_code != 201:
                return response
            machine = self.machine(response.json())
            self.log.info("runpod_pod_created", pod_id=machine.id, name=name, size=candidate.size)
            return machine

        # the same candidate again, with backoff, while the outcome is unknown and no pod has
        # the name
        return retrying(
            on=lambda exc: isinstance(exc, ProviderError) and exc.kind == "unknown_outcome",
            wait=jittered(0.5, 30.0, self._rng),
            sleep=self.api.sleep,
            attempts=self.rp.max_retries + 1,
            log=self.log,
            event="runpod_create_retry",
            name=name,
        )(once)

    def start(self, machine_id: str) -> None:
        response = self._action(machine_id, "start")
        if response.status_code == 200 and not self.has_gpu(response.json()):
            raise ProviderError(
                f"pod {machine_id} resumed with zero GPUs (its card was taken while it was "
                "stopped): replacing it",
                kind="capacity",
            )
        if response.status_code == 400:
            raise ProviderError(
                f"pod {machine_id} cannot start: {detail_of(response)}", kind="capacity", status=400
            )
        if response.status_code == 402:
            raise ProviderError(f"no balance: {detail_of(response)}", kind="no_balance", status=402)
        self.api.raise_for(response, f"start pod {machine_id}")

    def stop(self, machine_id: str) -> None:
        response = self._action(machine_id, "stop")
        if response.status_code == 409:
            return  # not running (EXITED already): nothing to stop
        self.api.raise_for(response, f"stop pod {machine_id}")
        self._stopped_at[machine_id] = self._clock.now()  # RunPod says only that it EXITED

    def destroy(self, machine_id: str) -> None:
        response = self.api.request(
            "DELETE", f"/pods/{machine_id}", action="terminate", key=machine_id
        )
        if response.status_code == 404:
            return  # already gone
        self.api.raise_for(response, f"terminate pod {machine_id}")

    def wait(self, machine_id: str, state: MachineState, timeout: float) -> bool:
        deadline = self._clock.monotonic() + timeout
        for pod in self._polls(machine_id):
            if self.machine(pod).state == state:
                return True
            left = deadline - self._clock.monotonic()
            if left <= 0:
                return False
            self.api.sleep(min(5.0, left))
        return False

    def _polls(self, machine_id: str) -> Iterator[dict[str, Any]]:
        while True:
            response = self.api.request("GET", f"/pods/{machine_id}", action="get", key=machine_id)
            self.api.raise_for(response, f"read pod {machine_id}")
            yield response.json()

    def close(self) -> None:
        self.api.close()

    # --- pods -----------------------------------------------------------------------------
    def _action(self, machine_id: str, action: str) -> httpx.Response:
        return self.api.request(
            "POST",
            f"/pods/{machine_id}/action",
            action=action,
            key=machine_id,
            json={"action": action},
        )

    @staticmethod
    def has_gpu(pod: dict[str, Any]) -> bool:
        """False for a GPU pod without its card (a zero-GPU resume): no `gpu` block, a count
        of 0, or a RUNNING pod whose runtime shows no GPU."""
        gpu = pod.get("gpu")
        if not gpu or int(gpu.get("count") or 0) < 1:
            return False
        runtime = pod.get("runtime")
        return not (
            pod.get("status") == "RUNNING"
            and isinstance(runtime, dict)
            and runtime.get("gpus") == []
        )

    def machine(self, pod: dict[str, Any]) -> Machine:
        status = str(pod.get("status") or "")
        state: MachineState = STATES.get(status, "starting")
        created = parse_time(pod.get("createdAt"))
        started = parse_time(pod.get("startedAt"))
        since = started if status in ("STARTING", "RUNNING") and started else created
        if status in ("EXITED", "ERROR"):  # the API has no time for these: ours, or unknown
            since = self._stopped_at.get(str(pod["id"])) if status == "EXITED" else None
        if status == "RUNNING" and not self.has_gpu(pod):
            state = "failed"  # a zero-GPU resume: it cannot do GPU work
        elif status == "PROVISIONING" and since is not None:
            age = (self._clock.now() - since).total_seconds()
            if age > self.settings.transient_timeout:
                state, since = "failed", None  # RunPod could not place it; no container ran
        gpu = (pod.get("gpu") or {}).get("id") or "?"
        size = f"{pod.get('cloud') or 'SECURE'}/{gpu}"
        cost = float(pod.get("cost") or 0.0)
        volume = self.prices.volume_usd(pod)
        running = cost if cost > 0 else self.prices.price(size)
        return Machine(
            id=str(pod["id"]),
            state=state,
            size=size,
            hourly_usd=running,
            state_since=since,
            region=pod.get("dataCenterId"),
            # a failed pod that still holds its GPU (ERROR, stuck PROVISIONING) bills its cost
            stopped_hourly_usd=max(cost, volume) if state == "failed" else volume,
            booted_at=started if status in ("STARTING", "RUNNING") else None,
            provider_state=status,
            name=pod.get("name"),
        )
