"""training: holdout split, metrics, ALS vs popularity on a two-block fixture, determinism."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp

from recsvc import training
from recsvc.features import (
    ConfidenceScheme,
    EventColumns,
    FeatureConfig,
    Interactions,
    Vocabulary,
    build_interactions,
)
from recsvc.training import (
    METRIC_NAMES,
    ActiveModel,
    ALSParams,
    Comparison,
    PopularityModel,
    evaluate,
    evaluate_active,
    family_codes,
    fit_als,
    is_not_worse,
    split_holdout,
    train_model,
)

# Small and fast, still enough to separate the blocks.
PARAMS = ALSParams(factors=4, regularization=5.0, alpha=10.0, iterations=15)


def two_blocks(n_users: int = 60, per_user: int = 8, seed: int = 0) -> Interactions:
    """Users 0..n/2-1 interact only with items a00..a11, the others only with b00..b11.
    Item popularity is skewed towards block B (its users are more active), so the popularity
    baseline recommends B items to A users: the right answer is known and differs from it."""
    rng = np.random.default_rng(seed)
    users, items, times = [], [], []
    for u in range(n_users):
        block = "a" if u < n_users // 2 else "b"
        count = per_user if block == "a" else per_user + 2
        weights = np.linspace(2.0, 1.0, 12)
        chosen = rng.choice(12, size=count, replace=False, p=weights / weights.sum())
        for t, i in enumerate(chosen):
            users.append(f"u{u:03d}")
            items.append(f"{block}{i:02d}")
            times.append(1_000.0 + t)
    ev = EventColumns.from_lists(users, items, ["view"] * len(users), times)
    return build_interactions(ev, FeatureConfig())


@pytest.fixture(scope="module")
def blocks() -> Interactions:
    return two_blocks()


def block_of(interactions: Interactions, index: int, kind: str) -> str:
    vocab = interactions.users if kind == "user" else interactions.items
    name = vocab.id_of(index)
    if kind == "user":
        return "a" if int(name[1:]) < 30 else "b"
    return name[0]


# ------------------------------------------------------------------------------------------
# split


def test_holdout_puts_each_users_newest_items_in_test(blocks: Interactions) -> None:
    holdout = split_holdout(blocks, fraction=0.25, seed=1)
    assert holdout.train.multiply(holdout.test).nnz == 0
    assert (holdout.train + holdout.test - blocks.weights).nnz == 0
    for u in range(blocks.shape[0]):
        start, end = blocks.last_seen.indptr[u], blocks.last_seen.indptr[u + 1]
        times = dict(
            zip(blocks.last_seen.indices[start:end], blocks.last_seen.data[start:end], strict=True)
        )
        test_items = holdout.test[u].indices
        train_items = holdout.train[u].indices
        assert len(test_items) == int(0.25 * len(times) + 0.5)  # rounded half up
        assert min(times[i] for i in test_items) > max(times[i] for i in train_items)


def test_holdout_keeps_small_users_whole_and_is_deterministic() -> None:
    ev = EventColumns.from_lists(
        ["u1", "u1", "u2", "u2", "u2", "u2"],
        ["c1", "c2", "c1", "c2", "c3", "c4"],
        ["view"] * 6,
        [5.0, 5.0, 1.0, 1.0, 1.0, 1.0],  # all ties: broken by the seed
    )
    it = build_interactions(ev, FeatureConfig())
    first = split_holdout(it, fraction=0.5, seed=3, min_interactions=3)
    assert first.test[0].nnz == 0 and first.train[0].nnz == 2  # u1 too small
    assert first.test[1].nnz == 2 and first.n_test_users == 1
    again = split_holdout(it, fraction=0.5, seed=3, min_interactions=3)
    assert (first.test != again.test).nnz == 0
    picks = {tuple(split_holdout(it, 0.5, seed=s).test[1].indices) for s in range(20)}
    assert len(picks) > 1  # the seed really decides ties


# ------------------------------------------------------------------------------------------
# metrics


class FixedLists:
    """A model that returns given lists, to check the metric arithmetic by hand. Items in
    `filtered` come back as implicit pads a short list: with its lowest float32 score."""

    def __init__(self, lists: dict[int, list[int]], filtered: frozenset[int] = frozenset()) -> None:
        self.lists = lists
        self.filtered = filtered

    def recommend(
        self,
        userid: np.ndarray,
        user_items: sp.csr_matrix,
        N: int = 10,  # noqa: N803
        filter_already_liked_items: bool = True,
        filter_items: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        ids = np.full((len(userid), N), -1, dtype=np.int64)
        for row, user in enumerate(userid):
            chosen = self.lists[int(user)][:N]
            ids[row, : len(chosen)] = chosen
        scores = np.where(np.isin(ids, list(self.filtered)), np.finfo(np.float32).min, 0.0)
        return ids, scores


def test_metrics_by_hand() -> None:
    n_items = 20
    train = sp.csr_matrix(np.eye(3, n_items, k=10, dtype=np.float32))  # user u saw item 10+u
    test = np.zeros((3, n_items), dtype=np.float32)
    test[0, [0, 1]] = 1  # user 0: relevant 0, 1
    test[1, [5]] = 1  # user 1: relevant 5
    train_all = sp.csr_matrix(np.vstack([train.toarray(), np.ones((1, n_items))]))
    test = sp.csr_matrix(np.vstack([test, np.zeros((1, n_items))]))  # 4th user: no test items
    model = FixedLists({0: [0, 7, 1], 1: [3, 4]})
    metrics = evaluate(model, train_all, test, k=3)
    # user 0: hits at ranks 1 and 3; user 1: none
    assert metrics["precision@10"] == pytest.approx((2 / 3 + 0) / 2)
    assert metrics["recall@10"] == pytest.approx((1.0 + 0) / 2)
    dcg = 1 + 1 / np.log2(4)
    idcg = 1 + 1 / np.log2(3)
    assert metrics["ndcg@10"] == pytest.approx((dcg / idcg) / 2)
    assert metrics["map@10"] == pytest.approx(((1 + 2 / 3) / 2) / 2)
    assert metrics["coverage"] == pytest.approx(5 / n_items)
    assert set(metrics) == set(METRIC_NAMES)


FAMILY_KEYS = {"family_ndcg@10", "distinct_families@10"}


def two_users_with_editions() -> tuple[sp.csr_matrix, sp.csr_matrix, np.ndarray]:
    """20 items; items 0/1 and 5/6 are two editions of one course each (families 100, 105)."""
    n_items = 20
    family_of = np.arange(n_items) + 200
    family_of[[0, 1]] = 100
    family_of[[5, 6]] = 105
    train = sp.csr_matrix(np.eye(2, n_items, k=10, dtype=np.float32))  # user u saw item 10+u
    train = sp.csr_matrix(np.vstack([train.toarray(), np.ones((1, n_items))]))  # none is cold
    test = np.zeros((3, n_items), dtype=np.float32)
    test[0, [1]] = 1  # user 0 took the second edition of family 100
    test[1, [5, 6, 8]] = 1  # user 1: both editions of family 105, and item 8
    return train, sp.csr_matrix(test), family_of


def test_served_lists_keep_one_edition_per_family_and_count_family_hits() -> None:
    train, test, family_of = two_users_with_editions()
    # user 0's top-2 are both editions of family 100; user 1's top-2 both editions of 105
    model = FixedLists({0: [0, 1, 2, 3], 1: [6, 5, 9, 8]})
    plain = evaluate(model, train, test, k=3)
    served = evaluate(model, train, test, k=3, family_of=family_of)
    assert set(plain) == set(METRIC_NAMES)
    assert set(served) == set(METRIC_NAMES) | FAMILY_KEYS

    # plain top-3: user 0 [0, 1, 2] hits item 1 at rank 2; user 1 [6, 5, 9] hits at 1 and 2
    idcg3 = 1 + 1 / np.log2(3) + 1 / np.log2(4)
    assert plain["ndcg@10"] == pytest.approx((1 / np.log2(3) + (1 + 1 / np.log2(3)) / idcg3) / 2)
    # served top-3: user 0 [0, 2, 3] misses item 1; user 1 [6, 9, 8] hits at ranks 1 and 3
    assert served["ndcg@10"] == pytest.approx((0 + (1 + 1 / np.log2(4)) / idcg3) / 2)
    assert served["coverage"] == pytest.approx(6 / 20)  # 0, 2, 3, 6, 9, 8
    # family level: edition 0 stands for family 100 (user 0's test item 1): a hit at rank 1;
    # user 1 has two test families (105, 208): hits at ranks 1 and 3, IDCG over 2 positions
    user1 = (1 + 1 / np.log2(4)) / (1 + 1 / np.log2(3))
    assert served["family_ndcg@10"] == pytest.approx((1.0 + user1) / 2)
    assert served["distinct_families@10"] == 1.0

    two = evaluate(model, train, test, k=3, family_of=family_of, max_per_family=2)
    assert two["precision@10"] == plain["precision@10"]  # two editions allowed: plain lists
    # both editions listed: distinct share 2/3, and the family still counts once
    assert two["distinct_families@10"] == pytest.approx(2 / 3)
    assert two["family_ndcg@10"] == pytest.approx((1.0 + 1 / (1 + 1 / np.log2(3))) / 2)


def test_served_lists_measure_intra_list_distance_with_given_vectors() -> None:
    train, test, family_of = two_users_with_editions()
    model = FixedLists({0: [0, 1, 2, 3], 1: [6, 5, 9, 8]})
    vectors = np.zeros((20, 2), dtype=np.float32)
    vectors[[0, 2, 6, 9]] = [3.0, 0.0]  # norms differ: cosine, not dot product
    vectors[[3, 8]] = [0.0, 0.5]
    served = evaluate(model, train, test, k=3, family_of=family_of, item_vectors=vectors)
    # both served lists hold two parallel items and one orthogonal: distances 0, 1, 1
    assert served["ild@10"] == pytest.approx(2 / 3)
    assert "ild@10" not in evaluate(model, train, test, k=3, family_of=family_of)


def test_served_lists_skip_the_filtered_items_implicit_pads_with() -> None:
    train, test, family_of = two_users_with_editions()
    # user 0's list runs out of allowed items: implicit pads with a seen item (10), -FLT_MAX
    model = FixedLists({0: [1, 10], 1: [6, 5, 9, 8]}, filtered=frozenset({10}))
    served = evaluate(model, train, test, k=3, family_of=family_of)
    assert served["precision@10"] == pytest.approx((1 / 3 + 2 / 3) / 2)
    assert served["coverage"] == pytest.approx(4 / 20)  # 1, 6, 9, 8: not 10


def test_without_families_identity_codes_change_nothing(blocks: Interactions) -> None:
    holdout = split_holdout(blocks, 0.25, seed=0)
    model = fit_als(PARAMS.confidence_of(holdout.train), PARAMS)
    plain = evaluate(model, holdout.train, holdout.test, k=10)
    no_family = family_codes(blocks.items, {})
    assert no_family.tolist() == list(range(blocks.shape[1]))
    served = evaluate(model, holdout.train, holdout.test, k=10, family_of=no_family)
    assert {key: served[key] for key in METRIC_NAMES} == plain
    assert served["family_ndcg@10"] == pytest.approx(plain["ndcg@10"])
    assert served["distinct_families@10"] == 1.0


def test_family_codes_give_unmapped_items_a_code_of_their_own() -> None:
    items = Vocabulary(["a", "b", "c", "d", "e"])
    codes = family_codes(items, {"b": "~b", "d": "~b", "e": "a"})  # family "a" is not item a
    assert codes.dtype == np.int64
    assert codes[1] == codes[3]
    assert len(set(codes.tolist())) == 4 and sorted(set(codes.tolist())) == [0, 1, 2, 3]


def test_popularity_model_skips_seen_and_blocked_items() -> None:
    model = PopularityModel([5, 9, 1, 7, 3])  # order 1, 3, 0, 4, 2
    seen = sp.csr_matrix(np.array([[0, 1, 0, 0, 0], [0, 0, 0, 1, 1]], dtype=np.float32))
    ids, scores = model.recommend(np.array([0, 1]), seen, N=3, filter_items=np.array([0]))
    assert ids.tolist() == [[3, 4, 2], [1, 2, -1]]
    assert scores[0].tolist() == [7, 3, 1]


def test_als_learns_the_blocks_and_beats_popularity(blocks: Interactions) -> None:
    holdout = split_holdout(blocks, 0.25, seed=0)
    model = fit_als(PARAMS.confidence_of(holdout.train), PARAMS)
    users = np.arange(blocks.shape[0])
    ids, _ = model.recommend(users, holdout.train, N=3, filter_already_liked_items=True)
    for u, row in zip(users, ids, strict=True):
        assert {block_of(blocks, int(i), "item") for i in row} == {block_of(blocks, u, "user")}
        assert not set(row) & set(holdout.train[u].indices)  # train items never recommended
    als = evaluate(model, holdout.train, holdout.test, k=10)
    popular = evaluate(PopularityModel.fit(holdout.train), holdout.train, holdout.test, k=10)
    assert als["ndcg@10"] > popular["ndcg@10"] + 0.1
    assert als["recall@10"] > popular["recall@10"]


def test_negatives_are_never_recommended(blocks: Interactions) -> None:
    holdout = split_holdout(blocks, 0.25, seed=0)
    model = fit_als(PARAMS.confidence_of(holdout.train), PARAMS)
    favourite = PopularityModel.fit(holdout.train)
    ids, _ = model.recommend(np.array([0]), holdout.train[[0]], N=1)
    disliked = sp.csr_matrix(([1.0], ([0], [int(ids[0, 0])])), shape=blocks.shape)
    for candidate in (model, favourite):
        lists, _ = candidate.recommend(np.arange(blocks.shape[0]), holdout.train + disliked, N=5)
        assert int(ids[0, 0]) not in lists[0]
    with_neg = evaluate(model, holdout.train, holdout.test, 10, exclude=disliked)
    assert set(with_neg) == set(METRIC_NAMES)


# ------------------------------------------------------------------------------------------
# pipeline


def test_train_model_is_deterministic_and_refits_on_all_data(blocks: Interactions) -> None:
    first = train_model(blocks, PARAMS, holdout_fraction=0.25, seed=5)
    second = train_model(blocks, PARAMS, holdout_fraction=0.25, seed=5)
    assert first.metrics == second.metrics
    assert first.baseline_metrics == second.baseline_metrics
    np.testing.assert_array_equal(first.item_factors, second.item_factors)
    np.testing.assert_array_equal(first.user_factors, second.user_factors)
    assert set(first.metrics) == set(METRIC_NAMES)
    assert first.metrics["ndcg@10"] > first.baseline_metrics["ndcg@10"]
    # the returned model saw every interaction, not just the train part of the holdout
    assert first.user_items.nnz == blocks.weights.nnz
    assert first.user_factors.shape == (blocks.shape[0], PARAMS.factors)
    assert first.item_factors.shape == (blocks.shape[1], PARAMS.factors)
    assert first.n_test_users == blocks.shape[0]


def paired_families(interactions: Interactions) -> np.ndarray:
    """Items a00/a01, a02/a03, ... (and b..) as two editions of one course each."""
    return family_codes(
        interactions.items, {i: i[0] + str(int(i[1:]) // 2) for i in interactions.items.ids}
    )


def test_train_model_with_families_records_served_and_item_level_metrics(
    blocks: Interactions,
) -> None:
    plain = train_model(blocks, PARAMS, 0.25, seed=5)
    served = train_model(blocks, PARAMS, 0.25, seed=5, family_of=paired_families(blocks))
    new_keys = FAMILY_KEYS | {"item_ndcg@10", "ild@10"}
    for metrics in (served.metrics, served.baseline_metrics):
        assert set(metrics) == set(METRIC_NAMES) | new_keys
        assert metrics["distinct_families@10"] == 1.0
        assert 0.0 <= metrics["ild@10"] <= 2.0
    # item_ndcg@10 is today's figure on the same split; the final model does not change
    assert served.metrics["item_ndcg@10"] == plain.metrics["ndcg@10"]
    assert served.baseline_metrics["item_ndcg@10"] == plain.baseline_metrics["ndcg@10"]
    np.testing.assert_array_equal(served.item_factors, plain.item_factors)
    assert served.metrics["family_ndcg@10"] > served.baseline_metrics["family_ndcg@10"]


def test_recorded_comparison_with_a_model_trained_before_families_is_like_for_like(
    blocks: Interactions,
) -> None:
    """The first version trained with families replaces one whose ndcg@10 was measured on
    plain lists: the candidate's plain figure (item_ndcg@10) is the one compared."""
    before = train_model(blocks, PARAMS, 0.25, seed=0)
    active = ActiveModel(
        users=before.users,
        items=before.items,
        item_factors=before.item_factors,
        user_items=before.user_items,
        params=PARAMS,
        metrics=before.metrics,
    )
    after = train_model(
        blocks, PARAMS, 0.25, seed=0, active=active, family_of=paired_families(blocks)
    )
    assert after.comparison is not None and after.comparison.basis == "recorded"
    assert after.comparison.candidate["ndcg@10"] == after.metrics["item_ndcg@10"]
    assert after.comparison.active == before.metrics
    assert is_not_worse(after.comparison)


