"""The RunPod provider against the fake RunPod v2 server (tests/fake_runpod.py: real HTTP on
loopback, every request checked against the published spec): which pods are ours, the spec's
table of create outcomes, lost answers, money, zero-GPU resumes and stuck pods. The replayed day
with a 10,000-job spike is in tests/test_scaler_runpod_day.py."""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.clock import FakeClock
from app.errors import ConfigError
from scaler.providers import make_provider
from scaler.providers.base import ProviderError
from scaler.providers.runpod import FLEET_ENV, RunPodProvider
from scaler.providers.runpod_settings import RunPodSettings, load_runpod_settings
from tests.fake_runpod import SPEC_PATH, FakeRunPod
from tests.fake_runpod_pods import OVER_LIMIT
from tests.scaler_support import Sleeps, settings
from tests.spec_support import OpenApiSpec, check

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "deploy/runpod-pod.json"
A4000, RTX3090, A4500 = "NVIDIA RTX A4000", "NVIDIA GeForce RTX 3090", "NVIDIA RTX A4500"
DISK_USD = 20 * 0.10 / 730  # the template's 20 GB container disk while running


@pytest.fixture
def fake(clock: FakeClock) -> Iterator[FakeRunPod]:
    server = FakeRunPod(clock)
    server.start()
    yield server
    server.stop()


def rp_settings(fake: FakeRunPod, **overrides: Any) -> RunPodSettings:
    values: dict[str, Any] = {
        "api_url": fake.url,
        "api_key": fake.api_key,
        "template": TEMPLATE,
        "fleet": "test",
        "gpu_types": [A4000, RTX3090],
        "clouds": ["COMMUNITY"],
        "catalog": False,
        **overrides,
    }
    return load_runpod_settings(**values)


def provider(
    fake: FakeRunPod, clock: FakeClock, sleeps: Sleeps | None = None, **overrides: Any
) -> RunPodProvider:
    return RunPodProvider(
        settings(provider="runpod", transient_timeout=300),
        rp_settings(fake, **overrides),
        clock=clock,
        sleep=sleeps or Sleeps(clock),
        rng=random.Random(5),
    )


def creates(fake: FakeRunPod) -> list[dict[str, Any]]:
    """The bodies of every create sent, in order."""
    return [c.body for c in fake.calls if c.operation == "createPod"]


# --- settings and which pods are ours -----------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "STEMFLEET_RUNPOD_API_KEY is not set"),
        ({"STEMFLEET_RUNPOD_API_KEY": "k", "STEMFLEET_RUNPOD_CLOUDS": "MOON"}, "_CLOUDS: unknown"),
        ({"STEMFLEET_RUNPOD_API_KEY": "k", "STEMFLEET_RUNPOD_PRICES": "{"}, "_PRICES: not valid"),
        (
            {"STEMFLEET_RUNPOD_API_KEY": "k", "STEMFLEET_RUNPOD_GPU_TYPES": "NVIDIA H100 PCIe"},
            "STEMFLEET_RUNPOD_PRICES has no price for NVIDIA H100 PCIe (COMMUNITY)",
        ),
        ({"STEMFLEET_RUNPOD_API_KEY": "k", "STEMFLEET_RUNPOD_GPU_TYPES": " "}, "_GPU_TYPES: give"),
        (
            {"STEMFLEET_RUNPOD_API_KEY": "k", "STEMFLEET_RUNPOD_TEMPLATE": "/nowhere.json"},
            "STEMFLEET_RUNPOD_TEMPLATE: no pod template at /nowhere.json",
        ),
    ],
)
def test_settings_are_checked_when_the_provider_is_made(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError, match=re.escape(message)):
        make_provider(settings(provider="runpod"))


def test_the_provider_is_chosen_by_name_and_reads_its_variables(
    monkeypatch: pytest.MonkeyPatch, fake: FakeRunPod
) -> None:
    monkeypatch.setenv("STEMFLEET_RUNPOD_API_URL", fake.url)
    monkeypatch.setenv("STEMFLEET_RUNPOD_API_KEY", fake.api_key)
    monkeypatch.setenv("STEMFLEET_RUNPOD_GPU_TYPES", f"{RTX3090}, {A4000}")
    monkeypatch.setenv("STEMFLEET_RUNPOD_CLOUDS", "secure,community")
    made = make_provider(settings(provider="runpod"))
    assert isinstance(made, RunPodProvider)
    assert made.rp.gpu_types == [RTX3090, A4000] and made.rp.clouds == ["SECURE", "COMMUNITY"]
    assert made.create_size == f"SECURE/{RTX3090}"
    assert made.create_price().running == pytest.approx(0.43 + DISK_USD)
    assert made.list() == []
    made.close()


