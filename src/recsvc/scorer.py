"""Scorer: the in-memory model that answers recommendation requests. No I/O.

One `Scorer` is built per model version (`ModelArtifact`) and owns everything a request needs:

* the request/response types the API layer fills in: `CatalogView`, `RecentEvent`,
  `RecommendRequest` -> `RecommendResult` of `Recommendation`s (with `Reason`s);
* the strategy of each request (docs/design.md section 2): `als`, `als_foldin`, `query`,
  `popular`, `content`, with "+popular" appended when popular items filled a short list;
* fold-in: events newer than the model (and session items) weighted like training
  (`features.event_weights`), added to the user's stored weights, turned into confidences by
  the transform fitted at training, then the user's factors recomputed
  (`training.fold_in_users`);
* batched scoring: every request of a `recommend` call that needs a full ALS ranking is scored
  by one matrix product (users stacked @ item factors.T); for a catalog with an item index
  (`ann.py`, 200,000 courses or more) each scores only its best clusters' items;
* filters applied in every strategy: consumed, negative (e.g. dislike), unrecommendable,
  excluded and out-of-category items;
* lists a person reads (`lists.py`): at most `max_per_family` editions of one course family in
  every strategy, the others named in `editions`, and maximal marginal relevance re-ranking of
  personal and query lists (`diversity`);
* explanations (implicit's `explain`), item-to-item similarity and popularity lists.

Item spaces: ALS strategies and the popular fill rank only the model's items; `query` and
`content` also reach items known only to the text index (courses newer than the model).
A catalog item the model has never seen and the text index does not hold cannot be returned.

Memory: the arrays of a loaded version are memory-mapped (artifact.py) and used as they are, so
the workers of a machine share them. Thread safety: after construction the scorer only reads
its arrays; its one cache (indices
derived from the latest `CatalogView`) is replaced atomically, so concurrent calls are safe.
BLAS threads are not limited here (threadpoolctl costs ~1.5 ms per call): serving processes
set OPENBLAS_NUM_THREADS / OMP_NUM_THREADS.

Exceptions:

    UnknownItem(KeyError)   `similar` on an item neither the model nor the text index knows
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
import scipy.linalg
import scipy.sparse as sp

from recsvc import lists
from recsvc.artifact import ModelArtifact, canonical_csr
from recsvc.audience import CONTENT_NEIGHBOURS, AudienceResult, Audiences
from recsvc.config import DEFAULT_CONSUMED_TYPES
from recsvc.features import FeatureConfig, Vocabulary, event_weights, item_text
from recsvc.training import ALSParams, als_from_factors, fold_in_users

Float32Array = npt.NDArray[np.float32]
IndexArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

# Rows of one scoring matrix product: 64 users x 100k items is 25 MB of float32 scores.
MAX_BATCH_ROWS = 64
# Batches up to this many rows are scored in two threads when a helper thread is given.
PARALLEL_MAX_ROWS = 2
EXPLAIN_REASONS = 3
# Bound on cached category filters per catalog view (clients choose the category sets).
_MAX_CACHED_CATEGORY_SETS = 256


class UnknownItem(KeyError):
    """The item is unknown to the model and to the text index."""

    def __init__(self, item_id: str) -> None:
        super().__init__(item_id)
        self.item_id = item_id

    def __str__(self) -> str:
        return f"unknown item {self.item_id!r}"


# --------------------------------------------------------------------------------------------
# Inputs and outputs
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class CatalogView:
    """What the catalog says right now (the API refreshes it every few seconds).

    Items absent from `titles` (stubs known only from events) are recommendable, with title ""
    and no categories. Reuse one view until the next refresh: the scorer caches indices derived
    from it by identity.
    """

    titles: Mapping[str, str] = field(default_factory=dict)
    categories: Mapping[str, frozenset[str]] = field(default_factory=dict)
    unrecommendable: frozenset[str] = frozenset()  # unavailable or deleted items
    # Course families (families.detect_families): item -> family id, for items with editions,
    # and family id -> its items.
    families: Mapping[str, str] = field(default_factory=dict)
    family_members: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # For learner portraits and audiences (portrait.py): tags, and numeric `price` attributes.
    tags: Mapping[str, frozenset[str]] = field(default_factory=dict)
    prices: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class RecentEvent:
    """One of the user's events newer than the model."""

    item_id: str
    type: str
    value: float | None
    occurred_at: float  # unix seconds


@dataclass(frozen=True)
class RecommendRequest:
    user_id: str | None = None
    recent: tuple[RecentEvent, ...] = ()
    session_items: tuple[str, ...] = ()
    query: str | None = None
    n: int = 10
    categories: frozenset[str] | None = None  # an item must have at least one of them
    exclude: frozenset[str] = frozenset()
    explain: bool = False
    max_per_family: int = 1  # editions of one course family in the list
    diversity: float = 0.0  # 0..1: how much score to trade for unlike items (lists.mmr)


class Reason(NamedTuple):
    """One of the user's own items and its contribution to a recommendation's score."""

    item_id: str
    title: str
    weight: float


class Recommendation(NamedTuple):
    """`score` depends on the strategy that produced the item: ALS dot product (`als`,
    `als_foldin`), blended text/taste score in [0, 1] (`query`), cosine (`similar`), or the
    number of users who interacted with the item (popular items, including a "+popular" fill).
    `reasons` is None unless explanations were asked for. (A named tuple: a list makes ten of
    them per request, at half the cost of a frozen dataclass.)"""

    item_id: str
    score: float
    title: str
    reasons: list[Reason] | None = None
    # The family's other recommendable editions not in the list: (item_id, title).
    editions: Sequence[tuple[str, str]] = ()


