"""Probes, stage 3: which concepts survive compression — A's probe read on B, per concept × hook.

For each concept and hook: a probe trained on original model A's activations; its accuracy
on A; ``transfer``, the same probe applied unchanged to compressed model B's activations of
the same tokens; ``retrained``, a probe trained on B; cosines between A's and B's probe and
difference-of-means directions against a ceiling from two halves of A's training examples
(and the A-vs-B cosine across the same halves, which shares no tokens, like the ceiling);
a control task (Hewitt & Liang 2019) for selectivity; bootstrap intervals over test examples.

Decisions:
- Split by example (never by token); tokens per concept capped by whole examples.
- Directions are compared in A's raw activation space (``LinearProbe.coef_``). B's
  directions enter it through the alignment map (identity without alignment).
- Alignment (``align="procrustes"``, or ``"auto"`` when widths differ): R = UVᵀ from the
  thin SVD of H_Bᵀ·H_A on centred paired training activations. R is d_B × d_A, the
  rectangular (semi-orthogonal) Procrustes solution, identical to zero-padding the
  narrower model and solving the square problem: for d_B ≤ d_A it embeds B isometrically
  in A's space; for d_B > d_A it keeps the d_A directions of B that best match A. B is
  mapped as ``s·(h − μ_B)·R + μ_A`` with one least-squares scale s (neither the centring
  nor s changes a cosine). One map per hook, fitted on up to ``max_train`` tokens (labelled
  or not) of the training examples, never on test examples: transfer stays out of sample,
  but cosines share training tokens with the map, so for a B unrelated to A they are
  inflated (the map seeks A's dominant directions in B); read them against ``transfer``.
  ``retrained`` and ``control_b`` stay in B's own space, so they
  measure B alone; B's directions are carried through R for the cosines.
- Control word types: the word string covering each token (``\\w+`` runs and single
  punctuation characters of the example text, joined when a token spans several), so
  all subword tokens of a word share a control label as they share a task label; tokens
  of whitespace only are typed by their own text.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

import numpy as np
from jaxtyping import Bool, Float, Int

from lensbias.errors import LensbiasError
from lensbias.probes.fast import LinearProbe
from lensbias.probes.linear import grouped_split
from lensbias.probes.report import (ProbeReport, ProbeRow, aggregate, percentile_ci,
                                    survival)

BOOKKEEPING = frozenset({"freq_bucket", "domain", "corpus", "split", "doc"})
"""Label sets never probed unless named in ``ProbeConfig.concepts``."""
ALIGN_CHOICES = ("auto", "procrustes", "none")
_WORD = re.compile(r"\w+|[^\w\s]")


@dataclass(frozen=True)
class ProbeConfig:
    """How ``ProbePair`` compares two stores."""

    concepts: tuple[str, ...] | None = None
    """Label sets to probe; None: every token-level one except bookkeeping (freq_bucket)."""
    hooks: tuple[str, ...] | None = None
    """Hooks to probe (present in both stores); None: every hook the two stores share."""
    max_train: int = 8000
    """Training tokens per concept, taken as whole examples in a seeded random order."""
    max_test: int = 4000
    """Test tokens per concept, likewise."""
    C: float = 1.0
    """Inverse L2 strength of every probe, as in sklearn's LogisticRegression."""
    max_iter: int = 100
    """L-BFGS iterations per probe."""
    n_bootstrap: int = 200
    """Bootstrap resamples of test examples for intervals (0: no intervals)."""
    confidence: float = 0.95
    """Coverage of the percentile intervals."""
    control: bool = True
    """Fit control-task probes on A and B for selectivity."""
    ceiling: bool = True
    """Fit probes on two halves of the training examples for the cosine ceiling (four more
    fits per concept × hook; off: the ceiling and halves cosines are NaN)."""
    seed: int = 0
    """Seeds the split, the caps, the halves, the control labels and the bootstrap."""
    align: str = "auto"
    """``auto`` (Procrustes only when widths differ), ``procrustes`` or ``none``."""
    min_class_tokens: int = 20
    """Classes with fewer training tokens are dropped; a concept left with < 2 is skipped."""
    test_fraction: float = 0.25
    """Share of examples held out for testing."""

    def __post_init__(self) -> None:
        if self.align not in ALIGN_CHOICES:
            raise LensbiasError(f"ProbeConfig.align is {self.align!r}; use one of "
                                f"{', '.join(ALIGN_CHOICES)}")
        if self.max_train < 2 or self.max_test < 1:
            raise LensbiasError(f"ProbeConfig.max_train={self.max_train}, max_test="
                                f"{self.max_test}; both must be positive (max_train >= 2)")
        if not 0 < self.test_fraction < 1 or not 0 < self.confidence < 1:
            raise LensbiasError(f"ProbeConfig.test_fraction={self.test_fraction} and "
                                f"confidence={self.confidence} must lie in (0, 1)")
        if self.n_bootstrap < 0 or self.C <= 0:
            raise LensbiasError(f"ProbeConfig.n_bootstrap={self.n_bootstrap} must be >= 0 "
                                f"and C={self.C} > 0")