def test_only_pods_with_our_prefix_and_marker_are_ours(fake: FakeRunPod, clock: FakeClock) -> None:
    rp = provider(fake, clock)
    ours = fake.add_pod("stemfleet-worker-old", env={FLEET_ENV: "test"})
    fake.add_pod("someone-else", env={FLEET_ENV: "test"})  # no prefix
    fake.add_pod("stemfleet-worker-x", env={})  # no marker
    fake.add_pod("stemfleet-worker-y", env={FLEET_ENV: "another-fleet"})
    assert [m.id for m in rp.list()] == [ours]
    made = rp.create("stemfleet-worker-new1", 1.0)
    assert [m.id for m in rp.list()] == sorted([ours, made.id])
    body = creates(fake)[-1]
    assert body["name"] == "stemfleet-worker-new1"
    assert body["env"][FLEET_ENV] == "test" and body["env"]["STEMFLEET_WORKER_PROVIDER"] == "runpod"
    touched = {c.path for c in fake.calls if c.operation in ("podAction", "deletePod", "getPod")}
    assert touched == set()
    assert fake.violations == []


def test_the_repo_pod_template_is_a_valid_create_body_with_secrets_by_reference(
    fake: FakeRunPod, clock: FakeClock
) -> None:
    provider(fake, clock).create("stemfleet-worker-t", 1.0)
    body = creates(fake)[-1]
    found = OpenApiSpec(SPEC_PATH).match("POST", "/v2/pods")
    assert not isinstance(found, list)
    assert found[0].request_schema is not None
    assert check(found[0].request_schema, body, "createPod body") == []
    template = json.loads(TEMPLATE.read_text())
    assert check(found[0].request_schema, {**template, "name": "x"}, "template") == []
    for key in ("DATABASE_URL", "S3_ACCESS_KEY_ID", "S3_SECRET_ACCESS_KEY"):
        value = template["env"][f"STEMFLEET_{key}"]
        assert value == f"{{{{ RUNPOD_SECRET_stemfleet_{key.lower()} }}}}", key
    assert template["env"]["STEMFLEET_DEVICE"] == "cuda"
    assert template["env"]["STEMFLEET_REQUIRE_GPU"] == "true"
    assert "mounts" not in template, "container disk only: a stopped pod costs about nothing"
    assert fake.violations == []


# --- create: the spec's table of outcomes ---------------------------------------------------


def test_201_makes_one_pod_on_the_first_candidate(fake: FakeRunPod, clock: FakeClock) -> None:
    machine = provider(fake, clock).create("stemfleet-worker-a", 1.0)
    assert (machine.state, machine.provider_state, machine.name) == (
        "starting",
        "PROVISIONING",
        "stemfleet-worker-a",
    )
    assert machine.size == f"COMMUNITY/{A4000}"
    assert machine.hourly_usd == pytest.approx(0.17 + DISK_USD)
    assert [(b["gpu"]["id"], b["cloud"]) for b in creates(fake)] == [(A4000, "COMMUNITY")]


def test_400_tries_the_next_candidate_and_keeps_the_last_detail(
    fake: FakeRunPod, clock: FakeClock
) -> None:
    rp = provider(fake, clock, data_centers=["EU-RO-1", "US-TX-3"])
    fake.set_capacity(A4000, 0)
    fake.set_capacity(RTX3090, 0, data_center="EU-RO-1")
    machine = rp.create("stemfleet-worker-b", 1.0)
    sent = [(b["gpu"]["id"], b["dataCenterIds"]) for b in creates(fake)]
    assert sent == [
        (A4000, ["EU-RO-1"]),
        (A4000, ["US-TX-3"]),
        (RTX3090, ["EU-RO-1"]),
        (RTX3090, ["US-TX-3"]),
    ]
    assert machine.size == f"COMMUNITY/{RTX3090}" and machine.region == "US-TX-3"
    fake.set_capacity(RTX3090, 0)
    with pytest.raises(ProviderError) as refused:
        rp.create("stemfleet-worker-c", 1.0)
    assert refused.value.kind == "capacity"
    assert "last detail: There are no longer any instances available" in str(refused.value)
    assert len(creates(fake)) == 8 and len(fake.pods) == 1
    assert fake.violations == []


