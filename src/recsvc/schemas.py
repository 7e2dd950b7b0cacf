"""Request and response bodies of the HTTP API (mirrored by openapi.yaml).

Rules that depend on settings (allowed event types, batch size, context size, clock skew) read a
`ValidationRules` passed as pydantic validation context, so the same models validate API bodies
and `recsvc import` rows alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import orjson
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from recsvc.config import Settings

Id = Annotated[str, Field(min_length=1, max_length=128)]
Label = Annotated[str, Field(min_length=1, max_length=128)]


@dataclass(frozen=True)
class ValidationRules:
    event_types: frozenset[str]
    rating_event_type: str
    max_batch_size: int
    max_context_bytes: int
    max_future: timedelta

    @classmethod
    def from_settings(cls, settings: Settings) -> ValidationRules:
        return cls(
            event_types=frozenset(settings.event_types),
            rating_event_type=settings.rating_event_type,
            max_batch_size=settings.max_batch_size,
            max_context_bytes=settings.max_context_bytes,
            max_future=timedelta(seconds=settings.max_future_seconds),
        )


def _rules(info: ValidationInfo) -> ValidationRules | None:
    return info.context.get("rules") if isinstance(info.context, dict) else None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# What pydantic lets into free objects (context, attributes) but neither database can store:
# refused alike on both, by the API (api.parsed) and by `recsvc import` (bulk.py).
NUL_MESSAGE = "text cannot contain the NUL character (\\u0000)"
NOT_FINITE_MESSAGE = "numbers must be finite: NaN, Infinity and beyond ±1.8e308 are not JSON"


def unstorable(value: Any, loc: list[str | int] | None = None) -> list[dict[str, Any]]:
    """Where `value` (parsed JSON) holds NUL in a string or key, or a non-finite number, as
    pydantic-style errors."""
    loc = loc or []
    found = []
    if isinstance(value, str):
        if "\x00" in value:
            found.append({"loc": loc, "msg": NUL_MESSAGE, "type": "nul_character"})
    elif isinstance(value, float):
        if not math.isfinite(value):
            found.append({"loc": loc, "msg": NOT_FINITE_MESSAGE, "type": "number_not_finite"})
    elif isinstance(value, dict):
        for key, item in value.items():
            found += unstorable(key, [*loc, key]) + unstorable(item, [*loc, key])
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += unstorable(item, [*loc, index])
    return found


# --- events -------------------------------------------------------------------------------------


class EventIn(_Strict):
    """One behaviour event. Field order matters: `value` is checked after `type`."""

    event_id: Id | None = Field(None, description="idempotency key; a repeat is not stored again")
    user_id: Id
    item_id: Id
    type: str = Field(description="one of the configured event types (GET /v1/event-types)")
    value: float | None = Field(
        None, allow_inf_nan=False, description="e.g. a rating 1..5 (required for `rate`)"
    )
    timestamp: AwareDatetime | None = Field(
        None, description="RFC 3339 with offset; default: when recsvc received it"
    )
    context: dict[str, Any] | None = Field(None, description="free object, at most 4 KiB as JSON")

    @field_validator("type")
    @classmethod
    def _known_type(cls, value: str, info: ValidationInfo) -> str:
        rules = _rules(info)
        if rules is not None and value not in rules.event_types:
            allowed = sorted(rules.event_types)
            raise PydanticCustomError(
                "event_type",
                "unknown event type '{type}'; allowed: {allowed_text}",
                {"type": value, "allowed": allowed, "allowed_text": ", ".join(allowed)},
            )
        return value

    @field_validator("value")
    @classmethod
    def _rating_in_range(cls, value: float | None, info: ValidationInfo) -> float | None:
        rules = _rules(info)
        if rules is not None and info.data.get("type") == rules.rating_event_type:
            if value is None or not 1 <= value <= 5:
                raise PydanticCustomError(
                    "rating_value",
                    "a {type} event needs a value from 1 to 5",
                    {"type": rules.rating_event_type},
                )
        return value

    @field_validator("timestamp")
    @classmethod
    def _not_in_future(cls, value: datetime | None, info: ValidationInfo) -> datetime | None:
        rules = _rules(info)
        if value is not None and rules is not None:
            if value > datetime.now(UTC) + rules.max_future:
                raise PydanticCustomError(
                    "timestamp_future",
                    "timestamp is more than {seconds} seconds in the future",
                    {"seconds": int(rules.max_future.total_seconds())},
                )
        return value

    @field_validator("context")
    @classmethod
    def _context_small(cls, value: dict[str, Any] | None, info: ValidationInfo) -> Any:
        rules = _rules(info)
        if value is None:
            return value
        try:
            size = len(orjson.dumps(value))
        except orjson.JSONEncodeError:  # e.g. an integer beyond 64 bits: not storable
            raise PydanticCustomError(
                "context_invalid", "context holds a value JSON cannot store (integers: 64-bit)"
            ) from None
        if rules is not None and size > rules.max_context_bytes:
            raise PydanticCustomError(
                "context_too_large",
                "context is {size} bytes as JSON; the limit is {limit}",
                {"size": size, "limit": rules.max_context_bytes},
            )
        return value


def _batch_size(value: Any, info: ValidationInfo) -> Any:
    rules = _rules(info)
    limit = rules.max_batch_size if rules is not None else 1000
    if isinstance(value, list) and len(value) > limit:
        raise PydanticCustomError(
            "batch_too_large",
            "a batch holds at most {limit} entries, this one has {size}",
            {"limit": limit, "size": len(value)},
        )
    return value


class EventBatch(_Strict):
    events: list[EventIn] = Field(min_length=1, description="1..1000 events, stored all or none")

    _check_size = field_validator("events", mode="before")(_batch_size)


class IngestResult(BaseModel):
    accepted: int = Field(description="events stored by this request")
    duplicates: int = Field(description="events whose event_id was already stored")


class EventTypes(BaseModel):
    types: dict[str, float] = Field(description="allowed event types and their weights")
    rating_type: str
    negative_types: list[str]


# --- catalog ------------------------------------------------------------------------------------


class ItemIn(_Strict):
    title: str = Field("", max_length=1000)
    description: str = Field("", max_length=20000)
    categories: list[Label] = Field(default_factory=list, max_length=64)
    tags: list[Label] = Field(default_factory=list, max_length=256)
    attributes: dict[str, Any] = Field(default_factory=dict, description="price, level, ...")
    available: bool = Field(True, description="unavailable items are never recommended")
    created_at: AwareDatetime | None = Field(
        None, description="when the course was created; default: when first stored. Kept on updates"
    )


class ItemWithId(ItemIn):
    item_id: Id


class ItemBatch(_Strict):
    items: list[ItemWithId] = Field(min_length=1)

    _check_size = field_validator("items", mode="before")(_batch_size)


class ItemOut(BaseModel):
    item_id: str
    title: str
    description: str
    categories: list[str]
    tags: list[str]
    attributes: dict[str, Any]
    available: bool
    created_at: datetime
    updated_at: datetime
    family: str | None = Field(
        None,
        description="the course family this item is an edition of: the `family` (or `series`) "
        "attribute when sent, else detected from titles (starts with ~); null: no other edition",
    )
    editions: list[str] = Field(
        default_factory=list, description="the family's other items (any availability)"
    )


class UpsertResult(BaseModel):
    upserted: int


class UserIn(_Strict):
    attributes: dict[str, Any] = Field(default_factory=dict, description="free profile object")


class UserOut(BaseModel):
    user_id: str
    attributes: dict[str, Any]
    created_at: datetime | None = Field(description="null for a user known only from events")
    updated_at: datetime | None
    n_events: int = 0
    event_counts: dict[str, int] = Field(default_factory=dict, description="events per type")


# --- recommendations ----------------------------------------------------------------------------

STRATEGY_DOC = (
    "how the list was made: als, als_foldin, query, popular or content; "
    "'+popular' appended when popular items filled a list the filters left short"
)


MAX_PER_FAMILY_DOC = (
    "editions of one course family in the list (default RECSVC_MAX_PER_FAMILY, 1): the best "
    "scored available edition represents the family"
)


DIVERSITY_DOC = (
    "0..1: how much score the list trades for courses unlike those above them (maximal marginal "
    "relevance on item factors and categories; default RECSVC_DIVERSITY)"
)


class ListQuery(BaseModel):
    """Query parameters every list route takes (GET recommendations, similar, popular); those
    routes read them with api.read_query."""

    n: int = Field(10, ge=1, le=100, description="how many items")
    category: list[Label] | None = Field(
        None, max_length=20, description="only items in one of these categories"
    )
    exclude: str | None = Field(
        None, max_length=20_000, description="comma-separated item ids to leave out"
    )
    max_per_family: int | None = Field(None, ge=1, le=100, description=MAX_PER_FAMILY_DOC)


class RecommendQuery(ListQuery):
    explain: bool = Field(False, description="add `reasons` to each item")
    diversity: float | None = Field(None, ge=0, le=1, description=DIVERSITY_DOC)


# Longest popularity window a client may ask for: each new window costs a COUNT(DISTINCT) over
# the events in it (serving.Serving.popular_from_events bounds the cache).
MAX_POPULAR_WINDOW_DAYS = 365


class PopularQuery(ListQuery):
    window_days: float | None = Field(
        None,
        gt=0,
        le=MAX_POPULAR_WINDOW_DAYS,
        description="default: the model's window (30 days); rounded up to whole days",
    )


class RecommendationsRequest(_Strict):
    """The chatbot's call, with what it knows of the conversation."""

    user_id: Id | None = Field(None, description="the learner, if known")
    session_items: list[Id] = Field(
        default_factory=list, max_length=100, description="items looked at in this conversation"
    )
    query: str | None = Field(
        None, max_length=500, description='free text, e.g. "想学Python数据分析"'
    )
    n: int = Field(10, ge=1, le=100)
    categories: list[Label] | None = Field(None, max_length=20, description="any of these")
    exclude: list[Id] = Field(default_factory=list, max_length=500)
    explain: bool = Field(False, description="add `reasons` to each item")
    max_per_family: int | None = Field(None, ge=1, le=100, description=MAX_PER_FAMILY_DOC)
    diversity: float | None = Field(None, ge=0, le=1, description=DIVERSITY_DOC)


