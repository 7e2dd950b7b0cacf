"""What one serving worker holds: the active model's scorer, a view of the catalog, and the
batcher that scores concurrent requests together.

* Hot swap: every worker polls `model_versions` (RECSVC_MODEL_POLL_SECONDS, default 2 s) and,
  when another version is active, loads it in a thread and swaps one reference: a request uses
  the scorer it started with, none fails. An artifact that is missing or corrupt is refused
  (logged, counted in recsvc_model_load_failures_total) and the previous model keeps serving.
* Catalog: titles, categories and unrecommendable (unavailable or deleted) items are re-read
  when the items table changed, checked on the same poll; a write through this worker refreshes
  it at once, other workers within one poll.
* Batching: requests that arrive while a batch is being scored wait and are scored together in
  one matrix product (scorer.Scorer.recommend), in a worker thread so the event loop keeps
  accepting requests meanwhile; a second thread helps with small batches.
* Freshness: a user's events newer than the model come from one indexed query, run only for
  users that may have any (freshness.FreshUsers, kept by LISTEN/NOTIFY on PostgreSQL).
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
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from recsvc import artifact, ingest, metrics, registry
from recsvc.config import Settings
from recsvc.errors import is_database_unavailable
from recsvc.freshness import FreshUsers
from recsvc.pipeline import feature_config
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


class Serving:
    def __init__(
        self,
        settings: Settings,
        engine: AsyncEngine,
        sessionmaker: async_sessionmaker[AsyncSession],
    ) -> None:
        self.settings = settings
        self._recent_events = ingest.RecentEventsReader(engine)
        self.fresh_users = FreshUsers(engine)
        self.sessionmaker = sessionmaker
        self._features = feature_config(settings)
        self._consumed = frozenset(settings.consumed_event_types)
        self.scorer = Scorer.empty(self._features, self._consumed)
        self.events_until: datetime | None = None
        self.catalog = CatalogView()
        self._catalog_stamp: tuple[object, ...] | None = None
        self.load_error: str | None = None
        self._failed_version: str | None = None
        self._pending: list[tuple[RecommendRequest, asyncio.Future[RecommendResult]]] = []
        self._draining = False
        self._popular_cache: dict[float, tuple[float, list[tuple[str, int]]]] = {}
        # One thread: batches are scored one after another. A second one helps with the matrix
        # product of small batches (the `helper` of scorer.Scorer.recommend).
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scorer")
        self._helper = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scorer-helper")

    @property
    def version(self) -> str | None:
        return self.scorer.version

    # --- model and catalog ----------------------------------------------------------------------

    async def refresh(self) -> None:
        """One poll: pick up a newly activated model and catalog changes."""
        await self.refresh_model()
        await self.refresh_catalog()
        await self.fresh_users.track(self.events_until)

    async def refresh_model(self) -> None:
        async with self.sessionmaker() as session:
            active = await registry.active_version(session)
        if active is None or active.version in (self.version, self._failed_version):
            return
        started = time.perf_counter()
        try:
            scorer, events_until = await asyncio.get_running_loop().run_in_executor(
                None, self._load, Path(active.artifact_path)
            )
        except artifact.ArtifactError as exc:
            # Keep serving what we have; try again only when another version is activated.
            self._failed_version = active.version
            self.load_error = f"{active.version}: {exc}"
            metrics.MODEL_LOAD_FAILURES.inc()
            log.error("refusing model %s: %s; still serving %s", active.version, exc, self.version)
            return
        await asyncio.get_running_loop().run_in_executor(None, scorer.prepare_catalog, self.catalog)
        try:
            await self.fresh_users.track(events_until)
        except Exception as exc:  # not needed to serve: every request queries meanwhile
            log.warning("new-events listener: %s", exc)
            self.fresh_users.forget()
        self.scorer, self.events_until = scorer, events_until  # the swap, right after track
        self._failed_version, self.load_error = None, None
        # The model's millions of long-lived objects (id maps) would otherwise be walked by
        # every full garbage collection: measured, p99 latency fell from 131 ms to 31 ms.
        # Unfreezing first lets the previous model's cycles be collected.
        gc.unfreeze()
        gc.collect()
        gc.freeze()
        metrics.MODEL_VERSION.info({"version": active.version})
        log.info(
            "serving model %s (loaded in %.2f s)", active.version, time.perf_counter() - started
        )

    def _load(self, path: Path) -> tuple[Scorer, datetime | None]:
        model = artifact.load(path)
        until = model.extra.get("events_until")
        events_until = datetime.fromisoformat(until) if until else None
        return Scorer(model, self._features, self._consumed), events_until

    async def refresh_catalog(self) -> None:
        async with self.sessionmaker() as session:
            stamp = await ingest.catalog_stamp(session)
            if stamp == self._catalog_stamp:
                return
            items = await ingest.read_catalog(session)
        view = CatalogView(
            titles={item.item_id: item.title for item in items},
            categories={item.item_id: frozenset(item.categories) for item in items},
            unrecommendable=frozenset(i.item_id for i in items if not i.recommendable),
        )
        scorer = self.scorer
        await asyncio.get_running_loop().run_in_executor(None, scorer.prepare_catalog, view)
        self.catalog, self._catalog_stamp = view, stamp

    async def poll_forever(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception as exc:  # the database may be down; keep serving what we have
                log.warning("model/catalog refresh failed: %s", exc)
            await asyncio.sleep(self.settings.model_poll_seconds)

    # --- requests -------------------------------------------------------------------------------

    async def recent_events(self, user_id: str) -> tuple[RecentEvent, ...]:
        """The user's events newer than the model: one indexed query, for users who may have
        any (freshness.FreshUsers). Without the database the model's view still answers
        (counted in recsvc_freshness_skipped_total)."""
        if not self.fresh_users.may_have_events(user_id):
            return ()
        try:
            rows = await self._recent_events(user_id, self.events_until)
        except Exception as exc:
            if not is_database_unavailable(exc):
                raise
            metrics.FRESHNESS_SKIPPED.inc()
            return ()
        return tuple(RecentEvent(*row) for row in rows)

    async def recommend_fresh(self, request: RecommendRequest) -> RecommendResult:
        """`request` answered with the newest events of `request.user_id` folded in."""
        if request.user_id is not None:
            request = replace(request, recent=await self.recent_events(request.user_id))
        return await self.recommend(request)

    async def recommend(self, request: RecommendRequest) -> RecommendResult:
        future: asyncio.Future[RecommendResult] = asyncio.get_running_loop().create_future()
        self._pending.append((request, future))
        if not self._draining:
            self._draining = True
            asyncio.get_running_loop().create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
                scorer, catalog = self.scorer, self.catalog
                requests = [request for request, _ in batch]
                metrics.BATCH_SIZE.observe(len(batch))
                try:
                    results = await loop.run_in_executor(
                        self._executor, scorer.recommend, requests, catalog, self._helper
                    )
                except Exception as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, future), result in zip(batch, results, strict=True):
                    if not future.done():
                        future.set_result(result)
        finally:
            self._draining = False

    async def popular_from_events(
        self, window_days: float, n: int, categories: frozenset[str] | None, exclude: frozenset[str]
    ) -> RecommendResult:
        """Popular items straight from the events table (for a window the model was not built
        with, or before any model exists), cached for POPULAR_CACHE_SECONDS per window."""
        now = time.monotonic()
        cached = self._popular_cache.get(window_days)
        if cached is None or now - cached[0] > POPULAR_CACHE_SECONDS:
            since = ingest.utcnow() - timedelta(days=window_days)
            async with self.sessionmaker() as session:
                ranked = await ingest.popular_items(
                    session, since, self.settings.negative_event_types, POPULAR_CANDIDATES
                )
            cached = (now, ranked)
            self._popular_cache[window_days] = cached
        catalog = self.catalog
        items = []
        for item_id, users in cached[1]:
            if item_id in catalog.unrecommendable or item_id in exclude:
                continue
            if categories is not None and not categories & catalog.categories.get(item_id, set()):
                continue
            items.append(Recommendation(item_id, float(users), catalog.titles.get(item_id, "")))
            if len(items) == n:
                break
        return RecommendResult("popular", items)

    async def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._helper.shutdown(wait=False, cancel_futures=True)
        await self.fresh_users.close()
        await self._recent_events.close()
