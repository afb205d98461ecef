"""Benchmark: lensbias LinearProbe against scikit-learn's LogisticRegression on the same data.

Both fit standardised features with the same objective (C, L2, multinomial); the script
prints held-out accuracy, seconds per fit and the speed ratio, in one process.

    python benchmarks/bench_probes.py                       # synthetic 8000 x 256, 17 classes
    python benchmarks/bench_probes.py --threads 2 --n 20000
    python benchmarks/bench_probes.py --cache activations/tiny-mixed--ud-ewt.h5 \
        --hook blocks.2.hook_resid_post --concept upos
    python benchmarks/bench_probes.py --sweep              # every concept x hook of a diff
    python benchmarks/bench_probes.py --stage DIR          # the diff's whole probe stage
    python benchmarks/bench_probes.py --grid-scores DIR --concept deprel \
        --hook blocks.2.hook_resid_post                    # one concept's C choice, both ways
    python benchmarks/bench_probes.py --eigh 512,1024,1536,2048   # the preconditioner's cost

``--sweep`` caches tiny-mixed on the diff's default data (UD-EWT + held-out Python, 60k
characters each), then fits every probe a diff fits on A (each concept at each block, the
same example split and caps) once with LinearProbe and once with sklearn, and prints the
largest accuracy difference and the total time of each.

``--stage DIR`` times the diff's whole probe stage (``ProbePair.fit`` with the diff's
settings) on the two caches of a diff folder (``DIR/cache/a.h5``, ``b.h5``; when DIR has
none, the default ``lensbias diff`` without SAE is run into it first), once with lensbias'
batched solver and once with one converged scikit-learn ``LogisticRegression`` per probe
(``ProbeConfig(solver="sklearn")``), interleaved ``--repeats`` times (best of each), and
prints both times and, over every row, the largest difference of each accuracy, of the
chosen C and of the cosines.

``--grid-scores DIR`` shows how one concept's C is chosen at one hook of that diff, for A and
for B: the validation tokens each C gets right and the validation log-loss (which picks C)
with lensbias' solver (the grid as one batch, tolerance 1e-4), with sklearn at its default tolerance 1e-4, and with sklearn at 1e-8
(the exact optimum, for practical purposes). ``--eigh`` times one d x d symmetric
eigendecomposition (the probes' preconditioner) in float64 and in float32.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from lensbias.probes.fast import LinearProbe
from lensbias.probes.linear import grouped_split


def planted(n: int, d: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Activations with k class means planted in a 32-dim subspace, anisotropic noise,
    a large shared offset, Zipf-like class frequencies; groups of 20 tokens as examples."""
    rng = np.random.default_rng(seed)
    freq = 1.0 / np.arange(1, k + 1)
    y = rng.choice(k, size=n, p=freq / freq.sum())
    basis = np.linalg.qr(rng.normal(size=(d, 32)))[0]
    means = rng.normal(size=(k, 32)) @ basis.T * 0.35
    scales = np.exp(rng.normal(scale=0.7, size=d))
    X = means[y] + rng.normal(size=(n, d)) * scales + 3.0 * rng.normal(size=d)
    return X.astype(np.float32), y, np.arange(n) // 20


def from_cache(path: str, hook: str, concept: str, n: int) -> tuple[np.ndarray, ...]:
    from lensbias.store import ActivationStore

    with ActivationStore(path) as store:
        labels = store.labels(concept)
        rows = np.flatnonzero(labels >= 0)[:n]
        return store.activations(hook, rows), labels[rows], store.tokens()["example"][rows]


def timed(make, X_train, y_train, X_test, y_test, repeats):
    best, model = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        model = make().fit(X_train, y_train)
        best = min(best, time.perf_counter() - start)
    return float(model.score(X_test, y_test)), best


