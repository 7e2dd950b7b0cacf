"""MovieLens-100k quality research for recsvc's ALS defaults (implicit ALS).

Reproduces, side by side on the same split, the key rows of the research:
  * popularity baseline,
  * implicit ALS with its library defaults (binary interactions),
  * the proposed default (confidence = 1 + alpha*log1p(rating), large regularization),
under Microsoft Recommenders' MovieLens-100k protocol:
  * python_stratified_split(ratio=0.75, seed=42) re-implemented exactly (no pandas needed):
    np.random.seed(seed); rand per row in file order; sort by (group, rand); a row goes to
    train when rank/count <= 0.75 within its group. The MS benchmark notebook passes
    filter_by="item" (per-item strata); the function's default is filter_by="user".
    Both are run (--split item|user|both, default both).
  * every test rating is relevant (ratings 1..5), items rated in training are never
    recommended, only items seen in training are recommendable, top-10;
  * nDCG@10 with binary gains (IDCG over min(#relevant, 10)), precision@10, recall@10,
    MAP = MS `map` (sum of precision at hits / #relevant test items; the column used in the
    published benchmark table), map@10 = MS `map_at_k` (same / min(#relevant, 10)).
    Averages are over users that have test items and a recommendation list.

Data: ml-100k.inter from the recbole 1.2.1 wheel on PyPI (downloaded with pip into
/tmp/recbole if not there already; never committed).

Run (threads pinned *before* numpy is imported, see BENCHMARKING.md):
    OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 python bench/ml100k_research.py
Options: --split item|user|both, --seeds 0,1,2 (ALS random_state), --timeholdout
(also score the rows on a per-user newest-20% holdout of the training part), --repeats N
(fit timing repeats after a warm-up).

Not covered: rating prediction, fold-in of new users, other data sets, GPU.
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import glob  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
import zipfile  # noqa: E402

import numpy as np  # noqa: E402
import scipy.sparse as sp  # noqa: E402

warnings.filterwarnings("ignore", message=".*threadpoolctl.*")

CACHE_DIR = "/tmp/recbole"
INTER_PATH = "recbole/dataset_example/ml-100k/ml-100k.inter"
K = 10

# Proposed defaults (see the research report): confidence computed by us, implicit's alpha=1.
BEST = dict(conf="log", alpha=2.0, weight="rating", factors=64, regularization=32.0, iterations=15)
# Best of the other confidence schemes found by the grid (for comparison rows).
ALTERNATIVES = {
    "c = rating (implicit alpha=1), reg 30": dict(
        conf="lin", alpha=1.0, weight="rating", factors=64, regularization=30.0, iterations=15
    ),
    "c = 3 per interaction, reg 30": dict(
        conf="lin", alpha=3.0, weight="binary", factors=64, regularization=30.0, iterations=15
    ),
    "c = 3*bm25(rating), reg 100, 128 f": dict(
        conf="bm25", alpha=3.0, weight="rating", factors=128, regularization=100.0, iterations=15
    ),
}
# Neighbourhood of the proposed point (regularization is the sensitive knob).
NEIGHBOURS = [
    dict(regularization=24.0),
    dict(regularization=40.0),
    dict(alpha=1.5),
    dict(alpha=3.0),
    dict(factors=32),
    dict(factors=128),
    dict(iterations=10),
]
# Small grid a service could run automatically (alpha x regularization).
AUTO_GRID = [(a, r) for a in (1.0, 2.0, 5.0) for r in (0.01, 1.0, 10.0, 30.0, 100.0)]
# Published rows of MS Recommenders' MovieLens-100k table (nDCG@10) for reference.
PUBLISHED = {"BPR (cornac)": 0.441, "SAR": 0.382, "BiVAE": 0.475}


# ---------------------------------------------------------------- data
def load_ml100k():
    path = os.path.join(CACHE_DIR, INTER_PATH)
    if not os.path.exists(path):
        whls = glob.glob(os.path.join(CACHE_DIR, "recbole-1.2.1-*.whl"))
        if not whls:
            os.makedirs(CACHE_DIR, exist_ok=True)
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    "--no-deps",
                    "-q",
                    "recbole==1.2.1",
                    "-d",
                    CACHE_DIR,
                ],
                check=True,
            )
            whls = glob.glob(os.path.join(CACHE_DIR, "recbole-1.2.1-*.whl"))
        with zipfile.ZipFile(whls[0]) as z:
            z.extract(INTER_PATH, CACHE_DIR)
    raw = np.loadtxt(path, skiprows=1, delimiter="\t", dtype=np.int64)
    return raw[:, 0], raw[:, 1], raw[:, 2].astype(np.float64), raw[:, 3]


def stratified_split(users, items, by="item", ratio=0.75, seed=42):
    """MS python_stratified_split: returns a boolean 'train' mask (file row order)."""
    np.random.seed(seed)
    rnd = np.random.rand(len(users))
    key = items if by == "item" else users
    order = np.lexsort((rnd, key))
    k_sorted = key[order]
    starts = np.r_[0, np.flatnonzero(np.diff(k_sorted)) + 1]
    counts = np.diff(np.r_[starts, len(k_sorted)])
    grp = np.repeat(np.arange(len(starts)), counts)
    rank = np.arange(len(k_sorted)) - starts[grp] + 1
    train_sorted = rank / counts[grp] <= ratio
    mask = np.empty(len(users), dtype=bool)
    mask[order] = train_sorted
    return mask


def newest_holdout(users, ts, frac=0.2):
    """Per user, the newest `frac` of interactions (by timestamp) -> holdout mask."""
    order = np.lexsort((np.arange(len(users)), ts, users))
    u_sorted = users[order]
    starts = np.r_[0, np.flatnonzero(np.diff(u_sorted)) + 1]
    counts = np.diff(np.r_[starts, len(u_sorted)])
    grp = np.repeat(np.arange(len(starts)), counts)
    rank = np.arange(len(u_sorted)) - starts[grp]
    n_hold = np.round(counts * frac).astype(int)
    hold_sorted = rank >= counts[grp] - n_hold[grp]
    mask = np.empty(len(users), dtype=bool)
    mask[order] = hold_sorted
    return mask


class Split:
    """Index train interactions; test relevance sets in train index space."""

    def __init__(self, users, items, ratings, train_mask):
        tu, ti, tr = users[train_mask], items[train_mask], ratings[train_mask]
        self.uids, tu_idx = np.unique(tu, return_inverse=True)
        self.iids, ti_idx = np.unique(ti, return_inverse=True)
        shape = (len(self.uids), len(self.iids))
        # duplicates do not occur in ml-100k; sum_duplicates for safety
        self.ratings = sp.csr_matrix((tr, (tu_idx, ti_idx)), shape=shape)
        self.ratings.sum_duplicates()
        self.binary = self.ratings.copy()
        self.binary.data[:] = 1.0
        # test: all users with test rows that are known in train; relevant = all test items
        te = ~train_mask
        u_pos = {u: i for i, u in enumerate(self.uids)}
        i_pos = {it: i for i, it in enumerate(self.iids)}
        rel = {}
        self.test_users_unknown = 0
        for u, it in zip(users[te], items[te], strict=True):
            rel.setdefault(u, []).append(i_pos.get(it, -1))  # -1: item unseen in train
        self.test_uidx, self.test_rel = [], []
        for u, lst in rel.items():
            if u not in u_pos:
                self.test_users_unknown += 1
                continue
            self.test_uidx.append(u_pos[u])
            self.test_rel.append(np.array(lst))
        self.test_uidx = np.array(self.test_uidx)
        self.n_test = int(te.sum())


def evaluate(split, top):
    """top: (n_test_users, K) array of train-index item ids, aligned with split.test_uidx."""
    disc = 1.0 / np.log2(np.arange(2, K + 2))
    nd, pr, rc, mp, mpk = [], [], [], [], []
    for rec, rel in zip(top, split.test_rel, strict=True):
        relset = set(rel[rel >= 0].tolist())
        n_rel = len(rel)  # items unseen in train still count as relevant (MS: "actual")
        hits = np.array([r in relset for r in rec[:K]], dtype=float)
        h = hits.sum()
        nd.append((hits * disc[: len(hits)]).sum() / disc[: min(n_rel, K)].sum())
        pr.append(h / K)
        rc.append(h / n_rel)
        ap = (np.cumsum(hits) / np.arange(1, len(hits) + 1) * hits).sum()
        mp.append(ap / n_rel)
        mpk.append(ap / min(n_rel, K))
    return dict(
        ndcg=np.mean(nd), prec=np.mean(pr), recall=np.mean(rc), map=np.mean(mp), mapk=np.mean(mpk)
    )


# ---------------------------------------------------------------- models
def confidence(split, conf, alpha, weight, K1=100.0, B=0.8):
    """User x item CSR matrix handed to implicit, plus the model alpha to use."""
    w = split.ratings if weight == "rating" else split.binary
    if conf == "log":  # c = 1 + alpha*log1p(w); implicit alpha = 1
        m = w.copy()
        m.data = 1.0 + alpha * np.log1p(m.data)
        return m.tocsr(), 1.0
    if conf == "lin":  # c = alpha*w (implicit's native scaling)
        return w.copy().tocsr(), alpha
    if conf == "lin1":  # c = 1 + alpha*w (Hu et al.)
        m = w.copy()
        m.data = 1.0 + alpha * m.data
        return m.tocsr(), 1.0
    if conf == "bm25":  # bm25 over item x user rows (implicit's lastfm example), c=alpha*bm25
        from implicit.nearest_neighbours import bm25_weight

        m = bm25_weight(w.T.tocsr(), K1=K1, B=B).T.tocsr()
        return m, alpha
    raise ValueError(conf)


def fit_als(
    mat, model_alpha, factors, regularization, iterations, random_state=42, num_threads=1, **_
):
    from implicit.cpu.als import AlternatingLeastSquares

    m = AlternatingLeastSquares(
        factors=factors,
        regularization=regularization,
        alpha=model_alpha,
        iterations=iterations,
        random_state=random_state,
        num_threads=num_threads,
    )
    m.fit(mat, show_progress=False)
    return m


def fit_default_als(split, random_state=42):
    # implicit 0.7.3 library defaults: factors=100, regularization=0.01, alpha=1.0,
    # iterations=15; fed one per interaction (binary).
    from implicit.cpu.als import AlternatingLeastSquares

    m = AlternatingLeastSquares(random_state=random_state, num_threads=1)
    m.fit(split.binary, show_progress=False)
    return m


def recommend(model, split):
    ids, _ = model.recommend(
        split.test_uidx, split.binary[split.test_uidx], N=K, filter_already_liked_items=True
    )
    return ids


def popularity(split):
    pop = np.asarray(split.binary.sum(axis=0)).ravel()
    order = np.argsort(-pop, kind="stable")
    out = []
    for u in split.test_uidx:
        seen = set(split.binary.indices[split.binary.indptr[u] : split.binary.indptr[u + 1]])
        out.append([i for i in order[: K + len(seen)] if i not in seen][:K])
    return np.array(out)


def run_cfg(split, cfg, random_state=42, num_threads=1):
    mat, a = confidence(
        split, cfg["conf"], cfg["alpha"], cfg["weight"], cfg.get("K1", 100.0), cfg.get("B", 0.8)
    )
    t0 = time.perf_counter()
    m = fit_als(
        mat,
        a,
        cfg["factors"],
        cfg["regularization"],
        cfg["iterations"],
        random_state=random_state,
        num_threads=num_threads,
    )
    dt = time.perf_counter() - t0
    return evaluate(split, recommend(m, split)), dt


def fmt(name, r):
    return (
        f"{name:<44} {r['ndcg']:.4f}  {r['prec']:.4f}  {r['recall']:.4f}  "
        f"{r['map']:.4f}  {r['mapk']:.4f}"
    )


HEADER = f"{'row':<44} ndcg@10 prec@10 recall@10 MAP    map@10"


def time_vs_random_holdout(users, items, ratings, ts, mask, test_split):
    """Would a small automatic grid tuned on a holdout of the training part pick good
    settings for the MS test split?  Holdouts: per-user newest 20% (by timestamp), and a
    per-user random 20% (MS stratified split of the training part, seed 7)."""
    u2, i2, r2, t2 = users[mask], items[mask], ratings[mask], ts[mask]
    holdouts = {
        "time (newest 20%/user)": Split(u2, i2, r2, ~newest_holdout(u2, t2)),
        "random (20%/user)": Split(
            u2, i2, r2, stratified_split(u2, i2, by="user", ratio=0.8, seed=7)
        ),
    }
    for hname, hs in holdouts.items():
        print(f"-- holdout {hname} of the train part: fit on {hs.binary.nnz}, holdout {hs.n_test}")
        print(fmt("  popularity", evaluate(hs, popularity(hs))))
        print(
            fmt("  implicit ALS library defaults", evaluate(hs, recommend(fit_default_als(hs), hs)))
        )
        print(fmt("  proposed default", run_cfg(hs, BEST)[0]))
    print(
        f"-- auto grid alpha x regularization ({len(AUTO_GRID)} configs, log conf, "
        f"64 factors): holdout nDCG@10 -> MS-test nDCG@10"
    )
    scores = {h: {} for h in holdouts}
    ms = {}
    for a, r in AUTO_GRID:
        cfg = {**BEST, "alpha": a, "regularization": r}
        ms[(a, r)] = run_cfg(test_split, cfg)[0]["ndcg"]
        for hname, hs in holdouts.items():
            scores[hname][(a, r)] = run_cfg(hs, cfg)[0]["ndcg"]
        print(
            f"   alpha={a:<4g} reg={r:<5g} "
            + "  ".join(f"{h.split()[0]} {scores[h][(a, r)]:.4f}" for h in holdouts)
            + f"  -> MS test {ms[(a, r)]:.4f}"
        )
    for hname in holdouts:
        pick = max(scores[hname], key=scores[hname].get)
        rk = np.argsort(np.argsort([scores[hname][k] for k in AUTO_GRID]))
        rm = np.argsort(np.argsort([ms[k] for k in AUTO_GRID]))
        rho = np.corrcoef(rk, rm)[0, 1]
        print(
            f"   {hname}: picks alpha={pick[0]:g} reg={pick[1]:g} -> MS test "
            f"{ms[pick]:.4f}; Spearman(holdout, MS test) = {rho:.2f}"
        )


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--split", default="both", choices=["item", "user", "both"])
    ap.add_argument("--seeds", default="42,0,1", help="ALS random_state values")
    ap.add_argument("--timeholdout", action="store_true")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]

    users, items, ratings, ts = load_ml100k()
    print(
        f"ml-100k: {len(users)} ratings, {len(np.unique(users))} users, "
        f"{len(np.unique(items))} items; OPENBLAS_NUM_THREADS="
        f"{os.environ.get('OPENBLAS_NUM_THREADS')}"
    )
    print(f"best config: {BEST}")
    splits = ["item", "user"] if args.split == "both" else [args.split]
    for by in splits:
        mask = stratified_split(users, items, by=by)
        s = Split(users, items, ratings, mask)
        print(
            f"\n== MS stratified split per {by} (seed 42): train {mask.sum()}, test "
            f"{s.n_test}, test users {len(s.test_uidx)} (+{s.test_users_unknown} unknown)"
        )
        print(HEADER)
        print(fmt("popularity", evaluate(s, popularity(s))))
        for rs in seeds:
            print(
                fmt(
                    f"implicit ALS library defaults (rs={rs})",
                    evaluate(s, recommend(fit_default_als(s, rs), s)),
                )
            )
        for rs in seeds:
            r, _ = run_cfg(s, BEST, random_state=rs)
            print(fmt(f"proposed default (rs={rs})", r))
        for name, cfg in ALTERNATIVES.items():
            print(fmt(name, run_cfg(s, cfg)[0]))
        for ch in NEIGHBOURS:
            name = "proposed, " + ", ".join(f"{k}={v:g}" for k, v in ch.items())
            print(fmt(name, run_cfg(s, {**BEST, **ch})[0]))
        for name, v in PUBLISHED.items():
            print(f"{'published ' + name:<44} {v:.3f}")

        if args.timeholdout:
            time_vs_random_holdout(users, items, ratings, ts, mask, s)

    # fit wall time, proposed config vs library defaults, same matrix, same run
    s = Split(users, items, ratings, stratified_split(users, items, by=splits[0]))
    mat, a = confidence(s, BEST["conf"], BEST["alpha"], BEST["weight"])
    from implicit.cpu.als import AlternatingLeastSquares

    t_best, t_def = [], []
    for rep in range(args.repeats + 1):
        t0 = time.perf_counter()
        fit_als(mat, a, BEST["factors"], BEST["regularization"], BEST["iterations"])
        t1 = time.perf_counter()
        AlternatingLeastSquares(random_state=42, num_threads=1).fit(s.binary, show_progress=False)
        t2 = time.perf_counter()
        if rep:  # first round is the warm-up
            t_best.append(t1 - t0)
            t_def.append(t2 - t1)
    print(
        f"\nfit wall time, num_threads=1, {args.repeats} runs after warm-up, median (min-max):"
        f"\n  proposed ({BEST['factors']} factors, {BEST['iterations']} it): "
        f"{statistics.median(t_best):.3f}s ({min(t_best):.3f}-{max(t_best):.3f})"
        f"\n  library defaults (100 factors, 15 it): "
        f"{statistics.median(t_def):.3f}s ({min(t_def):.3f}-{max(t_def):.3f})"
    )


if __name__ == "__main__":
    main()
