"""Explanations: the scorer's vectorised reasons equal implicit's `explain`, item by item.

`Scorer._reasons` computes every recommended item's top contributions at once (one Cholesky
factor, one solve, one matrix product; `scorer._explanations`); implicit's
`AlternatingLeastSquares.explain` loops in Python over the history for each item. Here both
run on the same rows of a small trained model (and of random factors with long histories) and
must give the same items in the same order with the same weights (to 1e-4 relative); and a
5,000-item history with n=100 must be fast (implicit's loop took ~1.5 s).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp

from recsvc import scorer as scorer_module
from recsvc.artifact import ModelArtifact
from recsvc.features import EventColumns, FeatureConfig, TextIndex, Vocabulary, build_interactions
from recsvc.scorer import (
    EXPLAIN_REASONS,
    CatalogView,
    Reason,
    RecentEvent,
    RecommendRequest,
    Scorer,
)
from recsvc.training import ALSParams, als_from_factors, train_model

N_USERS, N_ITEMS = 60, 40
TYPES = ["view", "click", "favorite", "enroll", "purchase", "rate"]
TITLES = {f"i{j:02d}": f"course {j}" for j in range(N_ITEMS)} | {"new": "brand new course"}
CATALOG = CatalogView(titles=TITLES)


@pytest.fixture(scope="module")
def trained() -> tuple[Scorer, ModelArtifact]:
    rng = np.random.default_rng(7)
    users: list[str] = []
    items: list[str] = []
    types: list[str] = []
    for u in range(N_USERS):
        # Two taste groups, so that the factors mean something; 3..25 distinct items each.
        group = np.arange(N_ITEMS // 2) + (N_ITEMS // 2) * (u % 2)
        chosen = rng.choice(group, size=rng.integers(3, 16), replace=False).tolist()
        chosen += rng.choice(N_ITEMS, size=rng.integers(0, 10), replace=False).tolist()
        for j in chosen:
            users.append(f"u{u:02d}")
            items.append(f"i{j:02d}")
            types.append(str(rng.choice(TYPES)))
    events = EventColumns.from_lists(users, items, types, [float(t) for t in range(len(users))])
    config = FeatureConfig()
    interactions = build_interactions(events, config)
    params = ALSParams(factors=8, regularization=1.0, alpha=10.0, iterations=10)
    model = train_model(interactions, params, 0.2, seed=0)
    text_index = TextIndex().fit(list(TITLES), list(TITLES.values()))
    artifact = ModelArtifact.from_training("20261201T120000-e8a1", model, interactions, text_index)
    return Scorer(artifact, config, frozenset({"purchase"})), artifact


_reference_models: dict[str, Any] = {}


def reference_model(artifact: ModelArtifact) -> Any:
    """A plain implicit model of the artifact's factors (one per version: ~40 ms to build)."""
    if artifact.version not in _reference_models:
        _reference_models[artifact.version] = als_from_factors(
            artifact.user_factors, artifact.item_factors, artifact.params
        )
    return _reference_models[artifact.version]


def implicit_reasons(
    artifact: ModelArtifact, columns: Any, confidence: Any, item: int
) -> list[tuple[str, float]]:
    """implicit's own explain for one item, on a one-row matrix, as the old scorer called it."""
    model = reference_model(artifact)
    row = sp.csr_matrix(
        (np.asarray(confidence, dtype=np.float32), np.asarray(columns, dtype=np.int32),
         [0, len(columns)]),
        shape=(1, len(artifact.items)),
    )  # fmt: skip
    _, contributions, _ = model.explain(0, row, item, N=EXPLAIN_REASONS)
    ids = artifact.items.ids.tolist()
    return [(ids[j], float(w)) for j, w in contributions if w > 0]


def assert_same(reasons: list[Reason] | None, expected: list[tuple[str, float]]) -> None:
    assert reasons is not None
    assert [r.item_id for r in reasons] == [item for item, _ in expected]
    assert [r.weight for r in reasons] == pytest.approx([w for _, w in expected], rel=1e-4)
    assert all(r.title == TITLES[r.item_id] and r.weight > 0 for r in reasons)


def test_known_users_get_implicits_explanations(trained: tuple[Scorer, ModelArtifact]) -> None:
    scorer, artifact = trained
    stored = sp.csr_matrix(artifact.user_items, dtype=np.float32)
    stored.sort_indices()
    compared = 0
    for user in artifact.users.ids.tolist():
        (result,) = scorer.recommend([RecommendRequest(user, n=20, explain=True)], CATALOG)
        assert result.strategy == "als"
        u = artifact.users.index_of(user)
        start, end = stored.indptr[u], stored.indptr[u + 1]
        for item in result.items:
            expected = implicit_reasons(
                artifact,
                stored.indices[start:end],
                stored.data[start:end],
                artifact.items.index_of(item.item_id),
            )
            assert_same(item.reasons, expected)
            compared += 1
    assert compared > 500


