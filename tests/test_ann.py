"""ann: the item index of large catalogs (clusters of item factors) and the scorer's use of it."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from recsvc import ann, artifact
from recsvc.artifact import ModelArtifact
from recsvc.features import FeatureConfig, Vocabulary
from recsvc.scorer import CatalogView, RecommendRequest, Scorer
from recsvc.training import ALSParams

N_USERS, N_ITEMS, FACTORS, TOPICS = 400, 6000, 16, 60


def clustered(n: int, centers: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rows near one of the topic centers: the structure trained factors have."""
    topic = rng.integers(0, len(centers), n)
    return (centers[topic] + rng.normal(0, 0.25, (n, centers.shape[1]))).astype(np.float32)


@pytest.fixture(scope="module")
def model() -> ModelArtifact:
    rng = np.random.default_rng(5)
    centers = rng.normal(0, 1, (TOPICS, FACTORS))
    users = clustered(N_USERS, centers, rng)
    items = clustered(N_ITEMS, centers, rng)
    rows = np.repeat(np.arange(N_USERS), 5)
    cols = rng.integers(0, N_ITEMS, len(rows))
    pairs = sp.csr_matrix((np.full(len(rows), 2.0, np.float32), (rows, cols)), (N_USERS, N_ITEMS))
    pairs.sum_duplicates()
    counts = np.bincount(pairs.indices, minlength=N_ITEMS).astype(np.int64)
    return ModelArtifact(
        version="20261202T000000-a0a0",
        params=ALSParams(factors=FACTORS),
        users=Vocabulary([f"u{u:04d}" for u in range(N_USERS)]),
        items=Vocabulary([f"c{i:05d}" for i in range(N_ITEMS)]),
        user_factors=users,
        item_factors=items,
        user_items=pairs,
        negatives=sp.csr_matrix((N_USERS, N_ITEMS), dtype=bool),
        consumed=pairs.astype(bool),
        popularity=counts,
        recent_popularity=counts,
        metrics={},
        baseline_metrics={},
        n_events=int(pairs.nnz),
        created_at="2026-12-02T00:00:00Z",
    )


def test_the_best_clusters_hold_nearly_all_of_a_learners_best_items(model: ModelArtifact) -> None:
    index = ann.build(model.item_factors, model.user_factors, seed=0)
    assert index.n_clusters == round(np.sqrt(N_ITEMS))
    assert sorted(index.items.tolist()) == list(range(N_ITEMS))  # every item in one cluster
    np.testing.assert_array_equal(index.factors, model.item_factors[index.items])
    found = []
    for user in range(0, N_USERS, 4):
        vector = model.user_factors[user]
        exact = set(np.argsort(-(model.item_factors @ vector))[:10].tolist())
        items, scores = index.candidates(vector, probes=8)  # 8 of 77 clusters: ~10% read
        np.testing.assert_allclose(scores, model.item_factors[items] @ vector, rtol=1e-5)
        assert len(items) < N_ITEMS / 4
        found.append(len(exact & set(items[np.argsort(-scores)[:10]].tolist())) / 10)
    assert np.mean(found) >= 0.9


def test_every_probe_is_exact(model: ModelArtifact) -> None:
    index = ann.build(model.item_factors, model.user_factors, seed=0)
    vector = model.user_factors[3]
    items, scores = index.candidates(vector, probes=index.n_clusters)
    assert sorted(items.tolist()) == list(range(N_ITEMS))
    with pytest.raises(ValueError, match="disagree"):
        ann.ItemIndex.from_arrays(index.to_arrays(), N_ITEMS + 1)


def test_probes_are_calibrated_on_the_model_itself(model: ModelArtifact) -> None:
    """Structured factors need few clusters; unstructured random ones need most of them (or
    every one: exact scoring) rather than a list that misses many of the best items."""
    index = ann.build(model.item_factors, model.user_factors, seed=0)
    assert 8 <= index.probes <= 16 and index.recall >= ann.TARGET_RECALL
    noise = np.random.default_rng(9).normal(0, 1, (N_ITEMS, 64)).astype(np.float32)
    learners = np.random.default_rng(10).normal(0, 1, (50, 64)).astype(np.float32)
    unstructured = ann.build(noise, learners, seed=0)
    assert unstructured.probes >= 64 and unstructured.recall >= ann.TARGET_RECALL


def test_a_large_catalog_is_saved_with_its_index_and_served_from_it(
    model: ModelArtifact, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ann, "MIN_ITEMS", 5000)  # this catalog counts as large
    loaded = artifact.load(artifact.save(model, tmp_path))
    index = loaded.item_index
    assert index is not None and index.n_clusters == 77 and index.probes < 77
    requests = [RecommendRequest(user_id=f"u{u:04d}", n=10) for u in range(0, N_USERS, 10)]
    exact = Scorer(loaded, FeatureConfig(), ann_probes=0).recommend(requests, CatalogView())
    calibrated = Scorer(loaded, FeatureConfig())
    assert calibrated.ann_probes == index.probes
    for probes, scorer in ((None, calibrated), (8, Scorer(loaded, FeatureConfig(), ann_probes=8))):
        approximate = scorer.recommend(requests, CatalogView())
        overlap = [
            len({r.item_id for r in a.items} & {r.item_id for r in b.items}) / 10
            for a, b in zip(exact, approximate, strict=True)
        ]
        assert np.mean(overlap) >= 0.9, probes
        for request, result in zip(requests, approximate, strict=True):
            row = loaded.users.index_of(request.user_id or "")
            consumed = set(loaded.items.ids_of(loaded.consumed[row].indices))
            assert result.strategy == "als" and len(result.items) == 10
            assert not consumed & {r.item_id for r in result.items}
            scores = [r.score for r in result.items]
            assert scores == sorted(scores, reverse=True)


def test_a_small_catalog_has_no_index(model: ModelArtifact, tmp_path: Path) -> None:
    path = artifact.save(replace(model, version="20261202T000001-a0a1"), tmp_path)
    assert artifact.load(path).item_index is None and not list(path.glob("ann.*"))
