"""A learner's portrait from their own events: interests, study habits, journey and labels.

What GET /v1/users/{id}/profile shows (docs/design.md section 10), computed per request from the
learner's events (all of them, including those newer than the model) and the catalog:

* `interests`: categories and tags, each with an affinity in [0, 1] and its evidence (events).
  Events are weighed as training weighs them (`features.event_weights`: type weights, rating
  values; summed per course and capped at the weight cap; a disliked course counts for nothing)
  and fade with `half_life_days`. A course's weight goes to each of its categories and tags;
  the affinity is the share of the learner's total weight that a category or tag holds.
* `activity`: first and last seen, active days and events per type in the last 7/30/90 days,
  the usual gap between active days, and the hours and weekdays they are usually active.
* `journey`: consumed courses and the completion ratio, open intents (favourites and cart items
  not yet bought) and disliked courses.
* `labels`: rule-based tags, each with the rule that fired (`LabelRules`).

The catalog comes as scorer.CatalogView (titles, categories, tags, prices).

numpy and pandas only: no web, no database, no model.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from recsvc.features import FeatureConfig, event_type_codes, event_weights
from recsvc.scorer import CatalogView

SECONDS_PER_DAY = 86_400.0
WINDOWS_DAYS = (7, 30, 90)
TOP_INTERESTS = 10
TOP_HABITS = 3
MAX_LISTED = 50  # courses per journey list (the counts cover all of them)
WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
PURCHASE_LIKE = ("enroll", "purchase", "complete")  # "bought" for the completion ratio
COMPLETE = "complete"
INTENT_TYPES = ("favorite", "add_to_cart")


@dataclass(frozen=True)
class LearnerEvents:
    """One learner's events, oldest first: parallel columns (occurred_at in unix seconds)."""

    item_ids: Sequence[str]
    types: Sequence[str]
    values: npt.NDArray[np.float64]  # NaN: no value
    occurred_at: npt.NDArray[np.float64]

    def __len__(self) -> int:
        return len(self.item_ids)


@dataclass(frozen=True)
class LabelRules:
    """The thresholds of the default labels (settings RECSVC_LABEL_*)."""

    new_days: float = 14.0
    at_risk_gap_factor: float = 2.0
    at_risk_min_days: float = 14.0
    high_intent_days: float = 7.0
    completer_min_courses: int = 2
    completer_min_ratio: float = 0.5
    price_sensitive_ratio: float = 0.6
    price_min_courses: int = 2  # priced courses needed on each side of the comparison


@dataclass(frozen=True)
class PortraitConfig:
    features: FeatureConfig = field(default_factory=FeatureConfig)
    consumed_types: frozenset[str] = frozenset(PURCHASE_LIKE)
    half_life_days: float | None = 30.0
    rules: LabelRules = field(default_factory=LabelRules)


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def _isos(seconds: npt.NDArray[np.float64]) -> list[str]:
    """RFC 3339 UTC times to the second, vectorised (a portrait lists up to 150 courses)."""
    whole = np.floor(np.asarray(seconds, dtype=np.float64)).astype("datetime64[s]")
    return [f"{text}Z" for text in np.datetime_as_string(whole, unit="s").tolist()]


def _days(seconds: float) -> float:
    return round(seconds / SECONDS_PER_DAY, 2)


@dataclass(frozen=True)
class _Courses:
    """The learner's events grouped by course, computed once per portrait (vectorised: a
    learner may have thousands of events)."""

    ids: list[str]  # distinct courses
    of_event: npt.NDArray[np.int64]  # event -> course
    types: list[str]  # distinct event types
    type_of_event: npt.NDArray[np.int64]  # event -> type
    has_type: npt.NDArray[np.bool_]  # course x type
    last_at: npt.NDArray[np.float64]  # per course, unix seconds

    @classmethod
    def of(cls, events: LearnerEvents) -> _Courses:
        of_event, ids = pd.factorize(np.asarray(events.item_ids, dtype=object))
        type_of_event, types = pd.factorize(np.asarray(events.types, dtype=object))
        has_type = np.zeros((len(ids), len(types)), dtype=bool)
        has_type[of_event, type_of_event] = True
        last_at = np.full(len(ids), -np.inf)
        np.maximum.at(last_at, of_event, events.occurred_at)
        return cls(
            ids=[str(i) for i in ids],
            of_event=of_event.astype(np.int64),
            types=[str(t) for t in types],
            type_of_event=type_of_event.astype(np.int64),
            has_type=has_type,
            last_at=last_at,
        )

    def with_any(self, types: Iterable[str]) -> npt.NDArray[np.bool_]:
        """Per course: whether the learner has an event of one of `types` on it."""
        columns = [k for k, t in enumerate(self.types) if t in set(types)]
        return self.has_type[:, columns].any(axis=1)