@dataclass(frozen=True)
class RecommendResult:
    strategy: str
    items: list[Recommendation]
    user_id: str | None = None


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _top_per_family(
    scores: Float32Array, plan: _Plan, n: int, items: IndexArray | None = None
) -> list[tuple[int, float]]:
    """The `n` best finite scores (item, score), best first, at most the plan's
    `max_per_family` of one family: more candidates (four times as many each round) only if
    families thin them. `items`: the item of each score, when not every item is scored."""
    per_family = plan.request.max_per_family
    wanted = n
    while True:
        top = lists.top_n(scores, wanted)
        universe = top if items is None else items[top]
        kept = plan.index.families.keep(universe, per_family)
        chosen, chosen_scores = universe[kept][:n], scores[top[kept][:n]]
        if len(chosen) >= n or len(top) < wanted:
            return list(zip(chosen.tolist(), chosen_scores.tolist(), strict=True))
        wanted *= 4


def _pool_size(request: RecommendRequest) -> int:
    """Candidates for diversity to choose the list from (just the list without it)."""
    return request.n if request.diversity <= 0.0 else lists.pool_size(request.n)


def _csr_row(matrix: sp.csr_matrix, row: int) -> tuple[IndexArray, npt.NDArray[Any]]:
    start, end = matrix.indptr[row], matrix.indptr[row + 1]
    return matrix.indices[start:end].astype(np.int64), matrix.data[start:end]


@dataclass
class _CatalogIndex:
    """Universe-index views of one `CatalogView` (see `Scorer` for the universe)."""

    catalog: CatalogView
    unrecommendable: BoolArray
    families: _Families
    members: dict[str, IndexArray] | None = None  # category -> universe indices, built lazily
    tag_members: dict[str, IndexArray] | None = None  # tag -> universe indices, built lazily
    blocked_by_categories: dict[frozenset[str], BoolArray] = field(default_factory=dict)
    # lists.category_codes over the universe, for the similarity of diversity; built lazily
    category_codes: IndexArray | None = None


class _Families:
    """Course families over the universe: a code per item (an item without editions has a
    code of its own), and each family's members, for the per-family limit of every strategy."""

    def __init__(self, family_of: IndexArray) -> None:
        self.family_of = family_of
        self._by_family = np.argsort(family_of, kind="stable")
        n_codes = int(family_of.max()) + 1 if len(family_of) else 0
        self._start = np.searchsorted(family_of[self._by_family], np.arange(n_codes + 1))
        self._size = np.diff(self._start)
        self.any_editions = bool((self._size > 1).any())  # False: nothing to limit or expand

    @classmethod
    def of(
        cls, catalog: CatalogView, universe_index: Callable[[str], int | None], size: int
    ) -> _Families:
        codes: dict[str, int] = {}
        family_of = np.full(size, -1, dtype=np.int64)
        for item_id, family in catalog.families.items():
            found = universe_index(item_id)
            if found is not None:
                family_of[found] = codes.setdefault(family, len(codes))
        alone = family_of < 0
        family_of[alone] = len(codes) + np.arange(int(alone.sum()))
        return cls(family_of)

    def members(self, item: int) -> IndexArray:
        code = self.family_of[item]
        result: IndexArray = self._by_family[self._start[code] : self._start[code + 1]]
        return result

    def block_families_of(self, blocked: BoolArray, items: IndexArray) -> None:
        """Block every member of the families of `items` (consumed one edition: consumed all)."""
        blocked[items] = True
        if self.any_editions:
            for item in np.unique(items[self._size[self.family_of[items]] > 1]).tolist():
                blocked[self.members(item)] = True

    def has_editions(self, item: int) -> bool:
        return self.any_editions and bool(self._size[self.family_of[item]] > 1)

    def keep(
        self, ranked: IndexArray, per_family: int, taken: IndexArray | None = None
    ) -> BoolArray:
        """Which of `ranked` (best first) are among the first `per_family` of their family;
        `taken` (items already listed, ahead of `ranked`) count against the limit."""
        if not self.any_editions:
            return np.ones(len(ranked), dtype=bool)
        head = 0 if taken is None else len(taken)
        order = ranked if taken is None else np.concatenate([taken, ranked])
        result: BoolArray = lists.rank_in_family(self.family_of[order])[head:] < per_family
        return result


@dataclass
class _Plan:
    """The working state of one request inside `recommend`."""

    request: RecommendRequest
    blocked: BoolArray  # universe mask: never return these
    index: _CatalogIndex
    strategy: str = "popular"
    user: int | None = None  # the user's model index, when known
    vector: Float32Array | None = None  # the user's factors
    # Fold-in input: item columns and summed weights (stored pairs + recent events).
    fold_in_weights: tuple[IndexArray, Float32Array] | None = None
    # The confidence row a folded-in vector was computed from (explain's input).
    folded_row: tuple[IndexArray, Float32Array] | None = None
    text_scores: Float32Array | None = None
    items: list[tuple[int, float]] = field(default_factory=list)  # (universe index, score)
    filled: bool = False


@dataclass
class _RecentSignals:
    """The recent events and session items of one request, aggregated per item like training."""

    weights: dict[str, float] = field(default_factory=dict)  # new positive weight per item
    negative: set[str] = field(default_factory=set)  # newest signal negative
    lifted: set[str] = field(default_factory=set)  # newest signal positive (lifts a stored one)
    consumed: set[str] = field(default_factory=set)


# --------------------------------------------------------------------------------------------
# Scorer
# --------------------------------------------------------------------------------------------


