"""Execution engines: how a model member's forward pass runs, behind `STEMFLEET_ENGINE`.

A member of a loaded model (one HTDemucs / HDemucs / Demucs, or each model of a bag) is run by a
`Forward`: a callable with exactly the member's contract, a float32 batch of segments
[B, C, T] -> [B, S, C, T]. `prepare(kind, member, ...)` turns a member into one:

- `eager`: the member itself (PyTorch eager kernels, what Demucs runs);
- `compiled`: `torch.compile` (Inductor) of the member, its artefacts cached on disk
  (`worker.engines.compiled`);
- `onnx`: ONNX Runtime for the network between the STFT and the iSTFT
  (`worker.engines.onnx_runtime`);
- `auto`: the fastest engine that passes the equivalence tests on the device
  (`worker.engines.choice`).

Every engine module exposes `prepare(model, *, device, precision, cache_dir) -> Forward`. The
registry maps a setting value to that module; a module is imported only when chosen, so an
engine whose dependencies are not installed costs nothing until it is asked for, and then it is
a ConfigError naming STEMFLEET_ENGINE.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from app.errors import ConfigError

Forward = Callable[[torch.Tensor], torch.Tensor]

# setting value -> the module that prepares it (each exposes `prepare(model, *, device,
# precision, cache_dir) -> Forward`)
REGISTRY: dict[str, str] = {
    "eager": "worker.engines.eager",
    "compiled": "worker.engines.compiled",
    # --- ONNX Runtime: helper "onnx" provides this module (issue 16) ----------------------
    "onnx": "worker.engines.onnx_runtime",
}
ENGINES = ("auto", *REGISTRY)  # the values STEMFLEET_ENGINE accepts


class EngineUnavailable(ConfigError):
    """The engine asked for cannot run here (its module or a dependency is missing, or it does
    not support the device); the message names STEMFLEET_ENGINE."""


def autocast(device: str, precision: str) -> contextlib.AbstractContextManager[Any]:
    """The autocast a forward pass runs under for `precision` (fp32: none; fp16, bf16)."""
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
    if dtype is None:
        return contextlib.nullcontext()
    device_type = "cuda" if device.startswith("cuda") else device
    return torch.autocast(device_type=device_type, dtype=dtype)


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """The calling thread's intra-op thread count set to `threads` (None: left as it is) for the
    block. An engine is prepared under the count its calls run with (a CPU lane's one): the
    compiled engine's graphs are specialised to it."""
    if threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def prepare(
    kind: str, model: Any, *, device: str, precision: str, cache_dir: Path | None
) -> Forward:
    """A `Forward` for one member `model` (already on `device`, in eval mode) run by engine
    `kind` (a concrete engine, not `auto`: see `worker.engines.choice.resolve`)."""
    module_name = REGISTRY.get(kind)
    if module_name is None:
        raise EngineUnavailable(
            f"STEMFLEET_ENGINE={kind!r} is not an engine: use one of {', '.join(ENGINES)}"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise EngineUnavailable(
            f"STEMFLEET_ENGINE={kind} is not available on this worker ({exc.msg}): install its "
            "dependencies or choose another engine (eager always works)"
        ) from None
    forward: Forward = module.prepare(
        model, device=device, precision=precision, cache_dir=cache_dir
    )
    return forward
