"""Settings of the RunPod provider (STEMFLEET_RUNPOD_*), validated when the provider starts:
a bad value raises ConfigError naming the variable."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from pydantic_settings.exceptions import SettingsError

from app.errors import ConfigError
from app.settings import Duration

PREFIX = "STEMFLEET_RUNPOD_"
DEFAULT_TEMPLATE = Path("deploy/runpod-pod.json")
CLOUDS = ("SECURE", "COMMUNITY")
HOURS_PER_MONTH = 730.0

# List prices, $/h per GPU (published figures, 2026; refreshed from the catalog when reachable).
DEFAULT_PRICES: dict[str, dict[str, float]] = {
    "NVIDIA RTX A4000": {"COMMUNITY": 0.17, "SECURE": 0.29},
    "NVIDIA GeForce RTX 3090": {"COMMUNITY": 0.22, "SECURE": 0.43},
    "NVIDIA RTX A4500": {"COMMUNITY": 0.19, "SECURE": 0.34},
    "NVIDIA RTX A5000": {"COMMUNITY": 0.22, "SECURE": 0.36},
    "NVIDIA RTX 4000 Ada Generation": {"COMMUNITY": 0.20, "SECURE": 0.38},
}


def _split(value: Any) -> Any:
    if isinstance(value, str) and not value.strip().startswith("["):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class RunPodSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=PREFIX, extra="ignore", validate_default=True, frozen=True
    )

    api_url: str = "https://api.runpod.io"  # the spec's server; paths start with /v2
    api_key: SecretStr | None = None
    # the ordered candidates: every GPU type, in each cloud, in each data centre (none: any)
    gpu_types: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["NVIDIA RTX A4000", "NVIDIA GeForce RTX 3090"]
    )
    clouds: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["COMMUNITY", "SECURE"])
    data_centers: Annotated[list[str], NoDecode] = Field(default_factory=list)
    template: Path | None = None  # the pod body; default deploy/runpod-pod.json
    image: str | None = None  # overrides the template's image
    container_disk_gb: int | None = Field(None, ge=1)  # overrides the template's `disk`
    env: dict[str, str] = Field(default_factory=dict)  # added to the template's env (JSON)
    name_prefix: str = Field("stemfleet-worker-", min_length=3)
    fleet: str = Field("stemfleet", min_length=1)  # env marker STEMFLEET_FLEET on our pods
    prices: dict[str, dict[str, float]] = Field(default_factory=lambda: DEFAULT_PRICES)
    # disk, $/GB/month: container disk and volume while the pod runs; the volume when stopped
    disk_usd_per_gb_month: float = Field(0.10, ge=0)
    volume_usd_per_gb_month: float = Field(0.20, ge=0)
    catalog: bool = True  # ask the catalog for availability and prices before creating
    max_retries: int = Field(4, ge=0, le=20)  # 429 / 5xx on one candidate
    timeout: Duration = 30.0  # per request

    @field_validator("gpu_types", "clouds", "data_centers", mode="before")
    @classmethod
    def _lists(cls, value: Any) -> Any:
        return _split(value)

    @field_validator("clouds", mode="after")
    @classmethod
    def _upper(cls, value: list[str]) -> list[str]:
        return [v.upper() for v in value]

    @field_validator("gpu_types", "clouds")
    @classmethod
    def _not_empty(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("give at least one, comma-separated")
        return value

    @field_validator("clouds")
    @classmethod
    def _known_clouds(cls, value: list[str]) -> list[str]:
        unknown = [c for c in value if c not in CLOUDS]
        if unknown:
            raise ValueError(f"unknown cloud {', '.join(unknown)} (use SECURE, COMMUNITY)")
        return value

    @field_validator("prices", "env", mode="before")
    @classmethod
    def _json(cls, value: Any) -> Any:
        return json.loads(value) if isinstance(value, str) else value

    def price(self, gpu: str, cloud: str) -> float | None:
        return (self.prices.get(gpu) or {}).get(cloud)


def load_runpod_settings(**overrides: Any) -> RunPodSettings:
    """Read and check STEMFLEET_RUNPOD_*; a bad or missing value names its variable."""
    try:
        settings = RunPodSettings(**overrides)
    except SettingsError as exc:
        field = re.search(r'field "([a-z_]+)"', str(exc))
        name = PREFIX + field.group(1).upper() if field else PREFIX + "*"
        raise ConfigError(f"invalid settings: {name}: not valid JSON") from None
    except ValidationError as exc:
        problems = [
            f"{PREFIX}{str(err['loc'][0]).upper()}: "
            f"{str(err['msg']).removeprefix('Value error, ')} (got {err.get('input')!r})"
            for err in exc.errors()
        ]
        raise ConfigError("invalid settings: " + "; ".join(problems)) from None
    if settings.api_key is None or not settings.api_key.get_secret_value():
        raise ConfigError(
            f"{PREFIX}API_KEY is not set: create an API key in the RunPod console (Settings, "
            "API Keys, read/write) and set it, or use another STEMFLEET_PROVIDER"
        )
    missing = [
        f"{gpu} ({cloud})"
        for gpu in settings.gpu_types
        for cloud in settings.clouds
        if settings.price(gpu, cloud) is None
    ]
    if missing:
        raise ConfigError(
            f"{PREFIX}PRICES has no price for {', '.join(missing)}: a create must fit "
            'STEMFLEET_MAX_HOURLY_USD before it is sent; add {"GPU type": {"CLOUD": $/h}}'
        )
    return settings


def load_pod_template(settings: RunPodSettings) -> dict[str, Any]:
    """The CreatePodRequest body every create starts from (deploy/runpod-pod.json)."""
    path = settings.template
    if path is None:
        root = Path(__file__).resolve().parents[2]
        candidates = [Path.cwd() / DEFAULT_TEMPLATE, root / DEFAULT_TEMPLATE]
        path = next((p for p in candidates if p.is_file()), candidates[0])
    if not path.is_file():
        raise ConfigError(
            f"{PREFIX}TEMPLATE: no pod template at {path}: point it at a CreatePodRequest "
            "as JSON (e.g. deploy/runpod-pod.json)"
        )
    try:
        body = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{PREFIX}TEMPLATE: {path} is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ConfigError(f"{PREFIX}TEMPLATE: {path} must be a JSON object")
    body = copy.deepcopy(body)
    if settings.image:
        body["image"] = settings.image
    if settings.container_disk_gb:
        body["disk"] = settings.container_disk_gb
    if not isinstance(body.get("image"), str) or not body["image"]:
        raise ConfigError(
            f"{PREFIX}IMAGE: the pod template {path} has no image: set one there or in "
            f"{PREFIX}IMAGE (the GPU worker image, Dockerfile target gpu-worker)"
        )
    body["env"] = {**(body.get("env") or {}), **settings.env}
    return body
