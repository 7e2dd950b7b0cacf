"""The Apache Spark training engine (`recsvc train --engine spark`, extra `recsvc[spark]`).

Owns the path from an events export (`export_files`: Parquet + manifest + erased log) to what
every engine hands to `pipeline._save_model`: a `features.Interactions` and a
`training.TrainedModel`. Spark does the work that grows with the events; the driver only what
the artifact format itself holds (per-pair matrices and factors, docs/design.md "Training at
scale"):

1. `prepare`, in Spark DataFrame code: read the export's files, drop the events of erased
   learners (the export's log plus the training's snapshot of the database list), then the
   per-event weights, rating values, decay, per-pair sums, cap, negatives ("the newest signal
   wins") and minimum counts of `features.build_interactions`, the vocabularies (the kept ids
   are collected and sorted on the driver, which needs them for the artifact anyway, and joined
   back as dense indices), and the newest-items holdout split of `training.split_holdout`
   (ties in time broken by a seeded hash of the pair instead of numpy's draw). Only then are
   the pairs collected, once, into an `Interactions` and a `training.Holdout` on the driver;
   the test users are sampled with `training.sample_test_users`.
2. `fit`: MLlib ALS (implicitPrefs=True, the Hu-Koren-Volinsky model implicit fits too) on the
   holdout's training pairs, scored on the driver by `training.score_holdout` (the metric code
   of the implicit engine, with the same comparison to the active model), then refitted on all
   pairs.

Parameter mapping (recsvc -> MLlib): factors -> rank, iterations -> maxIter, random_state ->
seed, alpha -> alpha. The confidence: recsvc trains implicit on c = 1 + alpha * f(w) with f
log1p or bm25 (`features.Confidence`); MLlib's implicit ALS uses c = 1 + alpha * |r| and
preference 1 for r > 0, so the rating fed to it is r = f(w) (at least 1e-6, so that a bm25 f
clipped to 0 keeps preference 1, as in implicit): both engines see the same confidences.
Regularization: implicit adds a constant lambda to every row's normal equations; MLlib scales
its regParam by the number of ratings of each row (ALS-WR). `mllib_reg_param` divides lambda by
the mean number of ratings per row, users and items together, times `REG_CALIBRATION`
(measured on MovieLens-100k, README "Training at scale"). Serving folds new users in with
implicit's constant lambda on the MLlib item factors, as for an implicit model.

No web framework and no database here (those stay in pipeline.py and export.py).
"""

from __future__ import annotations

import math
import os
import shutil
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import scipy.sparse as sp
from pyspark.ml.recommendation import ALS
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F  # noqa: N812  (Spark's own convention)
from pyspark.sql import types as T  # noqa: N812

from recsvc import export_files
from recsvc.features import SECONDS_PER_DAY, FeatureConfig, Interactions, Vocabulary
from recsvc.training import (
    ActiveModel,
    ALSParams,
    Holdout,
    IndexArray,
    TrainedModel,
    als_from_factors,
    sample_test_users,
    score_holdout,
)

ENGINE = "spark"
# Multiplies the mapped regParam (`mllib_reg_param`). Calibrated on MovieLens-100k
# (bench/quality.py's split, default settings; the implicit engine: nDCG@10 0.492): 0.25 gave
# 0.457, 0.35 0.473, 0.5 0.484, 1.0 0.474, 2.0 0.397.
REG_CALIBRATION = 0.5
# spark.sql.shuffle.partitions for a local[...] master when none is given.
LOCAL_SHUFFLE_PARTITIONS = 8
# The smallest rating fed to MLlib: keeps preference 1 where f(w) is 0 (bm25's clip).
MIN_RATING = 1e-6

EVENTS_SCHEMA = T.StructType(
    [
        T.StructField("id", T.LongType()),
        T.StructField("event_id", T.StringType()),
        T.StructField("user_id", T.StringType()),
        T.StructField("item_id", T.StringType()),
        T.StructField("type", T.StringType()),
        T.StructField("value", T.DoubleType()),
        T.StructField("occurred_at", T.TimestampType()),
        T.StructField("received_at", T.TimestampType()),
        T.StructField("export_run", T.IntegerType()),
    ]
)


class EngineUnavailable(RuntimeError):
    """Spark cannot run here (no Java); the message says what to install."""


def java_available() -> bool:
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").exists():
        return True
    return shutil.which("java") is not None


