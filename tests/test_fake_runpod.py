"""The fake RunPod v2 server itself, through plain HTTP: what it accepts, what it refuses as a
spec violation, how pods move and are billed, and each fault it injects."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from app.clock import FakeClock
from tests import fake_runpod
from tests.fake_runpod import NO_BALANCE, NO_CAPACITY, OVER_LIMIT, FakeRunPod, Prices

A4000, RTX3090 = "NVIDIA RTX A4000", "NVIDIA GeForce RTX 3090"
ROUND_PRICES = Prices(
    container_disk_gb_hour=0.001, volume_gb_hour_running=0.002, volume_gb_hour_stopped=0.003
)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def options() -> dict[str, Any]:
    """FakeRunPod's keyword arguments; a test parametrizes it to change them."""
    return {}


@pytest.fixture
def fake(clock: FakeClock, options: dict[str, Any]) -> Iterator[FakeRunPod]:
    server = FakeRunPod(clock, **options)
    server.start()
    yield server
    server.stop()
    assert server.violations == []  # a test that expects some takes them


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


without_image = {k: v for k, v in pod_body().items() if k != "image"}


def create(api: httpx.Client, **overrides: Any) -> dict[str, Any]:
    response = api.post("/v2/pods", json=pod_body(**overrides))
    assert response.status_code == 201, response.text
    pod: dict[str, Any] = response.json()
    return pod


def act(api: httpx.Client, pod_id: str, action: str) -> httpx.Response:
    return api.post(f"/v2/pods/{pod_id}/action", json={"action": action})


def test_the_spec_copy_is_the_shared_reference() -> None:
    copy = fake_runpod.SPEC_PATH.read_text()
    assert '"title": "Runpod REST API"' in copy
    if fake_runpod.SHARED_SPEC_PATH.is_file():
        assert copy == fake_runpod.SHARED_SPEC_PATH.read_text()


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
    assert (stopped["status"], stopped["actions"]) == ("EXITED", ["start", "terminate"])
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
    counts = [fake.count(n) for n in ("create", "get", "stop", "start", "terminate")]
    assert counts == [1, 3, 2, 2, 1]


def test_list_update_and_terminate_by_action(fake: FakeRunPod, api: httpx.Client) -> None:
    other = fake.add_pod("someone-elses-pod", status="EXITED")
    ours = create(api)
    listed = api.get("/v2/pods", params={"includeClusterPods": "false"}).json()["pods"]
    assert [p["id"] for p in listed] == [other, ours["id"]]
    renamed = api.patch(f"/v2/pods/{ours['id']}", json={"name": "renamed", "env": {"A": "1"}})
    assert (renamed.status_code, renamed.json()["name"]) == (200, "renamed")
    assert renamed.json()["env"] == {"A": "1"}
    api.patch(f"/v2/pods/{ours['id']}", json={"locked": True})
    assert act(api, ours["id"], "stop").status_code == 409  # locked
    assert act(api, ours["id"], "terminate").status_code == 204
    assert fake.states() == {other: "EXITED", ours["id"]: "TERMINATED"}
    assert api.get("/v2/pods/nosuchpod").status_code == 404


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "violation"),
    [
        ("POST", "/v2/pods", {"json": pod_body(gpu={"id": A4000, "cnt": 1})}, 422, "cnt"),
        ("POST", "/v2/pods", {"json": pod_body(costPerHr=0.2)}, 422, "costPerHr"),
        ("POST", "/v2/pods", {"json": pod_body(cloud="CHEAP")}, 422, "CHEAP"),
        ("POST", "/v2/pods", {"json": {"image": "x", "gpu": {"id": A4000}}}, 422, "name"),
        ("POST", "/v2/pods", {"json": pod_body(image=None)}, 422, "image"),
        ("POST", "/v2/pods", {"json": without_image}, 422, "'image' is a required property"),
        ("POST", "/v2/pods", {"json": pod_body(gpu={"id": A4000, "count": 0})}, 422, "minimum"),
        ("POST", "/v2/pods", {"json": pod_body(mounts={"persistent": {"size": 5}})}, 422, "path"),
        ("PATCH", "/v2/pods/p1", {"json": {"cloud": "SECURE"}}, 422, "cloud"),
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
    kwargs: Any,
    status: int,
    violation: str,
) -> None:
    response = api.request(method, path, **kwargs)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["status"] == status
    assert any(violation in v for v in fake.violations), fake.violations
    fake.violations.clear()
    assert fake.pods == {}