class ProbePair:
    """Fits the probe comparison of two activation stores of the same tokens."""

    def __init__(self, config: ProbeConfig = ProbeConfig()):
        self.config = config

    def fit(self, store_a, store_b) -> ProbeReport:
        """Probe every concept × hook on ``store_a`` (model A) and ``store_b`` (model B)."""
        cfg = self.config
        tokens = _same_tokens(store_a, store_b)
        concepts = _concepts(store_a, cfg)
        hooks = _hooks(store_a, store_b, cfg)
        groups = tokens["example"].astype(np.int64)
        test = grouped_split(groups, cfg.test_fraction, seed=cfg.seed)
        weights = bootstrap_weights(groups[test], cfg.n_bootstrap, cfg.seed)
        types = (word_types(store_a.texts(), groups, tokens["offsets"]) if cfg.control
                 else None)
        strata = _strata(store_a)
        chosen, skipped = {}, []
        for concept in concepts:
            labels = store_a.labels(concept)
            train_idx, test_idx = select_tokens(labels, groups, test, cfg)
            if len(np.unique(labels[train_idx])) < 2 or len(test_idx) == 0:
                skipped.append({"concept": concept, "reason": "fewer than two classes with "
                                f"{cfg.min_class_tokens}+ training tokens, or no test tokens"})
                continue
            chosen[concept] = (labels, np.concatenate([train_idx, test_idx]))
        rows = []
        align_rows = _cap(np.flatnonzero(~test), groups, cfg.max_train,
                          np.random.default_rng([cfg.seed, 4]))
        needed = np.unique(np.concatenate([align_rows, *(sel for _, sel in chosen.values())]))
        for hook in hooks:
            acts_a = _gather(store_a, hook, needed)
            acts_b = _gather(store_b, hook, needed)
            aligned = cfg.align == "procrustes" or (cfg.align == "auto"
                                                    and acts_a.shape[1] != acts_b.shape[1])
            at = np.searchsorted(needed, align_rows)
            alignment = Procrustes().fit(acts_b[at], acts_a[at]) if aligned else None
            for concept, (labels, sel) in chosen.items():
                at = np.searchsorted(needed, sel)
                names = store_a.classes(concept)
                rows.append(fit_concept(
                    acts_a[at], acts_b[at], labels[sel], groups[sel], test[sel],
                    word_types=None if types is None else types[sel],
                    strata={k: v[sel] for k, v in strata.items()}, class_names=names,
                    config=cfg, concept=concept, hook=hook, boot_weights=weights,
                    alignment=alignment))
        return ProbeReport(rows, aggregate(rows, "domain", cfg.confidence),
                           aggregate(rows, "freq_bucket", cfg.confidence), skipped,
                           asdict(cfg), store_a.model_name, store_b.model_name,
                           store_a.dataset_name)


