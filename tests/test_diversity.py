"""Course families in every strategy: one edition per family (or `max_per_family`), the other
editions named, a consumed edition consuming its family, `similar` without the seed's family.

Uses test_scorer's two-block model; here A0 ("Python数据分析实战") and N1 ("Python数据分析进阶")
are made editions of one family, and so are B0 and B1.
"""

from __future__ import annotations

from dataclasses import replace

from recsvc.scorer import CatalogView, RecommendResult, Scorer
from test_scorer import CATALOG, ask, event, ids, scorer  # noqa: F401  (fixture)

FAMILIES = {"A0": "py", "N1": "py", "B0": "en", "B1": "en"}
WITH_FAMILIES = replace(
    CATALOG,
    families=FAMILIES,
    family_members={"py": ("A0", "N1"), "en": ("B0", "B1")},
)


def families_in(result: RecommendResult) -> list[str]:
    return [FAMILIES.get(i, i) for i in ids(result)]


def one_per_family(result: RecommendResult) -> bool:
    listed = families_in(result)
    return len(listed) == len(set(listed))


def test_every_strategy_lists_one_edition_per_family(scorer: Scorer) -> None:  # noqa: F811
    results = {
        "als": ask(scorer, WITH_FAMILIES, user_id="b0", n=8),
        "als_foldin": ask(scorer, WITH_FAMILIES, user_id="new", recent=(event("B2", "view"),), n=8),
        "query": ask(scorer, WITH_FAMILIES, query="Python数据分析", n=5),
        "popular": ask(scorer, WITH_FAMILIES, n=9),
        "content": scorer.similar("N1", 8, None, WITH_FAMILIES),
        "similar": scorer.similar("A1", 8, None, WITH_FAMILIES),
        "popular list": scorer.popular(9, None, WITH_FAMILIES),
    }
    for name, result in results.items():
        assert one_per_family(result), (name, ids(result))
    # without families the same requests list both editions somewhere
    assert not one_per_family(ask(scorer, CATALOG, n=9))
    # the universe has 9 items in 7 families: a list of 9 holds all 7, the fill included
    assert len(results["popular"].items) == 7


def test_the_best_edition_represents_its_family_and_names_the_others(
    scorer: Scorer,  # noqa: F811
) -> None:
    plain = ask(scorer, CATALOG, query="Python数据分析", n=5)
    first_py = next(i for i in ids(plain) if i in ("A0", "N1"))
    result = ask(scorer, WITH_FAMILIES, query="Python数据分析", n=5)
    assert first_py in ids(result)
    other = ({"A0", "N1"} - {first_py}).pop()
    assert other not in ids(result)
    item = next(r for r in result.items if r.item_id == first_py)
    assert item.editions == [(other, CATALOG.titles[other])]
    both = ask(scorer, WITH_FAMILIES, query="Python数据分析", n=5, max_per_family=2)
    assert {"A0", "N1"} <= set(ids(both))
    assert all(not r.editions for r in both.items if r.item_id in ("A0", "N1"))


def test_an_unavailable_edition_gives_way_to_an_available_one(
    scorer: Scorer,  # noqa: F811
) -> None:
    result = ask(scorer, WITH_FAMILIES, query="Python数据分析", n=5)
    best = next(i for i in ids(result) if i in ("A0", "N1"))
    other = ({"A0", "N1"} - {best}).pop()
    without_best = replace(WITH_FAMILIES, unrecommendable=frozenset({best}))
    result = ask(scorer, without_best, query="Python数据分析", n=5)
    assert other in ids(result)
    assert next(r for r in result.items if r.item_id == other).editions == []


def test_a_consumed_edition_consumes_its_family(scorer: Scorer) -> None:  # noqa: F811
    # b1 enrolled in B0, B2 and B3 (not B1): B1 is an edition of B0, so it is consumed too
    assert "B1" in ids(ask(scorer, CATALOG, user_id="b1", n=9))
    assert "B1" not in ids(ask(scorer, WITH_FAMILIES, user_id="b1", n=9))
    # and the same for an enrolment newer than the model
    fresh = ask(scorer, WITH_FAMILIES, user_id="new", recent=(event("N1", "enroll"),), n=9)
    assert not {"A0", "N1"} & set(ids(fresh))


def test_similar_leaves_out_the_seeds_family(scorer: Scorer) -> None:  # noqa: F811
    assert "N1" not in ids(scorer.similar("A0", 8, None, WITH_FAMILIES))
    assert "A0" not in ids(scorer.similar("N1", 8, None, WITH_FAMILIES))
    assert "B1" not in ids(scorer.similar("B0", 8, None, WITH_FAMILIES))
    assert "B1" in ids(scorer.similar("B0", 8, None, CATALOG))


def test_an_empty_family_view_changes_nothing(scorer: Scorer) -> None:  # noqa: F811
    for fields in ({"user_id": "a1", "n": 5}, {"query": "Python", "n": 5}, {"n": 9}):
        before = ask(scorer, CATALOG, **fields)
        after = ask(scorer, CatalogView(**{**CATALOG.__dict__}), **fields)
        assert ids(before) == ids(after)
