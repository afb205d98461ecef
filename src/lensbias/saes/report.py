"""The result of a frozen-SAE survival comparison: one row per feature of A's SAE, a summary,
and a JSON round trip (NaN written as null, read back as NaN).

Schema of ``SAEReport.to_dict()`` (version 2; version 1 files, without the v2 fields,
still load)::

    {"version": 2,
     "summary": {...},            # see FeatureSurvival.compare and docs/survival.md
     "features": [                # one per feature of A's SAE, by index
        {"index": int, "verdict": "survived"|"blurred"|"dead"|"inactive"|"withheld",
         "verdict_aligned": str|null, "verdict_info": str|null,   # same values
         "pearson_r_aligned": float|null, "rate_b_aligned": float|null,
         "pearson_r_info": float|null, "rate_b_info": float|null,
         "stable": bool|null, "stability_cosine": float|null, "seed_match": int|null,
         "seed_r": float|null, "decoder_norm": float|null,
         "pearson_r": float|null, "rate_a": float, "rate_b": float,
         "peak_a": float, "peak_b": float, "mean_active_a": float|null,
         "mean_active_b": float|null, "domain_share_code": float|null,
         "domain": "code"|"prose"|"mixed"|null,
         "top_concept": str|null, "top_label": str|null, "lift": float|null,
         "match_b": int|null, "match_cosine": float|null,
         "contexts": [{"row": int, "example": int, "position": int, "center": int,
                       "tokens": [str], "act_a": [float], "act_b": [float]}]}]}
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

VERDICTS = ("survived", "blurred", "dead", "inactive", "withheld")
SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)


@dataclass
class FeatureRow:
    """One feature of A's SAE, compared on A's and B's activations of the same tokens."""

    index: int
    """Feature index in A's SAE."""
    verdict: str
    """Readout verdict (A's frozen SAE on B's activations as they are): 'survived',
    'blurred', 'dead' (lost in B), 'inactive' (too rare on A to judge) or 'withheld' (A's
    SAE missed a quality bar: no per-feature claim is made)."""
    pearson_r: float
    """Pearson r of the feature's activations on A vs on B over the same tokens (NaN when
    either side is constant)."""
    rate_a: float
    """Share of tokens on which the feature fires (> 0) with A's activations."""
    rate_b: float
    """The same with B's activations."""
    peak_a: float
    """Largest activation on A."""
    peak_b: float
    """Largest activation on B."""
    mean_active_a: float = float("nan")
    """Mean activation over the tokens where it fires on A."""
    mean_active_b: float = float("nan")
    """Mean activation over the tokens where it fires on B."""
    domain_share_code: float = float("nan")
    """Balanced share of A's activation mass on code tokens: mean activation per code token
    / (that + mean per non-code token); 0.5 = indifferent, whatever the token mix."""
    domain: str | None = None
    """'code', 'prose' or 'mixed' from ``domain_share_code`` and the thresholds."""
    top_concept: str | None = None
    """Token label set of the most associated concept (highest lift)."""
    top_label: str | None = None
    """Class of ``top_concept`` with the highest lift."""
    lift: float = float("nan")
    """P(class | feature fires on A) / P(class), among tokens labelled in that set."""
    match_b: int | None = None
    """Index of the matched feature in an SAE trained on B (when one was given)."""
    match_cosine: float = float("nan")
    """Cosine between the matched decoder directions."""
    verdict_aligned: str | None = None
    """Aligned readout: A's frozen SAE on B after the label-free map of B onto A
    (``lensbias.probes.align.AlignMap``, fitted on unlabeled training-document tokens)."""
    pearson_r_aligned: float = float("nan")
    """r of the feature on A vs on the re-aligned B."""
    rate_b_aligned: float = float("nan")
    """Firing rate on the re-aligned B."""
    verdict_info: str | None = None
    """Information reading: the matched feature of an SAE trained on B (Hungarian matching
    of decoder directions, B's carried into A's space by the map's linear part); 'dead'
    when no B feature matches at ``match_cosine``."""
    pearson_r_info: float = float("nan")
    """r of the feature on A vs its matched B-SAE feature on B, same tokens."""
    rate_b_info: float = float("nan")
    """Firing rate of the matched B-SAE feature on B."""
    stable: bool | None = None
    """Whether a second SAE on A (another seed) has a feature with decoder cosine ≥
    ``stable_cosine`` (best match); None without a second SAE."""
    stability_cosine: float = float("nan")
    """Best-match decoder cosine in the second SAE on A."""
    seed_match: int | None = None
    """Index of that best match in the second SAE."""
    seed_r: float = float("nan")
    """The seed-to-seed null: r of this feature and its best match, both on A's tokens."""
    decoder_norm: float = float("nan")
    """L2 norm of the feature's decoder row (raw-activation units)."""
    contexts: list[dict[str, Any]] = field(default_factory=list)
    """Top-activating tokens on A with their windows: each token's own text, whitespace
    before it included (concatenated they read like the source), A and B activations."""


@dataclass
class SAEReport:
    """Per-feature rows and a summary; ``to_dict``/``from_dict``/``save``/``load``."""

    features: list[FeatureRow]
    summary: dict[str, Any]

    def counts(self, domain: str | None = None) -> dict[str, int]:
        rows = [f for f in self.features if domain is None or f.domain == domain]
        return {v: sum(f.verdict == v for f in rows) for v in VERDICTS}

    def by_verdict(self, verdict: str) -> list[FeatureRow]:
        return [f for f in self.features if f.verdict == verdict]

    def to_dict(self) -> dict[str, Any]:
        return _nan_to_none({"version": SCHEMA_VERSION, "summary": self.summary,
                             "features": [asdict(f) for f in self.features]})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SAEReport:
        version = data.get("version")
        if version not in READABLE_VERSIONS:
            from lensbias.errors import LensbiasError

            raise LensbiasError(f"SAE report version {version!r}; this lensbias reads "
                                f"versions {', '.join(map(str, READABLE_VERSIONS))}")
        floats = {f.name for f in fields(FeatureRow) if f.type in ("float", float)}
        rows = []
        for raw in data["features"]:
            values = {k: (float("nan") if v is None and k in floats else v)
                      for k, v in raw.items()}
            values["contexts"] = [_context_from_json(c) for c in values.get("contexts", [])]
            rows.append(FeatureRow(**values))
        return cls(rows, data["summary"])

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), allow_nan=False)

    def save(self, path: str | os.PathLike[str]) -> Path:
        path = Path(path)
        path.write_text(self.to_json())
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SAEReport:
        return cls.from_dict(json.loads(Path(path).read_text()))


def _context_from_json(c: dict[str, Any]) -> dict[str, Any]:
    out = dict(c)
    for key in ("act_a", "act_b"):
        out[key] = [float("nan") if v is None else v for v in c.get(key, [])]
    return out


def _nan_to_none(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_nan_to_none(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        return _nan_to_none(value.item())
    return value
