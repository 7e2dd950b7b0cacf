"""Course families: edition markers, grouping rules, and agreement with the demo catalog."""

from __future__ import annotations

import itertools
import re
import time
from collections import defaultdict

import pytest

from recsvc.demo_data import _EN_SUFFIXES, _STAGES, _ZH_SUFFIXES, generate
from recsvc.families import (
    DEFAULT_EDITION_PATTERNS,
    FamilyRules,
    detect_families,
    explicit_family,
    normalize_title,
)

ZH = "Python数据分析实战：pandas入门"
ZH_NORM = "python数据分析实战:pandas入门"
EN = "Machine Learning Basics"


@pytest.mark.parametrize(
    "suffix",
    [
        "（第6期）",
        "(第2期)",
        " 第3期",
        "第十二期",
        "（第二期）",
        "（第2版）",
        "第2版",
        "（2026新版）",
        "2026新版",
        " 2026版",
        "（2026年版）",
        "（新版）",
        "（2026）",
        "精讲",
        "训练营",
        "系统课",
        "｜零基础",
        "·项目实战",
        " - 实战营",
        "—训练营",
        "：精讲",
        "【训练营】",
        "（零基础）",
    ],
)
def test_normalize_strips_chinese_markers(suffix: str) -> None:
    assert normalize_title(ZH + suffix) == ZH_NORM


@pytest.mark.parametrize(
    "suffix",
    [
        " (2026 Edition)",
        " (2nd Edition)",
        ", Second Edition",
        ": Hands-on Projects",
        " - Hands-on",
        " Bootcamp",
        " BOOTCAMP",
        " Masterclass",
        " Master Class",
        " | Crash Course",
        " Vol. 3",
        " Volume 3",
        " vol 12",
        " (Updated for 2026)",
    ],
)
def test_normalize_strips_english_markers(suffix: str) -> None:
    assert normalize_title(EN + suffix) == "machine learning basics"


def test_normalize_strips_stacked_markers() -> None:
    assert normalize_title(ZH + "训练营（第3期）") == ZH_NORM
    assert normalize_title(ZH + "精讲｜零基础（2026新版）") == ZH_NORM
    assert normalize_title(EN + " Bootcamp (2026 Edition) Vol. 2") == "machine learning basics"


def test_normalize_keeps_bare_titles_and_content() -> None:
    assert normalize_title(ZH) == ZH_NORM
    assert normalize_title("  Machine   Learning\tBasics ") == "machine learning basics"
    # fullwidth forms are folded (NFKC)
    assert normalize_title("Ｐｙｔｈｏｎ　入门") == "python 入门"
    # part / level numbers are different courses, not editions
    assert normalize_title(EN + " Part 2") == "machine learning basics part 2"
    assert normalize_title("新概念英语第一册") == "新概念英语第一册"
    assert normalize_title("日语N2冲刺班") == "日语n2冲刺班"
    assert normalize_title("Excel 2019") == "excel 2019"


@pytest.mark.parametrize(
    "title", ["训练营", "精讲训练营", "Bootcamp", "（第2期）", "Masterclass Vol. 2", "·零基础"]
)
def test_normalize_never_empties_a_title(title: str) -> None:
    out = normalize_title(title)
    assert out
    assert out.strip("()|·- ")


def test_normalize_blank_title() -> None:
    assert normalize_title("") == ""
    assert normalize_title("   ") == ""


def test_default_patterns_compile_and_are_used() -> None:
    assert len(DEFAULT_EDITION_PATTERNS) >= 10
    assert FamilyRules().edition_patterns == DEFAULT_EDITION_PATTERNS


