"""The training pipeline, one path behind `recsvc train`, POST /v1/models/train and the schedule:

    events + catalog + erased list (one database snapshot; ingest.Cutoff records which events)
    -> features.build_interactions
    -> training.train_model (holdout: candidate vs popularity vs active model, then refit on all)
    -> artifact.save (models/<version>/, atomic) -> registry (record; activate if not worse)
    -> older versions rewritten without erased learners, then pruned

`run_training(..., spark=SparkTraining(...))` takes the other engine (`recsvc train --engine
spark`): features and ALS in Apache Spark from an events export (spark_engine.py), then the same
artifact, registry, guard and activation; the version records its engine.

The CPU-heavy middle runs in a worker thread; the job's heartbeat keeps ticking meanwhile, so a
job whose process dies is noticed (RECSVC_JOB_STALE_SECONDS) instead of blocking training forever.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from recsvc import artifact, families, ingest, registry
from recsvc.config import Settings
from recsvc.features import (
    EventColumns,
    FeatureConfig,
    IndexArray,
    Interactions,
    TextIndex,
    build_interactions,
    item_text,
)
from recsvc.lists import category_codes
from recsvc.segments import segment_learners
from recsvc.training import (
    ActiveModel,
    ALSParams,
    Comparison,
    PopularityModel,
    TrainedModel,
    Trial,
    evaluate,
    evaluate_active,
    family_codes,
    is_not_worse,
    sample_test_users,
    split_holdout,
    train_model,
    tune,
    tuning_grid,
)

log = logging.getLogger("recsvc.pipeline")


class NoData(ValueError):
    """An expected condition, not a fault: nothing to train, tune or evaluate on yet."""


class EngineUnavailable(RuntimeError):
    """The chosen training engine cannot run here; the message says what to install."""


@dataclass(frozen=True)
class SparkTraining:
    """`recsvc train --engine spark`: the events export to read and how to reach Spark
    (`master` None: spark-submit's choice, else local[*]; `blocks`: MLlib's user/item blocks,
    None: one per core, spark_engine.default_blocks; `config`: Spark settings, e.g.
    spark.driver.memory)."""

    events_dir: Path
    master: str | None = None
    shuffle_partitions: int | None = None
    blocks: int | None = None
    config: dict[str, str] = field(default_factory=dict)


def spark_engine_module() -> Any:
    """recsvc.spark_engine, or EngineUnavailable naming the missing piece."""
    try:
        from recsvc import spark_engine
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] in ("pyspark", "py4j"):
            raise EngineUnavailable(
                "--engine spark needs the optional extra: pip install 'recsvc[spark]'"
            ) from None
        raise
    if not spark_engine.java_available():
        raise EngineUnavailable(
            "--engine spark needs Java 17 or newer: apt-get install openjdk-17-jre-headless "
            "(or set JAVA_HOME)"
        )
    return spark_engine


def feature_config(settings: Settings) -> FeatureConfig:
    return FeatureConfig(
        event_weights=settings.event_weights,
        rating_type=settings.rating_event_type,
        negative_types=frozenset(settings.negative_event_types),
        rating_negative_below=settings.rating_negative_below,
        half_life_days=settings.half_life_days,
        weight_cap=settings.weight_cap,
        min_user_interactions=settings.min_user_interactions,
        min_item_interactions=settings.min_item_interactions,
        popularity_window_days=settings.popularity_window_days,
    )


# `recsvc tune` writes its best parameters here; training uses them for every ALS setting
# that is not set explicitly (an RECSVC_ALS_* variable always wins).
TUNED_FILE = "tuned_params.json"
_TUNABLE = {
    "factors": "als_factors",
    "regularization": "als_regularization",
    "alpha": "als_alpha",
    "iterations": "als_iterations",
    "confidence": "als_confidence",
}


def tuned_params(settings: Settings) -> dict[str, Any]:
    path = settings.models_dir / TUNED_FILE
    if not path.is_file():
        return {}
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))["params"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring %s: %s", path, exc)
        return {}
    return {
        name: stored[name]
        for name, setting in _TUNABLE.items()
        if name in stored and setting not in settings.model_fields_set
    }


def build_features(settings: Settings, table: ingest.EventTable) -> Interactions:
    """The stored events as the weighted user x item matrices that training learns from."""
    events = EventColumns(
        table.user_ids, table.item_ids, table.types, table.values, table.occurred_at
    )
    return build_interactions(events, feature_config(settings))


def family_rules(settings: Settings) -> families.FamilyRules:
    patterns = settings.family_edition_patterns
    return families.FamilyRules(
        edition_patterns=(
            tuple(patterns) if patterns is not None else families.DEFAULT_EDITION_PATTERNS
        ),
        similarity=settings.family_similarity,
    )


def catalog_families(settings: Settings, catalog: list[ingest.CatalogItem]) -> dict[str, str]:
    """The catalog's course families (item -> family id): the one detection serving
    (`serving.catalog_view`) and training's evaluation both use. CPU work, once per catalog."""
    return families.detect_families(
        [item.item_id for item in catalog],
        [item.title for item in catalog],
        [item.categories for item in catalog],
        [families.explicit_family(item.attributes) for item in catalog],
        family_rules(settings),
    )


