"""Request and response bodies of the recsvc HTTP API, mirroring `components/schemas` of the
service's openapi.yaml (one class per schema, same name, same fields, same required fields;
tests/test_client.py fails when they drift apart).

Responses ignore fields they do not know, so a newer server does not break an older client.
Requests refuse unknown fields, so a typo fails here instead of as a 422 from the server. The
server owns validation of values (lengths, ranges, allowed event types): the client checks
types only, and the server's 422 names every invalid field (`RecsvcError.errors`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "ActiveModel",
    "Activity",
    "ActivityWindow",
    "Audience",
    "AudienceMember",
    "AudienceRequest",
    "Course",
    "Edition",
    "Event",
    "EventBatch",
    "EventIn",
    "EventTypes",
    "FieldError",
    "Health",
    "HourShare",
    "HourlySeries",
    "IngestResult",
    "Interest",
    "Interests",
    "ItemBatch",
    "ItemIn",
    "ItemOut",
    "ItemWithId",
    "JobOut",
    "Journey",
    "LabelLift",
    "LearnerLabel",
    "ModelVersionList",
    "ModelVersionOut",
    "OpenIntent",
    "Overview",
    "Problem",
    "Profile",
    "Readiness",
    "Reason",
    "Recommendations",
    "RecommendationsRequest",
    "RecommendedItem",
    "SegmentCourse",
    "SegmentList",
    "SegmentMembers",
    "SegmentOut",
    "SegmentRef",
    "Timeline",
    "TimelineEvent",
    "TrainRequest",
    "UpsertResult",
    "UserIn",
    "UserOut",
    "WeekdayShare",
]


class _Response(BaseModel):
    """A body the server sends: unknown (newer) fields are ignored."""

    model_config = ConfigDict(extra="ignore", protected_namespaces=())


class _Request(BaseModel):
    """A body the client sends: unknown fields are refused."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())


# --- events -------------------------------------------------------------------------------------


class EventIn(_Request):
    """One behaviour event. `event_id` is the idempotency key: the client fills a missing one
    with a uuid4 before the first attempt, so a retried batch is stored once."""

    event_id: str | None = None
    user_id: str
    item_id: str
    type: str = Field(description="one of the configured event types (GET /v1/event-types)")
    value: float | None = Field(None, description="e.g. a rating 1..5 (required for `rate`)")
    timestamp: datetime | None = Field(
        None, description="timezone-aware; default: when recsvc received it"
    )
    context: dict[str, Any] | None = Field(None, description="free object, at most 4 KiB as JSON")


Event = EventIn
"""The name to use in application code."""


class EventBatch(_Request):
    events: list[EventIn]


class IngestResult(_Response):
    accepted: int = Field(description="events stored by this request")
    duplicates: int = Field(description="events whose event_id was already stored")


class EventTypes(_Response):
    types: dict[str, float] = Field(description="allowed event types and their weights")
    rating_type: str
    negative_types: list[str]


# --- catalog ------------------------------------------------------------------------------------


class ItemIn(_Request):
    title: str = ""
    description: str = ""
    categories: list[str] = Field(default_factory=list)
    tags: list[str] = Field(default_factory=list)
    attributes: dict[str, Any] = Field(default_factory=dict, description="price, level, ...")
    available: bool = Field(True, description="unavailable items are never recommended")
    created_at: datetime | None = Field(
        None, description="when the course was created; default: when first stored"
    )


class ItemWithId(ItemIn):
    item_id: str


class ItemBatch(_Request):
    items: list[ItemWithId]


class ItemOut(_Response):
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
        None, description="the course family this item is an edition of; null: no other edition"
    )
    editions: list[str] = Field(
        default_factory=list, description="the family's other items (any availability)"
    )


class UpsertResult(_Response):
    upserted: int


class UserIn(_Request):
    attributes: dict[str, Any] = Field(default_factory=dict, description="free profile object")


class UserOut(_Response):
    user_id: str
    attributes: dict[str, Any]
    created_at: datetime | None = Field(description="null for a user known only from events")
    updated_at: datetime | None
    n_events: int = 0
    event_counts: dict[str, int] = Field(default_factory=dict, description="events per type")


# --- recommendations ----------------------------------------------------------------------------


