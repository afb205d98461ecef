"""Benchmark: every concept's floors on each built-in model (the table in docs/concepts.md).

For each model × dataset, caches the embedding stream (``blocks.0.hook_resid_pre``) and the
output of every block, splits the documents (``doc`` for UD, ``file`` for code) 75/25 with
a fixed seed, and for each token-level concept prints, on the held-out documents:

- ``majority``: the most frequent training class;
- ``token_id``: ``TokenIdLookup`` (most frequent training label per token id);
- ``embed``: a ``LinearProbe`` on ``blocks.0.hook_resid_pre``;
- ``probe``: a ``LinearProbe`` at the best block, the block chosen by accuracy on a
  validation quarter of the training documents (never on the test documents);
- ``gain`` = probe − max(floors) with a 95% bootstrap interval over test documents, and
  ``kind``: "token identity" when gain ≤ 0.01 or the interval's lower bound ≤ 0, else
  "contextual".

Floors and probes are fitted on exactly the same tokens: the training documents minus the
validation quarter (at most ``--max-train`` labelled tokens before that quarter is taken
out, as whole documents in a seeded order). Every probe uses ``C`` = 1 (``--C``) and up to
100 L-BFGS iterations (``--max-iter``, LinearProbe's default); classes with fewer than 20 training tokens are dropped.

    python -m benchmarks bench_concepts                      # every built-in model, slices
    python benchmarks/bench_concepts.py --models tiny-mixed --datasets ud-ewt
    python benchmarks/bench_concepts.py --markdown docs/concepts-floors.md

Slices (``--slice``, the default, keeps a run within minutes on 2 cores): the first
sentence of every EWT document (634), the first 8 sentences of every GUM document (416),
the first 80 python-stdlib chunks (52 files) and the first 60 c-headers chunks; ``--full``
uses every example. Every model is probed at ``blocks.N.hook_resid_post`` (MiniLM too: for
its post-LN blocks that stream, before the LayerNorm, read better than
``hook_normalized_resid_post`` on these concepts).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lensbias.concepts.registry import load_dataset
from lensbias.concepts.schema import ConceptDataset
from lensbias.models import load_model
from lensbias.probes.fast import LinearProbe
from lensbias.probes.floors import EMBED_HOOK, TokenIdLookup
from lensbias.probes.linear import grouped_split
from lensbias.store import ActivationStore, CacheConfig, cache_activations

MODELS = ("tiny-mixed", "tiny-code", "tiny-prose", "all-MiniLM-L6-v2")
DATASETS = ("ud-ewt", "ud-gum", "python-stdlib", "c-headers")
NEW = frozenset({"head_direction", "head_distance", "subj_obj", "entity_type", "infstat",
                 "bracket_depth", "in_call_args", "name_seen_before"})
SKIP = frozenset({"freq_bucket"})
MIN_CLASS = 20
MARGIN = 0.01
PER_DOC = {"ud-ewt": 1, "ud-gum": 8}
FIRST = {"python-stdlib": 80, "c-headers": 60}


def sliced(name: str, full: bool) -> ConceptDataset:
    """The dataset, or its fixed slice (module docstring)."""
    data = load_dataset(name)
    if full:
        return data
    if name in FIRST:
        return load_dataset(name, max_examples=FIRST[name])
    taken: dict[str, int] = {}
    kept = []
    for example in data.examples:
        doc = example.seq_labels["doc"]
        if taken.get(doc, 0) < PER_DOC.get(name, 1):
            taken[doc] = taken.get(doc, 0) + 1
            kept.append(example)
    return ConceptDataset(f"{name}-slice", tuple(kept), data.source)


@dataclass(frozen=True)
class Row:
    model: str
    dataset: str
    concept: str
    n_train: int
    n_test: int
    majority: float
    token_id: float
    embed: float
    probe: float
    best_hook: str
    gain: float
    gain_ci: tuple[float, float]

    @property
    def kind(self) -> str:
        contextual = self.gain > MARGIN and self.gain_ci[0] > 0
        return "contextual" if contextual else "token identity"


def doc_bootstrap(correct: dict[str, np.ndarray], docs: np.ndarray, n: int = 1000,
                  seed: int = 0) -> dict[str, np.ndarray]:
    """Accuracy of each predictor in ``n`` resamples of the test documents."""
    uniq, inverse = np.unique(docs, return_inverse=True)
    counts = np.bincount(inverse, minlength=len(uniq)).astype(np.float64)
    per_doc = {k: np.bincount(inverse, weights=v.astype(np.float64), minlength=len(uniq))
               for k, v in correct.items()}
    rng = np.random.default_rng(seed)
    weights = rng.multinomial(len(uniq), np.full(len(uniq), 1 / len(uniq)), size=n)
    total = weights @ counts
    return {k: (weights @ v) / total for k, v in per_doc.items()}


def measure(store: ActivationStore, concept: str, hooks: list[str], doc_label: str,
            max_train: int, C: float, max_iter: int, seed: int = 0) -> dict | None:
    """Floors and best-block probe of one concept in one store (None: too few labels)."""
    labels = store.labels(concept)
    docs = store.labels(doc_label)
    ids = store.tokens()["ids"].astype(np.int64)
    test = grouped_split(docs, 0.25, seed=seed)  # whole documents on each side
    rng = np.random.default_rng(seed)
    train_rows, total = [], 0
    for doc in rng.permutation(np.unique(docs[~test])):  # whole documents up to max_train
        rows = np.flatnonzero((docs == doc) & (labels >= 0))
        if total and total + len(rows) > max_train:
            continue
        train_rows.append(rows)
        total += len(rows)
    tr = np.sort(np.concatenate(train_rows)) if train_rows else np.zeros(0, np.int64)
    values, counts = np.unique(labels[tr], return_counts=True)
    kept = values[counts >= MIN_CLASS]
    if len(kept) < 2:
        return None
    tr = tr[np.isin(labels[tr], kept)]
    val = grouped_split(docs[tr], 0.25, seed=seed + 7)  # picks the block, never the test
    fit, va = tr[~val], tr[val]
    te = np.flatnonzero(test & np.isin(labels, kept))
    if len(te) == 0 or len(np.unique(labels[fit])) < 2:
        return None
    y_fit = labels[fit]
    fit_values, fit_counts = np.unique(y_fit, return_counts=True)
    correct = {"majority": labels[te] == fit_values[np.argmax(fit_counts)],
               "token_id": TokenIdLookup().fit(ids[fit], y_fit).predict(ids[te]) == labels[te]}
    rows = np.concatenate([fit, va, te])
    order = np.argsort(rows)
    scored = {}
    for hook in [EMBED_HOOK] + hooks:
        X = np.empty((len(rows), store.d(hook)), np.float32)
        X[order] = store.activations(hook, rows[order])
        probe = LinearProbe(C=C, max_iter=max_iter).fit(X[:len(fit)], y_fit)
        predicted = probe.predict(X[len(fit):])
        scored[hook] = (float(np.mean(predicted[:len(va)] == labels[va])) if len(va) else 0.0,
                        predicted[len(va):] == labels[te])
    correct["embed"] = scored[EMBED_HOOK][1]
    best_hook = max(hooks, key=lambda h: scored[h][0])  # first block on ties
    correct["probe"] = scored[best_hook][1]
    boot = doc_bootstrap(correct, docs[te])
    floor_boot = np.max([boot["majority"], boot["token_id"], boot["embed"]], axis=0)
    gains = boot["probe"] - floor_boot
    acc = {k: float(v.mean()) for k, v in correct.items()}
    return {**acc, "n_train": len(fit), "n_test": len(te), "best_hook": best_hook,
            "gain": acc["probe"] - max(acc["majority"], acc["token_id"], acc["embed"]),
            "gain_ci": (float(np.percentile(gains, 2.5)), float(np.percentile(gains, 97.5)))}


def run(models: list[str], datasets: list[str], max_train: int, C: float, max_iter: int,
        folder: Path, concepts: list[str] | None = None, full: bool = False) -> list[Row]:
    rows = []
    for model_name in models:
        lm = load_model(model_name)
        hooks = [f"blocks.{layer}.hook_resid_post" for layer in range(lm.model.cfg.n_layers)]
        for dataset_name in datasets:
            data = sliced(dataset_name, full)
            start = time.perf_counter()
            path = cache_activations(lm, data, folder / f"{model_name}--{dataset_name}.h5",
                                     CacheConfig(hooks=tuple([EMBED_HOOK] + hooks)))
            cached = time.perf_counter() - start
            doc_label = "doc" if dataset_name.startswith("ud-") else "file"
            with ActivationStore(path) as store:
                for concept in store.token_label_sets:
                    if concept in SKIP or (concepts and concept not in concepts):
                        continue
                    got = measure(store, concept, hooks, doc_label, max_train, C, max_iter)
                    if got is None:
                        continue
                    row = Row(model_name, dataset_name, concept, got["n_train"], got["n_test"],
                              got["majority"], got["token_id"], got["embed"], got["probe"],
                              got["best_hook"], got["gain"], got["gain_ci"])
                    rows.append(row)
                    print(format_row(row), flush=True)
            print(f"# {model_name} on {dataset_name}: cache {cached:.0f} s, total "
                  f"{time.perf_counter() - start:.0f} s", flush=True)
            path.unlink()
    return rows


def format_row(row: Row) -> str:
    low, high = row.gain_ci
    return (f"{row.model:17s} {row.dataset:13s} {row.concept:17s} maj {row.majority:.3f} "
            f"tok {row.token_id:.3f} emb {row.embed:.3f} probe {row.probe:.3f} "
            f"({row.best_hook.split('.hook')[0]}) gain {row.gain:+.3f} [{low:+.3f}, "
            f"{high:+.3f}] n={row.n_train}/{row.n_test} {row.kind}")


def markdown(rows: list[Row]) -> str:
    lines = ["| model | dataset | concept | test tokens | majority | token_id | embed | "
             "probe (block) | gain [95% CI] | kind |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for row in rows:
        name = f"**{row.concept}**" if row.concept in NEW else row.concept
        block = row.best_hook.split(".")[1]
        low, high = row.gain_ci
        lines.append(f"| {row.model} | {row.dataset} | {name} | {row.n_test:,} | "
                     f"{row.majority:.3f} | {row.token_id:.3f} | {row.embed:.3f} | "
                     f"{row.probe:.3f} ({block}) | {row.gain:+.3f} [{low:+.3f}, {high:+.3f}] | "
                     f"{row.kind} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS))
    parser.add_argument("--concepts", nargs="+", default=None, help="default: every one")
    parser.add_argument("--full", action="store_true", help="every example, not the slices")
    parser.add_argument("--max-train", type=int, default=8000)
    parser.add_argument("--C", type=float, default=1.0)
    parser.add_argument("--max-iter", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--markdown", type=Path, default=None,
                        help="also write the table as Markdown to this file")
    # under `python -m benchmarks NAME ...` the benchmark names are left over: ignore them
    args, _ = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as folder:
        rows = run(args.models, args.datasets, args.max_train, args.C, args.max_iter,
                   Path(folder), args.concepts, args.full)
    table = markdown(rows)
    if args.markdown:
        args.markdown.write_text(table, encoding="utf-8")
    print(table)


if __name__ == "__main__":
    main()
