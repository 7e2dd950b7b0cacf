"""What the dashboard's overview and learner pages read (GET /v1/stats/overview,
GET /v1/users/{id}/events): bounded queries only, so they answer in milliseconds on a large
events table (docs/design.md section 11).

* Events per hour and type come from `event_counts_hourly`, the rollup kept in the ingest
  transaction (ingest.count_hourly): at most 24 * 7 rows per type for the 7-day chart, and the
  event total is the rollup's sum.
* The number of learners is the row count of `event_learners` (each learner with stored events,
  once; kept by the same transactions), which is an index scan: it is counted in the background
  when the last count is over LEARNER_COUNT_TTL_SECONDS old and someone asks, and reported with
  the time it was counted (`learners_counted_at`); a request never waits for it more than
  LEARNER_COUNT_WAIT_SECONDS.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client import multiprocess as _multiprocess
from pydantic import BaseModel, Field
from sqlalchemy import delete, func, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from recsvc import metrics
from recsvc.ingest import EVENTS, HOURLY, ITEMS, LEARNERS, as_utc, utcnow
from recsvc.schemas import Readiness

LEARNER_COUNT_TTL_SECONDS = 10.0
# How long a request waits for a learner count it started before answering without one.
LEARNER_COUNT_WAIT_SECONDS = 0.1
MAX_TIMELINE_EVENTS = 200


HOURS = 24 * 7  # the overview's longest chart


class HourlySeries(BaseModel):
    """Events per hour and type as columns: `counts[type][i]` events of `type` occurred in the
    UTC hour starting at `start` + i hours. The last 24 entries are the last 24 hours."""

    start: datetime = Field(description="the first hour (UTC), 167 hours before the current one")
    hours: int = Field(description="entries per type (168: 7 days, the current hour last)")
    counts: dict[str, list[int]] = Field(description="per event type, oldest hour first")


class ActiveModel(BaseModel):
    version: str
    created_at: datetime
    activated_at: datetime | None
    age_seconds: float = Field(description="seconds since it was trained")
    ndcg_at_10: float | None = Field(description="offline ndcg@10 on the holdout")
    baseline_ndcg_at_10: float | None = Field(description="the popularity baseline's")
    n_users: int
    n_items: int
    n_events: int


class Overview(BaseModel):
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


class TimelineEvent(BaseModel):
    event_id: str | None
    item_id: str
    title: str = Field(description="the course's title, empty when it is not in the catalog")
    type: str
    value: float | None
    occurred_at: datetime
    received_at: datetime


class Timeline(BaseModel):
    user_id: str
    events: list[TimelineEvent] = Field(description="newest first")


async def hourly_series(session: AsyncSession, now: datetime) -> HourlySeries:
    """The last HOURS hours of the rollup, the current one included: a range read of its
    primary key (at most HOURS rows per event type)."""
    current = now.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    start = current - timedelta(hours=HOURS - 1)
    rows = await session.execute(
        select(HOURLY.c.hour, HOURLY.c.type, HOURLY.c.count).where(
            HOURLY.c.hour >= start, HOURLY.c.hour <= current
        )
    )
    counts: dict[str, list[int]] = {}
    for hour, kind, count in rows:
        index = int((as_utc(hour) - start).total_seconds()) // 3600
        if count > 0 and 0 <= index < HOURS:
            counts.setdefault(kind, [0] * HOURS)[index] += int(count)
    return HourlySeries(start=start, hours=HOURS, counts=dict(sorted(counts.items())))


# The rollup recomputed from the events as migration 0005 backfills it (by ranges of the
# events' primary key: no statement runs long), for data written around insert_events, e.g.
# COPY into a benchmark's database.
_HOUR = {
    "postgresql": "date_trunc('hour', occurred_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'",
    "sqlite": "substr(occurred_at, 1, 13) || ':00:00.000000'",
}
_CHUNK = 500_000
_ROLLUP = (
    "INSERT INTO event_counts_hourly (hour, type, count) "
    "SELECT {hour}, type, count(*) FROM events WHERE id > :low AND id <= :high GROUP BY 1, 2 "
    "ON CONFLICT (hour, type) DO UPDATE SET count = event_counts_hourly.count + excluded.count"
)
_LEARNERS = (
    "INSERT INTO event_learners (user_id) "
    "SELECT DISTINCT user_id FROM events WHERE id > :low AND id <= :high "
    "ON CONFLICT (user_id) DO NOTHING"
)


async def rebuild_rollup(session: AsyncSession) -> None:
    """Recount event_counts_hourly and event_learners from the events, in the caller's
    transaction."""
    await session.execute(delete(HOURLY))
    await session.execute(delete(LEARNERS))
    rollup = text(_ROLLUP.format(hour=_HOUR[session.bind.dialect.name]))
    highest = await session.scalar(select(func.max(EVENTS.c.id))) or 0
    for low in range(0, highest, _CHUNK):
        bounds = {"low": low, "high": low + _CHUNK}
        await session.execute(rollup, bounds)
        await session.execute(text(_LEARNERS), bounds)


async def events_total(session: AsyncSession) -> int:
    return int(await session.scalar(select(func.coalesce(func.sum(HOURLY.c.count), 0))) or 0)


async def courses_total(session: AsyncSession) -> int:
    query = select(func.count()).select_from(ITEMS).where(ITEMS.c.deleted_at.is_(None))
    return int(await session.scalar(query) or 0)


class LearnerCount:
    """The rows of event_learners, counted in the background when the last count is older than
    the TTL and someone asks; one count at a time per worker."""

    def __init__(
        self, sessionmaker: async_sessionmaker[AsyncSession], background: set[asyncio.Task[Any]]
    ) -> None:
        self.sessionmaker = sessionmaker
        self.background = background  # the app's: cancelled when it shuts down
        self.value: int | None = None
        self.counted_at: datetime | None = None
        self._monotonic = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _count(self) -> None:
        async with self.sessionmaker() as session:
            value = await session.scalar(select(func.count()).select_from(LEARNERS))
        self.value, self.counted_at = int(value or 0), utcnow()
        self._monotonic = time.monotonic()

    async def get(self) -> tuple[int | None, datetime | None]:
        stale = self.value is None or time.monotonic() - self._monotonic > LEARNER_COUNT_TTL_SECONDS
        if stale and (self._task is None or self._task.done()):
            self._task = asyncio.create_task(self._count())
            self.background.add(self._task)
            self._task.add_done_callback(self.background.discard)
        if self.value is None and self._task is not None:
            # The first count: worth a short wait, so a small deployment shows it at once.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._task), LEARNER_COUNT_WAIT_SECONDS)
        return self.value, self.counted_at


def recommendations_by_strategy() -> dict[str, float]:
    """recsvc_recommendations_total per strategy, summed over the server's workers (the same
    numbers a /metrics scrape shows)."""
    directory = os.environ.get(metrics.MULTIPROC_ENV)
    registry: Any = REGISTRY
    if directory:
        registry = CollectorRegistry()
        _multiprocess.MultiProcessCollector(registry, path=directory)
    totals: dict[str, float] = {}
    for family in registry.collect():
        if family.name != "recsvc_recommendations":
            continue
        for sample in family.samples:
            if sample.name == "recsvc_recommendations_total":
                strategy = sample.labels["strategy"]
                totals[strategy] = totals.get(strategy, 0.0) + sample.value
    return dict(sorted(totals.items()))


def active_model(version: Any) -> ActiveModel | None:
    """The overview's card of the active version (a schemas.ModelVersionOut), or None."""
    if version is None:
        return None

    def ndcg(values: dict[str, Any]) -> float | None:
        value = values.get("ndcg@10")
        return float(value) if isinstance(value, int | float) else None

    created = as_utc(version.created_at)
    return ActiveModel(
        version=version.version,
        created_at=created,
        activated_at=version.activated_at,
        age_seconds=round((utcnow() - created).total_seconds(), 1),
        ndcg_at_10=ndcg(version.metrics),
        baseline_ndcg_at_10=ndcg(version.baseline_metrics),
        n_users=version.n_users,
        n_items=version.n_items,
        n_events=version.n_events,
    )


async def timeline(session: AsyncSession, user_id: str, limit: int) -> list[TimelineEvent]:
    """The learner's newest events (by occurrence), with course titles: one indexed query on
    (user_id, ...) and a join to the catalog's primary key."""
    query = (
        select(
            EVENTS.c.event_id,
            EVENTS.c.item_id,
            func.coalesce(ITEMS.c.title, "").label("title"),
            EVENTS.c.type,
            EVENTS.c.value,
            EVENTS.c.occurred_at,
            EVENTS.c.received_at,
        )
        .select_from(EVENTS.outerjoin(ITEMS, ITEMS.c.id == EVENTS.c.item_id))
        .where(EVENTS.c.user_id == user_id)
        .order_by(EVENTS.c.occurred_at.desc(), EVENTS.c.id.desc())
        .limit(limit)
    )
    return [
        TimelineEvent(
            event_id=r.event_id,
            item_id=r.item_id,
            title=r.title,
            type=r.type,
            value=r.value,
            occurred_at=as_utc(r.occurred_at),
            received_at=as_utc(r.received_at),
        )
        for r in await session.execute(query)
    ]