class Reason(BaseModel):
    item_id: str = Field(description="one of the user's own items")
    title: str
    weight: float = Field(description="its contribution to the score")


class Edition(BaseModel):
    item_id: str
    title: str


class RecommendedItem(BaseModel):
    item_id: str
    score: float = Field(description="ranking score; its scale depends on the strategy")
    title: str
    reasons: list[Reason] | None = Field(None, description="only when explain=true")
    editions: list[Edition] | None = Field(
        None,
        description="other recommendable editions of this course (same family), when it has any",
    )


class Recommendations(BaseModel):
    user_id: str | None
    model_version: str | None = Field(description="null before the first model is trained")
    strategy: str = Field(description=STRATEGY_DOC)
    degraded: bool = Field(
        description="true when the database was unreachable: the list comes from the model in "
        "memory without the learner's newest events (or from an older popular list)"
    )
    items: list[RecommendedItem]


# --- learners: portraits, segments, audiences ---------------------------------------------------


class Interest(BaseModel):
    name: str = Field(description="a category or tag")
    affinity: float = Field(
        ge=0,
        le=1,
        description="share of the learner's interaction weight (event weights, ratings, fading "
        "with RECSVC_PROFILE_HALF_LIFE_DAYS) on courses with this category or tag",
    )
    evidence: int = Field(description="the learner's events behind it")


