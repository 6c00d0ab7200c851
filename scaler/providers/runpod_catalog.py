"""What the RunPod provider may create and what it costs: the ordered candidates (GPU type x
cloud x data centre), their prices (the settings' table, refreshed from the catalog), and what a
stopped pod costs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from app.log import get_logger
from scaler.providers.base import ProviderError
from scaler.providers.http import ApiClient
from scaler.providers.runpod_settings import HOURS_PER_MONTH, RunPodSettings

Stock = dict[tuple[str, str], dict[str, Any]]


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


def detail_of(response: httpx.Response) -> str:
    """The spec's ErrorResponse as one line: `detail`, then each of `errors`."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:300] or response.reason_phrase
    if not isinstance(body, dict):
        return str(body)[:300]
    detail = str(body.get("detail") or body.get("title") or "")
    if body.get("errors"):
        detail += ": " + "; ".join(str(e) for e in body["errors"])
    return detail[:500]


class PriceList:
    """GPU list prices per (GPU type, cloud), and the disk the pod body asks for: a pod costs
    its GPU plus its container disk and volume while it runs, its volume while stopped."""

    def __init__(self, rp: RunPodSettings, body: dict[str, Any]) -> None:
        self.rp = rp
        disk = float(body.get("disk") or 0) + _volume_gb(body)
        self.disk_usd = disk * rp.disk_usd_per_gb_month / HOURS_PER_MONTH
        self.prices = {(g, c): p for g, by in rp.prices.items() for c, p in by.items()}
        self.log = get_logger(provider="runpod")

    def candidates(self, stock: Stock | None = None) -> list[Candidate]:
        """Every (GPU type, cloud, data centre) in the settings' order; with a catalog read,
        those without stock are left out."""
        found = []
        for gpu in self.rp.gpu_types:
            for cloud in self.rp.clouds:
                entry = (stock or {}).get((gpu, cloud))
                price = self.prices.get((gpu, cloud))
                if (stock is not None and entry is None) or price is None:
                    continue
                stocked = (entry or {}).get("data_centers")
                places: list[str | None] = list(self.rp.data_centers) or [None]
                for dc in places:
                    if stocked is not None and dc is not None and dc not in stocked:
                        continue
                    found.append(Candidate(gpu, cloud, dc, price + self.disk_usd))
        return found

    def read(self, api: ApiClient) -> Stock | None:
        """Stock per (GPU type, cloud) from GET /v2/catalog/gpus?include=AVAILABILITY&
        product=POD, refreshing the list prices; None when the catalog does not answer (then
        every candidate is tried, at the settings' prices)."""
        wanted: set[str] = set(self.rp.gpu_types)
        stock: Stock = {}
        for cloud in self.rp.clouds:
            params = {"include": "AVAILABILITY", "product": "POD", "cloud": cloud}
            try:
                response = api.request(
                    "GET", "/catalog/gpus", action="catalog", key=cloud, params=params
                )
            except ProviderError as exc:
                self.log.warning("runpod_catalog_unreachable", error=str(exc))
                return None
            if response.status_code != 200:
                self.log.warning("runpod_catalog_refused", detail=detail_of(response))
                return None
            for gpu in response.json().get("gpus") or []:
                if gpu.get("id") not in wanted:
                    continue
                price = (gpu.get("price") or {}).get(cloud.lower())
                if price is not None:
                    self.prices[(gpu["id"], cloud)] = float(price)
                if gpu.get("availability") == "NONE":
                    continue
                dcs = gpu.get("dataCenters")
                stock[(gpu["id"], cloud)] = {
                    "data_centers": None
                    if dcs is None
                    else {d["id"] for d in dcs if d.get("availability") != "NONE"}
                }
        return stock

    def price(self, size: str) -> float:
        """The list $/h of a new pod of `size` ("CLOUD/GPU type")."""
        cloud, _, gpu = size.partition("/")
        return self.prices.get((gpu, cloud), max(self.prices.values())) + self.disk_usd

    def volume_usd(self, pod: dict[str, Any]) -> float:
        """A stopped pod bills its persistent volume; its container disk is released."""
        return _volume_gb(pod) * self.rp.volume_usd_per_gb_month / HOURS_PER_MONTH


def _volume_gb(pod: dict[str, Any]) -> float:
    persistent = (pod.get("mounts") or {}).get("persistent") or {}
    return float(persistent.get("size") or 0)
