"""The eager engine: the member itself, run by PyTorch's eager kernels, as Demucs runs it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from worker.engines import Forward


def prepare(model: Any, *, device: str, precision: str, cache_dir: Path | None) -> Forward:
    del device, precision, cache_dir  # nothing to prepare
    forward: Forward = model
    return forward