def item_families(
    settings: Settings, catalog: list[ingest.CatalogItem], interactions: Interactions
) -> IndexArray | None:
    """Family codes over the model's item columns, as serving detects them, so the holdout
    metrics are measured on the lists learners are shown. Items missing from the catalog are
    families of their own. None when no item shares a family: served lists are then the plain
    top-k, and the metrics stay exactly those of a training without families."""
    mapping = catalog_families(settings, catalog)
    return family_codes(interactions.items, mapping) if mapping else None


def item_categories(catalog: list[ingest.CatalogItem], interactions: Interactions) -> IndexArray:
    """`lists.category_codes` over the model's item columns (diversity's similarity), read as
    serving reads them."""
    known = {item.item_id: item.categories for item in catalog}
    return category_codes(
        [sorted(set(known.get(item_id, []))) for item_id in interactions.items.ids.tolist()]
    )


def als_params(settings: Settings) -> ALSParams:
    defaults = ALSParams(
        factors=settings.als_factors,
        regularization=settings.als_regularization,
        alpha=settings.als_alpha,
        iterations=settings.als_iterations,
        confidence=settings.als_confidence,
        random_state=settings.random_seed,
        num_threads=settings.als_threads,
    )
    return replace(defaults, **tuned_params(settings))


def save_tuned(settings: Settings, trial: Trial, n_trials: int) -> Path:
    settings.models_dir.mkdir(parents=True, exist_ok=True)
    path = settings.models_dir / TUNED_FILE
    body = {
        "params": {name: getattr(trial.params, name) for name in _TUNABLE},
        "metrics": trial.metrics,
        "trials": n_trials,
        "tuned_at": ingest.utcnow().isoformat(),
    }
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(body, indent=2), encoding="utf-8")
    temporary.replace(path)
    return path


async def run_tuning(
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    budget_seconds: float,
    on_trial: Callable[[Trial], None] | None = None,
) -> list[Trial]:
    """`recsvc tune`: a bounded search on a random per-user holdout, best parameters saved.

    Random, not newest-first: on MovieLens-100k the newest-20% holdout ranked settings almost
    at random (its timestamps record rating sessions), while a random holdout ranked them as
    the real test split does (Spearman 0.98); see bench/ml100k_research.py.
    """
    async with sessionmaker() as session:
        await ingest.begin_snapshot(session)
        table = await ingest.read_events(session)
    if not len(table):
        raise NoData("there are no events to tune on yet")

    def search() -> list[Trial]:
        interactions = build_features(settings, table)
        holdout = sample_test_users(
            split_holdout(
                interactions, settings.holdout_fraction, settings.random_seed, by="random"
            ),
            settings.eval_max_users,
            settings.random_seed,
        )
        grid = tuning_grid(als_params(settings))
        return tune(
            holdout, grid, budget_seconds, settings.random_seed, interactions.negatives, on_trial
        )

    trials = await asyncio.to_thread(search)
    save_tuned(settings, trials[0], len(trials))
    return trials


@dataclass
class TrainingOutcome:
    version: str
    activated: bool
    status: str  # active or rejected
    metrics: dict[str, float]
    baseline_metrics: dict[str, float]
    comparison: Comparison | None
    active_version: str | None
    n_users: int
    n_items: int
    n_events: int
    path: Path
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass
class _Fitted:
    artifact: artifact.ModelArtifact
    comparison: Comparison | None
    path: Path
    seconds: dict[str, float]