class RecommendationsRequest(_Request):
    """The chatbot's call, with what it knows of the conversation."""

    user_id: str | None = Field(None, description="the learner, if known")
    session_items: list[str] = Field(
        default_factory=list, description="items looked at in this conversation"
    )
    query: str | None = Field(None, description="free text the learner typed")
    n: int = 10
    categories: list[str] | None = Field(None, description="any of these")
    exclude: list[str] = Field(default_factory=list)
    explain: bool = Field(False, description="add `reasons` to each item")
    max_per_family: int | None = None
    diversity: float | None = None


class Reason(_Response):
    item_id: str = Field(description="one of the user's own items")
    title: str
    weight: float = Field(description="its contribution to the score")


class Edition(_Response):
    item_id: str
    title: str


class RecommendedItem(_Response):
    item_id: str
    score: float = Field(description="ranking score; its scale depends on the strategy")
    title: str
    reasons: list[Reason] | None = Field(None, description="only when explain=true")
    editions: list[Edition] | None = Field(
        None, description="other recommendable editions of this course (same family)"
    )


class Recommendations(_Response):
    user_id: str | None
    model_version: str | None = Field(description="null before the first model is trained")
    strategy: str = Field(
        description="als, als_foldin, query, popular or content, maybe with '+popular'"
    )
    degraded: bool = Field(
        description="true when the database was unreachable: the list comes from the model in "
        "memory without the learner's newest events (or from an older popular list)"
    )
    items: list[RecommendedItem]


# --- models -------------------------------------------------------------------------------------


class ModelVersionOut(_Response):
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


class ModelVersionList(_Response):
    versions: list[ModelVersionOut]


class TrainRequest(_Request):
    force: bool = Field(False, description="activate even if worse than the active model")


class JobOut(_Response):
    job_id: str
    state: str = Field(description="queued, running, succeeded or failed")
    force: bool
    version: str | None = Field(description="the version trained, once known")
    error: str | None = Field(description="why the job failed")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @property
    def finished(self) -> bool:
        return self.state in ("succeeded", "failed")


# --- learners: portraits, segments, audiences ---------------------------------------------------


class Interest(_Response):
    name: str = Field(description="a category or tag")
    affinity: float = Field(
        description="share of the learner's interaction weight (0..1) on courses with it"
    )
    evidence: int = Field(description="the learner's events behind it")


class Interests(_Response):
    categories: list[Interest] = Field(description="top 10, strongest first")
    tags: list[Interest] = Field(description="top 10, strongest first")


class ActivityWindow(_Response):
    days: int = Field(description="7, 30 or 90: the window, ending now")
    active_days: int = Field(description="days with at least one event")
    events: dict[str, int] = Field(description="events per type")


class HourShare(_Response):
    hour: int = Field(description="0..23, in the profile's timezone")
    share: float = Field(description="of all the learner's events")


class WeekdayShare(_Response):
    weekday: str = Field(description="Mon .. Sun")
    share: float


class Activity(_Response):
    first_seen: datetime | None
    last_seen: datetime | None
    days_since_last_seen: float | None
    usual_gap_days: float | None = Field(
        description="median days between two consecutive active days; null with one active day"
    )
    windows: list[ActivityWindow]
    hours: list[HourShare] = Field(description="the three hours they are most often active")
    weekdays: list[WeekdayShare] = Field(description="the three weekdays they are most active")
    timezone: str = Field(description="of hours and weekdays (argument tz)")


class Course(_Response):
    item_id: str
    title: str
    types: list[str] = Field(description="the learner's event types on it")
    last_at: datetime


class OpenIntent(Course):
    since: datetime = Field(description="first favourite or add-to-cart")
    days_open: float


class Journey(_Response):
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


class SegmentRef(_Response):
    segment_id: int
    label: str


class LearnerLabel(_Response):
    label: str = Field(description="new, at_risk, high_intent, completer or price_sensitive")
    rule: str = Field(description="the rule that fired, with the learner's figures")


class Profile(_Response):
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


class LabelLift(_Response):
    name: str
    share: float = Field(description="of the segment's interaction weight")
    lift: float = Field(description="share / the same share over all learners")


class SegmentCourse(_Response):
    item_id: str
    title: str
    learners: int = Field(description="learners of the segment with this course")


class SegmentOut(_Response):
    segment_id: int
    label: str = Field(description="made from its top categories")
    size: int = Field(description="learners now (erased learners no longer count)")
    categories: list[LabelLift] = Field(description="over-represented categories, by lift")
    tags: list[LabelLift] = Field(description="over-represented tags, by lift")
    top_courses: list[SegmentCourse]


