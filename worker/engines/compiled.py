"""The compiled engine: `torch.compile` (Inductor) of HTDemucs' network; STFT / iSTFT in PyTorch.

A segment goes through `htdemucs_split.front` (eager), the compiled `HTDemucsNetwork` and
`htdemucs_split.back` (eager), like the onnx engine. Compiled whole, the tests' tiny HTDemucs did
not finish compiling in 15 minutes on 2 cores; its network alone compiles in about a minute
(bench/results/engines.md). HDemucs and Demucs v2 raise `Unsupported` (eager runs them).

- Start-up: `prepare` compiles the network for one segment at the training length before the
  worker claims a job, on the calling thread, so CPU lanes never race a compile. Dynamo
  guards the intra-op thread count (a call under another count compiles again, minutes on
  CPU), so the worker prepares an engine under the count its passes run with: one in a CPU
  lane (`worker.models.load_onto`, `worker.engines.torch_threads`).
- Shapes: on CPU the network runs one segment at a time (a static graph of batch 1: the CPU's
  lanes run one segment per thread anyway), so a job's last, smaller pass never compiles again.
  On CUDA a pass runs whole: Dynamo's automatic dynamic shapes make the batch symbolic at the
  first other batch size, so a worker compiles at most a few graphs; past `RECOMPILE_LIMIT`
  Dynamo runs the network eagerly rather than compiling again.
- Cache: Inductor's FX-graph and AOT-autograd caches live in `cache_dir` (STEMFLEET_COMPILE_CACHE,
  default <data_dir>/compile); a warm cache skips code generation and the C++/Triton builds
  (Dynamo still traces the network in each process).
- Precision: autocast wraps the call (worker.passes, and the warm-up likewise) and Dynamo
  traces through it.
"""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path
from typing import Any

import torch

from worker.engines import EngineUnavailable, Forward, autocast
from worker.engines.htdemucs_split import HTDemucsNetwork, back, check, front, input_length

RECOMPILE_LIMIT = 8  # graphs per network before Dynamo falls back to eager for new shapes
_configured = threading.Lock()


def configure(cache_dir: Path | None) -> None:
    """Point Inductor's on-disk caches (FX graph, AOT autograd, C++/Triton builds) at
    `cache_dir` (once per process: Inductor reads the folder when it first compiles), and let
    its CPU kernels take the calling thread's OpenMP thread count at run time, as eager kernels
    do, rather than the count they were compiled under."""
    with _configured:
        if cache_dir is not None and "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
            cache_dir.mkdir(parents=True, exist_ok=True)
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache_dir / "inductor")
        import torch._dynamo.config as dynamo_config
        import torch._functorch.config as functorch_config
        import torch._inductor.config as inductor_config

        inductor_config.fx_graph_cache = True
        inductor_config.cpp.dynamic_threads = True
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
    """A forward pass of `model` (one HTDemucs) with its network compiled, compiled now for a
    segment at the training length (or loaded from the cache); raises `Unsupported` where the
    engine cannot run the model."""
    check_available(device)
    check(model, "compiled")
    configure(cache_dir)
    runner = _Compiled(model, device)
    length = input_length(model, int(model.segment * model.samplerate))
    with autocast(device, precision):  # as the passes call it: Dynamo guards autocast too
        runner.forward(torch.zeros(1, model.audio_channels, length, device=device))
    return runner.forward


class _Compiled:
    """One HTDemucs with its network compiled for `device`."""

    def __init__(self, model: Any, device: str) -> None:
        self.model = model
        self.per_segment = device == "cpu"
        network = HTDemucsNetwork(model).eval()
        self.network = torch.compile(network, dynamic=False if self.per_segment else None)

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        # inference mode always, as the worker's passes run: Dynamo's guards tell inference
        # tensors from others, so a graph compiled under no_grad would compile again
        with torch.inference_mode():
            z, mag, padded = front(self.model, mix)
            if not padded.is_inference():  # a caller's tensor passed through unpadded: Dynamo
                padded = padded.clone()  # guards the inference flag, so always hand it one
            if self.per_segment and mix.shape[0] > 1:
                parts = [
                    self.network(m, p) for m, p in zip(mag.split(1), padded.split(1), strict=True)
                ]
                x = torch.cat([part[0] for part in parts])
                xt = torch.cat([part[1] for part in parts])
            else:
                x, xt = self.network(mag, padded)
            return back(self.model, z, x, xt, mix.shape[-1])
