"""`recsvc export events DIR`: Parquet partitioned by day, incremental, and erasure reaching it
(the erased log, `--rewrite`). No Spark needed: the files are read back with pyarrow."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest

from conftest import INGEST, OPS, rows
from recsvc import cli, db, export, export_files
from recsvc.config import Settings, get_settings


def read_export(directory: Path) -> list[dict[str, object]]:
    """Every exported row, through the manifest's file list."""
    result: list[dict[str, object]] = []
    for path in export_files.event_files(directory):
        result += pq.read_table(path).to_pylist()
    return result


def run_export(settings: Settings, directory: Path) -> export.ExportReport:
    async def go() -> export.ExportReport:
        engine = db.make_engine(settings.database_url)
        try:
            return await export.export_events(db.make_sessionmaker(engine), directory)
        finally:
            await engine.dispose()

    return asyncio.run(go())


async def send(client: httpx.AsyncClient, *events: dict[str, object]) -> None:
    response = await client.post("/v1/events", json={"events": list(events)}, headers=INGEST)
    assert response.status_code == 202, response.text


def event(n: int, user: str, day: int, **extra: object) -> dict[str, object]:
    return {
        "event_id": f"x{n}",
        "user_id": user,
        "item_id": f"c{n % 7}",
        "type": "view",
        "timestamp": f"2026-11-{day:02d}T10:00:{n % 60:02d}Z",
        **extra,
    }