def test_the_active_model_is_compared_on_served_lists_too(blocks: Interactions) -> None:
    holdout = split_holdout(blocks, 0.25, seed=0)
    older = fit_als(PARAMS.confidence_of(holdout.train), PARAMS)
    active = ActiveModel(
        users=blocks.users,
        items=blocks.items,
        item_factors=np.asarray(older.item_factors),
        user_items=holdout.train,
        params=PARAMS,
        metrics={"ndcg@10": 1.0},
    )
    family_of = paired_families(blocks)
    trained = train_model(blocks, PARAMS, 0.25, seed=0, active=active, family_of=family_of)
    comparison = trained.comparison
    assert comparison is not None and comparison.basis == "unseen_pairs"
    for side in (comparison.candidate, comparison.active):
        assert set(side) == set(METRIC_NAMES) | FAMILY_KEYS | {"ild@10"}
    served = evaluate_active(active, blocks.items, holdout, family_of=family_of)
    assert comparison.active["ndcg@10"] == served["ndcg@10"]
    assert comparison.candidate["ndcg@10"] == trained.metrics["ndcg@10"]


def test_a_different_seed_changes_the_model() -> None:
    data = two_blocks(seed=1)
    a = train_model(data, PARAMS, seed=1)
    b = train_model(data, ALSParams(**{**PARAMS.to_dict(), "random_state": 7}), seed=1)
    assert not np.array_equal(a.item_factors, b.item_factors)


