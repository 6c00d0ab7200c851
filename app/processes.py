"""Small process helpers shared by the embedded default and the local provider."""

from __future__ import annotations

import sys

import psutil


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (it may belong to another user)."""
    return bool(psutil.pid_exists(pid))


def stemfleet_command(*args: str) -> list[str]:
    """`stemfleet ARGS` with this very interpreter (the same venv, whatever PATH says)."""
    return [sys.executable, "-m", "app.cli", *args]