def session(
    master: str | None = None,
    shuffle_partitions: int | None = None,
    config: Mapping[str, str] | None = None,
) -> SparkSession:
    """The process's SparkSession (an existing one is reused, with its own settings): UTC
    session time, Arrow transfers to the driver, no progress bars. `master` None: what
    spark-submit (or `spark.master`) says, local[*] otherwise. In local mode the shuffles get
    `LOCAL_SHUFFLE_PARTITIONS` partitions unless told otherwise (Spark's 200 are made for
    clusters: on one machine their per-task overhead dominated small trainings)."""
    if not java_available():
        raise EngineUnavailable(
            "--engine spark needs Java 17 or newer: apt-get install openjdk-17-jre-headless "
            "(or set JAVA_HOME)"
        )
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.appName("recsvc-train")
    if master:
        builder = builder.master(master)
    if shuffle_partitions is None and (master or "").startswith("local"):
        shuffle_partitions = LOCAL_SHUFFLE_PARTITIONS
    settings = {
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.ui.showConsoleProgress": "false",
        **({"spark.sql.shuffle.partitions": str(shuffle_partitions)} if shuffle_partitions else {}),
        **(config or {}),
    }
    for key, value in settings.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def mllib_reg_param(regularization: float, n_ratings: int, n_users: int, n_items: int) -> float:
    """MLlib's regParam for recsvc's (implicit's) regularization: MLlib adds regParam x (the
    row's number of ratings) where implicit adds lambda, so lambda is divided by the mean
    number of ratings per row (users and items together: 2 n_ratings / (n_users + n_items))."""
    if n_ratings == 0:
        return regularization
    mean_count = 2.0 * n_ratings / max(n_users + n_items, 1)
    return REG_CALIBRATION * regularization / mean_count


# --------------------------------------------------------------------------------------------
# Reading the export
# --------------------------------------------------------------------------------------------


def read_export(
    spark: SparkSession, directory: Path, erased: Mapping[str, int] | None = None
) -> tuple[DataFrame, dict[str, Any], dict[str, int]]:
    """The export's events without erased learners' older events, its manifest, and the
    erasures applied (user id -> the export run before which their events are dropped).

    `erased`: erasures the export has not logged yet (the database's list, user id ->
    revision); they drop every event exported so far."""
    manifest = export_files.require_manifest(directory)
    before = export_files.erased_before(export_files.read_erased(directory))
    next_run = export_files.last_run(manifest) + 1
    for user_id in erased or {}:
        before.setdefault(user_id, next_run)
    files = [str(path) for path in export_files.event_files(directory, manifest)]
    events = (
        spark.read.schema(EVENTS_SCHEMA).parquet(*files)
        if files
        else spark.createDataFrame([], EVENTS_SCHEMA)
    )
    if before:
        erased_frame = spark.createDataFrame(
            sorted(before.items()), "user_id string, erased_before int"
        )
        events = (
            events.join(F.broadcast(erased_frame), "user_id", "left")
            .where(
                F.col("erased_before").isNull() | (F.col("export_run") >= F.col("erased_before"))
            )
            .drop("erased_before")
        )
    return events, manifest, before


# --------------------------------------------------------------------------------------------
# Per-pair weights (features.build_interactions in DataFrame code)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PairWeights:
    """The per-pair aggregate of `features.build_interactions`, before vocabularies.

    `pairs` columns: user_id, item_id, weight (capped positive sum), last_seen (newest positive
    event, unix s), positive, negative (bools), n_events (counted events of the pair) and
    `consumed_<k>` counts per entry of `consumed_types`; every pair: the minimum counts keep
    those whose user is in `users` and item in `items`."""

    pairs: DataFrame
    users: DataFrame  # user_id of the kept users (the vocabulary, unsorted)
    items: DataFrame  # item_id of the kept items
    now: float
    n_ignored_events: int
    consumed_types: tuple[str, ...]


def _type_weight(config: FeatureConfig) -> Column:
    known = config.known_types
    mapping = F.create_map(
        *[
            item
            for t in known
            for item in (F.lit(t), F.lit(float(config.event_weights.get(t, 0.0))))
        ]
    )
    return F.coalesce(mapping[F.col("type")], F.lit(0.0))