def test_402_stops_creating_at_once(fake: FakeRunPod, clock: FakeClock) -> None:
    fake.set_balance(0.0)
    with pytest.raises(ProviderError) as refused:
        provider(fake, clock).create("stemfleet-worker-d", 1.0)
    assert refused.value.kind == "no_balance" and "no balance" in str(refused.value)
    assert len(creates(fake)) == 1, "no other candidate is tried"


def test_403_skips_the_candidate(fake: FakeRunPod, clock: FakeClock) -> None:
    fake.fail_next("create", 403, detail="your account cannot use this pool")
    machine = provider(fake, clock).create("stemfleet-worker-e", 1.0)
    assert [b["gpu"]["id"] for b in creates(fake)] == [A4000, RTX3090]
    assert machine.size.endswith(RTX3090)
    fake.fail_next("create", 403, times=2)
    with pytest.raises(ProviderError) as refused:
        provider(fake, clock).create("stemfleet-worker-f", 1.0)
    assert refused.value.kind == "rejected" and "no access" in str(refused.value)


def test_422_is_a_configuration_error_never_retried(fake: FakeRunPod, clock: FakeClock) -> None:
    fake.fail_next("create", 422, detail="$.image: required")
    with pytest.raises(ProviderError) as refused:
        provider(fake, clock).create("stemfleet-worker-g", 1.0)
    assert refused.value.kind == "config" and "$.image: required" in str(refused.value)
    assert len(creates(fake)) == 1 and fake.pods == {}


def test_429_waits_retry_after_then_sends_the_same_candidate(
    fake: FakeRunPod, clock: FakeClock
) -> None:
    sleeps = Sleeps(clock)
    fake.fail_next("create", 429, retry_after=7)
    machine = provider(fake, clock, sleeps).create("stemfleet-worker-h", 1.0)
    assert 7.0 in sleeps.delays
    assert [b["gpu"]["id"] for b in creates(fake)] == [A4000, A4000]
    assert machine.size.endswith(A4000) and len(fake.pods) == 1


def test_a_5xx_that_made_nothing_is_retried_on_the_same_candidate(
    fake: FakeRunPod, clock: FakeClock
) -> None:
    fake.fail_next("create", 503)
    machine = provider(fake, clock).create("stemfleet-worker-i", 1.0)
    assert [b["gpu"]["id"] for b in creates(fake)] == [A4000, A4000]
    assert fake.count("list") == 1, "the pods were looked up by name before resending"
    assert list(fake.pods) == [machine.id]


@pytest.mark.parametrize("status", [500, 502, None])
def test_a_create_whose_answer_is_lost_never_makes_a_second_pod(
    fake: FakeRunPod, clock: FakeClock, status: int | None
) -> None:
    fake.lose_next("create", status=status)
    machine = provider(fake, clock).create("stemfleet-worker-j", 1.0)
    assert len(creates(fake)) == 1 and list(fake.pods) == [machine.id]
    assert machine.name == "stemfleet-worker-j"


def test_a_create_must_fit_the_room_left_before_it_is_sent(
    fake: FakeRunPod, clock: FakeClock
) -> None:
    rp = provider(fake, clock)
    fake.set_capacity(A4000, 0)
    with pytest.raises(ProviderError) as refused:
        rp.create("stemfleet-worker-k", 0.20)  # the 3090 ($0.22/h) would cross it
    assert refused.value.kind == "capacity"
    assert [b["gpu"]["id"] for b in creates(fake)] == [A4000]
    with pytest.raises(ProviderError) as over:
        rp.create("stemfleet-worker-l", 0.10)
    assert over.value.kind == "over_ceiling" and len(creates(fake)) == 1