class SegmentList(_Response):
    model_version: str | None = Field(description="null before the first model")
    segments: list[SegmentOut] = Field(description="empty before the first model")


class SegmentMembers(_Response):
    segment_id: int
    model_version: str
    users: list[str]
    next_cursor: str | None = Field(description="pass as cursor for the next page; null: done")


class AudienceRequest(_Request):
    """POST /v1/audiences: at least one category or tag."""

    categories: list[str] = Field(default_factory=list)
    tags: list[str] = Field(default_factory=list)
    n: int = 100
    exclude_consumed: bool = Field(
        True, description="leave out learners who consumed or disliked one of these courses"
    )


class AudienceMember(_Response):
    user_id: str
    score: float = Field(description="factor score; higher: more likely")


class Audience(_Response):
    model_version: str
    item_id: str | None = Field(description="the course (item_audience); null for topic_audience")
    strategy: str = Field(
        description="als: the course's factors; content: its text-similar courses' factors "
        "(a course newer than the model); topic: the courses of the categories and tags"
    )
    basis: int = Field(description="model courses whose factors were used")
    users: list[AudienceMember]


# --- errors and operations ----------------------------------------------------------------------


class FieldError(_Response):
    loc: list[str | int] = Field(description='path to the field, e.g. ["events", 7, "type"]')
    field: str = Field(description="the same path as text, e.g. events[7].type")
    msg: str
    type: str | None


class Problem(_Response):
    """RFC 9457 problem details, the body of every error (application/problem+json)."""

    type: str
    title: str
    status: int
    detail: str
    errors: list[FieldError] | None = Field(None, description="each invalid field (422)")
    request_id: str | None = Field(
        None, description="the request's X-Request-ID, also sent as that response header"
    )


class Health(_Response):
    status: str


class Readiness(_Response):
    status: str = Field(description="ready or not_ready")
    database: str = Field(description="ok, unreachable or not_migrated")
    schema_revision: str | None
    model: str = Field(description="the version this worker serves, or none_trained")
    model_error: str | None = Field(
        None, description="why the active version could not be loaded (the previous one serves)"
    )

    @property
    def ready(self) -> bool:
        return self.status == "ready"


# --- the dashboard's reads ----------------------------------------------------------------------


class HourlySeries(_Response):
    """Events per hour and type as columns: `counts[type][i]` events of `type` occurred in the
    UTC hour starting at `start` + i hours. The last 24 entries are the last 24 hours."""

    start: datetime = Field(description="the first hour (UTC), 167 hours before the current one")
    hours: int = Field(description="entries per type (168: 7 days, the current hour last)")
    counts: dict[str, list[int]] = Field(description="per event type, oldest hour first")


class ActiveModel(_Response):
    version: str
    created_at: datetime
    activated_at: datetime | None
    age_seconds: float = Field(description="seconds since it was trained")
    ndcg_at_10: float | None = Field(description="offline ndcg@10 on the holdout")
    baseline_ndcg_at_10: float | None = Field(description="the popularity baseline's")
    n_users: int
    n_items: int
    n_events: int


class Overview(_Response):
    """The dashboard's overview, read in one call."""

    generated_at: datetime
    key_scopes: list[str] = Field(description="the scopes of the key that asked")
    readiness: Readiness = Field(description="as GET /readyz answers it")
    events_total: int = Field(description="stored events (the hourly rollup's sum)")
    learners_total: int | None = Field(
        description="distinct learners with events; null until the first count finishes"
    )
    learners_counted_at: datetime | None
    courses_total: int = Field(description="courses in the catalog (not deleted)")
    events_per_hour: HourlySeries = Field(
        description="the last 7 days by hour of occurrence (the hourly rollup)"
    )
    active_model: ActiveModel | None
    recommendations_by_strategy: dict[str, float] = Field(
        description="lists served since the server started, summed over its workers"
    )
    fresh_users: int = Field(
        description="this worker's fresh-users set (events newer than the model)"
    )


class TimelineEvent(_Response):
    event_id: str | None
    item_id: str
    title: str = Field(description="the course's title, empty when it is not in the catalog")
    type: str
    value: float | None
    occurred_at: datetime
    received_at: datetime


class Timeline(_Response):
    user_id: str
    events: list[TimelineEvent] = Field(description="newest first")
