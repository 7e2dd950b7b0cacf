"""The bundled synthetic data set: deterministic, well-formed and shaped like docs/design.md."""

from __future__ import annotations

import json
import re
from collections import Counter
from datetime import UTC, datetime

import pytest

from recsvc.demo_data import DEFAULT_END, EVENT_TYPES, DemoData, generate, write_jsonl

N_USERS, N_ITEMS = 500, 200
CJK = re.compile(r"[\u4e00-\u9fff]")


@pytest.fixture(scope="module")
def data() -> DemoData:
    return generate(seed=7, n_users=N_USERS, n_items=N_ITEMS)


def _dump(d: DemoData) -> str:
    return json.dumps([d.items, d.users, d.events], ensure_ascii=False)


def _parse(ts: str) -> datetime:
    assert ts.endswith("Z")
    return datetime.fromisoformat(ts[:-1] + "+00:00")


def test_same_seed_same_output_different_seed_different(data: DemoData) -> None:
    again = generate(seed=7, n_users=N_USERS, n_items=N_ITEMS)
    assert _dump(again) == _dump(data)
    other = generate(seed=8, n_users=N_USERS, n_items=N_ITEMS)
    assert _dump(other) != _dump(data)


def test_written_files_are_byte_identical(tmp_path, data: DemoData) -> None:
    first = write_jsonl(data, tmp_path / "a")
    second = write_jsonl(generate(seed=7, n_users=N_USERS, n_items=N_ITEMS), tmp_path / "b")
    assert set(first) == {"items", "users", "events"}
    for name, path in first.items():
        assert path.name == f"{name}.jsonl"
        assert path.read_bytes() == second[name].read_bytes()
    lines = first["items"].read_text(encoding="utf-8").splitlines()
    assert len(lines) == N_ITEMS
    assert CJK.search(lines[0] + "".join(lines))  # written as UTF-8, not \\u escapes
    assert json.loads(lines[0]) == data.items[0]
    assert len(first["events"].read_text(encoding="utf-8").splitlines()) == len(data.events)


def test_counts_in_expected_ranges(data: DemoData) -> None:
    assert len(data.items) == N_ITEMS
    assert len(data.users) == N_USERS
    assert 10 * N_USERS <= len(data.events) <= 40 * N_USERS
    assert data.counts == {"items": N_ITEMS, "users": N_USERS, "events": len(data.events)}
    assert len({it["item_id"] for it in data.items}) == N_ITEMS
    assert len({u["user_id"] for u in data.users}) == N_USERS
    assert data.items[0]["item_id"] == "c0001"
    assert data.users[0]["user_id"] == "u00001"


def test_items_are_well_formed(data: DemoData) -> None:
    subjects = Counter()
    for it in data.items:
        assert it["title"] and it["description"]
        assert isinstance(it["categories"], list) and it["categories"]
        assert isinstance(it["tags"], list) and it["tags"]
        attrs = it["attributes"]
        assert attrs["level"] in {"beginner", "intermediate", "advanced"}
        assert attrs["language"] in {"zh", "en"}
        assert attrs["price"] >= 0 and attrs["teacher"] and attrs["duration_hours"] > 0
        assert isinstance(it["available"], bool)
        assert _parse(it["created_at"]) <= DEFAULT_END
        subjects[it["categories"][0]] += 1
    assert len(subjects) >= 12
    assert len({it["title"] for it in data.items}) == N_ITEMS
    chinese = sum(bool(CJK.search(it["title"])) for it in data.items)
    assert N_ITEMS * 0.5 < chinese < N_ITEMS  # mostly Chinese, some English titles
    assert any(it["attributes"]["price"] == 0 for it in data.items)
    assert 0 < sum(not it["available"] for it in data.items) < N_ITEMS * 0.1


def test_users_have_attributes(data: DemoData) -> None:
    for u in data.users:
        attrs = u["attributes"]
        assert attrs["goal"] in {"转行", "升职", "兴趣", "考试"}
        assert attrs["city"] and attrs["age_band"] and attrs["signup_channel"]


def test_events_reference_known_users_items_and_types(data: DemoData) -> None:
    users = {u["user_id"] for u in data.users}
    items = {it["item_id"] for it in data.items}
    types = Counter()
    for e in data.events:
        assert e["user_id"] in users
        assert e["item_id"] in items
        assert e["type"] in EVENT_TYPES
        types[e["type"]] += 1
        if e["type"] == "rate":
            assert e["value"] in {1, 2, 3, 4, 5}
        else:
            assert e["value"] is None
        assert set(e["context"]) == {"channel", "session_id"}
        assert e["context"]["channel"] in {"web", "app", "chatbot"}
    assert set(types) == set(EVENT_TYPES)
    assert len({e["event_id"] for e in data.events}) == len(data.events)
    # the funnel narrows: views > enrollments > completions
    assert types["view"] > types["enroll"] > types["complete"] > 0
    assert types["dislike"] < types["enroll"]


def test_timestamps_ordered_per_user_and_not_after_end(data: DemoData) -> None:
    end = DEFAULT_END
    last: dict[str, datetime] = {}
    oldest = end
    for e in data.events:
        ts = _parse(e["timestamp"])
        assert ts <= end
        assert ts >= last.get(e["user_id"], ts)
        last[e["user_id"]] = ts
        oldest = min(oldest, ts)
    assert (end - oldest).days <= 181
    assert (end - oldest).days >= 120  # spread over the window, not bunched up


def test_end_is_a_parameter() -> None:
    end = datetime(2025, 1, 1, tzinfo=UTC)
    d = generate(seed=3, n_users=50, n_items=80, end="2025-01-01T00:00:00Z")
    assert d.end == "2025-01-01T00:00:00Z"
    assert all(_parse(e["timestamp"]) <= end for e in d.events)
    assert max(_parse(e["timestamp"]) for e in d.events) > datetime(2024, 11, 1, tzinfo=UTC)


def test_interests_make_ratings_higher_in_subject(data: DemoData) -> None:
    # a learner's own subjects (where most of their events fall) get better ratings
    subject = {it["item_id"]: it["categories"][0] for it in data.items}
    per_user: dict[str, Counter[str]] = {}
    for e in data.events:
        per_user.setdefault(e["user_id"], Counter())[subject[e["item_id"]]] += 1
    home, away = [], []
    for e in data.events:
        if e["type"] == "rate":
            top = {s for s, _ in per_user[e["user_id"]].most_common(2)}
            (home if subject[e["item_id"]] in top else away).append(e["value"])
    assert home and away
    assert sum(home) / len(home) > sum(away) / len(away)


def test_rejects_empty_sizes() -> None:
    with pytest.raises(ValueError):
        generate(n_users=0)
