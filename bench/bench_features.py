"""Speed of recsvc.features.build_interactions (and an ALS fit on the result) on generated events.

Data: deterministic power-law events (seed 0): item popularity ~ Zipf, user activity ~ Zipf,
six event types, one year of timestamps, string ids like "u123456" / "course-1234".
Compared in the same run, as BENCHMARKING.md asks: build_interactions vs the bare scipy
COO->CSR sum of the same (already integer-coded) pairs, i.e. the cost of ids, decay, negatives,
newest timestamps and per-type counts on top of the minimum; and our fit_als vs implicit's bare
fit on the same confidence matrix.

Run (threads pinned before numpy is imported):
    OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 python bench/bench_features.py --events 10000000
Not covered: loading events from the database, text features.
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import scipy.sparse as sp  # noqa: E402

from recsvc.features import EventColumns, FeatureConfig, build_interactions  # noqa: E402


def generate(
    n_events: int, n_users: int, n_items: int, seed: int = 0
) -> tuple[EventColumns, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    item_p = 1.0 / np.arange(1, n_items + 1) ** 1.0
    user_p = 1.0 / np.arange(1, n_users + 1) ** 0.6
    users = rng.choice(n_users, size=n_events, p=user_p / user_p.sum())
    items = rng.choice(n_items, size=n_events, p=item_p / item_p.sum())
    types = np.array(["view", "click", "enroll", "purchase", "rate", "dislike"])[
        rng.choice(6, size=n_events, p=[0.6, 0.2, 0.08, 0.05, 0.05, 0.02])
    ]
    values = np.where(types == "rate", rng.integers(1, 6, n_events), np.nan).astype(np.float64)
    occurred = 1.7e9 + rng.random(n_events) * 365 * 86400
    events = EventColumns(
        user_ids=np.char.add("u", users.astype("U7")),
        item_ids=np.char.add("course-", items.astype("U6")),
        types=types,
        values=values,
        occurred_at=occurred,
    )
    return events, users, items


def timed(fn, repeats: int, warm_up: bool = True) -> tuple[list[float], object]:
    result = fn() if warm_up else None
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return times, result


def show(name: str, times: list[float]) -> None:
    print(
        f"{name:<40} median {statistics.median(times):7.2f} s"
        f"  (min {min(times):.2f}, max {max(times):.2f}, n={len(times)})"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--users", type=int, default=200_000)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--fit", action="store_true", help="also time ALS fits on the matrix")
    parser.add_argument("--fit-iterations", type=int, default=5)
    args = parser.parse_args()

    events, users, items = generate(args.events, args.users, args.items)
    print(f"events={args.events} users<= {args.users} items<= {args.items}")
    config = FeatureConfig(half_life_days=90.0)
    now = float(events.occurred_at.max())

    def bare() -> sp.csr_matrix:
        return sp.coo_matrix(
            (np.ones(len(users), dtype=np.float32), (users, items)), shape=(args.users, args.items)
        ).tocsr()

    show("scipy coo->csr of integer pairs", timed(bare, args.repeats)[0])
    times, interactions = timed(lambda: build_interactions(events, config, now), args.repeats)
    show("build_interactions", times)
    print(
        f"matrix {interactions.shape}, nnz {interactions.weights.nnz},"
        f" negatives {interactions.negatives.nnz}"
    )

    if args.fit:
        from implicit.cpu.als import AlternatingLeastSquares

        from recsvc.training import ALSParams, fit_als

        params = ALSParams(iterations=args.fit_iterations)
        conf = params.confidence_of(interactions.weights)

        def bare_fit() -> None:
            AlternatingLeastSquares(
                factors=params.factors, regularization=params.regularization,
                iterations=params.iterations, num_threads=1, random_state=42,
            ).fit(conf, show_progress=False)  # fmt: skip

        # one timed run each, no warm-up: an ALS fit is long enough to swamp start-up costs
        label = f"factors {params.factors}, {params.iterations} it"
        show(f"implicit bare fit ({label})", timed(bare_fit, 1, warm_up=False)[0])
        show(f"fit_als ({label})", timed(lambda: fit_als(conf, params), 1, warm_up=False)[0])


if __name__ == "__main__":
    main()