def pair_weights(
    events: DataFrame,
    config: FeatureConfig,
    consumed_types: Iterable[str] = (),
    now: float | None = None,
) -> PairWeights:
    """Per-pair weights exactly as `features.build_interactions` computes them (docs/design.md
    section 4), as Spark DataFrame code; nothing is collected but three counts and the newest
    time."""
    known = config.known_types
    seconds = F.unix_micros(F.col("occurred_at")).cast("double") / 1e6
    events = events.select("user_id", "item_id", "type", "value", seconds.alias("t"))
    is_known = F.col("type").isin(known)
    totals = events.agg(
        F.count(F.lit(1)).alias("n"),
        F.sum(F.when(is_known, 1).otherwise(0)).alias("counted"),
        F.max("t").alias("newest"),
    ).first()
    n_total, n_counted = int(totals["n"]), int(totals["counted"] or 0)
    reference = float(totals["newest"]) if now is None and n_total else float(now or 0.0)

    counted = events.where(is_known)
    weight = _type_weight(config)
    value = F.col("value")
    is_rating = (
        F.col("type") == F.lit(config.rating_type) if config.rating_type in known else F.lit(False)
    )
    rating_factor = F.when(value.isNull() | F.isnan(value), F.lit(1.0)).otherwise(
        F.greatest(value, F.lit(0.0))
    )
    weight = weight * F.when(is_rating, rating_factor).otherwise(F.lit(1.0))
    negative = F.col("type").isin(sorted(config.negative_types))
    if config.rating_negative_below is not None:
        below = is_rating & F.coalesce(value < F.lit(config.rating_negative_below), F.lit(False))
        negative = negative | below
    if config.half_life_days is not None:
        age_days = F.greatest(F.lit(reference) - F.col("t"), F.lit(0.0)) / F.lit(SECONDS_PER_DAY)
        weight = weight * F.pow(F.lit(2.0), -age_days / F.lit(config.half_life_days))
    consumed = tuple(t for t in dict.fromkeys(consumed_types) if t in known)
    counted = counted.select(
        "user_id",
        "item_id",
        "type",
        "t",
        weight.alias("w"),
        negative.alias("neg"),
    )

    pairs = counted.groupBy("user_id", "item_id").agg(
        F.sum(F.when(~F.col("neg"), F.col("w"))).alias("weight_sum"),
        F.max(F.when(~F.col("neg"), F.col("t"))).alias("newest_positive"),
        F.max(F.when(F.col("neg"), F.col("t"))).alias("newest_negative"),
        F.count(F.lit(1)).alias("n_events"),
        *[
            F.sum(F.when(F.col("type") == F.lit(t), 1).otherwise(0)).alias(f"consumed_{k}")
            for k, t in enumerate(consumed)
        ],
    )
    # The newest signal wins; ties count as negative (features.build_interactions).
    pair_negative = F.col("newest_negative").isNotNull() & (
        F.col("newest_positive").isNull() | (F.col("newest_negative") >= F.col("newest_positive"))
    )
    weight_sum = F.coalesce(F.col("weight_sum"), F.lit(0.0))
    pair_positive = ~pair_negative & F.col("newest_positive").isNotNull() & (weight_sum > 0)
    capped = (
        F.least(weight_sum, F.lit(float(config.weight_cap)))
        if config.weight_cap is not None
        else weight_sum
    )
    pairs = pairs.select(
        "user_id",
        "item_id",
        capped.alias("weight"),
        F.col("newest_positive").alias("last_seen"),
        pair_positive.alias("positive"),
        pair_negative.alias("negative"),
        "n_events",
        *[f"consumed_{k}" for k in range(len(consumed))],
    )

    # Minimum counts on distinct positive pairs (one pass, as build_interactions).
    def kept(column: str, minimum: int) -> DataFrame:
        degree = pairs.groupBy(column).agg(
            F.sum(F.when(F.col("positive"), 1).otherwise(0)).alias("degree")
        )
        return degree.where(F.col("degree") >= minimum).select(column)

    # A kept user whose every item was dropped stays in the vocabulary (a row without pairs).
    users = kept("user_id", config.min_user_interactions)
    items = kept("item_id", config.min_item_interactions)
    return PairWeights(pairs, users, items, reference, n_total - n_counted, consumed)


# --------------------------------------------------------------------------------------------
# Prepare: weights, vocabularies, holdout; the one collection to the driver
# --------------------------------------------------------------------------------------------


