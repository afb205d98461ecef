"""Behaviour, stage 1: what compression costs in next-token loss, per stored token, and where
it lands: by token-frequency bucket, by domain and by every concept class of the cache.

Losses are computed on exactly the windows the cache was written with, so row i of
``token_losses`` belongs to row i of the activation cache.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float

from lensbias.compress.measure import HELD_OUT_SLICE, model_bits_per_byte
from lensbias.concepts.frequency import BUCKETS, FREQ_LABEL_SET
from lensbias.concepts.schema import ConceptDataset
from lensbias.errors import LensbiasError
from lensbias.models import LoadedModel, adapter
from lensbias.store import format as fmt
from lensbias.store.reader import ActivationStore
from lensbias.store.writer import length_batches, pad_windows, plan_windows

DOMAIN_LABEL_SET = "domain"


def token_losses(lm: LoadedModel, dataset: ConceptDataset, store: ActivationStore,
                 batch_size: int = 8) -> Float[np.ndarray, " tokens"]:
    """Next-token loss (nats) of every stored row of ``store`` under ``lm`` (a causal LM).

    Uses the cache's own windows (``plan_windows`` with its fingerprint's window): a token
    is predicted from its prefix within its window, the first text token from BOS. A token
    with nothing before it in its window (a tokenizer without BOS) gets NaN. Windows run in
    batches of similar length (``length_batches``, as the cache was written: ``batch_size``
    longest windows' worth of positions), so few positions are padding.
    """
    if lm.is_encoder:
        raise LensbiasError(f"behaviour needs a causal LM; {lm.name} is an encoder")
    if fmt.dataset_hash(dataset) != store.fingerprint.get("dataset_sha256"):
        raise LensbiasError(f"dataset {dataset.name} is not the dataset cached in {store.path}")
    windows, _ = plan_windows(lm, dataset, int(store.fingerprint["window"]))
    ids = np.asarray([w.ids[p] for w in windows for p in w.keep], np.int64)
    if len(ids) != store.n_tokens or not np.array_equal(ids, store.tokens()["ids"]):
        raise LensbiasError(f"{lm.name} tokenizes {dataset.name} differently from the model "
                            f"cached in {store.path}; behaviour needs the same tokenizer")
    device = next(lm.model.parameters()).device
    out = np.full(len(ids), np.nan, np.float64)
    starts = np.cumsum([0] + [len(w.keep) for w in windows])  # each window's first row
    longest = max((len(w.ids) for w in windows), default=1)
    for group in length_batches(windows, batch_size * longest):  # similar lengths: little
        batch = [windows[i] for i in group]  # padding; right padding is harmless (causal)
        tokens = pad_windows(batch, batch[0].ids[0])[0]
        rows = [(b, p) for b, w in enumerate(batch) for p in w.keep]
        at = np.concatenate([starts[i] + np.arange(len(windows[i].keep)) for i in group])
        scored = [i for i, (_, p) in enumerate(rows) if p > 0]
        if scored:
            logits = adapter.logits(lm.model, tokens.to(device))
            index_b = torch.tensor([rows[i][0] for i in scored])
            index_p = torch.tensor([rows[i][1] for i in scored])
            nats = F.cross_entropy(logits[index_b, index_p - 1].float().cpu(),
                                   tokens[index_b, index_p], reduction="none")
            out[at[scored]] = nats.double().numpy()  # rows at their own offsets
    return out


@dataclass(frozen=True)
class LossStats:
    """Mean next-token loss (nats) of A and B on a group of tokens, and B's extra loss."""

    n: int
    """Tokens with a loss in the group."""
    n_examples: int
    loss_a: float
    loss_b: float
    extra: float
    """loss_b − loss_a (mean over the group's tokens)."""
    ci: dict[str, tuple[float, float]] | None = None
    """95% bootstrap intervals over examples for 'loss_a', 'loss_b', 'extra' (by-bucket only)."""

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, "n_examples": self.n_examples, "loss_a": _json(self.loss_a),
                "loss_b": _json(self.loss_b), "extra": _json(self.extra),
                "ci": None if self.ci is None else
                {k: [_json(lo), _json(hi)] for k, (lo, hi) in self.ci.items()}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LossStats:
        ci = None if d.get("ci") is None else {k: (_unjson(v[0]), _unjson(v[1]))
                                               for k, v in d["ci"].items()}
        return cls(int(d["n"]), int(d["n_examples"]), _unjson(d["loss_a"]),
                   _unjson(d["loss_b"]), _unjson(d["extra"]), ci)


@dataclass(frozen=True)
class BehaviourReport:
    """Where B's extra loss lands, against A, on one cached dataset."""

    model_a: str
    model_b: str
    dataset: str
    bits_per_byte: dict[str, dict[str, float | None]] | None
    """``{"A": {"code": .., "prose": ..}, "B": {...}}`` on held-out text (None: not measured)."""
    overall: LossStats
    by_bucket: dict[str, LossStats] = field(default_factory=dict)
    """Token-frequency bucket (common/medium/rare/unseen) → stats with bootstrap CIs."""
    by_domain: dict[str, LossStats] = field(default_factory=dict)
    by_concept: dict[str, dict[str, LossStats]] = field(default_factory=dict)
    """Token label set → class → stats."""
    bits_per_byte_slice: str | None = None
    """Which held-out slice ``bits_per_byte`` was measured on (``measure.HELD_OUT_SLICE``)."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{"model_a", "model_b", "dataset", "bits_per_byte",
        "bits_per_byte_slice", "overall": S,
        "by_bucket": {bucket: S}, "by_domain": {domain: S}, "by_concept": {set: {class: S}}}``,
        S = ``{"n", "n_examples", "loss_a", "loss_b", "extra", "ci": {name: [lo, hi]}|null}``."""
        return {"model_a": self.model_a, "model_b": self.model_b, "dataset": self.dataset,
                "bits_per_byte": self.bits_per_byte,
                "bits_per_byte_slice": self.bits_per_byte_slice,
                "overall": self.overall.to_dict(),
                "by_bucket": {k: v.to_dict() for k, v in self.by_bucket.items()},
                "by_domain": {k: v.to_dict() for k, v in self.by_domain.items()},
                "by_concept": {s: {c: v.to_dict() for c, v in per.items()}
                               for s, per in self.by_concept.items()}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BehaviourReport:
        return cls(d["model_a"], d["model_b"], d["dataset"], d.get("bits_per_byte"),
                   LossStats.from_dict(d["overall"]),
                   {k: LossStats.from_dict(v) for k, v in d["by_bucket"].items()},
                   {k: LossStats.from_dict(v) for k, v in d["by_domain"].items()},
                   {s: {c: LossStats.from_dict(v) for c, v in per.items()}
                    for s, per in d["by_concept"].items()},
                   d.get("bits_per_byte_slice"))


def _json(v: float | None) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


def _unjson(v: float | None) -> float:
    return math.nan if v is None else float(v)


def compare_behaviour(lm_a: LoadedModel, lm_b: LoadedModel, dataset: ConceptDataset,
                      store_a: ActivationStore, with_bpb: bool = True, n_boot: int = 1000,
                      seed: int = 0, batch_size: int = 8) -> BehaviourReport:
    """Per-token losses of A and B on ``store_a``'s windows, grouped; bits per byte too."""
    from lensbias.behaviour import memo

    key = (store_a.fingerprint.get("dataset_sha256"), store_a.fingerprint.get("window"),
           store_a.n_tokens)  # A's half is the same in every cell of a sweep: memoised
    losses_a = memo.of_model(lm_a, ("token_losses", *key),
                             lambda: token_losses(lm_a, dataset, store_a, batch_size))
    losses_b = token_losses(lm_b, dataset, store_a, batch_size)
    bpb = ({"A": memo.of_model(lm_a, ("bits_per_byte",), lambda: model_bits_per_byte(lm_a)),
            "B": model_bits_per_byte(lm_b)} if with_bpb else None)
    report = behaviour_report(losses_a, losses_b, store_a, lm_a.name, lm_b.name, bpb,
                              n_boot, seed)
    return dataclasses.replace(report, bits_per_byte_slice=HELD_OUT_SLICE) if with_bpb else report


def behaviour_report(losses_a: np.ndarray, losses_b: np.ndarray, store: ActivationStore,
                     model_a: str = "A", model_b: str = "B",
                     bits_per_byte: dict[str, dict[str, float | None]] | None = None,
                     n_boot: int = 1000, seed: int = 0) -> BehaviourReport:
    """Group per-row losses of A and B (aligned with ``store``'s rows) into a report."""
    losses_a = np.asarray(losses_a, np.float64)
    losses_b = np.asarray(losses_b, np.float64)
    if losses_a.shape != (store.n_tokens,) or losses_b.shape != (store.n_tokens,):
        raise LensbiasError(f"losses must have one value per cached token ({store.n_tokens})")
    example = store.tokens()["example"].astype(np.int64)
    valid = np.isfinite(losses_a) & np.isfinite(losses_b)

    def stats(mask: np.ndarray, boot: bool = False) -> LossStats:
        mask = mask & valid
        a, b = losses_a[mask], losses_b[mask]
        n = int(mask.sum())
        if not n:
            return LossStats(0, 0, math.nan, math.nan, math.nan, None)
        ci = _bootstrap(a, b, example[mask], n_boot, seed) if boot else None
        return LossStats(n, len(np.unique(example[mask])), float(a.mean()), float(b.mean()),
                         float((b - a).mean()), ci)

    def grouped(label_set: str, boot: bool = False, order: tuple[str, ...] = ()
                ) -> dict[str, LossStats]:
        labels = store.labels(label_set)
        classes = store.classes(label_set)
        names = [c for c in order if c in classes] + [c for c in classes if c not in order]
        return {c: stats(labels == classes.index(c), boot) for c in names}

    sets = store.token_label_sets
    return BehaviourReport(
        model_a, model_b, store.dataset_name, bits_per_byte, stats(np.ones_like(valid)),
        grouped(FREQ_LABEL_SET, True, BUCKETS) if FREQ_LABEL_SET in sets else {},
        grouped(DOMAIN_LABEL_SET) if DOMAIN_LABEL_SET in store.label_sets else {},
        {s: grouped(s) for s in sets if s not in (FREQ_LABEL_SET, DOMAIN_LABEL_SET)})


def _bootstrap(a: np.ndarray, b: np.ndarray, example: np.ndarray, n_boot: int, seed: int
               ) -> dict[str, tuple[float, float]]:
    """95% percentile intervals of the token-weighted means, resampling examples."""
    _, inverse = np.unique(example, return_inverse=True)
    n_ex = inverse.max() + 1
    count = np.bincount(inverse, minlength=n_ex).astype(np.float64)
    sums = {"loss_a": np.bincount(inverse, a, n_ex), "loss_b": np.bincount(inverse, b, n_ex),
            "extra": np.bincount(inverse, b - a, n_ex)}
    rng = np.random.default_rng(seed)
    draws: dict[str, list[np.ndarray]] = {k: [] for k in sums}
    for start in range(0, n_boot, 100):
        size = min(100, n_boot - start)
        weights = rng.multinomial(n_ex, np.full(n_ex, 1.0 / n_ex), size=size).astype(np.float64)
        total = weights @ count
        for k, s in sums.items():
            draws[k].append((weights @ s) / total)
    return {k: (float(np.percentile(np.concatenate(v), 2.5)),
                float(np.percentile(np.concatenate(v), 97.5))) for k, v in draws.items()}
