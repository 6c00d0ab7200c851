"""All settings, read from the environment with the prefix STEMFLEET_.

A bad value fails at start with the variable's name: `STEMFLEET_MAX_MACHINES: ...`.
Durations accept seconds ("90") or a unit suffix ("30s", "10m", "2h", "1d").

Supabase note: LISTEN/NOTIFY and advisory locks need a *session* connection: use the direct
connection or the session pooler on port 5432, never the transaction pooler on port 6543.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import platformdirs
from pydantic import (
    BeforeValidator,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from pydantic_settings.exceptions import SettingsError

from app.errors import ConfigError

ENV_PREFIX = "STEMFLEET_"

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|min|m|h|d)?\s*$")


def parse_duration(value: Any) -> float:
    """'90' -> 90.0, '30s' -> 30.0, '10m' -> 600.0, '1.5h' -> 5400.0."""
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ValueError(f"not a duration: {value!r} (use e.g. 30, 30s, 10m, 2h)")
        seconds = float(match.group(1)) * _UNITS[match.group(2) or "s"]
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]


def default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir("stemfleet", appauthor=False))


class _Part(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="ignore", validate_default=True, frozen=True
    )


class CoreSettings(_Part):
    """The database, logging and where local files live: every part reads these."""

    database_url: SecretStr = SecretStr("")
    db_pool_min: int = Field(1, ge=0)
    db_pool_max: int = Field(10, ge=1)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_json: bool = True
    data_dir: Path = Field(default_factory=default_data_dir)

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: SecretStr) -> SecretStr:
        if value and not value.get_secret_value().startswith(("postgres://", "postgresql://")):
            raise ValueError("must start with postgresql:// (a libpq connection URL)")
        return value


class StorageSettings(_Part):
    """Where inputs and stems are kept: a local folder or an S3 bucket."""

    storage: Literal["local", "s3"] = "local"
    storage_root: Path | None = None  # local backend; default <data_dir>/storage
    s3_endpoint_url: str | None = None
    s3_region: str = "auto"
    s3_bucket: str = "stemfleet"
    s3_access_key_id: SecretStr | None = None
    s3_secret_access_key: SecretStr | None = None
    presign_expires: Duration = 3600.0


class WorkerSettings(_Part):
    """The worker: its model and device, how forward passes run, its lease and retries."""

    model: str = "htdemucs"
    model_repo: Path | None = None  # a local folder of Demucs weights (air-gapped machines)
    device: Literal["auto", "cuda", "mps", "cpu"] = "auto"
    require_gpu: bool = False  # a GPU worker: exit (reason on its row) when CUDA is unusable
    precision: Literal["fp32", "fp16", "bf16"] = "fp32"
    batch_size: int = Field(0, ge=0)  # segments per forward pass; 0 = from free memory
    # queued jobs separated together, their segments sharing forward passes; 0 = 1 where a
    # pass holds one segment (CPU), else up to 8
    group_jobs: int = Field(0, ge=0)
    threads: int = Field(0, ge=0)  # CPU threads for torch; 0 = torch's default
    # how a forward pass runs (worker/engines): auto = the fastest that passes the equivalence
    # tests on the device; eager = PyTorch as Demucs runs it; compiled = torch.compile
    # (Inductor); onnx = ONNX Runtime
    engine: Literal["auto", "eager", "compiled", "onnx"] = "auto"
    compile_cache: Path | None = None  # compiled engine's artefacts; default <data_dir>/compile
    # CPU: segments run at once, one thread each; 0 = one per torch thread, 1 = one segment on
    # all threads (bench/results/engines.md)
    cpu_lanes: int = Field(0, ge=0)
    lease: Duration = 60.0
    heartbeat_interval: Duration = 10.0
    poll_interval: Duration = 5.0
    worker_idle_exit: Duration = 600.0  # 0 = never
    shutdown_grace: Duration = 30.0
    max_duration: Duration = 3 * 3600.0  # longest input accepted, in seconds of audio
    preview_seconds: Duration = 30.0
    backoff_base: Duration = 10.0
    max_attempts: int = Field(3, ge=1, le=100)
    machine_id: str | None = None  # default: FLY_MACHINE_ID, RUNPOD_POD_ID, else the host name
    worker_provider: str = "local"
    region: str | None = None


class ScalerSettings(_Part):
    """The scaler: how many machines, at what price, under which budgets, on which provider."""

    # a registered provider's name (scaler.providers: local, fly, runpod, ...), checked when the
    # scaler makes it; lower-case letters, digits and _
    provider: str = Field("local", pattern=r"^[a-z][a-z0-9_]*$")
    min_machines: int = Field(0, ge=0)
    max_machines: int = Field(4, ge=0)
    max_hourly_usd: float = Field(10.0, ge=0)
    daily_budget_usd: float = Field(100.0, ge=0)
    monthly_budget_usd: float = Field(1000.0, ge=0)
    scale_rules: str = "10:1,50:5"  # queued-jobs threshold : machines to add
    preview_weight: float = Field(5.0, ge=0)  # one queued preview counts as this many jobs
    scale_down_idle: Duration = 600.0
    scale_up_cooldown: Duration = 60.0
    scale_down_cooldown: Duration = 120.0
    transient_timeout: Duration = 300.0
    machine_size: str = "performance-8x"
    machine_prices: dict[str, float] = Field(
        default_factory=lambda: {
            "shared-cpu-1x": 0.0028,
            "performance-2x": 0.0889,
            "performance-4x": 0.1778,
            "performance-8x": 0.3556,
            "performance-16x": 0.7111,
            "local": 0.0,
        }
    )
    scaler_interval: Duration = 30.0
    fly_api_url: str = "https://api.machines.dev"
    fly_api_token: SecretStr | None = None
    fly_app: str | None = None
    fly_region: str | None = None
    machine_template: Path | None = None  # default: deploy/worker-machine.json
    budget_lookahead: Duration = 900.0  # a start must fit the budgets this long at the new rate
    local_worker_command: str = ""  # local provider's worker; default: <this python> -m worker
    fly_max_retries: int = Field(5, ge=0, le=20)  # on 429 and 5xx, with backoff and jitter

    @field_validator("machine_prices", mode="before")
    @classmethod
    def _parse_prices(cls, value: Any) -> Any:
        if isinstance(value, str):
            return json.loads(value)
        return value

    @field_validator("scale_rules")
    @classmethod
    def _check_rules(cls, value: str) -> str:
        parse_scale_rules(value)
        return value


class ApiSettings(_Part):
    """The HTTP API: auth, limits, webhooks, event streams and the web page."""

    api_host: str = "127.0.0.1"
    api_port: int = Field(8000, ge=1, le=65535)
    public_url: str | None = None  # how clients reach the API (for served local files)
    jwt_secret: SecretStr | None = None  # Supabase project's HS256 secret
    jwks_url: str | None = None  # Supabase asymmetric keys
    jwt_audience: str = "authenticated"
    service_token: SecretStr | None = None
    dev_auth: bool = False
    dev_token: SecretStr | None = None
    max_upload_mb: float = Field(200.0, gt=0)
    max_queued_per_user: int = Field(20, ge=1)
    dedup_window: Duration = 24 * 3600.0  # 0 = no dedup by sha256
    # hosts allowed despite the SSRF rules, comma-separated
    callback_allowlist: Annotated[list[str], NoDecode] = Field(default_factory=list)
    webhook_secret: SecretStr | None = None  # "whsec_<base64>" per Standard Webhooks
    webhook_max_age: Duration = 2 * 3600.0
    webhook_retry_base: Duration = 10.0  # first retry delay; doubles per attempt (max 1h)
    webhook_timeout: Duration = 10.0  # per delivery attempt
    webhook_poll_interval: Duration = 5.0  # dispatcher fallback poll (it also LISTENs)
    sse_keepalive: Duration = 15.0  # comment line sent on an idle event stream
    sse_max_streams_per_user: int = Field(20, ge=1)  # open event streams per user and process
    max_json_kb: float = Field(64.0, gt=0)  # a JSON request body (or the multipart params field)
    max_json_depth: int = Field(32, ge=2, le=1000)  # nesting of arrays and objects in JSON input
    scaler_run_timeout: Duration = 120.0  # POST /v1/admin/scaler/run
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)  # or ["*"]
    # the web page signs users in with Supabase Auth (email) when both are set
    supabase_url: str | None = None  # https://<project>.supabase.co
    supabase_anon_key: str | None = None  # the project's public anon key
    web_presign_above_mb: float = Field(8.0, ge=0)  # the page PUTs bigger files to storage

    @field_validator("callback_allowlist", "cors_origins", mode="before")
    @classmethod
    def _split_list(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip().startswith("["):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value


class ClientSettings(_Part):
    """The command line: a deployed API to talk to (else the embedded system), profiles."""

    api_url: str | None = None  # a deployed API the CLI talks to; unset: the embedded system
    api_token: SecretStr | None = None  # bearer token for api_url
    profiles_file: Path | None = None  # `stemfleet process`; default ./stemfleet.yaml


class Settings(
    ClientSettings, ApiSettings, ScalerSettings, WorkerSettings, StorageSettings, CoreSettings
):
    """All settings, each part's in its own class above (a part's code may take just its part);
    the environment variable of every field is STEMFLEET_<NAME> whichever part holds it."""

    @model_validator(mode="after")
    def _check_consistency(self) -> Settings:
        if self.min_machines > self.max_machines:
            raise ValueError("STEMFLEET_MIN_MACHINES must not exceed STEMFLEET_MAX_MACHINES")
        if self.machine_size not in self.machine_prices:
            raise ValueError(
                f"STEMFLEET_MACHINE_SIZE {self.machine_size!r} has no price in "
                "STEMFLEET_MACHINE_PRICES"
            )
        if self.heartbeat_interval >= self.lease:
            raise ValueError("STEMFLEET_HEARTBEAT_INTERVAL must be shorter than STEMFLEET_LEASE")
        return self

    # --- derived --------------------------------------------------------------------------
    @property
    def local_storage_root(self) -> Path:
        return self.storage_root or self.data_dir / "storage"

    @property
    def compile_cache_dir(self) -> Path:
        return self.compile_cache or self.data_dir / "compile"

    @property
    def rules(self) -> list[tuple[int, int]]:
        return parse_scale_rules(self.scale_rules)

    def require_database_url(self) -> str:
        if not self.database_url:
            raise ConfigError(
                "STEMFLEET_DATABASE_URL is not set: give a postgresql:// URL (on Supabase, the "
                "session connection on port 5432), or run `stemfleet up` for the embedded default"
            )
        return self.database_url.get_secret_value()


def reveal(secret: SecretStr | None) -> str | None:
    """A secret setting's value, at the point of use (None where it is not set)."""
    return secret.get_secret_value() if secret is not None else None


