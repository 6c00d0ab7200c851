"""Prometheus metrics: request latencies (a histogram, labelled by route template) and queue
gauges read from the admin views at scrape time."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import Message, Receive, Scope, Send

from app.api.context import ApiContext
from app.api.middleware import HttpMiddleware
from app.log import get_logger


class QueueCollector(Collector):
    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("stemfleet_database_up", "1 if the API reached the database")
        try:
            with self.ctx.connection() as conn:
                depth = self.ctx.queue.admin_view(conn, "queue_depth")
                oldest = self.ctx.queue.admin_view(conn, "queue_oldest")
                workers = self.ctx.queue.admin_view(conn, "workers")
                hooks = self.ctx.queue.admin_view(conn, "webhook_deliveries")
        except Exception as exc:
            get_logger().warning("metrics_database_error", error=str(exc))
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up

        jobs = GaugeMetricFamily(
            "stemfleet_jobs", "Jobs by status and kind", labels=["status", "kind"]
        )
        for row in depth:
            jobs.add_metric([str(row["status"]), str(row["kind"])], row["jobs"])
        yield jobs

        queued = GaugeMetricFamily("stemfleet_queue_depth", "Queued jobs by kind", labels=["kind"])
        for row in depth:
            if row["status"] == "queued":
                queued.add_metric([str(row["kind"])], row["jobs"])
        yield queued

        wait = GaugeMetricFamily(
            "stemfleet_queue_oldest_wait_seconds",
            "Age of the oldest queued job, by kind (0 when none)",
            labels=["kind"],
        )
        ages = {str(r["kind"]): float(r["oldest_age_s"] or 0.0) for r in oldest}
        for kind in ("separate", "preview"):
            wait.add_metric([kind], max(ages.get(kind, 0.0), 0.0))
        yield wait

        fleet = GaugeMetricFamily(
            "stemfleet_workers", "Registered, not stopped workers by state", labels=["state"]
        )
        states: dict[str, int] = {"idle": 0, "busy": 0, "lost": 0}
        for row in workers:
            states[str(row["state"])] = states.get(str(row["state"]), 0) + 1
        for state, count in states.items():
            fleet.add_metric([state], count)
        yield fleet

        deliveries = GaugeMetricFamily(
            "stemfleet_webhook_deliveries", "Webhook deliveries by status", labels=["status"]
        )
        for row in hooks:
            deliveries.add_metric([str(row["status"])], row["deliveries"])
        yield deliveries


class ApiMetrics:
    def __init__(self, ctx: ApiContext) -> None:
        self.registry = CollectorRegistry()
        self.requests = Histogram(
            "stemfleet_http_request_duration_seconds",
            "Time from request to response headers, by route template",
            ["method", "route", "status"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.registry.register(QueueCollector(ctx))


@dataclass(eq=False)
class LatencyMiddleware(HttpMiddleware):
    """Observes the time to the response headers."""

    histogram: Histogram

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()

        async def send_timed(message: Message) -> None:
            if message["type"] == "http.response.start":
                route = scope.get("route")
                template = getattr(route, "path", None) or "unmatched"
                self.histogram.labels(scope["method"], template, str(message["status"])).observe(
                    time.perf_counter() - started
                )
            await send(message)

        await self.app(scope, receive, send_timed)