class Scorer:
    """One model version in memory; see the module docstring.

    Items are addressed by a "universe" index: the model's items 0..n_items-1 (the factor
    rows), then the items only the text index knows.
    """

    def __init__(
        self,
        artifact: ModelArtifact,
        feature_config: FeatureConfig,
        consumed_types: frozenset[str] = frozenset(DEFAULT_CONSUMED_TYPES),
        query_taste_weight: float = 0.5,
        ann_probes: int | None = None,
    ) -> None:
        if not 0.0 <= query_taste_weight <= 1.0:
            raise ValueError("query_taste_weight must be in [0, 1]")
        self.version: str | None = artifact.version or None
        self.params: ALSParams = artifact.params
        self.feature_config = feature_config
        self.consumed_types = frozenset(consumed_types)
        # Weight of the user's ALS score against the text score when a query is re-ranked.
        self.query_taste_weight = query_taste_weight
        # Event type -> index into known_types, the codes `event_weights` reads.
        self._type_codes = {t: code for code, t in enumerate(feature_config.known_types)}

        # Loaded versions bring these arrays memory-mapped: this process holds no copy of them.
        artifact = artifact.with_serving_arrays()
        assert artifact.item_factors_t is not None and artifact.unit_item_factors is not None
        self.users: Vocabulary = artifact.users
        self.items: Vocabulary = artifact.items
        self.n_items = len(self.items)
        self._user_factors = np.ascontiguousarray(artifact.user_factors, dtype=np.float32)
        self._item_factors = np.ascontiguousarray(artifact.item_factors, dtype=np.float32)
        self._item_factors_t = artifact.item_factors_t
        self._unit_item_factors = artifact.unit_item_factors
        # A large catalog's item index (ann.py): the clusters scored per personal list are
        # the model's calibrated probes, or `ann_probes` (0: exact scoring).
        index = artifact.item_index
        self.ann_probes = ann_probes if ann_probes is not None or index is None else index.probes
        use_index = index is not None and 0 < self.ann_probes < index.n_clusters
        self._item_index = index if use_index else None
        self._model = als_from_factors(self._user_factors, self._item_factors, self.params)
        _ = self._model.YtY  # implicit caches it lazily; compute it before threads share it
        # Fold-in adds new weights to the stored ones and applies the confidence fitted at
        # training (older models: the fallback of `ModelArtifact.fold_in_basis`). A stored
        # user's confidence row (explain) is that confidence of their weights, derived per
        # request rather than held as a second copy of every pair.
        stored_weights, self._confidence = artifact.fold_in_basis()
        self._user_weights = canonical_csr(stored_weights, np.float32)
        self._negatives = canonical_csr(artifact.negatives, bool)
        self._consumed = canonical_csr(artifact.consumed, bool)
        self._by_item = (artifact.consumed_by_item, artifact.negatives_by_item)

        recent = np.asarray(artifact.recent_popularity, dtype=np.int64)
        ever = np.asarray(artifact.popularity, dtype=np.int64)
        index = np.arange(self.n_items)
        self._popularity = {True: recent, False: ever}
        self._popular_order: dict[bool, IndexArray] = {
            True: np.lexsort((index, -ever, -recent)),  # recent window, ties by all-time
            False: np.lexsort((index, -ever)),
        }

        self.text_index = artifact.text_index
        self._text_to_universe = np.zeros(0, dtype=np.int64)
        self._text_only_index: dict[str, int] = {}
        self._text_only_ids: list[str] = []  # universe index n_items + j
        if self.text_index is not None:
            text_ids = self.text_index.items.ids.tolist()
            position = self.items.indices_of(text_ids)
            for j, t in enumerate(np.flatnonzero(position < 0).tolist()):
                position[t] = self.n_items + j
                self._text_only_index[text_ids[t]] = self.n_items + j
                self._text_only_ids.append(text_ids[t])
            self._text_to_universe = position
        self.n_universe = self.n_items + len(self._text_only_ids)
        self._catalog_cache: _CatalogIndex | None = None
        # Erased learners: their model rows are never used (see `forget`).
        self._forgotten: frozenset[str] = frozenset()
        self.segments = artifact.segments
        self._audiences: Audiences | None = None

    @classmethod
    def empty(
        cls,
        feature_config: FeatureConfig | None = None,
        consumed_types: frozenset[str] = frozenset(DEFAULT_CONSUMED_TYPES),
    ) -> Scorer:
        """A scorer for before the first model: every answer is an empty "popular" list and
        `similar` raises UnknownItem. Its `version` is None."""
        params = ALSParams(factors=1, iterations=1)
        nothing = sp.csr_matrix((0, 0), dtype=np.float32)
        artifact = ModelArtifact(
            version="",
            params=params,
            users=Vocabulary([]),
            items=Vocabulary([]),
            user_factors=np.zeros((0, 1), dtype=np.float32),
            item_factors=np.zeros((0, 1), dtype=np.float32),
            user_items=nothing,
            negatives=nothing,
            consumed=nothing,
            popularity=np.zeros(0, dtype=np.int64),
            recent_popularity=np.zeros(0, dtype=np.int64),
            metrics={},
            baseline_metrics={},
            n_events=0,
            created_at="",
        )
        return cls(artifact, feature_config or FeatureConfig(), consumed_types)

    # ---------------------------------------------------------------------------------------
    # Public API
    # ---------------------------------------------------------------------------------------

    def recommend(
        self,
        requests: Sequence[RecommendRequest],
        catalog: CatalogView,
        helper: Executor | None = None,
    ) -> list[RecommendResult]:
        """Answer many requests at once (results in request order); see docs/design.md section 2.

        Strategy per request: a query (and a text index) -> "query"; else recent events or
        session items that leave at least one positive model item -> "als_foldin"; else a user
        known to the model -> "als" (a known user whose new events remove every positive pair
        falls through to popular); else "popular".

        `helper`: an executor with a free thread, which then scores half of the items of small
        batches in parallel with this thread (see `_scores`).
        """
        index = self._catalog_index(catalog)
        plans = [self._plan(request, index) for request in requests]

        self._fold_in(plans)
        for plan in plans:
            if plan.text_scores is not None:
                plan.strategy = "query"
            elif plan.vector is not None:
                plan.strategy = "als_foldin" if plan.folded_row is not None else "als"

        ranked = [p for p in plans if p.strategy in ("als", "als_foldin")]
        if self._item_index is not None:  # a large catalog: its best clusters only (ann.py)
            pools = []
            for plan in ranked:
                assert plan.vector is not None
                items, item_scores = self._item_index.candidates(plan.vector, self.ann_probes)
                allowed = ~plan.blocked[items]
                pool_size = _pool_size(plan.request)
                pools.append(_top_per_family(item_scores[allowed], plan, pool_size, items[allowed]))
            self._diversify(ranked, pools)
            ranked = []
        for start in range(0, len(ranked), MAX_BATCH_ROWS):
            chunk = ranked[start : start + MAX_BATCH_ROWS]
            vectors = np.stack([p.vector for p in chunk if p.vector is not None])
            scores = self._scores(vectors, helper)  # one product for the whole chunk
            pools = []
            for plan, row in zip(chunk, scores, strict=True):
                np.copyto(row, np.float32(-np.inf), where=plan.blocked[: self.n_items])
                pools.append(_top_per_family(row, plan, _pool_size(plan.request)))
            self._diversify(chunk, pools)

        texts = [p for p in plans if p.text_scores is not None]
        self._diversify(texts, [self._rank_text(p.text_scores, p, p.vector) for p in texts])
        for plan in plans:
            self._fill_with_popular(plan)
        return [self._result(plan, catalog) for plan in plans]

    def similar(
        self,
        item_id: str,
        n: int,
        categories: frozenset[str] | None,
        catalog: CatalogView,
        exclude: frozenset[str] = frozenset(),
        max_per_family: int = 1,
    ) -> RecommendResult:
        """Items like `item_id`: cosine of ALS item factors ("als") when the model knows it,
        else cosine of item text ("content") when the text index does; UnknownItem otherwise.
        The item itself and its editions, unrecommendable, excluded and out-of-category items
        are left out."""
        index = self._catalog_index(catalog)
        blocked = self._blocked_base(index, categories).copy()
        self._block_ids(blocked, exclude)
        seed = self.items.index_of(item_id)
        text_seed = self.text_index.items.index_of(item_id) if self.text_index else None
        request = RecommendRequest(n=n, categories=categories, max_per_family=max_per_family)
        plan = _Plan(request, blocked, index)
        if seed is not None:
            blocked[index.families.members(seed)] = True  # the seed's own editions
            row = self._unit_item_factors @ self._unit_item_factors[seed]
            np.copyto(row, np.float32(-np.inf), where=blocked[: self.n_items])
            plan.strategy = "als"
            plan.items = _top_per_family(row, plan, n)
        elif self.text_index is not None and text_seed is not None:
            blocked[index.families.members(int(self._text_to_universe[text_seed]))] = True
            scores = self.text_index.similar(text_seed)
            plan.strategy = "content"
            plan.items = self._rank_text(scores, plan)
        else:
            raise UnknownItem(item_id)
        self._fill_with_popular(plan)
        return self._result(plan, catalog)

    def popular(
        self,
        n: int,
        categories: frozenset[str] | None,
        catalog: CatalogView,
        recent: bool = True,
        exclude: frozenset[str] = frozenset(),
        max_per_family: int = 1,
    ) -> RecommendResult:
        """Most popular model items: distinct users in the model's recent window (ties and
        zeros ordered by all-time popularity), or all-time when `recent` is False."""
        index = self._catalog_index(catalog)
        blocked = self._blocked_base(index, categories).copy()
        self._block_ids(blocked, exclude)
        request = RecommendRequest(n=n, categories=categories, max_per_family=max_per_family)
        plan = _Plan(request, blocked, index)
        plan.items = self._popular_items(plan, n, recent)
        return self._result(plan, catalog)

    # ---------------------------------------------------------------------------------------
    # Learners: segments and audiences (audience.py)
    # ---------------------------------------------------------------------------------------

    @property
    def audiences(self) -> Audiences:
        """Built on first use, over the artifact's arrays (no copies)."""
        if self._audiences is None:
            consumed, negatives = self._by_item
            self._audiences = Audiences(
                self.users, self._user_factors, consumed, negatives, self.segments
            )
        return self._audiences

    @property
    def forgotten(self) -> frozenset[str]:
        return self._forgotten

    def segment_of(self, user_id: str) -> int | None:
        """The learner's segment in this model (None: not in it, erased, or no segments)."""
        row = self.users.index_of(user_id)
        if self.segments is None or row is None or user_id in self._forgotten:
            return None
        return int(self.segments.of_user[row])

    def item_audience(
        self, item_id: str, n: int, catalog: CatalogView, also_excluded: Iterable[str] = ()
    ) -> AudienceResult:
        """The learners most likely to take `item_id` (see audience.py): its factors (`als`),
        or for a course newer than the model the factors of the model courses most like it in
        text (`content`; its catalog title, categories and tags when the model's text index
        does not hold it). Learners who consumed or disliked it or another edition of its
        family are left out. UnknownItem when neither the model nor the catalog knows it."""
        index = self._catalog_index(catalog)
        seed = self._universe_index(item_id)
        if seed is not None:
            family = index.families.members(seed)
            items = family[family < self.n_items]
        else:
            items = self.items.indices_of(
                catalog.family_members.get(catalog.families.get(item_id, ""), ())
            )
            items = items[items >= 0]
        if seed is not None and seed < self.n_items:
            vector, strategy, basis = self._item_factors[seed], "als", 1
        else:
            similarity = self._text_similarity(item_id, catalog)
            if similarity is None:
                raise UnknownItem(item_id)
            in_model = np.flatnonzero((self._text_to_universe < self.n_items) & (similarity > 0))
            nearest = in_model[np.argsort(-similarity[in_model], kind="stable")]
            nearest = nearest[:CONTENT_NEIGHBOURS]
            if not len(nearest):
                raise UnknownItem(item_id)
            weights = similarity[nearest].astype(np.float32)
            rows = self._text_to_universe[nearest]
            vector = weights @ self._item_factors[rows] / weights.sum()
            strategy, basis = "content", len(rows)
        users = self.audiences.for_vector(vector, n, items, self._forgotten, also_excluded)
        return AudienceResult(strategy, users, basis)

    def _text_similarity(self, item_id: str, catalog: CatalogView) -> Float32Array | None:
        """Text similarity of a course to the indexed ones: its row of the text index, or its
        catalog title, categories and tags against it; None when neither knows the course."""
        if self.text_index is None:
            return None
        text_seed = self.text_index.items.index_of(item_id)
        if text_seed is not None:
            return self.text_index.similar(text_seed)
        if item_id not in catalog.titles:
            return None
        text = item_text(
            catalog.titles[item_id],
            "",
            sorted(catalog.tags.get(item_id, ())),
            sorted(catalog.categories.get(item_id, ())),
        )
        return self.text_index.query(text)

    def topic_items(
        self, categories: frozenset[str], tags: frozenset[str], catalog: CatalogView
    ) -> IndexArray:
        """Model courses in one of `categories` or with one of `tags`."""
        index = self._catalog_index(catalog)
        if index.tag_members is None:
            grouped: dict[str, list[int]] = {}
            for item_id, item_tags in catalog.tags.items():
                found = self.items.index_of(item_id)
                if found is not None:
                    for tag in item_tags:
                        grouped.setdefault(tag, []).append(found)
            index.tag_members = {t: np.asarray(v, dtype=np.int64) for t, v in grouped.items()}
        by_category = self._category_members(index)
        parts = [by_category[c] for c in categories if c in by_category]
        parts += [index.tag_members[t] for t in tags if t in index.tag_members]
        found = np.unique(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)
        return found[found < self.n_items]

    def topic_audience(
        self,
        items: IndexArray,
        n: int,
        exclude_consumed: bool = True,
        also_excluded: Iterable[str] = (),
    ) -> AudienceResult:
        """The learners most likely to take the courses `items` (`topic_items` of some
        categories or tags): the popularity-weighted mean of their factors (`topic`); with
        `exclude_consumed`, learners who consumed or disliked one of them are left out. No
        such course: nobody."""
        if not len(items):
            return AudienceResult("topic", [], 0)
        weights = (1.0 + np.log1p(self._popularity[False][items])).astype(np.float32)
        vector = weights @ self._item_factors[items] / weights.sum()
        users = self.audiences.for_vector(
            vector, n, items, self._forgotten, also_excluded, exclude_consumed
        )
        return AudienceResult("topic", users, len(items))

    def forget(self, user_ids: Iterable[str]) -> None:
        """Never use these users' model rows again (erasure): they are answered as users the
        model does not know, from their events newer than the model only. The set only grows;
        replaced whole, so concurrent requests see the old or the new one."""
        forgotten = self._forgotten | frozenset(user_ids)
        if forgotten != self._forgotten:
            self._forgotten = forgotten

    def prepare_catalog(self, catalog: CatalogView) -> None:
        """Optional: index a freshly refreshed catalog view now instead of on the first request
        that needs it (category indexing walks the whole catalog once)."""
        self._category_members(self._catalog_index(catalog))

    # ---------------------------------------------------------------------------------------
    # Catalog and filters
    # ---------------------------------------------------------------------------------------

    def _universe_ids(self, indices: Sequence[int]) -> list[str]:
        in_model = iter(self.items.ids_of([i for i in indices if i < self.n_items]))
        return [
            next(in_model) if i < self.n_items else self._text_only_ids[i - self.n_items]
            for i in indices
        ]

    def _universe_index(self, item_id: str) -> int | None:
        found = self.items.index_of(item_id)
        return found if found is not None else self._text_only_index.get(item_id)

    def _block_ids(self, blocked: BoolArray, item_ids: Iterable[str]) -> None:
        for item_id in item_ids:
            found = self._universe_index(item_id)
            if found is not None:
                blocked[found] = True

    def _catalog_index(self, catalog: CatalogView) -> _CatalogIndex:
        cached = self._catalog_cache  # read once: another thread may replace it
        if cached is not None and cached.catalog is catalog:
            return cached
        unrecommendable = np.zeros(self.n_universe, dtype=bool)
        self._block_ids(unrecommendable, catalog.unrecommendable)
        families = _Families.of(catalog, self._universe_index, self.n_universe)
        fresh = _CatalogIndex(catalog, unrecommendable, families)
        self._catalog_cache = fresh
        return fresh

    def _category_members(self, index: _CatalogIndex) -> dict[str, IndexArray]:
        if index.members is None:
            grouped: dict[str, list[int]] = {}
            for item_id, item_categories in index.catalog.categories.items():
                found = self._universe_index(item_id)
                if found is not None:
                    for category in item_categories:
                        grouped.setdefault(category, []).append(found)
            index.members = {c: np.asarray(v, dtype=np.int64) for c, v in grouped.items()}
        return index.members

    def _blocked_base(self, index: _CatalogIndex, categories: frozenset[str] | None) -> BoolArray:
        """Unrecommendable items, plus items in none of `categories` when given (shared: copy
        before changing)."""
        if categories is None:
            return index.unrecommendable
        cached = index.blocked_by_categories.get(categories)
        if cached is None:
            members = self._category_members(index)
            cached = np.ones(self.n_universe, dtype=bool)
            for category in categories:
                if category in members:
                    cached[members[category]] = False
            cached |= index.unrecommendable
            if len(index.blocked_by_categories) >= _MAX_CACHED_CATEGORY_SETS:
                index.blocked_by_categories.clear()
            index.blocked_by_categories[categories] = cached
        return cached

    # ---------------------------------------------------------------------------------------
    # Planning and fold-in
    # ---------------------------------------------------------------------------------------

    def _plan(self, request: RecommendRequest, index: _CatalogIndex) -> _Plan:
        blocked = self._blocked_base(index, request.categories).copy()
        self._block_ids(blocked, request.exclude)
        plan = _Plan(request, blocked, index)
        user = None
        if request.user_id is not None and request.user_id not in self._forgotten:
            user = self.users.index_of(request.user_id)
        signals = self._recent_signals(request)
        if user is not None:
            # One edition consumed is the family consumed.
            index.families.block_families_of(blocked, _csr_row(self._consumed, user)[0])
            stored_negatives = _csr_row(self._negatives, user)[0]
            if signals.lifted and len(stored_negatives):
                lifted = self.items.indices_of(signals.lifted)
                stored_negatives = np.setdiff1d(stored_negatives, lifted)
            blocked[stored_negatives] = True
        self._block_ids(blocked, signals.negative)
        consumed = [self._universe_index(item_id) for item_id in signals.consumed]
        index.families.block_families_of(
            blocked, np.asarray([i for i in consumed if i is not None], dtype=np.int64)
        )

        if request.recent or request.session_items:
            columns, weights = self._combined_weights(user, signals)
            if len(columns):
                plan.fold_in_weights = (columns, weights)
        elif user is not None:
            plan.user = user
            plan.vector = self._user_factors[user]

        query = (request.query or "").strip()
        if query and self.text_index is not None:
            plan.text_scores = self.text_index.query(query)
        return plan

    def _recent_signals(self, request: RecommendRequest) -> _RecentSignals:
        """Aggregate events per item the way `features.build_interactions` does: each event's
        weight and polarity from `features.event_weights` (the rule training uses), summed per
        item, the newest signal deciding the polarity. Session items
        count as "view" events that are older than everything else, so they never lift a
        dislike. Not applied: time decay (these events are younger than the model)."""
        config = self.feature_config
        signals = _RecentSignals()
        if not request.recent and not request.session_items:
            return signals
        newest_positive: dict[str, float] = {}
        newest_negative: dict[str, float] = {}
        recent = request.recent
        codes = np.fromiter((self._type_codes.get(e.type, -1) for e in recent), np.int16)
        values = np.fromiter((math.nan if e.value is None else e.value for e in recent), float)
        weights, negatives = event_weights(codes, values, config)
        for event, code, weight, negative in zip(
            recent, codes.tolist(), weights.tolist(), negatives.tolist(), strict=True
        ):
            if event.type in self.consumed_types:
                signals.consumed.add(event.item_id)
            if code < 0:  # a type the feature config ignores
                continue
            newest = newest_negative if negative else newest_positive
            newest[event.item_id] = max(newest.get(event.item_id, -math.inf), event.occurred_at)
            if not negative:
                signals.weights[event.item_id] = signals.weights.get(event.item_id, 0.0) + weight
        view_weight = config.event_weights.get("view", 1.0)
        for item_id in request.session_items:
            signals.weights[item_id] = signals.weights.get(item_id, 0.0) + view_weight
        for item_id, when in newest_negative.items():
            if when >= newest_positive.get(item_id, -math.inf):  # ties count as negative
                signals.negative.add(item_id)
        signals.lifted = set(newest_positive) - signals.negative
        return signals

    def _combined_weights(
        self, user: int | None, signals: _RecentSignals
    ) -> tuple[IndexArray, Float32Array]:
        """The user's stored pair weights plus the recent weights: sorted item columns, weights.

        Only pairs that received new weight are capped: stored weights are capped already
        (`build_interactions`), and the rows recovered for older models (see
        `ModelArtifact.fold_in_basis`) must come back unchanged."""
        weights: dict[int, float] = {}
        if user is not None:
            columns, stored = _csr_row(self._user_weights, user)
            weights = dict(zip(columns.tolist(), stored.tolist(), strict=True))
        negative = {self.items.index_of(i) for i in signals.negative}
        stored_negative = (
            set(_csr_row(self._negatives, user)[0].tolist()) if user is not None else set()
        )
        lifted = {self.items.index_of(i) for i in signals.lifted}
        added: set[int] = set()
        for item_id, weight in signals.weights.items():
            column = self.items.index_of(item_id)
            if column is None or column in negative:
                continue
            if column in stored_negative and column not in lifted:
                continue
            weights[column] = weights.get(column, 0.0) + weight
            added.add(column)
        for column in negative:
            if column is not None:
                weights.pop(column, None)
        cap = self.feature_config.weight_cap
        if cap is not None:
            for column in added & weights.keys():
                weights[column] = min(weights[column], cap)
        pairs = sorted((c, w) for c, w in weights.items() if w > 0)
        columns = np.asarray([c for c, _ in pairs], dtype=np.int64)
        return columns, np.asarray([w for _, w in pairs], dtype=np.float32)

    def _fold_in(self, plans: list[_Plan]) -> None:
        """Recompute the factors of every folded-in user: one `training.fold_in_users` call for
        the whole batch (it works row by row, so batching changes nothing)."""
        parts = [p.fold_in_weights for p in plans if p.fold_in_weights is not None]
        if not parts:
            return
        indptr = np.zeros(len(parts) + 1, dtype=np.int64)
        np.cumsum([len(columns) for columns, _ in parts], out=indptr[1:])
        weights = sp.csr_matrix(
            (
                np.concatenate([w for _, w in parts]),
                np.concatenate([c for c, _ in parts]).astype(np.int32),
                indptr.astype(np.int32),
            ),
            shape=(len(parts), self.n_items),
        )
        weights.has_sorted_indices = True
        # No threadpool_limits (~1.5 ms, more than the fold-in): see the module docstring.
        vectors, rows = fold_in_users(self._model, self._confidence, weights, limit_blas=False)
        folded = (p for p in plans if p.fold_in_weights is not None)
        for number, plan in enumerate(folded):
            start, end = rows.indptr[number], rows.indptr[number + 1]
            plan.folded_row = (rows.indices[start:end].astype(np.int64), rows.data[start:end])
            plan.vector = np.asarray(vectors[number], dtype=np.float32)

    # ---------------------------------------------------------------------------------------
    # Ranking
    # ---------------------------------------------------------------------------------------

    def _scores(self, vectors: Float32Array, helper: Executor | None) -> Float32Array:
        """vectors @ item factors.T. A product with few rows is bound by memory bandwidth, so
        with a `helper` thread the two halves of the items are scored in parallel: on 100k
        items x 64 factors 0.69 instead of 1.02 ms for one row, 1.45 instead of 2.35 for two
        (matmul with out= releases the GIL in both threads)."""
        if helper is None or len(vectors) > PARALLEL_MAX_ROWS:
            product: Float32Array = vectors @ self._item_factors_t
            return product
        scores = np.empty((len(vectors), self.n_items), dtype=np.float32)
        middle = self.n_items // 2
        factors = self._item_factors_t
        second = helper.submit(np.matmul, vectors, factors[:, middle:], out=scores[:, middle:])
        np.matmul(vectors, factors[:, :middle], out=scores[:, :middle])
        second.result()
        return scores

    def _rank_text(
        self,
        text_scores: Float32Array,
        plan: _Plan,
        vector: Float32Array | None = None,
    ) -> list[tuple[int, float]]:
        """Items with a positive text score, best first, within the plan's limit per family:
        the pool the list is chosen from (`_diversify`; without diversity, the list). With a
        user vector the score blends text (scaled to the best match) and taste (the user's ALS
        scores min-max scaled over the candidates; items unknown to the model get the neutral
        0.5)."""
        n = plan.request.n
        text_candidates = np.flatnonzero(text_scores > 0)
        universe = self._text_to_universe[text_candidates]
        keep = ~plan.blocked[universe]
        text_candidates, universe = text_candidates[keep], universe[keep]
        if len(universe) == 0 or n <= 0:
            return []
        text = text_scores[text_candidates].astype(np.float64)
        scores = text / text.max()
        if vector is not None:
            taste = np.full(len(universe), 0.5)
            in_model = universe < self.n_items
            if in_model.any():
                als = (self._item_factors[universe[in_model]] @ vector).astype(np.float64)
                low, high = als.min(), als.max()
                taste[in_model] = (als - low) / (high - low) if high > low else 0.5
            weight = self.query_taste_weight
            scores = (1.0 - weight) * scores + weight * taste
        order = np.lexsort((universe, -scores))
        order = order[plan.index.families.keep(universe[order], plan.request.max_per_family)]
        pool = order[: _pool_size(plan.request)]
        return list(zip(universe[pool].tolist(), scores[pool].tolist(), strict=True))

    def _popular_items(self, plan: _Plan, n: int, recent: bool = True) -> list[tuple[int, float]]:
        """The `n` most popular items the plan allows, within its limit per family (counting
        the items it already lists)."""
        order = self._popular_order[recent]
        popularity = self._popularity[recent]
        listed = np.asarray([i for i, _ in plan.items], dtype=np.int64)
        blocked = plan.blocked.copy()
        blocked[listed] = True
        chosen = np.zeros(0, dtype=np.int64)
        step = max(4 * n, 1024)
        # Scan the popularity order in chunks: the first chunk nearly always suffices.
        for start in range(0, len(order), step):
            chunk = order[start : start + step]
            pool = np.concatenate([chosen, chunk[~blocked[chunk]]])
            chosen = pool[plan.index.families.keep(pool, plan.request.max_per_family, listed)][:n]
            if len(chosen) >= n:
                break
        return [(i, float(popularity[i])) for i in chosen.tolist()]

    def _fill_with_popular(self, plan: _Plan) -> None:
        missing = plan.request.n - len(plan.items)
        if missing <= 0:
            return
        fill = self._popular_items(plan, missing)
        plan.filled = bool(fill) and plan.strategy != "popular"
        plan.items.extend(fill)

    # ---------------------------------------------------------------------------------------
    # Results and explanations
    # ---------------------------------------------------------------------------------------

    def _result(self, plan: _Plan, catalog: CatalogView) -> RecommendResult:
        titles = catalog.titles
        reasons = self._reasons(plan, titles) if plan.request.explain else None
        listed = [i for i, _ in plan.items]
        ids = self._universe_ids(listed)
        families = plan.index.families
        items = [
            Recommendation(
                item_id=item_id,
                score=float(score),
                title=titles.get(item_id, ""),
                reasons=reasons[position] if reasons is not None else None,
                editions=self._editions(plan, i, listed, titles)
                if families.has_editions(i)
                else [],
            )
            for position, ((i, score), item_id) in enumerate(zip(plan.items, ids, strict=True))
        ]
        strategy = plan.strategy + ("+popular" if plan.filled else "")
        return RecommendResult(strategy=strategy, items=items, user_id=plan.request.user_id)

    def _diversify(self, plans: Sequence[_Plan], pools: Sequence[list[tuple[int, float]]]) -> None:
        """Each plan's list: `n` of its pool (candidates, best first) re-ranked for the
        request's `diversity` (lists.mmr on item factors and categories), the first `n` without
        it. Lists of one length and diversity are re-ranked together: a batch's numpy calls
        cost about what one list's do."""
        together: dict[tuple[int, float, int], list[int]] = {}
        for number, (plan, pool) in enumerate(zip(plans, pools, strict=True)):
            n, diversity = plan.request.n, plan.request.diversity
            if diversity <= 0.0 or len(pool) <= 1:
                plan.items = pool[:n]
            else:
                together.setdefault((n, diversity, len(pool)), []).append(number)
        for (n, diversity, _), numbers in together.items():
            items = np.asarray([[i for i, _ in pools[k]] for k in numbers], dtype=np.int64)
            vectors = np.zeros((*items.shape, self._unit_item_factors.shape[1]))
            in_model = items < self.n_items
            vectors[in_model] = self._unit_item_factors[items[in_model]]
            alike = lists.similarity(vectors, self._category_codes(plans[numbers[0]].index)[items])
            relevance = np.asarray([[score for _, score in pools[k]] for k in numbers])
            chosen = lists.mmr(relevance, alike, n, diversity).tolist()
            for k, positions in zip(numbers, chosen, strict=True):
                plans[k].items = [pools[k][position] for position in positions]

    def _category_codes(self, index: _CatalogIndex) -> IndexArray:
        if index.category_codes is None:
            categories: list[frozenset[str]] = [frozenset()] * self.n_universe
            for item_id, names in index.catalog.categories.items():
                found = self._universe_index(item_id)
                if found is not None:
                    categories[found] = names
            index.category_codes = lists.category_codes([sorted(c) for c in categories])
        return index.category_codes

    def _editions(
        self, plan: _Plan, item: int, listed: Sequence[int], titles: Mapping[str, str]
    ) -> list[tuple[str, str]]:
        """The other editions of `item`'s family that the plan could recommend and does not
        list: "also as a 训练营"."""
        others = [
            m
            for m in plan.index.families.members(item).tolist()
            if m not in listed and not plan.blocked[m]
        ]
        return [(member, titles.get(member, "")) for member in self._universe_ids(others)]

    def _reasons(self, plan: _Plan, titles: Mapping[str, str]) -> list[list[Reason]]:
        """implicit's `explain` per recommended model item, from the row the user's factors
        were (re)computed from, computed for all items at once (`_explanations`). Items
        outside the model, or users without a row, get []."""
        if plan.folded_row is not None:
            columns, confidence = plan.folded_row
        elif plan.user is not None:
            row = self._confidence.transform(self._user_weights[plan.user])
            columns, confidence = row.indices.astype(np.int64), row.data
        else:
            return [[] for _ in plan.items]
        confidence = np.asarray(confidence, dtype=np.float32)
        if self._model.alpha != 1.0:  # explain scales the row by the model's alpha
            confidence = confidence * np.float32(self._model.alpha)
        targets = np.asarray([i for i, _ in plan.items if i < self.n_items], dtype=np.int64)
        chosen, weights = _explanations(
            self._item_factors,
            self._model.YtY,
            float(self._model.regularization),
            columns,
            confidence,
            targets,
            EXPLAIN_REASONS,
        )
        per_target = iter(zip(chosen.tolist(), weights.tolist(), strict=True))
        reasons: list[list[Reason]] = []
        for i, _ in plan.items:
            if i >= self.n_items:
                reasons.append([])
                continue
            target_columns, target_weights = next(per_target)
            reasons.append(
                [
                    Reason(item_id, titles.get(item_id, ""), w)
                    for item_id, w in zip(
                        self.items.ids_of(target_columns), target_weights, strict=True
                    )
                    if w > 0
                ]
            )
        return reasons


