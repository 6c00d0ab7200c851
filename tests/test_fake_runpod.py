"""The fake RunPod v2 server itself, through plain HTTP: what it accepts, what it refuses as a
spec violation, how pods move and are billed, and each fault it injects."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from app.clock import FakeClock
from tests.fake_runpod import SHARED_SPEC_PATH, SPEC_PATH, FakeRunPod

A4000, RTX3090 = "NVIDIA RTX A4000", "NVIDIA GeForce RTX 3090"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def fake(clock: FakeClock) -> Iterator[FakeRunPod]:
    server = FakeRunPod(clock)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def api(fake: FakeRunPod) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {fake.api_key}"}
    with httpx.Client(base_url=fake.url, headers=headers, timeout=10) as client:
        yield client


def pod_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "stemfleet-worker-1",
        "image": "ghcr.io/stemfleet/worker:gpu",
        "gpu": {"id": A4000, "count": 1},
        "cloud": "COMMUNITY",
        "dataCenterIds": ["EU-RO-1", "US-TX-3"],
        "env": {"STEMFLEET_FLEET": "test"},
        "disk": 20,
    }
    return {**body, **overrides}


def create(api: httpx.Client, **overrides: Any) -> dict[str, Any]:
    response = api.post("/v2/pods", json=pod_body(**overrides))
    assert response.status_code == 201, response.text
    pod: dict[str, Any] = response.json()
    return pod


def act(api: httpx.Client, pod_id: str, action: str) -> httpx.Response:
    return api.post(f"/v2/pods/{pod_id}/action", json={"action": action})


def test_the_spec_copy_is_the_shared_reference() -> None:
    copy = SPEC_PATH.read_text()
    assert '"title": "Runpod REST API"' in copy
    if SHARED_SPEC_PATH.is_file():
        assert copy == SHARED_SPEC_PATH.read_text()


def test_a_pod_goes_through_its_statuses_on_tick(fake: FakeRunPod, api: httpx.Client) -> None:
    pod = create(api)
    assert (pod["status"], pod["actions"]) == ("PROVISIONING", ["stop", "terminate"])
    assert pod["gpu"] == {"id": A4000, "count": 1}
    assert (pod["cloud"], pod["dataCenterId"]) == ("COMMUNITY", "EU-RO-1")
    assert pod["env"] == {"STEMFLEET_FLEET": "test"} and pod["startedAt"] is None
    assert pod["cost"] > 0.17
    fake.tick()
    got = api.get(f"/v2/pods/{pod['id']}").json()
    assert got["status"] == "STARTING" and got["startedAt"] is not None
    fake.tick()
    got = api.get(f"/v2/pods/{pod['id']}").json()
    assert (got["status"], got["actions"]) == ("RUNNING", ["stop", "restart", "terminate"])
    assert len(got["runtime"]["gpus"]) == 1

    stopped = act(api, pod["id"], "stop").json()
    assert (stopped["status"], stopped["cost"], stopped["actions"]) == (
        "EXITED",
        0.0,
        ["start", "terminate"],
    )
    assert act(api, pod["id"], "stop").status_code == 409
    assert act(api, pod["id"], "start").json()["status"] == "STARTING"
    fake.tick()
    assert fake.states() == {pod["id"]: "RUNNING"}
    assert act(api, pod["id"], "restart").json()["status"] == "STARTING"
    fake.tick()

    assert api.delete(f"/v2/pods/{pod['id']}").status_code == 204
    assert api.get("/v2/pods").json() == {"pods": []}
    assert api.get(f"/v2/pods/{pod['id']}").json()["status"] == "TERMINATED"
    assert act(api, pod["id"], "start").status_code == 404
    assert fake.violations == []
    assert [fake.count(n) for n in ("create", "get", "stop", "start", "terminate")] == [
        1,
        3,
        2,
        2,
        1,
    ]


def test_list_update_and_terminate_by_action(fake: FakeRunPod, api: httpx.Client) -> None:
    other = fake.add_pod("someone-elses-pod", status="EXITED")
    ours = create(api)
    listed = api.get("/v2/pods", params={"includeClusterPods": "false"}).json()["pods"]
    assert [p["id"] for p in listed] == [other, ours["id"]]
    renamed = api.patch(f"/v2/pods/{ours['id']}", json={"name": "renamed", "env": {"A": "1"}})
    assert (renamed.status_code, renamed.json()["name"]) == (200, "renamed")
    assert renamed.json()["env"] == {"A": "1"}
    assert act(api, ours["id"], "terminate").status_code == 204
    assert fake.states() == {other: "EXITED", ours["id"]: "TERMINATED"}
    assert api.get("/v2/pods/nosuchpod").status_code == 404
    assert fake.violations == []


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "violation"),
    [
        ("POST", "/v2/pods", {"json": pod_body(gpu={"id": A4000, "cnt": 1})}, 422, "cnt"),
        ("POST", "/v2/pods", {"json": pod_body(costPerHr=0.2)}, 422, "costPerHr"),
        ("POST", "/v2/pods", {"json": pod_body(cloud="CHEAP")}, 422, "CHEAP"),
        ("POST", "/v2/pods", {"json": {"image": "x", "gpu": {"id": A4000}}}, 422, "name"),
        ("POST", "/v2/pods", {"json": pod_body(image=None)}, 422, "image"),
        ("POST", "/v2/pods", {"json": pod_body(disk=0)}, 422, "minimum"),
        ("POST", "/v2/pods", {"content": b"name=x"}, 422, "not JSON"),
        ("POST", "/v2/pods/p1/action", {"json": {"action": "resume"}}, 422, "resume"),
        ("GET", "/v2/pods", {"params": {"desiredStatus": "RUNNING"}}, 422, "desiredStatus"),
        ("GET", "/v2/pods", {"params": {"includeClusterPods": "yes"}}, 422, "includeClusterPods"),
        ("GET", "/v2/catalog/gpus", {"params": {"include": "PRICES"}}, 422, "PRICES"),
        ("GET", "/v1/pods", {}, 404, "no such path"),
        ("PUT", "/v2/pods", {}, 405, "not allowed"),
        ("POST", "/v2/pods/p1/stop", {}, 404, "no such path"),
    ],
)
def test_requests_that_break_the_spec_are_refused_and_recorded(
    fake: FakeRunPod,
    api: httpx.Client,
    method: str,
    path: str,
    kwargs: dict[str, Any],
    status: int,
    violation: str,
) -> None:
    response = api.request(method, path, **kwargs)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["status"] == status
    assert len(fake.violations) >= 1
    assert any(violation in v for v in fake.violations), fake.violations
    assert fake.pods == {}


def test_a_wrong_key_is_401_and_no_violation(fake: FakeRunPod) -> None:
    response = httpx.get(f"{fake.url}/v2/pods", headers={"Authorization": "Bearer nope"})
    assert response.status_code == 401
    assert response.json()["title"] == "Unauthorized"
    assert fake.violations == []
