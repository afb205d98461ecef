"""Survival, stage 2: the result that joins probes, SAEs, geometry and behaviour for a pair.

``SurvivalResult`` holds every part with its provenance, serialises to ``summary.json``
(schema in docs/survival.md), loads back, and renders as the HTML report (``_repr_html_``).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lensbias.errors import LensbiasError

SCHEMA = "lensbias.survival"
SCHEMA_VERSION = 2


KEPT = 0.9
"""A reading whose interval lies at or above this is "kept" in the headline's diagnosis."""


def headline(probes: dict[str, Any]) -> dict[str, Any]:
    """What survived at the headline hook: how many concepts are token identity, and per
    domain the three readings of the contextual concepts, with a diagnosis.

    The headline hook is the one where the most concepts are contextual on A (ties: the
    deeper). It is chosen on A alone, so it favours no reading of B; a sentence encoder's
    last block, tuned for sentence similarity, would otherwise hide the contextual concepts
    of its middle blocks. The sentence names the hook.
    """
    rows = probes.get("rows", [])
    skipped = probes.get("skipped", [])
    not_measured = "; ".join(f"{s['concept']} ({s['reason']})" for s in skipped)
    if not rows:
        sentence = "No concepts were probed."
        if not_measured:
            sentence += f" Not measured: {not_measured}."
        return {"sentence": sentence, "by_domain": {}, "skipped": skipped}
    hook = headline_hook(rows)
    at_hook = [r for r in rows if r["hook"] == hook]
    token = [r["concept"] for r in at_hook if r.get("kind") != "contextual"]
    by_domain: dict[str, dict[str, Any]] = {}
    for agg in probes.get("by_domain", []):
        if agg.get("hook") == hook:
            by_domain.setdefault(agg["domain"], {})[agg["kind"]] = {
                k: agg.get(k) for k in ("n_concepts", "concepts", "acc_a", "baseline",
                                        "information", "information_ci", "readout",
                                        "readout_ci", "aligned_readout", "aligned_readout_ci",
                                        "excluded")}
    parts = [f"At {hook}, {len(token)} of {len(at_hook)} concepts are readable from token "
             "identity alone on this model" + (f" ({', '.join(token)})" if token else "") + "."]
    for domain, kinds in sorted(by_domain.items()):
        ctx = kinds.get("contextual")
        if ctx and ctx.get("n_concepts"):
            parts.append(f"{domain.capitalize()} concepts (contextual, "
                         f"{ctx['n_concepts']}) kept {_reading(ctx, 'information')} of their "
                         f"information (a probe retrained on B), {_reading(ctx, 'readout')} "
                         f"of A's readout and {_reading(ctx, 'aligned_readout')} after "
                         f"label-free re-alignment: {diagnosis(ctx)}.")
        tok = kinds.get("token identity")
        if tok and tok.get("n_concepts"):
            parts.append(f"{domain.capitalize()} token-identity concepts ({tok['n_concepts']}, "
                         f"against majority) kept {_reading(tok, 'information')} of their "
                         f"information and {_reading(tok, 'readout')} of A's readout.")
    contrast = _contrast(by_domain)
    if contrast:
        parts.append(contrast)
    if not_measured:
        parts.append(f"Not measured: {not_measured}.")
    return {"hook": hook, "n_concepts": len(at_hook), "n_token_identity": len(token),
            "token_identity": token, "by_domain": by_domain, "skipped": skipped,
            "sentence": " ".join(parts)}


def headline_hook(rows: list[dict[str, Any]]) -> str:
    """The hook with the most contextual concepts on A; ties go to the deeper hook."""
    hooks = list(dict.fromkeys(r["hook"] for r in rows))
    count = {h: sum(r.get("kind") == "contextual" for r in rows if r["hook"] == h) for h in hooks}
    return max(hooks, key=lambda h: (count[h], _layer(h), hooks.index(h)))


