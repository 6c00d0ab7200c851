"""`STEMFLEET_ENGINE=auto`: which engine a device runs by default, chosen by measurement.

The table below names, per device, the fastest engine that passes the equivalence tests
(tests/test_engines.py: every engine against Demucs' `apply_model`, fp32, max abs difference
<= 1e-4) on that device; the figures behind it are in bench/results/engines.md.
"""

from __future__ import annotations

from worker.engines import REGISTRY, EngineUnavailable

# device -> the engine `auto` picks there (figures: bench/results/engines.md)
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