def test_retrain_on_the_same_data_compares_recorded_metrics(blocks: Interactions) -> None:
    """The active model trained on every holdout pair: scoring it there would let it see the
    answers, so each model's own out-of-sample metrics are compared instead."""
    first = train_model(blocks, PARAMS, 0.25, seed=0)
    active = ActiveModel(
        users=first.users,
        items=first.items,
        item_factors=first.item_factors,
        user_items=first.user_items,
        params=PARAMS,
        metrics=first.metrics,
    )
    again = train_model(blocks, PARAMS, 0.25, seed=0, active=active)
    assert again.comparison is not None
    assert again.comparison.basis == "recorded"
    assert again.comparison.active == first.metrics
    assert is_not_worse(again.comparison)  # an identical retrain may go live


def test_active_model_is_scored_on_pairs_it_never_saw(blocks: Interactions) -> None:
    holdout = split_holdout(blocks, 0.25, seed=0)
    # The active model was trained before the newest pairs arrived.
    older = fit_als(PARAMS.confidence_of(holdout.train), PARAMS)
    active = ActiveModel(
        users=blocks.users,
        items=blocks.items,
        item_factors=np.asarray(older.item_factors),
        user_items=holdout.train,
        params=PARAMS,
        metrics={"ndcg@10": 1.0},
    )
    trained = train_model(blocks, PARAMS, 0.25, seed=0, active=active)
    comparison = trained.comparison
    assert comparison is not None
    assert comparison.basis == "unseen_pairs"
    assert comparison.n_users == holdout.n_test_users
    assert comparison.candidate == trained.metrics  # every test pair is new to the active model
    assert comparison.active == evaluate_active(active, blocks.items, holdout)
    assert set(comparison.active) == set(METRIC_NAMES)


