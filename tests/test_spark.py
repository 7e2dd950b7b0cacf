"""The Apache Spark engine (`recsvc train --engine spark`), in Spark local mode on small data:
its weights equal features.py's, erased learners stay out, and a version it trains goes
through the same registry, guard and activation, and a running server hot-swaps to it.

Needs pyspark (the extra recsvc[spark]) and Java 17: skipped without them, except in CI
(CI=true), where their absence fails the run.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from conftest import INGEST, OPS, READ, ServerThread, rows
from recsvc import cli, db, export_files, pipeline
from recsvc.config import Settings, get_settings
from recsvc.demo_data import generate
from recsvc.features import EventColumns, FeatureConfig, build_interactions
from recsvc.training import is_not_worse, split_holdout
from test_export import run_export
from test_models import load_demo


def _spark_or_skip() -> Any:
    try:
        return pipeline.spark_engine_module()
    except pipeline.EngineUnavailable as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the Spark tests: {exc}")
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def engine() -> Any:
    return _spark_or_skip()


@pytest.fixture(scope="module")
def spark(engine: Any) -> Iterator[Any]:
    """One small local session for the module (later sessions reuse it)."""
    session = engine.session(
        "local[2]",
        shuffle_partitions=2,
        config={
            "spark.ui.enabled": "false",
            "spark.default.parallelism": "2",
            "spark.driver.memory": "1g",
        },
    )
    yield session
    session.stop()


# --- weights -------------------------------------------------------------------------------------


def demo_export(directory: Path, seed: int = 3) -> EventColumns:
    """The demo events written as an export (run 1) and as features.py's columns."""
    data = generate(seed=seed, n_users=300, n_items=80)
    events = [*data.events]
    # an unknown type (ignored by both) and a rating without a value
    events.append({**events[0], "event_id": "odd", "type": "unknown-type"})
    events.append({**events[1], "event_id": "novalue", "type": "rate", "value": None})
    stamps = np.array(
        [np.datetime64(e["timestamp"].replace("Z", ""), "us").astype(np.int64) for e in events]
    )
    seconds = stamps / 1e6
    table = export_files.events_table(
        range(1, len(events) + 1),
        [e["event_id"] for e in events],
        [e["user_id"] for e in events],
        [e["item_id"] for e in events],
        [e["type"] for e in events],
        [e["value"] for e in events],
        seconds,
        seconds,
        run=1,
    )
    files = export_files.write_events(directory, 1, 0, table)
    export_files.write_manifest(
        directory,
        {
            "format": export_files.FORMAT,
            "dialect": "sqlite",
            "runs": [{"run": 1, "cutoff": {"max_id": len(events)}, "files": files}],
        },
    )
    return EventColumns.from_lists(
        [e["user_id"] for e in events],
        [e["item_id"] for e in events],
        [e["type"] for e in events],
        seconds.tolist(),
        [e["value"] for e in events],
    )


