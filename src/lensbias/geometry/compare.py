"""Geometry, stage 2: compare the representation geometry of model A and compressed B
per hook and domain, streaming over two aligned activation caches, plus CKA(A, B).

One pass per hook: moments of A and B, their cross moments, a seeded row sample, and the
Compression Hacking metrics of every example (one sample = one example's tokens in the domain,
as the paper computes them per sentence), averaged. Nothing larger than a batch (plus the
examples waiting to be measured, a bounded queue) is held.

Device: ``GeometryConfig.device`` (default ``cpu``) is where the math runs, on the same code
path everywhere: each batch is moved there once (float32 on the wire) and the moments, cross
moments and covariance spectra (one float64 eigendecomposition per domain and model, shared
by IsoScore, effective rank and matrix entropy), the anisotropy sample's cosines and the
Compression Hacking spectra (examples queued and decomposed in batches) are computed there
(``geometry.metrics``); the report holds Python floats as before.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from lensbias import device_math as dm
from lensbias.errors import LensbiasError
from lensbias.geometry import metrics as m
from lensbias.store.reader import ActivationStore

DOMAIN_LABEL_SET = "domain"
DOMAINS = ("all", "code", "prose")
METRICS = ("anisotropy", "anisotropy_z", "top1_share", "top3_share", "isoscore",
           "effective_rank", "matrix_entropy", *m.CH_METRICS, "twonn")
"""Metric names, in report order (``twonn`` is NaN unless ``GeometryConfig.twonn``). The
``ch_*`` ones are Compression Hacking's, per example and averaged (``metrics.SampleMeans``);
before they were one pooled covariance's and named DE, SE, anisotropy_k, semantic_cv,
razored_de."""


@dataclass(frozen=True)
class GeometryConfig:
    """How much to read and sample."""

    n_pairs: int = 5000
    """Random token pairs for cosine anisotropy (drawn within a row sample of 2·n_pairs)."""
    max_tokens: int | None = None
    """Use a seeded random subset of this many stored rows (same rows for A and B); None = all."""
    k: int = 4
    """K of Compression Hacking's anisotropy_K."""
    seed: int = 0
    batch_tokens: int = 8192
    """Rows read at a time."""
    min_tokens: int = 32
    """Domains with fewer tokens are skipped."""
    twonn: bool = False
    """Also estimate TwoNN intrinsic dimension on up to 2000 sampled rows (O(2000²·d))."""
    hooks: tuple[str, ...] | None = None
    """Hooks to measure (None: every hook either store holds)."""
    ch_tokens: int = 64
    """Compression Hacking's sample: the first this many tokens of each example in the domain
    (the paper truncates every sentence to 64 tokens)."""
    device: str = "cpu"
    """Torch device the moments, spectra, CKA, anisotropy and Compression Hacking metrics are
    computed on (float64 there; float32 on MPS); results are Python floats."""

    def __post_init__(self) -> None:
        if (self.n_pairs < 1 or self.batch_tokens < 1 or self.k < 1 or self.min_tokens < 2
                or self.ch_tokens < 2):
            raise ValueError("n_pairs, batch_tokens, k must be >= 1 and min_tokens, ch_tokens >= 2")
        if self.max_tokens is not None and self.max_tokens < 2:
            raise ValueError(f"max_tokens must be >= 2, got {self.max_tokens}")


@dataclass(frozen=True)
class GeometryRow:
    """The metrics of one model's activations at one hook on one domain."""

    hook: str
    layer: int | None
    domain: str
    model: str
    """'A' (original) or 'B' (compressed)."""
    n_tokens: int
    metrics: dict[str, float]


@dataclass(frozen=True)
class CkaRow:
    """Linear CKA between A's and B's activations at one hook on one domain's tokens."""

    hook: str
    layer: int | None
    domain: str
    n_tokens: int
    cka: float


