"""Signed webhooks on final status: Standard Webhooks signatures, retries with backoff (time
injected, no sleeping), every attempt recorded, SSRF refusals at submit and at send time."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from app.api.webhooks import sign
from app.clock import FakeClock
from app.db import connect
from app.pgserver import free_port
from app.queue import Queue
from tests.api_support import (
    USER_A,
    WEBHOOK_SECRET,
    api_client,
    api_settings,
    audio_bytes,
    bearer,
)

A = bearer(USER_A)


def verify_standard_webhook(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """Verified by the Standard Webhooks reference library (an independent verifier, not our
    own signing code checking itself): signature, id and a timestamp within its tolerance of
    the real time now."""
    try:
        Webhook(secret).verify(body, headers)
    except WebhookVerificationError:
        return False
    return True


def test_signature_matches_the_published_example() -> None:
    # The example from the Standard Webhooks / Svix documentation.
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = b'{"test": 2432232314}'
    msg_id, timestamp = "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330
    signature = sign(secret, msg_id, timestamp, body)
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    at = datetime.fromtimestamp(timestamp, UTC)
    assert signature == Webhook(secret).sign(msg_id, at, body.decode())


def test_a_fresh_signature_verifies_under_the_standard() -> None:
    body = b'{"type":"job.succeeded"}'
    now = int(time.time())
    headers = {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(now),
        "webhook-signature": sign(WEBHOOK_SECRET, "msg_1", now, body),
    }
    assert verify_standard_webhook(WEBHOOK_SECRET, headers, body)
    assert not verify_standard_webhook(WEBHOOK_SECRET, headers, body + b" ")
    assert not verify_standard_webhook(WEBHOOK_SECRET, {**headers, "webhook-id": "msg_2"}, body)


class Receiver:
    """A real loopback HTTP receiver answering `statuses` in turn (then 200), recording every
    request. Starts later (`start()`) to play a receiver that is down."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.port = free_port()
        self.statuses = list(statuses or [])
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/stemfleet?src=test"

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    yield receiver
    receiver.close()


def _finish_job(db_url: str, queue: Queue, job_id: str) -> None:
    """Run the job through the queue's own functions: claim, then complete with stems."""
    with connect(db_url) as conn:
        worker = queue.register_worker(conn, machine_id="hook-test")
        (job,) = queue.claim(conn, worker.id, lease=60)
        assert str(job.id) == job_id
        queue.complete(conn, job, output={"stems": {"vocals": f"outputs/{job.id}/vocals.wav"}})


def test_receiver_down_at_first_gets_the_signed_event_later(
    db_url: str, tmp_path: Path, receiver: Receiver
) -> None:
    clock = FakeClock(datetime.now(UTC))  # starts now: the standard checks the timestamp
    queue = Queue(clock)
    settings = api_settings(db_url, tmp_path, callback_allowlist=["127.0.0.1"])
    with api_client(settings, clock=clock) as (client, app):
        dispatcher = app.state.dispatcher
        response = client.post(
            "/v1/jobs",
            files={"file": ("a.wav", audio_bytes(), "audio/wav")},
            data={"callback_url": receiver.url},
            headers=A,
        )
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]
        assert dispatcher.run_once() == 0  # nothing final yet

        _finish_job(settings.require_database_url(), queue, job_id)
        # attempt 1: nobody listens
        assert dispatcher.run_once() == 1
        assert receiver.requests == []
        assert dispatcher.run_once() == 0  # not due before its backoff
        receiver.statuses = [503]
        receiver.start()
        clock.advance(settings.webhook_retry_base)  # attempt 2: the receiver answers 503
        assert dispatcher.run_once() == 1
        clock.advance(settings.webhook_retry_base * 2)  # attempt 3: 200
        assert dispatcher.run_once() == 1
        clock.advance(3600)
        assert dispatcher.run_once() == 0  # delivered: never sent again

        assert len(receiver.requests) == 2
        (first_headers, _), (headers, body) = receiver.requests
        assert headers["webhook-id"] == first_headers["webhook-id"]  # same message, retried
        assert verify_standard_webhook(WEBHOOK_SECRET, headers, body)
        assert headers["webhook-timestamp"] == str(int(clock.now().timestamp() - 3600))
        event = json.loads(body)
        assert event["type"] == "job.succeeded"
        assert event["data"]["id"] == job_id
        assert event["data"]["status"] == "succeeded"
        assert set(event["data"]["stems"]) == {"vocals"}
        assert event["data"]["stems"]["vocals"]["url"]

        with connect(settings.require_database_url()) as conn:
            (delivery,) = queue.webhook_deliveries_for_job(conn, job_id)
            attempts = queue.webhook_attempts(conn, delivery.id)
        assert delivery.status == "delivered"
        assert str(delivery.id) == headers["webhook-id"]
        assert [a.status_code for a in attempts] == [None, 503, 200]
        assert "connection failed" in (attempts[0].error or "")
        assert attempts[1].error == "receiver answered HTTP 503"


