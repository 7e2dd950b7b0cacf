"""Prometheus metrics: the collectors, and the scrape that sums them over every worker.

`recsvc serve` gives each start its own empty directory in PROMETHEUS_MULTIPROC_DIR before any
worker imports this module (cli.fresh_metrics_directory), so prometheus-client keeps every worker's
values in files there and a scrape answered by any worker reports the sum (counters,
histograms) or the value the gauge's `multiprocess_mode` names over the live workers. Without
that variable (tests, `recsvc` imported as a library) the values are this process's own.

Gauges that describe the whole deployment (model age, training jobs) are read from the database
at scrape time by the worker that answers it (`api.prometheus_metrics`), so they hold for
`recsvc train` runs in other processes and containers too.
"""

from __future__ import annotations

import functools
import os
import re
from typing import TYPE_CHECKING

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as _multiprocess

if TYPE_CHECKING:
    from recsvc.registry import Deployment

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

REQUESTS = Counter(
    "recsvc_http_requests_total", "HTTP requests answered", ["method", "route", "status"]
)
LATENCY = Histogram(
    "recsvc_http_request_duration_seconds",
    "Time to answer an HTTP request",
    ["method", "route"],
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
)
EVENTS = Counter(
    "recsvc_events_total",
    "Events received, by type and outcome (accepted: stored; duplicate: a repeated event_id, "
    "skipped; rejected: in a batch refused with 422)",
    ["type", "outcome"],
)
RECOMMENDATIONS = Counter(
    "recsvc_recommendations_total", "Recommendation lists served", ["strategy"]
)
FOLD_INS = Counter(
    "recsvc_fold_ins_total", "Recommendations that folded in events newer than the model"
)
BATCH_SIZE = Histogram(
    "recsvc_scoring_batch_size",
    "Recommendation requests scored together in one matrix product",
    buckets=(1, 2, 4, 8, 16, 32, 64),
)
DEGRADED = Counter(
    "recsvc_degraded_recommendations_total",
    'Lists answered with "degraded": true: the database was unreachable, so the model in '
    "memory answered without the learner's newest events (or an older popular list did)",
)
ARTIFACT_LOAD_FAILURES = Counter(
    "recsvc_artifact_load_failures_total",
    "Activated model versions a worker refused to load (artifact missing or corrupt)",
)
MODEL_INFO = Gauge(
    "recsvc_model_info",
    "1 for the model version a live worker serves",
    ["version"],
    multiprocess_mode="livemax",
)
MODEL_AGE = Gauge(
    "recsvc_model_age_seconds",
    "Seconds since the active model version was trained",
    multiprocess_mode="livemostrecent",
)
MODEL_NDCG = Gauge(
    "recsvc_model_ndcg_at_10",
    "Offline ndcg@10 of the active model version on its holdout",
    multiprocess_mode="livemostrecent",
)
FRESH_USERS = Gauge(
    "recsvc_fresh_users",
    "Users with events newer than the served model (the fresh-users set of freshness.py)",
    multiprocess_mode="livemax",
)
TRAINING_JOBS = Gauge(
    "recsvc_training_jobs",
    "Training jobs recorded in the database, by state (queued, running, succeeded, failed)",
    ["state"],
    multiprocess_mode="livemostrecent",
)
TRAINING_LAST_DURATION = Gauge(
    "recsvc_training_last_duration_seconds",
    "How long the most recently finished training job ran (its outcome: recsvc_training_jobs)",
    multiprocess_mode="livemostrecent",
)
DB_CONNECTIONS_IN_USE = Gauge(
    "recsvc_db_pool_connections_in_use",
    "Database connections checked out of the pools, summed over the live workers",
    ["pool"],
    multiprocess_mode="livesum",
)
DATABASE_UP = Gauge(
    "recsvc_database_up",
    "1 when the last readiness check or model poll reached the database",
    multiprocess_mode="livemostrecent",
)

# Methods outside this set are counted as "other": a client cannot grow the label set.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def observe_request(method: str, route: str, status: int, seconds: float) -> None:
    """Count one answered HTTP request (route: the template, never the raw path)."""
    count, latency = _request_children(method if method in _METHODS else "other", route, status)
    count.inc()
    latency.observe(seconds)


@functools.cache
def _request_children(method: str, route: str, status: int) -> tuple[Counter, Histogram]:
    # labels() locks and builds keys on every call; the children never change, so look them up
    # once per (method, route, status): a bounded set, as routes are templates.
    return REQUESTS.labels(method, route, str(status)), LATENCY.labels(method, route)


_served_version: str | None = None


def serving_version(version: str) -> None:
    """This worker now serves `version` (recsvc_model_info)."""
    global _served_version
    if _served_version is not None and _served_version != version:
        MODEL_INFO.labels(_served_version).set(0)
    MODEL_INFO.labels(version).set(1)
    _served_version = version


def publish_deployment(deployment: Deployment) -> None:
    """The gauges read from the database at scrape time (registry.deployment)."""
    if deployment.model_age_seconds is not None:
        MODEL_AGE.set(deployment.model_age_seconds)
    if deployment.model_ndcg is not None:
        MODEL_NDCG.set(deployment.model_ndcg)
    for state, count in deployment.jobs.items():
        TRAINING_JOBS.labels(state).set(count)
    if deployment.last_job_seconds is not None:
        TRAINING_LAST_DURATION.set(deployment.last_job_seconds)
    DATABASE_UP.set(1)


_LIVE_FILE = re.compile(r"^gauge_live\w*?_(\d+)\.db$")


def _mark_dead_workers(directory: str) -> None:
    """Drop the live gauges of workers that exited (killed ones never say so themselves)."""
    for name in os.listdir(directory):
        match = _LIVE_FILE.match(name)
        if match and not _alive(int(match.group(1))):
            _multiprocess.mark_process_dead(int(match.group(1)), directory)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def worker_exiting() -> None:
    """Called by a worker on a clean shutdown: its live gauges stop counting at once."""
    directory = os.environ.get(MULTIPROC_ENV)
    if directory:
        _multiprocess.mark_process_dead(os.getpid(), directory)


def render() -> tuple[bytes, str]:
    """The scrape: every worker's values when PROMETHEUS_MULTIPROC_DIR is set, else ours."""
    directory = os.environ.get(MULTIPROC_ENV)
    if not directory:
        return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
    _mark_dead_workers(directory)
    registry = CollectorRegistry()
    _multiprocess.MultiProcessCollector(registry, path=directory)
    return generate_latest(registry), CONTENT_TYPE_LATEST
