"""Activation (issue 8): one active version, enforced by the schema, and concurrent activations
that neither deadlock nor fail; artifacts found under each process's own models directory."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.pool import NullPool

from conftest import OPS, READ, ServerThread, scalar
from recsvc import artifact, db, pipeline, registry
from recsvc.app import create_app
from recsvc.config import Settings
from test_models import load_demo


async def _train(settings: Settings, *, force: bool = True) -> pipeline.TrainingOutcome:
    engine = db.make_engine(settings.database_url, poolclass=NullPool)
    try:
        return await pipeline.run_training(settings, db.make_sessionmaker(engine), force=force)
    finally:
        await engine.dispose()


async def _record_copy(settings: Settings, version: str) -> str:
    """A second, genuine version: the trained model saved again under a new version name and
    recorded as inactive (much faster than training twice)."""
    model = artifact.load(settings.models_dir / version)
    copy = dataclasses.replace(model, version=artifact.new_version())
    path = artifact.save(copy, settings.models_dir)
    engine = db.make_engine(settings.database_url, poolclass=NullPool)
    try:
        async with db.make_sessionmaker(engine)() as session, session.begin():
            await registry.record_version(
                session,
                version=copy.version,
                status="inactive",
                params=copy.params.to_dict(),
                metrics={},
                baseline_metrics={},
                n_users=copy.n_users,
                n_items=copy.n_items,
                n_events=copy.n_events,
                artifact_path=str(path),  # as releases before issue 8 recorded it
            )
    finally:
        await engine.dispose()
    return copy.version


@pytest.fixture
def two_versions(settings: Settings, tmp_path: Path) -> tuple[str, str]:
    load_demo(settings, tmp_path / "data", n_users=300, n_items=80)
    first = asyncio.run(_train(settings)).version
    second = asyncio.run(_record_copy(settings, first))
    return first, second


def _active_rows(database_url: str) -> list[str]:
    async def read() -> list[str]:
        engine = db.make_engine(database_url, poolclass=NullPool)
        try:
            async with engine.connect() as conn:
                rows = await conn.execute(
                    text("SELECT version FROM model_versions WHERE status = 'active'")
                )
                return [row[0] for row in rows]
        finally:
            await engine.dispose()

    return asyncio.run(read())


# --- 1. one active version ------------------------------------------------------------------


def test_concurrent_activations_all_succeed_and_leave_one_active(
    two_versions: tuple[str, str], server: ServerThread, database_url: str
) -> None:
    """Measured before the fix on PostgreSQL: 13 of 20 answered 500 ("deadlock detected")."""
    first, second = two_versions
    order = [first if i % 2 else second for i in range(20)]

    def activate(version: str) -> tuple[int, str]:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            response = http.post(f"/v1/models/{version}/activate", headers=OPS)
            return response.status_code, response.text

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(activate, order))
    assert [status for status, _ in answers] == [200] * 20, [
        body for status, body in answers if status != 200
    ]
    active = _active_rows(database_url)
    assert len(active) == 1 and active[0] in (first, second)
    with httpx.Client(base_url=server.url) as http:
        assert http.get("/v1/models/active", headers=READ).json()["version"] == active[0]


async def test_the_schema_refuses_a_second_active_version(
    settings: Settings, database_url: str
) -> None:
    engine = db.make_engine(database_url, poolclass=NullPool)
    try:
        async with db.make_sessionmaker(engine)() as session, session.begin():
            for version in ("v-a", "v-b"):
                await registry.record_version(
                    session,
                    version=version,
                    status="inactive",
                    params={},
                    metrics={},
                    baseline_metrics={},
                    n_users=0,
                    n_items=0,
                    n_events=0,
                    artifact_path=version,
                )
            await registry.activate(session, "v-a")
            await registry.activate(session, "v-b")  # moves the one active row
        with pytest.raises(IntegrityError):
            async with engine.begin() as conn:
                await conn.execute(text("UPDATE model_versions SET status = 'active'"))
        async with db.make_sessionmaker(engine)() as session:
            active = await registry.active_version(session)
            assert active is not None and active.version == "v-b"
    finally:
        await engine.dispose()
    assert (
        await scalar(database_url, "SELECT count(*) FROM model_versions WHERE status = 'active'")
        == 1
    )


# --- 2. artifact paths ----------------------------------------------------------------------


@pytest.fixture
def trained_elsewhere(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Settings, str]]:
    """A version trained by a process in another directory with RECSVC_MODELS_DIR=./models,
    whose folder was then moved (another machine mounts the volume at /srv/... instead)."""
    load_demo(settings, tmp_path / "data", n_users=300, n_items=80)
    trainer_dir = tmp_path / "trainer"
    trainer_dir.mkdir()
    monkeypatch.chdir(trainer_dir)
    version = asyncio.run(_train(settings.model_copy(update={"models_dir": Path("./models")})))
    version_name = version.version
    volume = tmp_path / "volume"
    volume.mkdir()
    shutil.move(trainer_dir / "models", volume / "models")
    replica_dir = tmp_path / "replica"
    replica_dir.mkdir()
    monkeypatch.chdir(replica_dir)
    assert not Path("models").exists()  # nothing at the trainer's relative path from here
    yield settings.model_copy(update={"models_dir": volume / "models"}), version_name


async def test_a_replica_with_another_models_dir_loads_the_active_version(
    trained_elsewhere: tuple[Settings, str],
) -> None:
    settings, version = trained_elsewhere
    where = (settings.models_dir / version).absolute()
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://recsvc") as client:
            ready = (await client.get("/readyz")).json()
            assert ready["model"] == version, ready
            assert ready["model_error"] is None
            active = (await client.get("/v1/models/active", headers=READ)).json()
            assert active["artifact_path"] == str(where)
            again = await client.post(f"/v1/models/{version}/activate", headers=OPS)
            assert again.status_code == 200, again.text
            assert again.json()["artifact_path"] == str(where)
            listed = (await client.get("/v1/models", headers=READ)).json()["versions"]
            assert [v["artifact_path"] for v in listed] == [str(where)]

    # the trainer and `recsvc evaluate` resolve it the same way
    engine = db.make_engine(settings.database_url, poolclass=NullPool)
    try:
        evaluated, _ = await pipeline.run_evaluation(settings, db.make_sessionmaker(engine))
    finally:
        await engine.dispose()
    assert evaluated == version
    retrained = await _train(settings)
    assert retrained.comparison is not None  # the active model was loaded to compare with


async def test_rows_of_older_releases_with_a_path_still_resolve(
    trained_elsewhere: tuple[Settings, str], database_url: str
) -> None:
    settings, version = trained_elsewhere
    engine = db.make_engine(database_url, poolclass=NullPool)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                text("UPDATE model_versions SET artifact_path = :old"),
                {"old": f"/mnt/old-volume/models/{version}"},
            )
    finally:
        await engine.dispose()
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        assert app.state.serving.version == version
        assert app.state.serving.load_error is None


def test_artifact_dir_keeps_only_the_folder_name(tmp_path: Path) -> None:
    expected = tmp_path / "v1"
    for stored in ("v1", "./models/v1", "/data/models/v1", "models/v1/", "C:\\models\\v1"):
        assert registry.artifact_dir(tmp_path, stored) == expected
    assert registry.artifact_dir(Path("rel"), "v1") == Path(os.getcwd()) / "rel" / "v1"