def test_a_wrong_key_is_401_and_no_violation(fake: FakeRunPod) -> None:
    response = httpx.get(f"{fake.url}/v2/pods", headers={"Authorization": "Bearer nope"})
    assert response.status_code == 401
    assert response.json()["title"] == "Unauthorized"


def test_the_fake_checks_its_own_answers(fake: FakeRunPod, api: httpx.Client) -> None:
    pod = create(api)
    fake.pods[pod["id"]].config["gpu"]["count"] = 0  # the spec says minimum 1
    assert api.get(f"/v2/pods/{pod['id']}").status_code == 200
    assert any("fake answer: getPod 200 response: gpu/count" in v for v in fake.violations)
    fake.violations.clear()


@pytest.mark.parametrize("options", [{"prices": ROUND_PRICES}])
def test_billing_is_per_second_at_the_pod_rate(
    fake: FakeRunPod, api: httpx.Client, clock: FakeClock
) -> None:
    mounts = {"persistent": {"size": 10, "path": "/workspace"}}
    pod = create(api, mounts=mounts)  # community A4000 $0.17 + 20 GB disk + 10 GB volume
    running = 0.17 + 20 * 0.001 + 10 * 0.002
    assert pod["cost"] == pytest.approx(running)
    assert fake.rate_usd_per_hour() == pytest.approx(running)
    clock.advance(1)
    assert fake.charged_usd(pod["id"]) == pytest.approx(running / 3600)
    clock.advance(1799)
    fake.tick(2)
    assert act(api, pod["id"], "stop").json()["cost"] == 0.0
    assert fake.rate_usd_per_hour() == pytest.approx(10 * 0.003)  # the volume, stopped
    clock.advance(3600)
    assert api.delete(f"/v2/pods/{pod['id']}").status_code == 204
    clock.advance(3600)
    assert fake.charged_usd() == pytest.approx(running / 2 + 10 * 0.003)
    assert fake.bill() == {pod["id"]: pytest.approx(running / 2 + 10 * 0.003)}
    secure = create(api, cloud="SECURE", gpu={"id": RTX3090, "count": 2}, disk=10)
    assert secure["cost"] == pytest.approx(2 * 0.43 + 10 * 0.001)


def test_no_capacity_is_a_400_per_gpu_type_data_centre_and_cloud(
    fake: FakeRunPod, api: httpx.Client
) -> None:
    fake.set_capacity(A4000, 1, data_center="EU-RO-1", cloud="COMMUNITY")
    fake.set_capacity(RTX3090, 0)
    first = create(api)
    assert first["dataCenterId"] == "EU-RO-1"
    refused = api.post("/v2/pods", json=pod_body(dataCenterIds=["EU-RO-1"]))
    assert refused.status_code == 400
    assert refused.json() == {"title": "Bad Request", "status": 400, "detail": NO_CAPACITY}
    assert create(api)["dataCenterId"] == "US-TX-3"  # the next data centre it allows
    assert create(api, cloud="SECURE", dataCenterIds=["EU-RO-1"])["cloud"] == "SECURE"
    assert api.post("/v2/pods", json=pod_body(gpu={"id": RTX3090})).status_code == 400
    assert act(api, first["id"], "stop").status_code == 200  # stopping frees the GPU
    assert create(api, dataCenterIds=["EU-RO-1"])["dataCenterId"] == "EU-RO-1"
    assert len(fake.pods) == 4


def test_the_catalog_reports_prices_and_availability(fake: FakeRunPod, api: httpx.Client) -> None:
    fake.set_capacity(A4000, 0, data_center="EU-RO-1", cloud="COMMUNITY")
    fake.set_capacity(RTX3090, 0)
    plain = api.get("/v2/catalog/gpus").json()["gpus"]
    assert {g["id"]: g["price"]["community"] for g in plain}[A4000] == 0.17
    assert all("availability" not in g for g in plain)
    query = {"include": "AVAILABILITY", "product": "POD", "cloud": "COMMUNITY"}
    listed = {g["id"]: g for g in api.get("/v2/catalog/gpus", params=query).json()["gpus"]}
    assert listed[A4000]["availability"] == "HIGH"
    assert {d["id"]: d["availability"] for d in listed[A4000]["dataCenters"]}["EU-RO-1"] == "NONE"
    assert listed[RTX3090]["availability"] == "NONE" and "dataCenters" not in listed[RTX3090]
    assert listed[RTX3090]["cudaVersions"] == [{"version": "12.8", "available": False}]
    one = api.get(f"/v2/catalog/gpus/{A4000}", params={**query, "countryCodes": "RO"}).json()
    assert (one["id"], one["availability"]) == (A4000, "NONE")
    assert api.get("/v2/catalog/gpus", params={"include": "AVAILABILITY"}).status_code == 400
    assert api.get("/v2/catalog/gpus/NVIDIA H100").status_code == 404


