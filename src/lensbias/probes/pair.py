"""Probes, stage 3: which concepts survive compression, per concept × hook, in three readings.

For each concept and hook, a probe is trained on original model A's activations and read
against its floors (``probes.floors``: majority, token-id lookup, the same probe on the
context-free embedding stream). What survives is measured three ways, each normalised to
the same baseline (the floor for contextual concepts, the majority class for concepts
readable from token identity alone):

- ``information``: a probe retrained on B (is the concept still linearly there?);
- ``readout``: A's probe applied to B unchanged (what a user of A's probe sees);
- ``aligned_readout``: A's probe on B after a label-free map of B onto A (``probes.align``,
  default affine least squares) fitted on unlabeled training-split tokens.

Also: control tasks (Hewitt & Liang 2019) for selectivity; cosines between A's and B's
probe and difference-of-means directions against a ceiling from two halves of A's training
examples; bootstrap intervals over test documents.

Decisions:
- Split by source document (``doc`` for UD, ``file`` for code; the example where a store has
  neither), so no document has tokens on both sides, drawn within each domain
  (``stratified_split``) so a domain of few documents is on both sides too; the bootstrap resamples test
  documents; tokens per concept are capped by whole examples.
- The regularisation strength of each probe (A, B, the embedding floor) is chosen on its
  own training split (``C_grid``, one held-out quarter of the training documents) unless
  ``ProbeConfig.C`` fixes it: per concept and model, on the middle probed hook, and reused
  at the other hooks (features are standardised). Probes are fitted to convergence
  (``max_iter`` caps, the gradient tolerance ``tol`` stops).
- Every probe of every concept at a hook is fitted together, in rounds (the C grid; the
  final probes and the embed floor; the controls and the halves), each round one batched
  solve (``probes.batched``). A final probe starts from the same concept's probe at the
  previously fitted hook, or from the grid's probe at the chosen C; a half starts from
  the full probe; a control from the previous hook's control. Warm starts change the
  path, not the optimum (the objective is strictly convex).
- Directions are compared in A's raw activation space (``LinearProbe.coef_``). When widths
  differ, ``readout`` and the cosines go through an orthogonal Procrustes map (rectangular,
  semi-orthogonal R = UVᵀ from the thin SVD of H_Bᵀ·H_A, one least-squares scale), fitted on
  up to ``max_train`` training tokens; the cosines share those tokens, so for a B unrelated
  to A they are inflated; read them against ``readout``. ``retrained`` and ``control_b``
  stay in B's own space.
- Control word types: the word string covering each token (``\\w+`` runs and single
  punctuation characters of the example text, joined when a token spans several), so
  all subword tokens of a word share a control label as they share a task label; tokens
  of whitespace only are typed by their own text.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from jaxtyping import Bool, Float, Int

from lensbias import device_math as dm
from lensbias.errors import LensbiasError
from lensbias.probes.align import DEFAULT_MAP, MAPS, AlignMap
from lensbias.probes.batched import Problem, Steps, fit_steps, together
from lensbias.probes.batched import run as _run
from lensbias.probes.fast import LinearProbe, fit_batch
from lensbias.probes.floors import EMBED_HOOK, KIND_CONTEXT, TokenIdLookup, kind_of
from lensbias.probes.linear import grouped_split, stratified_split
from lensbias.probes.report import (MIN_GAIN, ProbeReport, ProbeRow, aggregate,
                                    aggregate_readings, percentile_ci, reading)

BOOKKEEPING = frozenset({"freq_bucket", "domain", "corpus", "split", "doc", "file", "genre",
                         "language"})
"""Label sets never probed unless named in ``ProbeConfig.concepts``."""
DOCUMENT_LABELS = ("doc", "file")
"""Sequence labels that name an example's source document, in order of preference."""
ALIGN_CHOICES = ("auto", "procrustes", "none")
SOLVERS = ("lbfgs", "sklearn")
_WORD = re.compile(r"\w+|[^\w\s]")


