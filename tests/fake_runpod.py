"""A fake RunPod REST API v2: real HTTP on 127.0.0.1, pods kept in memory, every request and
every answer checked against the published spec (tests/data/runpod-openapi.json, a copy of
shared/reference/runpod-openapi.json), per-second billing on a FakeClock, faults on demand.

Use:
    fake = FakeRunPod(clock)                    # FakeClock from app.clock
    url = fake.start()                          # STEMFLEET_RUNPOD_API_URL=url, key fake.api_key
    ...drive the client...; fake.tick()         # pods move one step per tick, never on wall time
    assert fake.violations == []                # a request that breaks the spec is a test failure
    fake.stop()

A request that breaks the spec (unknown path or method, a parameter or body that does not fit
its schema, an unknown property anywhere: stricter than the spec) is answered 404/405/422 and
appended to `violations`; so is an answer of the fake's own that breaks the spec's response
schemas. `calls` records every request (`count("create")` counts them).

Pods (statuses from the spec's PodStatus; `actions` as the podAction description lists them):
    create -> PROVISIONING -(provision_ticks)-> STARTING -(start_ticks)-> RUNNING
    start (EXITED, ERROR) -> STARTING -> RUNNING;  restart (RUNNING) -> STARTING -> RUNNING
    stop (PROVISIONING, STARTING, RUNNING) -> EXITED at once (the spec has no stopping state)
    terminate / DELETE -> TERMINATED: gone from listPods; getPod still answers it, TERMINATED,
    and any action on it is a 404 (the spec: "permanently deleted").
`startedAt` is set when a boot enters STARTING (the container starts; a worker may register
before RunPod calls it healthy). The spec gives no way to say "zero GPUs" (`gpu.count` has
minimum 1), so a pod resumed without a GPU is RUNNING with its `gpu` block omitted and
`runtime.gpus` empty; it costs only its disk.

Placement and money: a create places one GPU type on the first of its `dataCenterIds` (or of
all data centres) with room under `set_capacity` (unlimited by default), else 400 with the
no-capacity detail. `cost` is the billed $/h: GPU price (per cloud) x count + container disk +
volume; 0.0 when EXITED or TERMINATED as the spec says, yet an EXITED pod is still billed its
volume (persistent mount) at `Prices.volume_gb_hour_stopped` (and its container disk at
`container_disk_gb_hour_stopped`, 0 by default: the spec calls it ephemeral). PROVISIONING,
STARTING and ERROR pods hold their GPU and are billed like RUNNING ones. `charged_usd()` is the
bill so far, `rate_usd_per_hour()` the rate now; `Prices(...)` sets every figure.

Faults (names: create, list, get, update, start, stop, restart, terminate, catalog, or an
operationId; `gpu_id=`/`pod_id=` narrow them):
    fail_next(name, status, detail=...)  answered with the spec's ErrorResponse, not processed
    lose_next(name, status=502)  processed, then the answer is a 5xx (status=None: no answer,
                                 the connection closes)
    set_capacity(gpu_id, gpus, data_center=, cloud=)  400 no capacity past it; a start then
                                 comes back without a GPU; the catalog's availability follows
    set_balance(usd)             402 on create/start while under an hour of the pod's rate
    set_hourly_limit(usd)        the account's spend limit: 400 on a create/start past it
    stall_next()                 the next boot stays PROVISIONING (or STARTING) until stopped
    error_next() / break_pod(id) the next boot ends in ERROR / the pod goes ERROR now
    zero_gpu_next_start()        the next start comes back RUNNING without a GPU
    add_pod(name, ...)           a pod that was there before (someone else's, or ours)

Every authenticated answer carries the spec's `RateLimit` and `RateLimit-Policy` headers; past
a window's quota (`limits`, fixed fake-clock windows; default the spec's example, 60 a minute,
3000 an hour, 50000 a day; `limits={}` for none) the answer is 429 with `Retry-After` seconds
to the window's end, and the request is not counted. fail_next(name, 429, retry_after=n)
forces one.
"""

from __future__ import annotations

import functools
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.clock import FakeClock
from tests.fake_runpod_catalog import NO_CAPACITY, GpuOffer, Prices, catalog
from tests.fake_runpod_pods import NO_BALANCE, OVER_LIMIT, RunPodAccount
from tests.spec_support import LoopbackServer, OpenApiSpec, Reply, Request, problem

