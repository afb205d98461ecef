"""Probes, stage 4: the probe-pair report — a row per concept × hook, aggregates, JSON, a table.

Every accuracy and every A−B difference carries a percentile bootstrap interval over test
examples. Aggregates by domain and by frequency bucket average concepts with equal weight
and reuse the rows' bootstrap replicates (one shared resampling of the store's test
examples), so their intervals are paired across concepts too.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from lensbias.errors import LensbiasError

FORMAT = "lensbias.probe-report"
VERSION = 1
SURVIVAL_MIN_GAIN = 0.02
"""Survival is undefined (NaN) when A beats the majority baseline by less than this."""
NAN_CI = (math.nan, math.nan)


@dataclass
class ProbeRow:
    """One concept at one hook: A's probe, its transfer to B, B's own probe, directions."""

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
    """Whether B was mapped into A's space by Procrustes before transfer and cosines."""
    majority: float
    """Test accuracy of always answering the most frequent training class."""
    acc_a: float
    """A's probe on A's test activations."""
    transfer: float
    """A's probe, unchanged, on B's activations of the same test tokens."""
    retrained: float
    """A probe trained on B's activations (B's own space), on B's test activations."""
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
    survival: float
    """``clip((transfer - majority) / (acc_a - majority), 0, 1)``; NaN when
    ``acc_a - majority < SURVIVAL_MIN_GAIN``."""
    majority_ci: tuple[float, float] = NAN_CI
    acc_a_ci: tuple[float, float] = NAN_CI
    transfer_ci: tuple[float, float] = NAN_CI
    retrained_ci: tuple[float, float] = NAN_CI
    control_a_ci: tuple[float, float] = NAN_CI
    control_b_ci: tuple[float, float] = NAN_CI
    selectivity_a_ci: tuple[float, float] = NAN_CI
    selectivity_b_ci: tuple[float, float] = NAN_CI
    transfer_drop_ci: tuple[float, float] = NAN_CI
    retrained_drop_ci: tuple[float, float] = NAN_CI
    survival_ci: tuple[float, float] = NAN_CI
    strata: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    """``{"freq_bucket" | "domain": {value: {n_test, majority, acc_a, transfer, retrained}}}``
    on the test tokens of each stratum."""
    boot: dict[Any, np.ndarray] | None = field(default=None, repr=False, compare=False)
    """Bootstrap replicates kept in memory for aggregates; not serialised."""


@dataclass
class Aggregate:
    """Concepts averaged (equal weight) within one stratum value at one hook."""

    stratum: str
    """``domain`` or ``freq_bucket``."""
    value: str
    hook: str
    n_concepts: int
    n_test: int
    majority: float
    acc_a: float
    transfer: float
    retrained: float
    transfer_drop: float
    survival: float
    """Survival of the averages: ``clip((transfer - majority) / (acc_a - majority), 0, 1)``."""
    acc_a_ci: tuple[float, float] = NAN_CI
    transfer_ci: tuple[float, float] = NAN_CI
    retrained_ci: tuple[float, float] = NAN_CI
    transfer_drop_ci: tuple[float, float] = NAN_CI
    survival_ci: tuple[float, float] = NAN_CI


