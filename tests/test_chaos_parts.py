"""The chaos suite's own parts (`make chaos` itself is too slow for the suite): the storage fault
proxy in front of the moto server, spoken to through our S3 storage and plain HTTP; the webhook
receiver; and the checks, on histories written by hand."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import pytest

from app.errors import StorageError
from app.storage import S3Storage
from chaos.checks import kill_to_requeue, nothing_twice
from chaos.faults import Kill
from chaos.observer import Seen
from chaos.proxy import FaultProxy
from chaos.receiver import WebhookReceiver


@pytest.fixture
def proxy(s3_server: str) -> Iterator[FaultProxy]:
    with FaultProxy(s3_server, seed=7) as started:
        assert isinstance(started, FaultProxy)
        yield started


def storage_through(proxy: FaultProxy, s3_env: dict[str, str]) -> S3Storage:
    return S3Storage(
        bucket=s3_env["STEMFLEET_S3_BUCKET"],
        endpoint_url=proxy.url,
        region="us-east-1",
        access_key_id="testing",
        secret_access_key="testing",
    )


def test_proxy_passes_requests_through_untouched(
    proxy: FaultProxy, s3_env: dict[str, str], tmp_path: object
) -> None:
    storage = storage_through(proxy, s3_env)
    storage.put_bytes("inputs/a/song.wav", b"RIFF" + bytes(range(256)) * 40)

    assert storage.get_bytes("inputs/a/song.wav") == b"RIFF" + bytes(range(256)) * 40
    assert storage.exists("inputs/a/song.wav")
    assert not storage.exists("inputs/a/other.wav")
    assert proxy.counts["failed"] == 0 and proxy.counts["forwarded"] >= 4


def test_proxy_answers_500_on_demand_until_healed(
    proxy: FaultProxy, s3_env: dict[str, str]
) -> None:
    storage = storage_through(proxy, s3_env)
    storage.put_bytes("inputs/a/song.wav", b"data")

    proxy.fail()
    answer = httpx.get(f"{proxy.url}/{s3_env['STEMFLEET_S3_BUCKET']}/inputs/a/song.wav")
    assert answer.status_code == 500
    assert b"<Code>InternalError</Code>" in answer.content
    with pytest.raises(StorageError):
        storage.get_bytes("inputs/a/song.wav")  # after boto3's own retries

    proxy.heal()
    assert storage.get_bytes("inputs/a/song.wav") == b"data"


def test_proxy_fails_a_fraction_of_requests(proxy: FaultProxy, s3_env: dict[str, str]) -> None:
    proxy.fail(rate=0.5)
    url = f"{proxy.url}/{s3_env['STEMFLEET_S3_BUCKET']}"
    codes = [httpx.get(url).status_code for _ in range(40)]

    assert 0 < codes.count(500) < 40
    assert set(codes) == {200, 500}
    assert proxy.counts["failed"] == codes.count(500)


def test_proxy_holds_requests_while_stalled_and_heal_lets_them_go(
    proxy: FaultProxy, s3_env: dict[str, str]
) -> None:
    storage = storage_through(proxy, s3_env)
    storage.put_bytes("inputs/a/song.wav", b"data")
    proxy.stall(300)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(storage.get_bytes("inputs/a/song.wav")))
    reader.start()

    for _ in range(3000):  # until the proxy holds the request (30 s at most)
        if proxy.counts["stalled"]:
            break
        reader.join(0.01)
    reader.join(0.2)
    assert proxy.counts["stalled"] == 1
    assert reader.is_alive() and got == []

    proxy.heal()
    reader.join(30)
    assert got == [b"data"]


def test_receiver_records_deliveries_and_tells_apart_retries_from_second_events() -> None:
    job = str(uuid.uuid4())
    with WebhookReceiver() as receiver:
        assert isinstance(receiver, WebhookReceiver)
        for webhook_id in ("msg_1", "msg_1", "msg_2"):  # a retry of msg_1, then a second event
            answer = httpx.post(
                receiver.callback_url,
                json={"type": "job.succeeded", "data": {"id": job}},
                headers={"webhook-id": webhook_id},
            )
            assert answer.status_code == 204
        assert httpx.post(receiver.callback_url, content=b"not json").status_code == 400

    assert receiver.told("job.succeeded") == {job: {"msg_1", "msg_2"}}
    assert receiver.told("job.failed") == {}


def seen(at: float, status: str, attempts: int, worker: uuid.UUID | None = None) -> Seen:
    finished = datetime(2026, 1, 1, tzinfo=UTC) if status == "succeeded" else None
    return Seen(at, status, attempts, worker, finished)


def test_nothing_twice_flags_a_success_the_database_forgot_and_ran_again() -> None:
    worker = uuid.uuid4()
    once, twice = uuid.uuid4(), uuid.uuid4()
    history = {
        once: [seen(0, "queued", 0), seen(1, "running", 1, worker), seen(2, "succeeded", 1)],
        twice: [
            seen(0, "running", 1, worker),
            seen(1, "succeeded", 1),
            seen(3, "running", 1, worker),  # the crash rolled the completion back
            seen(9, "queued", 1),
            seen(10, "succeeded", 2),
        ],
    }
    with WebhookReceiver() as receiver:
        found = nothing_twice(history, receiver)  # type: ignore[arg-type]

    assert [(v.check, str(twice) in v.detail) for v in found] == [("twice", True)]
    assert "attempts [1, 2]" in found[0].detail


def test_kill_to_requeue_is_the_first_sight_of_the_job_out_of_the_killed_attempt() -> None:
    worker = uuid.uuid4()
    requeued, reclaimed, never = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    history = {
        requeued: [seen(10, "running", 1, worker), seen(21.5, "queued", 1)],
        reclaimed: [seen(10, "running", 1, worker), seen(14, "running", 2, uuid.uuid4())],
        never: [seen(10, "running", 1, worker)],
    }
    kills = [Kill(11.0, job, 1, worker, pid=1) for job in (requeued, reclaimed, never)]

    assert kill_to_requeue(history, kills) == [10.5, 3.0, None]