def test_folded_in_rows_get_implicits_explanations(
    trained: tuple[Scorer, ModelArtifact], monkeypatch: pytest.MonkeyPatch
) -> None:
    scorer, artifact = trained
    rows: list[tuple[np.ndarray, np.ndarray]] = []
    vectorised = scorer_module._explanations

    def spy(item_factors: Any, yty: Any, regularization: Any, columns: Any, confidence: Any,
            *rest: Any) -> Any:  # fmt: skip
        rows.append((columns.copy(), confidence.copy()))
        return vectorised(item_factors, yty, regularization, columns, confidence, *rest)

    monkeypatch.setattr(scorer_module, "_explanations", spy)
    recent = tuple(
        RecentEvent(f"i{j:02d}", t, 4.0 if t == "rate" else None, 1e6 + j)
        for j, t in ((1, "enroll"), (5, "view"), (22, "rate"), (30, "favorite"))
    )
    requests = [
        RecommendRequest("u03", recent=recent, n=N_ITEMS, explain=True),  # stored + recent
        RecommendRequest("stranger", recent=recent, n=N_ITEMS, explain=True),
        RecommendRequest(session_items=("i02", "i03", "i27"), n=N_ITEMS, explain=True),
    ]
    results = scorer.recommend(requests, CATALOG)
    assert [r.strategy for r in results] == ["als_foldin"] * 3
    assert len(rows) == 3
    for result, (columns, confidence) in zip(results, rows, strict=True):
        for item in result.items:
            index = artifact.items.index_of(item.item_id)
            assert_same(item.reasons, implicit_reasons(artifact, columns, confidence, index))


def test_items_outside_the_model_and_users_without_a_row_get_no_reasons(
    trained: tuple[Scorer, ModelArtifact],
) -> None:
    scorer, _ = trained
    query = RecommendRequest("u04", query="brand new course", n=5, explain=True)
    popular = RecommendRequest("nobody", n=5, explain=True)
    by_query, by_popularity = scorer.recommend([query, popular], CATALOG)
    assert by_query.strategy.startswith("query")
    reasons = {item.item_id: item.reasons for item in by_query.items}
    assert reasons["new"] == []  # known only to the text index
    assert any(r for item_id, r in reasons.items() if item_id != "new")
    assert by_popularity.strategy == "popular"
    assert all(item.reasons == [] for item in by_popularity.items)
    (plain,) = scorer.recommend([RecommendRequest("u04", n=5)], CATALOG)
    assert all(item.reasons is None for item in plain.items)


@pytest.mark.parametrize("chunk_rows", [7, 20_000])
def test_long_histories_match_implicit_in_any_chunking(chunk_rows: int) -> None:
    rng = np.random.default_rng(3)
    n_items, factors = 2_000, 16
    item_factors = rng.normal(0, 0.3, (n_items, factors)).astype(np.float32)
    model = als_from_factors(np.zeros((1, factors), np.float32), item_factors, ALSParams(factors))
    columns = np.sort(rng.choice(n_items, size=300, replace=False)).astype(np.int64)
    confidence = (1 + 5 * rng.random(300)).astype(np.float32)
    confidence[:3] = [-2.0, 0.5, 1.0]  # negative (left out of contributions) and below one
    targets = rng.choice(n_items, size=50, replace=False).astype(np.int64)
    chosen, weights = scorer_module._explanations(
        item_factors,
        model.YtY,
        model.regularization,
        columns,
        confidence,
        targets,
        5,
        chunk_rows=chunk_rows,
    )
    row = sp.csr_matrix(
        (confidence, columns.astype(np.int32), [0, len(columns)]), shape=(1, n_items)
    )
    for t, target in enumerate(targets.tolist()):
        _, expected, _ = model.explain(0, row, target, N=5)
        assert chosen[t].tolist() == [j for j, _ in expected]
        assert weights[t].tolist() == pytest.approx([w for _, w in expected], rel=1e-4)


def test_explain_for_a_5000_item_history_and_100_items_is_fast() -> None:
    """implicit's loop took ~1.5 s here (issue 8); the vectorised reasons take milliseconds."""
    rng = np.random.default_rng(0)
    n_items, factors, history = 50_000, 64, 5_000
    columns = np.sort(rng.choice(n_items, size=history, replace=False))
    user_items = sp.csr_matrix(
        (np.full(history, 3.0, np.float32), (np.zeros(history, np.int64), columns)),
        shape=(1, n_items),
    )
    artifact = ModelArtifact(
        version="20261201T120000-5k",
        params=ALSParams(factors=factors),
        users=Vocabulary(["long"]),
        items=Vocabulary([f"c{i:06d}" for i in range(n_items)]),
        user_factors=rng.normal(0, 0.1, (1, factors)).astype(np.float32),
        item_factors=rng.normal(0, 0.1, (n_items, factors)).astype(np.float32),
        user_items=user_items,
        negatives=sp.csr_matrix((1, n_items), dtype=bool),
        consumed=sp.csr_matrix((1, n_items), dtype=bool),
        popularity=np.ones(n_items, np.int64),
        recent_popularity=np.ones(n_items, np.int64),
        metrics={},
        baseline_metrics={},
        n_events=history,
        created_at=datetime.now(UTC).isoformat(),
    )
    scorer = Scorer(artifact, FeatureConfig())
    request = RecommendRequest("long", n=100, explain=True)
    timings = []
    for _ in range(3):
        began = time.perf_counter()
        (result,) = scorer.recommend([request], CatalogView())
        timings.append(time.perf_counter() - began)
    assert len(result.items) == 100
    assert all(item.reasons and len(item.reasons) == EXPLAIN_REASONS for item in result.items)
    assert min(timings) < 0.25, timings