@dataclass
class ProbeReport:
    """The result of ``ProbePair.fit``: rows, aggregates, what was skipped and why."""

    rows: list[ProbeRow]
    by_domain: list[Aggregate]
    by_frequency: list[Aggregate]
    skipped: list[dict[str, str]] = field(default_factory=list)
    """``{"concept", "reason"}`` for concepts left out (fewer than two frequent classes)."""
    config: dict[str, Any] = field(default_factory=dict)
    """The ``ProbeConfig`` that made the report, as a dict."""
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

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types: floats, lists, dicts; NaN as None."""
        return {"format": FORMAT, "version": VERSION, "model_a": self.model_a,
                "model_b": self.model_b, "dataset": self.dataset,
                "config": _jsonable(self.config),
                "rows": [_jsonable({k: v for k, v in asdict(r).items() if k != "boot"})
                         for r in self.rows],
                "by_domain": [_jsonable(asdict(a)) for a in self.by_domain],
                "by_frequency": [_jsonable(asdict(a)) for a in self.by_frequency],
                "skipped": _jsonable(self.skipped)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProbeReport:
        if data.get("format") != FORMAT or data.get("version") != VERSION:
            raise LensbiasError(f"not a lensbias probe report version {VERSION} (format "
                                f"{data.get('format')!r}, version {data.get('version')!r})")
        return cls(rows=[_load(ProbeRow, r) for r in data["rows"]],
                   by_domain=[_load(Aggregate, a) for a in data["by_domain"]],
                   by_frequency=[_load(Aggregate, a) for a in data["by_frequency"]],
                   skipped=list(data.get("skipped", [])), config=dict(data.get("config", {})),
                   model_a=data.get("model_a", ""), model_b=data.get("model_b", ""),
                   dataset=data.get("dataset", ""))

    def table(self) -> str:
        """A fixed-width text rendering: rows, then the aggregates (``½cos``: across halves)."""
        head = (f"{'concept':<16} {'hook':<26} {'cls':>3} {'test':>5} {'maj':>5} {'acc_a':>5} "
                f"{'trans':>5} {'retr':>5} {'sel_a':>5} {'sel_b':>5} {'cos_p':>5} {'½cosp':>5} "
                f"{'ceil':>5} {'cos_d':>5} {'½cosd':>5} {'ceil':>5}  survival")
        lines = [f"A = {self.model_a}, B = {self.model_b}, on {self.dataset}", head]
        for r in self.rows:
            nums = (r.majority, r.acc_a, r.transfer, r.retrained, r.selectivity_a,
                    r.selectivity_b, r.cos_probe, r.cos_probe_halves, r.ceiling_probe,
                    r.cos_dom, r.cos_dom_halves, r.ceiling_dom)
            lines.append(f"{r.concept[:16]:<16} {r.hook[:26]:<26} {r.n_classes:>3} "
                         f"{r.n_test:>5} " + " ".join(_num(x) for x in nums)
                         + f"  {_num(r.survival)} {_ci(r.survival_ci)}")
        for title, aggs in (("by domain", self.by_domain), ("by frequency", self.by_frequency)):
            if aggs:
                lines += ["", f"{title:<16} {'hook':<26} {'n':>3} {'test':>5} {'maj':>5} "
                          f"{'acc_a':>5} {'trans':>5} {'retr':>5}  survival"]
            for a in aggs:
                lines.append(f"{a.value[:16]:<16} {a.hook[:26]:<26} {a.n_concepts:>3} "
                             f"{a.n_test:>5} {_num(a.majority)} {_num(a.acc_a)} "
                             f"{_num(a.transfer)} {_num(a.retrained)}  {_num(a.survival)} "
                             f"{_ci(a.survival_ci)}")
        for s in self.skipped:
            lines.append(f"skipped {s['concept']}: {s['reason']}")
        return "\n".join(lines)


def survival(transfer: np.ndarray | float, acc_a: np.ndarray | float,
             majority: np.ndarray | float) -> np.ndarray:
    """Share of A's above-majority accuracy that A's probe keeps on B, clipped to [0, 1]."""
    gain = np.asarray(acc_a, dtype=np.float64) - majority
    with np.errstate(divide="ignore", invalid="ignore"):
        kept = np.clip((np.asarray(transfer, dtype=np.float64) - majority) / gain, 0.0, 1.0)
    return np.where(gain >= SURVIVAL_MIN_GAIN, kept, np.nan)


def percentile_ci(replicates: np.ndarray | None, confidence: float) -> tuple[float, float]:
    """Percentile interval of bootstrap replicates (NaN replicates ignored)."""
    if replicates is None or not np.isfinite(replicates).any():
        return NAN_CI
    tail = 100 * (1 - confidence) / 2
    lo, hi = np.nanpercentile(replicates, [tail, 100 - tail])
    return float(lo), float(hi)


def aggregate(rows: list[ProbeRow], stratum: str, confidence: float = 0.95) -> list[Aggregate]:
    """Average concepts within each value of ``stratum`` at each hook, with paired intervals."""
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
            surv = None if mean_rep is None else survival(mean_rep[:, 2], mean_rep[:, 1],
                                                          mean_rep[:, 0])
            out.append(Aggregate(
                stratum, value, hook, len(group),
                int(sum(r.strata[stratum][value]["n_test"] for r in group)),
                point["majority"], point["acc_a"], point["transfer"], point["retrained"],
                point["acc_a"] - point["transfer"],
                float(survival(point["transfer"], point["acc_a"], point["majority"])),
                ci(rep(1)), ci(rep(2)), ci(rep(3)), ci(drop), ci(surv)))
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