def sweep(max_chars: int, max_iter: int, C: float) -> None:
    import tempfile
    from pathlib import Path

    from lensbias.models import load_model
    from lensbias.model_pair import merged_dataset
    from lensbias.probes.pair import ProbeConfig, _concepts, select_tokens
    from lensbias.store import ActivationStore, CacheConfig, cache_activations

    lm = load_model("tiny-mixed")
    data = merged_dataset(["ud-ewt", "python-stdlib"], None, max_chars)
    cfg = ProbeConfig(C=C, max_iter=max_iter)
    with tempfile.TemporaryDirectory() as tmp:
        path = cache_activations(lm, data, Path(tmp) / "a.h5", CacheConfig(dtype="float16"))
        with ActivationStore(path) as store:
            groups = store.tokens()["example"].astype(np.int64)
            test = grouped_split(groups, cfg.test_fraction, seed=cfg.seed)
            print(f"probe sweep on tiny-mixed, {store.n_tokens} tokens, {len(store.hooks)} hooks;"
                  f" C={C}, max_iter={max_iter}, 1 thread")
            print(f"{'concept':<16}{'hook':<26}{'train':>6}{'ours':>8}{'sklearn':>9}"
                  f"{'diff pt':>8}")
            t_ours = t_ref = 0.0
            diffs = []
            for hook in store.hooks:
                acts = store.activations(hook).astype(np.float32)
                for concept in _concepts(store, cfg):
                    y = store.labels(concept)
                    tr, te = select_tokens(y, groups, test, cfg)
                    if len(np.unique(y[tr])) < 2 or not len(te):
                        continue
                    start = time.perf_counter()
                    ours = LinearProbe(C=C, max_iter=max_iter).fit(acts[tr], y[tr])
                    t_ours += time.perf_counter() - start
                    start = time.perf_counter()
                    ref = make_pipeline(StandardScaler(), LogisticRegression(
                        C=C, max_iter=max_iter)).fit(acts[tr], y[tr])
                    t_ref += time.perf_counter() - start
                    a, b = ours.score(acts[te], y[te]), float(ref.score(acts[te], y[te]))
                    diffs.append(100 * (a - b))
                    print(f"{concept:<16}{hook:<26}{len(tr):>6}{a:>8.4f}{b:>9.4f}"
                          f"{100 * (a - b):>+8.2f}")
    print(f"{len(diffs)} probes: largest |difference| {max(abs(d) for d in diffs):.2f} points, "
          f"mean {np.mean(diffs):+.2f}; LinearProbe {t_ours:.1f} s, sklearn {t_ref:.1f} s "
          f"({t_ref / t_ours:.1f}x)")


STAGE_ACCURACIES = ("acc_a", "retrained", "transfer", "aligned_transfer", "embed", "control_a",
                    "control_b")
STAGE_COSINES = ("cos_probe", "ceiling_probe", "cos_probe_halves")


def stage(folder: str, repeats: int) -> None:
    import os
    from collections import Counter
    from pathlib import Path

    from lensbias.probes.pair import ProbeConfig, ProbePair
    from lensbias.store import ActivationStore

    cache = Path(folder) / "cache"
    if not (cache / "a.h5").exists():
        from lensbias.compress import CalibConfig, Recipe
        from lensbias.diff import DiffConfig, run_diff

        print(f"no caches in {folder}: running the default diff (no SAE) into it first")
        run_diff("tiny-mixed", None, Recipe("wanda", {"sparsity": 0.5}, calib=CalibConfig("code")),
                 DiffConfig(sae=False), Path(folder), force=True)
    with ActivationStore(cache / "a.h5") as a, ActivationStore(cache / "b.h5") as b:
        print(f"probe stage on {a.model_name} vs {b.model_name}: {a.n_tokens} tokens, "
              f"{len(a.hooks)} hooks; {torch.get_num_threads()} thread(s), load average "
              f"{os.getloadavg()[0]:.1f}")
        best: dict[str, float] = {}
        rows: dict[str, list] = {}
        fits: dict[str, int] = {}
        for _ in range(repeats):
            for solver in ("lbfgs", "sklearn"):
                start = time.perf_counter()
                # sklearn capped only far beyond where it converges (it needs up to ~600)
                cfg = ProbeConfig(solver=solver, max_iter=500 if solver == "lbfgs" else 5000)
                report = ProbePair(cfg).fit(a, b)
                best[solver] = min(best.get(solver, float("inf")), time.perf_counter() - start)
                rows[solver] = report.rows
                print(f"  {solver:<8} {time.perf_counter() - start:7.1f} s", flush=True)
    ours, ref = rows["lbfgs"], rows["sklearn"]
    print(f"{len(ours)} rows (concept x hook). Largest |difference| over rows, lensbias - "
          f"sklearn:")
    for key in STAGE_ACCURACIES + STAGE_COSINES:
        d = [(abs(getattr(x, key) - getattr(y, key)), f"{x.concept} at {x.hook}")
             for x, y in zip(ours, ref)]
        d = [v for v in d if v[0] == v[0]]
        unit, scale = ("points", 100) if key in STAGE_ACCURACIES else ("", 1)
        top = max(d) if d else None
        print(f"  {key:<18} {scale * top[0]:6.2f} {unit:<6} ({top[1]})" if top
              else f"  {key:<18} (none)")
    same_c = sum((x.C_a == y.C_a) + (x.C_b == y.C_b) for x, y in zip(ours, ref))
    print(f"  chosen C equal in {same_c} of {2 * len(ours)} probes; converged: lensbias "
          f"{sum(r.converged for r in ours)}, sklearn {sum(r.converged for r in ref)} of "
          f"{len(ours)} rows")
    counts = Counter(c for r in ours for c in (r.C_a, r.C_b))
    print(f"  chosen C (lensbias, A and B probes): "
          f"{', '.join(f'{c:g}: {n}' for c, n in sorted(counts.items()))}")
    print(f"probe stage: lensbias {best['lbfgs']:.1f} s, sklearn {best['sklearn']:.1f} s "
          f"({best['sklearn'] / best['lbfgs']:.2f}x faster)")


