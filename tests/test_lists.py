"""lists: the per-family rank and maximal marginal relevance shared by serving and evaluation."""

from __future__ import annotations

import numpy as np

from recsvc import lists
from test_diversity import WITH_FAMILIES
from test_scorer import ask, event, ids, scorer  # noqa: F401  (fixture)


def test_rank_in_family_counts_earlier_items_of_the_same_family() -> None:
    assert lists.rank_in_family(np.array([3, 1, 3, 3, 2, 1])).tolist() == [0, 0, 1, 2, 0, 1]
    rows = lists.rank_in_family(np.array([[0, 0, 1], [1, 0, 1]]))
    assert rows.tolist() == [[0, 1, 0], [0, 0, 1]]
    assert lists.rank_in_family(np.zeros(0, dtype=np.int64)).tolist() == []


def test_category_codes_and_similarity() -> None:
    codes = lists.category_codes([["py", "data"], ["py", "data"], ["py", "web"], ["art"], []])
    assert codes.shape == (5, lists.MAX_CATEGORIES)
    vectors = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, 0.0]])
    alike = lists.similarity(vectors, codes)
    assert np.allclose(np.diag(alike)[:4], 1.0)
    assert alike[0, 1] == 1.0  # same factors, same categories
    assert np.isclose(alike[0, 2], (0.0 + 1 / 3) / 2)  # orthogonal, Jaccard 1/3
    assert alike[0, 3] == 0.0  # opposite factors count as 0, no shared category
    assert alike[4, 4] == 0.0  # no factors, no categories


def test_mmr_trades_relevance_for_unlike_items() -> None:
    relevance = np.array([1.0, 0.99, 0.98, 0.5])
    alike = np.array(
        [
            [1.0, 0.95, 0.95, 0.0],
            [0.95, 1.0, 0.95, 0.0],
            [0.95, 0.95, 1.0, 0.0],
            [0.0, 0.0, 0.0, 1.0],
        ]
    )
    assert lists.mmr(relevance, alike, 3, 0.0).tolist() == [0, 1, 2]  # no diversity: as ranked
    assert lists.mmr(relevance, alike, 3, 0.6).tolist() == [0, 3, 1]
    assert lists.mmr(relevance, alike, 10, 0.6).tolist() == [0, 3, 1, 2]  # n beyond the pool


def test_lists_stacked_get_what_each_gets_alone() -> None:
    """Serving re-ranks a batch's lists together: the same similarity matrices, bit for bit,
    and the same choices as one list at a time (ties included), with and without categories."""
    rng = np.random.default_rng(7)
    for diversity in (0.0, 0.1, 0.5, 1.0):
        vectors = rng.normal(size=(6, 20, 8))
        vectors /= np.linalg.norm(vectors, axis=2, keepdims=True)
        vectors[:, 3] = 0.0  # a candidate without factors
        codes = rng.integers(-1, 5, size=(6, 20, lists.MAX_CATEGORIES))
        codes[0] = -1  # a list without categories
        relevance = np.round(rng.normal(size=(6, 20)), 1)  # ties
        relevance[1] = 1.0  # all equal
        alike = lists.similarity(vectors, codes)
        together = lists.mmr(relevance, alike, 10, diversity)
        assert together.shape == (6, 10)
        for row in range(6):
            alone = lists.similarity(vectors[row], codes[row])
            assert np.array_equal(alike[row], alone)
            alone_chosen = lists.mmr(relevance[row], alone, 10, diversity)
            assert together[row].tolist() == alone_chosen.tolist()


def test_top_n_is_exact_with_ties_and_blocked_scores() -> None:
    rng = np.random.default_rng(3)
    for size in (10, 300, 5_000, 100_003):
        scores = np.round(rng.normal(size=size), 2).astype(np.float32)  # many ties
        scores[rng.random(size) < 0.3] = -np.inf
        for n in (1, 10, 20):
            expected = np.lexsort((np.arange(size), -scores))[:n]
            expected = expected[np.isfinite(scores[expected])]
            assert lists.top_n(scores, n).tolist() == expected.tolist()


def test_diversity_spreads_a_learners_list_over_categories(scorer) -> None:  # noqa: F811
    """A learner who viewed a language course, asked for 3: without diversity all three are
    language courses; with full diversity the list reaches into the other category, and the
    best item stays first."""
    seen = (event("B2", "view"),)
    plain = ask(scorer, WITH_FAMILIES, user_id="new", recent=seen, n=3)
    spread = ask(scorer, WITH_FAMILIES, user_id="new", recent=seen, n=3, diversity=1.0)
    language = {"B0", "B1", "B2", "B3"}
    assert set(ids(plain)) <= language
    assert ids(spread)[0] == ids(plain)[0]
    assert set(ids(spread)) - language