@dataclass(frozen=True)
class ProbeConfig:
    """How ``ProbePair`` compares two stores."""

    concepts: tuple[str, ...] | None = None
    """Label sets to probe; None: every token-level one except bookkeeping (freq_bucket)."""
    hooks: tuple[str, ...] | None = None
    """Hooks to probe (present in both stores); None: every hook the two stores share except
    the embedding stream (``blocks.0.hook_resid_pre``), which is the ``embed`` floor."""
    max_train: int = 8000
    """Training tokens per concept, taken as whole examples in a seeded random order."""
    max_test: int = 4000
    """Test tokens per concept, likewise."""
    C: float | None = None
    """Inverse L2 strength of every probe (sklearn's C); None: chosen per probe from
    ``C_grid`` on a held-out quarter of its training documents."""
    C_grid: tuple[float, ...] = (0.1, 1.0, 10.0)
    """Candidate C values when ``C`` is None, chosen by the one-standard-error rule on
    held-out log-loss (``one_se_choice``: the smallest C within one SE of the best)."""
    max_iter: int = 500
    """L-BFGS iteration cap per probe (stops earlier at the gradient tolerance)."""
    tol: float = 1e-4
    """Gradient tolerance of every probe: the largest entry of the objective's gradient in
    standardised coordinates (scikit-learn's criterion and default)."""
    solver: str = "lbfgs"
    """``lbfgs``: lensbias' batched preconditioned L-BFGS (``probes.batched``), every probe
    of a hook's concepts fitted together, warm-started where a related probe exists;
    ``sklearn``: one scikit-learn ``LogisticRegression`` per probe, from zero (the
    reference; ``probes.reference``)."""
    n_bootstrap: int = 200
    """Bootstrap resamples of test documents for intervals (0: no intervals)."""
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
    """How ``readout`` reaches A's space: ``auto`` (Procrustes only when widths differ),
    ``procrustes`` or ``none``."""
    realign: str = DEFAULT_MAP
    """The label-free map of ``aligned_readout``: ``mean``, ``scale``, ``affine`` or
    ``procrustes`` (``probes.align``)."""
    min_class_tokens: int = 20
    """Classes with fewer training tokens are dropped; a concept left with < 2 is skipped."""
    min_test_tokens: int = 300
    """Rows with fewer test tokens are flagged ``underpowered`` and left out of aggregates."""
    test_fraction: float = 0.25
    """Share of documents held out for testing."""
    batch_bytes: int = 2**30
    """Activation bytes (float32, A's and B's rows together) read from the stores for one
    group of concepts at a hook; concepts are fitted in groups within it, so the probe
    stage's memory follows this (and the token caps), not the number of tokens or concepts.
    A concept over it is a group alone."""
    device: str = "cpu"
    """Torch device every probe is fitted on (``LinearProbe.device``), the alignment maps
    are fitted and applied on (``AlignMap.device``) and the bootstrap replicates are summed
    on; results are numpy."""

    def __post_init__(self) -> None:
        if self.align not in ALIGN_CHOICES:
            raise LensbiasError(f"ProbeConfig.align is {self.align!r}; use one of "
                                f"{', '.join(ALIGN_CHOICES)}")
        if self.solver not in SOLVERS:
            raise LensbiasError(f"ProbeConfig.solver is {self.solver!r}; use one of "
                                f"{', '.join(SOLVERS)}")
        if self.realign not in MAPS:
            raise LensbiasError(f"ProbeConfig.realign is {self.realign!r}; use one of "
                                f"{', '.join(MAPS)}")
        if self.batch_bytes < 1:
            raise LensbiasError(f"ProbeConfig.batch_bytes is {self.batch_bytes}; it must be "
                                "positive")
        if self.max_train < 2 or self.max_test < 1:
            raise LensbiasError(f"ProbeConfig.max_train={self.max_train}, max_test="
                                f"{self.max_test}; both must be positive (max_train >= 2)")
        if not 0 < self.test_fraction < 1 or not 0 < self.confidence < 1:
            raise LensbiasError(f"ProbeConfig.test_fraction={self.test_fraction} and "
                                f"confidence={self.confidence} must lie in (0, 1)")
        if self.n_bootstrap < 0 or (self.C is not None and self.C <= 0) \
                or not self.C_grid or min(self.C_grid) <= 0:
            raise LensbiasError(f"ProbeConfig.n_bootstrap={self.n_bootstrap} must be >= 0, "
                                f"C={self.C} > 0 (or None) and C_grid={self.C_grid} non-empty "
                                "and positive")


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
        docs = document_ids(store_a, groups)
        strata = token_strata(store_a)
        test = stratified_split(docs, strata.get("domain"), cfg.test_fraction, seed=cfg.seed)
        weights = bootstrap_weights(docs[test], cfg.n_bootstrap, cfg.seed)
        types = (word_types(store_a.texts(), groups, tokens["offsets"]) if cfg.control
                 else None)
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
        has_embed = EMBED_HOOK in store_a.hooks
        floors: dict[str, dict[str, np.ndarray]] = {}
        # C is chosen per concept and model on the middle hook, then reused at every hook
        # (features are standardised, so one C suits them); rows keep the hooks' order
        middle = hooks[len(hooks) // 2]
        for hook in [middle, *(h for h in hooks if h != middle)]:
            a_align = _gather(store_a, hook, align_rows)
            b_align = _gather(store_b, hook, align_rows)
            aligned = cfg.align == "procrustes" or (cfg.align == "auto"
                                                    and a_align.shape[1] != b_align.shape[1])
            alignment = (AlignMap("procrustes", cfg.device).fit(b_align, a_align)
                         if aligned else None)
            realign = AlignMap(cfg.realign, cfg.device).fit(b_align, a_align)
            del a_align, b_align
            width = store_a.d(hook) + store_b.d(hook)
            for group in concept_groups({c: len(sel) for c, (_, sel) in chosen.items()},
                                        width, cfg.batch_bytes):
                # only this group's rows are read: memory follows batch_bytes, not the
                # number of tokens or of concepts
                needed = np.unique(np.concatenate([chosen[c][1] for c in group]))
                acts_a = _gather(store_a, hook, needed)
                acts_b = _gather(store_b, hook, needed)
                embed = (_gather(store_a, EMBED_HOOK, needed)
                         if has_embed and any(c not in floors for c in group) else None)
                steps = []
                for concept in group:
                    labels, sel = chosen[concept]
                    at = np.searchsorted(needed, sel)
                    steps.append(concept_steps(
                        acts_a[at], acts_b[at], labels[sel], groups[sel], test[sel],
                        token_ids=tokens["ids"][sel],
                        acts_embed=None if embed is None else embed[at], docs=docs[sel],
                        word_types=None if types is None else types[sel],
                        strata={k: v[sel] for k, v in strata.items()},
                        class_names=store_a.classes(concept), config=cfg, concept=concept,
                        hook=hook, boot_weights=weights, alignment=alignment,
                        realign=realign, floor_cache=floors.setdefault(concept, {})))
                del acts_a, acts_b, embed
                # every probe of the group's concepts at this hook, round by round, as
                # batched problems
                rows.extend(run_steps(together(steps), cfg))
        rows.sort(key=lambda r: hooks.index(r.hook))
        return ProbeReport(rows, aggregate_readings(rows, cfg.confidence),
                           aggregate(rows, "freq_bucket", cfg.confidence), skipped,
                           {**asdict(cfg), "embed_hook": EMBED_HOOK if has_embed else None},
                           store_a.model_name, store_b.model_name, store_a.dataset_name)


def fit_concept(acts_a: Float[np.ndarray, "tokens d_a"], acts_b: Float[np.ndarray, "tokens d_b"],
                labels: Int[np.ndarray, " tokens"], groups: Int[np.ndarray, " tokens"],
                test: Bool[np.ndarray, " tokens"], *, config: ProbeConfig = ProbeConfig(),
                **options: Any) -> ProbeRow:
    """The probe pair of one concept at one hook, on arrays (the core of ``ProbePair``):
    ``concept_steps`` run to the end, its probes fitted round by round. ``options`` are
    ``concept_steps``' keyword arguments (floors' inputs, strata, names, maps, caches)."""
    return run_steps(concept_steps(acts_a, acts_b, labels, groups, test, config=config,
                                   **options), config)


def concept_steps(acts_a: Float[np.ndarray, "tokens d_a"], acts_b: Float[np.ndarray, "tokens d_b"],
                labels: Int[np.ndarray, " tokens"], groups: Int[np.ndarray, " tokens"],
                test: Bool[np.ndarray, " tokens"], *,
                token_ids: Int[np.ndarray, " tokens"] | None = None,
                acts_embed: Float[np.ndarray, "tokens d_a"] | None = None,
                docs: Int[np.ndarray, " tokens"] | None = None,
                word_types: Int[np.ndarray, " tokens"] | None = None,
                strata: dict[str, np.ndarray] | None = None,
                class_names: list[str] | None = None, config: ProbeConfig = ProbeConfig(),
                concept: str = "concept", hook: str = "hook",
                boot_weights: Float[np.ndarray, "resamples docs"] | None = None,
                alignment: AlignMap | None = None, realign: AlignMap | None = None,
                floor_cache: dict[str, np.ndarray] | None = None) -> Steps:
    """The probe pair of one concept at one hook, on arrays, as steps (see ``Steps``): it
    yields the probes to fit in rounds and returns the row, so ``ProbePair`` can fit the
    probes of every concept of a hook together (``fit_concept`` runs it alone).

    ``labels`` are class indices (-1: none), ``groups`` example ids (the unit of the token
    caps), ``docs`` source-document ids (the unit of the bootstrap and of C selection;
    default: ``groups``), ``test`` the held-out mask; ``token_ids`` feed the token-id floor
    and ``acts_embed`` (A's context-free embedding stream) the embed floor (each NaN when
    absent). ``strata`` maps a name (``freq_bucket``, ``domain``) to a per-token string
    array. Without ``word_types`` every token is its own type. Without ``boot_weights`` the
    bootstrap resamples the test documents found here. ``alignment`` is the map ``readout``
    goes through (Procrustes when widths differ; fitted here when needed and not given);
    ``realign`` the label-free map of ``aligned_readout`` (fitted here on the training
    tokens when not given). ``floor_cache`` keeps a concept's floors and its chosen C of A
    and of B across hooks (a dict, filled by the first call).
    """
    cfg = config
    acts_a, acts_b = np.asarray(acts_a, np.float32), np.asarray(acts_b, np.float32)
    labels, groups = np.asarray(labels, np.int64), np.asarray(groups, np.int64)
    docs = groups if docs is None else np.asarray(docs, np.int64)
    test = np.asarray(test, bool)
    if not (len(acts_a) == len(acts_b) == len(labels) == len(groups) == len(test) == len(docs)):
        raise LensbiasError(f"fit_concept needs one row per token in every array; got "
                            f"{len(acts_a)}, {len(acts_b)}, {len(labels)}, {len(groups)}, "
                            f"{len(test)}, {len(docs)}")
    if boot_weights is None:
        boot_weights = bootstrap_weights(docs[test], cfg.n_bootstrap, cfg.seed)
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
        to_a = alignment or AlignMap("procrustes", cfg.device).fit(acts_b[tr], acts_a[tr])
    b_in_a = acts_b if to_a is None else to_a.transform(acts_b)
    realign = realign or AlignMap(cfg.realign, cfg.device).fit(acts_b[tr], acts_a[tr])

    shared = {} if floor_cache is None else floor_cache
    # round 1 (C selection: grid, then the final fit): A's and B's probes and the embed
    # floor; a final fit starts from the same concept's probe at the previous hook
    (probe_a, c_a), (probe_b, c_b), floor = yield from together([
        select_steps(acts_a[tr], y_tr, docs[tr], cfg, shared.get("C_a"), shared.get("probe_a")),
        select_steps(acts_b[tr], y_tr, docs[tr], cfg, shared.get("C_b"), shared.get("probe_b")),
        _floor_steps(token_ids, acts_embed, tr, te, labels, docs, cfg, floor_cache)])
    shared.setdefault("C_a", c_a)
    shared.setdefault("C_b", c_b)
    shared["probe_a"], shared["probe_b"] = probe_a, probe_b
    correct = {"acc_a": probe_a.predict(acts_a[te]) == y_te,
               "transfer": probe_a.predict(b_in_a[te]) == y_te,
               "retrained": probe_b.predict(acts_b[te]) == y_te,
               "aligned": probe_a.predict(realign.transform(acts_b[te])) == y_te}
    values, counts = np.unique(y_tr, return_counts=True)
    correct["majority"] = y_te == values[np.argmax(counts)]
    correct.update(floor)
    # round 2: the control probes and the half-split probes of the cosine ceiling
    ctrl = control_labels(labels, tr, te, word_types, cfg.seed) if cfg.control else None
    controls = []
    if ctrl is not None and len(np.unique(ctrl[tr])) >= 2:
        controls = [(side, acts, Problem(acts[tr], ctrl[tr], c, shared.get(side)))
                    for side, acts, c in (("control_a", acts_a, c_a), ("control_b", acts_b, c_b))]
    cosines, fitted = yield from together([
        _cosine_steps(acts_a, acts_b, labels, tr, groups, probe_a, probe_b, to_a, cfg, c_a, c_b),
        fit_steps([problem for _, _, problem in controls])])
    for (side, acts, _), probe in zip(controls, fitted):
        shared[side] = probe
        correct[side] = probe.predict(acts[te]) == ctrl[te]

    point = {k: float(v.mean()) for k, v in correct.items()}
    reps = _replicates(correct, docs[te], boot_weights, device=cfg.device)
    metrics, metric_reps = _metrics(point, reps, cfg.confidence)
    ci = {k: percentile_ci(metric_reps.get(k), cfg.confidence) for k in metrics
          if not isinstance(metrics[k], str)}
    row_strata, boot = _stratify(strata or {}, tr, te, correct, docs[te], boot_weights,
                                 cfg.device)
    names = class_names or [str(v) for v in range(int(labels.max()) + 1)]
    return ProbeRow(
        concept=concept, hook=hook, layer=layer_of(hook),
        domain=_majority_domain((strata or {}).get("domain"), np.concatenate([tr, te])),
        classes=[names[v] for v in values], n_classes=len(values), n_train=len(tr),
        n_test=len(te), n_test_docs=int(len(np.unique(docs[te]))),
        underpowered=bool(len(te) < cfg.min_test_tokens), aligned=bool(aligned),
        realign=realign.kind, C_a=c_a, C_b=c_b,
        train_acc_a=float(np.mean(probe_a.predict(acts_a[tr]) == y_tr)),
        train_retrained=float(np.mean(probe_b.predict(acts_b[tr]) == y_tr)),
        converged=bool(probe_a.n_iter_ < cfg.max_iter and probe_b.n_iter_ < cfg.max_iter),
        **metrics, **cosines, **{f"{k}_ci": v for k, v in ci.items()}, strata=row_strata,
        boot={**metric_reps, **boot})


def fit_selected(X: Float[np.ndarray, "tokens d"], y: Int[np.ndarray, " tokens"],
                 docs: Int[np.ndarray, " tokens"], config: ProbeConfig,
                 fixed: float | None = None) -> tuple[LinearProbe, float]:
    """A probe fitted on all of ``X``, its C fixed (``fixed``, else ``config.C``) or chosen
    from ``config.C_grid`` on a held-out quarter of the training documents (fitted on the
    rest) by the one-standard-error rule on log-loss (``one_se_choice``: the smallest C
    within one standard error of the best). Too few documents (< 4) or a held-out
    part without two classes: C = 1."""
    return run_steps(select_steps(X, y, docs, config, fixed), config)


def select_steps(X: Float[np.ndarray, "tokens d"], y: Int[np.ndarray, " tokens"],
                 docs: Int[np.ndarray, " tokens"], config: ProbeConfig,
                 fixed: float | None = None, init: LinearProbe | None = None) -> Steps:
    """``fit_selected`` as steps: the grid's probes in one round, then the final probe,
    started from the grid's probe at the chosen C (else from ``init``)."""
    fixed = config.C if fixed is None else fixed
    if fixed is not None:
        (probe,) = yield [Problem(X, y, float(fixed), init)]
        return probe, float(fixed)
    chosen = 1.0
    grid = sorted(config.C_grid)
    if len(grid) > 1:
        val = grid_split(y, docs, config)
        if val is not None:
            X_fit, y_fit = X[~val], y[~val]        # one array: the solver shares its basis
            fitted = yield [Problem(X_fit, y_fit, c) for c in grid]
            best = one_se_choice([p.token_log_losses(X[val], y[val]) for p in fitted])
            chosen, init = float(grid[best]), fitted[best]
    elif len(grid) == 1:
        chosen = float(grid[0])
    (probe,) = yield [Problem(X, y, chosen, init)]
    return probe, chosen


def one_se_choice(losses: list[Float[np.ndarray, " tokens"]]) -> int:
    """The one-standard-error rule (Hastie, Tibshirani & Friedman, ESL §7.10): of the grid,
    ordered from the strongest penalty, the first whose mean held-out log-loss is within one
    standard error (of the best's per-token losses) of the best. Log-loss, not accuracy, and
    a margin, not an argmax: on a held-out quarter of a few hundred tokens two Cs are often a
    token apart in accuracy, or a hair apart in loss, and an argmax would then pick by where
    the solver happened to stop."""
    means = [float(np.mean(v)) for v in losses]
    best = int(np.argmin(means))
    v = losses[best]
    se = float(np.std(v, ddof=1)) / np.sqrt(len(v)) if len(v) > 1 else 0.0
    return next(i for i, m in enumerate(means) if m <= means[best] + se)


def grid_split(y: Int[np.ndarray, " tokens"], docs: Int[np.ndarray, " tokens"],
               config: ProbeConfig) -> Bool[np.ndarray, " tokens"] | None:
    """The held-out quarter of the training documents that C is chosen on (classes unseen
    in the rest dropped from it); None when there are too few documents (< 4) or the rest
    lacks two classes (C = 1 is used then)."""
    uniq = np.unique(docs)
    if len(uniq) < 4:
        return None
    val = np.isin(docs, grouped_split(uniq, 0.25, seed=config.seed + 7))
    val &= np.isin(y, np.unique(y[~val]))
    return val if val.any() and len(np.unique(y[~val])) >= 2 else None


def _floor_steps(token_ids: np.ndarray | None, acts_embed: np.ndarray | None, tr: np.ndarray,
                 te: np.ndarray, labels: np.ndarray, docs: np.ndarray, cfg: ProbeConfig,
                 cache: dict[str, np.ndarray] | None) -> Steps:
    """Per test token: is the token-id lookup right, is the embedding-stream probe right
    (NaN-filled when the input is missing). Cached per concept: the same at every hook."""
    if cache and "token_id" in cache:
        return {k: cache[k] for k in ("token_id", "embed")}
    nan = np.full(len(te), np.nan)
    out = {"token_id": nan, "embed": nan}
    if token_ids is not None:
        ids = np.asarray(token_ids, np.int64)
        out["token_id"] = TokenIdLookup().fit(ids[tr], labels[tr]).predict(ids[te]) == labels[te]
    if acts_embed is not None:
        embed = np.asarray(acts_embed, np.float32)
        probe, _ = yield from select_steps(embed[tr], labels[tr], docs[tr], cfg)
        out["embed"] = probe.predict(embed[te]) == labels[te]
    if cache is not None:
        cache.update(out)
    return out


def _metrics(point: dict[str, float], reps: dict[str, np.ndarray] | None, confidence: float
             ) -> tuple[dict[str, float | str], dict[str, np.ndarray]]:
    """Accuracies, floors, context gain and kind, the three readings and the differences,
    as points and (where there are replicates) as replicate arrays."""
    def derive(acc: dict) -> dict:
        nan = float("nan")
        out = {k: acc[k] for k in ("majority", "token_id", "embed", "acc_a", "transfer",
                                   "retrained")}
        out["aligned_transfer"] = acc["aligned"]
        out["floor"] = np.fmax(np.fmax(acc["majority"], acc["token_id"]), acc["embed"])
        out["context_gain"] = acc["acc_a"] - out["floor"]
        out["control_a"] = acc.get("control_a", nan)
        out["control_b"] = acc.get("control_b", nan)
        out["selectivity_a"] = acc["acc_a"] - out["control_a"]
        out["selectivity_b"] = acc["retrained"] - out["control_b"]
        out["transfer_drop"] = acc["acc_a"] - acc["transfer"]
        out["retrained_drop"] = acc["acc_a"] - acc["retrained"]
        return out

    metrics = {k: float(v) for k, v in derive(point).items()}
    metric_reps = {} if reps is None else {k: np.broadcast_to(np.asarray(v, np.float64),
                                                              len(reps["acc_a"])).copy()
                                           for k, v in derive(reps).items()}
    gain_ci = percentile_ci(metric_reps.get("context_gain"), confidence)
    if gain_ci[0] != gain_ci[0]:  # no intervals: the point must clear MIN_GAIN
        gain_ci = (metrics["context_gain"] - MIN_GAIN, metrics["context_gain"] + MIN_GAIN)
    kind = kind_of(gain_ci)
    base = "floor" if kind == KIND_CONTEXT else "majority"
    metrics["kind"], metrics["baseline_kind"] = kind, base
    metrics["baseline"] = metrics[base]
    if metric_reps:
        metric_reps["baseline"] = metric_reps[base]
    for name, key in (("information", "retrained"), ("readout", "transfer"),
                      ("aligned_readout", "aligned_transfer")):
        metrics[name] = float(reading(metrics[key], metrics["acc_a"], metrics["baseline"]))
        if metric_reps:
            metric_reps[name] = reading(metric_reps[key], metric_reps["acc_a"],
                                        metric_reps["baseline"])
    metrics["survival"] = metrics["readout"]
    if metric_reps:
        metric_reps["survival"] = metric_reps["readout"]
    return metrics, metric_reps


def _cosine_steps(acts_a: np.ndarray, acts_b: np.ndarray, labels: np.ndarray, tr: np.ndarray,
                  groups: np.ndarray, probe_a: LinearProbe, probe_b: LinearProbe,
                  to_a: AlignMap | None, cfg: ProbeConfig, c_a: float, c_b: float) -> Steps:
    """A-vs-B cosines of probe and DoM directions on all training tokens and across
    disjoint halves, and the A-vs-A ceiling on the same halves (all in A's raw space); the
    half probes start from the full probe of their model."""
    def in_a(dirs: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
        return dirs if to_a is None else {c: to_a.rotate(v) for c, v in dirs.items()}

    out = {"cos_probe": _cosine(_directions(probe_a), in_a(_directions(probe_b))),
           "cos_dom": _cosine(_dom(acts_a[tr], labels[tr]), in_a(_dom(acts_b[tr], labels[tr])))}
    halves = _halves(tr, groups, cfg.seed)
    if not cfg.ceiling or min(len(np.unique(labels[h])) for h in halves) < 2:
        nan = float("nan")
        return {**out, "ceiling_probe": nan, "ceiling_dom": nan, "cos_probe_halves": nan,
                "cos_dom_halves": nan}
    keys = [(m, i) for m in ("a", "b") for i in range(len(halves))]
    fitted = yield [Problem((acts_a if m == "a" else acts_b)[halves[i]], labels[halves[i]],
                            c_a if m == "a" else c_b, probe_a if m == "a" else probe_b)
                    for m, i in keys]
    probe = {key: _directions(p) for key, p in zip(keys, fitted)}
    dom = {(m, i): _dom(acts[h], labels[h])
           for m, acts in (("a", acts_a), ("b", acts_b)) for i, h in enumerate(halves)}
    for kind, dirs in (("probe", probe), ("dom", dom)):
        out[f"ceiling_{kind}"] = _cosine(dirs["a", 0], dirs["a", 1])
        out[f"cos_{kind}_halves"] = (_cosine(dirs["a", 0], in_a(dirs["b", 1]))
                                     + _cosine(dirs["a", 1], in_a(dirs["b", 0]))) / 2
    return out


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


def solve(problems: list[Problem], cfg: ProbeConfig) -> list:
    """Fit ``problems`` with ``cfg.solver``: one batched solve, or scikit-learn one by one."""
    if cfg.solver == "sklearn":
        from lensbias.probes.reference import SklearnProbe

        return [SklearnProbe(C=p.C, max_iter=cfg.max_iter, tol=cfg.tol,
                             random_state=cfg.seed).fit(p.X, p.y) for p in problems]
    return fit_batch(problems, max_iter=cfg.max_iter, tol=cfg.tol, device=cfg.device,
                     random_state=cfg.seed)


def run_steps(steps: Steps, cfg: ProbeConfig):
    """Drive probe-fitting steps to their result with ``cfg``'s solver."""
    return _run(steps, lambda problems: solve(problems, cfg))


def _probe(cfg: ProbeConfig, C: float) -> LinearProbe:
    return LinearProbe(C=C, max_iter=cfg.max_iter, random_state=cfg.seed, device=cfg.device)


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


def _replicates(correct: dict[str, Bool[np.ndarray, " tokens"]],
                groups: Int[np.ndarray, " tokens"],
                weights: Float[np.ndarray, "resamples groups"] | None,
                mask: Bool[np.ndarray, " tokens"] | None = None, device: str = "cpu"
                ) -> dict[str, Float[np.ndarray, " resamples"]] | None:
    """Bootstrap accuracy of each predictor: weighted by how often its example was drawn.

    On ``device`` in torch: the weights gathered per token ``[resamples, tokens]`` times the
    hit matrix ``[tokens, predictors]``, summed in float64 (float32 on MPS), so the sums of
    integer counts are exact; a hit may be NaN (a floor without its input), which makes
    that predictor's replicates NaN. The numpy float32 version this replaced rounded each
    replicate to float32; the two agree to 6e-8 relative (2⁻²⁴)."""
    if weights is None:
        return None
    dev = dm.resolve(device)
    cols = torch.from_numpy(np.asarray(groups if mask is None else groups[mask], np.int64))
    w = dm.to_device(weights, dev)[:, cols.to(dev)]
    hits = dm.to_device(np.stack([np.asarray(v if mask is None else v[mask], np.float32)
                                  for v in correct.values()], axis=1), dev)
    acc = dm.to_numpy((w @ hits) / w.sum(dim=1, keepdim=True))
    return {k: acc[:, i] for i, k in enumerate(correct)}


def _stratify(strata: dict[str, np.ndarray], tr: np.ndarray, te: np.ndarray,
              correct: dict[str, np.ndarray], test_groups: np.ndarray,
              weights: np.ndarray | None, device: str = "cpu") -> tuple[dict, dict]:
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
            reps = _replicates(sub, test_groups, weights, mask, device)
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
        shared = [h for h in shared if h != EMBED_HOOK] or shared
        if not shared:
            raise LensbiasError(f"{store_a.path} and {store_b.path} share no hook; A has "
                                f"{', '.join(store_a.hooks)}, B has {', '.join(store_b.hooks)}")
        return shared
    missing = [h for h in cfg.hooks if h not in shared]
    if missing:
        raise LensbiasError(f"hook {', '.join(missing)} is not in both stores; they share "
                            f"{', '.join(shared) or 'none'}")
    return list(cfg.hooks)


def document_ids(store, example: Int[np.ndarray, " tokens"] | None = None
                 ) -> Int[np.ndarray, " tokens"]:
    """Per token, an id of its source document: the ``doc`` label (UD), else ``file``
    (code), else its own example; ids of the three kinds never collide. ``example``: the
    store's per-token example ids when the caller has read them already."""
    example = (store.tokens()["example"] if example is None else example).astype(np.int64)
    out = np.full(len(example), -1, np.int64)
    offset = 0
    for name in DOCUMENT_LABELS:
        if name in store.label_sets:
            codes = store.labels(name)
            free = (out < 0) & (codes >= 0)
            out[free] = codes[free] + offset
            offset += len(store.classes(name))
    missing = out < 0
    out[missing] = example[missing] + offset
    return np.unique(out, return_inverse=True)[1].astype(np.int64)


def concept_groups(sizes: dict[str, int], width: int, budget: int) -> list[list[str]]:
    """Concepts (in order) in consecutive groups whose rows (``sizes``: rows per concept) of
    ``width`` float32 features fit in ``budget`` bytes; a concept over the budget alone is
    a group of its own."""
    out: list[list[str]] = []
    used = 0
    for concept, n in sizes.items():
        cost = n * width * 4
        if out and used + cost <= budget:
            out[-1].append(concept)
            used += cost
        else:
            out.append([concept])
            used = cost
    return out


def token_strata(store) -> dict[str, np.ndarray]:
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