def grid_scores(folder: str, concept: str, hook: str) -> None:
    from pathlib import Path

    from lensbias.probes.batched import Problem
    from lensbias.probes.fast import fit_batch
    from lensbias.probes.pair import (ProbeConfig, _same_tokens, document_ids, grid_split,
                                      one_se_choice, select_tokens)
    from lensbias.store import ActivationStore

    cfg = ProbeConfig()
    cache = Path(folder) / "cache"
    with ActivationStore(cache / "a.h5") as a, ActivationStore(cache / "b.h5") as b:
        groups = _same_tokens(a, b)["example"].astype(np.int64)
        docs = document_ids(a, groups)
        test = grouped_split(docs, cfg.test_fraction, seed=cfg.seed)
        labels = a.labels(concept)
        tr, _ = select_tokens(labels, groups, test, cfg)
        for name, store in (("A", a), ("B", b)):
            X, y = store.activations(hook, tr), labels[tr]
            val = grid_split(y, docs[tr], cfg)
            if val is None:
                print(f"{name}: no C grid here (too few documents or classes)")
                continue
            grid = sorted(cfg.C_grid)
            fit = X[~val]
            ours = fit_batch([Problem(fit, y[~val], c) for c in grid], max_iter=cfg.max_iter,
                             tol=cfg.tol)
            scaler = StandardScaler().fit(fit)
            Xv, yv = X[val], y[val]
            rows = {"lensbias, tol 1e-4": ([int((p.predict(Xv) == yv).sum()) for p in ours],
                                           [p.token_log_losses(Xv, yv) for p in ours])}
            for tol in (1e-4, 1e-8):
                fitted = [LogisticRegression(C=c, tol=tol, max_iter=20000).fit(
                    scaler.transform(fit), y[~val]) for c in grid]
                Zv = scaler.transform(Xv)
                probs = [m.predict_proba(Zv) for m in fitted]
                rows[f"sklearn, tol {tol:g}"] = (
                    [int((m.predict(Zv) == yv).sum()) for m in fitted],
                    [-np.log(np.clip(p[np.arange(len(yv)), np.searchsorted(m.classes_, yv)],
                                     1e-15, None)) for m, p in zip(fitted, probs)])
            print(f"{name}: {concept} at {hook}, {int(val.sum())} validation tokens; at "
                  f"C = {grid}: tokens right (argmax: the rule before 2026-12-02), mean "
                  f"log-loss (argmin) and the one-SE choice (the rule C is chosen by):")
            for who, (counts, losses) in rows.items():
                means = [float(v.mean()) for v in losses]
                best = int(np.argmin(means))
                se = float(losses[best].std(ddof=1) / np.sqrt(len(losses[best])))
                print(f"  {who:<20} right {counts} -> C = {grid[int(np.argmax(counts))]}; "
                      f"log-loss [{', '.join(f'{v:.5f}' for v in means)}] -> C = "
                      f"{grid[best]}; one SE {se:.5f} -> C = {grid[one_se_choice(losses)]}")


