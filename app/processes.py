"""Small process helpers shared by the embedded default and the local provider."""

from __future__ import annotations

import psutil


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (it may belong to another user)."""
    return bool(psutil.pid_exists(pid))
