"""A webhook receiver on loopback: the jobs' callback_url. It records every delivery the API's
dispatcher makes (its Standard Webhooks `webhook-id`, event type and job id) and answers 204, so
the suite can tell whether a user was told twice that a job succeeded: two `job.succeeded`
deliveries with different ids for one job (a retry of one delivery keeps its id)."""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict
from dataclasses import dataclass

from chaos.loopback import LoopbackServer, QuietHandler


@dataclass(frozen=True)
class Delivery:
    webhook_id: str
    event_type: str
    job_id: str
    received_at: float  # time.monotonic()


class ReceiverHandler(QuietHandler):
    def do_POST(self) -> None:
        receiver: WebhookReceiver = self.owner
        body = self.read_body()
        try:
            payload = json.loads(body)
            delivery = Delivery(
                webhook_id=self.headers.get("webhook-id", ""),
                event_type=str(payload.get("type", "")),
                job_id=str(payload.get("data", {}).get("id", "")),
                received_at=time.monotonic(),
            )
        except (ValueError, AttributeError):
            self.reply(400, b"not a webhook payload")
            return
        receiver.record(delivery)
        self.reply(204)


class WebhookReceiver(LoopbackServer):
    def __init__(self) -> None:
        super().__init__(ReceiverHandler, "chaos-webhook-receiver")
        self._lock = threading.Lock()
        self.deliveries: list[Delivery] = []

    @property
    def callback_url(self) -> str:
        return f"{self.url}/hook"

    def record(self, delivery: Delivery) -> None:
        with self._lock:
            self.deliveries.append(delivery)

    def told(self, event_type: str) -> dict[str, set[str]]:
        """Job id -> the distinct webhook ids of its `event_type` deliveries."""
        found: dict[str, set[str]] = defaultdict(set)
        with self._lock:
            for delivery in self.deliveries:
                if delivery.event_type == event_type:
                    found[delivery.job_id].add(delivery.webhook_id)
        return dict(found)
