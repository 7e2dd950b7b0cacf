"""Approximate scoring for large catalogs: an inverted-file index (IVF) over the item factors.

Scoring a learner against every course reads the whole item-factor matrix: 256 MB per request
at 1M courses x 64 factors, ~10 ms even split over two threads. Above `MIN_ITEMS` courses the
artifact also holds an `ItemIndex`:

* k-means (scikit-learn's MiniBatchKMeans, seeded) on a sample of the item factors gives
  about sqrt(n) clusters; every item goes to its nearest centroid;
* the items are stored grouped by cluster, with their factors in that order, so a cluster's
  factors are one contiguous block;
* `candidates(vector, probes)` scores the centroids (inner product, like the items), takes the
  `probes` best clusters and scores their items exactly: about probes / sqrt(n) of the
  catalog is read.

The best items of a learner sit in the clusters whose centroids score highest for them when
the factors have structure (groups of related courses), and far less so when they have none
(random factors). So `build` calibrates on the model itself: `probes` is the fewest clusters
(doubling from 8) with which `candidates` finds `TARGET_RECALL` of the exact top 10 of 200
sampled learners. Serving uses it unless RECSVC_ANN_PROBES says otherwise (0: exact scoring);
bench/memory.py reports the recall.

numpy/scikit-learn only: no web, no database.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt
from sklearn.cluster import MiniBatchKMeans
from sklearn.exceptions import ConvergenceWarning

Float32Array = npt.NDArray[np.float32]
IndexArray = npt.NDArray[np.int64]

# Catalogs at least this large get an index (below it exact scoring takes under ~2 ms).
MIN_ITEMS = 200_000
# Items per cluster sampled to fit the centroids.
_SAMPLE_PER_CLUSTER = 64
# What the calibrated `probes` must find of 200 sampled learners' exact top 10.
TARGET_RECALL = 0.95
_CALIBRATION_USERS = 200


@dataclass(frozen=True, eq=False)
class ItemIndex:
    centroids: Float32Array  # clusters x factors
    offsets: IndexArray  # clusters + 1: cluster c holds positions offsets[c]:offsets[c + 1]
    items: IndexArray  # item index at each position (grouped by cluster)
    factors: Float32Array  # the item factors at each position
    probes: int  # calibrated: clusters to score for TARGET_RECALL
    recall: float  # what those probes found in the calibration

    @property
    def n_clusters(self) -> int:
        return len(self.centroids)

    def candidates(self, vector: Float32Array, probes: int) -> tuple[IndexArray, Float32Array]:
        """The items of the `probes` clusters that score highest for `vector`, and their exact
        scores (vector . item factors)."""
        probes = min(probes, self.n_clusters)
        ranked = self.centroids @ vector
        chosen = np.argpartition(-ranked, probes - 1)[:probes] if probes < len(ranked) else None
        clusters = np.sort(chosen) if chosen is not None else np.arange(self.n_clusters)
        starts, ends = self.offsets[clusters], self.offsets[clusters + 1]
        size = int((ends - starts).sum())
        items = np.empty(size, dtype=np.int64)
        scores = np.empty(size, dtype=np.float32)
        position = 0
        for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
            length = end - start
            items[position : position + length] = self.items[start:end]
            np.matmul(self.factors[start:end], vector, out=scores[position : position + length])
            position += length
        return items, scores

    def to_arrays(self) -> dict[str, npt.NDArray[Any]]:
        return {
            "centroids": self.centroids,
            "offsets": self.offsets,
            "items": self.items,
            "factors": self.factors,
            "probes": np.asarray(self.probes, dtype=np.int64),
            "recall": np.asarray(self.recall, dtype=np.float64),
        }

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, npt.NDArray[Any]], n_items: int) -> ItemIndex:
        index = cls(
            arrays["centroids"],
            arrays["offsets"],
            arrays["items"],
            arrays["factors"],
            int(arrays["probes"]),
            float(arrays["recall"]),
        )
        if (
            index.offsets.shape != (index.n_clusters + 1,)
            or int(index.offsets[-1]) != n_items
            or index.items.shape != (n_items,)
            or index.factors.shape != (n_items, index.centroids.shape[1])
        ):
            raise ValueError("item index arrays disagree with the model's items")
        return index


def build(item_factors: Float32Array, user_factors: Float32Array, seed: int = 0) -> ItemIndex:
    """Cluster the items (about sqrt(n) clusters), group them by cluster, and calibrate the
    probes on a sample of the learners (`user_factors`)."""
    factors = np.ascontiguousarray(item_factors, dtype=np.float32)
    n = len(factors)
    n_clusters = max(1, min(n, round(np.sqrt(n))))
    rng = np.random.default_rng(seed)
    sample = rng.choice(n, min(n, _SAMPLE_PER_CLUSTER * n_clusters), replace=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        kmeans = MiniBatchKMeans(
            n_clusters=n_clusters, batch_size=4096, n_init=1, max_iter=20, random_state=seed
        ).fit(factors[sample])
    centroids = kmeans.cluster_centers_.astype(np.float32)
    half_norms = 0.5 * np.einsum("ij,ij->i", centroids, centroids)
    cluster_of = np.empty(n, dtype=np.int64)
    for start in range(0, n, 65_536):  # nearest centroid: argmax x.c - |c|^2 / 2
        block = factors[start : start + 65_536] @ centroids.T - half_norms
        cluster_of[start : start + 65_536] = np.argmax(block, axis=1)
    order = np.argsort(cluster_of, kind="stable")
    offsets = np.searchsorted(cluster_of[order], np.arange(n_clusters + 1)).astype(np.int64)
    index = ItemIndex(
        centroids, offsets, order.astype(np.int64), np.ascontiguousarray(factors[order]), 0, 1.0
    )
    sample = rng.choice(len(user_factors), min(len(user_factors), _CALIBRATION_USERS), False)
    return calibrated(index, factors, np.asarray(user_factors[np.sort(sample)], np.float32))


def calibrated(index: ItemIndex, factors: Float32Array, learners: Float32Array) -> ItemIndex:
    """`index` with the fewest probes (8, 16, 32, ... clusters) that find TARGET_RECALL of the
    learners' exact top 10 (every cluster when none does)."""
    k = min(10, len(factors))
    exact = [set(np.argpartition(-(factors @ v), k - 1)[:k].tolist()) for v in learners]
    probes, recall = index.n_clusters, 1.0
    tried = 8
    while tried < index.n_clusters and len(learners) and k:
        found = 0
        for vector, best in zip(learners, exact, strict=True):
            items, scores = index.candidates(vector, tried)
            found += len(best & set(items[np.argsort(-scores)[:k]].tolist()))
        if found / (k * len(learners)) >= TARGET_RECALL:
            probes, recall = tried, found / (k * len(learners))
            break
        tried *= 2
    return replace(index, probes=probes, recall=recall)
