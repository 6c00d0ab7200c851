"""The one small interface every machine provider implements."""

from __future__ import annotations

from typing import Protocol

from app.errors import StemfleetError
from scaler.model import Machine


class ProviderError(StemfleetError):
    """A provider call failed. `kind` is recorded with the scaler run: capacity, rejected,
    not_found, rate_limited, server_error, unreachable, spawn_failed."""

    def __init__(self, message: str, *, kind: str = "error", status: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status


class Provider(Protocol):
    name: str  # "fly" | "local": also the provider recorded with machine runs
    create_size: str  # the size (price table key) of the machines `create` makes

    def list(self) -> list[Machine]:
        """Every worker machine this provider knows, in any state, sorted by id."""
        ...

    def create(self) -> Machine:
        """A new worker machine, launched. Raises ProviderError (kind "capacity" when the
        provider has no room)."""
        ...

    def start(self, machine_id: str) -> None:
        """Start a stopped machine."""
        ...

    def stop(self, machine_id: str) -> None:
        """Ask a machine to stop: its worker gets SIGTERM (it finishes or releases its job)."""
        ...

    def wait(self, machine_id: str, state: str, timeout: float) -> bool:
        """Block until the machine is in `state` ("started" or "stopped"), at most `timeout`
        seconds; returns whether it got there."""
        ...

    def close(self) -> None:
        """Release connections; machines keep running."""
        ...
