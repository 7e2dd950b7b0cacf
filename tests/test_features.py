"""features: events -> vocabularies, weighted CSR, negatives, popularity, text index."""

from __future__ import annotations

import tracemalloc
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from implicit.nearest_neighbours import bm25_weight

from recsvc import features
from recsvc.features import (
    Confidence,
    EventColumns,
    FeatureConfig,
    TextIndex,
    Vocabulary,
    build_interactions,
    confidence,
    event_type_codes,
    event_weights,
    factorize,
    item_text,
    load_arrays,
    save_arrays,
)

DAY = 86_400.0


def events(*rows: tuple[str, str, str, float] | tuple[str, str, str, float, float]) -> EventColumns:
    """rows of (user, item, type, day[, value])."""
    return EventColumns.from_lists(
        user_ids=[r[0] for r in rows],
        item_ids=[r[1] for r in rows],
        types=[r[2] for r in rows],
        occurred_at=[r[3] * DAY for r in rows],
        values=[r[4] if len(r) > 4 else None for r in rows],  # type: ignore[misc]
    )


def dense(interactions_matrix: sp.csr_matrix) -> np.ndarray:
    return np.asarray(interactions_matrix.toarray())


def cell(interactions, matrix: sp.csr_matrix, user: str, item: str) -> float:
    u, i = interactions.users.index_of(user), interactions.items.index_of(item)
    assert u is not None and i is not None
    return float(matrix[u, i])


# ------------------------------------------------------------------------------------------
# Events and vocabulary


def test_event_columns_from_lists_normalises_dtypes() -> None:
    ev = events(("u1", "c1", "view", 1), ("u2", "课程", "rate", 2, 4.0))
    assert ev.user_ids.dtype == object and ev.item_ids[1] == "课程"  # never fixed-width
    assert np.isnan(ev.values[0]) and ev.values[1] == 4.0
    assert ev.occurred_at.dtype == np.float64 and len(ev) == 2


def test_event_columns_accepts_object_arrays_and_rejects_bad_input() -> None:
    ev = EventColumns(
        user_ids=np.array(["a", "b"], dtype=object),
        item_ids=np.array(["x", "y"], dtype=object),
        types=np.array(["view", "view"], dtype=object),
        values=np.array([None, 2.0], dtype=object),
        occurred_at=np.array([1.0, 2.0]),
    )
    assert ev.user_ids.dtype == object and np.isnan(ev.values[0])
    assert EventColumns.from_lists(["a"], ["x"], ["view"], [1.0]).types.dtype == object
    with pytest.raises(TypeError, match="strings"):
        EventColumns.from_lists(["a", 7], ["x", "y"], ["view"] * 2, [1.0, 2.0])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="rows"):
        EventColumns.from_lists(["a"], ["x", "y"], ["view"], [1.0])
    with pytest.raises(ValueError, match="finite"):
        EventColumns.from_lists(["a"], ["x"], ["view"], [float("nan")])


def test_vocabulary_maps_both_ways_and_reports_unknown_ids() -> None:
    vocab = Vocabulary(["b", "a", "课"])
    assert vocab.index_of("a") == 1 and vocab.id_of(2) == "课"
    assert vocab.index_of("missing") is None
    assert vocab.indices_of(["课", "zzz", "b"]).tolist() == [2, -1, 0]
    assert vocab.ids_of([0, 2]) == ["b", "课"]
    assert "a" in vocab and len(vocab) == 3
    with pytest.raises(ValueError, match="unique"):
        Vocabulary(["a", "a"])
    assert vocab.index_of("\ud800") is None and "\ud800" not in vocab  # lone surrogate
    assert Vocabulary(vocab.ids) == vocab and vocab.ids.tolist() == ["b", "a", "课"]


