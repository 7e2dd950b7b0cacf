"""scorer: strategies, fold-in, filters, query re-ranking, explanations, batching.

The fixture has two blocks whose right answers are known: users a0..a7 enrolled in three of
the four "IT" courses A0..A3 (a_k skips A_{k%4}), users b0..b7 likewise in the language courses
B0..B3. Enrolling is a consumed type, so a_k's only unconsumed in-block course is A_{k%4}.
Three more users enrolled in B2 (the most popular item); a2 disliked A2; N1 is a new course
only the text index knows.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

from recsvc import artifact
from recsvc.artifact import ModelArtifact
from recsvc.features import (
    ConfidenceScheme,
    EventColumns,
    FeatureConfig,
    TextIndex,
    build_interactions,
    event_weights,
)
from recsvc.scorer import (
    CatalogView,
    RecentEvent,
    RecommendRequest,
    RecommendResult,
    Scorer,
    UnknownItem,
)
from recsvc.training import ALSParams, als_from_factors, fold_in_users, train_model

TITLES = {
    "A0": "Python数据分析实战",
    "A1": "Python编程入门",
    "A2": "机器学习基础",
    "A3": "数据可视化与分析",
    "B0": "英语口语速成",
    "B1": "雅思写作",
    "B2": "商务英语",
    "B3": "日语入门",
    "N1": "Python数据分析进阶",
}
A_ITEMS = {"A0", "A1", "A2", "A3", "N1"}
B_ITEMS = {"B0", "B1", "B2", "B3"}
CATALOG = CatalogView(
    titles=TITLES,
    categories={i: frozenset({"it" if i in A_ITEMS else "language"}) for i in TITLES},
)
LATER = 10_000.0  # after every training event


@pytest.fixture(scope="module")
def scorer() -> Scorer:
    users: list[str] = []
    items: list[str] = []
    types: list[str] = []
    for block in "ab":
        for k in range(8):
            for j in range(4):
                if j != k % 4:
                    users.append(f"{block}{k}")
                    items.append(f"{block.upper()}{j}")
                    types.append("enroll")
    for p in range(3):
        users.append(f"p{p}")
        items.append("B2")
        types.append("enroll")
    users.append("a2")
    items.append("A2")
    types.append("dislike")
    events = EventColumns.from_lists(users, items, types, [float(t) for t in range(len(users))])
    config = FeatureConfig()
    interactions = build_interactions(events, config)
    params = ALSParams(factors=8, regularization=1.0, alpha=10.0, iterations=15)
    trained = train_model(interactions, params, 0.2, seed=0)
    text_index = TextIndex().fit(list(TITLES), list(TITLES.values()))
    artifact = ModelArtifact.from_training(
        "20261128T101500-3f2a", trained, interactions, text_index
    )
    return Scorer(artifact, config, frozenset({"enroll", "purchase", "complete"}))


def ask(scorer: Scorer, catalog: CatalogView = CATALOG, **fields: Any) -> RecommendResult:
    request = RecommendRequest(**fields)
    (result,) = scorer.recommend([request], catalog)
    return result


def ids(result: RecommendResult) -> list[str]:
    return [r.item_id for r in result.items]


def event(item_id: str, type_: str, at: float = LATER, value: float | None = None) -> RecentEvent:
    return RecentEvent(item_id=item_id, type=type_, value=value, occurred_at=at)


# --------------------------------------------------------------------------------------------
# Strategies
# --------------------------------------------------------------------------------------------


def test_known_user_gets_als_with_the_unconsumed_in_block_item_first(scorer: Scorer) -> None:
    for k in (1, 3, 5):
        result = ask(scorer, user_id=f"a{k}", n=4)
        assert result.strategy == "als" and result.user_id == f"a{k}"
        expected = f"A{k % 4}"
        assert ids(result)[0] == expected
        assert A_ITEMS & set(ids(result)) == {expected}  # the others are consumed
        assert result.items[0].title == TITLES[expected] and result.items[0].reasons is None
        scores = [r.score for r in result.items]
        assert scores == sorted(scores, reverse=True)


def test_fold_in_changes_the_list_and_excludes_newly_consumed_items(scorer: Scorer) -> None:
    before = ask(scorer, user_id="a1", n=5)
    recent = tuple(
        event(i, t, LATER + s) for s, (i, t) in enumerate(
            (i, t) for i in ("B0", "B1", "B2") for t in ("purchase", "complete")
        )
    )  # fmt: skip
    after = ask(scorer, user_id="a1", recent=recent, n=5)
    assert after.strategy == "als_foldin"
    assert not {"B0", "B1", "B2"} & set(ids(after))
    # The blocks are independent in factor space: A1 stays, B3 rises from ~0 to a near tie.
    assert ids(before)[0] == "A1" and ids(after) == ["A1", "B3"]
    b3_before = next(r.score for r in before.items if r.item_id == "B3")
    assert after.items[1].score > 0.2 > 0.01 > b3_before


def test_a_new_enrollment_is_never_recommended_back(scorer: Scorer) -> None:
    result = ask(scorer, user_id="a1", recent=(event("A1", "enroll"),), n=8)
    assert result.strategy == "als_foldin" and "A1" not in ids(result)


def test_brand_new_user_with_two_events_gets_als_foldin(scorer: Scorer) -> None:
    recent = (event("B0", "enroll"), event("B1", "view"))
    result = ask(scorer, user_id="stranger", recent=recent, n=3)
    assert result.strategy == "als_foldin"
    assert "B0" not in ids(result) and set(ids(result)) <= B_ITEMS


def test_session_items_fold_in_an_anonymous_learner(scorer: Scorer) -> None:
    result = ask(scorer, session_items=("A0", "A1"), n=3)
    assert result.strategy == "als_foldin" and result.user_id is None
    assert set(ids(result)) <= A_ITEMS


def test_unknown_user_without_context_gets_popular(scorer: Scorer) -> None:
    result = ask(scorer, user_id="nobody", n=3)
    assert result.strategy == "popular" and ids(result)[0] == "B2"
    assert result.items[0].score == 9.0  # 6 block-B users + 3 fans
    assert ids(scorer.popular(3, None, CATALOG)) == ids(result)
    assert scorer.popular(3, None, CATALOG).strategy == "popular"


def test_events_only_on_items_unknown_to_the_model_leave_popular(scorer: Scorer) -> None:
    result = ask(scorer, user_id="nobody", recent=(event("Z9", "view"),), n=2)
    assert result.strategy == "popular" and len(result.items) == 2


def test_chinese_query_matches_and_reaches_items_the_model_does_not_know(scorer: Scorer) -> None:
    result = ask(scorer, query="想学Python数据分析", n=3)
    assert result.strategy == "query"
    assert set(ids(result)[:2]) == {"A0", "N1"}  # "Python数据分析..." titles
    assert 0 < result.items[-1].score <= result.items[0].score <= 1


def test_query_is_reranked_by_taste(scorer: Scorer) -> None:
    # "入门" matches A1 (IT) and B3 (language); neither user consumed the one of their block.
    it_learner = ask(scorer, user_id="a1", query="入门", n=2)
    language_learner = ask(scorer, user_id="b3", query="入门", n=2)
    assert it_learner.strategy == language_learner.strategy == "query"
    assert ids(it_learner) == ["A1", "B3"]
    assert ids(language_learner) == ["B3", "A1"]


def test_query_with_folded_in_taste(scorer: Scorer) -> None:
    result = ask(scorer, session_items=("B0", "B1"), query="入门", n=2)
    assert result.strategy == "query" and ids(result) == ["B3", "A1"]


def test_short_query_results_are_filled_with_popular_items(scorer: Scorer) -> None:
    result = ask(scorer, query="日语", n=3)
    assert result.strategy == "query+popular"
    assert ids(result)[0] == "B3" and ids(result)[1] == "B2" and len(result.items) == 3


def test_a_query_matching_nothing_is_all_popular_fill(scorer: Scorer) -> None:
    result = ask(scorer, user_id="a1", query="量子物理", n=2)
    assert result.strategy == "query+popular" and len(result.items) == 2


# --------------------------------------------------------------------------------------------
# Filters, in every strategy
# --------------------------------------------------------------------------------------------

STRATEGIES: dict[str, dict[str, Any]] = {
    "als": {"user_id": "a1"},
    "als_foldin": {"user_id": "a1", "recent": (event("B0", "view"),)},
    "query": {"user_id": "a1", "query": "Python 数据 入门 英语 日语 雅思 机器学习 可视化"},
    "popular": {"user_id": "nobody"},
}


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_filters_hold_in_every_strategy(scorer: Scorer, strategy: str) -> None:
    fields = STRATEGIES[strategy]
    everything = ask(scorer, n=20, **fields)
    assert everything.strategy.split("+")[0] == strategy
    assert not {"A0", "A2", "A3"} & set(ids(everything)) or strategy == "popular"
    victim = ids(everything)[0]

    excluded = ask(scorer, n=20, exclude=frozenset({victim}), **fields)
    assert victim not in ids(excluded) and excluded.strategy.startswith(strategy)

    gone = CatalogView(CATALOG.titles, CATALOG.categories, frozenset({victim}))
    assert victim not in ids(ask(scorer, gone, n=20, **fields))

    for category, members in (("it", A_ITEMS), ("language", B_ITEMS)):
        narrowed = ask(scorer, n=20, categories=frozenset({category}), **fields)
        assert narrowed.items and set(ids(narrowed)) <= members

    recent = (*fields.get("recent", ()), event(victim, "dislike", LATER + 1))
    disliked = ask(scorer, n=20, **{**fields, "recent": recent})
    assert victim not in ids(disliked)


def test_a_dislike_from_training_is_honoured(scorer: Scorer) -> None:
    # a2 skipped A2 (its natural recommendation) and disliked it.
    assert "A2" not in ids(ask(scorer, user_id="a2", n=20))
    assert "A2" not in ids(ask(scorer, user_id="a2", session_items=("A0",), n=20))
    assert "A2" not in ids(ask(scorer, user_id="a2", query="机器学习", n=20))


def test_a_newer_positive_event_lifts_a_dislike_like_training_does(scorer: Scorer) -> None:
    result = ask(scorer, user_id="a2", recent=(event("A2", "view"),), n=20)
    assert "A2" in ids(result)
    later_dislike = (event("A2", "view"), event("A2", "dislike", LATER + 1))
    assert "A2" not in ids(ask(scorer, user_id="a2", recent=later_dislike, n=20))


def test_session_items_never_lift_a_dislike(scorer: Scorer) -> None:
    recent = (event("B1", "dislike"),)
    result = ask(scorer, user_id="stranger", recent=recent, session_items=("B1", "B0"), n=20)
    assert result.strategy == "als_foldin" and "B1" not in ids(result)


def test_similar_uses_item_factors_and_honours_filters(scorer: Scorer) -> None:
    result = scorer.similar("A0", 3, None, CATALOG)
    assert result.strategy == "als" and set(ids(result)) == {"A1", "A2", "A3"}
    assert ids(scorer.similar("A0", 3, frozenset({"language"}), CATALOG)) != []
    assert set(ids(scorer.similar("A0", 8, frozenset({"language"}), CATALOG))) == B_ITEMS
    gone = CatalogView(CATALOG.titles, CATALOG.categories, frozenset({"A1"}))
    assert "A1" not in ids(scorer.similar("A0", 8, None, gone))
    assert "A2" not in ids(scorer.similar("A0", 8, None, CATALOG, exclude=frozenset({"A2"})))


def test_similar_falls_back_to_text_for_items_the_model_does_not_know(scorer: Scorer) -> None:
    result = scorer.similar("N1", 2, None, CATALOG)
    assert result.strategy == "content" and ids(result)[0] == "A0"
    assert "N1" not in ids(result)
    with pytest.raises(UnknownItem, match="nothing-here"):
        scorer.similar("nothing-here", 3, None, CATALOG)


# --------------------------------------------------------------------------------------------
# Explanations, batching, empty scorer
# --------------------------------------------------------------------------------------------


def test_explain_reasons_are_the_users_own_items_with_titles(scorer: Scorer) -> None:
    result = ask(scorer, user_id="a1", n=2, explain=True)
    reasons = result.items[0].reasons
    assert reasons is not None and 0 < len(reasons) <= 3
    assert {r.item_id for r in reasons} <= {"A0", "A2", "A3"}  # a1's enrollments
    assert all(r.title == TITLES[r.item_id] and r.weight > 0 for r in reasons)
    weights = [r.weight for r in reasons]
    assert weights == sorted(weights, reverse=True)


def test_explain_uses_the_folded_in_row(scorer: Scorer) -> None:
    recent = (event("B0", "enroll"), event("B1", "view"))
    result = ask(scorer, user_id="stranger", recent=recent, n=2, explain=True)
    for item in result.items:
        assert item.reasons is not None
        assert item.reasons and {r.item_id for r in item.reasons} <= {"B0", "B1"}
    popular = ask(scorer, user_id="nobody", n=2, explain=True)
    assert all(item.reasons == [] for item in popular.items)


def test_a_batch_gives_the_same_answers_as_one_request_at_a_time(scorer: Scorer) -> None:
    requests = [
        RecommendRequest(user_id=f"{b}{k}", n=5)
        for b in "ab" for k in range(8)
    ] + [
        RecommendRequest(user_id="a1", recent=(event("B0", "purchase"),), n=4),
        RecommendRequest(session_items=("B1",), n=3, exclude=frozenset({"B0"})),
        RecommendRequest(user_id="b2", query="入门", n=2, explain=True),
        RecommendRequest(user_id="nobody", n=3, categories=frozenset({"it"})),
        RecommendRequest(user_id="a3", n=4, categories=frozenset({"language"})),
    ]  # fmt: skip
    together = scorer.recommend(requests, CATALOG)
    alone = [scorer.recommend([r], CATALOG)[0] for r in requests]
    assert len(together) == len(requests)
    for joint, single in zip(together, alone, strict=True):
        # A stacked product may round differently from a single one (~1e-8 here): items whose
        # scores tie within that may swap, so compare scores by id.
        assert joint.strategy == single.strategy and ids(joint)[0] == ids(single)[0]
        alone_score = {r.item_id: r.score for r in single.items}
        assert set(ids(joint)) == set(alone_score)
        np.testing.assert_allclose(
            [r.score for r in joint.items], [alone_score[i] for i in ids(joint)], atol=1e-6
        )
        alone_reasons = {r.item_id: r.reasons for r in single.items}
        assert all(r.reasons == alone_reasons[r.item_id] for r in joint.items)


def test_a_helper_thread_changes_no_answer(scorer: Scorer) -> None:
    """Small batches are scored in two halves in parallel when a helper thread is given."""
    batches = [
        [RecommendRequest(user_id="a1", n=5)],
        [RecommendRequest(user_id="b3", n=9), RecommendRequest(session_items=("A0",), n=3)],
    ]
    with ThreadPoolExecutor(max_workers=1) as helper:
        for batch in batches:
            assert scorer.recommend(batch, CATALOG, helper) == scorer.recommend(batch, CATALOG)


def test_an_empty_scorer_answers_with_empty_popular_lists() -> None:
    empty = Scorer.empty()
    assert empty.version is None
    (result,) = empty.recommend(
        [RecommendRequest(user_id="u", session_items=("x",), query="Python")], CatalogView()
    )
    assert result.strategy == "popular" and result.items == []
    assert empty.popular(5, None, CatalogView()).items == []
    with pytest.raises(UnknownItem):
        empty.similar("x", 5, None, CatalogView())


def test_the_scorer_knows_its_version(scorer: Scorer) -> None:
    assert scorer.version == "20261128T101500-3f2a"


# --------------------------------------------------------------------------------------------
# Fold-in on the training scale, for each confidence scheme
# --------------------------------------------------------------------------------------------

NOTHING_NEW = (event("not-in-the-model", "view"),)  # forces fold-in, adds no model weight


def varied_events(extra: tuple[tuple[str, str, str], ...] = ()) -> EventColumns:
    """200 users in two taste groups over 30 items, with repeated views, purchases, search
    clicks and 1-5 ratings per pair: pair weights spread from 1 to the cap (20), so bm25 and
    log1p confidences differ. `extra` adds (user, item, type) events after all the others."""
    rng = np.random.default_rng(7)
    rows: list[tuple[str, str, str, float | None]] = []
    for u in range(200):
        group = u % 2
        for j in rng.choice(15, size=8, replace=False):
            for _ in range(int(rng.integers(1, 5))):
                type_ = str(rng.choice(["view", "purchase", "rate", "search_click"]))
                value = float(rng.integers(1, 6)) if type_ == "rate" else None
                rows.append((f"u{u:03d}", f"i{group * 15 + j:02d}", type_, value))
    rows.extend((user, item, type_, None) for user, item, type_ in extra)
    return EventColumns.from_lists(
        [r[0] for r in rows],
        [r[1] for r in rows],
        [r[2] for r in rows],
        [float(t) for t in range(len(rows))],
        [r[3] for r in rows],
    )


def scheme_params(scheme: ConfidenceScheme) -> ALSParams:
    return ALSParams(factors=8, regularization=1.0, alpha=2.0, iterations=30, confidence=scheme)


@pytest.fixture(scope="module", params=["log1p", "bm25"])
def by_scheme(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Scorer, ModelArtifact]:
    """A model per confidence scheme, through save and load like a served one."""
    interactions = build_interactions(varied_events(), FeatureConfig())
    trained = train_model(interactions, scheme_params(request.param), 0.2, seed=0)
    built = ModelArtifact.from_training("20261128T101500-0001", trained, interactions)
    loaded = artifact.load(artifact.save(built, tmp_path_factory.mktemp("models")))
    return Scorer(loaded, FeatureConfig(), frozenset()), loaded


def fold_in(scorer: Scorer, requests: list[RecommendRequest]) -> list[Any]:
    """The fold-in step of `recommend`, to look at the vectors and confidence rows it made."""
    index = scorer._catalog_index(CatalogView())
    plans = [scorer._plan(request, index) for request in requests]
    scorer._fold_in(plans)
    return plans


def test_fold_in_without_new_weight_gives_back_the_stored_users(
    by_scheme: tuple[Scorer, ModelArtifact],
) -> None:
    """Each known user folded in from their stored row alone gets the confidences the model was
    trained on and (nearly) their trained vector, whatever the confidence scheme."""
    scorer, model = by_scheme
    users = model.users.ids.tolist()
    result = ask(scorer, CatalogView(), user_id=users[0], recent=NOTHING_NEW)
    assert result.strategy == "als_foldin"
    plans = fold_in(scorer, [RecommendRequest(user_id=u, recent=NOTHING_NEW) for u in users])
    for row, plan in enumerate(plans):
        columns, confidences = plan.folded_row
        stored = model.user_items[row]
        np.testing.assert_array_equal(columns, stored.indices)
        np.testing.assert_allclose(confidences, stored.data, rtol=1e-6)
    folded = np.stack([plan.vector for plan in plans])
    trained = model.user_factors
    cosine = (folded * trained).sum(axis=1) / (
        np.linalg.norm(folded, axis=1) * np.linalg.norm(trained, axis=1)
    )
    assert cosine.min() >= 0.999


def test_a_new_event_lands_on_the_training_scale(
    by_scheme: tuple[Scorer, ModelArtifact],
) -> None:
    """A purchase folded in gets (about) the confidence that training on it would give: the
    same weight rule, the same fitted transform. Not exact for bm25: one event moves the
    item's length norm a little when training refits it."""
    scorer, model = by_scheme
    user = "u000"
    row = model.users.index_of(user)
    assert row is not None
    unseen = np.setdiff1d(np.arange(model.n_items), model.user_items[row].indices)
    item = model.items.id_of(int(unseen[0]))
    (plan,) = fold_in(scorer, [RecommendRequest(user_id=user, recent=(event(item, "purchase"),))])
    retrained = build_interactions(varied_events(((user, item, "purchase"),)), FeatureConfig())
    assert retrained.items == model.items and retrained.users == model.users
    expected = scheme_params(model.params.confidence).confidence_of(retrained.weights)[row]
    columns, confidences = plan.folded_row
    np.testing.assert_array_equal(columns, expected.indices)
    np.testing.assert_allclose(confidences, expected.data, rtol=0.03)


