"""A worker meant for a GPU refuses to run without one.

A GPU worker (STEMFLEET_DEVICE=cuda, or STEMFLEET_REQUIRE_GPU=true) on a machine where CUDA is
not usable — a CPU-only torch build, a driver that does not match, a pod resumed with zero GPUs —
would otherwise separate on the CPU ten times slower without an error. Instead it registers
itself as stopped with the reason on its `workers` row and exits with EXIT_NO_GPU at once, so
the scaler sees a worker that exited and replaces the machine.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from app.db import connect
from app.log import get_logger
from app.queue import Queue
from app.settings import Settings
from worker.runtime import detect_identity

EXIT_NO_GPU = 3
REASON_PREFIX = "no usable GPU: "


def wants_gpu(settings: Settings) -> bool:
    return settings.device == "cuda" or settings.require_gpu


def cuda_problem() -> str | None:
    """Why CUDA cannot be used here, or None when a GPU answers."""
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if torch.version.cuda is None:
        return (
            f"torch {torch.__version__} is a CPU-only build: build the worker image with a "
            "CUDA torch (TORCH_SPEC)"
        )
    try:
        if not torch.cuda.is_available():
            return (
                f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no usable GPU: "
                "the driver does not match or the machine has none"
            )
        count = torch.cuda.device_count()
        if count == 0:
            return "the machine has zero GPUs (a stopped pod resumed without its card?)"
        torch.zeros(1, device="cuda").add_(1)  # a driver mismatch can fail only here
    except Exception as exc:  # the CUDA runtime raises RuntimeError and friends
        return f"CUDA failed: {type(exc).__name__}: {exc}"
    return None


def refuse_without_gpu(settings: Settings, probe: Callable[[], str | None] = cuda_problem) -> int:
    """0 when the worker may run; else records the reason on this boot's `workers` row and
    returns EXIT_NO_GPU."""
    if not wants_gpu(settings):
        return 0
    problem = probe()
    if problem is None:
        return 0
    reason = REASON_PREFIX + problem
    identity = detect_identity(settings)
    log = get_logger(machine_id=identity.machine_id)
    log.error("worker_gpu_unusable", reason=reason)
    print(f"stemfleet worker: {reason}", file=sys.stderr)
    with connect(settings.require_database_url(), application_name="stemfleet-worker") as conn:
        Queue().worker_refused(
            conn,
            machine_id=identity.machine_id,
            provider=identity.provider,
            gpu=identity.gpu,
            region=identity.region,
            reason=reason,
        )
    return EXIT_NO_GPU
