"""Model lifecycle: train (CLI and API), metrics, determinism, activation, rollback, failures."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from conftest import OPS, READ, scalar
from recsvc import artifact, cli, db, jobs
from recsvc.bulk import run_import
from recsvc.config import Settings, get_settings
from recsvc.demo_data import DemoData, generate, write_jsonl
from recsvc.schemas import ValidationRules


def load_demo(
    settings: Settings, directory: Path, data: DemoData | None = None, **sizes: int
) -> None:
    """A small slice of the bundled demo data set (or `data`), through `recsvc import`'s code
    path."""
    files = write_jsonl(data if data is not None else generate(**sizes), directory)

    async def load() -> None:
        engine = db.make_engine(settings.database_url)
        try:
            sessionmaker = db.make_sessionmaker(engine)
            rules = ValidationRules.from_settings(settings)
            for kind in ("items", "users", "events"):
                report = await run_import(
                    kind, str(files[kind]), sessionmaker, rules, progress=False
                )
                assert not report.rejected
        finally:
            await engine.dispose()

    asyncio.run(load())


@pytest.fixture
def demo(settings: Settings, tmp_path: Path) -> Settings:
    load_demo(settings, tmp_path / "data", n_users=800, n_items=150)
    return settings


@pytest.fixture
def recsvc_env(demo: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """The CLI reads RECSVC_* from the environment."""
    monkeypatch.setenv("RECSVC_DATABASE_URL", demo.database_url)
    monkeypatch.setenv("RECSVC_MODELS_DIR", str(demo.models_dir))
    get_settings.cache_clear()
    yield demo
    get_settings.cache_clear()


def metrics_row(output: str, label: str) -> list[float]:
    line = next(line for line in output.splitlines() if line.startswith(label))
    return [float(value) for value in line.split()[-5:]]


def test_train_prints_metrics_and_beats_popularity(
    recsvc_env: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["train"]) == 0
    out = capsys.readouterr().out
    als, popularity = metrics_row(out, "als"), metrics_row(out, "popularity")
    assert als[0] >= 1.5 * popularity[0], out  # ndcg@10
    assert "activated" in out
    versions = artifact.list_versions(recsvc_env.models_dir)
    assert len(versions) == 1
    manifest = artifact.read_manifest(recsvc_env.models_dir / versions[0])
    assert manifest["metrics"]["ndcg@10"] == pytest.approx(als[0], abs=1e-4)


def test_two_forced_runs_give_identical_metrics(
    recsvc_env: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["train", "--force"]) == 0
    first = capsys.readouterr().out
    assert cli.main(["train", "--force"]) == 0
    second = capsys.readouterr().out
    for label in ("als", "popularity"):
        assert metrics_row(first, label) == metrics_row(second, label)
    # the retrain compared itself with the first model on each one's own holdout
    assert "candidate vs active" in second


def test_evaluate_scores_the_active_model(
    recsvc_env: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["evaluate"]) == 1
    assert "no model is active" in capsys.readouterr().err
    assert cli.main(["train"]) == 0
    capsys.readouterr()
    assert cli.main(["evaluate"]) == 0
    out = capsys.readouterr().out
    active, popularity = metrics_row(out, "active"), metrics_row(out, "popularity")
    assert active[0] > popularity[0]


def test_train_with_no_events_fails_clearly(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RECSVC_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("RECSVC_MODELS_DIR", str(settings.models_dir))
    get_settings.cache_clear()
    try:
        assert cli.main(["train"]) == 1
    finally:
        get_settings.cache_clear()
    assert "no events to train on" in capsys.readouterr().err


async def wait_for_job(client: httpx.AsyncClient, job_id: str) -> dict[str, object]:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        job = (await client.get(f"/v1/models/jobs/{job_id}", headers=READ)).json()
        if job["state"] in ("succeeded", "failed"):
            return job
        await asyncio.sleep(0.1)
    raise AssertionError("the training job did not finish")


async def test_train_over_http_then_roll_back(demo: Settings, client: httpx.AsyncClient) -> None:
    assert (await client.get("/v1/models/active", headers=READ)).status_code == 404
    assert (await client.post("/v1/models/train", headers=READ)).status_code == 403

    started = await client.post("/v1/models/train", headers=OPS)
    assert started.status_code == 202
    job_id = started.json()["job_id"]
    busy = await client.post("/v1/models/train", headers=OPS)
    assert busy.status_code == 409  # one job at a time
    first = await wait_for_job(client, job_id)
    assert first["state"] == "succeeded", first
    assert first["version"]

    second = await client.post("/v1/models/train", json={"force": True}, headers=OPS)
    assert second.status_code == 202
    second_job = await wait_for_job(client, second.json()["job_id"])
    assert second_job["state"] == "succeeded"

    listed = (await client.get("/v1/models", headers=READ)).json()["versions"]
    assert [v["version"] for v in listed] == [second_job["version"], first["version"]]
    newest = listed[0]
    assert newest["status"] == "active"
    assert newest["n_events"] > 10_000
    plain = {"ndcg@10", "precision@10", "recall@10", "map@10", "coverage"}
    # the demo catalog has course families: the lists are also measured as served
    served = {"family_ndcg@10", "item_ndcg@10", "distinct_families@10", "ild@10"}
    assert set(newest["metrics"]) == plain | served
    assert newest["baseline_metrics"]["ndcg@10"] < newest["metrics"]["ndcg@10"]
    assert newest["params"]["factors"] == 64

    rolled_back = await client.post(f"/v1/models/{first['version']}/activate", headers=OPS)
    assert rolled_back.status_code == 200
    active = (await client.get("/v1/models/active", headers=READ)).json()
    assert active["version"] == first["version"]
    assert active["status"] == "active"
    statuses = {
        v["version"]: v["status"]
        for v in (await client.get("/v1/models", headers=READ)).json()["versions"]
    }
    assert statuses == {first["version"]: "active", second_job["version"]: "inactive"}
    missing = await client.post("/v1/models/no-such-version/activate", headers=OPS)
    assert missing.status_code == 404


async def test_corrupt_artifact_is_refused(demo: Settings, client: httpx.AsyncClient) -> None:
    versions = []
    for body in ({}, {"force": True}):
        job = (await client.post("/v1/models/train", json=body, headers=OPS)).json()
        versions.append((await wait_for_job(client, job["job_id"]))["version"])
    older = demo.models_dir / versions[0]
    factors = older / "factors.user.npy"
    factors.write_bytes(factors.read_bytes()[:-100])  # truncated on disk
    refused = await client.post(f"/v1/models/{versions[0]}/activate", headers=OPS)
    assert refused.status_code == 409
    assert "cannot be activated" in refused.json()["detail"]
    active = (await client.get("/v1/models/active", headers=READ)).json()
    assert active["version"] == versions[1]


async def test_failed_job_reports_its_error(settings: Settings, client: httpx.AsyncClient) -> None:
    started = await client.post("/v1/models/train", headers=OPS)
    job = await wait_for_job(client, started.json()["job_id"])
    assert job["state"] == "failed"
    assert "no events to train on" in str(job["error"])
    assert job["finished_at"] is not None
    # the slot is free again
    assert (await client.post("/v1/models/train", headers=OPS)).status_code == 202


def test_killed_training_leaves_no_version_and_the_active_model(
    demo: Settings, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "RECSVC_DATABASE_URL": demo.database_url,
        "RECSVC_MODELS_DIR": str(demo.models_dir),
        "RECSVC_JOB_STALE_SECONDS": "2",
    }
    first = subprocess.run(
        [sys.executable, "-m", "recsvc", "train"], env=env, capture_output=True, text=True
    )
    assert first.returncode == 0, first.stderr
    active = artifact.list_versions(demo.models_dir)
    assert len(active) == 1

    # Slow enough to be killed in the middle of the fit.
    slow = {**env, "RECSVC_ALS_ITERATIONS": "200", "RECSVC_ALS_FACTORS": "1024"}
    running = "SELECT count(*) FROM training_jobs WHERE state = 'running'"
    with subprocess.Popen([sys.executable, "-m", "recsvc", "train", "--force"], env=slow) as proc:
        deadline = time.monotonic() + 60
        while asyncio.run(scalar(demo.database_url, running)) == 0:
            assert proc.poll() is None and time.monotonic() < deadline, "training never started"
            time.sleep(0.1)
        time.sleep(2.0)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL  # killed mid-training, not finished

    assert artifact.list_versions(demo.models_dir) == active
    rows = asyncio.run(scalar(demo.database_url, "SELECT count(*) FROM model_versions"))
    assert rows == 1
    active_row = asyncio.run(
        scalar(demo.database_url, "SELECT version FROM model_versions WHERE status = 'active'")
    )
    assert active_row == active[0]

    # The dead job stops blocking once its heartbeat is stale, and says what happened.
    time.sleep(2.5)
    again = subprocess.run(
        [sys.executable, "-m", "recsvc", "train"], env=env, capture_output=True, text=True
    )
    assert again.returncode == 0, again.stderr
    error = asyncio.run(
        scalar(demo.database_url, "SELECT error FROM training_jobs WHERE state = 'failed'")
    )
    assert "stopped without finishing" in error
    assert json.loads(
        (
            demo.models_dir / artifact.list_versions(demo.models_dir)[-1] / "manifest.json"
        ).read_text()
    )["version"]


def test_tune_saves_the_best_parameters_for_training(
    recsvc_env: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["tune", "--budget", "2"]) == 0
    out = capsys.readouterr().out
    assert "best of" in out
    tuned = json.loads((recsvc_env.models_dir / "tuned_params.json").read_text())
    rows = [line for line in out.splitlines() if line.startswith(("log1p", "bm25"))]
    assert len(rows) == tuned["trials"] >= 1
    best = rows[0].split()
    assert float(best[4]) == pytest.approx(tuned["metrics"]["ndcg@10"], abs=1e-4)
    assert [float(line.split()[4]) for line in rows] == sorted(
        (float(line.split()[4]) for line in rows), reverse=True
    )

    def train_params() -> dict[str, object]:
        """Train, and return the parameters of the version it wrote."""
        before = set(artifact.list_versions(recsvc_env.models_dir))
        assert cli.main(["train", "--force"]) == 0
        (version,) = set(artifact.list_versions(recsvc_env.models_dir)) - before
        return artifact.read_manifest(recsvc_env.models_dir / version)["params"]

    params = train_params()
    for name, value in tuned["params"].items():
        assert params[name] == value

    # an explicit setting still wins over the tuned value
    monkeypatch.setenv("RECSVC_ALS_FACTORS", "7")
    get_settings.cache_clear()
    assert train_params()["factors"] == 7


async def test_scheduled_training_and_pruning(
    demo: Settings, app: FastAPI, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The schedule trains by itself; versions beyond keep_versions leave disk and the list."""
    app.state.settings = demo.model_copy(update={"keep_versions": 1})
    run_job, finished, trained_twice = jobs.pipeline.run_job, [], asyncio.Event()

    async def run_then_hold(*args: object, **kwargs: object) -> object:
        outcome = await run_job(*args, **kwargs)  # type: ignore[arg-type]
        finished.append(outcome)
        if len(finished) == 2:  # hold the schedule between jobs: it is stopped there
            trained_twice.set()
            await asyncio.Event().wait()
        return outcome

    monkeypatch.setattr(jobs.pipeline, "run_job", run_then_hold)
    schedule = asyncio.create_task(jobs.schedule(app, 0.05))
    try:
        await asyncio.wait_for(trained_twice.wait(), 120)
    finally:
        schedule.cancel()
        await asyncio.gather(schedule, return_exceptions=True)
    listed = (await client.get("/v1/models", headers=READ)).json()["versions"]
    on_disk = set(artifact.list_versions(demo.models_dir))
    active = (await client.get("/v1/models/active", headers=READ)).json()["version"]
    assert active in on_disk
    assert len(on_disk) <= 2  # the newest one, and the active one if that is another
    assert {v["version"] for v in listed} == on_disk