def test_serving_folds_in_through_the_training_path(
    by_scheme: tuple[Scorer, ModelArtifact],
) -> None:
    """`training.fold_in_users` with the stored weights and fitted confidence is what the
    scorer computes (evaluate_active calls the same function)."""
    scorer, model = by_scheme
    users = model.users.ids.tolist()[:5]
    plans = fold_in(scorer, [RecommendRequest(user_id=u, recent=NOTHING_NEW) for u in users])
    weights, confidence = model.fold_in_basis()
    als = als_from_factors(model.user_factors, model.item_factors, model.params)
    vectors, rows = fold_in_users(als, confidence, weights[: len(users)])
    np.testing.assert_allclose(np.stack([p.vector for p in plans]), vectors, rtol=1e-5, atol=1e-6)
    assert (rows != model.user_items[: len(users)]).nnz == 0


def test_recent_events_are_weighted_by_the_training_rule(scorer: Scorer) -> None:
    """The scorer's per-item weights and polarities equal `features.event_weights` summed per
    item: ratings times their value (none counts as 1), dislikes and unknown types."""
    config = FeatureConfig(rating_negative_below=2.0)
    strict = Scorer.empty(config)
    recent = (
        event("x", "rate", 1.0, 4.0),
        event("x", "purchase", 2.0),
        event("y", "rate", 1.0, None),
        event("z", "rate", 3.0, 1.0),  # below the threshold: negative
        event("w", "dislike", 4.0),
        event("w", "view", 1.0),  # older than the dislike
        event("v", "no-such-type", 1.0),
    )
    signals = strict._recent_signals(RecommendRequest(recent=recent))
    codes = np.array([config.known_types.index(e.type) if e.type in config.known_types else -1
                      for e in recent])  # fmt: skip
    values = np.array([np.nan if e.value is None else e.value for e in recent])
    weights, negative = event_weights(codes, values, config)
    assert weights.tolist() == [4.0, 5.0, 1.0, 1.0, 0.0, 1.0, 0.0]
    assert negative.tolist() == [False, False, False, True, True, False, False]
    assert signals.weights == {"x": 9.0, "y": 1.0, "w": 1.0}
    assert signals.negative == {"z", "w"} and signals.lifted == {"x", "y"}
