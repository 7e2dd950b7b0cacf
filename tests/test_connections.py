"""Connections budget (issue 8): one setting caps what a serving worker opens, and
`recsvc serve --workers N` refuses to start when N workers cannot fit in the server's limit."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn

from conftest import KEYS
from recsvc import cli, db
from recsvc.app import create_app
from recsvc.config import Settings, get_settings


@pytest.mark.parametrize("total", [3, 4, 5, 7, 10, 20, 21, 33, 50, 100])
def test_the_split_adds_up_to_the_setting(total: int) -> None:
    budget = db.ConnectionBudget.split(total)
    assert budget.total == total
    assert budget.listener + budget.read_pool + budget.pool_size + budget.max_overflow == total
    assert budget.listener == 1
    assert budget.read_pool >= 1 and budget.pool_size >= 1 and budget.max_overflow >= 0


def test_the_default_budget_is_the_documented_one() -> None:
    settings = Settings()
    budget = db.connection_budget(settings)
    assert settings.db_connections_per_worker == budget.total == 20
    assert (budget.pool_size, budget.max_overflow, budget.read_pool, budget.listener) == (
        9,
        3,
        7,
        1,
    )
    description = Settings.model_fields["db_connections_per_worker"].description
    assert description is not None and "9+3 overflow, 7 and 1" in description
    with pytest.raises(ValueError, match="at least 3"):
        db.ConnectionBudget.split(2)
    with pytest.raises(ValueError):
        Settings(db_connections_per_worker=2)


async def test_a_workers_pools_add_up_to_the_setting(settings: Settings, is_postgres: bool) -> None:
    """Before issue 8 a worker could open 51: SQLAlchemy 20 + 10, asyncpg 20, LISTEN 1."""
    if not is_postgres:
        pytest.skip("SQLite has no connection limit; the pools are PostgreSQL's")
    settings = settings.model_copy(update={"db_connections_per_worker": 10})
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        pool: Any = app.state.engine.pool
        read_pool = app.state.serving._recent_events.pool_size
        listener = 1  # freshness.FreshUsers: one asyncpg.connect, no pool
        assert pool.size() + pool._max_overflow + read_pool + listener == 10


# --- `recsvc serve --workers N` ------------------------------------------------------------


@pytest.fixture
def serve_env(database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[dict[str, Any]]]:
    """The CLI's environment; uvicorn.run only records its call, so nothing is served."""
    monkeypatch.setenv("RECSVC_DATABASE_URL", database_url)
    monkeypatch.setenv("RECSVC_API_KEYS", json.dumps(KEYS))
    monkeypatch.setenv("RECSVC_DB_CONNECTIONS_PER_WORKER", "20")
    started: list[dict[str, Any]] = []
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: started.append(kwargs))
    get_settings.cache_clear()
    yield started
    get_settings.cache_clear()


def _server_limit(database_url: str) -> int:
    limit = asyncio.run(db.server_connection_limit(database_url))
    assert limit is not None
    return limit


def test_serve_refuses_workers_the_server_cannot_connect(
    serve_env: list[dict[str, Any]],
    database_url: str,
    is_postgres: bool,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if not is_postgres:
        pytest.skip("SQLite has no connection limit")
    limit = _server_limit(database_url)  # max_connections minus the reserved ones
    too_many = (limit - db.CLI_CONNECTIONS) // 20 + 1
    with pytest.raises(SystemExit) as exited:
        cli.main(["serve", "--workers", str(too_many)])
    message = str(exited.value.code)
    assert exited.value.code != 0 and "\n" not in message
    assert message.startswith(f"recsvc serve: {too_many} workers x 20 connections")
    assert f"more than the {limit}" in message
    assert serve_env == []  # uvicorn never started

    # one worker fewer fits, with room for `recsvc train`
    fits = (limit - db.CLI_CONNECTIONS) // 20
    assert fits >= 1
    assert cli.main(["serve", "--workers", str(fits)]) == 0
    assert [run["workers"] for run in serve_env] == [fits]

    # an operator who knows better (a pooler in between, say) can override, with a warning
    assert cli.main(["serve", "--workers", str(too_many), "--ignore-connection-limit"]) == 0
    assert [run["workers"] for run in serve_env] == [fits, too_many]


def test_a_smaller_budget_lets_more_workers_start(
    serve_env: list[dict[str, Any]],
    database_url: str,
    is_postgres: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if not is_postgres:
        pytest.skip("SQLite has no connection limit")
    limit = _server_limit(database_url)
    workers = (limit - db.CLI_CONNECTIONS) // 20 + 1
    monkeypatch.setenv("RECSVC_DB_CONNECTIONS_PER_WORKER", str((limit - 3) // workers))
    get_settings.cache_clear()
    assert cli.main(["serve", "--workers", str(workers)]) == 0
    assert [run["workers"] for run in serve_env] == [workers]


async def test_no_limit_on_sqlite(settings: Settings, is_postgres: bool) -> None:
    problem = await cli.connection_limit_problem(settings, 1000)
    if is_postgres:
        assert problem is not None and problem.startswith("1000 workers x 20 connections")
    else:
        assert problem is None