SPEC_PATH = Path(__file__).parent / "data" / "runpod-openapi.json"
SHARED_SPEC_PATH = Path(__file__).resolve().parents[2] / "shared/reference/runpod-openapi.json"
SHORT_NAMES = {
    "createPod": "create",
    "listPods": "list",
    "getPod": "get",
    "updatePod": "update",
    "deletePod": "terminate",
    "listGpuTypes": "catalog",
    "getGpuType": "catalog",
}
# window -> (quota, seconds), as in the spec's RateLimit-Policy example; limits={} turns it off
DEFAULT_LIMITS = {"minute": (60, 60), "hour": (3000, 3600), "day": (50000, 86400)}


@functools.cache
def load_spec() -> OpenApiSpec:
    return OpenApiSpec(SPEC_PATH)


@dataclass
class Call:
    method: str
    path: str
    operation: str | None
    query: dict[str, Any]
    body: Any
    status: int  # 0: the connection was closed with no answer


@dataclass
class Fault:
    name: str
    status: int | None  # None: the connection closes with no answer
    times: int
    detail: str | None = None
    retry_after: int | None = None
    after: bool = False  # the request is processed, then its answer is lost
    gpu_id: str | None = None
    pod_id: str | None = None

    def matches(self, names: set[str], gpu_id: str | None, pod_id: str | None) -> bool:
        return (
            self.name in names and self.gpu_id in (None, gpu_id) and self.pod_id in (None, pod_id)
        )


