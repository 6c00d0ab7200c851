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
volume (persistent mount) at `Prices.volume_gb_hour_stopped`. PROVISIONING, STARTING and ERROR
pods hold their GPU and are billed like RUNNING ones. `charged_usd()` is the bill so far.

Faults (names: create, list, get, update, start, stop, restart, terminate, catalog, or an
operationId): `fail_next(name, status, detail=...)`, `lose_next(name)` (done, but the answer is
a 5xx or a dropped connection), `set_capacity(...)`, `set_balance(usd)` (402 below an hour's
rate), `stall_next()` (stays PROVISIONING/STARTING), `error_next()` (ends in ERROR),
`zero_gpu_next_start()`, `break_pod(pod_id)`. Every answer carries the spec's `RateLimit` and
`RateLimit-Policy` headers; past a window's quota the answer is 429 with `Retry-After`.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.clock import FakeClock
from tests.fake_runpod_pods import (
    DATA_CENTERS,
    HOST_CUDA,
    NO_CAPACITY,
    GpuOffer,
    Prices,
    RunPodAccount,
    cuda_accepts,
    problem,
)
from tests.spec_support import LoopbackServer, OpenApiSpec, Reply, Request

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
# window -> (quota, seconds), as in the spec's RateLimit-Policy example
DEFAULT_LIMITS = {"minute": (60, 60), "hour": (3000, 3600), "day": (50000, 86400)}


@dataclass
class Call:
    method: str
    path: str
    operation: str | None
    query: dict[str, Any]
    body: Any
    status: int


@dataclass
class Fault:
    name: str
    status: int | None  # None: the connection closes with no answer
    times: int
    detail: str | None = None
    retry_after: int | None = None
    after: bool = False  # the request is processed, then its answer is lost


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
        self.spec = OpenApiSpec(SPEC_PATH)
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
    ) -> None:
        """The next `times` requests for `name` are answered `status` and not processed."""
        with self._lock:
            self.faults.append(Fault(name, status, times, detail, retry_after))

    def lose_next(self, name: str, *, status: int | None = 502, times: int = 1) -> None:
        """The next `times` requests for `name` are processed, but the answer is `status`
        (a 5xx) or, with status=None, the connection closes with no answer."""
        with self._lock:
            self.faults.append(Fault(name, status, times, after=True))

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
            refused = self._throttle() or self._fault(name, request.body, after=False)
            if refused is not None:
                reply = refused
            else:
                if name in ("listGpuTypes", "getGpuType"):
                    reply = self._catalog(params.get("id"), query)
                else:
                    reply = self.operate(name, params, query, request.body or {})
                reply = self._fault(name, request.body, after=True) or reply
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
        return {"RateLimit": ", ".join(live), "RateLimit-Policy": ", ".join(policy)}

    def _fault(self, operation: str, body: Any, *, after: bool) -> Reply | None:
        names = _names(operation, body)
        fault = next((f for f in self.faults if f.name in names and f.after == after), None)
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

    def _catalog(self, gpu_id: str | None, query: dict[str, Any]) -> Reply:
        include = "AVAILABILITY" in query.get("include", [])
        scoped = [k for k in ("count", "cloud", "countryCodes", "cudaVersions", "minCudaVersion")]
        if include != ("product" in query):
            return problem(400, "product is required with include=AVAILABILITY, and only there")
        if not include and (extra := [k for k in scoped if k in query]):
            return problem(400, f"{extra[0]} is valid only with include=AVAILABILITY")
        if "cudaVersions" in query and "minCudaVersion" in query:
            return problem(400, "cudaVersions and minCudaVersion are mutually exclusive")
        if gpu_id is not None and gpu_id not in self.prices.gpus:
            return problem(404, "GPU type not found")
        entries = []
        for gid in [gpu_id] if gpu_id else sorted(self.prices.gpus):
            offer = self.prices.gpus[gid]
            entry: dict[str, Any] = {
                "id": gid,
                "name": offer.name,
                "pool": None,
                "manufacturer": "NVIDIA",
                "memory": offer.memory_gb,
                "secure": True,
                "community": True,
                "price": {"secure": offer.secure, "community": offer.community},
                "maxCount": {"secure": offer.max_count, "community": offer.max_count},
            }
            if include:
                places = self._availability(gid, query)
                if not places and gpu_id is None:
                    continue  # no data centre in the countries asked for
                levels = [p["availability"] for p in places] or ["NONE"]
                entry["availability"] = max(levels, key=LEVELS.index)
                if entry["availability"] != "NONE":
                    entry["dataCenters"] = places
                cuda = cuda_accepts(query.get("cudaVersions"), query.get("minCudaVersion"))
                entry["cudaVersions"] = (
                    [{"version": HOST_CUDA, "available": entry["availability"] != "NONE"}]
                    if cuda
                    else []
                )
            entries.append(entry)
        return Reply(200, entries[0] if gpu_id else {"gpus": entries})

    def _availability(self, gpu_id: str, query: dict[str, Any]) -> list[dict[str, Any]]:
        count, cloud = query.get("count", 1), query.get("cloud", "SECURE")
        cuda = cuda_accepts(query.get("cudaVersions"), query.get("minCudaVersion"))
        places = []
        for dc, (name, country) in DATA_CENTERS.items():
            if query.get("countryCodes") and country not in query["countryCodes"]:
                continue
            free = self._free(gpu_id, dc, cloud) if cuda else 0
            level = "HIGH" if free is None else _level(free, count)
            places.append({"id": dc, "name": name, "availability": level})
        return places


LEVELS = ["NONE", "LOW", "MEDIUM", "HIGH"]


def _level(free: int, count: int) -> str:
    if free < count:
        return "NONE"
    return "LOW" if free < 3 * count else "MEDIUM" if free < 8 * count else "HIGH"


def _names(operation: str | None, body: Any) -> set[str]:
    if operation is None:
        return set()
    names = {operation, SHORT_NAMES.get(operation, operation)}
    if operation == "podAction" and isinstance(body, dict):
        names.add(str(body.get("action")))
    return names


__all__ = ["NO_CAPACITY", "Call", "FakeRunPod", "GpuOffer", "Prices"]
