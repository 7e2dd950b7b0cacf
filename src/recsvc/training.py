"""Training and offline evaluation: the only importer of implicit's ALS.

Owns the hyperparameters (`ALSParams`), the per-user newest-interactions holdout
(`split_holdout`), model fitting (`fit_als`, `PopularityModel`), top-k metrics (`evaluate`) and
the pipeline that ties them together (`train_model`): evaluate the candidate, the popularity
baseline and optionally the active model on one split, then refit the candidate on all data.

Everything is deterministic: seeded splits, seeded factor initialisation, a fixed thread count
and BLAS limited to one thread while implicit runs (also silences implicit's BLAS warning).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
from implicit.als import AlternatingLeastSquares
from implicit.cpu.als import AlternatingLeastSquares as CpuAlternatingLeastSquares
from threadpoolctl import threadpool_limits

from recsvc.features import Confidence, ConfidenceScheme, Interactions, Vocabulary
from recsvc.lists import mmr, pool_size, rank_in_family, similarity

FloatArray = npt.NDArray[np.float32]
IndexArray = npt.NDArray[np.int64]
Metrics = dict[str, float]

METRIC_NAMES = ("ndcg@10", "precision@10", "recall@10", "map@10", "coverage")


@dataclass(frozen=True)
class ALSParams:
    """ALS hyperparameters. Confidence is computed by `features.Confidence` (c = 1 + alpha *
    f(w)); implicit's own alpha is then fixed at 1.

    Defaults come from the MovieLens-100k research (bench/ml100k_research.py): log1p confidence
    with alpha 2 and a regularization about 15x alpha (30) gave nDCG@10 0.49 on the Microsoft
    Recommenders protocol, against 0.33 for implicit's defaults (regularization 0.01); factors
    (32..200) and iterations beyond 10 barely mattered.
    """

    factors: int = 64
    regularization: float = 30.0
    alpha: float = 2.0
    iterations: int = 15
    confidence: ConfidenceScheme = "log1p"
    bm25_k1: float = 100.0
    bm25_b: float = 0.8
    random_state: int = 42
    num_threads: int = 1

    def __post_init__(self) -> None:
        if self.factors < 1 or self.iterations < 1:
            raise ValueError("factors and iterations must be >= 1")
        if self.regularization < 0 or self.alpha < 0:
            raise ValueError("regularization and alpha must be >= 0")
        if self.confidence not in ("log1p", "bm25"):
            raise ValueError(f"unknown confidence scheme {self.confidence!r}")
        if self.num_threads < 1:
            # 0 would mean "all cores" in implicit: not reproducible across machines.
            raise ValueError("num_threads must be >= 1")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ALSParams:
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in values.items() if k in known})

    def fit_confidence(self, weights: sp.csr_matrix) -> Confidence:
        """The confidence transform of these settings, fitted on training `weights`."""
        return Confidence.fit(weights, self.alpha, self.confidence, self.bm25_k1, self.bm25_b)

    def confidence_of(self, weights: sp.csr_matrix) -> sp.csr_matrix:
        """The confidence matrix to fit on: the transform fitted on `weights` and applied to
        them. Rows added later (fold-in) go through the fitted transform instead."""
        return self.fit_confidence(weights).transform(weights)


class Recommender(Protocol):
    """What `evaluate` needs: implicit's batch `recommend` (ids, scores; -1 pads short rows)."""

    def recommend(
        self,
        userid: IndexArray,
        user_items: sp.csr_matrix,
        N: int = 10,  # noqa: N803  (implicit's name)
        filter_already_liked_items: bool = True,
        filter_items: IndexArray | None = None,
    ) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]: ...


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------


def _new_als(params: ALSParams) -> CpuAlternatingLeastSquares:
    # Constructed inside a BLAS limit so implicit's "OpenBLAS uses N threads" check sees 1.
    with threadpool_limits(limits=1, user_api="blas"):
        model: CpuAlternatingLeastSquares = AlternatingLeastSquares(
            factors=params.factors,
            regularization=params.regularization,
            alpha=1.0,
            dtype=np.float32,
            use_gpu=False,
            iterations=params.iterations,
            calculate_training_loss=False,
            num_threads=params.num_threads,
            random_state=params.random_state,
        )
    return model


def _as_csr32(matrix: sp.spmatrix | sp.sparray) -> sp.csr_matrix:
    # implicit warns (and converts) on non-CSR input; convert once here, silently.
    result = sp.csr_matrix(matrix, dtype=np.float32)
    result.sort_indices()
    return result


