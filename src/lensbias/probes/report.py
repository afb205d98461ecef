"""Probes, stage 4: the probe-pair report — a row per concept × hook, aggregates, JSON, a table.

Every accuracy, floor and reading carries a percentile bootstrap interval over test
documents. Aggregates by concept domain (``by_domain``) keep contextual concepts and
concepts readable from token identity apart, pool the concepts that enter as a ratio of
sums (Σ(reading accuracy − baseline) / Σ(acc_a − baseline)), unclipped, and reuse the
rows' bootstrap replicates (one shared resampling of the store's test documents), so
their intervals are paired across concepts. ``by_frequency`` averages accuracies per token
frequency bucket as before.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from lensbias.errors import LensbiasError

FORMAT = "lensbias.probe-report"
VERSION = 2
EXPORTED_REPLICATES = ("acc_a", "baseline", "retrained", "transfer", "aligned_transfer")
EXPORTED_COUNT = 64
"""A row's ``to_dict`` carries its first 64 bootstrap replicates of these accuracies (4
decimals): the document level of the study's cluster bootstrap (``sweep.stats``), which
needs each reading's numerator (x − baseline) and denominator (acc_a − baseline) to form
ratios of sums. The replicates share one resampling of the test documents across a
report's rows, and a seed draws the same resamples in every cell (same split, same
bootstrap seed), so replicate i is one document resample wherever it appears."""
MIN_GAIN = 0.02
"""A reading is undefined (NaN) when A beats its baseline by less than this."""
SURVIVAL_MIN_GAIN = MIN_GAIN
READINGS = ("information", "readout", "aligned_readout")
"""The three readings of what survived, in the order reports show them."""
READING_ACC = {"information": "retrained", "readout": "transfer",
               "aligned_readout": "aligned_transfer"}
"""The accuracy each reading normalises."""
NAN_CI = (math.nan, math.nan)


@dataclass
class ProbeRow:
    """One concept at one hook: floors, A's probe, its readings on B, directions."""

    concept: str
    hook: str
    layer: int | None
    """Block index parsed from the hook name (``blocks.3.…`` → 3), else None."""
    domain: str | None
    """``code`` / ``prose`` when ≥ 90% of the concept's tokens carry it, else ``mixed``;
    None when the store has no ``domain`` label."""
    classes: list[str]
    """Classes probed (after dropping those under ``min_class_tokens``)."""
    n_classes: int
    n_train: int
    n_test: int
    aligned: bool
    """Whether ``readout`` went through a Procrustes map (widths differ, or asked for)."""
    majority: float
    """Test accuracy of always answering the most frequent training class."""
    token_id: float
    """Test accuracy of the most frequent training label per token id (``TokenIdLookup``);
    NaN when the store gave no token ids."""
    embed: float
    """Test accuracy of the same probe on A's context-free embedding stream
    (``blocks.0.hook_resid_pre``); NaN when the store does not hold it."""
    floor: float
    """``max(majority, token_id, embed)``."""
    acc_a: float
    """A's probe on A's test activations."""
    context_gain: float
    """``acc_a - floor``: what context adds over token identity (and position)."""
    kind: str
    """``contextual`` when the context gain's lower bound is > 0, else ``token identity``."""
    baseline_kind: str
    """``floor`` for contextual rows, ``majority`` for token-identity rows."""
    baseline: float
    """The accuracy every reading is normalised to."""
    transfer: float
    """A's probe, unchanged, on B's activations of the same test tokens."""
    retrained: float
    """A probe trained on B's activations (B's own space), on B's test activations."""
    aligned_transfer: float
    """A's probe on B after the label-free re-alignment ``realign``."""
    information: float
    """``(retrained - baseline) / (acc_a - baseline)``: is the concept still linearly in B?"""
    readout: float
    """``(transfer - baseline) / (acc_a - baseline)``: does A's read-out still work on B?"""
    aligned_readout: float
    """``(aligned_transfer - baseline) / (acc_a - baseline)``: after re-alignment. All three
    are unclipped; NaN when ``acc_a - baseline < MIN_GAIN``."""
    survival: float
    """Equal to ``readout`` (the name the sweep tables use)."""
    control_a: float
    """Control task (a random label per word type) probed on A; NaN without controls."""
    control_b: float
    selectivity_a: float
    """``acc_a - control_a`` (Hewitt & Liang 2019)."""
    selectivity_b: float
    """``retrained - control_b``."""
    transfer_drop: float
    """``acc_a - transfer``."""
    retrained_drop: float
    """``acc_a - retrained``."""
    cos_probe: float
    """Cosine of A's and B's probe directions (raw space, per class, mean over classes)."""
    cos_dom: float
    """Cosine of A's and B's difference-of-means directions (class mean − overall mean)."""
    ceiling_probe: float
    """Cosine of two A probes trained on disjoint halves of the training examples."""
    ceiling_dom: float
    cos_probe_halves: float
    """A-vs-B probe cosine across the halves (A on one, B on the other, mean of both ways):
    like the ceiling it shares no training tokens, so compare it with ``ceiling_probe``
    (``cos_probe`` shares all of them and can exceed the ceiling)."""
    cos_dom_halves: float
    n_test_docs: int = 0
    """Source documents the test tokens come from (the bootstrap's unit)."""
    underpowered: bool = False
    """Fewer test tokens than ``ProbeConfig.min_test_tokens``: shown, not aggregated."""
    realign: str = "affine"
    """The label-free map behind ``aligned_transfer`` (``probes.align``)."""
    C_a: float = math.nan
    """The C of A's probe (chosen on the training split unless fixed)."""
    C_b: float = math.nan
    train_acc_a: float = math.nan
    """A's probe on its own training tokens (compare with ``acc_a`` for overfitting)."""
    train_retrained: float = math.nan
    converged: bool = True
    """Both probes stopped at the gradient tolerance before ``max_iter``."""
    majority_ci: tuple[float, float] = NAN_CI
    token_id_ci: tuple[float, float] = NAN_CI
    embed_ci: tuple[float, float] = NAN_CI
    floor_ci: tuple[float, float] = NAN_CI
    acc_a_ci: tuple[float, float] = NAN_CI
    context_gain_ci: tuple[float, float] = NAN_CI
    baseline_ci: tuple[float, float] = NAN_CI
    transfer_ci: tuple[float, float] = NAN_CI
    retrained_ci: tuple[float, float] = NAN_CI
    aligned_transfer_ci: tuple[float, float] = NAN_CI
    information_ci: tuple[float, float] = NAN_CI
    readout_ci: tuple[float, float] = NAN_CI
    aligned_readout_ci: tuple[float, float] = NAN_CI
    survival_ci: tuple[float, float] = NAN_CI
    control_a_ci: tuple[float, float] = NAN_CI
    control_b_ci: tuple[float, float] = NAN_CI
    selectivity_a_ci: tuple[float, float] = NAN_CI
    selectivity_b_ci: tuple[float, float] = NAN_CI
    transfer_drop_ci: tuple[float, float] = NAN_CI
    retrained_drop_ci: tuple[float, float] = NAN_CI
    strata: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    """``{"freq_bucket" | "domain": {value: {n_test, majority, acc_a, transfer, retrained}}}``
    on the test tokens of each stratum."""
    boot: dict[Any, np.ndarray] | None = field(default=None, repr=False, compare=False)
    """Bootstrap replicates kept in memory for aggregates; not serialised."""


