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
    "Edition",
    "Event",
    "EventBatch",
    "EventIn",
    "EventTypes",
    "FieldError",
    "Health",
    "IngestResult",
    "ItemBatch",
    "ItemIn",
    "ItemOut",
    "ItemWithId",
    "JobOut",
    "ModelVersionList",
    "ModelVersionOut",
    "Problem",
    "Readiness",
    "Reason",
    "Recommendations",
    "RecommendationsRequest",
    "RecommendedItem",
    "TrainRequest",
    "UpsertResult",
    "UserIn",
    "UserOut",
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