def fit_als(user_confidence: sp.csr_matrix, params: ALSParams) -> CpuAlternatingLeastSquares:
    """Fit ALS on a users x items confidence matrix (see `ALSParams.confidence_of`)."""
    model = _new_als(params)
    with threadpool_limits(limits=1, user_api="blas"):
        model.fit(_as_csr32(user_confidence), show_progress=False)
    return model


def als_from_factors(
    user_factors: FloatArray, item_factors: FloatArray, params: ALSParams
) -> CpuAlternatingLeastSquares:
    """An implicit ALS model around stored factors, for serving (recommend, explain,
    recalculate_user) without importing implicit elsewhere."""
    model = _new_als(params)
    model.user_factors = np.ascontiguousarray(user_factors, dtype=np.float32)
    model.item_factors = np.ascontiguousarray(item_factors, dtype=np.float32)
    return model


def fold_in_users(
    model: CpuAlternatingLeastSquares,
    confidence: Confidence,
    weights: sp.csr_matrix,
    limit_blas: bool = True,
) -> tuple[FloatArray, sp.csr_matrix]:
    """Least-squares user factors for every row of `weights` (users x the model's items), given
    the item factors, and the confidence rows they were computed from (explain's input).

    The one fold-in path: serving (`Scorer`) and the offline evaluation of an active model
    (`evaluate_active`) both call it, with the confidence fitted when the model was trained.
    `limit_blas=False` skips threadpoolctl (~1.5 ms per call, more than a fold-in): for
    serving processes, which limit BLAS threads through the environment instead.
    """
    rows = confidence.transform(weights)
    users = np.arange(rows.shape[0])
    limit = threadpool_limits(limits=1, user_api="blas") if limit_blas else contextlib.nullcontext()
    with limit:
        factors: FloatArray = np.atleast_2d(model.recalculate_user(users, rows))
    return factors, rows