def diagnosis(agg: dict[str, Any]) -> str:
    """Which reading moved: information lost, nothing lost, or the basis shifted."""
    def low(k: str) -> float:
        ci = agg.get(f"{k}_ci") or [None, None]
        v = ci[0] if ci[0] is not None else agg.get(k)
        return v if isinstance(v, (int, float)) and math.isfinite(v) else math.nan

    def high(k: str) -> float:
        ci = agg.get(f"{k}_ci") or [None, None]
        v = ci[1] if ci[1] is not None else agg.get(k)
        return v if isinstance(v, (int, float)) and math.isfinite(v) else math.nan

    if not math.isfinite(low("information")):
        return "undefined (too few concepts or no intervals)"
    if high("information") < KEPT:
        return "information was lost, not just moved"
    if low("readout") >= KEPT:
        return "nothing was lost"
    if low("aligned_readout") >= KEPT:
        return "the basis shifted, nothing was lost"
    if low("information") >= KEPT:
        return ("the information is still there, but A's readout does not recover under a "
                "label-free re-alignment")
    return "the intervals do not settle whether the information or only A's readout moved"


def _reading(agg: dict[str, Any], key: str) -> str:
    ci = agg.get(f"{key}_ci") or [None, None]
    ci_txt = f" [{ci[0]:.2f}, {ci[1]:.2f}]" if None not in ci else ""
    return f"{_num(agg.get(key))}{ci_txt}"


def _contrast(by_domain: dict[str, dict[str, Any]]) -> str:
    """Code against prose on each reading whose intervals do not overlap."""
    code = (by_domain.get("code") or {}).get("contextual")
    prose = (by_domain.get("prose") or {}).get("contextual")
    if not code or not prose:
        return ""
    apart = []
    for key, name in (("information", "information"), ("readout", "A's readout"),
                      ("aligned_readout", "the aligned readout")):
        c, p = code.get(f"{key}_ci") or [None, None], prose.get(f"{key}_ci") or [None, None]
        if None in c or None in p:
            continue
        if c[1] < p[0]:
            apart.append(f"code lost more of {name}")
        elif p[1] < c[0]:
            apart.append(f"prose lost more of {name}")
    if not apart:
        return "Code and prose intervals overlap on every reading."
    return "Intervals do not overlap: " + "; ".join(apart) + "."


def _layer(hook: str) -> int:
    parts = hook.split(".")
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else -1


def _num(x: Any) -> str:
    return "–" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.2f}"


@dataclass
class SurvivalResult:
    """Everything ``lensbias diff`` measured for one pair of models."""

    provenance: dict[str, Any]
    """Models (names, weights sha256), recipe, dataset, seeds, lensbias version, timings."""
    probes: dict[str, Any]
    """``ProbeReport.to_dict()``."""
    geometry: dict[str, Any]
    """``GeometryReport.to_dict()``."""
    behaviour: dict[str, Any] | None = None
    """``BehaviourReport.to_dict()``; None for encoders."""
    saes: dict[str, Any] = field(default_factory=dict)
    """``{hook: SAEReport.to_dict()}``; empty without SAEs."""

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "schema_version": SCHEMA_VERSION,
                "headline": headline(self.probes), "provenance": self.provenance,
                "probes": self.probes, "geometry": self.geometry,
                "behaviour": self.behaviour, "saes": self.saes}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SurvivalResult:
        if data.get("schema") != SCHEMA:
            raise LensbiasError(f"not a lensbias summary (schema {data.get('schema')!r})")
        if data.get("schema_version") != SCHEMA_VERSION:
            raise LensbiasError(f"summary schema version {data.get('schema_version')}; this "
                                f"lensbias reads version {SCHEMA_VERSION}")
        return cls(data["provenance"], data["probes"], data["geometry"], data.get("behaviour"),
                   data.get("saes") or {})

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write summary.json atomically."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1, allow_nan=False))
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SurvivalResult:
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise LensbiasError(f"{path} does not exist") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise LensbiasError(f"{path} is not valid JSON ({err})") from None
        if not isinstance(data, dict):
            raise LensbiasError(f"{path} is not a lensbias summary")
        return cls.from_dict(data)

    def html(self) -> str:
        from lensbias.report import render_html

        return render_html(self.to_dict())

    def _repr_html_(self) -> str:
        return self.html()

    @property
    def headline(self) -> str:
        return headline(self.probes)["sentence"]