@dataclass(eq=False)
class Prepared:
    """What `fit` needs: the driver's matrices and the indexed pairs, still in Spark."""

    interactions: Interactions
    holdout: Holdout  # test sampled (training.sample_test_users)
    pairs: DataFrame  # u, i, weight, positive, in_test, ... (persisted; `fit` unpersists it)
    manifest: dict[str, Any]
    erased: dict[str, int]
    seconds: dict[str, float] = field(default_factory=dict)


def _index_frame(spark: SparkSession, column: str, index: str, ids: npt.NDArray[Any]) -> DataFrame:
    """(column, index) for sorted ids, sent from the driver as Arrow."""
    table = pa.table(
        {column: pa.array(ids.tolist(), pa.string()), index: np.arange(len(ids), dtype=np.int32)}
    )
    return spark.createDataFrame(table)


def _csr(
    rows: npt.NDArray[np.int64],
    cols: npt.NDArray[np.int64],
    data: npt.NDArray[Any],
    shape: tuple[int, int],
) -> sp.csr_matrix:
    matrix = sp.csr_matrix((data, (rows, cols)), shape=shape)
    matrix.sort_indices()
    return matrix


def _collect(frame: DataFrame) -> dict[str, npt.NDArray[Any]]:
    """A DataFrame's columns on the driver as numpy arrays, through Arrow (no pandas: PySpark's
    pandas conversions lag pandas' releases)."""
    table = frame.toArrow()
    return {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}


def prepare(
    spark: SparkSession,
    directory: Path,
    config: FeatureConfig,
    *,
    erased: Mapping[str, int] | None = None,
    consumed_types: Iterable[str] = (),
    holdout_fraction: float = 0.2,
    seed: int = 42,
    max_eval_users: int | None = 50_000,
    min_interactions: int = 3,
) -> Prepared:
    """Read the export and build everything before the fits (see the module docstring)."""
    clock = time.perf_counter
    seconds: dict[str, float] = {}
    start = clock()
    events, manifest, before = read_export(spark, Path(directory), erased)
    weights = pair_weights(events, config, consumed_types)
    pairs = weights.pairs.persist()
    # The vocabularies: sorted on the driver, which holds them for the artifact anyway (Python's
    # string order, as features.factorize), and joined back as dense indices; the inner joins
    # also apply the minimum counts.
    user_ids = np.sort(_collect(weights.users)["user_id"].astype(object))
    item_ids = np.sort(_collect(weights.items)["item_id"].astype(object))
    users = _index_frame(spark, "user_id", "u", user_ids)
    items = _index_frame(spark, "item_id", "i", item_ids)
    indexed = pairs.join(F.broadcast(items), "item_id").join(users, "user_id")

    # The holdout: per user, the newest `fraction` of their positive items (training.split_holdout).
    positive = indexed.where(F.col("positive"))
    per_user = Window.partitionBy("u")
    newest_first = Window.partitionBy("u").orderBy(
        F.col("last_seen").desc(), F.xxhash64(F.lit(seed), F.col("u"), F.col("i"))
    )
    n = F.count(F.lit(1)).over(per_user)
    n_test = F.least(
        F.greatest(F.floor(F.lit(holdout_fraction) * n + F.lit(0.5)), F.lit(1)), n - F.lit(1)
    )
    n_test = F.when(n >= F.lit(max(min_interactions, 2)), n_test).otherwise(F.lit(0))
    split = positive.select(
        "u", "i", (F.row_number().over(newest_first) - F.lit(1) < n_test).alias("in_test")
    )
    table = indexed.join(split, ["u", "i"], "left").withColumn(
        "in_test", F.coalesce(F.col("in_test"), F.lit(False))
    )
    consumed_columns = [f"consumed_{k}" for k in range(len(weights.consumed_types))]
    table = table.select(
        "u",
        "i",
        "weight",
        "last_seen",
        "positive",
        "negative",
        "in_test",
        "n_events",
        *consumed_columns,
    ).persist()

    frame = _collect(table)
    seconds["features"] = clock() - start

    start = clock()
    shape = (len(user_ids), len(item_ids))
    u = frame["u"].astype(np.int64)
    i = frame["i"].astype(np.int64)
    is_positive = frame["positive"].astype(bool)
    is_negative = frame["negative"].astype(bool)
    in_test = frame["in_test"].astype(bool)
    weight = frame["weight"].astype(np.float64)
    last_seen = frame["last_seen"].astype(np.float64)  # NaN where the pair has no positive
    pos_u, pos_i = u[is_positive], i[is_positive]
    weight_matrix = _csr(pos_u, pos_i, weight[is_positive].astype(np.float32), shape)
    last_seen_matrix = _csr(pos_u, pos_i, last_seen[is_positive], shape)
    negatives = _csr(u[is_negative], i[is_negative], np.ones(is_negative.sum(), bool), shape)
    popularity = np.bincount(pos_i, minlength=shape[1]).astype(np.int64)
    window_start = weights.now - config.popularity_window_days * SECONDS_PER_DAY
    recent = is_positive & (np.nan_to_num(last_seen, nan=-np.inf) >= window_start)
    recent_popularity = np.bincount(i[recent], minlength=shape[1]).astype(np.int64)
    type_counts = {}
    for k, event_type in enumerate(weights.consumed_types):
        counts = frame[f"consumed_{k}"].astype(np.int32)
        has = counts > 0
        type_counts[event_type] = _csr(u[has], i[has], counts[has], shape)
    interactions = Interactions(
        users=Vocabulary(user_ids),
        items=Vocabulary(item_ids),
        weights=weight_matrix,
        last_seen=last_seen_matrix,
        negatives=negatives,
        popularity=popularity,
        recent_popularity=recent_popularity,
        type_counts=type_counts,
        n_events=int(frame["n_events"].sum()),
        n_ignored_events=weights.n_ignored_events,
        now=weights.now,
        config=config,
    )
    train_mask = is_positive & ~in_test
    test_mask = is_positive & in_test
    holdout = Holdout(
        train=_csr(u[train_mask], i[train_mask], weight[train_mask].astype(np.float32), shape),
        test=_csr(u[test_mask], i[test_mask], weight[test_mask].astype(np.float32), shape),
    )
    holdout = sample_test_users(holdout, max_eval_users, seed)
    pairs.unpersist()
    seconds["split"] = clock() - start
    return Prepared(
        interactions=interactions,
        holdout=holdout,
        pairs=table,
        manifest=manifest,
        erased=before,
        seconds=seconds,
    )


