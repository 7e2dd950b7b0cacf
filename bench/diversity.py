"""How many different courses a chatbot's lists hold, on the bundled demo data, through HTTP.

    python bench/diversity.py [--users 20000] [--items 2000] [--write-readme]
    python bench/diversity.py --tune      # RECSVC_DIVERSITY on the demo holdout

Loads the demo data set (`recsvc demo`'s, deterministic) into a throw-away SQLite database
through `recsvc import`'s code path, trains with the default settings, and asks the app
in-process over HTTP (httpx ASGITransport) for 8 typical chatbot queries (top-5) and 200
learners' top-10, once with one edition per family (the default) and once with
`max_per_family=100` (no family limit, as before families existed). "Distinct" is judged by the
demo's own ground truth (an edition is a base title within a stage, whatever its suffix), not
by the service's family detection. Also prints the holdout metrics `recsvc train` records.

--tune scores settings of `diversity` on the demo's newest-20% holdout instead: one ALS fit
on the training part, then the lists as served (one edition per family, maximal marginal
relevance at each setting) evaluated like `recsvc train` does.
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import asyncio  # noqa: E402
import re  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from datetime import UTC, datetime  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import httpx  # noqa: E402
import numpy as np  # noqa: E402

from common import write_readme_section  # noqa: E402
from recsvc import db, pipeline  # noqa: E402
from recsvc.app import create_app  # noqa: E402
from recsvc.bulk import run_import  # noqa: E402
from recsvc.config import Settings  # noqa: E402
from recsvc.demo_data import _EN_SUFFIXES, _ZH_SUFFIXES, generate, write_jsonl  # noqa: E402
from recsvc.features import EventColumns, build_interactions  # noqa: E402
from recsvc.ingest import CatalogItem  # noqa: E402
from recsvc.schemas import ValidationRules  # noqa: E402
from recsvc.training import evaluate, fit_als, sample_test_users, split_holdout  # noqa: E402

QUERIES = [
    "想学Python数据分析",
    "机器学习入门",
    "考研数学",
    "英语口语",
    "Java后端开发",
    "UI设计入门",
    "摄影后期",
    "会计考试",
]
KEY = "bench-diversity-key"
_SUFFIXES = sorted((s for s in (*_ZH_SUFFIXES, *_EN_SUFFIXES) if s), key=len, reverse=True)


def true_family(item: dict[str, Any]) -> tuple[str, str]:
    title = re.sub(r"（第\d+期）$| Vol\. \d+$", "", item["title"])
    for suffix in _SUFFIXES:
        if title.endswith(suffix):
            title = title[: -len(suffix)]
            break
    return item["categories"][1], title


def shares(lists: list[list[str]], family: dict[str, tuple[str, str]]) -> tuple[float, float]:
    """Share of slots holding a distinct family, and share of lists with a near-duplicate."""
    slots = sum(len(items) for items in lists)
    distinct = sum(len({family[i] for i in items}) for items in lists)
    duplicated = sum(len({family[i] for i in items}) < len(items) for items in lists)
    return distinct / slots, duplicated / len(lists)


async def run(args: argparse.Namespace, folder: Path) -> str:
    data = generate(n_users=args.users, n_items=args.items)
    family = {item["item_id"]: true_family(item) for item in data.items}
    settings = Settings(
        database_url=f"sqlite+aiosqlite:///{folder / 'demo.db'}",
        models_dir=folder / "models",
        api_keys={KEY: ["read", "admin"]},
    )
    await db.upgrade(settings.database_url)
    files = write_jsonl(data, folder / "data")
    engine = db.make_engine(settings.database_url)
    try:
        sessionmaker = db.make_sessionmaker(engine)
        rules = ValidationRules.from_settings(settings)
        for kind in ("items", "users", "events"):
            await run_import(kind, str(files[kind]), sessionmaker, rules, progress=False)
        began = time.perf_counter()
        outcome = await pipeline.run_training(settings, sessionmaker, force=True)
        print(f"trained {outcome.version} in {time.perf_counter() - began:.1f} s", flush=True)
    finally:
        await engine.dispose()

    app = create_app(settings)
    rows = []
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        headers = {"X-API-Key": KEY}
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
            for limit in (1, 100):
                queries = []
                for query in QUERIES:
                    body = {"query": query, "n": 5, "max_per_family": limit}
                    answer = await client.post("/v1/recommendations", json=body, headers=headers)
                    queries.append([i["item_id"] for i in answer.json()["items"]])
                learners = []
                for k in range(200):
                    user = data.users[k * (len(data.users) // 200)]["user_id"]
                    answer = await client.get(
                        f"/v1/users/{user}/recommendations",
                        params={"n": 10, "max_per_family": limit},
                        headers=headers,
                    )
                    learners.append([i["item_id"] for i in answer.json()["items"]])
                q_share, q_dup = shares(queries, family)
                l_share, l_dup = shares(learners, family)
                label = "one per family (default)" if limit == 1 else "no family limit"
                rows.append(
                    f"| {label} | {q_share:.0%} | {q_dup:.0%} | {l_share:.0%} | {l_dup:.0%} |"
                )
                print(rows[-1], flush=True)
    metrics = outcome.metrics
    figures = ", ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items()))
    return (
        "| lists | queries: distinct slots | queries: lists with a copy | learners' top-10: "
        "distinct slots | learners: lists with a copy |\n| --- | --- | --- | --- | --- |\n"
        + "\n".join(rows)
        + f"\n\n`python bench/diversity.py --write-readme` ({datetime.now(UTC):%Y-%m-%d}; demo "
        f"data set with {args.users:,} learners and {args.items:,} courses; 8 chatbot queries "
        f"top-5, 200 learners top-10). Holdout metrics recorded by training: {figures}.\n"
    )


def tune(args: argparse.Namespace) -> str:
    data = generate(n_users=args.users, n_items=args.items)
    events = EventColumns.from_lists(
        [e["user_id"] for e in data.events],
        [e["item_id"] for e in data.events],
        [e["type"] for e in data.events],
        [datetime.fromisoformat(e["timestamp"]).timestamp() for e in data.events],
        [e.get("value") for e in data.events],
    )
    settings = Settings()
    interactions = build_interactions(events, pipeline.feature_config(settings))
    catalog = [
        CatalogItem(i["item_id"], i["title"], ("", "", [], []), i["categories"], True, {})
        for i in data.items
    ]
    family_of = pipeline.item_families(settings, catalog, interactions)
    categories = pipeline.item_categories(catalog, interactions)
    holdout = sample_test_users(
        split_holdout(interactions, settings.holdout_fraction, settings.random_seed),
        settings.eval_max_users,
        settings.random_seed,
    )
    params = pipeline.als_params(settings)
    model = fit_als(params.confidence_of(holdout.train), params)
    rows = []
    for diversity in (0.0, 0.1, 0.2, 0.3, 0.4, 0.5):
        metrics = evaluate(
            model,
            holdout.train,
            holdout.test,
            10,
            interactions.negatives,
            family_of=family_of,
            item_vectors=np.asarray(model.item_factors),
            item_categories=categories,
            diversity=diversity,
        )
        row = (
            f"| {diversity:.1f} | {metrics['ndcg@10']:.4f} | {metrics['family_ndcg@10']:.4f} | "
            f"{metrics['recall@10']:.4f} | {metrics['ild@10']:.3f} |"
        )
        print(row, flush=True)
        rows.append(row)
    return (
        "| diversity | ndcg@10 | family_ndcg@10 | recall@10 | ild@10 |\n| --- | --- | --- | --- | "
        "--- |\n" + "\n".join(rows) + f"\n\n`python bench/diversity.py --tune` "
        f"({datetime.now(UTC):%Y-%m-%d}; demo data set, {args.users:,} learners, "
        f"{args.items:,} courses; newest-20% holdout, lists as served).\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--items", type=int, default=2_000)
    parser.add_argument("--tune", action="store_true", help="score diversity settings instead")
    parser.add_argument("--write-readme", action="store_true", help="put the figures in README")
    args = parser.parse_args()
    if args.tune:
        body = tune(args)
        name = "diversity-tuning"
    else:
        with tempfile.TemporaryDirectory() as tmp:
            body = asyncio.run(run(args, Path(tmp)))
        name = "diversity"
    print(body)
    if args.write_readme:
        write_readme_section(name, body)


if __name__ == "__main__":
    main()