@pytest.mark.parametrize(
    ("status", "detail"),
    [
        (400, NO_CAPACITY),
        (402, "Insufficient balance"),
        (403, "access denied"),
        (422, "Request validation failed."),
        (500, "internal error"),
        (503, "upstream unavailable"),
    ],
)
def test_an_injected_create_failure_creates_nothing(
    fake: FakeRunPod, api: httpx.Client, status: int, detail: str
) -> None:
    fake.fail_next("create", status, detail=detail)
    refused = api.post("/v2/pods", json=pod_body())
    assert refused.status_code == status
    assert refused.json()["detail"] == detail
    assert refused.headers["RateLimit-Policy"].startswith('"minute";q=60;w=60')
    assert fake.pods == {}
    assert create(api)["status"] == "PROVISIONING"  # only the next one failed
    assert fake.count("create") == 2


def test_money_refusals_402_no_balance_and_400_past_the_spend_limit(
    fake: FakeRunPod, api: httpx.Client
) -> None:
    pod = create(api)  # about $0.17/h
    act(api, pod["id"], "stop")
    fake.set_balance(0.05)
    refused = api.post("/v2/pods", json=pod_body())
    assert (refused.status_code, refused.json()["detail"]) == (402, NO_BALANCE)
    assert act(api, pod["id"], "start").status_code == 402
    fake.set_balance(None)
    fake.set_hourly_limit(0.40)
    assert act(api, pod["id"], "start").status_code == 200
    create(api, name="stemfleet-worker-2")
    refused = api.post("/v2/pods", json=pod_body(name="stemfleet-worker-3"))
    assert (refused.status_code, refused.json()["detail"]) == (400, OVER_LIMIT)
    act(api, pod["id"], "stop")
    assert create(api, name="stemfleet-worker-3")["status"] == "PROVISIONING"
    assert act(api, pod["id"], "start").status_code == 400


def test_a_lost_answer_still_creates_the_pod(fake: FakeRunPod, api: httpx.Client) -> None:
    fake.lose_next("create", status=502)
    assert api.post("/v2/pods", json=pod_body()).status_code == 502
    fake.lose_next("create", status=None)
    with pytest.raises(httpx.RemoteProtocolError):
        api.post("/v2/pods", json=pod_body(name="stemfleet-worker-2"))
    names = [p["name"] for p in api.get("/v2/pods").json()["pods"]]
    assert names == ["stemfleet-worker-1", "stemfleet-worker-2"]
    assert [c.status for c in fake.calls if c.operation == "createPod"] == [502, 0]


@pytest.mark.parametrize("options", [{"limits": {"minute": (2, 60), "hour": (100, 3600)}}])
def test_rate_limits_answer_429_with_retry_after(
    fake: FakeRunPod, api: httpx.Client, clock: FakeClock
) -> None:
    clock.advance(60 - clock.now().timestamp() % 60 + 15)  # 15 s into a minute
    first = api.get("/v2/pods")
    assert first.headers["RateLimit"] == '"minute";r=1;t=45, "hour";r=99;t=3525'
    assert first.headers["RateLimit-Policy"] == '"minute";q=2;w=60, "hour";q=100;w=3600'
    api.get("/v2/pods")
    limited = api.get("/v2/pods")
    assert limited.status_code == 429
    assert limited.headers["Retry-After"] == "45"
    assert limited.json()["detail"] == "rate limit exceeded for the minute window"
    clock.advance(45)
    assert api.get("/v2/pods").status_code == 200
    fake.fail_next("list", 429, retry_after=7)
    forced = api.get("/v2/pods")
    assert (forced.status_code, forced.headers["Retry-After"]) == (429, "7")