def eigh_cost(widths: list[int]) -> None:
    rng = np.random.default_rng(0)
    print(f"{'d':>6} {'float64 s':>10} {'float32 s':>10}")
    for d in widths:
        a = torch.from_numpy(rng.normal(size=(d, d)))
        cov = a @ a.T / d
        took = []
        for dtype in (torch.float64, torch.float32):
            x = cov.to(dtype)
            torch.linalg.eigh(x)                     # warm-up
            start = time.perf_counter()
            torch.linalg.eigh(x)
            took.append(time.perf_counter() - start)
        print(f"{d:>6} {took[0]:>10.3f} {took[1]:>10.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10667, help="tokens (3/4 train by group)")
    parser.add_argument("--d", type=int, default=256)
    parser.add_argument("--classes", type=int, default=17)
    parser.add_argument("--C", type=float, default=1.0)
    parser.add_argument("--max-iter", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2, help="best of this many fits")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", help="an activation cache to read instead of synthetic data")
    parser.add_argument("--hook")
    parser.add_argument("--concept")
    parser.add_argument("--sweep", action="store_true", help="every probe of a diff, both ways")
    parser.add_argument("--max-chars", type=int, default=60_000, help="--sweep: data per domain")
    parser.add_argument("--stage", metavar="DIR", help="the diff's probe stage on DIR/cache, "
                        "batched vs sklearn")
    parser.add_argument("--grid-scores", metavar="DIR", help="one concept's C choice at one "
                        "hook of DIR/cache (with --concept, --hook), lensbias and sklearn")
    parser.add_argument("--eigh", metavar="WIDTHS", help="time d x d eigendecompositions, "
                        "float64 and float32, e.g. 512,1024,2048")
    args = parser.parse_args([a for a in sys.argv[1:] if not a.startswith("bench_")])
    torch.set_num_threads(args.threads)
    try:
        from threadpoolctl import threadpool_limits
        threadpool_limits(args.threads)
    except ImportError:
        pass
    if args.sweep:
        sweep(args.max_chars, args.max_iter, args.C)
        return
    if args.stage:
        stage(args.stage, args.repeats)
        return
    if args.grid_scores:
        grid_scores(args.grid_scores, args.concept, args.hook)
        return
    if args.eigh:
        eigh_cost([int(w) for w in args.eigh.split(",")])
        return
    if args.cache:
        X, y, groups = from_cache(args.cache, args.hook, args.concept, args.n)
    else:
        X, y, groups = planted(args.n, args.d, args.classes, args.seed)
    test = grouped_split(groups, seed=args.seed)
    data = (X[~test], y[~test], X[test], y[test])
    print(f"{(~test).sum()} train x {X.shape[1]} features, {len(np.unique(y))} classes, "
          f"{test.sum()} test; {args.threads} thread(s), C={args.C}, max_iter={args.max_iter}")
    ours = timed(lambda: LinearProbe(C=args.C, max_iter=args.max_iter), *data, args.repeats)
    ref = timed(lambda: make_pipeline(StandardScaler(), LogisticRegression(
        C=args.C, max_iter=args.max_iter)), *data, args.repeats)
    print(f"{'estimator':<34} {'accuracy':>9} {'seconds':>8}")
    print(f"{'lensbias LinearProbe (torch)':<34} {ours[0]:>9.4f} {ours[1]:>8.3f}")
    print(f"{'sklearn LogisticRegression(lbfgs)':<34} {ref[0]:>9.4f} {ref[1]:>8.3f}")
    print(f"accuracy difference {100 * (ours[0] - ref[0]):+.2f} points; "
          f"LinearProbe is {ref[1] / ours[1]:.1f}x faster")


if __name__ == "__main__":
    main()