def _load_active(path: str | None, models_dir: Path) -> ActiveModel | None:
    if path is None:
        return None
    try:
        loaded = artifact.load(registry.artifact_dir(models_dir, path))
    except artifact.ArtifactError as exc:
        log.warning("the active model cannot be loaded (%s); comparing without it", exc)
        return None
    return ActiveModel(
        users=loaded.users,
        items=loaded.items,
        item_factors=loaded.item_factors,
        user_items=loaded.user_items,
        params=loaded.params,
        metrics=dict(loaded.metrics),
        confidence=loaded.fold_in_basis()[1],  # evaluated with the confidence serving uses
    )


def _fit_and_save(
    settings: Settings,
    table: ingest.EventTable,
    catalog: list[ingest.CatalogItem],
    active_path: str | None,
    snapshot: dict[str, Any],
) -> _Fitted:
    """The CPU-bound part: no database, no event loop."""
    clock = time.perf_counter
    seconds: dict[str, float] = {}

    start = clock()
    interactions = build_features(settings, table)
    seconds["features"] = clock() - start

    start = clock()
    family_of = item_families(settings, catalog, interactions)
    seconds["families"] = clock() - start

    trained = train_model(
        interactions,
        als_params(settings),
        holdout_fraction=settings.holdout_fraction,
        seed=settings.random_seed,
        active=_load_active(active_path, settings.models_dir),
        max_eval_users=settings.eval_max_users,
        family_of=family_of,
        max_per_family=settings.max_per_family,
        item_categories=item_categories(catalog, interactions),
        diversity=settings.diversity,
    )
    seconds.update(trained.seconds)
    return _save_model(settings, trained, interactions, catalog, snapshot, seconds)


def _save_model(
    settings: Settings,
    trained: TrainedModel,
    interactions: Interactions,
    catalog: list[ingest.CatalogItem],
    snapshot: dict[str, Any],
    seconds: dict[str, float],
) -> _Fitted:
    """What every training engine does after its fit: the text index, the learner segments,
    and the artifact written to models_dir (CPU only, no database)."""
    clock = time.perf_counter
    start = clock()
    text_index = None
    if catalog:
        text_index = TextIndex().fit(
            [c.item_id for c in catalog], [item_text(*c.text) for c in catalog]
        )
    seconds["text_index"] = clock() - start

    start = clock()
    segments = segment_learners(
        trained.user_factors,
        trained.user_weights,
        trained.items.ids.tolist(),
        {c.item_id: c.categories for c in catalog},
        {c.item_id: c.text[2] for c in catalog},
        k=settings.segments,
        seed=settings.random_seed,
    )
    seconds["segments"] = clock() - start

    start = clock()
    version = artifact.new_version()
    extra: dict[str, Any] = {
        "feature_config": {
            "half_life_days": settings.half_life_days,
            "weight_cap": settings.weight_cap,
            "min_user_interactions": settings.min_user_interactions,
            "min_item_interactions": settings.min_item_interactions,
            "holdout_fraction": settings.holdout_fraction,
        },
        **snapshot,
        "n_test_users": trained.n_test_users,
    }
    model = artifact.ModelArtifact.from_training(
        version,
        trained,
        interactions,
        text_index,
        extra,
        settings.consumed_event_types,
        segments,
    )
    path = artifact.save(model, settings.models_dir)
    seconds["save"] = clock() - start
    return _Fitted(model, trained.comparison, path, seconds)


def _fit_spark_and_save(
    settings: Settings,
    job: SparkTraining,
    catalog: list[ingest.CatalogItem],
    active_path: str | None,
    snapshot: dict[str, Any],
    erased: dict[str, int],
) -> _Fitted:
    """`_fit_and_save` with Spark for the features and the fits (spark_engine.py); the model
    holds the export's events, so it records the export's cutoff."""
    from recsvc import export_files

    engine = spark_engine_module()
    clock = time.perf_counter
    spark = engine.session(job.master, job.shuffle_partitions, job.config)
    prepared = engine.prepare(
        spark,
        job.events_dir,
        feature_config(settings),
        erased=erased,
        consumed_types=settings.consumed_event_types,
        holdout_fraction=settings.holdout_fraction,
        seed=settings.random_seed,
        max_eval_users=settings.eval_max_users,
    )
    seconds: dict[str, float] = dict(prepared.seconds)
    interactions = prepared.interactions
    if interactions.weights.nnz == 0:
        raise NoData(f"the export in {job.events_dir} holds no events to train on yet")

    start = clock()
    family_of = item_families(settings, catalog, interactions)
    seconds["families"] = clock() - start

    trained, info = engine.fit(
        prepared,
        als_params(settings),
        active=_load_active(active_path, settings.models_dir),
        family_of=family_of,
        max_per_family=settings.max_per_family,
        item_categories=item_categories(catalog, interactions),
        diversity=settings.diversity,
        blocks=job.blocks,
    )
    seconds.update(trained.seconds)
    recorded = {
        **snapshot,
        "events_cutoff": export_files.last_cutoff(prepared.manifest),
        "engine": info,
    }
    return _save_model(settings, trained, interactions, catalog, recorded, seconds)