@pytest.fixture
def cli_env(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    monkeypatch.setenv("RECSVC_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("RECSVC_MODELS_DIR", str(settings.models_dir))
    get_settings.cache_clear()
    yield settings
    get_settings.cache_clear()


async def test_a_second_export_writes_only_the_new_events(
    settings: Settings, client: httpx.AsyncClient, tmp_path: Path, database_url: str
) -> None:
    target = tmp_path / "export"
    await send(client, *(event(n, f"u{n % 3}", 1 + n % 4) for n in range(40)))
    await send(client, event(99, "u9", 5, type="rate", value=4.5))
    first = await asyncio.to_thread(run_export, settings, target)
    assert (first.run, first.n_events) == (1, 41)

    exported = read_export(target)
    assert sorted(r["event_id"] for r in exported) == sorted(
        await rows(database_url, "SELECT event_id FROM events")
    )
    rated = next(r for r in exported if r["event_id"] == "x99")
    assert rated["value"] == 4.5 and rated["type"] == "rate" and rated["user_id"] == "u9"
    assert rated["occurred_at"].isoformat() == "2026-11-05T10:00:39+00:00"
    # partitioned by the day the event occurred on
    days = {p.parent.name for p in export_files.event_files(target)}
    assert days == {f"day=2026-11-0{d}" for d in range(1, 6)}

    await send(client, *(event(n, "u1", 6) for n in range(100, 110)))
    second = await asyncio.to_thread(run_export, settings, target)
    assert (second.run, second.n_events) == (2, 10)
    manifest = export_files.read_manifest(target)
    assert manifest is not None
    new_rows = [pq.read_table(target / name).to_pylist() for name in manifest["runs"][1]["files"]]
    assert sorted(r["event_id"] for part in new_rows for r in part) == [
        f"x{n}" for n in range(100, 110)
    ]
    all_rows = read_export(target)
    assert len(all_rows) == 51 and len({r["id"] for r in all_rows}) == 51
    assert {r["export_run"] for r in all_rows} == {1, 2}

    # nothing new: a run that records the cutoff and writes nothing
    third = await asyncio.to_thread(run_export, settings, target)
    assert (third.run, third.n_events, third.files) == (3, 0, 0)
    assert len(read_export(target)) == 51
    # a file a dead run left behind is not part of the export, and goes at the next run
    stray = target / "events" / "day=2026-11-01" / "run-000004-0000.parquet"
    stray.write_bytes(b"partial")
    assert (await asyncio.to_thread(run_export, settings, target)).removed_orphans == 1
    assert not stray.exists()


async def test_erasure_reaches_the_export(
    cli_env: Settings,
    client: httpx.AsyncClient,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    target = tmp_path / "export"
    await send(client, *(event(n, "gone", 2) for n in range(5)))
    await send(client, *(event(n, "stays", 3) for n in range(5, 10)))
    assert await asyncio.to_thread(cli.main, ["export", "events", str(target)]) == 0

    assert (await client.delete("/v1/users/gone", headers=OPS)).status_code == 204
    # the learner comes back after the erasure: these events are theirs to keep
    await send(client, event(20, "gone", 4))
    assert await asyncio.to_thread(cli.main, ["export", "events", str(target)]) == 0
    assert "1 erased learner(s) newly logged" in capsys.readouterr().out
    [entry] = export_files.read_erased(target)
    assert (entry.user_id, entry.before_run, entry.source) == ("gone", 2, "export")
    assert export_files.erased_before([entry]) == {"gone": 2}
    # without --rewrite the older file still holds them (the Spark engine leaves them out)
    assert sum(r["user_id"] == "gone" for r in read_export(target)) == 6

    assert await asyncio.to_thread(cli.main, ["export", "events", str(target), "--rewrite"]) == 0
    assert "without 5 events of erased learners" in capsys.readouterr().out
    remaining = read_export(target)
    assert [r["event_id"] for r in remaining if r["user_id"] == "gone"] == ["x20"]
    assert sum(r["user_id"] == "stays" for r in remaining) == 5
    # the log is not logged twice by later runs or trainings
    assert export.log_erasures(target, {"gone": entry.revision}) == 0
    assert len(export_files.read_erased(target)) == 1


async def test_a_training_logs_erasures_into_the_export_before_forgetting_them(
    settings: Settings, client: httpx.AsyncClient, tmp_path: Path, database_url: str
) -> None:
    """The database forgets an erasure once training rewrote the artifacts; a training logs it
    into RECSVC_EXPORT_DIR first, so the export's older files cannot bring the learner back."""
    from recsvc import pipeline

    target = tmp_path / "export"
    await send(client, *(event(n, f"u{n % 4}", 2, type="enroll") for n in range(40)))
    await asyncio.to_thread(run_export, settings, target)
    assert (await client.delete("/v1/users/u1", headers=OPS)).status_code == 204
    with_export = settings.model_copy(update={"export_dir": target})
    engine = db.make_engine(settings.database_url)
    try:
        await pipeline.run_training(with_export, db.make_sessionmaker(engine))
    finally:
        await engine.dispose()
    assert await rows(database_url, "SELECT user_id FROM erased_users") == []
    [entry] = export_files.read_erased(target)
    assert (entry.user_id, entry.before_run, entry.source) == ("u1", 2, "training")


def test_export_errors_are_one_line(
    cli_env: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "manifest.json").write_text(json.dumps({"format": 99}))
    assert cli.main(["export", "events", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("recsvc export: ") and "not a recsvc export manifest" in err
    assert "\n" not in err


async def test_a_transaction_that_commits_late_is_exported_by_the_next_run(
    settings: Settings, client: httpx.AsyncClient, tmp_path: Path, is_postgres: bool
) -> None:
    """PostgreSQL: an event whose transaction is still open when a run reads is not in that
    run; it is in the next one, although rows with higher ids were exported before it."""
    if not is_postgres:
        pytest.skip("SQLite runs one writer at a time: ids are the commit order")
    import asyncpg
    from sqlalchemy.engine import make_url

    target = tmp_path / "export"
    dsn = make_url(settings.database_url).set(drivername="postgresql")
    late = await asyncpg.connect(dsn.render_as_string(hide_password=False))
    try:
        transaction = late.transaction()
        await transaction.start()
        await late.execute(
            "INSERT INTO events (event_id, user_id, item_id, type, occurred_at, received_at) "
            "VALUES ('late', 'u1', 'c1', 'view', now(), now())"
        )
        await send(client, event(1, "u2", 3))  # committed, a higher id
        first = await asyncio.to_thread(run_export, settings, target)
        assert first.n_events == 1
        await transaction.commit()
    finally:
        await late.close()
    second = await asyncio.to_thread(run_export, settings, target)
    assert second.n_events == 1
    assert sorted(r["event_id"] for r in read_export(target)) == ["late", "x1"]