@dataclass(frozen=True)
class GeometryReport:
    """Per-hook, per-domain geometry of A and B, and CKA(A, B) on hooks both caches hold."""

    model_a: str
    model_b: str
    dataset: str
    config: GeometryConfig
    rows: list[GeometryRow] = field(default_factory=list)
    cka: list[CkaRow] = field(default_factory=list)

    def get(self, hook: str, domain: str, model: str) -> GeometryRow | None:
        for row in self.rows:
            if (row.hook, row.domain, row.model) == (hook, domain, model):
                return row
        return None

    def changes(self) -> dict[tuple[str, str], dict[str, float]]:
        """B − A of every metric, per (hook, domain) both models have."""
        out = {}
        for a in self.rows:
            if a.model != "A":
                continue
            b = self.get(a.hook, a.domain, "B")
            if b is not None:
                out[(a.hook, a.domain)] = {k: b.metrics.get(k, math.nan) - v
                                           for k, v in a.metrics.items()}
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{"model_a", "model_b", "dataset", "config", "metrics": [names],
        "rows": [{hook, layer, domain, model, n_tokens, <metric>: float|null, ...}],
        "cka": [{hook, layer, domain, n_tokens, cka}]}`` (NaN written as null)."""
        return {"model_a": self.model_a, "model_b": self.model_b, "dataset": self.dataset,
                "config": asdict(self.config), "metrics": list(METRICS),
                "rows": [{"hook": r.hook, "layer": r.layer, "domain": r.domain,
                          "model": r.model, "n_tokens": r.n_tokens,
                          **{k: _json(v) for k, v in r.metrics.items()}} for r in self.rows],
                "cka": [{"hook": c.hook, "layer": c.layer, "domain": c.domain,
                         "n_tokens": c.n_tokens, "cka": _json(c.cka)} for c in self.cka]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GeometryReport:
        ids = ("hook", "layer", "domain", "model", "n_tokens")
        rows = [GeometryRow(r["hook"], r["layer"], r["domain"], r["model"], int(r["n_tokens"]),
                            {k: _unjson(v) for k, v in r.items() if k not in ids})
                for r in data["rows"]]
        cka = [CkaRow(c["hook"], c["layer"], c["domain"], int(c["n_tokens"]), _unjson(c["cka"]))
               for c in data["cka"]]
        return cls(data["model_a"], data["model_b"], data["dataset"],
                   GeometryConfig(**data["config"]), rows, cka)


def _json(v: float) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


def _unjson(v: float | None) -> float:
    return math.nan if v is None else float(v)


def layer_of(hook: str) -> int | None:
    """The block index in ``blocks.{l}.…``, or None for hooks outside the blocks."""
    found = re.match(r"blocks\.(\d+)\.", hook)
    return int(found.group(1)) if found else None


def compare_geometry(store_a: ActivationStore, store_b: ActivationStore,
                     config: GeometryConfig = GeometryConfig()) -> GeometryReport:
    """Geometry of A and B per hook and domain ('all', 'code', 'prose' by the ``domain``
    label; domains under ``config.min_tokens`` tokens skipped) and CKA(A, B) on common hooks.

    Both caches must hold the same tokens (same dataset and tokenization); hooks held by
    only one cache get that model's rows only.
    """
    _check_aligned(store_a, store_b)
    device = dm.resolve(config.device)
    domains = _domain_masks(store_a, config)
    examples = np.asarray(store_a.tokens()["example"], np.int64)
    report = GeometryReport(store_a.model_name, store_b.model_name, store_a.dataset_name, config)
    order = store_a.hooks + [h for h in store_b.hooks if h not in store_a.hooks]
    if config.hooks is not None:
        order = [h for h in order if h in config.hooks]
    for hook in order:
        stores = {name: s for name, s in (("A", store_a), ("B", store_b)) if hook in s.hooks}
        _compare_hook(hook, stores, domains, examples, config, report, device)
    return report


def _check_aligned(a: ActivationStore, b: ActivationStore) -> None:
    ta, tb = a.tokens(), b.tokens()
    if a.n_tokens != b.n_tokens or not all(np.array_equal(ta[k], tb[k])
                                           for k in ("ids", "example", "position")):
        raise LensbiasError(f"caches {a.path} and {b.path} hold different tokens (another "
                            "dataset, tokenizer or window); cache both models on the same data")


def _domain_masks(store: ActivationStore, config: GeometryConfig) -> dict[str, np.ndarray]:
    """Boolean row mask of every domain with enough tokens, within the ``max_tokens`` subset."""
    n = store.n_tokens
    chosen = np.ones(n, bool)
    if config.max_tokens is not None and config.max_tokens < n:
        chosen[:] = False
        rng = np.random.default_rng(config.seed)
        chosen[rng.choice(n, config.max_tokens, replace=False)] = True
    masks = {"all": chosen}
    if DOMAIN_LABEL_SET in store.label_sets:
        labels = store.labels(DOMAIN_LABEL_SET)
        for index, name in enumerate(store.classes(DOMAIN_LABEL_SET)):
            masks[name] = chosen & (labels == index)
    return {d: mask for d, mask in masks.items() if mask.sum() >= config.min_tokens}


def _sample_rows(mask: np.ndarray, size: int, seed: int) -> np.ndarray:
    rows = np.flatnonzero(mask)
    if len(rows) <= size:
        return rows
    return np.sort(np.random.default_rng(seed).choice(rows, size, replace=False))


def _batches(stores: dict[str, ActivationStore], hook: str, batch_tokens: int
             ) -> Any:
    """``(start, {model: [b, d] float32})`` for consecutive row ranges of every store."""
    n = next(iter(stores.values())).n_tokens
    for start in range(0, n, batch_tokens):
        rows = slice(start, min(start + batch_tokens, n))
        yield start, {name: s.activations(hook, rows) for name, s in stores.items()}


class _SampleQueue:
    """Compression Hacking samples of one hook waiting to be measured, decomposed in batches
    on the device once ``max_values`` numbers are waiting (and at the end, ``flush``).
    Results are kept by key (model, rows): a sample of the same rows (a prose example in
    'all' and in 'prose') is measured once."""

    def __init__(self, k: int, device: torch.device, max_values: int = 1 << 24):
        self.k, self.device, self.max_values = k, device, max_values
        self.pending: dict[tuple[str, bytes], np.ndarray] = {}
        self.done: dict[tuple[str, bytes], dict[str, float]] = {}
        self.size = 0

    def submit(self, key: tuple[str, bytes], tokens: np.ndarray) -> None:
        if key in self.done or key in self.pending:
            return
        self.pending[key] = tokens
        self.size += tokens.size
        if self.size >= self.max_values:
            self.flush()

    def flush(self) -> None:
        by_width: dict[int, list[tuple[str, bytes]]] = {}
        for key, tokens in self.pending.items():
            by_width.setdefault(tokens.shape[1], []).append(key)
        for keys in by_width.values():
            values = m.compression_metrics_batch([self.pending[key] for key in keys], self.k,
                                                 self.device)
            self.done.update(zip(keys, values))
        self.pending.clear()
        self.size = 0


class _PerExample:
    """Gathers the first ``cap`` rows of each example in one domain (they may span batches)
    and hands every complete sample (2+ rows) to the hook's ``_SampleQueue``, remembering
    the order; ``means`` averages them per model in that order."""

    def __init__(self, examples: np.ndarray, mask: np.ndarray, names: list[str], cap: int,
                 queue: _SampleQueue):
        rows = np.flatnonzero(mask)
        order = np.argsort(examples[rows], kind="stable")
        ex, first = np.unique(examples[rows][order], return_index=True)
        bounds = list(first[1:]) + [len(rows)]
        self.left: dict[int, int] = {}
        self.key: dict[int, bytes] = {}
        for e, a, b in zip(ex.tolist(), first.tolist(), bounds):
            chosen = rows[order[a:min(b, a + cap)]]
            self.left[e], self.key[e] = len(chosen), chosen.astype(np.int64).tobytes()
        self.parts: dict[int, dict[str, list[np.ndarray]]] = {}
        self.keys: dict[str, list[tuple[str, bytes]]] = {name: [] for name in names}
        self.queue = queue

    def add(self, example_ids: np.ndarray, rows: dict[str, np.ndarray]) -> None:
        for ex in np.unique(example_ids).tolist():
            if not self.left.get(ex):
                continue
            at = np.flatnonzero(example_ids == ex)[:self.left[ex]]
            parts = self.parts.setdefault(ex, {name: [] for name in rows})
            for name, x in rows.items():
                parts[name].append(x[at])
            self.left[ex] -= len(at)
            if self.left[ex] == 0:
                for name, chunks in self.parts.pop(ex).items():
                    tokens = np.concatenate(chunks)
                    if len(tokens) >= 2:
                        key = (name, self.key[ex])
                        self.queue.submit(key, tokens)
                        self.keys[name].append(key)

    def means(self, name: str) -> m.SampleMeans:
        """The averaged metrics of model ``name``'s samples (after ``queue.flush``)."""
        out = m.SampleMeans(self.queue.k, self.queue.device)
        for key in self.keys[name]:
            out.add_values(self.queue.done[key])
        return out