class FakeRunPod(RunPodAccount):
    def __init__(
        self,
        clock: FakeClock,
        *,
        api_key: str = "fake-runpod-key",
        prices: Prices | None = None,
        provision_ticks: int = 1,
        start_ticks: int = 1,
        limits: dict[str, tuple[int, int]] | None = None,
    ) -> None:
        super().__init__(
            clock, prices=prices, provision_ticks=provision_ticks, start_ticks=start_ticks
        )
        self.api_key = api_key
        self.limits = DEFAULT_LIMITS if limits is None else limits
        self.spec = load_spec()
        self.calls: list[Call] = []
        self.faults: deque[Fault] = deque()
        self._used: dict[str, tuple[int, int]] = {}  # window -> (its start, requests in it)
        self._server = LoopbackServer(self._serve)

    def start(self) -> str:
        return self._server.start()

    @property
    def url(self) -> str:
        return self._server.url

    def stop(self) -> None:
        self._server.stop()

    def count(self, name: str) -> int:
        """Requests for `name` (a short name or an operationId) answered so far."""
        with self._lock:
            return sum(1 for c in self.calls if name in _names(c.operation, c.body))

    def fail_next(
        self,
        name: str,
        status: int,
        *,
        times: int = 1,
        detail: str | None = None,
        retry_after: int | None = None,
        gpu_id: str | None = None,
        pod_id: str | None = None,
    ) -> None:
        """The next `times` requests for `name` (only those for that GPU type or pod, when
        given) are answered `status` with `detail`, and not processed."""
        with self._lock:
            self.faults.append(
                Fault(name, status, times, detail, retry_after, gpu_id=gpu_id, pod_id=pod_id)
            )

    def lose_next(
        self,
        name: str,
        *,
        status: int | None = 502,
        times: int = 1,
        gpu_id: str | None = None,
        pod_id: str | None = None,
    ) -> None:
        """The next `times` requests for `name` that succeed are processed, but the answer is
        `status` (a 5xx) or, with status=None, the connection closes with no answer."""
        with self._lock:
            self.faults.append(Fault(name, status, times, after=True, gpu_id=gpu_id, pod_id=pod_id))

    # --- HTTP -----------------------------------------------------------------------------
    def _serve(self, request: Request) -> Reply:
        operation: str | None = None
        query: dict[str, Any] = {}
        if request.headers.get("authorization") != f"Bearer {self.api_key}":
            reply = problem(401, "missing bearer token or wrong API key")
        else:
            reply, operation, query = self._dispatch(request)
            if not reply.dropped:
                reply.headers.update(self._rate_headers())
        with self._lock:
            self.calls.append(
                Call(request.method, request.path, operation, query, request.body, reply.status)
            )
        return reply

    def _dispatch(self, request: Request) -> tuple[Reply, str | None, dict[str, Any]]:
        found = self.spec.match(request.method, request.path)
        if isinstance(found, list):
            what = "method not allowed" if found else "no such path in the spec"
            self.violations.append(f"{request.method} {request.path}: {what}")
            if not found:
                return problem(404, "resource not found"), None, {}
            reply = problem(405, "The requested method is not allowed for this path.")
            reply.headers["Allow"] = ", ".join(found)
            return reply, None, {}
        op, params = found
        name = op.operation_id
        query, problems = self.spec.check_request(
            op, params, request.query, request.body, request.headers.get("content-type")
        )
        if not request.body_is_json:
            problems.append("the body is not JSON")
        if problems:
            self.violations.extend(f"{name}: {p}" for p in problems)
            return problem(422, "Request validation failed.", problems), name, query
        with self._lock:
            target = self._target(name, params, request.body)
            refused = self._throttle() or self._fault(target, after=False)
            if refused is not None:
                reply = refused
            else:
                if name in ("listGpuTypes", "getGpuType"):
                    reply = catalog(self.prices, self._free, params.get("id"), query)
                else:
                    reply = self.operate(name, params, query, request.body or {})
                if reply.status < 300:
                    reply = self._fault(target, after=True) or reply
        if not reply.dropped:
            ctype = reply.content_type if reply.body is not None else None
            problems = self.spec.check_response(op, reply.status, reply.body, ctype)
            self.violations.extend(f"fake answer: {p}" for p in problems)
        return reply, name, query

    def _throttle(self) -> Reply | None:
        now = int(self.clock.now().timestamp())
        exceeded = []
        for window, (quota, seconds) in self.limits.items():
            start = now - now % seconds
            began, used = self._used.get(window, (start, 0))
            used = used if began == start else 0
            self._used[window] = (start, used)
            if used >= quota:
                exceeded.append((start + seconds - now, window))
        if exceeded:
            wait, window = max(exceeded)
            reply = problem(429, f"rate limit exceeded for the {window} window")
            reply.headers["Retry-After"] = str(wait)
            return reply
        for window, (start, used) in self._used.items():
            self._used[window] = (start, used + 1)
        return None

    def _rate_headers(self) -> dict[str, str]:
        now = int(self.clock.now().timestamp())
        live, policy = [], []
        for window, (quota, seconds) in self.limits.items():
            began, used = self._used.get(window, (now - now % seconds, 0))
            left = quota - used if began == now - now % seconds else quota
            live.append(f'"{window}";r={max(left, 0)};t={seconds - now % seconds}')
            policy.append(f'"{window}";q={quota};w={seconds}')
        if not live:
            return {}  # the spec: omitted for rate-limit-exempt callers
        return {"RateLimit": ", ".join(live), "RateLimit-Policy": ", ".join(policy)}

    def _target(
        self, operation: str, params: dict[str, str], body: Any
    ) -> tuple[set[str], str | None, str | None]:
        """The names a fault may use for this request, and its GPU type and pod."""
        pod = self.pods.get(params.get("id", ""))
        if pod is not None:
            return _names(operation, body), pod.config["gpu"]["id"], pod.config["id"]
        gpu = body.get("gpu") if operation == "createPod" and isinstance(body, dict) else None
        return _names(operation, body), (gpu or {}).get("id"), None

    def _fault(
        self, target: tuple[set[str], str | None, str | None], *, after: bool
    ) -> Reply | None:
        fault = next((f for f in self.faults if f.after == after and f.matches(*target)), None)
        if fault is None:
            return None
        fault.times -= 1
        if fault.times <= 0:
            self.faults.remove(fault)
        if fault.status is None:
            return Reply.drop()
        reply = problem(fault.status, fault.detail or f"injected {fault.status}")
        if fault.status == 429:
            reply.headers["Retry-After"] = str(fault.retry_after or 12)
        return reply


def _names(operation: str | None, body: Any) -> set[str]:
    if operation is None:
        return set()
    names = {operation, SHORT_NAMES.get(operation, operation)}
    if operation == "podAction" and isinstance(body, dict):
        names.add(str(body.get("action")))
    return names


__all__ = ["NO_BALANCE", "NO_CAPACITY", "OVER_LIMIT", "Call", "FakeRunPod", "GpuOffer", "Prices"]