def test_vocabulary_arrays_round_trip_and_answer_the_same(tmp_path: Path) -> None:
    ids = [f"u{k}" for k in range(500)] + ["用户", "a b", "x" * 300, ""]
    vocab = Vocabulary(ids)
    saved = save_arrays(tmp_path, "users", vocab.to_arrays())
    mapped = Vocabulary.from_arrays(load_arrays(tmp_path, "users", vocab.to_arrays()))
    assert len(saved) == 4 and mapped == vocab and len(mapped) == len(ids)
    assert mapped.indices_of(ids).tolist() == list(range(len(ids)))
    assert mapped.ids_of([0, 501, 503]) == ["u0", "a b", ""]
    assert mapped.index_of("u500") is None and mapped.id_of(-1) == ""
    # Short lists are decoded one by one, longer ones and arrays through Arrow: same answers.
    assert mapped.ids_of(list(range(len(ids)))) == ids == mapped.ids_of(np.arange(len(ids)))
    assert mapped.ids_of(np.array([1, -1])) == ["u1", ""] == mapped.ids_of([1, -1])
    for out_of_range in ([0, len(ids)], np.array([0, len(ids)]), [-len(ids) - 1]):
        with pytest.raises(IndexError):
            mapped.ids_of(out_of_range)
    with pytest.raises(IndexError):
        mapped.id_of(len(ids))
    broken = {**vocab.to_arrays(), "offsets": vocab.to_arrays()["offsets"][:-1]}
    with pytest.raises(ValueError, match="disagree"):
        Vocabulary.from_arrays(broken)