def portrait(
    events: LearnerEvents,
    catalog: CatalogView,
    config: PortraitConfig,
    now: float,
    zone: tzinfo = UTC,
) -> dict[str, Any]:
    """The portrait of one learner at `now` (unix seconds), in the shape of schemas.Profile
    (without user_id, segment and model_version, which the caller adds)."""
    courses = _Courses.of(events)
    activity = _activity(events, now, zone)
    journey = _journey(events, courses, catalog, config, now)
    return {
        "n_events": len(events),
        "interests": _interests(events, courses, catalog, config, now),
        "activity": activity,
        "journey": journey,
        "labels": _labels(events, courses, catalog, config, activity, journey, now),
    }


# --- interests ----------------------------------------------------------------------------------


def course_weights(
    events: LearnerEvents, courses: _Courses, config: PortraitConfig, now: float
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """Per course: its weight (training's event weights, faded, summed, capped; 0 when the
    learner disliked it) and the number of its events with a positive weight."""
    codes = event_type_codes(np.asarray(events.types, dtype=object), config.features)
    weights, negative = event_weights(codes, events.values, config.features)
    if config.half_life_days is not None:
        age_days = np.maximum(now - events.occurred_at, 0.0) / SECONDS_PER_DAY
        weights = weights * np.exp2(-age_days / config.half_life_days)
    n = len(courses.ids)
    positive = ~negative & (weights > 0)
    totals = np.bincount(courses.of_event, weights=np.where(positive, weights, 0.0), minlength=n)
    evidence = np.bincount(courses.of_event[positive], minlength=n)
    disliked = np.bincount(courses.of_event[negative], minlength=n) > 0
    cap = config.features.weight_cap
    if cap is not None:
        totals = np.minimum(totals, cap)
    return np.where(disliked, 0.0, totals), np.where(disliked, 0, evidence)


def _ranked(
    courses: _Courses,
    weight_of: npt.NDArray[np.float64],
    evidence_of: npt.NDArray[np.int64],
    labels_of: Mapping[str, frozenset[str]],
    total: float,
) -> list[dict[str, Any]]:
    weight: dict[str, float] = {}
    count: dict[str, int] = {}
    for k in np.flatnonzero(weight_of > 0).tolist():
        w, n = float(weight_of[k]), int(evidence_of[k])
        for label in labels_of.get(courses.ids[k], ()):
            weight[label] = weight.get(label, 0.0) + w
            count[label] = count.get(label, 0) + n
    ranked = sorted(weight.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_INTERESTS]
    return [
        {"name": name, "affinity": round(min(w / total, 1.0), 4), "evidence": count[name]}
        for name, w in ranked
    ]


def _interests(
    events: LearnerEvents,
    courses: _Courses,
    catalog: CatalogView,
    config: PortraitConfig,
    now: float,
) -> dict[str, list[dict[str, Any]]]:
    if not len(events):
        return {"categories": [], "tags": []}
    weight_of, evidence_of = course_weights(events, courses, config, now)
    total = float(weight_of.sum())
    if total <= 0:
        return {"categories": [], "tags": []}
    return {
        "categories": _ranked(courses, weight_of, evidence_of, catalog.categories, total),
        "tags": _ranked(courses, weight_of, evidence_of, catalog.tags, total),
    }


# --- activity -----------------------------------------------------------------------------------


def _local_calendar(
    stamps: npt.NDArray[np.float64], zone: tzinfo
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Per event: the local day number, hour and weekday (Monday 0). UTC by arithmetic, other
    zones through pandas (their offsets and daylight saving time)."""
    if zone is UTC:
        seconds = np.floor(stamps).astype(np.int64)
    else:
        local = pd.DatetimeIndex(pd.to_datetime(stamps, unit="s", utc=True)).tz_convert(zone)
        offsets = local.tz_localize(None) - pd.DatetimeIndex(pd.to_datetime(stamps, unit="s"))
        seconds = np.floor(stamps).astype(np.int64) + offsets.total_seconds().to_numpy(np.int64)
    days = seconds // 86_400
    hours = (seconds % 86_400) // 3_600
    weekdays = (days + 3) % 7  # 1970-01-01 was a Thursday
    return days, hours, weekdays


def _activity(events: LearnerEvents, now: float, zone: tzinfo) -> dict[str, Any]:
    if not len(events):
        return {
            "first_seen": None,
            "last_seen": None,
            "days_since_last_seen": None,
            "usual_gap_days": None,
            "windows": [{"days": days, "active_days": 0, "events": {}} for days in WINDOWS_DAYS],
            "hours": [],
            "weekdays": [],
            "timezone": str(zone),
        }
    stamps = events.occurred_at
    dates, hours, weekdays = _local_calendar(stamps, zone)
    type_of_event, types = pd.factorize(np.asarray(events.types, dtype=object))
    windows = []
    for days in WINDOWS_DAYS:
        inside = stamps >= now - days * SECONDS_PER_DAY
        per_type = np.bincount(type_of_event[inside], minlength=len(types))
        windows.append(
            {
                "days": days,
                "active_days": int(len(np.unique(dates[inside]))),
                "events": {
                    str(types[k]): int(per_type[k]) for k in np.argsort(types) if per_type[k]
                },
            }
        )
    gaps = np.diff(np.unique(dates))
    return {
        "first_seen": _iso(float(stamps.min())),
        "last_seen": _iso(float(stamps.max())),
        "days_since_last_seen": _days(max(now - float(stamps.max()), 0.0)),
        "usual_gap_days": float(np.median(gaps)) if len(gaps) else None,
        "windows": windows,
        "hours": _top_shares(np.bincount(hours, minlength=24), "hour", list(range(24))),
        "weekdays": _top_shares(np.bincount(weekdays, minlength=7), "weekday", list(WEEKDAYS)),
        "timezone": str(zone),
    }


def _top_shares(counts: npt.NDArray[np.int64], key: str, names: list[Any]) -> list[dict[str, Any]]:
    total = int(counts.sum())
    order = np.argsort(-counts, kind="stable")[:TOP_HABITS]
    return [
        {key: names[i], "share": round(int(counts[i]) / total, 4)} for i in order if counts[i] > 0
    ]


# --- journey ------------------------------------------------------------------------------------


def _journey(
    events: LearnerEvents,
    courses: _Courses,
    catalog: CatalogView,
    config: PortraitConfig,
    now: float,
) -> dict[str, Any]:
    consumed = courses.with_any(config.consumed_types)
    disliked = courses.with_any(config.features.negative_types)
    bought = courses.with_any(PURCHASE_LIKE)
    completed = bought & courses.with_any((COMPLETE,))
    intent_since = np.full(len(courses.ids), np.inf)
    is_intent = np.isin(np.asarray(events.types, dtype=object), INTENT_TYPES)
    np.minimum.at(intent_since, courses.of_event[is_intent], events.occurred_at[is_intent])
    open_intent = np.isfinite(intent_since) & ~consumed & ~disliked

    type_names = np.array(courses.types, dtype=object)
    last_iso = _isos(courses.last_at)

    def course(k: int) -> dict[str, Any]:
        return {
            "item_id": courses.ids[k],
            "title": catalog.titles.get(courses.ids[k], ""),
            "types": sorted(type_names[courses.has_type[k]].tolist()),
            "last_at": last_iso[k],
        }

    def newest_first(mask: npt.NDArray[np.bool_]) -> list[int]:
        chosen = np.flatnonzero(mask)
        return chosen[np.argsort(-courses.last_at[chosen], kind="stable")][:MAX_LISTED].tolist()

    intents = np.flatnonzero(open_intent)
    intents = intents[np.argsort(intent_since[intents], kind="stable")][:MAX_LISTED].tolist()
    since_iso = _isos(intent_since[intents])
    n_bought, n_completed = int(bought.sum()), int(completed.sum())
    return {
        "n_consumed": int(consumed.sum()),
        "n_completed": n_completed,
        "completion_ratio": round(n_completed / n_bought, 4) if n_bought else None,
        "consumed": [course(k) for k in newest_first(consumed)],
        "open_intents": [
            {
                **course(k),
                "since": since,
                "days_open": _days(max(now - float(intent_since[k]), 0.0)),
            }
            for k, since in zip(intents, since_iso, strict=True)
        ],
        "disliked": [course(k) for k in newest_first(disliked)],
    }


# --- labels -------------------------------------------------------------------------------------


def _labels(
    events: LearnerEvents,
    courses: _Courses,
    catalog: CatalogView,
    config: PortraitConfig,
    activity: dict[str, Any],
    journey: dict[str, Any],
    now: float,
) -> list[dict[str, str]]:
    rules = config.rules
    labels: list[dict[str, str]] = []
    if not len(events):
        return labels
    first_days = (now - float(events.occurred_at.min())) / SECONDS_PER_DAY
    if first_days < rules.new_days:
        labels.append(
            {"label": "new", "rule": f"first seen {first_days:.1f} days ago (< {rules.new_days:g})"}
        )
    silent = activity["days_since_last_seen"]
    gap = activity["usual_gap_days"]
    limit = max(rules.at_risk_gap_factor * (gap or 0.0), rules.at_risk_min_days)
    if silent is not None and silent > limit:
        usual = f"usual gap {gap:g} days" if gap is not None else "one active day so far"
        labels.append(
            {
                "label": "at_risk",
                "rule": f"no activity for {silent:g} days (> {limit:g}: {usual} x "
                f"{rules.at_risk_gap_factor:g}, at least {rules.at_risk_min_days:g})",
            }
        )
    waiting = [i for i in journey["open_intents"] if i["days_open"] >= rules.high_intent_days]
    if waiting:
        oldest = waiting[0]
        labels.append(
            {
                "label": "high_intent",
                "rule": f"{len(waiting)} favourite or cart item(s) unbought for at least "
                f"{rules.high_intent_days:g} days (oldest: {oldest['item_id']}, "
                f"{oldest['days_open']:g} days)",
            }
        )
    ratio = journey["completion_ratio"]
    if (
        journey["n_completed"] >= rules.completer_min_courses
        and ratio is not None
        and ratio >= rules.completer_min_ratio
    ):
        labels.append(
            {
                "label": "completer",
                "rule": f"completed {journey['n_completed']} courses "
                f"(>= {rules.completer_min_courses}), {ratio:.0%} of those enrolled in or "
                f"bought (>= {rules.completer_min_ratio:.0%})",
            }
        )
    price = _price_rule(courses, catalog, config)
    if price is not None:
        labels.append({"label": "price_sensitive", "rule": price})
    return labels


def _price_rule(courses: _Courses, catalog: CatalogView, config: PortraitConfig) -> str | None:
    """The price_sensitive rule, when items carry prices: consumed courses cheap against the
    courses they only looked at (medians, at least `price_min_courses` on each side)."""
    if not catalog.prices:
        return None
    rules = config.rules
    consumed = courses.with_any(config.consumed_types)
    priced = [
        (catalog.prices[i], bool(c))
        for i, c in zip(courses.ids, consumed.tolist(), strict=True)
        if i in catalog.prices
    ]
    paid = [price for price, was_consumed in priced if was_consumed]
    seen = [price for price, was_consumed in priced if not was_consumed]
    if len(paid) < rules.price_min_courses or len(seen) < rules.price_min_courses:
        return None
    paid_median, seen_median = float(np.median(paid)), float(np.median(seen))
    if not (seen_median > 0 and paid_median < rules.price_sensitive_ratio * seen_median):
        return None
    return (
        f"median price of consumed courses {paid_median:g} < {rules.price_sensitive_ratio:g} x "
        f"{seen_median:g}, the median of courses only viewed ({len(paid)} vs {len(seen)} courses)"
    )


def price_of(attributes: Mapping[str, Any]) -> float | None:
    """A catalog item's numeric `price` attribute, if it has a usable one."""
    price = attributes.get("price")
    if isinstance(price, bool) or not isinstance(price, int | float):
        return None
    return float(price) if math.isfinite(price) and price >= 0 else None


def now_seconds() -> float:
    return datetime.now(UTC).timestamp()