def test_an_active_model_never_recommends_items_it_does_not_know(blocks: Interactions) -> None:
    trained = train_model(blocks, PARAMS, 0.25, seed=0)
    keep = np.flatnonzero(blocks.items.ids != "b11")
    active = ActiveModel(
        users=blocks.users,
        items=Vocabulary(blocks.items.ids[keep]),
        item_factors=trained.item_factors[keep],
        user_items=sp.csr_matrix(blocks.shape, dtype=np.float32),
        params=PARAMS,
        metrics={},
    )
    metrics = evaluate_active(active, blocks.items, split_holdout(blocks, 0.25, seed=0))
    assert metrics["coverage"] <= (blocks.shape[1] - 1) / blocks.shape[1]


@pytest.mark.parametrize("scheme", ["log1p", "bm25"])
def test_the_final_fit_keeps_its_weights_and_fitted_confidence(
    blocks: Interactions, scheme: ConfidenceScheme
) -> None:
    trained = train_model(blocks, replace(PARAMS, confidence=scheme), 0.25, seed=0)
    assert trained.confidence.scheme == scheme
    assert (trained.user_weights != blocks.weights).nnz == 0
    assert (trained.confidence.transform(trained.user_weights) != trained.user_items).nnz == 0


def test_an_active_model_is_folded_in_with_its_own_fitted_confidence(
    blocks: Interactions, monkeypatch: pytest.MonkeyPatch
) -> None:
    """evaluate_active folds users in like serving does: `fold_in_users`, with the confidence
    fitted when the active model was trained (not one refitted on the evaluation split)."""
    params = replace(PARAMS, confidence="bm25")
    trained = train_model(blocks, params, 0.25, seed=0)
    active = ActiveModel(
        users=trained.users,
        items=trained.items,
        item_factors=trained.item_factors,
        user_items=trained.user_items,
        params=params,
        metrics={},
        confidence=trained.confidence,
    )
    used: list[Any] = []
    fold_in_users = training.fold_in_users

    def spy(*args: Any, **kwargs: Any) -> Any:
        used.append(args[1])
        return fold_in_users(*args, **kwargs)

    monkeypatch.setattr(training, "fold_in_users", spy)
    metrics = evaluate_active(active, blocks.items, split_holdout(blocks, 0.25, seed=0))
    assert used and all(confidence is trained.confidence for confidence in used)
    assert set(metrics) == set(METRIC_NAMES)


def test_activation_rule() -> None:
    def comparison(candidate: float, active: float) -> Comparison:
        return Comparison("recorded", {"ndcg@10": candidate}, {"ndcg@10": active}, 0)

    assert is_not_worse(None)
    assert is_not_worse(comparison(0.3, 0.3))
    assert is_not_worse(comparison(0.31, 0.3))
    assert not is_not_worse(comparison(0.2, 0.3))


def test_params_validate_and_round_trip() -> None:
    params = ALSParams(factors=16, confidence="bm25")
    assert ALSParams.from_dict({**params.to_dict(), "unknown": 1}) == params
    with pytest.raises(ValueError):
        ALSParams(num_threads=0)
    with pytest.raises(ValueError):
        ALSParams(confidence="cubic")  # type: ignore[arg-type]