def test_vocabulary_lookups_survive_hash_collisions(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ids with equal hashes sit side by side in the sorted hashes; a lookup compares bytes."""
    monkeypatch.setattr(features, "_blake2b_64", lambda key: len(key) % 3)
    ids = ["a", "bb", "cc", "ddd", "e", "ff", "课"]
    vocab = Vocabulary(ids)
    assert vocab.indices_of(ids).tolist() == list(range(len(ids)))
    assert vocab.index_of("zz") is None and vocab.index_of("g") is None
    with pytest.raises(ValueError, match="unique"):
        Vocabulary(["bb", "cc", "bb"])


def test_factorize_matches_numpy_unique() -> None:
    rng = np.random.default_rng(3)
    pool = np.array(["u1", "u10", "u2", "用户7", "a b", "x" * 40, "U1", "u1 "])
    values = pool[rng.integers(0, len(pool), 500)]
    uniques, codes = factorize(values)
    expected_uniques, expected_codes = np.unique(values, return_inverse=True)
    assert uniques.tolist() == expected_uniques.tolist()
    assert codes.tolist() == expected_codes.tolist()
    object_uniques, object_codes = factorize(values.astype(object))
    assert object_uniques.tolist() == expected_uniques.tolist()
    assert object_codes.tolist() == expected_codes.tolist()


@pytest.mark.slow
def test_one_long_id_does_not_inflate_feature_memory() -> None:
    """Ids stay Python strings: one 128-character id among 1M events used to make every id of
    its column fixed-width 512 bytes (~0.5 GB more here, ~5 GB per column at 10M events)."""
    n = 1_000_000
    rng = np.random.default_rng(0)
    users = np.array([f"u{k}" for k in range(50_000)], dtype=object)[rng.integers(0, 50_000, n)]
    items = np.array([f"c{k}" for k in range(5_000)], dtype=object)[rng.integers(0, 5_000, n)]
    types = np.array(["view", "enroll", "rate"], dtype=object)[rng.integers(0, 3, n)]
    values = np.where(types == "rate", 4.0, np.nan)
    occurred_at = rng.random(n) * 1e7

    def peak_bytes(user_ids: np.ndarray) -> int:
        tracemalloc.start()  # numpy and pandas report their buffers to tracemalloc
        try:
            events = EventColumns(user_ids, items, types, values, occurred_at)
            build_interactions(events, FeatureConfig())
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    with_long_id = users.copy()
    with_long_id[n // 2] = "x" * 128
    assert peak_bytes(with_long_id) < 1.10 * peak_bytes(users)


# ------------------------------------------------------------------------------------------
# Event weights


def test_event_weights_is_the_per_event_rule() -> None:
    config = FeatureConfig(rating_negative_below=2.0)
    types = ["view", "rate", "rate", "rate", "rate", "dislike", "purchase", "no-such-type"]
    values = np.array([np.nan, 4.0, np.nan, 1.0, -3.0, np.nan, 7.0, 1.0])
    codes = event_type_codes(types, config)
    assert codes[-1] == -1 and [config.known_types[c] for c in codes[:-1]] == types[:-1]
    weights, negative = event_weights(codes, values, config)
    # ratings: value x weight, none counts 1, below 0 counts 0; other values are ignored
    assert weights.tolist() == [1.0, 4.0, 1.0, 1.0, 0.0, 0.0, 5.0, 0.0]
    assert negative.tolist() == [False, False, False, True, True, True, False, False]


def test_build_interactions_weighs_each_event_by_the_rule() -> None:
    config = FeatureConfig(rating_negative_below=2.0, weight_cap=None, min_user_interactions=0)
    rng = np.random.default_rng(4)
    types = rng.choice(np.array([*config.known_types, "other"], dtype=object), 300)
    values = np.where(rng.random(300) < 0.2, np.nan, rng.integers(-1, 6, 300).astype(float))
    ev = EventColumns(
        np.array([f"u{k}" for k in range(300)], dtype=object),  # one event per pair
        np.full(300, "c1", dtype=object),
        types,
        values,
        np.arange(300.0),
    )
    it = build_interactions(ev, config)
    weights, negative = event_weights(event_type_codes(types, config), values, config)
    for k in range(300):
        u = it.users.index_of(f"u{k}")
        if u is None:  # an ignored type
            assert types[k] == "other"
            continue
        assert it.negatives[u, 0] == negative[k]
        assert it.weights[u, 0] == pytest.approx(0.0 if negative[k] else weights[k])


# ------------------------------------------------------------------------------------------
# build_interactions


def test_weights_sum_per_pair_with_type_weights_and_rating_values() -> None:
    ev = events(
        ("u1", "c1", "view", 1),
        ("u1", "c1", "purchase", 2),
        ("u1", "c2", "rate", 3, 4.0),
        ("u2", "c1", "rate", 3, 1.0),
        ("u2", "c2", "search_click", 4),
    )
    it = build_interactions(ev, FeatureConfig())
    assert it.users.ids.tolist() == ["u1", "u2"] and it.items.ids.tolist() == ["c1", "c2"]
    assert dense(it.weights).tolist() == [[6.0, 4.0], [1.0, 2.0]]  # a low rating is still interest
    assert it.weights.dtype == np.float32 and it.weights.has_sorted_indices
    assert it.n_events == 5 and it.n_ignored_events == 0


def test_last_seen_is_the_newest_positive_event_of_the_pair() -> None:
    ev = events(("u1", "c1", "view", 5), ("u1", "c1", "view", 9), ("u1", "c1", "click", 2))
    it = build_interactions(ev, FeatureConfig())
    assert cell(it, it.last_seen, "u1", "c1") == 9 * DAY
    assert np.array_equal(it.last_seen.indices, it.weights.indices)
    assert np.array_equal(it.last_seen.indptr, it.weights.indptr)


def test_weight_cap_limits_a_pairs_sum() -> None:
    ev = events(*[("u1", "c1", "view", d) for d in range(30)], ("u1", "c2", "view", 1))
    it = build_interactions(ev, FeatureConfig(weight_cap=10.0))
    assert cell(it, it.weights, "u1", "c1") == 10.0
    assert cell(it, it.weights, "u1", "c2") == 1.0


def test_half_life_halves_weight_per_half_life_of_age() -> None:
    ev = events(
        ("u1", "c1", "purchase", 100), ("u1", "c2", "purchase", 90), ("u2", "c1", "view", 80)
    )
    it = build_interactions(ev, FeatureConfig(half_life_days=10.0), now=100 * DAY)
    assert cell(it, it.weights, "u1", "c1") == pytest.approx(5.0)
    assert cell(it, it.weights, "u1", "c2") == pytest.approx(2.5)
    assert cell(it, it.weights, "u2", "c1") == pytest.approx(0.25)


def test_dislike_is_negative_and_removed_from_positives_newest_signal_wins() -> None:
    ev = events(
        ("u1", "c1", "view", 1),
        ("u1", "c1", "dislike", 2),  # disliked after viewing -> negative
        ("u1", "c2", "dislike", 1),
        ("u1", "c2", "purchase", 3),  # bought after disliking -> positive again
        ("u1", "c3", "view", 1),
        ("u2", "c1", "view", 1),
    )
    it = build_interactions(ev, FeatureConfig())
    assert cell(it, it.negatives, "u1", "c1") == 1
    assert cell(it, it.weights, "u1", "c1") == 0
    assert cell(it, it.negatives, "u1", "c2") == 0
    assert cell(it, it.weights, "u1", "c2") == 5.0
    assert it.negatives.multiply(it.weights).nnz == 0  # disjoint
    assert it.popularity[it.items.index_of("c1")] == 1  # only u2 counts


def test_low_ratings_are_negative_only_when_configured() -> None:
    ev = events(("u1", "c1", "rate", 1, 1.0), ("u1", "c2", "rate", 1, 5.0), ("u2", "c1", "view", 1))
    off = build_interactions(ev, FeatureConfig())
    assert off.negatives.nnz == 0 and cell(off, off.weights, "u1", "c1") == 1.0
    on = build_interactions(ev, FeatureConfig(rating_negative_below=3.0))
    assert cell(on, on.negatives, "u1", "c1") == 1 and cell(on, on.weights, "u1", "c1") == 0


def test_unknown_types_are_ignored_and_counted() -> None:
    ev = events(("u1", "c1", "view", 1), ("u1", "c2", "teleport", 1))
    it = build_interactions(ev, FeatureConfig())
    assert it.items.ids.tolist() == ["c1"] and it.n_ignored_events == 1


def test_minimum_counts_drop_sparse_users_and_items() -> None:
    ev = events(
        ("u1", "c1", "view", 1), ("u1", "c2", "view", 1), ("u1", "c3", "view", 1),
        ("u2", "c1", "view", 1), ("u2", "c2", "view", 1),
        ("u3", "c1", "view", 1),
    )  # fmt: skip
    it = build_interactions(ev, FeatureConfig(min_user_interactions=2, min_item_interactions=2))
    assert it.users.ids.tolist() == ["u1", "u2"]
    assert it.items.ids.tolist() == ["c1", "c2"]  # c3 had 1 user; c1 keeps its count 3
    assert it.weights.shape == (2, 2) and it.popularity.tolist() == [2, 2]


def test_popularity_all_time_and_recent_window() -> None:
    ev = events(
        ("u1", "c1", "view", 1), ("u2", "c1", "view", 2), ("u3", "c1", "view", 3),
        ("u1", "c2", "view", 99), ("u2", "c2", "view", 100), ("u1", "c2", "view", 100),
    )  # fmt: skip
    it = build_interactions(ev, FeatureConfig(popularity_window_days=30), now=100 * DAY)
    assert it.popularity.tolist() == [3, 2]
    assert it.recent_popularity.tolist() == [0, 2]


def test_type_counts_tell_which_items_were_consumed() -> None:
    ev = events(
        ("u1", "c1", "view", 1), ("u1", "c1", "view", 2), ("u1", "c2", "purchase", 1),
        ("u2", "c1", "enroll", 1),
    )  # fmt: skip
    it = build_interactions(ev, FeatureConfig())
    assert cell(it, it.type_counts["view"], "u1", "c1") == 2
    consumed = it.consumed(["purchase", "enroll"])
    assert dense(consumed).tolist() == [[False, True], [True, False]]


def test_default_reference_time_is_the_newest_event() -> None:
    ev = events(("u1", "c1", "view", 10), ("u1", "c2", "view", 20))
    it = build_interactions(ev, FeatureConfig(half_life_days=10.0))
    assert it.now == 20 * DAY
    assert cell(it, it.weights, "u1", "c1") == pytest.approx(0.5)


def test_vectorised_aggregation_matches_a_plain_python_reference() -> None:
    rng = np.random.default_rng(7)
    n = 3000
    types = np.array(["view", "click", "purchase", "rate", "dislike"])
    rows = [
        (f"u{rng.integers(40)}", f"c{rng.integers(25)}", str(types[rng.integers(5)]),
         float(rng.integers(0, 50)), float(rng.integers(1, 6)))
        for _ in range(n)
    ]  # fmt: skip
    config = FeatureConfig(half_life_days=15.0, weight_cap=12.0)
    it = build_interactions(events(*rows), config, now=50 * DAY)

    weight: dict[tuple[str, str], float] = defaultdict(float)
    newest_pos: dict[tuple[str, str], float] = defaultdict(lambda: -np.inf)
    newest_neg: dict[tuple[str, str], float] = defaultdict(lambda: -np.inf)
    for user, item, kind, day, value in rows:
        key = (user, item)
        if kind == "dislike":
            newest_neg[key] = max(newest_neg[key], day)
            continue
        w = config.event_weights[kind] * (value if kind == "rate" else 1.0)
        weight[key] += w * 0.5 ** ((50 - day) / 15.0)
        newest_pos[key] = max(newest_pos[key], day)
    expected = {k: min(w, 12.0) for k, w in weight.items() if not newest_neg[k] >= newest_pos[k]}
    got = {}
    coo = it.weights.tocoo()
    for u, i, w in zip(coo.row, coo.col, coo.data, strict=True):
        got[(it.users.id_of(u), it.items.id_of(i))] = float(w)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-5)
        u, i = it.users.index_of(key[0]), it.items.index_of(key[1])
        assert it.last_seen[u, i] == newest_pos[key] * DAY


# ------------------------------------------------------------------------------------------
# Confidence


def test_log1p_confidence() -> None:
    weights = sp.csr_matrix(np.array([[0, 1.0], [3.0, 0]], dtype=np.float32))
    conf = confidence(weights, alpha=2.0, scheme="log1p")
    assert conf.dtype == np.float32 and conf.nnz == 2
    assert conf[0, 1] == pytest.approx(1 + 2 * np.log1p(1.0))
    assert conf[1, 0] == pytest.approx(1 + 2 * np.log1p(3.0))
    assert weights[0, 1] == 1.0  # input untouched


def test_bm25_confidence_keeps_sparsity_and_stays_at_least_one() -> None:
    rng = np.random.default_rng(0)
    array = rng.integers(1, 6, (30, 12)) * (rng.random((30, 12)) < 0.3)
    array[:, 0] = 1  # an item everybody saw: BM25 idf <= 0, must not go below 1
    weights = sp.csr_matrix(array.astype(np.float32))
    conf = confidence(weights, alpha=1.0, scheme="bm25", bm25_k1=100, bm25_b=0.8)
    assert np.array_equal(conf.indices, weights.indices)
    assert np.array_equal(conf.indptr, weights.indptr)
    assert conf.data.min() >= 1.0 and conf.data.max() > 1.0
    with pytest.raises(ValueError, match="scheme"):
        confidence(weights, 1.0, "cubic")  # type: ignore[arg-type]


def test_fitted_bm25_is_implicits_recipe_and_works_row_by_row() -> None:
    """Fitted on the training weights, the transform equals implicit's bm25_weight (item x
    user) there, and gives any subset of rows the values it gave them in the whole matrix: a
    folded-in row with no new events gets its training confidences back."""
    rng = np.random.default_rng(1)
    array = rng.integers(1, 20, (40, 15)) * (rng.random((40, 15)) < 0.4)
    array[:3] = 1  # users who saw every item: idf < 0, clipped
    weights = sp.csr_matrix(array.astype(np.float32))
    fitted = Confidence.fit(weights, alpha=2.0, scheme="bm25", bm25_k1=100, bm25_b=0.8)
    implicit_bm25 = sp.csr_matrix(bm25_weight(weights.T.tocsr(), K1=100, B=0.8).T)
    implicit_bm25.sort_indices()
    whole = fitted.transform(weights)
    expected = 1.0 + 2.0 * np.clip(implicit_bm25.data, 0.0, None)
    np.testing.assert_allclose(whole.data, expected, rtol=1e-5)
    rows = [5, 0, 17]
    assert (fitted.transform(weights[rows]) != whole[rows]).nnz == 0
    again = Confidence.from_arrays(fitted.to_arrays())
    assert (again.transform(weights) != whole).nnz == 0
    with pytest.raises(ValueError, match="items"):
        fitted.transform(weights[:, :10])


# ------------------------------------------------------------------------------------------
# Text


CATALOG = {
    "py-data": item_text("Python数据分析实战", "用pandas做数据分析", ["python"], ["数据"]),
    "java": item_text("Java入门", "从零开始学Java编程", ["java"], ["编程"]),
    "ml": item_text("Machine Learning Basics", "supervised learning for beginners", [], ["AI"]),
    "design": item_text("平面设计入门", "Photoshop 基础", ["设计"], ["艺术"]),
    "empty": "",
}


@pytest.fixture
def text_index() -> TextIndex:
    return TextIndex().fit(list(CATALOG), list(CATALOG.values()))


def test_chinese_query_matches_without_a_tokenizer(text_index: TextIndex) -> None:
    scores = text_index.query("想学Python数据分析")
    assert text_index.items.id_of(int(np.argmax(scores))) == "py-data"
    assert scores[text_index.items.index_of("empty")] == 0
    assert text_index.items.id_of(int(np.argmax(text_index.query("machine learning")))) == "ml"
    assert not text_index.query("   ").any()


def test_similar_ranks_related_items_and_not_itself(text_index: TextIndex) -> None:
    java = text_index.items.index_of("java")
    assert java is not None
    scores = text_index.similar(java)
    assert scores[java] == 0
    assert len(scores) == len(CATALOG)


def test_text_index_round_trips_without_pickle(text_index: TextIndex, tmp_path: Path) -> None:
    files = text_index.save(tmp_path)
    for path in files:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                assert all(npz[name].dtype != object for name in npz.files)
    loaded = TextIndex.load(tmp_path)
    assert loaded.items == text_index.items
    for query in ["想学Python数据分析", "设计", "beginner learning", "Java"]:
        np.testing.assert_allclose(loaded.query(query), text_index.query(query), rtol=1e-6)
    np.testing.assert_allclose(loaded.similar(0), text_index.similar(0), rtol=1e-6)


def test_no_events_gives_empty_matrices() -> None:
    it = build_interactions(EventColumns.from_lists([], [], [], []), FeatureConfig())
    assert it.shape == (0, 0) and it.weights.nnz == 0 and it.popularity.tolist() == []


def test_negative_only_items_are_kept_when_the_minimum_is_zero() -> None:
    ev = events(("u1", "c1", "dislike", 1), ("u2", "c1", "view", 1), ("u1", "c2", "dislike", 1))
    default = build_interactions(ev, FeatureConfig())
    # u1 has no positives and c2 no users: both left out, and with them u1's dislikes
    assert default.users.ids.tolist() == ["u2"] and default.items.ids.tolist() == ["c1"]
    assert default.negatives.nnz == 0
    kept = build_interactions(ev, FeatureConfig(min_user_interactions=0, min_item_interactions=0))
    assert kept.items.ids.tolist() == ["c1", "c2"]
    assert dense(kept.negatives).tolist() == [[True, True], [False, False]]


def test_large_batches_of_ids_are_looked_up_alike(monkeypatch: pytest.MonkeyPatch) -> None:
    vocab = Vocabulary([f"u{k}" for k in range(300)] + ["用户"])
    wanted = ["用户", "nobody", *(f"u{k}" for k in range(0, 400, 7))]
    one_by_one = vocab.indices_of(wanted)
    monkeypatch.setattr(features, "_BULK_LOOKUP", 10)
    np.testing.assert_array_equal(vocab.indices_of(iter(wanted)), one_by_one)
    assert one_by_one[:2].tolist() == [300, -1] and (one_by_one[2:45] >= 0).all()


def test_many_ids_are_decoded_alike() -> None:
    vocab = Vocabulary([f"u{k}" for k in range(100)] + ["用户", "x" * 300])
    wanted = [100, 0, 101, -1, *range(5, 95, 2)]
    assert len(wanted) > features._FEW
    assert vocab.ids_of(wanted) == [vocab.id_of(i) for i in wanted]
    with pytest.raises(IndexError):
        vocab.ids_of([*range(40), 102])
