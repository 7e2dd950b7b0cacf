"""A database outage answers 503 with Retry-After, and the service recovers by itself.

The outage is real at the network level: the service reaches PostgreSQL through a TCP relay that
the test cuts (closing every open connection and refusing new ones) and restores, so the shared
PostgreSQL server keeps running for everything else.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import make_url

from conftest import INGEST, READ, ServerThread, events, free_port
from recsvc.config import Settings
from test_activation import _train
from test_models import load_demo


class TcpRelay:
    """127.0.0.1:<port> -> target, in its own thread; `cut()` and `restore()` it at will."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server: asyncio.base_events.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self.writers |= {writer, up_writer}
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    async def _start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def _stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.writers:
            writer.transport.abort()
        self.writers.clear()
        await self.server.wait_closed()

    def restore(self) -> None:
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(5)

    def cut(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(5)

    def __enter__(self) -> TcpRelay:
        self.thread.start()
        self.restore()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.server is not None and self.server.is_serving():
            self.cut()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def relay(database_url: str, is_postgres: bool) -> Iterator[TcpRelay]:
    if not is_postgres:
        pytest.skip("the outage test needs PostgreSQL (a network database)")
    url = make_url(database_url)
    with TcpRelay(url.host or "127.0.0.1", url.port or 5432) as running:
        yield running


def _through(settings: Settings, relay: TcpRelay) -> Settings:
    url = make_url(settings.database_url).set(host="127.0.0.1", port=relay.port)
    return settings.model_copy(update={"database_url": url.render_as_string(hide_password=False)})


def test_outage_gives_503_and_recovers(settings: Settings, relay: TcpRelay) -> None:
    with (
        ServerThread(_through(settings, relay)) as server,
        httpx.Client(base_url=server.url, timeout=30) as http,
    ):
        assert http.get("/readyz").status_code == 200
        ok = http.post("/v1/events", json={"events": events(10)}, headers=INGEST)
        assert ok.status_code == 202

        relay.cut()
        ready = http.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["database"] == "unreachable"
        assert int(ready.headers["Retry-After"]) > 0
        write = http.post("/v1/events", json={"events": events(10, prefix="b")}, headers=INGEST)
        assert write.status_code == 503
        assert write.headers["content-type"] == "application/problem+json"
        assert int(write.headers["Retry-After"]) > 0
        assert "Traceback" not in write.text
        assert http.get("/healthz").status_code == 200  # alive, just not ready

        relay.restore()
        deadline = time.monotonic() + 15
        while http.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "did not recover within 15 s"
            time.sleep(0.2)
        again = http.post("/v1/events", json={"events": events(10, prefix="b")}, headers=INGEST)
        assert again.status_code == 202
        assert again.json() == {"accepted": 10, "duplicates": 0}


def test_recommendations_during_an_outage_are_answered_and_marked_degraded(
    settings: Settings, relay: TcpRelay, tmp_path: Path
) -> None:
    """With the database cut off, every recommendation route still answers 200 from the model
    in memory; answers that could not read the learner's newest events say `degraded: true`.
    After the database returns, nothing is degraded any more, without a restart."""
    load_demo(settings, tmp_path / "data", n_users=300, n_items=80)
    outcome = asyncio.run(_train(settings))
    through = _through(settings, relay)
    with (
        ServerThread(through) as server,
        httpx.Client(base_url=server.url, timeout=30, headers=READ) as http,
    ):
        deadline = time.monotonic() + 15
        while http.get("/readyz").json()["model"] != outcome.version:
            assert time.monotonic() < deadline, "the model was not loaded"
            time.sleep(0.2)

        def calls() -> dict[str, httpx.Response]:
            return {
                "trained": http.get("/v1/users/u00001/recommendations?n=5"),
                "unknown": http.get("/v1/users/nobody-known/recommendations?n=5"),
                "post": http.post(
                    "/v1/recommendations",
                    json={"user_id": "u00002", "session_items": ["c0001", "c0002"], "n": 5},
                ),
                "similar": http.get("/v1/items/c0001/similar?n=5"),
                "popular": http.get("/v1/popular?n=5"),
                "popular_week": http.get("/v1/popular?n=5&window_days=7"),
            }

        before = calls()
        assert {name: r.status_code for name, r in before.items()} == dict.fromkeys(before, 200)
        assert not any(r.json()["degraded"] for r in before.values())

        relay.cut()
        # The worker learns of the cut when its new-events listener's connection drops (a
        # moment later): from then on every learner may have unread events.
        time.sleep(0.5)
        during = calls()
        assert {name: r.status_code for name, r in during.items()} == dict.fromkeys(during, 200)
        degraded = {name: r.json()["degraded"] for name, r in during.items()}
        # Three had to read the learner's newest events; similar and the model's popular list
        # never read the database; the week's list is the one counted before the cut.
        assert degraded == {
            "trained": True,
            "unknown": True,
            "post": True,
            "similar": False,
            "popular": False,
            "popular_week": False,
        }
        assert during["trained"].json()["items"] and during["post"].json()["items"]
        assert during["trained"].json()["model_version"] == outcome.version
        # a window never counted: the model's list answers, marked
        other = http.get("/v1/popular?n=5&window_days=3")
        assert other.status_code == 200 and other.json()["degraded"] is True
        metrics = http.get("/metrics").text
        assert "recsvc_degraded_recommendations_total 4.0" in metrics

        relay.restore()
        deadline = time.monotonic() + 15
        while http.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "did not recover within 15 s"
            time.sleep(0.2)
        after = calls()
        assert {name: r.status_code for name, r in after.items()} == dict.fromkeys(after, 200)
        assert not any(r.json()["degraded"] for r in after.values())
