"""What one serving worker holds: the active model's scorer, a view of the catalog, and the
batcher that scores concurrent requests together.

* Hot swap: every worker polls `model_versions` (RECSVC_MODEL_POLL_SECONDS, default 2 s) and,
  when another version is active, loads it in a thread and swaps one reference, `live` (the
  scorer, its events cutoff and its version together). A request reads `live` once and uses
  that for its fold-in query, its scoring and the version it reports, so a request caught in a
  swap is answered wholly by one model; none fails. An artifact that is missing or corrupt is
  refused (logged, counted in recsvc_model_load_failures_total) and the previous model keeps
  serving.
* Catalog and erasure: the `revisions` counters (bumped in the transaction of every catalog
  write and every erasure; no clocks involved) are read on the same poll. A changed catalog is
  re-read (titles, categories, unrecommendable items); a changed erased list makes the scorer
  forget those learners' model rows (scorer.Scorer.forget), also in every model loaded later,
  so a rollback does not bring them back. A write through this worker applies at once, other
  workers within one poll.
* Batching: requests that arrive while a batch is being scored wait and are scored together in
  one matrix product (scorer.Scorer.recommend), in a worker thread so the event loop keeps
  accepting requests meanwhile; a second thread helps with small batches. A batch holds
  requests of one model only, and when it fails its requests are scored one by one, so one bad
  request fails alone.
* Freshness: a user's events that the model does not hold (ingest.Cutoff) come from one
  indexed query, run only for users that may have any (freshness.FreshUsers, kept by
  LISTEN/NOTIFY on PostgreSQL).
* The GIL: the event loop and the scorer thread take turns holding it. With Python's default
  switch interval (5 ms) a thread that wants it may wait that long for the other to let go;
  the app sets SWITCH_INTERVAL_SECONDS for the serving process instead (bench/serve.py with
  16 connections, when every request still queried: 830 recommendations/s at 5 ms, 910 at
  0.5 ms, 1,060-1,210 at 0.1 ms, 1,030 at 0.05 ms).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from recsvc import artifact, db, ingest, metrics, registry
from recsvc.config import Settings
from recsvc.errors import ServiceUnavailable, is_database_unavailable
from recsvc.freshness import FreshUsers
from recsvc.ingest import Cutoff
from recsvc.pipeline import catalog_families, feature_config
from recsvc.portrait import LabelRules, PortraitConfig, price_of
from recsvc.scorer import (
    CatalogView,
    RecentEvent,
    Recommendation,
    RecommendRequest,
    RecommendResult,
    Scorer,
)

log = logging.getLogger("recsvc.serving")

MAX_BATCH = 64
SWITCH_INTERVAL_SECONDS = 0.0001
POPULAR_CACHE_SECONDS = 30.0
POPULAR_CANDIDATES = 1000
# Windows (whole days) whose popular lists a worker keeps; the least recently used goes first.
POPULAR_CACHE_WINDOWS = 16


@dataclass(frozen=True)
class Live:
    """The model a worker serves: taken once per request, replaced whole by a swap."""

    scorer: Scorer
    cutoff: Cutoff | None  # which events the model holds; the others are folded in
    # The `erasure` revision its training snapshot saw (None: unknown, an older model): the
    # learners erased later may have rows in it.
    erasure_revision: int | None = None

    def forget_erased(self, erased: dict[str, int]) -> None:
        """Make the scorer forget every listed learner its model may hold."""
        seen = self.erasure_revision
        self.scorer.forget(u for u, revision in erased.items() if seen is None or revision > seen)

    @property
    def version(self) -> str | None:
        return self.scorer.version


class _Pending:
    """One request waiting for its batch."""

    __slots__ = ("request", "scorer", "future")

    def __init__(
        self, request: RecommendRequest, scorer: Scorer, future: asyncio.Future[RecommendResult]
    ) -> None:
        self.request, self.scorer, self.future = request, scorer, future


def catalog_view(items: list[ingest.CatalogItem], settings: Settings) -> CatalogView:
    """What the scorer needs of the catalog, with its course families detected (CPU work: run
    it in a thread; once per catalog change, never per request)."""
    family_of = catalog_families(settings, items)
    members: dict[str, list[str]] = {}
    for item_id, family in family_of.items():
        members.setdefault(family, []).append(item_id)
    return CatalogView(
        titles={item.item_id: item.title for item in items},
        categories={item.item_id: frozenset(item.categories) for item in items},
        unrecommendable=frozenset(i.item_id for i in items if not i.recommendable),
        families=family_of,
        family_members={family: tuple(ids) for family, ids in members.items()},
        tags={item.item_id: frozenset(item.text[2]) for item in items},
        prices={
            item.item_id: price
            for item in items
            if (price := price_of(item.attributes)) is not None
        },
    )


class Serving:
    def __init__(
        self,
        settings: Settings,
        engine: AsyncEngine,
        sessionmaker: async_sessionmaker[AsyncSession],
    ) -> None:
        self.settings = settings
        self._recent_events = ingest.RecentEventsReader(
            engine, db.connection_budget(settings).read_pool
        )
        self.fresh_users = FreshUsers(engine, settings.fresh_users_max)
        self.engine = engine
        self.sessionmaker = sessionmaker
        self._features = feature_config(settings)
        self._consumed = frozenset(settings.consumed_event_types)
        self._ann_probes = settings.ann_probes
        self.portrait_config = PortraitConfig(
            features=self._features,
            consumed_types=self._consumed,
            half_life_days=settings.profile_half_life_days,
            rules=LabelRules(
                new_days=settings.label_new_days,
                at_risk_gap_factor=settings.label_at_risk_gap_factor,
                at_risk_min_days=settings.label_at_risk_min_days,
                high_intent_days=settings.label_high_intent_days,
                completer_min_courses=settings.label_completer_min_courses,
                completer_min_ratio=settings.label_completer_min_ratio,
                price_sensitive_ratio=settings.label_price_sensitive_ratio,
            ),
        )
        self.live = Live(Scorer.empty(self._features, self._consumed), None)
        self.catalog = CatalogView()
        self._revisions: dict[str, int] | None = None
        # The erased list (user -> revision of the erasure), applied to every model loaded.
        self.erased: dict[str, int] = {}
        self.load_error: str | None = None
        self._failed_version: str | None = None
        self._pending: list[_Pending] = []
        self._draining = False
        self._popular_cache: OrderedDict[int, tuple[float, list[tuple[str, int]]]] = OrderedDict()
        self._popular_lock = asyncio.Lock()
        # One thread: batches are scored one after another. A second one helps with the matrix
        # product of small batches (the `helper` of scorer.Scorer.recommend).
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scorer")
        self._helper = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scorer-helper")

    @property
    def scorer(self) -> Scorer:
        return self.live.scorer

    @property
    def version(self) -> str | None:
        return self.live.version

    # --- model and catalog ----------------------------------------------------------------------

    async def refresh(self) -> None:
        """One poll: pick up a newly activated model, erasures and catalog changes."""
        await self.refresh_changes()
        await self.refresh_model()
        await self.fresh_users.track(self.live.cutoff)

    def observe(self) -> None:
        """Set this worker's gauges (each poll and each scrape)."""
        metrics.FRESH_USERS.set(self.fresh_users.size)
        pool = self.engine.pool
        checked_out = getattr(pool, "checkedout", None)
        metrics.DB_CONNECTIONS_IN_USE.labels("sqlalchemy").set(
            checked_out() if checked_out is not None else 0
        )
        metrics.DB_CONNECTIONS_IN_USE.labels("recent_events").set(self._recent_events.in_use)

    async def refresh_model(self) -> None:
        async with self.sessionmaker() as session:
            active = await registry.active_version(session)
        if active is None or active.version in (self.version, self._failed_version):
            return
        started = time.perf_counter()
        try:
            live = await asyncio.get_running_loop().run_in_executor(
                None, self._load, registry.artifact_dir(self.settings.models_dir, active)
            )
        except artifact.ArtifactError as exc:
            # Keep serving what we have; try again only when another version is activated.
            self._failed_version = active.version
            self.load_error = f"{active.version}: {exc}"
            metrics.ARTIFACT_LOAD_FAILURES.inc()
            log.error("refusing model %s: %s; still serving %s", active.version, exc, self.version)
            return
        await asyncio.get_running_loop().run_in_executor(
            None, live.scorer.prepare_catalog, self.catalog
        )
        try:
            await self.fresh_users.track(live.cutoff)
        except Exception as exc:  # not needed to serve: every request queries meanwhile
            log.warning("new-events listener: %s", exc)
            self.fresh_users.forget()
        live.forget_erased(self.erased)  # erasures that reached this worker during the load
        self.live = live  # the swap, right after track
        self._failed_version, self.load_error = None, None
        # Long-lived objects (the catalog view, the text index's terms; before artifacts were
        # mapped, millions of id-map entries) would otherwise be walked by every full garbage
        # collection: measured then, p99 latency fell from 131 ms to 31 ms. Unfreezing first
        # lets the previous model's cycles be collected.
        gc.unfreeze()
        gc.collect()
        gc.freeze()
        metrics.serving_version(active.version)
        log.info(
            "serving model %s (loaded in %.2f s)", active.version, time.perf_counter() - started
        )

    def _load(self, path: Path) -> Live:
        model = artifact.load(path)
        extra = dict(model.extra)
        revision = extra.get("erasure_revision")
        live = Live(
            Scorer(model, self._features, self._consumed, ann_probes=self._ann_probes),
            Cutoff.from_model(extra),
            int(revision) if revision is not None else None,
        )
        live.forget_erased(self.erased)
        _ = live.scorer.audiences  # built here, in the loading thread, not by a first request
        return live

    async def refresh_changes(self) -> None:
        """Re-read the catalog and the erased list if their revision changed (one small query
        when nothing did)."""
        async with self.sessionmaker() as session:
            revisions = await ingest.revisions(session)
            seen = self._revisions or {}
            if revisions == seen:
                return
            erased = None
            if revisions.get("erasure") != seen.get("erasure"):
                erased = await ingest.erased_users(session)
            items = None
            if revisions.get("catalog") != seen.get("catalog"):
                items = await ingest.read_catalog(session)
        if erased is not None:
            # Only ever grows in a worker: an entry dropped from the table (its artifacts were
            # rewritten) must still hide the row from a model loaded before the rewrite.
            self.erased = {
                user: max(revision, self.erased.get(user, revision))
                for user, revision in {**self.erased, **erased}.items()
            }
            self.live.forget_erased(self.erased)
        if items is not None:
            loop = asyncio.get_running_loop()
            view = await loop.run_in_executor(None, catalog_view, items, self.settings)
            scorer = self.scorer
            await loop.run_in_executor(None, scorer.prepare_catalog, view)
            self.catalog = view
        self._revisions = revisions

    async def poll_forever(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception as exc:  # the database may be down; keep serving what we have
                log.warning("model/catalog refresh failed: %s", exc)
                metrics.DATABASE_UP.set(0 if is_database_unavailable(exc) else 1)
            else:
                metrics.DATABASE_UP.set(1)
            self.observe()
            await asyncio.sleep(self.settings.model_poll_seconds)

    # --- requests -------------------------------------------------------------------------------

    async def recent_events(self, user_id: str, live: Live) -> tuple[RecentEvent, ...]:
        """The user's events that `live`'s model does not hold: one indexed query, for users
        who may have any (freshness.FreshUsers)."""
        if not self.fresh_users.may_have_events(user_id, live.cutoff):
            return ()
        rows = await self._recent_events(user_id, live.cutoff)
        return tuple(RecentEvent(*row) for row in rows)

    async def recommend_fresh(
        self, request: RecommendRequest, live: Live | None = None
    ) -> tuple[RecommendResult, bool]:
        """`request` answered by `live` (default: the current model) with the events of
        `request.user_id` that its model does not hold folded in, and whether the answer is
        degraded: the database was unreachable, so the model's view alone answered."""
        live = live or self.live
        degraded = False
        if request.user_id is not None:
            try:
                recent = await self.recent_events(request.user_id, live)
            except Exception as exc:
                if not is_database_unavailable(exc):
                    raise
                recent, degraded = (), True
            if recent:
                metrics.FOLD_INS.inc()
            request = replace(request, recent=recent)
        return await self.recommend(request, live.scorer), degraded

    async def recommend(
        self, request: RecommendRequest, scorer: Scorer | None = None
    ) -> RecommendResult:
        if len(self._pending) >= self.settings.max_pending_requests:
            # Overloaded: refuse at once (503, Retry-After) rather than queue without bound.
            raise ServiceUnavailable(
                "too many recommendation requests are waiting to be scored; retry shortly"
            )
        future: asyncio.Future[RecommendResult] = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(request, scorer or self.scorer, future))
        if not self._draining:
            self._draining = True
            asyncio.get_running_loop().create_task(self._drain())
        return await future

    def _next_batch(self) -> list[_Pending]:
        """Up to MAX_BATCH waiting requests of the first one's model, in arrival order."""
        scorer = self._pending[0].scorer
        batch: list[_Pending] = []
        rest: list[_Pending] = []
        for pending in self._pending:
            same = pending.scorer is scorer and len(batch) < MAX_BATCH
            (batch if same else rest).append(pending)
        self._pending = rest
        return batch

    async def _drain(self) -> None:
        try:
            while self._pending:
                await self._score(self._next_batch())
        finally:
            self._draining = False

    async def _score(self, batch: list[_Pending]) -> None:
        scorer, catalog = batch[0].scorer, self.catalog
        metrics.BATCH_SIZE.observe(len(batch))
        try:
            results = await asyncio.get_running_loop().run_in_executor(
                self._executor, scorer.recommend, [p.request for p in batch], catalog, self._helper
            )
        except Exception as exc:
            if len(batch) > 1:
                await self._score_one_by_one(batch, catalog)
            elif not batch[0].future.done():
                batch[0].future.set_exception(exc)
            return
        for pending, result in zip(batch, results, strict=True):
            if not pending.future.done():
                pending.future.set_result(result)

    async def _score_one_by_one(self, batch: list[_Pending], catalog: CatalogView) -> None:
        """After a failed batch: each request alone, so only a request that fails by itself
        gets the error."""
        loop = asyncio.get_running_loop()
        for pending in batch:
            try:
                (result,) = await loop.run_in_executor(
                    self._executor, pending.scorer.recommend, [pending.request], catalog, None
                )
            except Exception as exc:
                log.exception("scoring one request failed")
                if not pending.future.done():
                    pending.future.set_exception(exc)
                continue
            if not pending.future.done():
                pending.future.set_result(result)

    async def popular_from_events(
        self,
        window_days: float,
        n: int,
        categories: frozenset[str] | None,
        exclude: frozenset[str],
        max_per_family: int = 1,
    ) -> tuple[RecommendResult, bool]:
        """Popular items straight from the events table (for a window the model was not built
        with, or before any model exists), and whether the answer is degraded (the database
        was unreachable and an expired list of the window answered; without one, the error is
        raised). The window is rounded up to whole days; the lists of the
        POPULAR_CACHE_WINDOWS most recently used windows are kept for POPULAR_CACHE_SECONDS,
        and one query runs at a time, so clients cannot make a worker hold or run unbounded
        work (the API caps the window at schemas.MAX_POPULAR_WINDOW_DAYS)."""
        days = max(1, math.ceil(window_days))
        degraded = False
        async with self._popular_lock:
            cached = self._popular_cache.get(days)
            now = time.monotonic()
            if cached is None or now - cached[0] > POPULAR_CACHE_SECONDS:
                since = ingest.utcnow() - timedelta(days=days)
                try:
                    async with self.sessionmaker() as session:
                        ranked = await ingest.popular_items(
                            session, since, self.settings.negative_event_types, POPULAR_CANDIDATES
                        )
                except Exception as exc:
                    if cached is None or not is_database_unavailable(exc):
                        raise
                    degraded = True
                else:
                    cached = (now, ranked)
                    self._popular_cache[days] = cached
            self._popular_cache.move_to_end(days)
            while len(self._popular_cache) > POPULAR_CACHE_WINDOWS:
                self._popular_cache.popitem(last=False)
        catalog = self.catalog
        items = []
        per_family: dict[str, int] = {}
        for item_id, users in cached[1]:
            if item_id in catalog.unrecommendable or item_id in exclude:
                continue
            if categories is not None and not categories & catalog.categories.get(item_id, set()):
                continue
            family = catalog.families.get(item_id)
            if family is not None:
                if per_family.get(family, 0) >= max_per_family:
                    continue
                per_family[family] = per_family.get(family, 0) + 1
            items.append(Recommendation(item_id, float(users), catalog.titles.get(item_id, "")))
            if len(items) == n:
                break
        return RecommendResult("popular", items), degraded

    async def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._helper.shutdown(wait=False, cancel_futures=True)
        await self.fresh_users.close()
        await self._recent_events.close()
