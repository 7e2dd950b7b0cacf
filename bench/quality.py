"""Offline quality on MovieLens-100k, Microsoft Recommenders' protocol, through the real service.

    python bench/quality.py [--engine implicit|spark] [--write-readme]

The training part of the split is written as `rate` events and loaded with `recsvc import`;
`recsvc train` then runs with the project's default settings (embedded SQLite, a throw-away
folder). The model it saved is scored on the test part, side by side with the popularity
baseline and implicit's ALS with its library defaults on the same split.

Protocol (bench/ml100k_research.py has the details and the research behind the defaults):
stratified 75/25 split per item with seed 42; every test rating is relevant; items the user
rated in training are never recommended and only items seen in training are; top-10; nDCG with
binary gains; MAP over all of a user's test items. Data: the ml-100k files inside the PyPI
wheel of recbole 1.2.1, downloaded at run time into /tmp/recbole, never committed.
Not covered: users unknown at training time (there are none in this split), fold-in, serving.

`--engine spark` also exports the imported events (`recsvc export events`) and trains with
`recsvc train --engine spark --spark-master local[2]`, then scores both engines' models on the
same split, side by side (README "Training at scale"; needs pyspark and Java 17).
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import csv  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from datetime import UTC, datetime  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from common import write_readme_section  # noqa: E402
from ml100k_research import (  # noqa: E402
    HEADER,
    PUBLISHED,
    K,
    Split,
    evaluate,
    fit_default_als,
    fmt,
    load_ml100k,
    popularity,
    recommend,
    stratified_split,
)
from recsvc import artifact  # noqa: E402
from recsvc.training import als_from_factors  # noqa: E402


def write_training_events(path: Path, users, items, ratings, timestamps, mask) -> int:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["event_id", "user_id", "item_id", "type", "value", "timestamp"])
        for row in np.flatnonzero(mask):
            writer.writerow(
                [f"ml-{row}", users[row], items[row], "rate", ratings[row], timestamps[row]]
            )
    return int(mask.sum())


def recsvc_top_k(model_dir: Path, split: Split) -> np.ndarray:
    """Top-k of the saved model for the split's test users, in the split's item indices."""
    saved = artifact.load(model_dir)
    model = als_from_factors(saved.user_factors, saved.item_factors, saved.params)
    rows = saved.users.indices_of([str(u) for u in split.uids[split.test_uidx]])
    assert (rows >= 0).all(), "every test user was in the training data"
    ids, _ = model.recommend(rows, saved.user_items[rows], N=K, filter_already_liked_items=True)
    position = {str(item): i for i, item in enumerate(split.iids)}
    return np.vectorize(lambda i: position[saved.items.id_of(int(i))])(ids)


def run(command: list[str], env: dict[str, str]) -> str:
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)  # noqa: S603
    if done.returncode not in (0,):
        sys.exit(f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write-readme", action="store_true", help="put the table in README")
    parser.add_argument("--engine", choices=["implicit", "spark"], default="implicit")
    parser.add_argument("--spark-master", default="local[2]")
    args = parser.parse_args()
    if args.engine == "spark":
        spark_main(args)
        return

    users, items, ratings, timestamps = load_ml100k()
    mask = stratified_split(users, items, by="item", ratio=0.75, seed=42)
    split = Split(users, items, ratings, mask)

    with tempfile.TemporaryDirectory() as tmp:
        env = {
            **os.environ,
            "RECSVC_DATABASE_URL": f"sqlite+aiosqlite:///{tmp}/ml100k.db",
            "RECSVC_MODELS_DIR": f"{tmp}/models",
        }
        events = Path(tmp) / "train.csv"
        n_train = write_training_events(events, users, items, ratings, timestamps, mask)
        run([sys.executable, "-m", "recsvc", "import", "events", str(events), "--quiet"], env)
        trained = run([sys.executable, "-m", "recsvc", "train"], env)
        print(trained)
        (version,) = artifact.list_versions(Path(tmp) / "models")
        ours = evaluate(split, recsvc_top_k(Path(tmp) / "models" / version, split))

    rows = {
        "recsvc (`recsvc train`, default settings)": ours,
        "popularity baseline": evaluate(split, popularity(split)),
        "implicit ALS, library defaults": evaluate(split, recommend(fit_default_als(split), split)),
    }
    print(
        f"MovieLens-100k: {n_train:,} training ratings, {split.n_test:,} test ratings, "
        f"{len(split.test_uidx)} test users"
    )
    print(HEADER)
    for name, result in rows.items():
        print(fmt(name, result))

    table = [
        "| model | nDCG@10 | precision@10 | recall@10 | MAP |",
        "| --- | --- | --- | --- | --- |",
        *(
            f"| {name} | {r['ndcg']:.3f} | {r['prec']:.3f} | {r['recall']:.3f} | {r['map']:.3f} |"
            for name, r in rows.items()
        ),
        *(f"| {name} (published) | {value:.3f} | | | |" for name, value in PUBLISHED.items()),
    ]
    if args.write_readme:
        write_readme_section(
            "quality",
            f"`python bench/quality.py --write-readme` ({datetime.now(UTC):%Y-%m-%d}; "
            f"{n_train:,} training and {split.n_test:,} test ratings):\n\n"
            + "\n".join(table)
            + "\n",
        )


def spark_main(args: argparse.Namespace) -> None:
    """Both engines on the same split: `recsvc train` and `recsvc train --engine spark`."""
    users, items, ratings, timestamps = load_ml100k()
    mask = stratified_split(users, items, by="item", ratio=0.75, seed=42)
    split = Split(users, items, ratings, mask)
    results: dict[str, dict[str, float]] = {}
    seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        env = {
            **os.environ,
            "RECSVC_DATABASE_URL": f"sqlite+aiosqlite:///{tmp}/ml100k.db",
            "RECSVC_MODELS_DIR": f"{tmp}/models",
        }
        events = Path(tmp) / "train.csv"
        n_train = write_training_events(events, users, items, ratings, timestamps, mask)
        run([sys.executable, "-m", "recsvc", "import", "events", str(events), "--quiet"], env)
        export = Path(tmp) / "export"
        print(run([sys.executable, "-m", "recsvc", "export", "events", str(export)], env))
        commands = {
            "implicit": [sys.executable, "-m", "recsvc", "train", "--force"],
            "spark": [
                sys.executable,
                "-m",
                "recsvc",
                "train",
                "--force",
                "--engine",
                "spark",
                "--events",
                str(export),
                "--spark-master",
                args.spark_master,
            ],
        }
        for engine, command in commands.items():
            started = time.perf_counter()
            print(run(command, env))
            seconds[engine] = time.perf_counter() - started
            version = sorted(artifact.list_versions(Path(tmp) / "models"))[-1]
            results[engine] = evaluate(split, recsvc_top_k(Path(tmp) / "models" / version, split))
    names = {
        "implicit": "recsvc, `implicit` engine (default)",
        "spark": f"recsvc, Spark engine (MLlib ALS, {args.spark_master})",
    }
    print(HEADER)
    for engine, result in results.items():
        print(fmt(names[engine], result))
    gap = results["spark"]["ndcg"] - results["implicit"]["ndcg"]
    print(f"nDCG@10 Spark - implicit: {gap:+.4f}")
    table = [
        "| engine | nDCG@10 | precision@10 | recall@10 | MAP | `recsvc train` seconds |",
        "| --- | --- | --- | --- | --- | --- |",
        *(
            f"| {names[e]} | {r['ndcg']:.3f} | {r['prec']:.3f} | {r['recall']:.3f} | "
            f"{r['map']:.3f} | {seconds[e]:.0f} |"
            for e, r in results.items()
        ),
    ]
    if args.write_readme:
        write_readme_section(
            "quality-spark",
            f"`python bench/quality.py --engine spark --write-readme` "
            f"({datetime.now(UTC):%Y-%m-%d}; {n_train:,} training and {split.n_test:,} test "
            f"ratings; default settings; the seconds include each command's start, Spark's "
            f"JVM included):\n\n" + "\n".join(table) + f"\n\nnDCG@10 difference (Spark - "
            f"implicit): {gap:+.3f}.\n",
        )


if __name__ == "__main__":
    main()
