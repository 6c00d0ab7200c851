"""Loading Demucs models by name onto a device, and remembering for a while which ones could not
be loaded.

A model a worker cannot load (unknown, or its weights cannot be downloaded or read: an offline
machine without STEMFLEET_MODEL_REPO, say) is the worker's problem, not the job's: the job fails
at once with the reason, and the failure is remembered per model for MODEL_FAILURE_TTL seconds,
so the next jobs naming that model fail at once too instead of each holding the worker for
another download attempt. Messages name the model and the setting, never a path or a URL (those
go to the worker's log).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from demucs.apply import BagOfModels
from demucs.htdemucs import HTDemucs
from demucs.repo import ModelLoadingError

from app.clock import Clock
from app.errors import ConfigError, PermanentJobError
from app.log import get_logger
from app.params import KNOWN_MODELS, model_folder_names
from worker.engines import Forward, prepare, torch_threads
from worker.engines.choice import choose

MODEL_FAILURE_TTL = 300.0  # seconds a model that failed to load is not tried again


class ModelUnavailable(PermanentJobError):
    """The model exists but its weights could not be fetched or read on this worker."""

    kind = "model_unavailable"


def load_model(name: str, repo: Path | None) -> Any:
    """A Demucs model or bag by name: from the local folder `repo`, else the hub / Demucs'
    remote repo, or `demucs_unittest`. Unknown name -> PermanentJobError("invalid_params");
    weights that cannot be fetched -> ModelUnavailable (says how to use a local folder)."""
    from demucs.pretrained import get_model

    if repo is not None:
        if not repo.is_dir():
            raise ConfigError(f"STEMFLEET_MODEL_REPO {str(repo)!r} is not a directory")
        names = model_folder_names(repo)
        if name not in names and name != "demucs_unittest":
            raise PermanentJobError(
                f"unknown model {name!r}: the workers' model folder (STEMFLEET_MODEL_REPO) "
                f"holds {names or 'no models'}",
                kind="invalid_params",
            )
    try:
        model = get_model(name=name, repo=repo)
    except ModelLoadingError as exc:
        if repo is None and "neither a single pre-trained model" in str(exc):
            raise PermanentJobError(
                f"unknown model {name!r}: use a Demucs model name such as "
                f"{', '.join(KNOWN_MODELS)}",
                kind="invalid_params",
            ) from None
        get_logger().warning("model_load_failed", model=name, error=str(exc))
        where = "in the workers' model folder (STEMFLEET_MODEL_REPO)" if repo else "downloaded"
        raise ModelUnavailable(
            f"the worker could not load model {name!r}: its files {where} are incomplete or "
            "corrupt. Choose another model, or ask the operator to fix them."
        ) from None
    except Exception as exc:  # network, hub and file errors all mean: no weights here
        get_logger().warning(
            "model_download_failed", model=name, error=f"{type(exc).__name__}: {exc}"
        )
        raise ModelUnavailable(
            f"the worker could not download model {name!r}. On a machine without internet "
            "access, copy the model files (the <signature>.th weights and the <name>.yaml bag) "
            "into a folder and set STEMFLEET_MODEL_REPO to that folder, or choose another model."
        ) from None
    model.eval()
    return model


def pick_device(setting: str) -> str:
    """'auto' -> cuda if available, else mps, else cpu; an explicit device must exist."""
    if setting == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if setting == "cuda" and not torch.cuda.is_available():
        raise ConfigError("STEMFLEET_DEVICE=cuda but torch sees no CUDA device: use auto or cpu")
    if setting == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("STEMFLEET_DEVICE=mps but MPS is not available: use auto or cpu")
    return setting


@dataclass
class LoadedModel:
    """A model ready on its device, with what the pipeline needs to know about it: `members`
    are the Demucs modules (their segment, rate, valid lengths), `forwards` run them (one per
    member, by the worker's engine: see worker/engines)."""

    name: str
    model: Any
    samplerate: int
    audio_channels: int
    sources: list[str]
    forwards: list[Forward] = field(default_factory=list)
    engine: str = "eager"
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        if not self.forwards:
            self.forwards = list(self.members)

    @property
    def members(self) -> list[Any]:
        return list(self.model.models) if isinstance(self.model, BagOfModels) else [self.model]

    def max_segment(self) -> float:
        """Longest segment (s) every member accepts: HTDemucs cannot go past its training one."""
        limits = [float(m.segment) for m in self.members if isinstance(m, HTDemucs)]
        return min(limits) if limits else float("inf")


@dataclass(frozen=True)
class RunOptions:
    """How a loaded model's forward passes run: on `device` in `precision`, by `engine` (a
    STEMFLEET_ENGINE value; `auto` becomes the device's engine where it can run the model, see
    worker/engines/choice.py) whose artefacts `cache_dir` holds, on `call_threads` intra-op
    threads per call (a CPU lane's one; None: the preparing thread's count)."""

    device: str
    precision: str
    engine: str = "eager"
    cache_dir: Path | None = None
    call_threads: int | None = None


def load_onto(name: str, repo: Path | None, run: RunOptions) -> LoadedModel:
    """`load_model`, moved to the device, each member prepared by the engine under the thread
    count its forward passes run with (Dynamo specialises a compiled graph to it)."""
    started = time.perf_counter()
    device, precision, cache_dir = run.device, run.precision, run.cache_dir
    model = load_model(name, repo)
    model.to(device)
    engine = choose(run.engine, device, precision, model)
    members = list(model.models) if isinstance(model, BagOfModels) else [model]
    with torch_threads(run.call_threads):
        forwards = [
            prepare(engine, member, device=device, precision=precision, cache_dir=cache_dir)
            for member in members
        ]
    loaded = LoadedModel(
        name=name,
        model=model,
        samplerate=int(model.samplerate),
        audio_channels=int(model.audio_channels),
        sources=list(model.sources),
        forwards=forwards,
        engine=engine,
    )
    get_logger().info(
        "model_loaded",
        model=name,
        device=device,
        precision=precision,
        engine=engine,
        seconds=round(time.perf_counter() - started, 3),
    )
    return loaded


@dataclass(frozen=True)
class _Failure:
    error: PermanentJobError
    until: float  # clock.monotonic()


class ModelFailures:
    """Per model name, the error its last load raised, for `ttl` seconds of the clock."""

    def __init__(self, clock: Clock, ttl: float = MODEL_FAILURE_TTL) -> None:
        self.clock = clock
        self.ttl = ttl
        self._failures: dict[str, _Failure] = {}

    def check(self, name: str) -> None:
        """Raise the remembered error if `name` failed to load less than `ttl` seconds ago."""
        failure = self._failures.get(name)
        if failure is None:
            return
        if self.clock.monotonic() >= failure.until:
            del self._failures[name]
            return
        raise type(failure.error)(str(failure.error), kind=failure.error.kind)

    def remember(self, name: str, error: PermanentJobError) -> None:
        self._failures[name] = _Failure(error, self.clock.monotonic() + self.ttl)
