"""What the fake RunPod offers (GPU types, prices, data centres) and its catalog answers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.spec_support import Reply, problem

Free = Callable[[str, str, str], int | None]
NO_CAPACITY = (
    "There are no longer any instances available with the requested specifications. "
    "Please refresh and try again."
)
HOST_CUDA = "12.8"
DATA_CENTERS = {  # id -> (name, country)
    "US-TX-3": ("US Texas 3", "US"),
    "EU-RO-1": ("EU Romania 1", "RO"),
    "CA-MTL-1": ("CA Montreal 1", "CA"),
}


@dataclass(frozen=True)
class GpuOffer:
    name: str
    memory_gb: int
    secure: float  # $/h for one GPU
    community: float
    max_count: int = 8


@dataclass(frozen=True)
class Prices:
    """The fake's price list; the catalog answers it and the bill follows it."""

    gpus: dict[str, GpuOffer] = field(
        default_factory=lambda: {
            "NVIDIA RTX A4000": GpuOffer("RTX A4000", 16, 0.29, 0.17),
            "NVIDIA GeForce RTX 3090": GpuOffer("RTX 3090", 24, 0.43, 0.22),
            "NVIDIA RTX A4500": GpuOffer("RTX A4500", 20, 0.34, 0.19),
            "NVIDIA RTX A5000": GpuOffer("RTX A5000", 24, 0.36, 0.22),
            "NVIDIA RTX 4000 Ada Generation": GpuOffer("RTX 4000 Ada", 20, 0.38, 0.20),
        }
    )
    container_disk_gb_hour: float = 0.10 / 730  # while the pod holds its GPU
    volume_gb_hour_running: float = 0.10 / 730  # mounts.persistent, GPU held
    volume_gb_hour_stopped: float = 0.20 / 730  # mounts.persistent, EXITED
    container_disk_gb_hour_stopped: float = 0.0  # "ephemeral, wiped on restart"

    def stopped(self, disk: int, volume: int) -> float:
        return disk * self.container_disk_gb_hour_stopped + volume * self.volume_gb_hour_stopped

    def running(self, gpu_id: str, cloud: str, gpus: int, disk: int, volume: int) -> float:
        offer = self.gpus[gpu_id]
        per_gpu = offer.secure if cloud == "SECURE" else offer.community
        return (
            gpus * per_gpu
            + disk * self.container_disk_gb_hour
            + volume * self.volume_gb_hour_running
        )


def catalog(prices: Prices, free: Free, gpu_id: str | None, query: dict[str, Any]) -> Reply:
    """The answer to listGpuTypes (gpu_id None) or getGpuType; `free(gpu, dc, cloud)` is
    how many GPUs are free there (None: no limit)."""
    include = "AVAILABILITY" in query.get("include", [])
    scoped = [k for k in ("count", "cloud", "countryCodes", "cudaVersions", "minCudaVersion")]
    if include != ("product" in query):
        return problem(400, "product is required with include=AVAILABILITY, and only there")
    if not include and (extra := [k for k in scoped if k in query]):
        return problem(400, f"{extra[0]} is valid only with include=AVAILABILITY")
    if "cudaVersions" in query and "minCudaVersion" in query:
        return problem(400, "cudaVersions and minCudaVersion are mutually exclusive")
    if gpu_id is not None and gpu_id not in prices.gpus:
        return problem(404, "GPU type not found")
    entries = []
    for gid in [gpu_id] if gpu_id else sorted(prices.gpus):
        offer = prices.gpus[gid]
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
            places = _availability(free, gid, query)
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


def _availability(free: Free, gpu_id: str, query: dict[str, Any]) -> list[dict[str, Any]]:
    count, cloud = query.get("count", 1), query.get("cloud", "SECURE")
    cuda = cuda_accepts(query.get("cudaVersions"), query.get("minCudaVersion"))
    places = []
    for dc, (name, country) in DATA_CENTERS.items():
        if query.get("countryCodes") and country not in query["countryCodes"]:
            continue
        room = free(gpu_id, dc, cloud) if cuda else 0
        level = "HIGH" if room is None else _level(room, count)
        places.append({"id": dc, "name": name, "availability": level})
    return places


LEVELS = ["NONE", "LOW", "MEDIUM", "HIGH"]


def _level(free: int, count: int) -> str:
    if free < count:
        return "NONE"
    return "LOW" if free < 3 * count else "MEDIUM" if free < 8 * count else "HIGH"


def cuda_accepts(allowed: list[str] | None, minimum: str | None) -> bool:
    """Whether the hosts' CUDA version (HOST_CUDA) meets the constraint."""

    def version(text: str) -> tuple[int, ...]:
        return tuple(int(part) for part in text.split("."))

    if allowed and HOST_CUDA not in allowed:
        return False
    return minimum is None or version(HOST_CUDA) >= version(minimum)