class PopularityModel:
    """Baseline: items ranked by the number of distinct users who interacted with them."""

    def __init__(self, item_scores: npt.ArrayLike) -> None:
        self.item_scores = np.asarray(item_scores, dtype=np.float64)
        # stable sort: ties keep index order, so rankings are reproducible
        self._order = np.argsort(-self.item_scores, kind="stable")

    @classmethod
    def fit(cls, user_items: sp.csr_matrix) -> PopularityModel:
        return cls(np.bincount(sp.csr_matrix(user_items).indices, minlength=user_items.shape[1]))

    def recommend(
        self,
        userid: IndexArray,
        user_items: sp.csr_matrix,
        N: int = 10,  # noqa: N803
        filter_already_liked_items: bool = True,
        filter_items: IndexArray | None = None,
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
        scalar = np.isscalar(userid)
        n_rows = 1 if scalar else len(np.asarray(userid))
        order = self._order
        if filter_items is not None and len(filter_items):
            order = order[~np.isin(order, filter_items)]
        rows = sp.csr_matrix(user_items)
        longest = int(np.diff(rows.indptr).max(initial=0)) if filter_already_liked_items else 0
        # The N best not-yet-seen items are among the first N + (longest history) overall.
        candidates = order[: N + longest]
        if filter_already_liked_items and longest:
            seen = rows[:, candidates].toarray() != 0
        else:
            seen = np.zeros((n_rows, len(candidates)), dtype=bool)
        keep = ~seen
        slot = np.cumsum(keep, axis=1) - 1
        chosen = keep & (slot < N)
        ids = np.full((n_rows, N), -1, dtype=np.int64)
        scores = np.full((n_rows, N), -np.inf, dtype=np.float64)
        r, c = np.nonzero(chosen)
        ids[r, slot[r, c]] = candidates[c]
        scores[r, slot[r, c]] = self.item_scores[candidates[c]]
        if scalar:
            return ids[0], scores[0]
        return ids, scores


# --------------------------------------------------------------------------------------------
# Holdout and metrics
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Holdout:
    """`train` and `test` weights: disjoint, same shape (test may be a sample of the users)."""

    train: sp.csr_matrix
    test: sp.csr_matrix

    @property
    def n_test_users(self) -> int:
        return int(np.count_nonzero(np.diff(self.test.indptr)))


def split_holdout(
    interactions: Interactions,
    fraction: float = 0.2,
    seed: int = 42,
    min_interactions: int = 3,
    by: Literal["newest", "random"] = "newest",
) -> Holdout:
    """Per user, the newest `fraction` of their items (by `last_seen`, at least one, at most all
    but one) goes to test; with by="random", a seeded random `fraction` instead. Users with
    fewer than `min_interactions` items stay whole in train. Ties in time are broken by a seeded
    random draw, so the split is deterministic.
    """
    if not 0 < fraction < 1:
        raise ValueError("fraction must be in (0, 1)")
    weights = interactions.weights
    last_seen = interactions.last_seen
    if not (
        np.array_equal(weights.indptr, last_seen.indptr)
        and np.array_equal(weights.indices, last_seen.indices)
    ):
        raise ValueError("weights and last_seen must share their sparsity pattern")
    per_user = np.diff(weights.indptr)
    rows = np.repeat(np.arange(len(per_user)), per_user)
    tiebreak = np.random.default_rng(seed).random(weights.nnz)
    newest_first = -last_seen.data if by == "newest" else np.zeros(weights.nnz)
    order = np.lexsort((tiebreak, newest_first, rows))  # by user, newest (or random) first
    position = np.empty(weights.nnz, dtype=np.int64)
    position[order] = np.arange(weights.nnz) - weights.indptr[rows[order]]
    n_test = np.clip(np.floor(fraction * per_user + 0.5), 1, per_user - 1)
    n_test = np.where(per_user >= max(min_interactions, 2), n_test, 0).astype(np.int64)
    in_test = position < n_test[rows]

    def part(mask: npt.NDArray[np.bool_]) -> sp.csr_matrix:
        matrix = sp.csr_matrix(weights, dtype=np.float32, copy=True)
        matrix.data[~mask] = 0
        matrix.eliminate_zeros()
        return matrix

    return Holdout(train=part(~in_test), test=part(in_test))


def _binary(matrix: sp.csr_matrix) -> sp.csr_matrix:
    result = sp.csr_matrix(matrix, dtype=np.float32, copy=True)
    result.data[:] = 1.0
    result.sort_indices()
    return result


def family_codes(items: Vocabulary, families: Mapping[str, str]) -> IndexArray:
    """Dense family codes 0..F-1 over the columns of `items`, for `evaluate(family_of=...)`.

    `families` maps item id -> family id for the items that share a family with another
    (`families.detect_families`); every other item gets a code of its own, so an empty mapping
    gives one family per item, i.e. evaluation as if there were no families.
    """
    labels = [("family", families[i]) if i in families else ("item", i) for i in items.ids]
    index: dict[tuple[str, str], int] = {}
    return np.fromiter((index.setdefault(label, len(index)) for label in labels), np.int64)


# implicit pads a top-N that runs out of allowed items with filtered ones scored -FLT_MAX
# (PopularityModel pads with id -1, score -inf). Asking for k x this many candidates makes that
# common, so served lists drop such entries; plain top-k evaluation keeps today's arithmetic.
FAMILY_CANDIDATES_PER_SLOT = 5
_FILTERED_SCORE = float(np.finfo(np.float32).min)


def serve_per_family(
    ids: IndexArray,
    valid: npt.NDArray[np.bool_],
    family_of: IndexArray,
    max_per_family: int,
    k: int,
) -> IndexArray:
    """The lists as a chatbot shows them: walking each ranked candidate row, keep an item unless
    `max_per_family` items of its family are already kept, and stop at `k` (-1 pads)."""
    families = np.where(valid, family_of[np.where(valid, ids, 0)], -1) + 1  # 0: invalid slot
    keep = valid & (rank_in_family(families) < max_per_family)
    slot = np.cumsum(keep, axis=1) - 1
    chosen = keep & (slot < k)
    served = np.full((len(ids), k), -1, dtype=np.int64)
    r, c = np.nonzero(chosen)
    served[r, slot[r, c]] = ids[r, c]
    return served


def _diversified(
    pool: IndexArray,
    ranked: IndexArray,
    scores: FloatArray,
    unit_vectors: FloatArray,
    categories: IndexArray,
    k: int,
    diversity: float,
) -> IndexArray:
    """Per row, `k` of the `pool` (family-limited candidates, -1 padded) chosen by `lists.mmr`
    on their scores (looked up in `ranked`/`scores`), as serving chooses a list."""
    served = np.full((len(pool), k), -1, dtype=np.int64)
    for row in range(len(pool)):
        candidates = pool[row][pool[row] >= 0]
        if not len(candidates):
            continue
        score_of = dict(zip(ranked[row].tolist(), scores[row].tolist(), strict=True))
        relevance = np.asarray([score_of[i] for i in candidates.tolist()])
        alike = similarity(unit_vectors[candidates], categories[candidates])
        chosen = candidates[mmr(relevance, alike, k, diversity)]
        served[row, : len(chosen)] = chosen
    return served


def _intra_list_distance(
    ids: IndexArray, valid: npt.NDArray[np.bool_], unit_vectors: FloatArray
) -> tuple[float, int]:
    """Sum over lists of 2+ items of their mean pairwise (1 - cosine), and how many lists."""
    vectors = unit_vectors[np.where(valid, ids, 0)] * valid[..., None]
    gram = np.einsum("ukf,ujf->ukj", vectors, vectors)
    n = valid.sum(axis=1)
    pairs = n * (n - 1) / 2
    # Sum over i < j of cos = (sum over all i, j - diagonal) / 2.
    cosine_sum = (gram.sum(axis=(1, 2)) - np.einsum("ukk->u", gram)) / 2
    scored = pairs > 0
    distance = 1.0 - cosine_sum[scored] / pairs[scored]
    return float(distance.sum()), int(scored.sum())


def evaluate(
    model: Recommender,
    train: sp.csr_matrix,
    test: sp.csr_matrix,
    k: int = 10,
    exclude: sp.csr_matrix | None = None,
    unrecommendable: IndexArray | None = None,
    batch_size: int = 2048,
    family_of: IndexArray | None = None,
    max_per_family: int = 1,
    item_vectors: FloatArray | None = None,
    item_categories: IndexArray | None = None,
    diversity: float = 0.0,
) -> Metrics:
    """Top-k metrics over the users that have test items.

    Never recommended to a user: their train items and `exclude` (e.g. negatives). Never
    recommended at all: items without train interactions and `unrecommendable`.
    Per user, averaged: precision = hits/k; recall = hits/|test|; nDCG with binary gains,
    IDCG over min(|test|, k) positions; AP@k = sum of precision at each hit / min(|test|, k).
    coverage = distinct recommended items / all items. Keys carry "@10" whatever `k` is, as the
    model contract fixes them (docs/design.md §2).

    With `family_of` (a family code per item column, `family_codes`), the lists are scored as
    served, at most `max_per_family` editions of a course family each (`serve_per_family` on
    k x FAMILY_CANDIDATES_PER_SLOT candidates): the item-level keys then measure what a learner
    sees, and three keys are added. family_ndcg@10: a hit is an item of a family that holds any
    of the user's test items, each family counted once, IDCG over min(|test families|, k) —
    the edition a learner took need not be the one shown. distinct_families@10: distinct
    families / items, averaged over non-empty lists. ild@10 (only with `item_vectors`, rows =
    item columns): mean pairwise 1 - cosine within a list, over lists of 2+ items; any model's
    lists can be measured with one model's vectors, which keeps the figure comparable.
    With `diversity` > 0 (and `family_of` and `item_vectors`; `item_categories`, the items'
    `lists.category_codes`, optional) each list is then chosen from the family-limited candidates
    by maximal marginal relevance, as serving chooses it (`lists.mmr`).
    Without `family_of` the arithmetic is exactly the plain top-k one above.
    """
    n_items = train.shape[1]
    seen = _binary(train if exclude is None else train + exclude)
    relevant = _binary(test)
    cold = np.flatnonzero(np.bincount(train.indices, minlength=n_items) == 0)
    blocked = cold if unrecommendable is None else np.union1d(cold, unrecommendable)
    blocked = blocked.astype(np.int32)

    users = np.flatnonzero(np.diff(relevant.indptr))
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    ideal = np.cumsum(discounts)
    totals = dict.fromkeys(("ndcg", "precision", "recall", "map"), 0.0)
    recommended = np.zeros(n_items, dtype=bool)
    served = family_of is not None
    if served:
        if max_per_family < 1:
            raise ValueError("max_per_family must be >= 1")
        family_of = np.asarray(family_of, dtype=np.int64)
        if family_of.shape != (n_items,):
            raise ValueError("family_of needs one family code per item column")
        # users x families: which families hold each user's test items
        in_family = sp.csr_matrix(
            (np.ones(n_items, dtype=np.float32), (np.arange(n_items), family_of)),
            shape=(n_items, int(family_of.max(initial=-1)) + 1),
        )
        relevant_families = _binary(relevant @ in_family)
        totals.update(family_ndcg=0.0, distinct=0.0, ild=0.0)
        n_lists = n_ild_lists = 0
        unit_vectors = None
        if item_vectors is not None:
            norms = np.linalg.norm(item_vectors, axis=1, keepdims=True)
            unit_vectors = item_vectors / np.where(norms > 0, norms, 1.0)
    diversify = served and diversity > 0 and unit_vectors is not None
    if diversify:
        categories = (
            np.asarray(item_categories, dtype=np.int64)
            if item_categories is not None
            else np.full((n_items, 1), -1, dtype=np.int64)
        )
    with threadpool_limits(limits=1, user_api="blas"):
        for start in range(0, len(users), batch_size):
            batch = users[start : start + batch_size]
            ids, scores = model.recommend(
                batch,
                seen[batch],
                N=min(k * FAMILY_CANDIDATES_PER_SLOT, n_items) if served else k,
                filter_already_liked_items=True,
                filter_items=blocked if len(blocked) else None,
            )
            ids = np.asarray(ids, dtype=np.int64)
            if served:
                scores = np.asarray(scores, dtype=np.float64)
                allowed = (ids >= 0) & (scores > _FILTERED_SCORE)
                if diversify:
                    size = pool_size(k)
                    pool = serve_per_family(ids, allowed, family_of, max_per_family, size)
                    ids = _diversified(pool, ids, scores, unit_vectors, categories, k, diversity)
                else:
                    ids = serve_per_family(ids, allowed, family_of, max_per_family, k)
            valid = ids >= 0
            recommended[ids[valid]] = True
            safe_ids = np.where(valid, ids, 0)
            truth = relevant[batch]
            hits = np.asarray(truth[np.arange(len(batch))[:, None], safe_ids].todense()) > 0
            hits &= valid
            n_relevant = np.diff(truth.indptr)
            n_hits = hits.sum(axis=1)
            capped = np.minimum(n_relevant, k)
            totals["precision"] += float((n_hits / k).sum())
            totals["recall"] += float((n_hits / n_relevant).sum())
            totals["ndcg"] += float(((hits @ discounts) / ideal[capped - 1]).sum())
            precision_at = np.cumsum(hits, axis=1) / np.arange(1, k + 1)
            totals["map"] += float(((precision_at * hits).sum(axis=1) / capped).sum())
            if not served:
                continue

            families = np.where(valid, family_of[safe_ids], -1)
            first = valid & (rank_in_family(families + 1) == 0)
            truth_families = relevant_families[batch]
            at = (np.arange(len(batch))[:, None], np.where(valid, families, 0))
            family_hits = (np.asarray(truth_families[at].todense()) > 0) & first
            capped_families = np.minimum(np.diff(truth_families.indptr), k)
            totals["family_ndcg"] += float(
                ((family_hits @ discounts) / ideal[capped_families - 1]).sum()
            )
            listed = valid.sum(axis=1)
            nonempty = listed > 0
            totals["distinct"] += float((first.sum(axis=1)[nonempty] / listed[nonempty]).sum())
            n_lists += int(nonempty.sum())
            if unit_vectors is not None:
                distance, n_scored = _intra_list_distance(ids, valid, unit_vectors)
                totals["ild"] += distance
                n_ild_lists += n_scored

    n_users = max(len(users), 1)
    metrics = {
        "ndcg@10": totals["ndcg"] / n_users,
        "precision@10": totals["precision"] / n_users,
        "recall@10": totals["recall"] / n_users,
        "map@10": totals["map"] / n_users,
        "coverage": float(recommended.sum()) / max(n_items, 1),
    }
    if served:
        metrics["family_ndcg@10"] = totals["family_ndcg"] / n_users
        metrics["distinct_families@10"] = totals["distinct"] / max(n_lists, 1)
        if unit_vectors is not None:
            # No NaN when no list has two items (JSON has no NaN): 0, nothing diverse shown.
            metrics["ild@10"] = totals["ild"] / max(n_ild_lists, 1)
    return metrics


# --------------------------------------------------------------------------------------------
# Pipeline
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class ActiveModel:
    """The model currently serving, to be compared with the candidate."""

    users: Vocabulary
    items: Vocabulary
    item_factors: FloatArray
    user_items: sp.csr_matrix  # the pairs it was trained on
    params: ALSParams
    metrics: Metrics  # its own holdout metrics, recorded when it was trained
    # The confidence it was trained with (`ModelArtifact.fold_in_basis`); None: fitted on the
    # evaluation split's train weights with `params`.
    confidence: Confidence | None = None


@dataclass(frozen=True)
class Comparison:
    """Candidate vs active model on ground that is fair to both.

    `basis` is "unseen_pairs" when both were scored on the holdout pairs the active model never
    trained on (the active model's item factors would otherwise have seen the answers), or
    "recorded" when there are too few such pairs (no new data since the active model) and each
    model's own out-of-sample holdout metrics are compared instead.
    """

    basis: str
    candidate: Metrics
    active: Metrics
    n_users: int


MIN_COMPARISON_USERS = 50


def evaluate_active(
    active: ActiveModel,
    items: Vocabulary,
    holdout: Holdout,
    negatives: sp.csr_matrix | None = None,
    k: int = 10,
    family_of: IndexArray | None = None,
    item_vectors: FloatArray | None = None,
    max_per_family: int = 1,
    item_categories: IndexArray | None = None,
    diversity: float = 0.0,
) -> Metrics:
    """The active model scored on a split built from newer data (served lists with
    `family_of`, both that and `item_vectors` over the split's item columns: see `evaluate`).

    Every user is folded in from their train rows exactly as serving folds in a user with new
    events (`fold_in_users`, the active model's fitted confidence, items it does not know left
    out), so no user factors are fitted on the test pairs. Its vocabularies differ from the
    split's, so its item factors are then re-aligned by id for scoring (items it does not know
    are not recommendable, as when serving).
    """
    n_factors = active.item_factors.shape[1]
    train = _to_model_items(holdout.train, items, active.items)
    confidence = (
        active.params.fit_confidence(train) if active.confidence is None else active.confidence
    )
    own_items = als_from_factors(
        np.zeros((0, n_factors), dtype=np.float32), active.item_factors, active.params
    )
    # Only users with test items are scored, so only they need folding in.
    users = np.flatnonzero(np.diff(holdout.test.indptr))
    user_factors = np.zeros((holdout.train.shape[0], n_factors), dtype=np.float32)
    user_factors[users] = fold_in_users(own_items, confidence, train[users])[0]

    position = items.indices_of(active.items.ids.tolist())
    known = position >= 0
    aligned = np.zeros((len(items), n_factors), dtype=np.float32)
    aligned[position[known]] = active.item_factors[known]
    unknown = np.setdiff1d(np.arange(len(items)), position[known])
    model = als_from_factors(user_factors, aligned, active.params)
    return evaluate(
        model,
        holdout.train,
        holdout.test,
        k,
        negatives,
        unknown,
        family_of=family_of,
        max_per_family=max_per_family,
        item_vectors=item_vectors,
        item_categories=item_categories,
        diversity=diversity,
    )


def _to_model_items(
    weights: sp.csr_matrix, items: Vocabulary, model_items: Vocabulary
) -> sp.csr_matrix:
    """`weights` (columns: `items`) with the columns of `model_items`; pairs of items the model
    does not know are dropped, as serving drops them from a fold-in."""
    column = model_items.indices_of(items.ids.tolist())
    coo = sp.coo_matrix(weights)
    target = column[coo.col]
    keep = target >= 0
    result = sp.csr_matrix(
        (coo.data[keep], (coo.row[keep], target[keep])),
        shape=(weights.shape[0], len(model_items)),
        dtype=np.float32,
    )
    result.sort_indices()
    return result


def unseen_by(
    active: ActiveModel, interactions: Interactions, test: sp.csr_matrix
) -> sp.csr_matrix:
    """The test pairs the active model did not train on."""
    coo = test.tocoo()
    users = active.users.indices_of(interactions.users.ids[coo.row].tolist())
    items = active.items.indices_of(interactions.items.ids[coo.col].tolist())
    known = (users >= 0) & (items >= 0)
    seen = np.zeros(coo.nnz, dtype=bool)
    if known.any():
        pairs = active.user_items[users[known], items[known]]
        seen[known] = np.asarray(pairs).ravel() != 0
    keep = ~seen
    unseen = sp.csr_matrix(
        (coo.data[keep], (coo.row[keep], coo.col[keep])), shape=test.shape, dtype=np.float32
    )
    unseen.sort_indices()
    return unseen


def compare_with_active(
    candidate: Recommender,
    candidate_metrics: Metrics,
    active: ActiveModel,
    interactions: Interactions,
    holdout: Holdout,
    k: int = 10,
    family_of: IndexArray | None = None,
    item_vectors: FloatArray | None = None,
    max_per_family: int = 1,
    item_categories: IndexArray | None = None,
    diversity: float = 0.0,
) -> Comparison:
    """Both models on the same lists: as served when `family_of` is given (see `evaluate`)."""
    fresh = Holdout(holdout.train, unseen_by(active, interactions, holdout.test))
    if fresh.n_test_users < MIN_COMPARISON_USERS:
        return Comparison("recorded", *_like_for_like(candidate_metrics, dict(active.metrics)), 0)
    negatives = interactions.negatives
    served = {
        "family_of": family_of,
        "item_vectors": item_vectors,
        "max_per_family": max_per_family,
        "item_categories": item_categories,
        "diversity": diversity,
    }
    return Comparison(
        "unseen_pairs",
        evaluate(candidate, fresh.train, fresh.test, k, negatives, **served),
        evaluate_active(active, interactions.items, fresh, negatives, k, **served),
        fresh.n_test_users,
    )


def _like_for_like(candidate: Metrics, active: Metrics) -> tuple[Metrics, Metrics]:
    """Recorded metrics of two versions, ndcg@10 made comparable when only one was measured on
    served (family-deduplicated) lists: that one's plain top-k figure, item_ndcg@10, stands in.
    Otherwise the first version trained with families would be judged on different lists than
    the version it replaces, and the activation rule would compare unlike numbers."""

    def plain(metrics: Metrics) -> Metrics:
        if "item_ndcg@10" in metrics:
            return {**metrics, "ndcg@10": metrics["item_ndcg@10"]}
        return metrics

    served_candidate, served_active = "family_ndcg@10" in candidate, "family_ndcg@10" in active
    if served_candidate and not served_active:
        return plain(candidate), active
    if served_active and not served_candidate:
        return candidate, plain(active)
    return candidate, active


def sample_test_users(holdout: Holdout, max_users: int | None, seed: int) -> Holdout:
    """Keep the test items of at most `max_users` users (a seeded sample): on millions of users
    a sample of tens of thousands measures the same metrics at a fraction of the cost."""
    test_users = np.flatnonzero(np.diff(holdout.test.indptr))
    if max_users is None or len(test_users) <= max_users:
        return holdout
    keep = np.random.default_rng(seed).choice(test_users, size=max_users, replace=False)
    mask = np.zeros(holdout.test.shape[0], dtype=np.float32)
    mask[keep] = 1.0
    test = sp.csr_matrix(sp.diags(mask) @ holdout.test, dtype=np.float32)
    test.eliminate_zeros()
    return replace(holdout, test=test)


@dataclass(frozen=True, eq=False)
class TrainedModel:
    """A candidate fitted on all data, with its holdout metrics and what serving needs."""

    params: ALSParams
    users: Vocabulary
    items: Vocabulary
    user_factors: FloatArray
    item_factors: FloatArray
    user_items: sp.csr_matrix  # the confidence matrix of the final fit (for explain / filters)
    user_weights: sp.csr_matrix  # the weights it was computed from (fold-in adds to them)
    confidence: Confidence  # fitted on the final fit's weights; turns weights into user_items
    metrics: Metrics
    baseline_metrics: Metrics
    comparison: Comparison | None  # None when there is no active model
    n_events: int
    n_test_users: int
    seconds: Mapping[str, float] = field(default_factory=dict)

    @property
    def n_users(self) -> int:
        return len(self.users)

    @property
    def n_items(self) -> int:
        return len(self.items)


def score_holdout(
    candidate: Recommender,
    candidate_item_factors: FloatArray,
    interactions: Interactions,
    holdout: Holdout,
    active: ActiveModel | None = None,
    k: int = 10,
    family_of: IndexArray | None = None,
    max_per_family: int = 1,
    item_categories: IndexArray | None = None,
    diversity: float = 0.0,
) -> tuple[Metrics, Metrics, Comparison | None]:
    """The candidate (fitted on `holdout.train`), the popularity baseline and the active model
    on one holdout: (metrics, baseline metrics, comparison). Every training engine scores its
    candidate here, with the same metric code (see `train_model` for the served lists)."""
    served: dict[str, Any] = {}
    if family_of is not None:
        served = {
            "family_of": family_of,
            "item_vectors": candidate_item_factors,
            "max_per_family": max_per_family,
            "item_categories": item_categories,
            "diversity": diversity,
        }

    def score(model: Recommender, diversified: bool = True) -> Metrics:
        options = served if diversified else {**served, "diversity": 0.0}
        result = evaluate(model, holdout.train, holdout.test, k, interactions.negatives, **options)
        if served:
            plain = evaluate(model, holdout.train, holdout.test, k, interactions.negatives)
            result["item_ndcg@10"] = plain["ndcg@10"]
        return result

    metrics = score(candidate)
    baseline_metrics = score(PopularityModel.fit(holdout.train), diversified=False)
    comparison = (
        compare_with_active(candidate, metrics, active, interactions, holdout, k, **served)
        if active is not None
        else None
    )
    return metrics, baseline_metrics, comparison


def train_model(
    interactions: Interactions,
    params: ALSParams | None = None,
    holdout_fraction: float = 0.2,
    seed: int = 42,
    active: ActiveModel | None = None,
    k: int = 10,
    max_eval_users: int | None = 50_000,
    family_of: IndexArray | None = None,
    max_per_family: int = 1,
    item_categories: IndexArray | None = None,
    diversity: float = 0.0,
) -> TrainedModel:
    """Evaluate candidate, popularity and (optionally) the active model on one holdout, then
    refit the candidate on all interactions; the refit model is the one returned.

    With `family_of` (`family_codes` over `interactions.items`) every model is scored on its
    lists as served, at most `max_per_family` editions per course family, so the recorded
    ndcg@10 and the activation rule judge what learners see; candidate and popularity also
    record item_ndcg@10, the plain top-k figure on the same split, to compare with versions
    trained without families. ild@10 is measured with the candidate's holdout item factors for
    every model. With `diversity` the ALS lists are re-ranked by maximal marginal relevance as
    serving re-ranks them (`item_categories`: the items' `lists.category_codes`); popular lists are
    not, as served.
    """
    params = params or ALSParams()
    clock = time.perf_counter
    seconds: dict[str, float] = {}
    if interactions.weights.nnz == 0:
        raise ValueError("no positive interactions to train on")

    start = clock()
    holdout = sample_test_users(
        split_holdout(interactions, holdout_fraction, seed), max_eval_users, seed
    )
    seconds["split"] = clock() - start

    start = clock()
    candidate = fit_als(params.confidence_of(holdout.train), params)
    seconds["fit_holdout"] = clock() - start

    start = clock()
    metrics, baseline_metrics, comparison = score_holdout(
        candidate,
        np.asarray(candidate.item_factors),
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
    fitted_confidence = params.fit_confidence(interactions.weights)
    user_items = fitted_confidence.transform(interactions.weights)
    final = fit_als(user_items, params)
    seconds["fit_final"] = clock() - start

    return TrainedModel(
        params=params,
        users=interactions.users,
        items=interactions.items,
        user_factors=np.asarray(final.user_factors, dtype=np.float32),
        item_factors=np.asarray(final.item_factors, dtype=np.float32),
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


def is_not_worse(comparison: Comparison | None, key: str = "ndcg@10") -> bool:
    """Activation rule (docs/design.md §5): no active model, or candidate >= active on `key`.
    A tiny tolerance keeps float noise from blocking an identical retrain."""
    if comparison is None:
        return True
    candidate, active = comparison.candidate[key], comparison.active[key]
    return candidate >= active - 1e-9 or math.isclose(candidate, active)


# --------------------------------------------------------------------------------------------
# Hyperparameter search
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Trial:
    params: ALSParams
    metrics: Metrics
    seconds: float


def tuning_grid(base: ALSParams) -> list[ALSParams]:
    """The bounded search space of `recsvc tune`. Regularization matters most and depends on
    the data (implicit does not scale it by density); see bench/ml100k_research.py."""
    return [
        replace(base, factors=factors, regularization=reg, alpha=alpha, confidence=scheme)
        for scheme in ("log1p", "bm25")
        for reg in (3.0, 10.0, 30.0, 100.0)
        for alpha in (1.0, 2.0, 5.0)
        for factors in (32, 64, 128)
    ]


def tune(
    holdout: Holdout,
    grid: Sequence[ALSParams],
    budget_seconds: float,
    seed: int = 42,
    negatives: sp.csr_matrix | None = None,
    on_trial: Callable[[Trial], None] | None = None,
) -> list[Trial]:
    """Fit and score grid points in a seeded random order until the time budget is spent;
    the trials, best ndcg@10 first. At least one trial always runs."""
    order = np.random.default_rng(seed).permutation(len(grid))
    deadline = time.monotonic() + budget_seconds
    trials: list[Trial] = []
    for position in order:
        if trials and time.monotonic() >= deadline:
            break
        params = grid[int(position)]
        start = time.perf_counter()
        model = fit_als(params.confidence_of(holdout.train), params)
        metrics = evaluate(model, holdout.train, holdout.test, 10, negatives)
        trials.append(Trial(params, metrics, time.perf_counter() - start))
        if on_trial is not None:
            on_trial(trials[-1])
    return sorted(trials, key=lambda t: -t.metrics["ndcg@10"])