# --------------------------------------------------------------------------------------------
# Fit
# --------------------------------------------------------------------------------------------


def _ratings(pairs: DataFrame, params: ALSParams, weights: sp.csr_matrix) -> tuple[DataFrame, Any]:
    """(u, i, r) with r = f(w) of `params`' confidence fitted on `weights` (the same pairs on
    the driver), and that fitted confidence."""
    confidence = params.fit_confidence(weights)
    w = F.col("weight")
    if confidence.scheme == "log1p":
        f = F.log1p(w)
    else:
        spark = pairs.sparkSession
        n_items = len(confidence.item_length_norm)
        norms = spark.createDataFrame(
            list(zip(range(n_items), confidence.item_length_norm.tolist(), strict=True)),
            "i int, norm double",
        )
        pairs = pairs.join(F.broadcast(norms), "i")
        per_user = F.count(F.lit(1)).over(Window.partitionBy("u"))
        idf = F.lit(math.log(max(n_items, 1))) - F.log1p(per_user)
        k1 = F.lit(confidence.bm25_k1)
        f = F.greatest(w * (k1 + F.lit(1.0)) / (k1 * F.col("norm") + w) * idf, F.lit(0.0))
    rated = pairs.select("u", "i", F.greatest(f, F.lit(MIN_RATING)).cast("float").alias("r"))
    return rated, confidence


def _als(params: ALSParams, reg_param: float, blocks: int | None) -> ALS:
    als = ALS(
        rank=params.factors,
        maxIter=params.iterations,
        regParam=reg_param,
        alpha=params.alpha,
        implicitPrefs=True,
        nonnegative=False,
        seed=params.random_state,
        userCol="u",
        itemCol="i",
        ratingCol="r",
        coldStartStrategy="drop",
    )
    if blocks:
        als = als.setNumUserBlocks(blocks).setNumItemBlocks(blocks)
    return als


def default_blocks(spark: SparkSession) -> int:
    """MLlib's user and item blocks when not given: one per core Spark has (its default
    parallelism), at least 2; MLlib's own default, 10, makes tiny tasks in local mode."""
    return max(2, int(spark.sparkContext.defaultParallelism))