def _compare_hook(hook: str, stores: dict[str, ActivationStore], domains: dict[str, np.ndarray],
                  examples: np.ndarray, config: GeometryConfig, report: GeometryReport,
                  device: torch.device) -> None:
    dims = {name: s.d(hook) for name, s in stores.items()}
    paired = len(stores) == 2
    moments: dict[tuple[str, str], m.Moments] = {}
    cross: dict[str, m.CrossMoments] = {}
    for domain in domains:
        if paired:
            cross[domain] = m.CrossMoments(dims["A"], dims["B"], device)
            moments[(domain, "A")], moments[(domain, "B")] = cross[domain].x, cross[domain].y
        else:
            for name in stores:
                moments[(domain, name)] = m.Moments(dims[name], device)
    samples = {d: _sample_rows(mask, 2 * config.n_pairs, config.seed) for d, mask in domains.items()}
    picked: dict[tuple[str, str], list[np.ndarray]] = {(d, s): [] for d in domains for s in stores}
    queue = _SampleQueue(config.k, device)
    per_example = {d: _PerExample(examples, mask, list(stores), config.ch_tokens, queue)
                   for d, mask in domains.items()}

    # one pass: moments, cross moments, row samples, per-example Compression Hacking metrics
    for start, acts in _batches(stores, hook, config.batch_tokens):
        stop = start + len(next(iter(acts.values())))
        on_device = {name: dm.to_device(a, device) for name, a in acts.items()}
        for domain, mask in domains.items():
            local = np.flatnonzero(mask[start:stop])
            if not len(local):
                continue
            at = torch.from_numpy(local).to(device)
            rows = {name: a[at] for name, a in on_device.items()}
            if paired:
                cross[domain].update(rows["A"], rows["B"])
            else:
                for name, x in rows.items():
                    moments[(domain, name)].update(x)
            per_example[domain].add(examples[start + local],
                                    {name: a[local] for name, a in acts.items()})
            sample = samples[domain]
            in_batch = sample[(sample >= start) & (sample < stop)] - start
            for name, a in acts.items():
                picked[(domain, name)].append(a[in_batch])
    queue.flush()

    layer = layer_of(hook)
    for domain in domains:
        for name in stores:
            key = (domain, name)
            sample = np.concatenate(picked[key]) if picked[key] else np.zeros((0, dims[name]))
            values = _metrics(moments[key], per_example[domain].means(name), sample, config,
                              device)
            report.rows.append(GeometryRow(hook, layer, domain, name, moments[key].n, values))
        if paired:
            report.cka.append(CkaRow(hook, layer, domain, cross[domain].n, cross[domain].cka()))


