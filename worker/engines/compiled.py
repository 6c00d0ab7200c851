"""The compiled engine: `torch.compile` (Inductor) of a member's forward pass.

Compiling costs time at a worker's first pass, so its artefacts persist across restarts: the
Inductor FX-graph and AOT-autograd caches live in `cache_dir` (STEMFLEET_COMPILE_CACHE, default
<data_dir>/compile), and a warm cache skips Inductor's code generation and C++/Triton builds
(Dynamo still traces the model in each process). The `gpu-worker` image warms it at build time.

Shapes: a pass holds `batch` segments of the model's segment length; only the last pass of a
job may hold fewer segments (and, for HDemucs/Demucs, a shorter input). Dynamo's automatic
dynamic shapes turn a dimension that changed once into a symbolic one, so a job compiles at most
a few graphs, never one per tail length; past `RECOMPILE_LIMIT` graphs Dynamo runs the member
eagerly rather than compiling again.
"""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path
from typing import Any

import torch

from worker.engines import EngineUnavailable, Forward

RECOMPILE_LIMIT = 8  # graphs per member before Dynamo falls back to eager for new shapes
_configured = threading.Lock()


def configure_cache(cache_dir: Path | None) -> None:
    """Point Inductor's on-disk caches (FX graph, AOT autograd, C++/Triton builds) at
    `cache_dir`. Once per process: Inductor reads the folder when it first compiles."""
    with _configured:
        if cache_dir is not None and "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
            cache_dir.mkdir(parents=True, exist_ok=True)
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache_dir / "inductor")
        import torch._dynamo.config as dynamo_config
        import torch._functorch.config as functorch_config
        import torch._inductor.config as inductor_config

        inductor_config.fx_graph_cache = True
        functorch_config.enable_autograd_cache = True
        dynamo_config.recompile_limit = RECOMPILE_LIMIT
        dynamo_config.automatic_dynamic_shapes = True


def check_available(device: str) -> None:
    """EngineUnavailable unless Inductor can build for `device` here."""
    if device == "cpu":
        compiler = os.environ.get("CXX", "g++")
        if shutil.which(compiler) is None:
            raise EngineUnavailable(
                f"STEMFLEET_ENGINE=compiled needs a C++ compiler on CPU ({compiler} not found): "
                "install one (e.g. g++) or choose STEMFLEET_ENGINE=eager"
            )
    elif not device.startswith("cuda"):
        raise EngineUnavailable(
            f"STEMFLEET_ENGINE=compiled runs on cpu and cuda, not {device}: choose eager"
        )


def prepare(model: Any, *, device: str, precision: str, cache_dir: Path | None) -> Forward:
    """The member compiled lazily: the first pass of each new shape compiles (or loads from the
    cache); later passes run the compiled code."""
    del precision  # autocast wraps the call (worker.passes), Dynamo traces through it
    check_available(device)
    configure_cache(cache_dir)
    forward: Forward = torch.compile(model, dynamic=None)
    return forward