class Interests(BaseModel):
    categories: list[Interest] = Field(description="top 10, strongest first")
    tags: list[Interest] = Field(description="top 10, strongest first")


class ActivityWindow(BaseModel):
    days: int = Field(description="7, 30 or 90: the window, ending now")
    active_days: int = Field(description="days with at least one event")
    events: dict[str, int] = Field(description="events per type")


class HourShare(BaseModel):
    hour: int = Field(ge=0, le=23)
    share: float = Field(description="of all the learner's events")


class WeekdayShare(BaseModel):
    weekday: str = Field(description="Mon .. Sun")
    share: float


class Activity(BaseModel):
    first_seen: datetime | None
    last_seen: datetime | None
    days_since_last_seen: float | None
    usual_gap_days: float | None = Field(
        description="median days between two consecutive active days; null with one active day"
    )
    windows: list[ActivityWindow]
    hours: list[HourShare] = Field(description="the three hours they are most often active")
    weekdays: list[WeekdayShare] = Field(description="the three weekdays they are most active")
    timezone: str = Field(description="of hours and weekdays (query parameter tz)")


class Course(BaseModel):
    item_id: str
    title: str
    types: list[str] = Field(description="the learner's event types on it")
    last_at: datetime


class OpenIntent(Course):
    since: datetime = Field(description="first favourite or add-to-cart")
    days_open: float


class Journey(BaseModel):
    n_consumed: int = Field(description="courses with an event of a consumed type")
    n_completed: int
    completion_ratio: float | None = Field(
        description="completed / enrolled, bought or completed; null when none"
    )
    consumed: list[Course] = Field(description="newest first, at most 50")
    open_intents: list[OpenIntent] = Field(
        description="favourites and cart items not consumed (nor disliked), oldest first"
    )
    disliked: list[Course]


class SegmentRef(BaseModel):
    segment_id: int
    label: str