def test_retries_back_off_for_at_least_an_hour_then_give_up(
    db_url: str, tmp_path: Path, receiver: Receiver
) -> None:
    clock = FakeClock()
    queue = Queue(clock)
    settings = api_settings(db_url, tmp_path, callback_allowlist=["127.0.0.1"])
    receiver.statuses = [500] * 100
    receiver.start()
    with api_client(settings, clock=clock) as (client, app):
        job = client.post(
            "/v1/jobs",
            files={"file": ("a.wav", audio_bytes(), "audio/wav")},
            data={"callback_url": receiver.url},
            headers=A,
        ).json()
        client.post(f"/v1/jobs/{job['id']}/cancel", headers=A)
        with connect(settings.require_database_url()) as conn:
            for _ in range(30):
                app.state.dispatcher.run_once()
                (delivery,) = queue.webhook_deliveries_for_job(conn, job["id"])
                if delivery.status != "pending":
                    break
                clock.advance((delivery.next_attempt_at - clock.now()).total_seconds())
            attempts = queue.webhook_attempts(conn, delivery.id)
    assert delivery.status == "failed"
    assert delivery.event_type == "job.cancelled"
    gaps = [(b.attempted_at - a.attempted_at).total_seconds() for a, b in pairwise(attempts)]
    assert gaps == sorted(gaps) and gaps[1] == 2 * gaps[0]  # exponential
    span = (attempts[-1].attempted_at - delivery.created_at).total_seconds()
    assert 3600 <= span <= settings.webhook_max_age
    assert len(receiver.requests) == len(attempts)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://127.0.0.1:9/hook", "loopback"),
        ("http://10.1.2.3/hook", "private"),
        ("http://192.168.0.10/hook", "private"),
        ("http://169.254.169.254/latest/meta-data/", "metadata"),
        ("http://[::1]:8080/hook", "loopback"),
        ("http://[::ffff:127.0.0.1]/hook", "loopback"),
        ("http://localhost:8080/hook", "loopback"),
        ("ftp://example.com/hook", "http:// or https://"),
        ("http://:80/hook", "no host"),
    ],
)
def test_unsafe_callback_urls_are_refused_at_submit(
    db_url: str, tmp_path: Path, url: str, reason: str
) -> None:
    with api_client(api_settings(db_url, tmp_path)) as (client, _app):
        response = client.post(
            "/v1/jobs",
            files={"file": ("a.wav", audio_bytes(), "audio/wav")},
            data={"callback_url": url},
            headers=A,
        )
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "invalid_callback_url"
    assert reason in error["message"]


def test_a_host_that_rebinds_to_loopback_is_refused_at_send_time(
    db_url: str, tmp_path: Path
) -> None:
    answers = [["93.184.216.34"], ["127.0.0.1"]]

    def rebinding(host: str, port: int) -> list[str]:
        return answers.pop(0) if len(answers) > 1 else answers[0]

    settings = api_settings(db_url, tmp_path)
    with api_client(settings, resolver=rebinding) as (client, app):
        job = client.post(
            "/v1/jobs",
            files={"file": ("a.wav", audio_bytes(), "audio/wav")},
            data={"callback_url": "https://hooks.example.test/stemfleet"},
            headers=A,
        )
        assert job.status_code == 202, job.text
        client.post(f"/v1/jobs/{job.json()['id']}/cancel", headers=A)
        assert app.state.dispatcher.run_once() == 1
        with connect(settings.require_database_url()) as conn:
            (delivery,) = Queue().webhook_deliveries_for_job(conn, job.json()["id"])
    assert delivery.status == "failed"
    assert "refused at send time" in (delivery.last_error or "")
    assert "loopback" in (delivery.last_error or "")


def test_callbacks_are_refused_when_the_server_has_no_webhook_secret(
    db_url: str, tmp_path: Path
) -> None:
    settings = api_settings(db_url, tmp_path, webhook_secret=None)
    with api_client(settings) as (client, app):
        assert app.state.dispatcher is None
        response = client.post(
            "/v1/jobs",
            files={"file": ("a.wav", audio_bytes(), "audio/wav")},
            data={"callback_url": "https://hooks.example.com/x"},
            headers=A,
        )
    assert response.status_code == 422
    assert "STEMFLEET_WEBHOOK_SECRET" in response.json()["error"]["message"]


def test_dispatcher_thread_delivers_without_being_driven(
    db_url: str, tmp_path: Path, receiver: Receiver
) -> None:
    """The lifespan starts the dispatcher loop: a final status reaches the receiver on its own
    (woken by NOTIFY; the wait is bounded)."""
    receiver.start()
    settings = api_settings(db_url, tmp_path, callback_allowlist=["127.0.0.1"])
    with api_client(settings, run_dispatcher=True) as (client, _app):
        job = client.post(
            "/v1/jobs",
            files={"file": ("a.wav", audio_bytes(), "audio/wav")},
            data={"callback_url": receiver.url},
            headers=A,
        ).json()
        client.post(f"/v1/jobs/{job['id']}/cancel", headers=A)
        _wait_for(lambda: len(receiver.requests) == 1, timeout=20)
    headers, body = receiver.requests[0]
    assert verify_standard_webhook(WEBHOOK_SECRET, headers, body)
    assert json.loads(body)["type"] == "job.cancelled"


def _wait_for(condition: Any, timeout: float) -> None:
    event = threading.Event()
    deadline = threading.Timer(timeout, event.set)
    deadline.start()
    try:
        while not condition():
            if event.wait(0.05):
                raise AssertionError(f"condition not met within {timeout}s")
    finally:
        deadline.cancel()