@pytest.mark.parametrize("options", [{"limits": {}}])
def test_without_limits_no_rate_limit_headers(fake: FakeRunPod, api: httpx.Client) -> None:
    assert "RateLimit" not in api.get("/v2/pods").headers


def test_a_resume_can_come_back_without_a_gpu(fake: FakeRunPod, api: httpx.Client) -> None:
    pod = create(api, disk=10)
    fake.tick(2)
    act(api, pod["id"], "stop")
    fake.zero_gpu_next_start()
    assert act(api, pod["id"], "start").status_code == 200
    fake.tick()
    resumed = api.get(f"/v2/pods/{pod['id']}").json()
    assert resumed["status"] == "RUNNING"
    assert "gpu" not in resumed and resumed["runtime"]["gpus"] == []
    assert resumed["cost"] == pytest.approx(10 * 0.10 / 730)  # its disk only
    act(api, pod["id"], "stop")
    fake.set_capacity(A4000, 0, data_center="EU-RO-1")  # someone took the card
    act(api, pod["id"], "start")
    assert "gpu" not in api.get(f"/v2/pods/{pod['id']}").json()
    act(api, pod["id"], "stop")
    fake.set_capacity(A4000, 1, data_center="EU-RO-1")
    act(api, pod["id"], "start")
    assert api.get(f"/v2/pods/{pod['id']}").json()["gpu"] == {"id": A4000, "count": 1}


def test_a_pod_can_stall_or_end_in_error(fake: FakeRunPod, api: httpx.Client) -> None:
    fake.stall_next()
    fake.error_next()
    stuck = create(api)  # both faults go to the first boot
    fine = create(api, name="stemfleet-worker-2")
    fake.tick(10)
    assert fake.states() == {stuck["id"]: "PROVISIONING", fine["id"]: "RUNNING"}
    assert act(api, stuck["id"], "stop").json()["status"] == "EXITED"
    fake.error_next()
    act(api, stuck["id"], "start")
    fake.tick()
    failed = api.get(f"/v2/pods/{stuck['id']}").json()
    assert (failed["status"], failed["actions"]) == ("ERROR", ["start", "terminate"])
    assert failed["cost"] > 0  # an ERROR pod still holds, and is billed for, its GPU
    fake.break_pod(fine["id"])
    assert api.get(f"/v2/pods/{fine['id']}").json()["status"] == "ERROR"
    assert act(api, fine["id"], "start").json()["status"] == "STARTING"
    fake.tick()
    assert fake.states()[fine["id"]] == "RUNNING"


def test_a_start_refused_by_the_api_leaves_the_pod_stopped(
    fake: FakeRunPod, api: httpx.Client
) -> None:
    pod = create(api)
    act(api, pod["id"], "stop")
    fake.fail_next("start", 400, detail="not enough free GPUs on the host machine")
    refused = act(api, pod["id"], "start")
    assert (refused.status_code, refused.json()["status"]) == (400, 400)
    assert fake.states() == {pod["id"]: "EXITED"}
    assert act(api, pod["id"], "stop").status_code == 409  # faults match their action only


def test_faults_can_aim_at_a_gpu_type_or_a_pod(fake: FakeRunPod, api: httpx.Client) -> None:
    fake.fail_next("create", 403, detail="access denied", gpu_id=RTX3090)
    assert create(api)["gpu"]["id"] == A4000
    assert api.post("/v2/pods", json=pod_body(gpu={"id": RTX3090})).status_code == 403
    first, second = create(api, name="stemfleet-a"), create(api, name="stemfleet-b")
    fake.lose_next("stop", pod_id=second["id"])
    assert act(api, first["id"], "stop").status_code == 200
    assert act(api, second["id"], "stop").status_code == 502
    assert fake.states()[second["id"]] == "EXITED"  # stopped all the same


def test_an_answer_is_lost_only_from_a_request_that_succeeded(
    fake: FakeRunPod, api: httpx.Client
) -> None:
    fake.set_capacity(A4000, 0)
    fake.lose_next("create")
    assert api.post("/v2/pods", json=pod_body()).status_code == 400  # nothing made: as is
    fake.set_capacity(A4000, 5)
    assert api.post("/v2/pods", json=pod_body()).status_code == 502
    assert len(fake.pods) == 1