CONFIGS = {
    "defaults": FeatureConfig(),
    "decay, negatives, minimums": FeatureConfig(
        half_life_days=30.0,
        weight_cap=6.0,
        rating_negative_below=3.0,
        min_user_interactions=3,
        min_item_interactions=2,
        popularity_window_days=20.0,
    ),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_spark_weights_equal_features(engine: Any, spark: Any, tmp_path: Path, name: str) -> None:
    config = CONFIGS[name]
    columns = demo_export(tmp_path)
    expected = build_interactions(columns, config)
    consumed = ("enroll", "purchase", "complete", "rate", "review")
    prepared = engine.prepare(spark, tmp_path, config, consumed_types=consumed, max_eval_users=None)
    got = prepared.interactions

    assert got.users == expected.users and got.items == expected.items
    for matrix in ("weights", "last_seen", "negatives"):
        a, b = getattr(got, matrix), getattr(expected, matrix)
        assert np.array_equal(a.indptr, b.indptr) and np.array_equal(a.indices, b.indices), matrix
    np.testing.assert_allclose(got.weights.data, expected.weights.data, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got.last_seen.data, expected.last_seen.data, rtol=0, atol=1e-6)
    assert np.array_equal(got.popularity, expected.popularity)
    assert np.array_equal(got.recent_popularity, expected.recent_popularity)
    assert (got.consumed(consumed) != expected.consumed(consumed)).nnz == 0
    assert (got.n_events, got.n_ignored_events) == (expected.n_events, expected.n_ignored_events)
    assert got.now == pytest.approx(expected.now, abs=1e-6)

    # the holdout: the same rule as split_holdout (newest share per user)
    holdout = prepared.holdout
    reference = split_holdout(expected, 0.2, 42)
    assert np.array_equal(np.diff(holdout.test.indptr), np.diff(reference.test.indptr))
    assert ((holdout.train + holdout.test != 0) != (expected.weights != 0)).nnz == 0


def test_erased_learners_stay_out_of_training(engine: Any, spark: Any, tmp_path: Path) -> None:
    columns = demo_export(tmp_path)  # every learner is in the model without erasures (above)
    learners = list(dict.fromkeys(str(u) for u in columns.user_ids))[:3]
    in_database, in_log, returned = learners
    # logged by an export run after the one that holds the events: left out
    export_files.log_erased(tmp_path, {in_log: 1}, before_run=2, source="export")
    # seen by the run that exported the events: those came after the erasure, and stay
    export_files.log_erased(tmp_path, {returned: 5}, before_run=1, source="export")
    # erased in the database, not yet logged: every exported event is left out
    prepared = engine.prepare(spark, tmp_path, FeatureConfig(), erased={in_database: 3})
    users = prepared.interactions.users
    assert in_database not in users and in_log not in users and returned in users
    assert prepared.erased == {in_database: 2, in_log: 2, returned: 1}


def test_reg_param_mapping() -> None:
    engine = _spark_or_skip()
    # 30 / (2 * 1000 / (100 + 150)) = 3.75
    assert engine.mllib_reg_param(30.0, 1000, 100, 150) == pytest.approx(
        3.75 * engine.REG_CALIBRATION
    )


# --- through the service ----------------------------------------------------------------------


def train_spark(settings: Settings, directory: Path) -> pipeline.TrainingOutcome:
    async def go() -> pipeline.TrainingOutcome:
        engine = db.make_engine(settings.database_url)
        try:
            job = pipeline.SparkTraining(directory, master="local[2]")
            return await pipeline.run_training(settings, db.make_sessionmaker(engine), spark=job)
        finally:
            await engine.dispose()

    return asyncio.run(go())


def wait_for_version(base: str, version: str) -> None:
    deadline = time.monotonic() + 10
    while httpx.get(f"{base}/readyz", timeout=5).json().get("model") != version:
        assert time.monotonic() < deadline, "the server did not switch to the new version"
        time.sleep(0.1)


def test_a_spark_version_is_recorded_activated_and_served(
    engine: Any, spark: Any, settings: Settings, tmp_path: Path, database_url: str
) -> None:
    load_demo(settings, tmp_path / "data", n_users=300, n_items=80)
    # Fewer factors and sweeps than the defaults: the point is the path, not the quality.
    settings = settings.model_copy(update={"als_factors": 16, "als_iterations": 5})
    target = tmp_path / "export"
    run_export(settings, target)
    with ServerThread(settings) as server:
        first = train_spark(settings, target)
        # recorded with its metrics, activated through the guard (no active model yet)
        assert first.activated and first.comparison is None
        assert set(first.metrics) >= {"ndcg@10", "precision@10", "recall@10", "map@10"}
        assert first.metrics["ndcg@10"] > first.baseline_metrics["ndcg@10"] * 0.8
        versions = httpx.get(f"{server.url}/v1/models", headers=OPS, timeout=10).json()
        [recorded] = versions["versions"]
        assert recorded["version"] == first.version and recorded["status"] == "active"
        assert recorded["params"]["engine"] == "spark"
        assert recorded["metrics"]["ndcg@10"] == pytest.approx(first.metrics["ndcg@10"])

        # the running server hot-swaps to it and answers from it, fold-in included
        wait_for_version(server.url, first.version)
        user = "u00010"
        answer = httpx.get(
            f"{server.url}/v1/users/{user}/recommendations", headers=READ, timeout=10
        ).json()
        assert answer["strategy"] == "als" and answer["model_version"] == first.version
        shown = [item["item_id"] for item in answer["items"]]
        sent = httpx.post(
            f"{server.url}/v1/events",
            json={"events": [{"user_id": user, "item_id": i, "type": "enroll"} for i in shown[:3]]},
            headers=INGEST,
            timeout=10,
        )
        assert sent.status_code == 202
        folded = httpx.get(
            f"{server.url}/v1/users/{user}/recommendations", headers=READ, timeout=10
        ).json()
        assert folded["strategy"] == "als_foldin"
        assert not set(shown[:3]) & {item["item_id"] for item in folded["items"]}

        # the next export and training: the guard compares it with the active Spark version
        run_export(settings, target)
        second = train_spark(settings, target)
        assert second.comparison is not None
        assert second.activated == is_not_worse(second.comparison)
        statuses = dict(
            zip(
                asyncio.run(rows(database_url, "SELECT version FROM model_versions")),
                asyncio.run(rows(database_url, "SELECT status FROM model_versions")),
                strict=True,
            )
        )
        assert statuses[second.version] == ("active" if second.activated else "rejected")
        if second.activated:
            wait_for_version(server.url, second.version)


def test_spark_training_errors_are_one_line(
    settings: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("RECSVC_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("RECSVC_MODELS_DIR", str(settings.models_dir))
    get_settings.cache_clear()
    try:
        assert cli.main(["train", "--engine", "spark"]) == 1
        assert "needs --events DIR" in capsys.readouterr().err
        if shutil.which("java") or os.environ.get("JAVA_HOME"):
            try:
                pipeline.spark_engine_module()
            except pipeline.EngineUnavailable:
                pass
            else:
                assert cli.main(["train", "--engine", "spark", "--events", str(tmp_path)]) == 1
                err = capsys.readouterr().err.strip()
                assert err == (
                    f"recsvc train: {tmp_path} holds no events export: run "
                    f"`recsvc export events {tmp_path}` first"
                )
            monkeypatch.setenv("PATH", "/nonexistent")
            monkeypatch.delenv("JAVA_HOME", raising=False)
        assert cli.main(["train", "--engine", "spark", "--events", str(tmp_path)]) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("recsvc train: --engine spark needs ")
        assert "\n" not in err
    finally:
        get_settings.cache_clear()
