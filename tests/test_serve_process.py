"""`recsvc serve` as operators run it, in its own process: metrics summed over its workers, one
JSON access line per request, and a graceful SIGTERM under load."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import free_port

pytestmark = pytest.mark.slow

KEY = "k-process-test-key"
HEADERS = {"X-API-Key": KEY}


@dataclass
class Served:
    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def log_records(self) -> list[dict[str, object]]:
        """Every line the server wrote to stderr, each parsed as one JSON object."""
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]


@contextmanager
def recsvc_serve(database_url: str, tmp: Path, workers: int) -> Iterator[Served]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RECSVC_", "PROMETHEUS_"))}
    env |= {
        "RECSVC_DATABASE_URL": database_url,
        "RECSVC_API_KEYS": json.dumps({KEY: ["admin", "read", "ingest"]}),
        "RECSVC_MODELS_DIR": str(tmp / "models"),
        "OPENBLAS_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
    }
    log = tmp / f"serve-{port}.log"
    command = [sys.executable, "-m", "recsvc", "serve", "--port", str(port)]
    with log.open("wb") as err:
        process = subprocess.Popen(  # noqa: S603
            [*command, "--workers", str(workers)], env=env, stderr=err
        )
    served = Served(process, f"http://127.0.0.1:{port}", log)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"{served.url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"recsvc serve did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield served
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(20)


@pytest.fixture(scope="module")
def two_workers(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with recsvc_serve(database_url, tmp_path_factory.mktemp("serve"), workers=2) as served:
        yield served


def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = httpx.get(f"{url}/metrics", headers={"Connection": "close"})
    assert response.status_code == 200
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def test_every_scrape_counts_the_requests_of_every_worker(two_workers: Served) -> None:
    popular = frozenset({"method": "GET", "route": "/v1/popular", "status": "200"}.items())
    before = scrape(two_workers.url).get(("recsvc_http_requests_total", popular), 0.0)
    for _ in range(200):  # each on a new connection, so both workers answer some
        response = httpx.get(
            f"{two_workers.url}/v1/popular", headers={**HEADERS, "Connection": "close"}
        )
        assert response.status_code == 200
    counted = [
        scrape(two_workers.url)[("recsvc_http_requests_total", popular)] - before for _ in range(6)
    ]
    assert counted == [200.0] * 6
    # the requests were shared: both workers served some (each logs its own pid)
    pids = {r["pid"] for r in two_workers.log_records() if r.get("route") == "/v1/popular"}
    assert len(pids) == 2


def test_the_access_line_of_a_request(two_workers: Served) -> None:
    rid = f"acceptance-{uuid.uuid4()}"
    response = httpx.get(
        f"{two_workers.url}/v1/users/u42/recommendations?n=3",
        headers={**HEADERS, "X-Request-ID": rid},
    )
    assert response.status_code == 200 and response.headers["X-Request-ID"] == rid
    missing = httpx.get(f"{two_workers.url}/v1/items/none", headers=HEADERS)
    assert missing.status_code == 404
    time.sleep(0.3)  # the line is written after the response went out

    records = two_workers.log_records()  # every line parses as JSON
    assert KEY not in two_workers.log.read_text()
    (line,) = [r for r in records if r.get("request_id") == rid]
    assert line["route"] == "/v1/users/{user_id}/recommendations"
    assert line["status"] == 200 and float(line["duration_ms"]) > 0  # type: ignore[arg-type]
    assert line["strategy"] == response.json()["strategy"] and str(line["key"]).startswith("k:")
    (error,) = [r for r in records if r.get("request_id") == missing.headers["X-Request-ID"]]
    assert error["route"] == "/v1/items/{item_id}" and error["status"] == 404
    assert not [r for r in records if r.get("logger") == "uvicorn.access"]


@dataclass
class Call:
    request_id: str
    sent: float
    done: float | None = None
    status: int | None = None
    error: str | None = None


def test_sigterm_under_load_finishes_what_it_accepted(database_url: str, tmp_path: Path) -> None:
    calls: list[Call] = []
    lock = threading.Lock()
    stop = threading.Event()

    def load(worker: int, url: str) -> None:
        with httpx.Client(base_url=url, headers=HEADERS, timeout=15) as client:
            n = 0
            while not stop.is_set():
                call = Call(f"w{worker}-{n}", time.monotonic())
                with lock:
                    calls.append(call)
                try:
                    response = client.get(
                        f"/v1/users/u{worker}-{n}/recommendations",
                        headers={"X-Request-ID": call.request_id},
                    )
                    call.status = response.status_code
                except httpx.HTTPError as exc:
                    call.error = type(exc).__name__
                    return  # the server is going away
                finally:
                    call.done = time.monotonic()
                n += 1

    with recsvc_serve(database_url, tmp_path, workers=2) as served:
        threads = [threading.Thread(target=load, args=(i, served.url)) for i in range(8)]
        for thread in threads:
            thread.start()
        time.sleep(2)
        signalled = time.monotonic()
        served.process.send_signal(signal.SIGTERM)
        code = served.process.wait(timeout=10)
        exited = time.monotonic() - signalled
        stop.set()
        for thread in threads:
            thread.join(15)

    assert code == 0 and exited < 10
    answered = {
        r["request_id"]: r["status"]
        for r in served.log_records()
        if r.get("route") == "/v1/users/{user_id}/recommendations"
    }
    by_id = {call.request_id: call for call in calls}
    assert len(answered) > 50  # there was load
    # every request the server took in was answered in full, with its status
    for request_id, status in answered.items():
        call = by_id[request_id]
        assert call.error is None and call.status == status == 200, call
    # requests that failed never reached the application: refused or closed before being read
    failed = [call for call in calls if call.error is not None]
    assert all(call.request_id not in answered for call in failed)
    connection_errors = {"ConnectError", "RemoteProtocolError", "ReadError", "WriteError"}
    assert {call.error for call in failed} <= connection_errors
    # some were in flight when the signal came, and completed after it
    assert any(call.sent < signalled < (call.done or 0) and call.status == 200 for call in calls)