# History rows per step of `_explanations`: bounds its largest temporary arrays (for 100 items
# 8 MB of float32 contributions) whatever the length of a history.
_EXPLAIN_CHUNK_ROWS = 20_000


def _explanations(
    item_factors: Float32Array,
    yty: npt.NDArray[Any],
    regularization: float,
    columns: IndexArray,
    confidence: npt.NDArray[np.float32],
    targets: IndexArray,
    n: int,
    chunk_rows: int = _EXPLAIN_CHUNK_ROWS,
) -> tuple[IndexArray, npt.NDArray[np.float64]]:
    """implicit's `AlternatingLeastSquares.explain(0, row, target, N=n)` for every target at
    once, where `row` holds `confidence` at `columns` (already scaled by the model's alpha).

    Returns the top-n contributions per target as two len(targets) x k arrays, history columns
    and weights, best first, k = min(n, entries with confidence >= 0). implicit loops in Python
    over the history for every target (~1.5 s for 5,000 items and 100 targets); here the same
    formulas are a few matrix products (~5 ms on one core):

    * A = YtY + regularization * I + sum_j (|c_j| - 1) y_j y_j^T (implicit's
      `user_linear_equation`), in float64, factored once (Cholesky);
    * w_t = A^-1 y_t for every target t by one cho_solve;
    * the contribution of history entry j to target t is c_j (y_j . w_t); entries with c_j < 0
      are left out. All of them are computed in float32 to pick each target's 2n best
      candidates, whose weights are then computed again in float64 as implicit does (measured:
      equal to 1e-8 relative; implicit rounds each term of A to float32).

    Order: weight descending, equal weights by the higher column first, as implicit's heap of
    (weight, column) pops them. Only a near-tie of more than n entries at the n-th place (within
    float32 rounding) could pick another entry than implicit.
    """
    m = len(targets)
    keep = confidence >= 0
    if n <= 0 or m == 0 or not keep.any():
        return np.zeros((m, 0), dtype=np.int64), np.zeros((m, 0), dtype=np.float64)
    history = item_factors[columns]
    system = yty.astype(np.float64) + regularization * np.eye(item_factors.shape[1])
    for start in range(0, len(columns), chunk_rows):
        part = history[start : start + chunk_rows].astype(np.float64)
        scale = np.abs(confidence[start : start + chunk_rows].astype(np.float64)) - 1.0
        system += part.T @ (part * scale[:, None])
    solved = scipy.linalg.cho_solve(
        scipy.linalg.cho_factor(system), item_factors[targets].T.astype(np.float64)
    ).T  # targets x factors: y_t^T A^-1
    columns, history, confidence = columns[keep], history[keep], confidence[keep]
    screen = solved.astype(np.float32)
    wanted = 2 * n
    candidates: list[IndexArray] = []  # positions in the kept history, targets x 2n per chunk
    for start in range(0, len(columns), chunk_rows):
        end = min(start + chunk_rows, len(columns))
        if end - start <= wanted:
            candidates.append(np.broadcast_to(np.arange(start, end), (m, end - start)))
            continue
        weights = (screen @ history[start:end].T) * confidence[start:end]
        candidates.append(np.argpartition(weights, -wanted, axis=1)[:, -wanted:] + start)
    rows = np.hstack(candidates)
    exact = np.einsum("tf,tkf->tk", solved, history[rows].astype(np.float64))
    exact *= confidence[rows].astype(np.float64)
    chosen = columns[rows]
    order = np.lexsort((-chosen, -exact), axis=1)[:, :n]
    return np.take_along_axis(chosen, order, axis=1), np.take_along_axis(exact, order, axis=1)