def test_the_catalog_orders_out_candidates_without_stock_and_refreshes_prices(
    fake: FakeRunPod, clock: FakeClock
) -> None:
    rp = provider(
        fake, clock, catalog=True, prices={A4000: {"COMMUNITY": 0.5}, RTX3090: {"COMMUNITY": 0.9}}
    )
    fake.set_capacity(A4000, 0)
    machine = rp.create("stemfleet-worker-m", 1.0)
    assert [b["gpu"]["id"] for b in creates(fake)] == [RTX3090], "no create for a GPU out of stock"
    assert machine.hourly_usd == pytest.approx(0.22 + DISK_USD)
    assert rp.prices.prices[(A4000, "COMMUNITY")] == 0.17  # the catalog's, not the setting's
    fake.fail_next("catalog", 500, times=10)
    fake.set_capacity(A4000, 5)
    assert (
        provider(fake, clock, catalog=True).create("stemfleet-worker-n", 1.0).size.endswith(A4000)
    )
    assert fake.violations == []


# --- a stopped pod is not a reservation -------------------------------------------------------


def test_a_start_without_a_gpu_is_a_capacity_error(fake: FakeRunPod, clock: FakeClock) -> None:
    rp = provider(fake, clock)
    pod = rp.create("stemfleet-worker-o", 1.0).id
    fake.tick(2)
    rp.stop(pod)
    assert rp.list()[0].state == "stopped" and rp.list()[0].stopped_hourly_usd == 0.0
    rp.stop(pod)  # 409: already stopped, nothing to do
    fake.zero_gpu_next_start()
    with pytest.raises(ProviderError) as refused:
        rp.start(pod)
    assert refused.value.kind == "capacity" and "zero GPUs" in str(refused.value)
    fake.tick(2)
    (machine,) = rp.list()
    assert (machine.state, machine.provider_state) == ("failed", "RUNNING")
    rp.destroy(pod)
    rp.destroy(pod)  # already gone: nothing to do
    assert rp.list() == [] and fake.states()[pod] == "TERMINATED"


def test_error_and_stuck_provisioning_pods_list_as_failed(
    fake: FakeRunPod, clock: FakeClock
) -> None:
    rp = provider(fake, clock)
    fake.error_next()
    broken = rp.create("stemfleet-worker-p", 1.0).id
    fake.stall_next()
    stuck = rp.create("stemfleet-worker-q", 1.0).id
    fake.tick(2)
    states = {m.id: m for m in rp.list()}
    assert states[broken].state == "failed" and states[broken].provider_state == "ERROR"
    assert states[broken].stopped_hourly_usd == pytest.approx(0.17 + DISK_USD), "ERROR is billed"
    assert states[stuck].state == "starting"
    clock.advance(301)
    assert {m.id: m.state for m in rp.list()}[stuck] == "failed"


def test_wait_polls_until_the_state(fake: FakeRunPod, clock: FakeClock) -> None:
    rp = provider(fake, clock)
    pod = rp.create("stemfleet-worker-r", 1.0).id
    assert rp.wait(pod, "started", 3) is False
    fake.tick(2)
    assert rp.wait(pod, "started", 3) is True


def test_ratelimit_headers_are_read_as_remaining_and_reset(
    fake: FakeRunPod, clock: FakeClock
) -> None:
    # every answer carries `"minute";r=<left>;t=<reset s>`: a 5xx on a read is retried after
    # backoff, not after `r` (the requests left) read as seconds
    sleeps = Sleeps(clock)
    rp = provider(fake, clock, sleeps)
    fake.fail_next("list", 500)
    assert rp.list() == []
    assert len(sleeps.delays) == 1 and sleeps.delays[0] < 2.0, sleeps.delays
    # a window with nothing left: the next request waits for its reset instead of a 429
    fake.limits = {"minute": (3, 60)}
    clock.advance(60 - clock.now().timestamp() % 60)
    sleeps.delays.clear()
    for _ in range(4):
        rp.list()
    assert fake.count("list") == 6 and all(c.status == 200 for c in fake.calls[-4:])
    assert sleeps.delays and max(sleeps.delays) == pytest.approx(60, abs=1)


def test_the_accounts_own_hourly_limit_fails_every_candidate_with_its_detail(
    fake: FakeRunPod, clock: FakeClock
) -> None:
    rp = provider(fake, clock)
    rp.create("stemfleet-worker-s", 1.0)
    fake.set_hourly_limit(0.25)  # the first pod takes most of it
    with pytest.raises(ProviderError) as refused:
        rp.create("stemfleet-worker-u", 1.0)
    assert refused.value.kind == "capacity" and len(creates(fake)) == 3  # A4000, then 3090
    assert f"last detail: {OVER_LIMIT}" in str(refused.value)
    assert len(fake.pods) == 1
