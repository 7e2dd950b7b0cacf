"""Prometheus metrics: the collectors and the ASGI middleware that times every request.

With several uvicorn workers each process keeps its own counters (a scrape sees one worker);
set PROMETHEUS_MULTIPROC_DIR to aggregate them with prometheus-client's multiprocess mode.
"""

from __future__ import annotations

import time

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUESTS = Counter(
    "recsvc_http_requests_total", "HTTP requests served", ["method", "route", "status"]
)
LATENCY = Histogram(
    "recsvc_http_request_duration_seconds",
    "Time to answer an HTTP request",
    ["method", "route"],
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
)
EVENTS_ACCEPTED = Counter("recsvc_events_accepted_total", "Events stored")
EVENTS_DUPLICATE = Counter("recsvc_events_duplicate_total", "Events skipped as repeats")
EVENTS_REJECTED_BATCHES = Counter("recsvc_event_batches_rejected_total", "Event batches refused")
MODEL_LOAD_FAILURES = Counter(
    "recsvc_model_load_failures_total", "Activated model versions refused (missing or corrupt)"
)
MODEL_VERSION = Info("recsvc_model", "The model version this worker serves")
BATCH_SIZE = Histogram(
    "recsvc_scoring_batch_size",
    "Recommendation requests scored together in one matrix product",
    buckets=(1, 2, 4, 8, 16, 32, 64),
)
STRATEGY = Counter("recsvc_recommendations_total", "Recommendation lists served", ["strategy"])
FRESHNESS_SKIPPED = Counter(
    "recsvc_freshness_skipped_total",
    "Recommendations served without the user's newest events (database unreachable)",
)
DATABASE_UP = Gauge("recsvc_database_up", "1 when the last readiness check reached the database")


def render() -> tuple[bytes, str]:
    return generate_latest(), CONTENT_TYPE_LATEST


class MetricsMiddleware:
    """Counts and times requests by route template (not raw path, which would explode labels)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", "unmatched")
            method = scope["method"]
            REQUESTS.labels(method, template, str(status)).inc()
            LATENCY.labels(method, template).observe(time.perf_counter() - start)