def _metrics(mo: m.Moments, ch: m.SampleMeans, sample: np.ndarray, config: GeometryConfig,
             device: torch.device) -> dict[str, float]:
    """One model's metrics on one domain; the covariance stays on the device, decomposed
    once for IsoScore, effective rank and matrix entropy."""
    cov = mo.cov_tensor()
    variances = torch.clamp(cov.diagonal(), min=0)
    spectrum = m.spectrum(cov, device)
    out = {"anisotropy": m.anisotropy(sample, config.n_pairs, config.seed, device),
           "anisotropy_z": m.anisotropy_zscored(sample, config.n_pairs, config.seed,
                                                mean=mo.mean_tensor(),
                                                std=torch.sqrt(variances), device=device),
           "top1_share": m.top_variance_share(variances, 1),
           "top3_share": m.top_variance_share(variances, 3),
           "isoscore": m.isoscore_from_variances(spectrum),
           "effective_rank": m.effective_rank_from_spectrum(spectrum),
           "matrix_entropy": m.matrix_entropy_from_spectrum(spectrum)}
    out.update(ch.result())
    out["twonn"] = (m.twonn_dimension(sample, seed=config.seed, device=device) if config.twonn
                    else math.nan)
    return {k: float(out[k]) for k in METRICS}


def track_losses(report: GeometryReport, losses: dict[tuple[str, str], float]
                 ) -> dict[str, float]:
    """Spearman ρ, per metric, between B − A changes and concept losses over the
    (hook, domain) keys both have; NaN where fewer than 3 keys or a constant side."""
    from scipy.stats import spearmanr

    changes = report.changes()
    keys = [k for k in changes if k in losses and math.isfinite(losses[k])]
    loss = np.asarray([losses[k] for k in keys], np.float64)
    out = {}
    for metric in METRICS:
        delta = np.asarray([changes[k].get(metric, math.nan) for k in keys], np.float64)
        ok = np.isfinite(delta)
        if ok.sum() < 3 or np.ptp(delta[ok]) == 0 or np.ptp(loss[ok]) == 0:
            out[metric] = math.nan
        else:
            out[metric] = float(spearmanr(delta[ok], loss[ok]).statistic)
    return out
