"""What makes a list a person wants to read, shared by serving (scorer.py) and offline
evaluation (training.py), so that the holdout metrics measure the lists as served:

* `rank_in_family`: each ranked item's place among the items of its course family before it,
  the basis of "at most `max_per_family` editions of one course in a list";
* `mmr`: maximal marginal relevance, which trades a little score for items unlike the ones
  already chosen (item factors and categories), `diversity` in [0, 1] saying how much;
* `top_n`: the n best of many scores, fast (also the learners of an audience, audience.py).

numpy only: no web, no database.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

IndexArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


_SHORT = 256  # up to this many ranked items, `rank_in_family` counts in Python
_BLOCK = 256  # items per group of the top-n pre-selection (see `top_n`)


def pool_size(n: int) -> int:
    """Candidates diversity chooses a list of `n` from, in serving and in evaluation alike."""
    return max(2 * n, 20)


def rank_in_family(families: IndexArray) -> IndexArray:
    """Per row of `families` (family codes of ranked items, best first; 1-D or 2-D), how many
    items to the left carry the same code: 0 for a family's best item."""
    if np.ndim(families) == 1 and len(families) <= _SHORT:
        # A served list's few candidates: a Python pass beats a dozen numpy calls.
        seen: dict[int, int] = {}
        ranks = []
        for family in families.tolist():
            rank = seen.get(family, 0)
            ranks.append(rank)
            seen[family] = rank + 1
        return np.asarray(ranks, dtype=np.int64)
    codes = np.atleast_2d(np.asarray(families, dtype=np.int64))
    n_rows, width = codes.shape
    base = codes - codes.min(initial=0)
    flat = (np.arange(n_rows)[:, None] * (int(base.max(initial=0)) + 1) + base).ravel()
    order = np.argsort(flat, kind="stable")  # stable: within a family, left to right
    ordered = flat[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]]) if len(flat) else flat
    sizes = np.diff(np.r_[starts, len(ordered)])
    rank = np.empty(len(flat), dtype=np.int64)
    rank[order] = np.arange(len(flat)) - np.repeat(starts, sizes)
    result: IndexArray = rank.reshape(codes.shape)
    return result if np.ndim(families) == 2 else result[0]


# Categories per item that count for similarity (the first ones the catalog lists).
MAX_CATEGORIES = 8


def category_codes(categories: Sequence[Sequence[str]]) -> IndexArray:
    """Items' categories as codes, one row per item, padded with -1: what `similarity` reads
    (at most MAX_CATEGORIES per item)."""
    codes: dict[str, int] = {}
    result = np.full((len(categories), MAX_CATEGORIES), -1, dtype=np.int64)
    for row, names in enumerate(categories):
        for column, name in enumerate(list(dict.fromkeys(names))[:MAX_CATEGORIES]):
            result[row, column] = codes.setdefault(name, len(codes))
    return result


def similarity(unit_vectors: FloatArray, categories: IndexArray) -> FloatArray:
    """How alike items are, in [0, 1]: the mean of their factor cosine (negative counts as 0;
    rows of zeros for items without factors) and the Jaccard overlap of their category sets
    (rows of `category_codes`). Dense and small: a list's candidates only."""
    alike: FloatArray = unit_vectors @ unit_vectors.T
    np.clip(alike, 0.0, 1.0, out=alike)
    present = categories >= 0
    if present.any():
        # The candidates' categories one-hot over the few codes they use: shared = B @ B.T.
        used, column = np.unique(categories[present], return_inverse=True)
        one_hot = np.zeros((len(categories), len(used)))
        one_hot[np.nonzero(present)[0], column] = 1.0
        shared = one_hot @ one_hot.T
        sizes = one_hot.sum(axis=1)
        union = sizes[:, None] + sizes[None, :] - shared
        alike += np.divide(shared, union, out=np.zeros_like(shared), where=union > 0)
    alike *= 0.5
    return alike


def mmr(relevance: FloatArray, alike: FloatArray, n: int, diversity: float) -> IndexArray:
    """Positions of `n` of the candidates (best first), chosen greedily by maximal marginal
    relevance: (1 - diversity) * relevance - diversity * (similarity to the most alike item
    already chosen). Relevance is min-max scaled over the candidates first, so `diversity`
    means the same for every strategy's scores. 0 keeps the ranking as it is."""
    count = len(relevance)
    n = min(n, count)
    if diversity <= 0.0 or n <= 1:
        return np.arange(n, dtype=np.int64)
    low, high = float(relevance.min()), float(relevance.max())
    scaled = (relevance - low) / (high - low) if high > low else np.ones(count)
    gain = (1.0 - diversity) * scaled
    # Row j: each candidate's marginal relevance if j were the most alike item chosen.
    marginal = gain[None, :] - diversity * alike
    value = gain.copy()  # marginal relevance, lowered as similar items are chosen
    chosen = np.empty(n, dtype=np.int64)
    for step in range(n):
        best = int(value.argmax())  # ties: the better ranked candidate
        chosen[step] = best
        np.minimum(value, marginal[best], out=value)
        value[best] = -math.inf
    return chosen


def top_n(scores: npt.NDArray[np.float32], n: int) -> IndexArray:
    """Indices of the `n` highest finite scores, best first, ties by lower index.

    np.argpartition over 100k items costs ~0.6 ms, more than the item's share of the matrix
    product (scorer.py), and ~20 ms over 1M learners (audience.py), so candidates are
    pre-selected: the items fall into groups of `_BLOCK` (item i in group i mod the number of
    groups), and the n-th best group maximum is a score that at least n items reach, and
    usually only ~2n items do. Strided groups, because numpy takes the maximum across the
    rows of a C-ordered array with SIMD and along them without (100k: 12 instead of 40 us).
    """
    size = int(scores.shape[0])
    if n <= 0 or size == 0:
        return np.zeros(0, dtype=np.int64)
    n_blocks = size // _BLOCK
    candidates: IndexArray
    if n_blocks > 4 * n:
        full = n_blocks * _BLOCK
        block_max = scores[:full].reshape(_BLOCK, n_blocks).max(axis=0)
        if full < size:
            block_max = np.append(block_max, scores[full:].max())
        kth = len(block_max) - n
        threshold = np.partition(block_max, kth)[kth]
        if np.isfinite(threshold):
            candidates = np.flatnonzero(scores >= threshold)
        else:  # fewer than n groups hold a finite score: every finite score is a candidate
            candidates = np.flatnonzero(np.isfinite(scores))
    else:
        candidates = np.flatnonzero(np.isfinite(scores))
    if len(candidates) > 4 * n:  # many ties (e.g. a zero user vector): cut before sorting
        candidates = candidates[np.argpartition(-scores[candidates], n - 1)[:n]]
    order = np.lexsort((candidates, -scores[candidates]))
    result: IndexArray = candidates[order[:n]].astype(np.int64)
    return result