def test_rules_validation_and_custom_patterns() -> None:
    with pytest.raises(ValueError):
        FamilyRules(edition_patterns=("(unclosed",))
    with pytest.raises(ValueError):
        FamilyRules(edition_patterns=("x*",))  # matches the empty string
    for bad in (0.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError):
            FamilyRules(similarity=bad)
    FamilyRules(similarity=1.0)
    rules = FamilyRules(edition_patterns=(r"\bcohort\s*[a-z]",))
    assert normalize_title("Data Science Cohort B", rules) == "data science"
    # custom rules replace the defaults
    assert normalize_title("Data Science Bootcamp", rules) == "data science bootcamp"
    # fullwidth literals in a configured pattern match the NFKC-folded title
    rules = FamilyRules(edition_patterns=[r"（第\d+期）", "｜特惠"])
    assert normalize_title("SQL入门（第3期）", rules) == "sql入门"
    assert normalize_title("SQL入门｜特惠", rules) == "sql入门"
    assert normalize_title("SQL入门 (第3期)", rules) == "sql入门"
    # hashable, so rules can be cached and used as defaults
    assert hash(FamilyRules()) == hash(FamilyRules())


def test_explicit_family() -> None:
    assert explicit_family({"family": "  py-da  "}) == "py-da"
    assert explicit_family({"series": "ml"}) == "ml"
    assert explicit_family({"family": "a", "series": "b"}) == "a"
    assert explicit_family({"family": "  ", "series": "b"}) == "b"
    assert explicit_family({"family": 3}) is None
    assert explicit_family({}) is None


def _detect(rows: list[tuple[str, str, list[str], str | None]]) -> dict[str, str]:
    ids, titles, cats, explicit = zip(*rows, strict=True)
    return detect_families(list(ids), list(titles), list(cats), list(explicit))


def test_detect_groups_editions_and_keeps_courses_apart() -> None:
    da = ["数据分析", "pandas"]
    fam = _detect(
        [
            ("c10", ZH, da, None),
            ("c03", ZH + "（第6期）", da, None),
            ("c07", ZH + "训练营（第2期）", da, None),
            ("c12", ZH + "（2026新版）", da, None),
            ("c20", "Python入门", da, None),
            ("c21", "Java入门", da, None),
            ("c22", "机器学习入门", da, None),
            ("c23", "深度学习入门", da, None),
            ("c24", "新概念英语第一册精讲", da, None),
            ("c25", "新概念英语第二册精讲", da, None),
            ("c30", EN, ["ml", "intro"], None),
            ("c31", EN + " Bootcamp", ["intro", "ml", "ml"], None),  # same set, other order
            ("c32", EN + ": Hands-on Projects", ["ml", "intro"], None),
            ("c33", EN + " Part 2", ["ml", "intro"], None),
        ]
    )
    assert fam == {
        "c10": "~c03",
        "c03": "~c03",
        "c07": "~c03",
        "c12": "~c03",
        "c30": "~c30",
        "c31": "~c30",
        "c32": "~c30",
    }


def test_detect_near_duplicate_titles_by_similarity() -> None:
    cats = ["数据分析", "pandas"]
    fam = _detect(
        [
            ("a", "Python数据分析实战：pandas入门", cats, None),
            ("b", "Python数据分析实战——pandas 入门", cats, None),
            ("c", "Machine-Learning Basics", cats, None),
            ("d", "Machine Learning Basics", cats, None),
            ("e", "Java 8 入门", cats, None),
            ("f", "Java 18 入门", cats, None),
        ]
    )
    assert fam == {"a": "~a", "b": "~a", "c": "~c", "d": "~c"}
    # at similarity 1.0 only identical (compacted) titles merge
    strict = detect_families(
        ["a", "b"],
        ["Machine Learning Basics", "Machine Learning Basic"],
        [[], []],
        [None, None],
        FamilyRules(similarity=1.0),
    )
    loose = detect_families(
        ["a", "b"],
        ["Machine Learning Basics", "Machine Learning Basic"],
        [[], []],
        [None, None],
        FamilyRules(similarity=0.5),
    )
    assert strict == {}
    assert loose == {"a": "~a", "b": "~a"}


