"""Memory-mapped artifacts serve exactly what the in-memory ones served.

tests/data/format1-model/ is a small model (a slice of the demo data, with a text index and
segments) saved by recsvc before artifacts were memory-mapped (format 1: one .npz per group,
commit e7af5bf), and expected-lists.json holds what that code recommended from it: per
learner (als), with recent events (als_foldin), for queries, similar courses and popular ones,
with families, diversity and explanations. The test serves the same model read from format 1
and after saving it again as format 2 (memory-mapped), and asks for the same lists.

Regenerate only on purpose (it rewrites the expected lists): python tests/test_artifact_format.py
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from recsvc import artifact
from recsvc.demo_data import generate
from recsvc.families import detect_families
from recsvc.features import EventColumns, FeatureConfig, TextIndex, build_interactions
from recsvc.scorer import CatalogView, RecentEvent, RecommendRequest, RecommendResult, Scorer
from recsvc.segments import segment_learners
from recsvc.training import ALSParams, train_model

DATA = Path(__file__).parent / "data"
FIXTURE = DATA / "format1-model"
EXPECTED = DATA / "expected-lists.json"
CONSUMED = frozenset({"enroll", "purchase", "complete"})
LATER = 1.0e10  # after every event of the slice


def demo_slice() -> tuple[EventColumns, CatalogView, list[dict[str, Any]]]:
    data = generate(n_users=300, n_items=80)
    events = EventColumns.from_lists(
        [e["user_id"] for e in data.events],
        [e["item_id"] for e in data.events],
        [e["type"] for e in data.events],
        [float(k) for k in range(len(data.events))],
        [e["value"] for e in data.events],
    )
    ids = [i["item_id"] for i in data.items]
    families = detect_families(
        ids,
        [i["title"] for i in data.items],
        [i["categories"] for i in data.items],
        [None] * len(ids),
    )
    members: dict[str, list[str]] = {}
    for item_id, family in families.items():
        members.setdefault(family, []).append(item_id)
    catalog = CatalogView(
        titles={i["item_id"]: i["title"] for i in data.items},
        categories={i["item_id"]: frozenset(i["categories"]) for i in data.items},
        families=families,
        family_members={f: tuple(sorted(m)) for f, m in members.items()},
    )
    return events, catalog, data.items


def requests(users: list[str], items: list[str]) -> list[RecommendRequest]:
    asked = [RecommendRequest(user_id=u, n=8) for u in users[::7]]
    asked += [RecommendRequest(user_id=u, n=5, explain=True, diversity=0.3) for u in users[3::29]]
    for k, user in enumerate(users[5::31]):
        enrolled = RecentEvent(items[k % len(items)], "enroll", value=None, occurred_at=LATER)
        viewed = RecentEvent(items[3 * k % len(items)], "view", value=None, occurred_at=LATER + 1)
        asked.append(RecommendRequest(user_id=user, n=6, recent=(enrolled, viewed)))
    asked += [RecommendRequest(session_items=(items[2], items[9]), n=5)]
    asked += [
        RecommendRequest(user_id=users[1], query=q, n=5)
        for q in ("想学Python数据分析", "机器学习入门", "考研数学", "英语")
    ]
    asked += [RecommendRequest(user_id="someone-new", n=4, max_per_family=2)]
    return asked


def as_json(result: RecommendResult) -> dict[str, Any]:
    return {
        "strategy": result.strategy,
        "items": [
            [
                r.item_id,
                round(r.score, 4),
                [[reason.item_id, round(reason.weight, 4)] for reason in r.reasons or []],
                [list(edition) for edition in r.editions or []],
            ]
            for r in result.items
        ],
    }  # fmt: skip


def lists(scorer: Scorer, catalog: CatalogView) -> list[dict[str, Any]]:
    users = scorer.users.ids_of(range(len(scorer.users)))
    items = scorer.items.ids_of(range(len(scorer.items)))
    answered = [as_json(r) for r in scorer.recommend(requests(users, items), catalog)]
    for item_id in items[::9]:
        answered.append(as_json(scorer.similar(item_id, 5, None, catalog)))
    answered.append(as_json(scorer.popular(6, None, catalog)))
    return answered


def write_fixture() -> None:
    events, catalog, items = demo_slice()
    interactions = build_interactions(events, FeatureConfig())
    trained = train_model(interactions, ALSParams(factors=16, iterations=10), 0.2, seed=3)
    text_index = TextIndex().fit(
        [i["item_id"] for i in items], [f"{i['title']} {i['description']}" for i in items]
    )
    segments = segment_learners(
        trained.user_factors,
        trained.user_weights,
        trained.items.ids.tolist(),
        {i["item_id"]: i["categories"] for i in items},
        {i["item_id"]: i["tags"] for i in items},
        k=4,
    )
    model = artifact.ModelArtifact.from_training(
        "20261202T000000-f1f1", trained, interactions, text_index, segments=segments
    )
    shutil.rmtree(FIXTURE, ignore_errors=True)
    FIXTURE.parent.mkdir(parents=True, exist_ok=True)
    saved = artifact.save(model, FIXTURE.parent / "tmp-fixture")
    saved.rename(FIXTURE)
    (FIXTURE.parent / "tmp-fixture").rmdir()
    scorer = Scorer(artifact.load(FIXTURE), FeatureConfig(), CONSUMED)
    answered = [json.dumps(answer, ensure_ascii=False) for answer in lists(scorer, catalog)]
    EXPECTED.write_text("[\n" + ",\n".join(answered) + "\n]\n", encoding="utf-8")


@pytest.fixture(scope="module")
def catalog() -> CatalogView:
    return demo_slice()[1]


@pytest.fixture
def format1(tmp_path: Path) -> Iterator[Path]:
    copy = tmp_path / FIXTURE.name
    shutil.copytree(FIXTURE, copy)
    yield copy


def test_a_format_1_model_still_loads_and_serves_the_same_lists(
    format1: Path, catalog: CatalogView
) -> None:
    model = artifact.load(format1)
    assert json.loads((format1 / "manifest.json").read_text())["format_version"] == 1
    scorer = Scorer(model, FeatureConfig(), CONSUMED)
    assert lists(scorer, catalog) == json.loads(EXPECTED.read_text(encoding="utf-8"))


def test_the_same_model_memory_mapped_serves_the_same_lists(
    format1: Path, catalog: CatalogView, tmp_path: Path
) -> None:
    mapped_path = artifact.save(artifact.load(format1), tmp_path / "models")
    manifest = json.loads((mapped_path / "manifest.json").read_text())
    assert manifest["format_version"] == artifact.FORMAT_VERSION == 2
    assert not list(mapped_path.glob("*.npz"))
    scorer = Scorer(artifact.load(mapped_path), FeatureConfig(), CONSUMED)
    assert lists(scorer, catalog) == json.loads(EXPECTED.read_text(encoding="utf-8"))


if __name__ == "__main__":
    write_fixture()
    print(f"wrote {FIXTURE} and {EXPECTED}", file=sys.stderr)
