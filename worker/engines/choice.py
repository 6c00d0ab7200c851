"""`STEMFLEET_ENGINE=auto`: which engine a device runs by default, chosen by measurement.

The table below names, per device, the fastest engine that passes the equivalence tests
(tests/test_engines.py: every engine against Demucs' `apply_model`, fp32, max abs difference
<= 1e-4) on that device; the figures behind it are in bench/results/engines.md.
"""

from __future__ import annotations

import torch

from worker.engines import REGISTRY, EngineUnavailable

# device -> the engine `auto` picks there (figures: bench/results/engines.md). The rule: a
# compiled engine may not make a cold worker's first job slower than eager by more than its
# gain on that job. cpu: a cold Inductor compile of even the tests' tiny HTDemucs did not finish
# in 15 min on 2 cores (156 CPU-s in Python alone, plus g++), more than eager spends on ~20 full
# htdemucs segments (6.8 CPU-s each), and the compiled gain per segment is unmeasured: eager.
# cuda: not measured in this session (no GPU lent): eager until bench/gpu.sh measures compiled.
AUTO: dict[str, str] = {
    "cpu": "eager",
    "cuda": "eager",
    "mps": "eager",
}


def resolve(setting: str, device: str) -> str:
    """The concrete engine for `setting` (a STEMFLEET_ENGINE value) on `device`."""
    if setting == "auto":
        return AUTO.get(device, "eager")
    if setting not in REGISTRY:
        raise EngineUnavailable(
            f"STEMFLEET_ENGINE={setting!r} is not an engine: use auto or one of "
            f"{', '.join(REGISTRY)}"
        )
    return setting


def cpu_lanes(setting: int) -> int:
    """Segments run at once on CPU, each on one thread (STEMFLEET_CPU_LANES; 0 = one per torch
    thread, i.e. per core by default). 1 = one segment at a time on all threads. Lanes measured
    1.8x less CPU time per htdemucs segment than one segment on 2 threads (bench/results/
    engines.md)."""
    return setting if setting > 0 else max(1, torch.get_num_threads())