def test_same_title_in_different_categories_is_not_a_family() -> None:
    fam = _detect(
        [
            ("a", "Python入门", ["Python编程", "Python基础"], None),
            ("b", "Python入门（第2期）", ["数据分析", "pandas"], None),
            ("c", "Python入门训练营", ["Python编程"], None),
        ]
    )
    assert fam == {}


def test_explicit_family_wins_and_is_never_merged() -> None:
    cats = ["数据分析", "pandas"]
    fam = _detect(
        [
            ("a1", ZH, cats, None),
            ("a2", ZH + "（第2期）", cats, None),
            ("a3", ZH + "训练营", cats, "pandas-camp"),
            ("a4", "完全不同的课", cats, "pandas-camp"),
            ("a5", ZH + "精讲", cats, "solo"),
            ("a6", "Python入门", cats, None),
        ]
    )
    assert fam == {
        "a1": "~a1",
        "a2": "~a1",
        "a3": "pandas-camp",
        "a4": "pandas-camp",
        "a5": "solo",
    }


def test_detect_edge_cases() -> None:
    assert detect_families([], [], [], []) == {}
    # blank titles never form a family
    assert detect_families(["a", "b"], ["", " "], [["x"], ["x"]], [None, None]) == {}
    with pytest.raises(ValueError):
        detect_families(["a", "a"], ["x", "x"], [[], []], [None, None])
    with pytest.raises(ValueError):
        detect_families(["a"], ["x", "y"], [[]], [None])


def test_family_ids_are_stable_under_reordering() -> None:
    rows = [
        ("c5", ZH + "精讲", ["da"], None),
        ("c2", ZH, ["da"], None),
        ("c9", ZH + "（第3期）", ["da"], None),
        ("c1", "SQL入门", ["da"], None),
    ]
    fam = _detect(rows)
    assert fam == _detect(rows[::-1])
    assert set(fam.values()) == {"~c2"}


# --- the bundled demo catalog: detected families vs the generator's ground truth -------------

_RUN = re.compile(r"(?:（第\d+期）| Vol\. \d+)$")


def _demo_truth(items: list[dict]) -> dict[str, tuple[str, str]]:
    """item_id -> (stage, base title), rebuilt from the generator's stage title lists."""
    bases: dict[str, set[str]] = defaultdict(set)
    for st in _STAGES:
        bases[st.name] |= {*st.titles_zh, *st.titles_en}
    suffixes = {*_ZH_SUFFIXES, *_EN_SUFFIXES}
    truth = {}
    for it in items:
        stage = it["categories"][1]
        title = _RUN.sub("", it["title"])
        found = [b for b in bases[stage] if title.startswith(b) and title[len(b) :] in suffixes]
        assert len(found) == 1, (it["title"], found)
        truth[it["item_id"]] = (stage, found[0])
    return truth


def _same_family_pairs(labels: dict[str, object]) -> set[frozenset[str]]:
    groups: dict[object, list[str]] = defaultdict(list)
    for item_id, label in labels.items():
        groups[label].append(item_id)
    return {frozenset(p) for m in groups.values() for p in itertools.combinations(m, 2)}


def test_demo_catalog_families_match_ground_truth() -> None:
    items = generate(n_users=50, n_items=2000).items
    start = time.perf_counter()
    fam = detect_families(
        [it["item_id"] for it in items],
        [it["title"] for it in items],
        [it["categories"] for it in items],
        [explicit_family(it["attributes"]) for it in items],
    )
    elapsed = time.perf_counter() - start
    truth = _same_family_pairs(_demo_truth(items))
    found = _same_family_pairs(fam)
    precision = len(truth & found) / len(found)
    recall = len(truth & found) / len(truth)
    assert len(truth) > 1000  # the demo really has editions to group
    assert precision >= 0.98, precision
    assert recall >= 0.95, recall
    assert elapsed < 1.0, elapsed
