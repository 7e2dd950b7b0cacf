"""Learner portraits (portrait.py): interests, activity, journey and labels from one learner's
events, at a fixed `now`, on a small catalog of its own."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from recsvc.features import FeatureConfig
from recsvc.portrait import LabelRules, LearnerEvents, PortraitConfig, portrait
from recsvc.scorer import CatalogView

DAY = 86_400.0
NOW = datetime(2026, 12, 1, 12, tzinfo=UTC).timestamp()
CATALOG = CatalogView(
    titles={"py1": "Python入门", "py2": "Python进阶", "ml1": "机器学习", "en1": "英语口语"},
    categories={
        "py1": frozenset({"Python编程"}),
        "py2": frozenset({"Python编程"}),
        "ml1": frozenset({"机器学习", "Python编程"}),
        "en1": frozenset({"英语"}),
    },
    tags={"py1": frozenset({"入门"}), "ml1": frozenset({"sklearn"})},
    prices={"py1": 99.0, "py2": 199.0, "ml1": 999.0, "en1": 1299.0},
)
CONFIG = PortraitConfig(
    features=FeatureConfig(),
    consumed_types=frozenset({"enroll", "purchase", "complete", "rate", "review"}),
    half_life_days=30.0,
    rules=LabelRules(),
)


def learner(*rows: tuple[str, str, float, float | None]) -> LearnerEvents:
    """(item, type, days ago, value) rows, in any order."""
    ordered = sorted(rows, key=lambda r: -r[2])
    return LearnerEvents(
        [r[0] for r in ordered],
        [r[1] for r in ordered],
        np.array([np.nan if r[3] is None else r[3] for r in ordered]),
        np.array([NOW - r[2] * DAY for r in ordered]),
    )


def test_interests_are_weighted_like_training_and_fade() -> None:
    events = learner(
        ("py1", "enroll", 1, None),  # 4
        ("py1", "view", 1, None),  # 1
        ("ml1", "view", 1, None),  # 1: Python编程 and 机器学习
        ("en1", "purchase", 60, None),  # 5, two half-lives old: 1.25
        ("py2", "dislike", 2, None),
        ("py2", "view", 2, None),  # a disliked course counts for nothing
    )
    body = portrait(events, CATALOG, CONFIG, NOW)
    categories = {i["name"]: i for i in body["interests"]["categories"]}
    ranked = [i["name"] for i in body["interests"]["categories"]]
    assert ranked == ["Python编程", "英语", "机器学习"]
    total = 4 * 2 ** (-1 / 30) + 1 * 2 ** (-1 / 30) + 1 * 2 ** (-1 / 30) + 5 * 0.25
    assert categories["Python编程"]["affinity"] == pytest.approx(6 * 2 ** (-1 / 30) / total, 1e-3)
    assert categories["Python编程"]["evidence"] == 3
    assert categories["英语"]["affinity"] == pytest.approx(1.25 / total, 1e-3)
    assert all(0 <= i["affinity"] <= 1 for i in body["interests"]["tags"])
    assert {i["name"] for i in body["interests"]["tags"]} == {"入门", "sklearn"}


def test_ratings_weigh_by_value_and_the_cap_holds() -> None:
    many_views = [("py1", "view", 1, None)] * 40  # 40, capped at 20
    events = learner(*many_views, ("en1", "rate", 1, 5.0), ("ml1", "rate", 1, 1.0))
    body = portrait(events, CATALOG, PortraitConfig(half_life_days=None), NOW)
    weights = {i["name"]: i["affinity"] for i in body["interests"]["categories"]}
    total = 20 + 5 + 1
    assert weights["Python编程"] == pytest.approx(21 / total, 1e-3)
    assert weights["英语"] == pytest.approx(5 / total, 1e-3)
    assert weights["机器学习"] == pytest.approx(1 / total, 1e-3)


def test_activity_windows_habits_and_time_zone() -> None:
    events = learner(
        ("py1", "view", 0.1, None),
        ("py1", "view", 3, None),
        ("py2", "view", 20, None),
        ("ml1", "enroll", 50, None),
        ("en1", "view", 200, None),
    )
    body = portrait(events, CATALOG, CONFIG, NOW)["activity"]
    windows = {w["days"]: w for w in body["windows"]}
    assert windows[7] == {"days": 7, "active_days": 2, "events": {"view": 2}}
    assert windows[30]["active_days"] == 3
    assert windows[90]["events"] == {"enroll": 1, "view": 3}
    assert body["first_seen"].startswith("2026-05-15")
    assert body["days_since_last_seen"] == pytest.approx(0.1)
    assert body["usual_gap_days"] == 23.5  # median of 150, 30, 17 and 3 days
    assert body["hours"][0] == {"hour": 12, "share": 0.8}  # noon UTC, 4 of 5 events
    shanghai = portrait(events, CATALOG, CONFIG, NOW, ZoneInfo("Asia/Shanghai"))["activity"]
    assert shanghai["hours"][0]["hour"] == 20
    assert shanghai["timezone"] == "Asia/Shanghai"


def test_journey_consumed_intents_and_dislikes() -> None:
    events = learner(
        ("py1", "enroll", 30, None),
        ("py1", "complete", 10, None),
        ("ml1", "purchase", 20, None),
        ("en1", "favorite", 9, None),
        ("en1", "add_to_cart", 8, None),
        ("py2", "dislike", 5, None),
        ("py2", "favorite", 6, None),
    )
    journey = portrait(events, CATALOG, CONFIG, NOW)["journey"]
    assert journey["n_consumed"] == 2 and journey["n_completed"] == 1
    assert journey["completion_ratio"] == 0.5
    assert [c["item_id"] for c in journey["consumed"]] == ["py1", "ml1"]
    assert journey["consumed"][0]["types"] == ["complete", "enroll"]
    assert [i["item_id"] for i in journey["open_intents"]] == ["en1"]  # py2 is disliked
    assert journey["open_intents"][0]["days_open"] == pytest.approx(9)
    assert [c["item_id"] for c in journey["disliked"]] == ["py2"]


def labels_of(events: LearnerEvents, rules: LabelRules | None = None) -> dict[str, str]:
    config = CONFIG if rules is None else PortraitConfig(rules=rules)
    return {x["label"]: x["rule"] for x in portrait(events, CATALOG, config, NOW)["labels"]}


def test_labels_new_at_risk_and_their_thresholds() -> None:
    fresh = learner(("py1", "view", 3, None), ("py2", "view", 1, None))
    assert set(labels_of(fresh)) == {"new"}
    assert "first seen 3.0 days ago" in labels_of(fresh)["new"]
    assert labels_of(fresh, LabelRules(new_days=2)) == {}

    # Active every 2 days, then silent for 15: more than 2 x 2 days and at least 14.
    regular = learner(*[("py1", "view", 15 + 2 * k, None) for k in range(10)])
    assert set(labels_of(regular)) == {"at_risk"}
    assert "no activity for 15 days" in labels_of(regular)["at_risk"]
    assert "at_risk" not in labels_of(regular, LabelRules(at_risk_min_days=20))
    # Usually 10 days apart: 15 days of silence is not more than twice that.
    sparse = learner(*[("py1", "view", 15 + 10 * k, None) for k in range(4)])
    assert "at_risk" not in labels_of(sparse)


def test_labels_high_intent_completer_price_sensitive() -> None:
    events = learner(
        ("en1", "favorite", 8, None),
        ("py1", "enroll", 40, None),
        ("py1", "complete", 30, None),
        ("py2", "purchase", 40, None),
        ("py2", "complete", 20, None),
        ("ml1", "view", 5, None),
        ("ml1", "view", 4, None),
    )
    labels = labels_of(events)
    assert set(labels) == {"high_intent", "completer", "price_sensitive"}
    assert "oldest: en1, 8 days" in labels["high_intent"]
    assert "completed 2 courses" in labels["completer"]
    # consumed py1 (99) and py2 (199): median 149 < 0.6 x median(999, 1299) = 689.4
    assert "149 < 0.6 x 1149" in labels["price_sensitive"]
    stricter = LabelRules(high_intent_days=9, completer_min_courses=3, price_sensitive_ratio=0.1)
    assert labels_of(events, stricter) == {}
    # No prices in the catalog: the rule cannot fire.
    no_prices = CatalogView(titles=CATALOG.titles, categories=CATALOG.categories)
    plain = portrait(events, no_prices, CONFIG, NOW)["labels"]
    assert "price_sensitive" not in {x["label"] for x in plain}


def test_a_learner_without_events_has_an_empty_portrait() -> None:
    body = portrait(learner(), CATALOG, CONFIG, NOW)
    assert body["n_events"] == 0
    assert body["interests"] == {"categories": [], "tags": []}
    assert body["activity"]["first_seen"] is None and body["labels"] == []
    assert body["journey"]["completion_ratio"] is None