def _check_export(job: SparkTraining, dialect: str) -> None:
    """The export exists and comes from this database's kind (its cutoff must mean the same
    to serving)."""
    from recsvc import export_files

    manifest = export_files.require_manifest(job.events_dir)
    if manifest.get("dialect") != dialect:
        raise export_files.ExportError(
            f"{job.events_dir} was exported from {manifest.get('dialect')}, the database is "
            f"{dialect}: export from the database you train for"
        )


async def _heartbeat(
    sessionmaker: async_sessionmaker[AsyncSession], job_id: str, interval: float
) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            async with sessionmaker() as session, session.begin():
                await registry.job_heartbeat(session, job_id)
        except Exception as exc:  # a missed beat is not a failed training
            log.warning("job heartbeat failed: %s", exc)


async def run_training(
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    *,
    force: bool = False,
    job_id: str | None = None,
    spark: SparkTraining | None = None,
) -> TrainingOutcome:
    clock = time.perf_counter
    if spark is not None:
        spark_engine_module()  # fail before reading anything when it cannot run
    start = clock()
    async with sessionmaker() as session:
        # One snapshot: the model holds exactly the events of `table.cutoff`, and the erased
        # list read with them names every learner erased before it.
        await ingest.begin_snapshot(session)
        # The Spark engine reads the events from the export instead.
        table = await ingest.read_events(session) if spark is None else None
        catalog = await ingest.read_catalog(session)
        erased = await ingest.erased_users(session)
        erasure_revision = (await ingest.revisions(session)).get("erasure", 0)
        active = await registry.active_version(session)
        dialect = str(session.bind.dialect.name)
    query_seconds = clock() - start
    if table is not None and not len(table):
        raise NoData("there are no events to train on yet")
    if spark is not None:
        _check_export(spark, dialect)

    beat = None
    if job_id:
        # Several beats fit in the stale window, so one slow database write is not fatal.
        interval = min(5.0, settings.job_stale_seconds / 4)
        beat = asyncio.create_task(_heartbeat(sessionmaker, job_id, interval))
    try:
        if table is not None:
            fitted = await asyncio.to_thread(
                _fit_and_save,
                settings,
                table,
                catalog,
                active.artifact_path if active else None,
                {
                    # Serving folds in exactly the events outside this cutoff, and forgets the
                    # learners erased after this revision (docs/design.md sections 2 and 3).
                    "events_cutoff": table.cutoff.to_dict(),
                    "erasure_revision": erasure_revision,
                    "engine": {"name": "implicit"},
                },
            )
        else:
            assert spark is not None
            fitted = await asyncio.to_thread(
                _fit_spark_and_save,
                settings,
                spark,
                catalog,
                active.artifact_path if active else None,
                {"erasure_revision": erasure_revision},
                erased,
            )
    finally:
        if beat is not None:
            beat.cancel()
    model = fitted.artifact
    metrics = dict(model.metrics)
    activate = force or is_not_worse(fitted.comparison)

    start = clock()
    async with sessionmaker() as session, session.begin():
        await registry.record_version(
            session,
            version=model.version,
            status="inactive" if activate else "rejected",
            params={**model.params.to_dict(), "engine": engine_of(model)},
            metrics=metrics,
            baseline_metrics=dict(model.baseline_metrics),
            n_users=model.n_users,
            n_items=model.n_items,
            n_events=model.n_events,
            artifact_path=fitted.path.name,  # relative to models_dir: registry.artifact_dir
        )
        if activate:
            await registry.activate(session, model.version)
        if job_id:
            await registry.job_heartbeat(session, job_id, version=model.version)
    await prune(settings, sessionmaker)
    exports = [settings.export_dir] if settings.export_dir is not None else []
    await forget_erased(
        settings,
        sessionmaker,
        erased,
        keep=model.version,
        exports=[*exports, *([spark.events_dir] if spark is not None else [])],
    )
    seconds = {"query": query_seconds, **fitted.seconds, "record": clock() - start}
    return TrainingOutcome(
        version=model.version,
        activated=activate,
        status="active" if activate else "rejected",
        metrics=metrics,
        baseline_metrics=dict(model.baseline_metrics),
        comparison=fitted.comparison,
        active_version=active.version if active else None,
        n_users=model.n_users,
        n_items=model.n_items,
        n_events=model.n_events,
        path=fitted.path,
        seconds=seconds,
    )