def fit_concept(acts_a: Float[np.ndarray, "tokens d_a"], acts_b: Float[np.ndarray, "tokens d_b"],
                labels: Int[np.ndarray, " tokens"], groups: Int[np.ndarray, " tokens"],
                test: Bool[np.ndarray, " tokens"], *,
                word_types: Int[np.ndarray, " tokens"] | None = None,
                strata: dict[str, np.ndarray] | None = None,
                class_names: list[str] | None = None, config: ProbeConfig = ProbeConfig(),
                concept: str = "concept", hook: str = "hook",
                boot_weights: Int[np.ndarray, "resamples groups"] | None = None,
                alignment: Procrustes | None = None) -> ProbeRow:
    """The probe pair of one concept at one hook, on arrays (the core of ``ProbePair``).

    ``labels`` are class indices (-1: none), ``groups`` example ids, ``test`` the held-out
    mask; ``strata`` maps a name (``freq_bucket``, ``domain``) to a per-token string array
    (None or "" for none). Without ``word_types`` every token is its own type. Without
    ``boot_weights`` the bootstrap resamples the test groups found here. When B is aligned,
    ``alignment`` is the fitted map (``ProbePair`` fits one per hook on training-split
    tokens); without it one is fitted on this concept's training tokens.
    """
    cfg = config
    acts_a, acts_b = np.asarray(acts_a, np.float32), np.asarray(acts_b, np.float32)
    labels, groups = np.asarray(labels, np.int64), np.asarray(groups, np.int64)
    test = np.asarray(test, bool)
    if not (len(acts_a) == len(acts_b) == len(labels) == len(groups) == len(test)):
        raise LensbiasError(f"fit_concept needs one row per token in every array; got "
                            f"{len(acts_a)}, {len(acts_b)}, {len(labels)}, {len(groups)}, "
                            f"{len(test)}")
    if boot_weights is None:
        boot_weights = bootstrap_weights(groups[test], cfg.n_bootstrap, cfg.seed)
    tr, te = select_tokens(labels, groups, test, cfg)
    y_tr, y_te = labels[tr], labels[te]
    if len(np.unique(y_tr)) < 2 or len(te) == 0:
        raise LensbiasError(f"concept {concept!r} has fewer than two classes with "
                            f"{cfg.min_class_tokens}+ training tokens, or no test tokens")
    aligned = cfg.align == "procrustes" or (cfg.align == "auto"
                                            and acts_a.shape[1] != acts_b.shape[1])
    if not aligned and acts_a.shape[1] != acts_b.shape[1]:
        raise LensbiasError(f"hook {hook} has width {acts_a.shape[1]} in A and "
                            f"{acts_b.shape[1]} in B; use align='auto' or 'procrustes'")
    to_a = None
    if aligned:
        to_a = alignment or Procrustes().fit(acts_b[tr], acts_a[tr])
    b_in_a = acts_b if to_a is None else to_a.transform(acts_b)

    probe_a = _probe(cfg).fit(acts_a[tr], y_tr)
    probe_b = _probe(cfg).fit(acts_b[tr], y_tr)
    correct = {"acc_a": probe_a.predict(acts_a[te]) == y_te,
               "transfer": probe_a.predict(b_in_a[te]) == y_te,
               "retrained": probe_b.predict(acts_b[te]) == y_te}
    values, counts = np.unique(y_tr, return_counts=True)
    correct["majority"] = y_te == values[np.argmax(counts)]
    ctrl = control_labels(labels, tr, te, word_types, cfg.seed) if cfg.control else None
    if ctrl is not None and len(np.unique(ctrl[tr])) >= 2:
        for side, acts in (("control_a", acts_a), ("control_b", acts_b)):
            correct[side] = _probe(cfg).fit(acts[tr], ctrl[tr]).predict(acts[te]) == ctrl[te]

    cosines = _cosines(acts_a, acts_b, labels, tr, groups, probe_a, probe_b, to_a, cfg)
    point = {k: float(v.mean()) for k, v in correct.items()}
    reps = _replicates(correct, groups[te], boot_weights)
    metrics = _metrics(point)
    metric_reps = _metrics(reps) if reps is not None else {}
    ci = {k: percentile_ci(metric_reps.get(k), cfg.confidence) for k in metrics}
    row_strata, boot = _stratify(strata or {}, tr, te, correct, groups[te], boot_weights)
    names = class_names or [str(v) for v in range(int(labels.max()) + 1)]
    return ProbeRow(
        concept=concept, hook=hook, layer=layer_of(hook),
        domain=_majority_domain((strata or {}).get("domain"), np.concatenate([tr, te])),
        classes=[names[v] for v in values], n_classes=len(values), n_train=len(tr),
        n_test=len(te), aligned=bool(aligned), **metrics,
        **cosines, **{f"{k}_ci": v for k, v in ci.items()}, strata=row_strata,
        boot={**metric_reps, **boot})


