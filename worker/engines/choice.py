"""`STEMFLEET_ENGINE=auto`: which engine a device runs by default, chosen by measurement.

The table below names, per device, the fastest engine that passes the equivalence tests
(tests/test_engines.py: every engine against Demucs' `apply_model`, fp32, max abs difference
<= 1e-4) on that device; the figures behind it are in bench/results/engines.md.
"""

from __future__ import annotations

from typing import Any

import torch

from worker.engines import REGISTRY, EngineUnavailable

# device -> the engine `auto` prefers there (figures: bench/results/separation.md, engines.md,
# onnx_engine.md). The rule: a faster engine may not make a cold worker's first job slower than
# eager by more than its gain on that job.
# cpu: onnx. 10 x 30 s htdemucs clips, 2 threads, quiet machine, one worker process each:
#   eager 222.7 s, onnx 167.0 s with its cold export inside (start to first claim 11.8 s against
#   2.4 s): the first 30 s job of a cold worker ends about 2.7 s later than eager's, against a
#   gain of about 6.8 s on that job; a warm cache loads in about 2 s. Every member must be one
#   the export supports (HTDemucs) and the precision fp32, else eager (see `choose`).
#   compiled: slower than onnx in the worker (same clips, bench/results/separation_compiled.md:
#   1.60 audio s per wall s with a warm compile cache against onnx's 1.87-1.90, eager's 1.37),
#   and a cold compile of htdemucs' network put 97 s before the first claim (eager: 2.4 s)
#   against a gain of about 3 s on a 30 s job: never the default here.
# cuda: not measured in this session (no GPU lent): eager until bench/gpu.sh measures the others.
AUTO: dict[str, str] = {
    "cpu": "onnx",
    "cuda": "eager",
    "mps": "eager",
}


def resolve(setting: str, device: str) -> str:
    """The engine `setting` (a STEMFLEET_ENGINE value) prefers on `device`; `choose` has the
    last word for a given model."""
    if setting == "auto":
        return AUTO.get(device, "eager")
    if setting not in REGISTRY:
        raise EngineUnavailable(
            f"STEMFLEET_ENGINE={setting!r} is not an engine: use auto or one of "
            f"{', '.join(REGISTRY)}"
        )
    return setting


def choose(setting: str, device: str, precision: str, model: Any) -> str:
    """The engine that runs `model` (a member or a bag): what `setting` asks for, or with
    `auto` the device's preferred engine where it can run the whole model in this precision,
    else eager. An engine asked for by name is used as asked (it fails loudly if it cannot)."""
    engine = resolve(setting, device)
    if setting == "auto" and engine == "onnx" and not _onnx_runs(model, precision):
        return "eager"
    return engine


def _onnx_runs(model: Any, precision: str) -> bool:
    if precision != "fp32":
        return False
    try:
        from worker.engines import onnx_runtime
    except ImportError:  # onnxruntime is not installed (a slim image)
        return False
    return onnx_runtime.available() and onnx_runtime.supports(model)


def cpu_lanes(setting: int) -> int:
    """Segments run at once on CPU, each on one thread (STEMFLEET_CPU_LANES; 0 = one per torch
    thread, i.e. per core by default). 1 = one segment at a time on all threads. Lanes measured
    1.8x less CPU time per htdemucs segment than one segment on 2 threads (bench/results/
    engines.md)."""
    return setting if setting > 0 else max(1, torch.get_num_threads())