@dataclass
class ReadingAggregate:
    """The concepts of one domain and one kind at one hook, pooled as a ratio of sums."""

    hook: str
    domain: str
    """The rows' ``domain`` (``code``, ``prose``, ``mixed``, a user's domain)."""
    kind: str
    """``contextual`` or ``token identity``."""
    n_concepts: int
    """Concepts that entered (gain over their baseline with lower bound > 0, not
    underpowered)."""
    concepts: list[str]
    n_test: int
    acc_a: float
    """Mean of the entering concepts' A accuracies."""
    baseline: float
    """Mean of their baselines (floor for contextual, majority for token identity)."""
    information: float
    """Σ(retrained − baseline) / Σ(acc_a − baseline) over the entering concepts."""
    readout: float
    aligned_readout: float
    information_ci: tuple[float, float] = NAN_CI
    readout_ci: tuple[float, float] = NAN_CI
    aligned_readout_ci: tuple[float, float] = NAN_CI
    excluded: list[dict[str, str]] = field(default_factory=list)
    """``{"concept", "reason"}`` of this domain and kind's rows left out at this hook."""


@dataclass
class Aggregate:
    """Concepts averaged (equal weight) within one stratum value at one hook (accuracies)."""

    stratum: str
    """``freq_bucket`` (or ``domain``)."""
    value: str
    hook: str
    n_concepts: int
    n_test: int
    majority: float
    acc_a: float
    transfer: float
    retrained: float
    transfer_drop: float
    acc_a_ci: tuple[float, float] = NAN_CI
    transfer_ci: tuple[float, float] = NAN_CI
    retrained_ci: tuple[float, float] = NAN_CI
    transfer_drop_ci: tuple[float, float] = NAN_CI


