"""The RunPod account behind the fake API (tests/fake_runpod.py): pods and their statuses,
placement under capacity, per-second billing. No HTTP here: `operate()` takes a request that
already fits the spec and returns the answer.
"""

from __future__ import annotations

import copy
import threading
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from app.clock import FakeClock
from tests.fake_runpod_catalog import (
    DATA_CENTERS,
    HOST_CUDA,
    NO_CAPACITY,
    Prices,
    cuda_accepts,
)
from tests.spec_support import Reply, problem

NO_BALANCE = "Insufficient balance: add funds to your account to deploy this pod."
OVER_LIMIT = "This would take your pods past your account's spend limit per hour."
HOLDING = ("PROVISIONING", "STARTING", "RUNNING", "ERROR")  # statuses that hold a GPU
ACTIONS = {  # the spec's podAction description
    "PROVISIONING": ["stop", "terminate"],
    "STARTING": ["stop", "terminate"],
    "RUNNING": ["stop", "restart", "terminate"],
    "EXITED": ["start", "terminate"],
    "ERROR": ["start", "terminate"],
    "TERMINATED": [],
}
UPDATABLE = ("name", "image", "args", "disk", "ports", "env", "registry", "locked")


@dataclass
class Pod:
    config: dict[str, Any]
    status: str
    gpus: int  # GPUs attached now: 0 after a resume that found its card taken
    billed_until: datetime
    ticks_left: int = 0
    stalled: bool = False
    doomed: bool = False
    charged: float = 0.0

    @property
    def volume(self) -> int:
        return int(self.config["mounts"].get("persistent", {}).get("size", 0))


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