def _cosines(acts_a: np.ndarray, acts_b: np.ndarray, labels: np.ndarray, tr: np.ndarray,
             groups: np.ndarray, probe_a: LinearProbe, probe_b: LinearProbe,
             to_a: Procrustes | None, cfg: ProbeConfig) -> dict[str, float]:
    """A-vs-B cosines of probe and DoM directions on all training tokens and across
    disjoint halves, and the A-vs-A ceiling on the same halves (all in A's raw space)."""
    def in_a(dirs: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
        return dirs if to_a is None else {c: to_a.rotate(v) for c, v in dirs.items()}

    out = {"cos_probe": _cosine(_directions(probe_a), in_a(_directions(probe_b))),
           "cos_dom": _cosine(_dom(acts_a[tr], labels[tr]), in_a(_dom(acts_b[tr], labels[tr])))}
    halves = _halves(tr, groups, cfg.seed)
    if not cfg.ceiling or min(len(np.unique(labels[h])) for h in halves) < 2:
        nan = float("nan")
        return {**out, "ceiling_probe": nan, "ceiling_dom": nan, "cos_probe_halves": nan,
                "cos_dom_halves": nan}
    probe = {(m, i): _directions(_probe(cfg).fit(acts[h], labels[h]))
             for m, acts in (("a", acts_a), ("b", acts_b)) for i, h in enumerate(halves)}
    dom = {(m, i): _dom(acts[h], labels[h])
           for m, acts in (("a", acts_a), ("b", acts_b)) for i, h in enumerate(halves)}
    for kind, dirs in (("probe", probe), ("dom", dom)):
        out[f"ceiling_{kind}"] = _cosine(dirs["a", 0], dirs["a", 1])
        out[f"cos_{kind}_halves"] = (_cosine(dirs["a", 0], in_a(dirs["b", 1]))
                                     + _cosine(dirs["a", 1], in_a(dirs["b", 0]))) / 2
    return out


class Procrustes:
    """Orthogonal Procrustes from B's space to A's: ``s·(h − μ_B)·R + μ_A``, R = UVᵀ."""

    def fit(self, h_b: Float[np.ndarray, "tokens d_b"], h_a: Float[np.ndarray, "tokens d_a"]
            ) -> Procrustes:
        self.mean_b_ = h_b.mean(axis=0, dtype=np.float64)
        self.mean_a_ = h_a.mean(axis=0, dtype=np.float64)
        centred_b, centred_a = h_b - self.mean_b_, h_a - self.mean_a_
        u, sigma, vt = np.linalg.svd(centred_b.T @ centred_a, full_matrices=False)
        self.rotation_ = u @ vt  # [d_b, d_a]
        self.scale_ = float(sigma.sum() / max(float((centred_b ** 2).sum()), 1e-30))
        return self

    def transform(self, h_b: Float[np.ndarray, "tokens d_b"]) -> Float[np.ndarray, "tokens d_a"]:
        return (self.scale_ * (h_b - self.mean_b_) @ self.rotation_ + self.mean_a_
                ).astype(np.float32)

    def rotate(self, direction: Float[np.ndarray, " d_b"]) -> Float[np.ndarray, " d_a"]:
        return (direction @ self.rotation_).astype(np.float32)


def select_tokens(labels: Int[np.ndarray, " tokens"], groups: Int[np.ndarray, " tokens"],
                  test: Bool[np.ndarray, " tokens"], config: ProbeConfig
                  ) -> tuple[Int[np.ndarray, " n_train"], Int[np.ndarray, " n_test"]]:
    """Sorted train and test indices: labelled tokens, capped by whole examples, frequent
    classes only (idempotent: selecting again from the selection changes nothing)."""
    rng = np.random.default_rng(config.seed)
    labelled = labels >= 0
    tr = _cap(np.flatnonzero(labelled & ~test), groups, config.max_train, rng)
    te = _cap(np.flatnonzero(labelled & test), groups, config.max_test, rng)
    values, counts = np.unique(labels[tr], return_counts=True)
    keep = values[counts >= config.min_class_tokens]
    return tr[np.isin(labels[tr], keep)], te[np.isin(labels[te], keep)]


def control_labels(labels: Int[np.ndarray, " tokens"], train: np.ndarray, test: np.ndarray,
                   word_types: Int[np.ndarray, " tokens"] | None, seed: int
                   ) -> Int[np.ndarray, " tokens"]:
    """A fixed random label per word type, drawn from the empirical label distribution of
    the selected tokens (Hewitt & Liang 2019); -1 outside the selection."""
    rows = np.concatenate([train, test])
    types = rows if word_types is None else np.asarray(word_types)[rows]
    uniq, inverse = np.unique(types, return_inverse=True)
    rng = np.random.default_rng([seed, 1])
    draw = labels[rows][rng.integers(0, len(rows), size=len(uniq))]
    out = np.full(len(labels), -1, dtype=np.int64)
    out[rows] = draw[inverse]
    return out


def word_types(texts: list[str], example: Int[np.ndarray, " tokens"],
               offsets: Int[np.ndarray, "tokens 2"]) -> Int[np.ndarray, " tokens"]:
    """An integer per distinct word string covering each token (see the module docstring)."""
    ids: dict[str, int] = {}
    out = np.empty(len(example), dtype=np.int64)
    order = np.argsort(example, kind="stable")
    bounds = np.searchsorted(example[order], np.arange(len(texts) + 1))
    for index, text in enumerate(texts):
        rows = order[bounds[index]:bounds[index + 1]]
        if len(rows) == 0:
            continue
        spans = [(m.start(), m.end()) for m in _WORD.finditer(text)]
        starts = np.array([s for s, _ in spans] or [0])
        ends = np.array([e for _, e in spans] or [0])
        first = np.searchsorted(ends, offsets[rows, 0], side="right")
        last = np.searchsorted(starts, offsets[rows, 1], side="left") - 1
        for row, lo, hi, (s, e) in zip(rows, first, last, offsets[rows]):
            word = text[starts[lo]:ends[hi]] if spans and lo <= hi else text[s:e]
            out[row] = ids.setdefault(word, len(ids))
    return out


def bootstrap_weights(test_groups: Int[np.ndarray, " tokens"], n: int, seed: int
                      ) -> Int[np.ndarray, "resamples groups"] | None:
    """How often each group id is drawn in each of ``n`` resamples of the test groups."""
    if n == 0 or len(test_groups) == 0:
        return None
    uniq = np.unique(test_groups)
    draws = uniq[np.random.default_rng([seed, 2]).integers(0, len(uniq), (n, len(uniq)))]
    size = int(uniq.max()) + 1
    flat = (np.arange(n)[:, None] * size + draws).ravel()
    return np.bincount(flat, minlength=n * size).reshape(n, size).astype(np.float32)


def layer_of(hook: str) -> int | None:
    found = re.search(r"blocks\.(\d+)\.", hook)
    return int(found.group(1)) if found else None


def _probe(cfg: ProbeConfig) -> LinearProbe:
    return LinearProbe(C=cfg.C, max_iter=cfg.max_iter, random_state=cfg.seed)


def _cap(rows: np.ndarray, groups: np.ndarray, cap: int, rng: np.random.Generator) -> np.ndarray:
    """At most ``cap`` rows, as whole groups in a random order (part of one if none fits)."""
    if len(rows) <= cap:
        return rows
    uniq, inverse, counts = np.unique(groups[rows], return_inverse=True, return_counts=True)
    order = rng.permutation(len(uniq))
    fits = order[np.cumsum(counts[order]) <= cap]
    if len(fits) == 0:
        return rows[inverse == order[0]][:cap]
    return rows[np.isin(inverse, fits)]


def _halves(train: np.ndarray, groups: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint halves of the training rows, split by example."""
    uniq = np.unique(groups[train])
    first = np.random.default_rng([seed, 3]).permutation(uniq)[: len(uniq) // 2]
    in_first = np.isin(groups[train], first)
    return train[in_first], train[~in_first]


def _directions(probe: LinearProbe) -> dict[int, np.ndarray]:
    """Raw-space read-out direction per class (binary: ∓w for the two classes)."""
    if len(probe.classes_) == 2:
        w = probe.coef_[0]
        return {int(probe.classes_[0]): -w, int(probe.classes_[1]): w}
    return {int(c): row for c, row in zip(probe.classes_, probe.coef_)}


def _dom(acts: np.ndarray, labels: np.ndarray) -> dict[int, np.ndarray]:
    """Class mean minus overall mean, per class."""
    overall = acts.mean(axis=0, dtype=np.float64)
    return {int(c): (acts[labels == c].mean(axis=0, dtype=np.float64) - overall
                     ).astype(np.float32) for c in np.unique(labels)}


def _cosine(a: dict[int, np.ndarray], b: dict[int, np.ndarray]) -> float:
    """Mean over shared classes of the cosine between the two directions."""
    shared = sorted(set(a) & set(b))
    cos = [float(a[c] @ b[c]) / max(float(np.linalg.norm(a[c]) * np.linalg.norm(b[c])), 1e-30)
           for c in shared]
    return float(np.mean(cos)) if cos else float("nan")


def _replicates(correct: dict[str, np.ndarray], groups: np.ndarray,
                weights: np.ndarray | None, mask: np.ndarray | None = None
                ) -> dict[str, np.ndarray] | None:
    """Bootstrap accuracy of each predictor: weighted by how often its example was drawn."""
    if weights is None:
        return None
    w = weights[:, groups] if mask is None else weights[:, groups[mask]]
    hits = np.stack([v if mask is None else v[mask] for v in correct.values()], axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = (w @ hits.astype(np.float32)) / w.sum(axis=1, keepdims=True)
    return {k: acc[:, i].astype(np.float64) for i, k in enumerate(correct)}


def _metrics(acc: dict[str, np.ndarray | float]) -> dict[str, np.ndarray | float]:
    """Accuracies and the differences derived from them (points or replicate arrays)."""
    nan = float("nan")
    out = {k: acc[k] for k in ("majority", "acc_a", "transfer", "retrained")}
    out["control_a"] = acc.get("control_a", nan)
    out["control_b"] = acc.get("control_b", nan)
    out["selectivity_a"] = acc["acc_a"] - out["control_a"]
    out["selectivity_b"] = acc["retrained"] - out["control_b"]
    out["transfer_drop"] = acc["acc_a"] - acc["transfer"]
    out["retrained_drop"] = acc["acc_a"] - acc["retrained"]
    kept = survival(acc["transfer"], acc["acc_a"], acc["majority"])
    out["survival"] = float(kept) if np.ndim(kept) == 0 else kept
    if np.ndim(acc["acc_a"]) == 0:
        out = {k: float(v) for k, v in out.items()}
    return out


def _stratify(strata: dict[str, np.ndarray], tr: np.ndarray, te: np.ndarray,
              correct: dict[str, np.ndarray], test_groups: np.ndarray,
              weights: np.ndarray | None) -> tuple[dict, dict]:
    """Per stratum value: test accuracies of A, transfer, retrained (+ replicates)."""
    keys = ("majority", "acc_a", "transfer", "retrained")
    sub = {k: correct[k] for k in keys}
    out, boot = {}, {}
    for name, values in strata.items():
        if values is None:
            continue
        at_test = np.asarray(values, dtype=object)[te]
        out[name] = {}
        for value in sorted({v for v in at_test if v}):
            mask = at_test == value
            out[name][value] = {"n_test": int(mask.sum()),
                                **{k: float(v[mask].mean()) for k, v in sub.items()}}
            reps = _replicates(sub, test_groups, weights, mask)
            if reps is not None:
                boot[(name, value)] = np.stack([reps[k] for k in keys], axis=1)
    return out, boot


def _majority_domain(domains: np.ndarray | None, rows: np.ndarray) -> str | None:
    if domains is None:
        return None
    values, counts = np.unique([d for d in np.asarray(domains, object)[rows] if d] or [""],
                               return_counts=True)
    if values[0] == "" and len(values) == 1:
        return None
    top = int(np.argmax(counts))
    return str(values[top]) if counts[top] >= 0.9 * len(rows) else "mixed"


def _same_tokens(store_a, store_b) -> dict[str, np.ndarray]:
    a, b = store_a.tokens(), store_b.tokens()
    if not (np.array_equal(a["ids"], b["ids"]) and np.array_equal(a["example"], b["example"])):
        raise LensbiasError(
            f"stores hold different tokens: {store_a.path} has {len(a['ids'])} tokens of "
            f"{store_a.dataset_name!r}, {store_b.path} has {len(b['ids'])} of "
            f"{store_b.dataset_name!r}; cache both models on the same dataset with the same "
            "tokenizer")
    return a


def _concepts(store, cfg: ProbeConfig) -> list[str]:
    if cfg.concepts is None:
        return [c for c in store.token_label_sets if c not in BOOKKEEPING]
    missing = [c for c in cfg.concepts if c not in store.label_sets]
    if missing:
        raise LensbiasError(f"{store.path} has no concept {', '.join(missing)}; it has "
                            f"{', '.join(store.label_sets)}")
    return list(cfg.concepts)


def _hooks(store_a, store_b, cfg: ProbeConfig) -> list[str]:
    shared = [h for h in store_a.hooks if h in store_b.hooks]
    if cfg.hooks is None:
        if not shared:
            raise LensbiasError(f"{store_a.path} and {store_b.path} share no hook; A has "
                                f"{', '.join(store_a.hooks)}, B has {', '.join(store_b.hooks)}")
        return shared
    missing = [h for h in cfg.hooks if h not in shared]
    if missing:
        raise LensbiasError(f"hook {', '.join(missing)} is not in both stores; they share "
                            f"{', '.join(shared) or 'none'}")
    return list(cfg.hooks)


def _strata(store) -> dict[str, np.ndarray]:
    """Per-token names of the freq_bucket and domain labels, where the store has them."""
    out = {}
    for name in ("freq_bucket", "domain"):
        if name in store.label_sets:
            names = np.array(store.classes(name) + [""], dtype=object)
            out[name] = names[store.labels(name)]  # -1 picks the trailing ""
    return out


def _gather(store, hook: str, rows: np.ndarray, block: int = 32768
            ) -> Float[np.ndarray, "rows d"]:
    """Activations of sorted ``rows``, read in contiguous blocks (bounded memory)."""
    parts = []
    for start in range(int(rows[0]) if len(rows) else 0, int(rows[-1]) + 1 if len(rows) else 0,
                       block):
        inside = rows[(rows >= start) & (rows < start + block)]
        if len(inside):
            chunk = store.activations(hook, slice(start, int(inside[-1]) + 1))
            parts.append(chunk[inside - start])
    return np.concatenate(parts) if parts else np.zeros((0, store.d(hook)), np.float32)