class LearnerLabel(BaseModel):
    label: str = Field(description="new, at_risk, high_intent, completer or price_sensitive")
    rule: str = Field(description="the rule that fired, with the learner's figures")


class Profile(BaseModel):
    """Who is this learner? Computed at request time from all of their events."""

    user_id: str
    model_version: str | None = Field(description="the model the segment comes from")
    n_events: int = Field(description="events read (at most RECSVC_PROFILE_MAX_EVENTS)")
    interests: Interests
    activity: Activity
    journey: Journey
    segment: SegmentRef | None = Field(
        description="the learner's segment in the active model; null when the model does not "
        "know them (newer than the model) or has no segments"
    )
    labels: list[LearnerLabel]


class LabelLift(BaseModel):
    name: str
    share: float = Field(description="of the segment's interaction weight")
    lift: float = Field(description="share / the same share over all learners")


class SegmentCourse(BaseModel):
    item_id: str
    title: str
    learners: int = Field(description="learners of the segment with this course")


class SegmentOut(BaseModel):
    segment_id: int
    label: str = Field(description="made from its top categories")
    size: int = Field(description="learners now (erased learners no longer count)")
    categories: list[LabelLift] = Field(description="over-represented categories, by lift")
    tags: list[LabelLift] = Field(description="over-represented tags, by lift")
    top_courses: list[SegmentCourse]


class SegmentList(BaseModel):
    model_version: str | None
    segments: list[SegmentOut]


class SegmentMembers(BaseModel):
    segment_id: int
    model_version: str
    users: list[str]
    next_cursor: str | None = Field(description="pass as cursor for the next page; null: done")


class AudienceMember(BaseModel):
    user_id: str
    score: float = Field(description="factor score; higher: more likely")


class Audience(BaseModel):
    model_version: str
    item_id: str | None = Field(description="the course (GET /v1/items/{id}/audience)")
    strategy: str = Field(
        description="als: the course's factors; content: its text-similar courses' factors "
        "(a course newer than the model); topic: the courses of the categories and tags"
    )
    basis: int = Field(description="model courses whose factors were used")
    users: list[AudienceMember]


class AudienceRequest(_Strict):
    categories: list[Label] = Field(default_factory=list, max_length=20)
    tags: list[Label] = Field(default_factory=list, max_length=20)
    n: int = Field(100, ge=1, le=1000)
    exclude_consumed: bool = Field(
        True, description="leave out learners who consumed or disliked one of these courses"
    )

    @model_validator(mode="after")
    def _something_asked(self) -> AudienceRequest:
        if not self.categories and not self.tags:
            raise ValueError("give at least one category or tag")
        return self


# --- models -------------------------------------------------------------------------------------


class ModelVersionOut(BaseModel):
    version: str
    status: str = Field(description="active, inactive or rejected")
    created_at: datetime
    activated_at: datetime | None
    params: dict[str, Any] = Field(description="hyperparameters of the fit")
    n_users: int
    n_items: int
    n_events: int
    metrics: dict[str, Any] = Field(description="the candidate's offline metrics on the holdout")
    baseline_metrics: dict[str, Any] = Field(description="the popularity baseline's, same holdout")
    artifact_path: str


class ModelVersionList(BaseModel):
    versions: list[ModelVersionOut]


class TrainRequest(_Strict):
    force: bool = Field(False, description="activate even if worse than the active model")


class JobOut(BaseModel):
    job_id: str
    state: str = Field(description="queued, running, succeeded or failed")
    force: bool
    version: str | None = Field(description="the version trained, once known")
    error: str | None = Field(description="why the job failed")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class FieldError(BaseModel):
    loc: list[str | int] = Field(description='path to the field, e.g. ["events", 7, "type"]')
    field: str = Field(description="the same path as text, e.g. events[7].type")
    msg: str
    type: str | None


class Problem(BaseModel):
    """RFC 9457 problem details, the body of every error (application/problem+json)."""

    type: str
    title: str
    status: int
    detail: str
    errors: list[FieldError] | None = Field(None, description="each invalid field (422)")
    request_id: str | None = Field(
        None, description="the request's X-Request-ID, also sent as that response header"
    )


# --- operations ---------------------------------------------------------------------------------


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str = Field(description="ready or not_ready")
    database: str = Field(description="ok, unreachable or not_migrated")
    schema_revision: str | None
    model: str = Field(description="the version this worker serves, or none_trained")
    model_error: str | None = Field(
        None, description="why the active version could not be loaded (the previous one serves)"
    )
