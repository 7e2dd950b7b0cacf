"""Serving speed of this checkout against another commit, measured side by side.

    python bench/serve_compare.py --against 3c4c087 [--rounds 4] [--seconds 10]

bench/serve.py's recommendations load (wrk, 10,000 learners, a generated model of 1M users x
100k items x 64 factors, 2,000 of the learners with fresh events) against two `recsvc serve`
processes, one per source tree, each with its own throw-away PostgreSQL database, migrated,
generated and registered by that tree's own code. The trees take turns run by run, in
alternating order, so that a machine whose speed drifts (a shared VM does, by up to 2x within
minutes) slows both alike; tables measured at different times cannot be compared that closely.
Prints each run, then per tree and connection count the medians and the per-round ratio of
this checkout's requests/s to the other tree's.

The other tree is a `git worktree` of `--against` in a temporary directory, removed afterwards.
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from contextlib import ExitStack  # noqa: E402
from pathlib import Path  # noqa: E402

from common import DEFAULT_PG, ROOT, recsvc_server, throwaway_database  # noqa: E402
from serve import FRESH, wrk  # noqa: E402

RECS_PATH = "/v1/users/%s/recommendations?n=10"

# Run inside a tree, with that tree's src first on the path: its bench/serve.py generates and
# registers the model its own code reads.
GENERATE = """
import asyncio, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1] + "/bench")
import serve
url, models, users, items, factors, fresh = sys.argv[2], Path(sys.argv[3]), *map(int, sys.argv[4:])
cutoff = asyncio.run(serve.snapshot_cutoff(url))
path = serve.generated_model(users, items, factors, models, cutoff)
asyncio.run(serve.register(url, path, users, items, fresh))
"""


def prepare(tree: Path, url: str, models: Path, args: argparse.Namespace) -> None:
    env = {**os.environ, "PYTHONPATH": str(tree / "src"), "RECSVC_DATABASE_URL": url}
    subprocess.run([sys.executable, "-m", "recsvc", "migrate"], env=env, cwd=tree, check=True)  # noqa: S603
    numbers = [str(v) for v in (args.users, args.items, args.factors, FRESH)]
    subprocess.run(  # noqa: S603
        [sys.executable, "-c", GENERATE, str(tree), url, str(models), *numbers],
        env=env,
        cwd=tree,
        check=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", required=True, help="the commit to compare with")
    parser.add_argument("--server-url", default=DEFAULT_PG, help="PostgreSQL server to use")
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--factors", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=int, default=10, help="length of one wrk run")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed: apt-get install -y wrk")

    with ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        other = Path(tmp) / "other"
        git = ["git", "-C", str(ROOT), "worktree"]
        subprocess.run([*git, "add", "--detach", str(other), args.against], check=True)  # noqa: S603
        stack.callback(subprocess.run, [*git, "remove", "--force", str(other)], check=False)
        trees = {args.against: other, "this checkout": ROOT}
        bases: dict[str, str] = {}
        for label, tree in trees.items():
            print(f"preparing {label} ...", flush=True)
            url = stack.enter_context(throwaway_database(args.server_url, migrate=False))
            models = Path(tmp) / f"models-{len(bases)}"
            prepare(tree, url, models, args)
            bases[label] = stack.enter_context(
                recsvc_server(url, RECSVC_MODELS_DIR=str(models), PYTHONPATH=str(tree / "src"))
            )
        labels = list(trees)
        for base in bases.values():  # warm-up
            for connections in (1, 16):
                wrk(base, RECS_PATH, connections, 3, Path(tmp))
        runs: dict[tuple[str, int], list[dict]] = {(b, c): [] for b in labels for c in (1, 16)}
        for number in range(args.rounds):
            for connections in (1, 16):
                for label in labels if number % 2 == 0 else labels[::-1]:
                    run = wrk(bases[label], RECS_PATH, connections, args.seconds, Path(tmp))
                    runs[(label, connections)].append(run)
                    print(
                        f"round {number + 1}, {connections} connections, {label}: "
                        f"{run['rps']:,.0f} requests/s, p50 {run['p50']:.2f} ms, "
                        f"p99 {run['p99']:.2f} ms",
                        flush=True,
                    )

    for connections in (1, 16):
        for label in labels:
            done = runs[(label, connections)]
            print(
                f"{connections} connections, {label}: median "
                f"{statistics.median(r['rps'] for r in done):,.0f} requests/s, "
                f"p50 {statistics.median(r['p50'] for r in done):.2f} ms, "
                f"p99 {statistics.median(r['p99'] for r in done):.2f} ms"
            )
        ratios = [
            mine["rps"] / theirs["rps"]
            for mine, theirs in zip(
                runs[(labels[1], connections)], runs[(labels[0], connections)], strict=True
            )
        ]
        print(
            f"{connections} connections, this checkout / {args.against} requests/s per round: "
            f"{', '.join(f'{r:.3f}' for r in ratios)} (median {statistics.median(ratios):.3f})"
        )


if __name__ == "__main__":
    main()