@dataclass
class ProbeReport:
    """The result of ``ProbePair.fit``: rows, aggregates, what was skipped and why."""

    rows: list[ProbeRow]
    by_domain: list[ReadingAggregate]
    by_frequency: list[Aggregate]
    skipped: list[dict[str, str]] = field(default_factory=list)
    """``{"concept", "reason"}`` for concepts left out (fewer than two frequent classes)."""
    config: dict[str, Any] = field(default_factory=dict)
    """The ``ProbeConfig`` that made the report, as a dict (plus ``embed_hook``)."""
    model_a: str = ""
    model_b: str = ""
    dataset: str = ""

    def row(self, concept: str, hook: str) -> ProbeRow:
        for row in self.rows:
            if row.concept == concept and row.hook == hook:
                return row
        raise LensbiasError(f"the report has no row for concept {concept!r} at hook {hook!r}")

    def best_layer(self, concept: str, metric: str = "acc_a") -> ProbeRow:
        """The concept's row with the highest ``metric`` (earliest hook on ties)."""
        rows = [r for r in self.rows if r.concept == concept]
        if not rows:
            raise LensbiasError(f"the report has no concept {concept!r}; it has "
                                f"{', '.join(dict.fromkeys(r.concept for r in self.rows))}")
        return max(rows, key=lambda r: _finite(getattr(r, metric)))

    def aggregate(self, domain: str, hook: str, kind: str = "contextual") -> ReadingAggregate:
        for agg in self.by_domain:
            if agg.domain == domain and agg.hook == hook and agg.kind == kind:
                return agg
        raise LensbiasError(f"the report has no {kind} aggregate for domain {domain!r} at "
                            f"hook {hook!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types: floats, lists, dicts; NaN as None."""
        return {"format": FORMAT, "version": VERSION, "model_a": self.model_a,
                "model_b": self.model_b, "dataset": self.dataset,
                "config": _jsonable(self.config),
                "rows": [{**_jsonable({k: v for k, v in asdict(r).items() if k != "boot"}),
                          **_exported_replicates(r)} for r in self.rows],
                "by_domain": [_jsonable(asdict(a)) for a in self.by_domain],
                "by_frequency": [_jsonable(asdict(a)) for a in self.by_frequency],
                "skipped": _jsonable(self.skipped)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProbeReport:
        if data.get("format") != FORMAT or data.get("version") != VERSION:
            raise LensbiasError(f"not a lensbias probe report version {VERSION} (format "
                                f"{data.get('format')!r}, version {data.get('version')!r})")
        return cls(rows=[_load_row(r) for r in data["rows"]],
                   by_domain=[_load(ReadingAggregate, a) for a in data["by_domain"]],
                   by_frequency=[_load(Aggregate, a) for a in data["by_frequency"]],
                   skipped=list(data.get("skipped", [])), config=dict(data.get("config", {})),
                   model_a=data.get("model_a", ""), model_b=data.get("model_b", ""),
                   dataset=data.get("dataset", ""))

    def table(self) -> str:
        """A fixed-width text rendering: rows, then the aggregates."""
        head = (f"{'concept':<16} {'hook':<26} {'kind':<5} {'test':>5} {'maj':>5} {'tokid':>5} "
                f"{'embed':>5} {'acc_a':>5} {'gain':>5} {'info':>5} {'read':>5} {'align':>5} "
                f"{'sel_a':>5} {'cos_p':>5} {'½cosp':>5} {'ceil':>5}")
        lines = [f"A = {self.model_a}, B = {self.model_b}, on {self.dataset}", head]
        for r in self.rows:
            nums = (r.majority, r.token_id, r.embed, r.acc_a, r.context_gain, r.information,
                    r.readout, r.aligned_readout, r.selectivity_a, r.cos_probe,
                    r.cos_probe_halves, r.ceiling_probe)
            kind = "ctx" if r.kind == "contextual" else "tokid"
            flag = " (underpowered)" if r.underpowered else ""
            lines.append(f"{r.concept[:16]:<16} {r.hook[:26]:<26} {kind:<5} {r.n_test:>5} "
                         + " ".join(_num(x) for x in nums) + flag)
        if self.by_domain:
            lines += ["", f"{'by domain':<16} {'hook':<26} {'kind':<14} {'n':>3}  information"
                      "        readout            aligned readout"]
        for a in self.by_domain:
            lines.append(f"{a.domain[:16]:<16} {a.hook[:26]:<26} {a.kind:<14} "
                         f"{a.n_concepts:>3}  " + "  ".join(
                             f"{_num(getattr(a, k))} {_ci(getattr(a, f'{k}_ci')):<13}"
                             for k in READINGS))
        if self.by_frequency:
            lines += ["", f"{'by frequency':<16} {'hook':<26} {'n':>3} {'test':>5} {'maj':>5} "
                      f"{'acc_a':>5} {'trans':>5} {'retr':>5}"]
        for a in self.by_frequency:
            lines.append(f"{a.value[:16]:<16} {a.hook[:26]:<26} {a.n_concepts:>3} "
                         f"{a.n_test:>5} {_num(a.majority)} {_num(a.acc_a)} "
                         f"{_num(a.transfer)} {_num(a.retrained)}")
        for s in self.skipped:
            lines.append(f"skipped {s['concept']}: {s['reason']}")
        return "\n".join(lines)


def reading(accuracy: np.ndarray | float, acc_a: np.ndarray | float,
            baseline: np.ndarray | float) -> np.ndarray:
    """``(accuracy - baseline) / (acc_a - baseline)``, unclipped; NaN where A beats the
    baseline by less than ``MIN_GAIN``."""
    gain = np.asarray(acc_a, dtype=np.float64) - baseline
    with np.errstate(divide="ignore", invalid="ignore"):
        kept = (np.asarray(accuracy, dtype=np.float64) - baseline) / gain
    return np.where(gain >= MIN_GAIN, kept, np.nan)


def survival(transfer: np.ndarray | float, acc_a: np.ndarray | float,
             baseline: np.ndarray | float) -> np.ndarray:
    """The readout reading (kept under its old name for the sweep tables)."""
    return reading(transfer, acc_a, baseline)


def percentile_ci(replicates: np.ndarray | None, confidence: float) -> tuple[float, float]:
    """Percentile interval of bootstrap replicates (NaN replicates ignored)."""
    if replicates is None or not np.isfinite(replicates).any():
        return NAN_CI
    tail = 100 * (1 - confidence) / 2
    lo, hi = np.nanpercentile(replicates, [tail, 100 - tail])
    return float(lo), float(hi)


def aggregate_readings(rows: list[ProbeRow], confidence: float = 0.95
                       ) -> list[ReadingAggregate]:
    """Per hook, domain and kind: the ratio-of-sums readings of the entering concepts.

    A row enters when A's gain over its baseline has a lower bound > 0 (a point above
    ``MIN_GAIN`` without intervals) and it is not underpowered; the others are listed in
    ``excluded`` with the reason. Replicates are summed concept by concept within each
    resample, so the interval is paired across concepts.
    """
    out = []
    keys = ("acc_a", "baseline", *READING_ACC.values())
    for hook in dict.fromkeys(r.hook for r in rows):
        at_hook = [r for r in rows if r.hook == hook]
        for domain in sorted({_domain(r) for r in at_hook}):
            for kind in ("contextual", "token identity"):
                group = [r for r in at_hook if _domain(r) == domain and r.kind == kind]
                if not group:
                    continue
                entering, excluded = [], []
                for r in group:
                    low = _gain_low(r)
                    if r.underpowered:
                        excluded.append({"concept": r.concept,
                                         "reason": f"underpowered ({r.n_test} test tokens)"})
                    elif not low > 0:
                        excluded.append({"concept": r.concept, "reason": "A does not beat its "
                                         f"{r.baseline_kind} (gain lower bound {low:.3f})"})
                    else:
                        entering.append(r)
                point = {k: np.array([getattr(r, k) for r in entering], float) for k in keys}
                reps = ([np.stack([r.boot[k] for k in keys], axis=1) for r in entering]
                        if entering and all(r.boot and "acc_a" in r.boot for r in entering)
                        else None)
                values, cis = {}, {}
                for name, acc in READING_ACC.items():
                    values[name] = _ratio(point[acc], point["acc_a"], point["baseline"])
                    if reps is None:
                        cis[name] = NAN_CI
                        continue
                    stack = np.stack(reps)  # [concepts, resamples, keys]
                    i = keys.index(acc)
                    cis[name] = percentile_ci(_ratio(stack[:, :, i], stack[:, :, 0],
                                                     stack[:, :, 1], axis=0), confidence)
                out.append(ReadingAggregate(
                    hook, domain, kind, len(entering), [r.concept for r in entering],
                    int(sum(r.n_test for r in entering)),
                    float(point["acc_a"].mean()) if entering else math.nan,
                    float(point["baseline"].mean()) if entering else math.nan,
                    values["information"], values["readout"], values["aligned_readout"],
                    cis["information"], cis["readout"], cis["aligned_readout"], excluded))
    return out


def _domain(row: ProbeRow) -> str:
    return str(row.domain) if row.domain else "no domain"


def _gain_low(row: ProbeRow) -> float:
    """Lower bound of A's gain over the row's baseline (the point when no intervals)."""
    if row.boot and "acc_a" in row.boot and "baseline" in row.boot:
        lo, _ = percentile_ci(row.boot["acc_a"] - row.boot["baseline"], 0.95)
        if lo == lo:
            return lo
    gain = row.acc_a - row.baseline
    return gain - MIN_GAIN if gain == gain else math.nan


def _ratio(acc: np.ndarray, acc_a: np.ndarray, baseline: np.ndarray, axis: int = 0):
    """Σ(acc − baseline) / Σ(acc_a − baseline) along ``axis`` (NaN when empty or ≤ 0)."""
    if np.size(acc) == 0:
        return math.nan
    with np.errstate(invalid="ignore", divide="ignore"):
        num = np.nansum(np.asarray(acc) - baseline, axis=axis)
        den = np.nansum(np.asarray(acc_a) - baseline, axis=axis)
        value = np.where(den > 0, num / den, np.nan)
    return float(value) if np.ndim(value) == 0 else value


def aggregate(rows: list[ProbeRow], stratum: str, confidence: float = 0.95) -> list[Aggregate]:
    """Average concepts' accuracies within each value of ``stratum`` at each hook."""
    out = []
    for hook in dict.fromkeys(r.hook for r in rows):
        at_hook = [r for r in rows if r.hook == hook and stratum in r.strata]
        values = sorted({v for r in at_hook for v in r.strata[stratum]})
        for value in values:
            group = [r for r in at_hook if r.strata[stratum].get(value, {}).get("n_test", 0) > 0]
            if not group:
                continue
            keys = ("majority", "acc_a", "transfer", "retrained")
            point = {k: float(np.mean([r.strata[stratum][value][k] for r in group])) for k in keys}
            reps = [r.boot[(stratum, value)] for r in group
                    if r.boot is not None and (stratum, value) in r.boot]
            with warnings.catch_warnings():  # all-NaN replicate columns stay NaN
                warnings.simplefilter("ignore", RuntimeWarning)
                mean_rep = (np.nanmean(np.stack(reps), axis=0) if len(reps) == len(group)
                            else None)  # [resamples, 4] in the order of keys

            def ci(values: np.ndarray | None) -> tuple[float, float]:
                return percentile_ci(values, confidence)

            rep = (lambda i: mean_rep[:, i]) if mean_rep is not None else (lambda i: None)
            drop = None if mean_rep is None else mean_rep[:, 1] - mean_rep[:, 2]
            out.append(Aggregate(
                stratum, value, hook, len(group),
                int(sum(r.strata[stratum][value]["n_test"] for r in group)),
                point["majority"], point["acc_a"], point["transfer"], point["retrained"],
                point["acc_a"] - point["transfer"], ci(rep(1)), ci(rep(2)), ci(rep(3)),
                ci(drop)))
    return out


def _finite(x: float) -> float:
    return x if x == x else -math.inf


def _num(x: float) -> str:
    return f"{x:>5.2f}" if x == x else f"{'-':>5}"


def _ci(ci: tuple[float, float]) -> str:
    return f"[{ci[0]:.2f}, {ci[1]:.2f}]" if ci[0] == ci[0] else ""


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    return obj


def _exported_replicates(row: ProbeRow) -> dict[str, Any]:
    """``{"replicates": {reading: [...]}}`` for ``to_dict`` (empty without replicates)."""
    boot = row.boot or {}
    if not all(k in boot for k in EXPORTED_REPLICATES):
        return {}
    return {"replicates": {k: [None if not math.isfinite(x) else round(float(x), 4)
                               for x in np.asarray(boot[k])[:EXPORTED_COUNT]]
                           for k in EXPORTED_REPLICATES}}


def _load_row(data: dict[str, Any]) -> ProbeRow:
    """A row of ``to_dict``; its exported replicates come back as ``boot`` (so a report
    read back writes the same JSON)."""
    row = _load(ProbeRow, {k: v for k, v in data.items() if k != "replicates"})
    reps = data.get("replicates")
    if isinstance(reps, dict):
        row.boot = {k: np.array([math.nan if x is None else float(x) for x in v])
                    for k, v in reps.items() if k in EXPORTED_REPLICATES}
    return row


def _load(kind: type, data: dict[str, Any]) -> Any:
    names = {f.name: f for f in fields(kind)}
    values = {}
    for key, value in data.items():
        if key not in names:
            raise LensbiasError(f"probe report field {key!r} is unknown to this lensbias")
        kind_text = str(names[key].type)
        if key.endswith("_ci"):
            value = tuple(math.nan if v is None else float(v) for v in value)
        elif kind_text == "float":
            value = math.nan if value is None else float(value)
        elif key == "strata":
            value = {s: {v: {k: (math.nan if x is None else x) for k, x in m.items()}
                         for v, m in by.items()} for s, by in value.items()}
        values[key] = value
    return kind(**values)
