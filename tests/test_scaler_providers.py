"""The provider interface's shared parts: providers registered by name, the machine id a worker
learns from its provider, and the one HTTP layer's rules (a create is resent only when it surely
was not processed)."""

from __future__ import annotations

import socket
import uuid

import httpx
import pytest

from app.clock import FakeClock
from app.db import Connection
from app.errors import ConfigError
from app.queue import Queue
from app.settings import Settings
from scaler.model import Machine
from scaler.providers import make_provider, register, registered
from scaler.providers.base import Price, ProviderError
from scaler.providers.fly import FlyProvider, fly_state
from scaler.providers.http import ApiClient, wait_hint
from tests.fake_fly import FakeFly
from tests.scaler_support import TEMPLATE, fly_scaler, fly_settings, settings
from worker.runtime import machine_id_from

USER = uuid.UUID("00000000-0000-4000-8000-0000000005f5")


def test_providers_are_chosen_by_registered_name() -> None:
    assert {"local", "fly", "runpod"} <= set(registered())
    assert isinstance(
        make_provider(settings(provider="fly", fly_api_token="t", fly_app="a")), FlyProvider
    )
    with pytest.raises(ConfigError, match="STEMFLEET_PROVIDER: unknown provider 'nimbus'"):
        make_provider(settings(provider="nimbus"))

    class Nimbus:
        name = "nimbus"
        create_size = "performance-8x"

        def __init__(self, the_settings: Settings) -> None:
            self.settings = the_settings

        def create_price(self) -> Price:
            return Price(0.1, 0.01)

    register("nimbus", Nimbus)  # type: ignore[arg-type]
    made = make_provider(settings(provider="nimbus"))
    assert isinstance(made, Nimbus) and made.create_price() == Price(0.1, 0.01)
    with pytest.raises(ConfigError, match="STEMFLEET_PROVIDER"):
        settings(provider="Fly!")


def test_fly_states_map_onto_the_interfaces() -> None:
    assert [fly_state(s) for s in ("created", "started", "suspending", "suspended")] == [
        "starting",
        "started",
        "stopping",
        "stopped",
    ]
    assert (fly_state("failed"), fly_state("destroyed"), fly_state("brand-new")) == (
        "failed",
        "gone",
        "starting",
    )
    down = Machine("m", "stopped", "x", 0.5, stopped_hourly_usd=0.02)
    assert (down.billed, down.rate_usd) == (False, 0.02)
    assert Machine("m", "starting", "x", 0.5).rate_usd == 0.5


def test_the_worker_learns_its_machine_id_from_its_provider() -> None:
    plain = settings()
    assert machine_id_from(settings(machine_id="own"), {"FLY_MACHINE_ID": "f"}) == "own"
    assert machine_id_from(plain, {"FLY_MACHINE_ID": "f", "RUNPOD_POD_ID": "p"}) == "f"
    assert machine_id_from(plain, {"RUNPOD_POD_ID": "p"}) == "p"
    assert machine_id_from(plain, {"RUNPOD_POD_ID": ""}) == socket.gethostname()


def test_a_create_is_resent_only_when_surely_not_processed(fake: FakeFly, clock: FakeClock) -> None:
    delays: list[float] = []

    def sleep(seconds: float) -> None:
        delays.append(seconds)
        clock.advance(seconds)

    api = ApiClient(
        "Fly",
        f"{fake.url}/v1/apps/{fake.app}",
        {"Authorization": f"Bearer {fake.token}"},
        max_retries=3,
        clock=clock,
        sleep=sleep,
    )
    body = {"name": "stemfleet-worker-x", **TEMPLATE}
    fake.fail(503, method="POST", path="/machines$")
    with pytest.raises(ProviderError) as lost:
        api.request("POST", "/machines", action="create", key="app", json=body, creates=True)
    assert lost.value.kind == "unknown_outcome" and fake.count("Machines_create") == 1
    fake.fail(503, method="GET", path="/machines$")  # an idempotent call is retried
    assert api.request("GET", "/machines", action="list", key="app").status_code == 200
    assert fake.count("Machines_list") == 2

    refused = ApiClient("Fly", "http://127.0.0.1:9", {}, max_retries=2, clock=clock, sleep=sleep)
    with pytest.raises(ProviderError) as unreachable:  # never connected: safe to resend
        refused.request("POST", "/machines", action="create", key="app", json={}, creates=True)
    assert unreachable.value.kind == "unreachable" and "after 3 tries" in str(unreachable.value)
    assert fake.violations == []


def test_rate_limit_headers_set_the_wait() -> None:
    now = FakeClock().now()
    assert wait_hint(httpx.Headers({"Retry-After": "4"}), now) == 4.0
    assert wait_hint(httpx.Headers({"RateLimit": "limit=10, remaining=0, reset=7"}), now) == 7.0
    assert wait_hint(httpx.Headers({"RateLimit-Reset": "2"}), now) == 2.0
    assert wait_hint(httpx.Headers({}), now) is None


def test_a_start_refused_for_capacity_is_reported_as_such(fake: FakeFly, clock: FakeClock) -> None:
    fly = FlyProvider(fly_settings(fake), template=TEMPLATE, clock=clock, sleep=clock.advance)
    stopped = fake.add_machine("stopped")
    fake.refuse_starts()
    with pytest.raises(ProviderError) as error:
        fly.start(stopped)
    assert error.value.kind == "capacity"
    fly.destroy(stopped)
    assert fly.list() == [] and fake.violations == []


def test_a_machine_that_cannot_start_for_lack_of_capacity_is_replaced_in_the_same_run(
    fake: FakeFly, clock: FakeClock, conn: Connection, db_url: str, queue: Queue
) -> None:
    scaler = fly_scaler(fake, clock, db_url, max_machines=1)
    stuck_on_a_full_host = fake.add_machine("stopped")
    queue.enqueue(conn, user_id=USER, input_key="inputs/a.wav")
    fake.refuse_starts(times=5)  # its host has no room, run after run
    outcome = scaler.run_once()
    assert [(r.action.kind, r.ok) for r in outcome.results] == [
        ("start", False),
        ("destroy", True),
        ("create", True),
    ]
    assert outcome.results[0].error_kind == "capacity"
    (new,) = fake.machines
    assert new != stuck_on_a_full_host and len(fake.created) == 1
    assert fake.count("Machines_start") == 1  # not retried every run
    clock.advance(61)
    assert [r.action.kind for r in scaler.run_once().results] == []
    assert fake.violations == []
