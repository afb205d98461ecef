"""How lensbias' costs grow: caching and probe-fit time against tokens (tiny-mixed), and
geometry time against d_model (random-weight TransformerLens decoders of growing width),
each curve with its fitted log-log exponent so it can be extrapolated.

    python -m benchmarks bench_scaling                               # 5k/10k/20k tokens; d 128..768
    python benchmarks/bench_scaling.py --tokens 10000,20000,40000,80000 --widths 256,512,1024
    python benchmarks/bench_scaling.py --geometry-tokens 20000 --layers 4

time(x) ~ c * x^k: k is the slope of log time on log x (least squares). Caching is expected
near k = 1 in tokens (and ~2 in d_model for the forward pass); probe fits near 1 in tokens;
geometry per hook near 2 in d (moment updates, n x d^2) to 3 (eigen-decompositions, d^3).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

try:
    from benchmarks.bench_cache import _device_line, _load_line, _sync, repeated_dataset
except ImportError:  # run as a script: benchmarks/ itself is on sys.path
    from bench_cache import _device_line, _load_line, _sync, repeated_dataset

PROBE_HOOK = "blocks.2.hook_resid_post"


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of log y on log x."""
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def _best(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def tokens_curve(sizes: list[int], device: str, repeats: int, root: Path) -> None:
    from lensbias.models import load_model
    from lensbias.probes.fast import LinearProbe
    from lensbias.store import ActivationStore, CacheConfig, cache_activations

    lm = load_model("tiny-mixed", device=device)
    print(f"\ncaching (tiny-mixed, 4 hooks, float16, batch 16) and LinearProbe fit (upos at "
          f"{PROBE_HOOK}, C=1, max_iter 100) vs tokens of ud-ewt; best of {repeats}")
    print(f"{'tokens':>8}{'cache s':>9}{'tok/s':>8}{'probe rows':>11}{'probe s':>9}{'iters':>6}")
    got = []
    for n in sizes:
        dataset = repeated_dataset(lm, "ud-ewt", n)
        path = root / f"tok{n}.h5"

        def cache() -> None:
            path.unlink(missing_ok=True)
            cache_activations(lm, dataset, path, CacheConfig(device=device))
            _sync(device)
        t_cache = _best(cache, repeats)
        with ActivationStore(path) as store:
            X, y = store.load(PROBE_HOOK, "upos")
            stored = store.n_tokens
        probe = LinearProbe()
        t_probe = _best(lambda: probe.fit(X, y), repeats)
        got.append((stored, t_cache, len(y), t_probe))
        print(f"{stored:>8}{t_cache:>9.2f}{stored / t_cache:>8.0f}{len(y):>11}{t_probe:>9.2f}"
              f"{probe.n_iter_:>6}", flush=True)
        path.unlink(missing_ok=True)
    if len(got) > 1:
        print(f"exponent k (time ~ tokens^k): caching {slope([g[0] for g in got], [g[1] for g in got]):.2f}, "
              f"probe fit {slope([g[2] for g in got], [g[3] for g in got]):.2f}")


def _random_lm(width: int, layers: int, seed: int, like):
    """A LoadedModel: random-weight decoder of ``width`` with tiny-mixed's tokenizer."""
    from lensbias.models import LoadedModel, adapter

    cfg = {"n_layers": layers, "d_model": width, "n_heads": max(1, width // 64), "d_head": 64,
           "d_mlp": 4 * width, "d_vocab": like.model.cfg.d_vocab, "n_ctx": 256, "act_fn": "gelu",
           "normalization_type": "LN", "positional_embedding_type": "standard", "seed": seed,
           "default_prepend_bos": True}
    model = adapter.build_decoder(cfg)
    return LoadedModel(f"random-d{width}-s{seed}", model, like.tokenizer, "builtin")


def mixed_dataset(lm, n_tokens: int):
    """Half ud-ewt (prose), half python-stdlib (code), so geometry has all three domains."""
    from lensbias.concepts.schema import ConceptDataset

    prose = repeated_dataset(lm, "ud-ewt", n_tokens // 2)
    code = repeated_dataset(lm, "python-stdlib", n_tokens // 2)
    examples = prose.examples + tuple(replace(ex, id=f"py:{ex.id}") for ex in code.examples)
    return ConceptDataset(f"mixed{n_tokens}", examples, "ud-ewt + python-stdlib")


def width_curve(widths: list[int], n_tokens: int, layers: int, device: str, repeats: int,
                root: Path) -> None:
    from lensbias.geometry import metrics as m
    from lensbias.geometry.compare import GeometryConfig, compare_geometry
    from lensbias.models import load_model
    from lensbias.store import ActivationStore, CacheConfig, cache_activations

    base = load_model("tiny-mixed")
    dataset = mixed_dataset(base, n_tokens)
    print(f"\ngeometry vs d_model: two random-weight decoders per width ({layers} layers, "
          f"d_head 64, d_mlp 4d), cached on {dataset.name} (prose + code); "
          f"compare_geometry = all metrics x 3 domains x 2 models + CKA, per hook; best of {repeats}")
    print(f"{'d_model':>8}{'params M':>9}{'cache s':>9}{'compare s':>10}{'per hook':>9}"
          f"{'moments':>9}{'eig x4':>8}{'cka':>7}{'aniso':>7}")
    got = []
    for width in widths:
        stores = []
        for seed in (0, 1):
            lm = _random_lm(width, layers, seed, base)
            path = root / f"d{width}-{seed}.h5"
            start = time.perf_counter()
            cache_activations(lm, dataset, path, CacheConfig(device=device))
            _sync(device)
            t_cache = time.perf_counter() - start
            stores.append(path)
        params = sum(p.numel() for p in lm.model.parameters()) / 1e6
        with ActivationStore(stores[0]) as a, ActivationStore(stores[1]) as b:
            t_cmp = _best(lambda: compare_geometry(a, b, GeometryConfig()), repeats)
            x = a.activations(a.hooks[-1])
            y = b.activations(b.hooks[-1])
        mo = m.Moments(width)
        t_mom = _best(lambda: mo.update(x), repeats)
        cov = mo.cov
        t_eig = _best(lambda: (m.isoscore(cov=cov), m.effective_rank(cov=cov),
                               m.matrix_entropy(cov), m.pooled_compression_metrics(cov)), repeats)
        t_cka = _best(lambda: m.linear_cka(x, y), repeats)
        t_aniso = _best(lambda: m.anisotropy(x), repeats)
        got.append((width, t_cache, t_cmp / layers, t_mom, t_eig, t_cka))
        print(f"{width:>8}{params:>9.1f}{t_cache:>9.2f}{t_cmp:>10.2f}{t_cmp / layers:>9.2f}"
              f"{t_mom:>9.3f}{t_eig:>8.3f}{t_cka:>7.3f}{t_aniso:>7.3f}", flush=True)
        for p in stores:
            p.unlink(missing_ok=True)
    if len(got) > 1:
        ws = [g[0] for g in got]
        names = ["caching (one model)", "compare_geometry per hook", "Moments.update",
                 "4 spectral metrics", "linear_cka"]
        print("exponent k (time ~ d_model^k): " + ", ".join(
            f"{name} {slope(ws, [g[i + 1] for g in got]):.2f}" for i, name in enumerate(names)))
    print(f"({n_tokens} tokens per cache; Moments/eig/CKA/anisotropy on the last hook's "
          f"{len(x)} rows, float64)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", default="5000,10000,20000")
    parser.add_argument("--widths", default="128,256,512,768")
    parser.add_argument("--geometry-tokens", type=int, default=8000)
    parser.add_argument("--layers", type=int, default=2, help="layers of the random models")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    if argv is None:  # `python -m benchmarks bench_scaling` leaves the bench names in argv
        argv = [a for a in sys.argv[1:] if not a.startswith("bench_")]
    args = parser.parse_args(argv)
    import transformer_lens  # noqa: F401

    print(_device_line(args.device))
    print(_load_line() + " (before)")
    root = Path(tempfile.mkdtemp(prefix="bench_scaling-"))
    try:
        tokens_curve([int(s) for s in args.tokens.split(",")], args.device, args.repeats, root)
        width_curve([int(s) for s in args.widths.split(",")], args.geometry_tokens, args.layers,
                    args.device, args.repeats, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(_load_line() + " (after)")


if __name__ == "__main__":
    main()
