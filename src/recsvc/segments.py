"""Learner segments: k-means clusters of the learners' ALS factors, made at training and stored
with the model version (docs/design.md section 10).

* `segment_learners` clusters the unit-length user factors with scikit-learn's KMeans. k comes
  from settings (RECSVC_SEGMENTS) or is chosen between K_MIN and K_MAX by the silhouette score
  on a seeded sample; the final centroids are fitted on a sample of at most FIT_SAMPLE learners
  and every learner goes to the nearest one.
* Each segment is described by its over-represented categories and tags (the share of the
  segment's interaction weight in a category against that share over all learners, the lift,
  is at least MIN_LIFT; listed by share),
  its top courses (learners in the segment x lift), its size, and a readable label made from
  its top categories.
* `Segments.to_arrays`/`from_arrays`/`info_json` are how the artifact stores them.

numpy/scipy/scikit-learn only: no web, no database.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
from sklearn.cluster import KMeans
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import silhouette_score

K_MIN, K_MAX = 4, 12
CHOICE_SAMPLE = 20_000  # learners the choice of k is made on
SILHOUETTE_SAMPLE = 4_000
FIT_SAMPLE = 200_000  # learners the final centroids are fitted on
MIN_SHARE = 0.03  # a category must hold this share of a segment's weight to describe it
MIN_LIFT = 1.2
TOP_DESCRIBED = 5
LABEL_CATEGORIES = 2
MIN_COURSE_LEARNERS = 3


@dataclass(frozen=True)
class Lift:
    name: str
    share: float  # of the segment's interaction weight
    lift: float  # share / the same share over all learners


@dataclass(frozen=True)
class SegmentInfo:
    segment_id: int
    label: str
    size: int  # learners at training
    categories: tuple[Lift, ...]
    tags: tuple[Lift, ...]
    top_items: tuple[tuple[str, int], ...]  # (item id, learners of the segment with it)

    def to_dict(self) -> dict[str, Any]:
        return {
            "segment_id": self.segment_id,
            "label": self.label,
            "size": self.size,
            "categories": [vars(c) for c in self.categories],
            "tags": [vars(t) for t in self.tags],
            "top_items": [list(item) for item in self.top_items],
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> SegmentInfo:
        return cls(
            segment_id=int(raw["segment_id"]),
            label=str(raw["label"]),
            size=int(raw["size"]),
            categories=tuple(Lift(**c) for c in raw["categories"]),
            tags=tuple(Lift(**t) for t in raw["tags"]),
            top_items=tuple((str(i), int(n)) for i, n in raw["top_items"]),
        )


@dataclass(frozen=True, eq=False)
class Segments:
    """The segment of every user row of a model, the centroids, and the descriptions."""

    of_user: npt.NDArray[np.int32]
    centroids: npt.NDArray[np.float32]  # k x factors, in the unit-length factor space
    info: tuple[SegmentInfo, ...]

    @property
    def k(self) -> int:
        return len(self.info)

    def without_rows(self, keep: npt.NDArray[np.bool_]) -> Segments:
        return replace(self, of_user=self.of_user[keep])

    def to_arrays(self) -> dict[str, npt.NDArray[Any]]:
        return {"of_user": self.of_user, "centroids": self.centroids}

    def info_json(self) -> str:
        return json.dumps([s.to_dict() for s in self.info], ensure_ascii=False, indent=1)

    @classmethod
    def from_stored(cls, arrays: Mapping[str, npt.NDArray[Any]], info_json: str) -> Segments:
        info = tuple(SegmentInfo.from_dict(raw) for raw in json.loads(info_json))
        of_user = np.asarray(arrays["of_user"], dtype=np.int32)
        centroids = np.asarray(arrays["centroids"], dtype=np.float32)
        if centroids.shape[0] != len(info) or (len(of_user) and of_user.max() >= len(info)):
            raise ValueError("segments: centroids, descriptions and assignments disagree")
        return cls(of_user, centroids, info)


def _unit_rows(factors: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    norms = np.linalg.norm(factors, axis=1, keepdims=True)
    unit: npt.NDArray[np.float32] = (factors / np.where(norms > 0, norms, 1.0)).astype(np.float32)
    return unit


def _kmeans(k: int, n_init: int, seed: int) -> KMeans:
    return KMeans(n_clusters=k, n_init=n_init, random_state=seed)


def _distinct(rows: npt.NDArray[np.float32]) -> int:
    return int(len(np.unique(rows, axis=0)))


def choose_k(unit: npt.NDArray[np.float32], seed: int) -> int:
    """The k in K_MIN..K_MAX with the best silhouette on a sample (fewer learners: fewer k)."""
    rng = np.random.default_rng(seed)
    sample = unit[rng.choice(len(unit), min(len(unit), CHOICE_SAMPLE), replace=False)]
    best_k, best_score = K_MIN, -np.inf
    for k in range(K_MIN, min(K_MAX, _distinct(sample) - 1) + 1):
        with warnings.catch_warnings():
            # Duplicate points can leave a cluster empty: a warning, not a failure, here.
            warnings.simplefilter("ignore", ConvergenceWarning)
            labels = _kmeans(k, 2, seed).fit_predict(sample)
        if len(np.unique(labels)) < 2:
            continue
        score = silhouette_score(
            sample, labels, sample_size=min(len(sample), SILHOUETTE_SAMPLE), random_state=seed
        )
        if score > best_score:
            best_k, best_score = k, float(score)
    return best_k


def assign(
    unit: npt.NDArray[np.float32], centroids: npt.NDArray[np.float32]
) -> npt.NDArray[np.int32]:
    """Nearest centroid of each unit-length row (argmax of u.c - |c|^2 / 2), in chunks."""
    half_norms = 0.5 * np.einsum("ij,ij->i", centroids, centroids)
    out = np.empty(len(unit), dtype=np.int32)
    for start in range(0, len(unit), 65_536):
        block = unit[start : start + 65_536] @ centroids.T - half_norms
        out[start : start + 65_536] = np.argmax(block, axis=1)
    return out


def segment_learners(
    user_factors: npt.NDArray[np.float32],
    user_weights: sp.csr_matrix,
    item_ids: Sequence[str],
    item_categories: Mapping[str, Sequence[str]],
    item_tags: Mapping[str, Sequence[str]],
    k: int | None = None,
    seed: int = 42,
) -> Segments | None:
    """Cluster the learners and describe the clusters; None with too few learners (< 2 * K_MIN)."""
    n_users = len(user_factors)
    if n_users < 2 * K_MIN:
        return None
    unit = _unit_rows(np.asarray(user_factors, dtype=np.float32))
    rng = np.random.default_rng(seed + 1)
    fit_rows = rng.choice(n_users, min(n_users, FIT_SAMPLE), replace=False)
    k = min(k or choose_k(unit, seed), _distinct(unit[fit_rows]))
    if k < 2:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = _kmeans(k, 3, seed).fit(unit[fit_rows])
    centroids = model.cluster_centers_.astype(np.float32)
    of_user = assign(unit, centroids)
    info = describe(of_user, k, user_weights, item_ids, item_categories, item_tags)
    return Segments(of_user, centroids, info)


def _incidence(
    item_ids: Sequence[str], labels_of: Mapping[str, Sequence[str]]
) -> tuple[sp.csr_matrix, list[str]]:
    names: dict[str, int] = {}
    rows: list[int] = []
    cols: list[int] = []
    for row, item in enumerate(item_ids):
        for label in labels_of.get(item, ()):
            rows.append(row)
            cols.append(names.setdefault(label, len(names)))
    matrix = sp.csr_matrix(
        (np.ones(len(rows), dtype=np.float64), (rows, cols)), shape=(len(item_ids), len(names))
    )
    return matrix, list(names)


def _lifts(per_segment: npt.NDArray[np.float64], names: list[str]) -> list[tuple[Lift, ...]]:
    """Per segment, the over-represented labels (share >= MIN_SHARE, lift >= MIN_LIFT), the
    largest share first: a broad category the segment leans to reads better than a niche one."""
    overall = per_segment.sum(axis=0)
    overall_share = overall / max(overall.sum(), 1e-12)
    described = []
    for row in per_segment:
        share = row / max(row.sum(), 1e-12)
        lift = np.divide(share, overall_share, out=np.zeros_like(share), where=overall_share > 0)
        chosen = np.flatnonzero((share >= MIN_SHARE) & (lift >= MIN_LIFT))
        chosen = chosen[np.lexsort((chosen, -share[chosen]))][:TOP_DESCRIBED]
        described.append(
            tuple(
                Lift(names[c], round(float(share[c]), 4), round(float(lift[c]), 3)) for c in chosen
            )
        )
    return described


def describe(
    of_user: npt.NDArray[np.int32],
    k: int,
    user_weights: sp.csr_matrix,
    item_ids: Sequence[str],
    item_categories: Mapping[str, Sequence[str]],
    item_tags: Mapping[str, Sequence[str]],
) -> tuple[SegmentInfo, ...]:
    n_users = len(of_user)
    membership = sp.csr_matrix(
        (np.ones(n_users), (of_user, np.arange(n_users))), shape=(k, n_users)
    )
    weights = sp.csr_matrix(user_weights, dtype=np.float64)
    per_item = membership @ weights  # k x items: the segment's weight per course
    described = {}
    for name, labels_of in (("categories", item_categories), ("tags", item_tags)):
        incidence, names = _incidence(item_ids, labels_of)
        described[name] = _lifts(np.asarray((per_item @ incidence).todense()), names)
    # Top courses: learners of the segment with the course, times the course's lift there.
    binary = weights.copy()
    binary.data[:] = 1.0
    learners = np.asarray((membership @ binary).todense())  # k x items
    sizes = np.bincount(of_user, minlength=k).astype(np.float64)
    overall_rate = learners.sum(axis=0) / max(n_users, 1)
    info = []
    for s in range(k):
        rate = learners[s] / max(sizes[s], 1.0)
        lift = np.divide(rate, overall_rate, out=np.zeros_like(rate), where=overall_rate > 0)
        score = np.where(learners[s] >= MIN_COURSE_LEARNERS, learners[s] * lift, 0.0)
        top = [int(i) for i in np.argsort(-score, kind="stable")[:TOP_DESCRIBED] if score[i] > 0]
        categories = described["categories"][s]
        label = " · ".join(c.name for c in categories[:LABEL_CATEGORIES]) or f"segment {s}"
        info.append(
            SegmentInfo(
                segment_id=s,
                label=label,
                size=int(sizes[s]),
                categories=categories,
                tags=described["tags"][s],
                top_items=tuple((str(item_ids[i]), int(learners[s, i])) for i in top),
            )
        )
    return tuple(info)
