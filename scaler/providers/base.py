"""The one small interface every machine provider implements, and the states it speaks.

Machine states (`MachineState`): every provider maps its own states onto these six, and the
policy sees only these (a provider's own name for the state is kept in `Machine.provider_state`
for records and messages).

- `starting`: created, provisioning or booting, not yet running. Billed at the running price;
  transient (reported, and stopped if it holds no job, past STEMFLEET_TRANSIENT_TIMEOUT).
- `started`: running; its worker may take jobs. Billed at the running price; capacity.
- `stopping`: asked to stop, not yet stopped. Billed at the running price; transient.
- `stopped`: stopped, can start again. Billed at the stopped price (e.g. a disk); started before
  a new machine is created.
- `failed`: cannot come back (a failed machine, a resume with no GPU). Billed at the stopped
  price; destroyed, and replaced by a create when work needs it.
- `gone`: destroyed or terminated. Costs nothing; ignored.

A state a provider does not know maps to `starting`: billed and transient, so it is reported if
it lasts and never counted as a worker that could take jobs.

Fly: created/starting/replacing/updating -> starting; started; stopping/suspending/destroying ->
stopping; stopped/suspended -> stopped; failed; destroyed/replaced -> gone. The local provider
uses the interface's names directly.

Prices: a provider reports each machine's `hourly_usd` (while billed) and `stopped_hourly_usd`
(while stopped or failed: e.g. a volume disk), and the price of the machine `create` would make
(`create_price()`); the ceilings and the spend use them.

Creates are never resent when the request may have been processed: the scaler names every
planned create (`create(name, ...)`), a provider adopts a machine that already has that name,
and the shared HTTP layer (`scaler.providers.http`) retries a create only when it surely was not
processed. A start that fails for lack of capacity raises `ProviderError(kind="capacity")`: the
scaler then destroys the machine and creates a new one instead of retrying it every run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from app.errors import StemfleetError
from scaler.model import Machine, MachineState

__all__ = ["Machine", "MachineState", "Price", "Provider", "ProviderError"]

ErrorKind = Literal[
    "capacity",  # no room for the machine (create or start): try elsewhere / replace it
    "rejected",  # the provider refused the request (4xx)
    "config",  # our configuration is wrong (e.g. an invalid template): never retried
    "no_balance",  # the account cannot pay: stop creating
    "not_found",
    "over_ceiling",  # the only machines the provider could make cost more than the room left
    "rate_limited",
    "server_error",
    "unreachable",
    "unknown_outcome",  # a create whose answer was lost: it may exist; never resent
    "spawn_failed",
    "error",
]


class ProviderError(StemfleetError):
    """A provider call failed. `kind` (an ErrorKind) is recorded with the scaler run."""

    def __init__(self, message: str, *, kind: str = "error", status: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status


@dataclass(frozen=True, slots=True)
class Price:
    """$/h of one machine: while billed (starting, started, stopping) and while stopped."""

    running: float
    stopped: float = 0.0


class Provider(Protocol):
    name: str  # the registered name (STEMFLEET_PROVIDER): also recorded with machine runs
    create_size: str  # the size (price table key) of the machines `create` makes first

    def create_price(self) -> Price:
        """What the machine `create` would make first costs (the policy plans with it)."""
        ...

    def list(self) -> list[Machine]:
        """Every worker machine of ours, in any state, sorted by id; never anything else in the
        account."""
        ...

    def create(self, name: str, max_hourly_usd: float) -> Machine:
        """A new worker machine named `name` (unique per planned create), launched, costing at
        most `max_hourly_usd` while running. If a machine of ours already has that name it is
        adopted, not made twice. Raises ProviderError: kind "capacity" when there is no room,
        "over_ceiling" when nothing fits the price, "unknown_outcome" when the request may have
        made a machine but its answer was lost (the next list shows it)."""
        ...

    def start(self, machine_id: str) -> None:
        """Start a stopped machine. Raises ProviderError(kind="capacity") when it cannot start
        for lack of capacity: the scaler replaces it."""
        ...

    def stop(self, machine_id: str) -> None:
        """Ask a machine to stop: its worker gets SIGTERM (it finishes or releases its job)."""
        ...

    def destroy(self, machine_id: str) -> None:
        """Remove a machine for good (a failed one, or one replaced for lack of capacity)."""
        ...

    def wait(self, machine_id: str, state: MachineState, timeout: float) -> bool:
        """Block until the machine is in `state` ("started" or "stopped"), at most `timeout`
        seconds; returns whether it got there."""
        ...

    def close(self) -> None:
        """Release connections; machines keep running."""
        ...
