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
    (rows of `category_codes`). Dense and small: a list's candidates only (candidates x
    factors and candidates x MAX_CATEGORIES), or a stack of lists (lists x candidates x ...),
    each list's matrix the same as alone."""
    alike: FloatArray = unit_vectors @ np.swapaxes(unit_vectors, -1, -2)
    np.clip(alike, 0.0, 1.0, out=alike)
    present = categories >= 0
    if present.any():
        # The candidates' categories one-hot over the few codes they use: shared = B @ B.T.
        used, column = np.unique(categories[present], return_inverse=True)
        one_hot = np.zeros((*categories.shape[:-1], len(used)))
        one_hot[(*np.nonzero(present)[:-1], column)] = 1.0
        shared = one_hot @ np.swapaxes(one_hot, -1, -2)
        sizes = one_hot.sum(axis=-1)
        union = sizes[..., :, None] + sizes[..., None, :] - shared
        alike += np.divide(shared, union, out=np.zeros_like(shared), where=union > 0)
    alike *= 0.5
    return alike


def mmr(relevance: FloatArray, alike: FloatArray, n: int, diversity: float) -> IndexArray:
    """Positions of `n` of the candidates (best first), chosen greedily by maximal marginal
    relevance: (1 - diversity) * relevance - diversity * (similarity to the most alike item
    already chosen). Relevance is min-max scaled over the candidates first, so `diversity`
    means the same for every strategy's scores. 0 keeps the ranking as it is.

    `relevance` holds one list's candidates, or a stack of lists of as many candidates
    (lists x candidates, `alike` lists x candidates x candidates): each list gets the same
    positions as alone, in n rounds of a few numpy calls for all of them (after the scores,
    with the CPU caches cold, each call costs twice its usual overhead)."""
    rows = relevance if relevance.ndim == 2 else relevance[None, :]
    count = rows.shape[1]
    n = min(n, count)
    if diversity <= 0.0 or n <= 1:
        chosen = np.tile(np.arange(n, dtype=np.int64), (len(rows), 1))
        return chosen if relevance.ndim == 2 else chosen[0]
    low, high = rows.min(axis=1, keepdims=True), rows.max(axis=1, keepdims=True)
    scaled = np.divide(rows - low, high - low, out=np.ones_like(rows), where=high > low)
    gain = (1.0 - diversity) * scaled
    # [list, j]: each candidate's marginal relevance if j were the most alike item chosen.
    marginal = gain[:, None, :] - diversity * alike.reshape(len(rows), count, count)
    value = gain.copy()  # marginal relevance, lowered as similar items are chosen
    chosen = np.empty((len(rows), n), dtype=np.int64)
    if len(rows) == 1:  # one list: its rows as views (gathering costs 3x as much)
        one, lowered, order = value[0], marginal[0], chosen[0]
        for step in range(n):
            best = int(one.argmax())  # ties: the better ranked candidate
            order[step] = best
            np.minimum(one, lowered[best], out=one)
            one[best] = -math.inf
    else:
        lists = np.arange(len(rows))
        for step in range(n):
            best = value.argmax(axis=1)
            chosen[:, step] = best
            np.minimum(value, marginal[lists, best], out=value)
            value[lists, best] = -math.inf
    return chosen if relevance.ndim == 2 else chosen[0]


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
        values = scores[candidates]
        nth = -np.partition(-values, n - 1)[n - 1]  # the n-th best score
        better = candidates[values > nth]
        # the rest of the n from those tied at the n-th score, lowest indices first
        candidates = np.concatenate([better, candidates[values == nth][: n - len(better)]])
    order = np.lexsort((candidates, -scores[candidates]))
    result: IndexArray = candidates[order[:n]].astype(np.int64)
    return result
