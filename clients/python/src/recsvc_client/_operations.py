"""One builder per operation of openapi.yaml (named after its operationId): it turns the
method's arguments into a `Call` (method, path, query, JSON body, how to read the answer, when
a retry is safe). The sync and async clients run the same calls; only the sending differs.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ValidationError
from pydantic_core import to_jsonable_python

from recsvc_client.errors import RecsvcError, error_from_response
from recsvc_client.models import (
    Audience,
    AudienceRequest,
    EventIn,
    EventTypes,
    Health,
    IngestResult,
    ItemIn,
    ItemOut,
    ItemWithId,
    JobOut,
    ModelVersionList,
    ModelVersionOut,
    Overview,
    Profile,
    Readiness,
    Recommendations,
    RecommendationsRequest,
    SegmentList,
    SegmentMembers,
    Timeline,
    TrainRequest,
    UpsertResult,
    UserIn,
    UserOut,
)

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

# operationId -> method name on RecsvcClient and AsyncRecsvcClient. They are all equal; a new
# operation in openapi.yaml without an entry here fails tests/test_client.py.
OPERATIONS: dict[str, str] = {
    name: name
    for name in (
        "healthz",
        "readyz",
        "metrics",
        "ingest_events",
        "event_types",
        "put_item",
        "get_item",
        "delete_item",
        "put_items",
        "put_user",
        "get_user",
        "delete_user",
        "train_model",
        "get_training_job",
        "list_models",
        "get_active_model",
        "activate_model",
        "recommend_for_user",
        "recommend",
        "similar_items",
        "popular_items",
        "get_user_profile",
        "list_segments",
        "list_segment_users",
        "item_audience",
        "topic_audience",
        "stats_overview",
        "list_user_events",
    )
}


# --- when a call may be sent again --------------------------------------------------------------


@dataclass(frozen=True)
class RetryOn:
    statuses: frozenset[int]
    errors: tuple[type[httpx.TransportError], ...]


# Any failure to get an answer: the request may or may not have reached the server.
_NO_ANSWER: tuple[type[httpx.TransportError], ...] = (
    httpx.TimeoutException,
    httpx.NetworkError,
    httpx.RemoteProtocolError,
)
# Failures before a byte of the request was sent: the server cannot have acted on it.
_NOT_SENT: tuple[type[httpx.TransportError], ...] = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
)

# Reads, PUT/DELETE, POST /v1/recommendations (read-only) and POST /v1/events (every event has
# an event_id before the first attempt, so a repeat is counted as a duplicate, not stored).
IDEMPOTENT = RetryOn(frozenset({429, 502, 503, 504}), _NO_ANSWER)
# POST /v1/models/train and /activate: sent again only when the server surely did not act on
# the first attempt: the connection was never made, or the answer says so (429, or 503: recsvc
# rolls the transaction back; a proxy answers it without forwarding). Not after a dropped
# connection, a read timeout, 502 or 504: the job may be running (a repeat would get 409), the
# version may be active. RecsvcConnectionError says so; check before sending it again.
UNSENT_ONLY = RetryOn(frozenset({429, 503}), _NOT_SENT)
# GET /readyz: 503 is an answer (not ready), not a reason to wait.
PROBE = RetryOn(frozenset(), _NO_ANSWER)

_ACCEPTED = frozenset({202})
_OK_OR_CREATED = frozenset({200, 201})
_NO_CONTENT = frozenset({204})


@dataclass(frozen=True)
class Call(Generic[T]):
    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    params: tuple[tuple[str, str], ...] = ()
    body: bytes | None = None
    ok: frozenset[int] = frozenset({200})
    retry: RetryOn = IDEMPOTENT

    def finish(self, response: httpx.Response, request_id: str) -> T:
        """The typed result of an answer that will not be retried, or its exception."""
        if response.status_code not in self.ok:
            raise error_from_response(response, request_id)
        try:
            return self.parse(response)
        except (ValidationError, ValueError) as exc:
            if response.is_error:  # e.g. a proxy's 503 page instead of recsvc's readiness
                raise error_from_response(response, request_id) from exc
            raise RecsvcError(
                f"unexpected answer to {self.method} {self.path}: {exc}",
                status=response.status_code,
                title="Unexpected Response",
                request_id=response.headers.get("x-request-id") or request_id,
            ) from exc


def new_id() -> str:
    return str(uuid.uuid4())


def encode(body: Any) -> bytes:
    """Compact UTF-8 JSON (datetimes, models and the like included), as the size limits see it."""
    text = json.dumps(
        to_jsonable_python(body), ensure_ascii=False, separators=(",", ":"), allow_nan=False
    )
    return text.encode("utf-8")


def _segment(name: str, value: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string, not {value!r}")
    return quote(value, safe="")


def _number(name: str, value: int) -> str:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, not {value!r}")
    return str(value)


def _model(model: type[M]) -> Callable[[httpx.Response], M]:
    def parse(response: httpx.Response) -> M:
        return model.model_validate_json(response.content)

    return parse


def _nothing(response: httpx.Response) -> None:
    return None


def _text(response: httpx.Response) -> str:
    return response.text


def _query(**values: Any) -> tuple[tuple[str, str], ...]:
    """Query parameters without the unset ones; a list gives the parameter once per value."""
    out: list[tuple[str, str]] = []
    for name, value in values.items():
        if value is None:
            continue
        for one in value if isinstance(value, list | tuple) else [value]:
            out.append((name, _scalar(one)))
    return tuple(out)


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _labels(value: str | Iterable[str] | None) -> list[str] | None:
    if value is None:
        return None
    return [value] if isinstance(value, str) else list(value)


def _comma_separated(value: str | Iterable[str] | None) -> str | None:
    """`exclude` of the GET routes: comma-separated item ids."""
    if value is None or isinstance(value, str):
        return value
    return ",".join(value)


def _set(**values: Any) -> dict[str, Any]:
    return {name: value for name, value in values.items() if value is not None}


def prepare_event(event: EventIn | Mapping[str, Any]) -> dict[str, Any]:
    """The event as JSON, with an `event_id`. A missing one is filled with a uuid4 IN the given
    dict or Event, so that sending the same objects again after an error is deduplicated too."""
    if isinstance(event, EventIn):
        if event.event_id is None:
            event.event_id = new_id()
        return event.model_dump(mode="json", exclude_none=True)
    if not isinstance(event, Mapping):
        raise TypeError(f"an event is a dict or recsvc_client.Event, not {type(event).__name__}")
    if event.get("event_id") is None:
        if isinstance(event, MutableMapping):
            event["event_id"] = new_id()
        else:
            event = {**event, "event_id": new_id()}
    return dict(event)


def _item(item: ItemWithId | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(item, BaseModel):
        return item.model_dump(mode="json", exclude_unset=True)
    return dict(item)


# --- operations ---------------------------------------------------------------------------------


def healthz() -> Call[Health]:
    """Liveness: the process answers. No key needed."""
    return Call("GET", "/healthz", _model(Health), retry=PROBE)


def readyz() -> Call[Readiness]:
    """Readiness: database reachable and migrated. A 503 answer is returned, not raised:
    check `.ready` (or `.status`, `.database`, `.model`)."""
    return Call("GET", "/readyz", _model(Readiness), ok=frozenset({200, 503}), retry=PROBE)


def metrics() -> Call[str]:
    """Prometheus text format (needs an admin key when RECSVC_METRICS_REQUIRE_KEY=true)."""
    return Call("GET", "/metrics", _text)


def ingest_events(events: Iterable[EventIn | Mapping[str, Any]]) -> Call[IngestResult]:
    """Store one batch of 1..1000 events (the server's RECSVC_MAX_BATCH_SIZE), all or nothing.
    Missing event ids are filled with uuid4s first, so retries are stored once. For any number
    of events use `send_events`."""
    return events_call([encode(prepare_event(event)) for event in events])


def events_call(encoded_events: list[bytes]) -> Call[IngestResult]:
    """POST /v1/events of events already prepared (with ids) and encoded."""
    body = EVENTS_HEAD + b",".join(encoded_events) + EVENTS_TAIL
    return Call("POST", "/v1/events", _model(IngestResult), body=body, ok=_ACCEPTED)


EVENTS_HEAD, EVENTS_TAIL = b'{"events":[', b"]}"


def event_types() -> Call[EventTypes]:
    """The allowed event types and their weights."""
    return Call("GET", "/v1/event-types", _model(EventTypes))


def put_item(
    item_id: str,
    *,
    title: str | None = None,
    description: str | None = None,
    categories: Iterable[str] | None = None,
    tags: Iterable[str] | None = None,
    attributes: Mapping[str, Any] | None = None,
    available: bool | None = None,
    created_at: datetime | None = None,
) -> Call[ItemOut]:
    """Create or replace a course (a field not given gets the server's default)."""
    item = ItemIn(
        **_set(
            title=title,
            description=description,
            categories=_labels(categories),
            tags=_labels(tags),
            attributes=attributes,
            available=available,
            created_at=created_at,
        )
    )
    body = encode(item.model_dump(mode="json", exclude_unset=True))
    path = f"/v1/items/{_segment('item_id', item_id)}"
    return Call("PUT", path, _model(ItemOut), body=body, ok=_OK_OR_CREATED)


def get_item(item_id: str) -> Call[ItemOut]:
    """A course, with its family and the family's other editions."""
    return Call("GET", f"/v1/items/{_segment('item_id', item_id)}", _model(ItemOut))


def delete_item(item_id: str) -> Call[None]:
    """Remove a course from the catalog; it is never recommended again."""
    path = f"/v1/items/{_segment('item_id', item_id)}"
    return Call("DELETE", path, _nothing, ok=_NO_CONTENT)


def put_items(items: Iterable[ItemWithId | Mapping[str, Any]]) -> Call[UpsertResult]:
    """Create or replace 1..1000 courses at once, all or nothing (each with its `item_id`)."""
    body = encode({"items": [_item(item) for item in items]})
    return Call("POST", "/v1/items/batch", _model(UpsertResult), body=body)


def put_user(user_id: str, *, attributes: Mapping[str, Any] | None = None) -> Call[UserOut]:
    """Create or replace a learner's profile attributes."""
    body = encode(UserIn(**_set(attributes=attributes)).model_dump(mode="json"))
    path = f"/v1/users/{_segment('user_id', user_id)}"
    return Call("PUT", path, _model(UserOut), body=body, ok=_OK_OR_CREATED)


def get_user(user_id: str) -> Call[UserOut]:
    """A learner's profile with event counts per type."""
    return Call("GET", f"/v1/users/{_segment('user_id', user_id)}", _model(UserOut))


def delete_user(user_id: str) -> Call[None]:
    """Right to be forgotten: erase the learner's profile and all of their events (admin)."""
    path = f"/v1/users/{_segment('user_id', user_id)}"
    return Call("DELETE", path, _nothing, ok=_NO_CONTENT)


def train_model(*, force: bool = False) -> Call[JobOut]:
    """Start a training job (admin); poll with `get_training_job` or `wait_for_training_job`.
    Not sent again after a dropped connection (see RecsvcConnectionError)."""
    body = encode(TrainRequest(force=force).model_dump(mode="json"))
    return Call(
        "POST", "/v1/models/train", _model(JobOut), body=body, ok=_ACCEPTED, retry=UNSENT_ONLY
    )


def get_training_job(job_id: str) -> Call[JobOut]:
    """A training job: queued, running, succeeded or failed (with `error`)."""
    return Call("GET", f"/v1/models/jobs/{_segment('job_id', job_id)}", _model(JobOut))


def list_models() -> Call[ModelVersionList]:
    """Model versions, newest first, with parameters, data sizes, offline metrics, status."""
    return Call("GET", "/v1/models", _model(ModelVersionList))


def get_active_model() -> Call[ModelVersionOut]:
    """The active version (NotFound before the first)."""
    return Call("GET", "/v1/models/active", _model(ModelVersionOut))


def activate_model(version: str) -> Call[ModelVersionOut]:
    """Serve this version (admin; roll back or forward). Not sent again after a dropped
    connection."""
    path = f"/v1/models/{_segment('version', version)}/activate"
    return Call("POST", path, _model(ModelVersionOut), retry=UNSENT_ONLY)


def recommend_for_user(
    user_id: str,
    *,
    n: int = 10,
    category: str | Iterable[str] | None = None,
    exclude: str | Iterable[str] | None = None,
    explain: bool = False,
    max_per_family: int | None = None,
    diversity: float | None = None,
) -> Call[Recommendations]:
    """Top-n for a learner, their newest events included; an unknown learner gets the popular
    list. `category`: only items in one of these; `exclude`: item ids (a list, or the
    comma-separated text)."""
    params = _query(
        n=n,
        category=_labels(category),
        exclude=_comma_separated(exclude),
        explain=explain,
        max_per_family=max_per_family,
        diversity=diversity,
    )
    path = f"/v1/users/{_segment('user_id', user_id)}/recommendations"
    return Call("GET", path, _model(Recommendations), params=params)


def recommend(
    *,
    user_id: str | None = None,
    session_items: Iterable[str] | None = None,
    query: str | None = None,
    n: int = 10,
    categories: Iterable[str] | None = None,
    exclude: Iterable[str] | None = None,
    explain: bool = False,
    max_per_family: int | None = None,
    diversity: float | None = None,
) -> Call[Recommendations]:
    """The chatbot's call: a known or anonymous learner, the items looked at in this
    conversation (`session_items`) and what they typed (`query`). Read-only, so retried."""
    request = RecommendationsRequest(
        **_set(
            user_id=user_id,
            session_items=_labels(session_items),
            query=query,
            n=n,
            categories=_labels(categories),
            exclude=_labels(exclude),
            explain=explain,
            max_per_family=max_per_family,
            diversity=diversity,
        )
    )
    body = encode(request.model_dump(mode="json", exclude_unset=True))
    return Call("POST", "/v1/recommendations", _model(Recommendations), body=body)


def similar_items(
    item_id: str,
    *,
    n: int = 10,
    category: str | Iterable[str] | None = None,
    exclude: str | Iterable[str] | None = None,
    max_per_family: int | None = None,
) -> Call[Recommendations]:
    """Items like this one (by behaviour, or by text for courses newer than the model)."""
    params = _query(
        n=n,
        category=_labels(category),
        exclude=_comma_separated(exclude),
        max_per_family=max_per_family,
    )
    path = f"/v1/items/{_segment('item_id', item_id)}/similar"
    return Call("GET", path, _model(Recommendations), params=params)


def popular_items(
    *,
    n: int = 10,
    category: str | Iterable[str] | None = None,
    window_days: float | None = None,
    exclude: str | Iterable[str] | None = None,
    max_per_family: int | None = None,
) -> Call[Recommendations]:
    """Trending courses: distinct learners per course in the window (default: the model's)."""
    params = _query(
        n=n,
        category=_labels(category),
        window_days=window_days,
        exclude=_comma_separated(exclude),
        max_per_family=max_per_family,
    )
    return Call("GET", "/v1/popular", _model(Recommendations), params=params)


# --- learners: portraits, segments, audiences (all read-only, so retried) ----------------------


def get_user_profile(user_id: str, *, tz: str | None = None) -> Call[Profile]:
    """Who is this learner: interests, study habits (hours and weekdays in `tz`, an IANA name
    such as "Asia/Shanghai"; default UTC), journey, segment and labels, computed now from all
    of their events. NotFound for a learner with no profile and no events (or erased)."""
    path = f"/v1/users/{_segment('user_id', user_id)}/profile"
    return Call("GET", path, _model(Profile), params=_query(tz=tz))


def list_segments() -> Call[SegmentList]:
    """The learner segments of the active model (an empty list before the first model)."""
    return Call("GET", "/v1/segments", _model(SegmentList))


def list_segment_users(
    segment_id: int, *, limit: int = 100, cursor: str | None = None
) -> Call[SegmentMembers]:
    """One page of a segment's learners; pass `next_cursor` as `cursor` for the next (None:
    done). Conflict when another model was activated since the first page: start again. For
    all of them use `iter_segment_users`."""
    path = f"/v1/segments/{_number('segment_id', segment_id)}/users"
    return Call("GET", path, _model(SegmentMembers), params=_query(limit=limit, cursor=cursor))


def item_audience(item_id: str, *, n: int = 100) -> Call[Audience]:
    """The learners most likely to take this course, best first (not those who consumed or
    disliked it). Conflict before the first model."""
    path = f"/v1/items/{_segment('item_id', item_id)}/audience"
    return Call("GET", path, _model(Audience), params=_query(n=n))


def topic_audience(
    *,
    categories: Iterable[str] | None = None,
    tags: Iterable[str] | None = None,
    n: int = 100,
    exclude_consumed: bool = True,
) -> Call[Audience]:
    """The learners most likely to take courses of these categories or tags (at least one),
    best first. Conflict before the first model. Read-only, so retried."""
    request = AudienceRequest(
        **_set(
            categories=_labels(categories),
            tags=_labels(tags),
            n=n,
            exclude_consumed=exclude_consumed,
        )
    )
    body = encode(request.model_dump(mode="json", exclude_unset=True))
    return Call("POST", "/v1/audiences", _model(Audience), body=body)


# --- the dashboard's reads (read-only, so retried) ----------------------------------------------


def stats_overview() -> Call[Overview]:
    """What the dashboard's overview shows, in one call: events per hour and type (7 days),
    totals, readiness, the active model against the popularity baseline, lists served by
    strategy, fresh users, and the scopes of the key that asked."""
    return Call("GET", "/v1/stats/overview", _model(Overview))


def list_user_events(user_id: str, *, limit: int = 50) -> Call[Timeline]:
    """A learner's newest events (1..200) with course titles, newest first. NotFound for a
    learner with no profile and no events (or erased)."""
    path = f"/v1/users/{_segment('user_id', user_id)}/events"
    return Call("GET", path, _model(Timeline), params=_query(limit=limit))
