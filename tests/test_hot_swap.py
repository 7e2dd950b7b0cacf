"""Activation under load: `recsvc serve --workers 2` switches versions without a failed request,
and every worker serves the new version within 5 seconds."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import KEYS, OPS, READ, activate_behind_the_api, free_port
from recsvc import artifact, cli
from recsvc.config import Settings, get_settings
from test_models import load_demo


def train_version(settings: Settings, monkeypatch: pytest.MonkeyPatch, force: bool) -> None:
    monkeypatch.setenv("RECSVC_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("RECSVC_MODELS_DIR", str(settings.models_dir))
    get_settings.cache_clear()
    try:
        assert cli.main(["train", "--force"] if force else ["train"]) == 0
    finally:
        get_settings.cache_clear()


@pytest.fixture
def two_workers(settings: Settings) -> Iterator[str]:
    port = free_port()
    env = {
        **os.environ,
        "RECSVC_DATABASE_URL": settings.database_url,
        "RECSVC_MODELS_DIR": str(settings.models_dir),
        "RECSVC_API_KEYS": json.dumps(KEYS),
    }
    command = [sys.executable, "-m", "recsvc", "serve", "--port", str(port), "--workers", "2"]
    with subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL) as proc:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                ready = httpx.get(f"{base}/readyz", timeout=2).json()
                if ready["model"] != "none_trained":
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "server did not start"
            time.sleep(0.2)
        try:
            yield base
        finally:
            proc.terminate()
            proc.wait(30)


@pytest.fixture
def versions(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[str, str]:
    """Two trained versions; the older one is active when the server starts."""
    load_demo(settings, tmp_path / "data", n_users=600, n_items=120)
    train_version(settings, monkeypatch, force=False)
    train_version(settings, monkeypatch, force=True)
    older, newer = sorted(p.name for p in settings.models_dir.iterdir() if p.is_dir())

    asyncio.run(activate_behind_the_api(settings.database_url, older))
    return older, newer


def test_activation_under_load(versions: tuple[str, str], two_workers: str) -> None:
    older, newer = versions
    seen: list[tuple[float, int, str | None]] = []

    async def load(stop_at: float, client: httpx.AsyncClient, worker: int) -> None:
        i = worker
        while time.monotonic() < stop_at:
            user = f"u{(i % 600) + 1:05d}"
            i += 8
            response = await client.get(f"/v1/users/{user}/recommendations?n=5", headers=READ)
            version = response.json().get("model_version") if response.status_code == 200 else None
            seen.append((time.monotonic(), response.status_code, version))

    async def scenario() -> float:
        async with httpx.AsyncClient(base_url=two_workers, timeout=30) as client:
            stop_at = time.monotonic() + 9.0
            loaders = [asyncio.create_task(load(stop_at, client, w)) for w in range(8)]
            await asyncio.sleep(2.0)
            activated_at = time.monotonic()
            switch = await client.post(f"/v1/models/{newer}/activate", headers=OPS)
            assert switch.status_code == 200
            await asyncio.gather(*loaders)
            return activated_at

    activated_at = asyncio.run(scenario())
    assert len(seen) > 100
    assert {status for _, status, _ in seen} == {200}, "no request may fail"
    before = {version for at, _, version in seen if at < activated_at}
    settled = {version for at, _, version in seen if at > activated_at + 5.0}
    assert before == {older}
    assert settled == {newer}, "every worker serves the new version within 5 s"


def test_pruning_the_version_the_workers_serve(
    versions: tuple[str, str], two_workers: str, settings: Settings
) -> None:
    """The workers map the active version's files; deleting its folder (a prune, or an operator
    cleaning up) unlinks them, and the workers keep answering from their mappings."""
    older, newer = versions
    answers: list[tuple[str, int]] = []

    async def load(stop_at: float, client: httpx.AsyncClient, worker: int) -> None:
        i = worker
        while time.monotonic() < stop_at:
            user, item = f"u{(i % 600) + 1:05d}", f"c{(i % 120) + 1:04d}"
            i += 4
            for kind, path in (
                ("recommendations", f"/v1/users/{user}/recommendations?n=5&explain=true"),
                ("similar", f"/v1/items/{item}/similar?n=3"),
                ("audience", f"/v1/items/{item}/audience?n=5"),
            ):
                response = await client.get(path, headers=READ)
                answers.append((kind, response.status_code))
                if kind == "recommendations" and response.status_code == 200:
                    assert response.json()["model_version"] == older

    async def scenario() -> None:
        async with httpx.AsyncClient(base_url=two_workers, timeout=30) as client:
            stop_at = time.monotonic() + 6.0
            loaders = [asyncio.create_task(load(stop_at, client, w)) for w in range(4)]
            await asyncio.sleep(1.5)
            assert artifact.prune(settings.models_dir, keep=[newer]) == [older]
            await asyncio.gather(*loaders)

    asyncio.run(scenario())
    assert not (settings.models_dir / older).exists()
    assert len(answers) > 60
    assert {status for kind, status in answers if kind == "recommendations"} == {200}
    # An item the model does not know is a 404; nothing may fail.
    assert all(status in (200, 404) for _, status in answers)
    assert sum(status == 200 for kind, status in answers if kind != "recommendations") > 20