def parse_scale_rules(text: str) -> list[tuple[int, int]]:
    """'10:1,50:5' -> [(10, 1), (50, 5)]: > 10 queued adds 1 machine, > 50 adds 5."""
    rules: list[tuple[int, int]] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        threshold, _, add = part.partition(":")
        try:
            rule = (int(threshold), int(add))
        except ValueError:
            raise ValueError(f"bad rule {part!r}: use THRESHOLD:ADD, e.g. 10:1,50:5") from None
        if rule[0] < 0 or rule[1] < 1:
            raise ValueError(f"bad rule {part!r}: threshold >= 0 and add >= 1")
        rules.append(rule)
    return sorted(rules)


# Never echoed: a bad value's error names the variable, not what it was given.
SECRET_FIELDS = frozenset(
    name
    for name, field in Settings.model_fields.items()
    if SecretStr in (field.annotation, *get_args(field.annotation))
)


def _variable(loc: tuple[Any, ...]) -> str:
    return ENV_PREFIX + str(loc[0]).upper() if loc else "settings"


def load_settings(**overrides: Any) -> Settings:
    """Read the environment; a bad value raises ConfigError naming the variable."""
    try:
        return Settings(**overrides)
    except SettingsError as exc:
        # raised before validation when a JSON-valued variable does not parse
        field = re.search(r'field "([a-z_]+)"', str(exc))
        name = _variable((field.group(1),)) if field else "settings"
        raise ConfigError(f"invalid settings: {name}: not valid JSON") from None
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            message = str(err["msg"]).removeprefix("Value error, ")
            if err["loc"] and err["loc"][0] in SECRET_FIELDS:
                problems.append(f"{_variable(err['loc'])}: {message}")
            elif err["loc"]:
                problems.append(f"{_variable(err['loc'])}: {message} (got {err.get('input')!r})")
            else:
                problems.append(message)
        raise ConfigError("invalid settings: " + "; ".join(problems)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