class RunPodAccount:
    def __init__(
        self,
        clock: FakeClock,
        *,
        prices: Prices | None = None,
        provision_ticks: int = 1,
        start_ticks: int = 1,
    ) -> None:
        self.clock = clock
        self.prices = prices or Prices()
        self.provision_ticks, self.start_ticks = provision_ticks, start_ticks
        self.pods: dict[str, Pod] = {}
        self.violations: list[str] = []
        self.capacity: dict[tuple[str, str | None, str | None], int] = {}
        self.balance_usd: float | None = None
        self.hourly_limit_usd: float | None = None
        self.next_stalled = self.next_doomed = self.next_zero_gpu = 0
        self._counter = 0
        self._lock = threading.RLock()

    # --- what the tests read --------------------------------------------------------------
    def states(self) -> dict[str, str]:
        with self._lock:
            return {pod_id: pod.status for pod_id, pod in sorted(self.pods.items())}

    def pod(self, pod_id: str) -> dict[str, Any]:
        """The pod as getPod answers it."""
        with self._lock:
            return self._pod_json(self.pods[pod_id])

    def rate_usd_per_hour(self, pod_id: str | None = None) -> float:
        """What is billed per hour now (EXITED pods' volumes included)."""
        with self._lock:
            return sum(self._rate(p) for i, p in self.pods.items() if pod_id in (None, i))

    def bill(self) -> dict[str, float]:
        """USD charged per pod so far, per second of the fake clock."""
        with self._lock:
            for pod in self.pods.values():
                self._accrue(pod)
            return {pod_id: pod.charged for pod_id, pod in sorted(self.pods.items())}

    def charged_usd(self, pod_id: str | None = None) -> float:
        return sum(usd for i, usd in self.bill().items() if pod_id in (None, i))

    # --- what the tests change ------------------------------------------------------------
    def tick(self, n: int = 1) -> None:
        """Every pod in PROVISIONING or STARTING moves one step (see the module's doc)."""
        with self._lock:
            for _ in range(n):
                for pod in self.pods.values():
                    self._advance(pod)

    def set_capacity(
        self, gpu_id: str, gpus: int, *, data_center: str | None = None, cloud: str | None = None
    ) -> None:
        """At most `gpus` GPUs of this type held at once (in that data centre and cloud, or in
        all when None): a create beyond it gets 400 no capacity, a start comes back without a
        GPU, and the catalog's availability follows."""
        with self._lock:
            self.capacity[(gpu_id, data_center, cloud)] = gpus

    def set_balance(self, usd: float | None) -> None:
        """Creates and starts answer 402 while the balance left is under an hour of the pod."""
        with self._lock:
            self.balance_usd = usd

    def set_hourly_limit(self, usd: float | None) -> None:
        """The account's own spend limit: a create or start that would take the pods holding
        GPUs past `usd` per hour answers 400 (the spec's "breaks a rule"; it has no code)."""
        with self._lock:
            self.hourly_limit_usd = usd

    def stall_next(self, times: int = 1) -> None:
        """The next pods to boot (create, start, restart) stay PROVISIONING/STARTING."""
        with self._lock:
            self.next_stalled += times

    def error_next(self, times: int = 1) -> None:
        """The next pods to boot end in ERROR instead of RUNNING."""
        with self._lock:
            self.next_doomed += times

    def zero_gpu_next_start(self, times: int = 1) -> None:
        """The next starts come back without a GPU, as when someone took the card."""
        with self._lock:
            self.next_zero_gpu += times

    def break_pod(self, pod_id: str) -> None:
        """The pod goes ERROR now."""
        with self._lock:
            self._set_status(self.pods[pod_id], "ERROR")

    def add_pod(
        self,
        name: str,
        *,
        status: str = "RUNNING",
        gpu_id: str = "NVIDIA RTX A4000",
        env: dict[str, str] | None = None,
        cloud: str = "SECURE",
        data_center: str = "US-TX-3",
    ) -> str:
        """A pod that exists before the test (someone else's, or left by an earlier run)."""
        with self._lock:
            body = {"name": name, "image": "someone/else:1", "env": env or {}, "cloud": cloud}
            pod = self._new_pod({**body, "gpu": {"id": gpu_id}}, data_center, boot=False)
            if status != "PROVISIONING":
                pod.config["startedAt"] = iso(self.clock.now())
            self._set_status(pod, status)
            return str(pod.config["id"])

    # --- the API --------------------------------------------------------------------------
    def operate(
        self, name: str, params: dict[str, str], query: dict[str, Any], body: dict[str, Any]
    ) -> Reply:
        if name == "createPod":
            return self._create(body)
        if name == "listPods":
            pods = [self._pod_json(p) for _, p in sorted(self.pods.items())]
            return Reply(200, {"pods": [p for p in pods if p["status"] != "TERMINATED"]})
        if name not in ("getPod", "updatePod", "deletePod", "podAction"):
            self.violations.append(f"{name}: valid, but the fake does not model it")
            return problem(501, f"{name} is not modelled by the fake")
        pod = self.pods.get(params["id"])
        if pod is None or (pod.status == "TERMINATED" and name != "getPod"):
            return problem(404, "pod not found")
        if name == "getPod":
            return Reply(200, self._pod_json(pod))
        if name == "updatePod":
            return self._update(pod, body)
        return self._action(pod, "terminate" if name == "deletePod" else body["action"])

    def _create(self, body: dict[str, Any]) -> Reply:
        gpu, cloud = body.get("gpu"), body.get("cloud", "SECURE")
        if (gpu is None) == ("cpu" not in body):
            return problem(400, "exactly one of gpu or cpu must be set")
        if gpu is None or "templateId" in body:
            self.violations.append("createPod: the fake models GPU pods from an image only")
            return problem(400, "the fake models GPU pods from an image only")
        offer, count = self.prices.gpus.get(gpu["id"]), gpu.get("count", 1)
        if offer is None:
            return problem(400, f"GPU type {gpu['id']} is not offered")
        if count > offer.max_count:
            return problem(400, f"at most {offer.max_count} GPUs of {gpu['id']} on one pod")
        if gpu.get("allowedCudaVersions") and "minCudaVersion" in gpu:
            return problem(400, "allowedCudaVersions and minCudaVersion are mutually exclusive")
        if len(body.get("mounts", {})) > 1:
            return problem(400, "at most one of mounts.persistent and mounts.network")
        wanted = body.get("dataCenterIds") or list(DATA_CENTERS)
        if unknown := [d for d in wanted if d not in DATA_CENTERS]:
            return problem(400, f"unknown data center {unknown[0]}")
        volume = body.get("mounts", {}).get("persistent", {}).get("size", 0)
        rate = self.prices.running(gpu["id"], cloud, count, body.get("disk", 50), volume)
        if refused := self._refuse_money(rate):
            return refused
        cuda_ok = cuda_accepts(gpu.get("allowedCudaVersions"), gpu.get("minCudaVersion"))
        for data_center in wanted:
            if cuda_ok and self._fits(gpu["id"], data_center, cloud, count):
                return Reply(201, self._pod_json(self._new_pod(body, data_center)))
        return problem(400, NO_CAPACITY)

    def _update(self, pod: Pod, body: dict[str, Any]) -> Reply:
        if "templateId" in body:
            self.violations.append("updatePod: the fake has no templates")
            return problem(404, "template not found")
        pod.config.update({k: copy.deepcopy(body[k]) for k in UPDATABLE if k in body})
        if "globalNetworking" in body:
            pod.config["globalNetworking"] = body["globalNetworking"]
        pod.config["mounts"].update(copy.deepcopy(body.get("mounts", {})))
        return Reply(200, self._pod_json(pod))

    def _action(self, pod: Pod, action: str) -> Reply:
        if action not in ACTIONS[pod.status]:
            return problem(409, f"cannot {action} a pod that is {pod.status}")
        if action in ("stop", "restart") and pod.config["locked"]:
            return problem(409, f"the pod is locked: cannot {action} it")
        if action == "terminate":
            self._set_status(pod, "TERMINATED")
            return Reply(204)
        if action == "stop":
            self._set_status(pod, "EXITED")
            pod.stalled = False
            return Reply(200, self._pod_json(pod))
        gpu = pod.config["gpu"]
        if action == "start":
            rate = self.prices.running(
                gpu["id"], pod.config["cloud"], gpu["count"], pod.config["disk"], pod.volume
            )
            if refused := self._refuse_money(rate, pod):
                return refused
            room = self._fits(
                gpu["id"], pod.config["dataCenterId"], pod.config["cloud"], gpu["count"], pod
            )
            zero = self.next_zero_gpu > 0 or not room
            self.next_zero_gpu -= self.next_zero_gpu > 0
            self._accrue(pod)
            pod.gpus = 0 if zero else gpu["count"]
        self._set_status(pod, "STARTING")
        pod.ticks_left = self.start_ticks
        pod.config["startedAt"] = iso(self.clock.now())
        self._boot(pod)
        return Reply(200, self._pod_json(pod))

    # --- pods -----------------------------------------------------------------------------
    def _free(self, gpu_id: str, dc: str, cloud: str, ignore: Pod | None = None) -> int | None:
        free = None
        for (g, d, c), limit in self.capacity.items():
            if g != gpu_id or d not in (None, dc) or c not in (None, cloud):
                continue
            held = sum(
                p.gpus
                for p in self.pods.values()
                if p is not ignore
                and p.status in HOLDING
                and p.config["gpu"]["id"] == g
                and d in (None, p.config["dataCenterId"])
                and c in (None, p.config["cloud"])
            )
            free = limit - held if free is None else min(free, limit - held)
        return free

    def _fits(
        self, gpu_id: str, dc: str, cloud: str, count: int, ignore: Pod | None = None
    ) -> bool:
        free = self._free(gpu_id, dc, cloud, ignore)
        return free is None or free >= count

    def _refuse_money(self, rate: float, starting: Pod | None = None) -> Reply | None:
        if self.balance_usd is not None and self.balance_usd - self.charged_usd() < rate:
            return problem(402, NO_BALANCE)
        held = [p for p in self.pods.values() if p.status in HOLDING and p is not starting]
        limit = self.hourly_limit_usd
        if limit is not None and sum(map(self._rate, held)) + rate > limit + 1e-9:
            return problem(400, OVER_LIMIT)
        return None

    def _new_pod(self, body: dict[str, Any], data_center: str, *, boot: bool = True) -> Pod:
        self._counter += 1
        pod_id, now = f"fakepod{self._counter:07d}", self.clock.now()
        gpu = {"id": body["gpu"]["id"], "count": body["gpu"].get("count", 1)}
        config = {
            "id": pod_id,
            "name": body["name"],
            "image": body.get("image", ""),
            "args": body.get("args", ""),
            "disk": body.get("disk", 50),
            "ports": body.get("ports", []),
            "env": body.get("env", {}),
            "registry": body.get("registry"),
            "mounts": body.get("mounts", {}),
            "gpu": gpu,
            "cloud": body.get("cloud", "SECURE"),
            "dataCenterId": data_center,
            "locked": False,
            "globalNetworking": bool(body.get("globalNetworking", False)),
            "createdAt": iso(now),
            "startedAt": None,
        }
        pod = Pod(copy.deepcopy(config), "PROVISIONING", gpu["count"], now, self.provision_ticks)
        self.pods[pod_id] = pod
        if boot:
            self._boot(pod)
        return pod

    def _boot(self, pod: Pod) -> None:
        pod.stalled, pod.doomed = self.next_stalled > 0, self.next_doomed > 0
        self.next_stalled -= pod.stalled
        self.next_doomed -= pod.doomed

    def _advance(self, pod: Pod) -> None:
        if pod.status not in ("PROVISIONING", "STARTING") or pod.stalled:
            return
        pod.ticks_left -= 1
        if pod.ticks_left > 0:
            return
        if pod.status == "PROVISIONING":
            self._set_status(pod, "STARTING")
            pod.ticks_left = self.start_ticks
            pod.config["startedAt"] = iso(self.clock.now())
        else:
            self._set_status(pod, "ERROR" if pod.doomed else "RUNNING")

    def _set_status(self, pod: Pod, status: str) -> None:
        self._accrue(pod)
        pod.status = status

    def _accrue(self, pod: Pod) -> None:
        now = self.clock.now()
        seconds = max((now - pod.billed_until).total_seconds(), 0.0)
        pod.charged += self._rate(pod) * seconds / 3600
        pod.billed_until = now

    def _rate(self, pod: Pod) -> float:
        if pod.status == "TERMINATED":
            return 0.0
        if pod.status == "EXITED":
            return self.prices.stopped(pod.config["disk"], pod.volume)
        gpu = pod.config["gpu"]
        return self.prices.running(
            gpu["id"], pod.config["cloud"], pod.gpus, pod.config["disk"], pod.volume
        )

    def _pod_json(self, pod: Pod) -> dict[str, Any]:
        data = copy.deepcopy(pod.config)
        pod_id, status = data["id"], pod.status
        data["status"], data["actions"] = status, list(ACTIONS[status])
        data["cost"] = 0.0 if status in ("EXITED", "TERMINATED") else self._rate(pod)
        data["cudaVersion"], data["template"] = HOST_CUDA, None
        networking: dict[str, Any] = {"enabled": data["globalNetworking"]}
        if networking["enabled"]:
            networking.update(ip="10.65.0.2", internalDns=f"{pod_id}.runpod.internal")
        data["globalNetworking"] = networking
        user = f"{pod_id}-64411eb2"
        data["ssh"] = {
            "proxy": {
                "host": "ssh.runpod.io",
                "port": 22,
                "username": user,
                "command": f"ssh {user}@ssh.runpod.io",
            },
            "direct": None,
        }
        if pod.gpus == 0 and status in HOLDING:
            del data["gpu"]  # the spec cannot say count 0 (minimum 1)
        data["runtime"] = None
        if status == "RUNNING":
            started = datetime.fromisoformat(data["startedAt"])
            data["runtime"] = {
                "uptime": int((self.clock.now() - started).total_seconds()),
                "gpus": [{"util": 0, "memoryUtil": 0} for _ in range(pod.gpus)],
                "cpu": {"util": 0},
                "memory": {"util": 0},
                "ports": [],
            }
        return data