def engine_of(model: artifact.ModelArtifact) -> str:
    """The engine that trained a version ("implicit" for versions that do not say)."""
    recorded = model.extra.get("engine")
    return str(recorded.get("name", "implicit")) if isinstance(recorded, dict) else "implicit"


async def prune(settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    """Keep the newest `keep_versions` folders and the active one; forget the rest."""
    async with sessionmaker() as session, session.begin():
        active = await registry.active_version(session)
        on_disk = artifact.list_versions(settings.models_dir)
        keep = artifact.newest_versions(
            on_disk, settings.keep_versions, always=[active.version] if active else []
        )
        removed = artifact.prune(settings.models_dir, keep)
        await registry.forget_versions(session, removed)


async def forget_erased(
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    erased: dict[str, int],
    keep: str,
    exports: Sequence[Path] = (),
) -> None:
    """Rewrite every version folder except `keep` (trained after these erasures, so without
    them) without the rows of the `erased` learners, then drop their entries from the erased
    list: once no artifact holds them, a model loaded later cannot bring them back. When a
    folder cannot be rewritten the entries stay listed (serving keeps forgetting the learners)
    and the next training tries again. The entries are first logged into each events export
    in `exports` (export.log_erasures), whose older files still hold the learners' events."""
    if not erased:
        return
    for directory in exports:
        from recsvc import export

        await asyncio.to_thread(export.log_erasures, directory, erased)
    rewritten = True
    for version in artifact.list_versions(settings.models_dir):
        if version == keep:
            continue
        try:
            await asyncio.to_thread(
                artifact.rewrite_without_users, settings.models_dir / version, list(erased)
            )
        except artifact.ArtifactError as exc:
            log.warning("cannot rewrite %s without erased learners: %s", version, exc)
            rewritten = False
    if rewritten:
        async with sessionmaker() as session, session.begin():
            await ingest.drop_erased(session, erased)
        log.info("model artifacts rewritten without %d erased learner(s)", len(erased))


async def run_job(
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    job_id: str,
    force: bool,
    spark: SparkTraining | None = None,
) -> TrainingOutcome:
    """Run a queued job to its end, recording success or the error in training_jobs (and
    re-raising it: the caller reports it)."""
    async with sessionmaker() as session, session.begin():
        await registry.job_started(session, job_id)
    try:
        outcome = await run_training(
            settings, sessionmaker, force=force, job_id=job_id, spark=spark
        )
    except Exception as exc:
        async with sessionmaker() as session, session.begin():
            await registry.job_finished(
                session, job_id, version=None, error=f"{type(exc).__name__}: {exc}"
            )
        raise
    async with sessionmaker() as session, session.begin():
        await registry.job_finished(session, job_id, version=outcome.version, error=None)
    return outcome


async def run_evaluation(
    settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]
) -> tuple[str, dict[str, dict[str, float]]]:
    """`recsvc evaluate`: the active model and the popularity baseline on a fresh holdout of
    each user's newest interactions. The active model is scored the way it serves a user with
    new events (user factors recomputed from the training part), so its numbers include pairs
    it may have been trained on: compare it with the baseline, not with a training run."""
    async with sessionmaker() as session:
        await ingest.begin_snapshot(session)
        table = await ingest.read_events(session)
        active = await registry.active_version(session)
    if active is None:
        raise NoData("no model is active yet: run `recsvc train` first")
    if not len(table):
        raise NoData("there are no events to evaluate on")

    def score() -> dict[str, dict[str, float]]:
        model = _load_active(active.artifact_path, settings.models_dir)
        if model is None:
            raise ValueError(f"the artifact of {active.version} cannot be loaded")
        interactions = build_features(settings, table)
        holdout = sample_test_users(
            split_holdout(interactions, settings.holdout_fraction, settings.random_seed),
            settings.eval_max_users,
            settings.random_seed,
        )
        negatives = interactions.negatives
        popularity = PopularityModel.fit(holdout.train)
        return {
            f"active {active.version}": evaluate_active(
                model, interactions.items, holdout, negatives
            ),
            "popularity": evaluate(popularity, holdout.train, holdout.test, 10, negatives),
        }

    return active.version, await asyncio.to_thread(score)
