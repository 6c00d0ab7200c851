"""RunPod prices for the simulator (`--runpod OFFER`): a persistent pod's $/h for the policy,
always-on and scale-to-zero rows, and RunPod Serverless' per-second price for the serverless row.

Pod prices are published third-party figures (2026); serverless prices are RunPod's own (flex
workers, per second). Both change: override them with --pod-usd-per-hour and
--serverless-usd-per-second.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.settings import Settings


@dataclass(frozen=True, slots=True)
class GpuOffer:
    key: str
    label: str
    pod_hourly_usd: float
    serverless_usd_per_s: float

    @property
    def size(self) -> str:
        return f"runpod-{self.key}"


RUNPOD_OFFERS = {
    offer.key: offer
    for offer in (
        GpuOffer("community-a4000", "RunPod Community RTX A4000", 0.17, 0.00016),
        GpuOffer("community-3090", "RunPod Community RTX 3090", 0.22, 0.00019),
        GpuOffer("secure-a4000", "RunPod Secure RTX A4000", 0.29, 0.00016),
        GpuOffer("secure-3090", "RunPod Secure RTX 3090", 0.43, 0.00019),
    )
}


def with_offer(
    settings: Settings, offer: GpuOffer, pod_hourly_usd: float | None = None
) -> Settings:
    """The settings with the offer's pod as the machine size, at its price (or the given one)."""
    price = offer.pod_hourly_usd if pod_hourly_usd is None else pod_hourly_usd
    return settings.model_copy(
        update={
            "machine_size": offer.size,
            "machine_prices": {**settings.machine_prices, offer.size: price},
        }
    )
