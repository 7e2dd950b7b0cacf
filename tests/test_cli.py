"""The `recsvc` command: migrate and import (CSV and JSON lines, same validation as the API)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import scalar
from recsvc import cli, db
from recsvc.config import get_settings


@pytest.fixture
def recsvc_env(database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("RECSVC_DATABASE_URL", database_url)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def count(database_url: str, table: str) -> int:
    return int(asyncio.run(scalar(database_url, f"SELECT count(*) FROM {table}")))  # noqa: S608


def test_migrate_is_idempotent(recsvc_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["migrate"]) == 0
    assert cli.main(["migrate"]) == 0
    assert f"revision {db.head_revision()}" in capsys.readouterr().out


def test_import_events_csv_reports_rejected_lines(
    recsvc_env: None, database_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "events.csv"
    path.write_text(
        "event_id,user_id,item_id,type,value,timestamp,context\n"
        "e1,u1,c1,view,,2026-11-01T10:00:00Z,\n"
        "e2,u1,c2,rate,4,1730000000,\n"  # unix seconds are accepted in files
        "e3,u1,c3,teleport,,,\n"  # line 4: unknown type
        "e4,,c3,view,,,\n"  # line 5: empty user_id
        'e5,u2,c1,enroll,,,"{""channel"": ""app""}"\n'
        "e1,u1,c1,view,,2026-11-01T10:00:00Z,\n",  # a repeat of e1
        encoding="utf-8",
    )
    assert cli.main(["import", "events", str(path), "--quiet"]) == 1
    out, err = capsys.readouterr()
    assert "6 rows read, 3 stored, 1 duplicates skipped, 2 rejected" in out
    assert "line 4: type: unknown event type 'teleport'" in err
    assert "line 5: user_id" in err
    assert count(database_url, "events") == 3


def test_import_jsonl_items_and_users(
    recsvc_env: None, database_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    items = tmp_path / "items.jsonl"
    rows = [
        {"item_id": "c1", "title": "Python数据分析", "categories": ["数据分析"]},
        {"item_id": "c2", "title": "Machine Learning", "tags": ["ml"], "available": False},
        {"title": "no id"},
    ]
    items.write_text(
        "\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n{broken\n",
        encoding="utf-8",
    )
    assert cli.main(["import", "items", str(items), "--quiet"]) == 1
    out, err = capsys.readouterr()
    assert "4 rows read, 2 stored" in out
    assert "line 3: item_id" in err
    assert "line 4: not valid JSON" in err
    assert count(database_url, "items") == 2

    users = tmp_path / "users.csv"
    users.write_text("user_id,city,goal\nu1,杭州,转行\nu2,上海,兴趣\n", encoding="utf-8")
    assert cli.main(["import", "users", str(users), "--quiet"]) == 0
    assert count(database_url, "users") == 2


def test_items_csv_lists_and_extra_columns(
    recsvc_env: None, database_url: str, tmp_path: Path
) -> None:
    path = tmp_path / "items.csv"
    path.write_text(
        "item_id,title,categories,tags,price,available\nc1,SQL入门,数据库,入门|sql,99,true\n",
        encoding="utf-8",
    )
    assert cli.main(["import", "items", str(path), "--quiet"]) == 0
    tags = asyncio.run(scalar(database_url, "SELECT tags FROM items"))
    attributes = asyncio.run(scalar(database_url, "SELECT attributes FROM items"))
    assert as_json(tags) == ["入门", "sql"]
    assert as_json(attributes) == {"price": "99"}


def as_json(value: object) -> object:
    """JSON columns come back as text from SQLite and as objects from PostgreSQL."""
    return json.loads(value) if isinstance(value, str) else value


# --- what a person reads -----------------------------------------------------------------------


def run_recsvc(*args: str, database_url: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECSVC_")}
    env["RECSVC_DATABASE_URL"] = database_url
    return subprocess.run(  # noqa: S603
        [sys.executable, "-m", "recsvc", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_train_on_an_empty_database_says_so_in_one_line(tmp_path: Path) -> None:
    done = run_recsvc("train", database_url=f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}")
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.splitlines() == ["recsvc train: there are no events to train on yet"]


def test_migrate_is_quiet_unless_verbose(tmp_path: Path) -> None:
    quiet = run_recsvc("migrate", database_url=f"sqlite+aiosqlite:///{tmp_path / 'a.db'}")
    assert quiet.returncode == 0 and quiet.stderr == ""
    assert quiet.stdout.startswith(f"database at revision {db.head_revision()}")
    verbose = run_recsvc(
        "migrate", "--verbose", database_url=f"sqlite+aiosqlite:///{tmp_path / 'b.db'}"
    )
    assert verbose.returncode == 0 and "Running upgrade" in verbose.stderr


def test_expected_failures_are_one_line_without_a_traceback(tmp_path: Path) -> None:
    unreachable = "postgresql+asyncpg://postgres@127.0.0.1:1/nowhere"
    down = run_recsvc("migrate", database_url=unreachable)
    assert down.returncode == 1
    assert down.stderr.startswith(f"recsvc migrate: cannot reach the database at {unreachable}")
    assert len(down.stderr.splitlines()) == 1

    sqlite = f"sqlite+aiosqlite:///{tmp_path / 'c.db'}"
    missing = run_recsvc("import", "events", str(tmp_path / "nope.csv"), database_url=sqlite)
    assert missing.returncode == 1
    assert missing.stderr.splitlines() == [f"recsvc import: no such file: {tmp_path / 'nope.csv'}"]

    env_bad = {**os.environ, "RECSVC_ALS_FACTORS": "0", "RECSVC_DATABASE_URL": sqlite}
    bad = subprocess.run(  # noqa: S603
        [sys.executable, "-m", "recsvc", "train"],
        env=env_bad,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert bad.returncode == 1
    assert bad.stderr.splitlines() == [
        "recsvc train: invalid setting: RECSVC_ALS_FACTORS: Input should be greater than or "
        "equal to 1"
    ]
    for done in (down, missing, bad):
        assert "Traceback" not in done.stderr


def test_every_takes_a_duration() -> None:
    assert cli.duration("90") == 90 and cli.duration("30m") == 1800
    assert cli.duration("6h") == 6 * 3600 and cli.duration("1d") == 86400
    for bad in ("5s", "soon", "h"):
        with pytest.raises(argparse.ArgumentTypeError):
            cli.duration(bad)


def test_train_every_keeps_going_after_a_failed_run_and_stops_on_sigterm(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECSVC_")}
    env["RECSVC_DATABASE_URL"] = f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}"
    with subprocess.Popen(  # noqa: S603
        [sys.executable, "-m", "recsvc", "train", "--every", "1m"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stderr is not None
        first = proc.stderr.readline()
        second = proc.stderr.readline()
        assert proc.poll() is None  # still running after the failed run
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    assert first == "recsvc train: there are no events to train on yet\n"
    assert second.startswith("next training in ") and second.endswith(" s\n")


def test_import_refuses_what_no_database_can_store(
    recsvc_env: None, database_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """NUL characters and non-finite numbers are refused row by row, as the API refuses them,
    on both databases (PostgreSQL cannot store them; the rest of the file still loads)."""
    path = tmp_path / "items.jsonl"
    path.write_text(
        '{"item_id": "c1", "title": "ok"}\n'
        '{"item_id": "c2", "title": "bad\\u0000title"}\n'
        '{"item_id": "c3", "attributes": {"price": NaN}}\n',
        encoding="utf-8",
    )
    assert cli.main(["import", "items", str(path), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "line 2: title: text cannot contain the NUL character" in err
    assert "line 3: attributes.price: numbers must be finite" in err
    assert count(database_url, "items") == 1