def _factors(
    frame: DataFrame, n_rows: int, rank: int, rows: IndexArray | None = None
) -> npt.NDArray[np.float32]:
    """MLlib's (id, features) factors as a dense array; rows it has none for stay 0 (users or
    items without training pairs: implicit solves those to 0 as well)."""
    if rows is not None:
        wanted = frame.sparkSession.createDataFrame([(int(r),) for r in rows], "id int")
        frame = frame.join(F.broadcast(wanted), "id")
    result = np.zeros((n_rows, rank), dtype=np.float32)
    table = frame.toArrow()
    if table.num_rows:
        ids = table.column("id").to_numpy().astype(np.int64)
        values = table.column("features").combine_chunks().flatten().to_numpy()
        result[ids] = values.reshape(len(ids), rank).astype(np.float32)
    return result


def fit(
    prepared: Prepared,
    params: ALSParams,
    *,
    active: ActiveModel | None = None,
    k: int = 10,
    family_of: IndexArray | None = None,
    max_per_family: int = 1,
    item_categories: IndexArray | None = None,
    diversity: float = 0.0,
    blocks: int | None = None,
) -> tuple[TrainedModel, dict[str, Any]]:
    """The candidate on the holdout (scored with the implicit engine's metric code), then the
    final fit on all pairs; the model and what the version records about the engine."""
    clock = time.perf_counter
    seconds: dict[str, float] = {}
    interactions, holdout = prepared.interactions, prepared.holdout
    if interactions.weights.nnz == 0:
        raise ValueError("no positive interactions to train on")
    blocks = blocks or default_blocks(prepared.pairs.sparkSession)
    n_users, n_items = interactions.shape

    start = clock()
    positive = prepared.pairs.where(F.col("positive")).select("u", "i", "weight", "in_test")
    train_pairs = positive.where(~F.col("in_test"))
    ratings, _ = _ratings(train_pairs, params, holdout.train)
    holdout_reg = mllib_reg_param(
        params.regularization,
        holdout.train.nnz,
        int(np.count_nonzero(np.diff(holdout.train.indptr))),
        int(np.count_nonzero(np.bincount(holdout.train.indices, minlength=n_items))),
    )
    model = _als(params, holdout_reg, blocks).fit(ratings)
    test_users = np.flatnonzero(np.diff(holdout.test.indptr))
    candidate_items = _factors(model.itemFactors, n_items, params.factors)
    candidate_users = _factors(model.userFactors, n_users, params.factors, test_users)
    seconds["fit_holdout"] = clock() - start

    start = clock()
    candidate = als_from_factors(candidate_users, candidate_items, params)
    metrics, baseline_metrics, comparison = score_holdout(
        candidate,
        candidate_items,
        interactions,
        holdout,
        active,
        k,
        family_of,
        max_per_family,
        item_categories,
        diversity,
    )
    seconds["evaluate"] = clock() - start

    start = clock()
    ratings, fitted_confidence = _ratings(positive, params, interactions.weights)
    reg_param = mllib_reg_param(
        params.regularization,
        interactions.weights.nnz,
        int(np.count_nonzero(np.diff(interactions.weights.indptr))),
        int(np.count_nonzero(interactions.popularity)),
    )
    final = _als(params, reg_param, blocks).fit(ratings)
    user_factors = _factors(final.userFactors, n_users, params.factors)
    item_factors = _factors(final.itemFactors, n_items, params.factors)
    user_items = fitted_confidence.transform(interactions.weights)
    seconds["fit_final"] = clock() - start
    prepared.pairs.unpersist()

    spark = prepared.pairs.sparkSession
    info = {
        "name": ENGINE,
        "spark_version": spark.version,
        "master": spark.sparkContext.master,
        "mllib_reg_param": reg_param,
        "mllib_reg_param_holdout": holdout_reg,
        "mllib_blocks": blocks,
        "reg_calibration": REG_CALIBRATION,
        "export_runs": export_files.last_run(prepared.manifest),
        "erased_learners_excluded": len(prepared.erased),
    }
    trained = TrainedModel(
        params=params,
        users=interactions.users,
        items=interactions.items,
        user_factors=user_factors,
        item_factors=item_factors,
        user_items=user_items,
        user_weights=interactions.weights,
        confidence=fitted_confidence,
        metrics=metrics,
        baseline_metrics=baseline_metrics,
        comparison=comparison,
        n_events=interactions.n_events,
        n_test_users=holdout.n_test_users,
        seconds=seconds,
    )
    return trained, info
