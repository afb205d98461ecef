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
SCHEMA_VERSION = 1


def headline(probes: dict[str, Any]) -> dict[str, Any]:
    """Which domain lost more: survival of code vs prose concepts at the deepest probed layer."""
    aggs = [a for a in probes.get("by_domain", []) if a.get("value") in ("code", "prose")]
    if not aggs:
        return {"sentence": "No code/prose concepts were probed.", "by_domain": {}}
    deepest = max(aggs, key=lambda a: _layer(a["hook"]))["hook"]
    by_domain = {a["value"]: {"survival": a.get("survival"), "survival_ci": a.get("survival_ci"),
                              "acc_a": a.get("acc_a"), "transfer": a.get("transfer"),
                              "n_concepts": a.get("n_concepts")}
                 for a in aggs if a["hook"] == deepest}
    return {"hook": deepest, "by_domain": by_domain, "sentence": _sentence(by_domain, deepest)}


def _layer(hook: str) -> int:
    parts = hook.split(".")
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else -1


def _sentence(by_domain: dict[str, dict[str, Any]], hook: str) -> str:
    def txt(d: str) -> str:
        v = by_domain[d]
        ci = v.get("survival_ci") or [None, None]
        ci_txt = f" [{ci[0]:.2f}, {ci[1]:.2f}]" if None not in ci else ""
        return f"{d} concepts kept {_num(v.get('survival'))}{ci_txt}"

    if not {"code", "prose"} <= set(by_domain):
        only = next(iter(by_domain))
        return f"At {hook}, {txt(only)} of their above-baseline probe accuracy."
    code, prose = by_domain["code"], by_domain["prose"]
    lo_c, hi_c = code.get("survival_ci") or (None, None)
    lo_p, hi_p = prose.get("survival_ci") or (None, None)
    sc, sp = code.get("survival"), prose.get("survival")
    if sc is None or sp is None:
        verdict = "survival is undefined for one domain (A barely beats the baseline)"
    elif None not in (lo_c, hi_c, lo_p, hi_p) and (hi_c < lo_p or hi_p < lo_c):
        verdict = f"{'code' if sc < sp else 'prose'} lost more (intervals do not overlap)"
    else:
        verdict = "the intervals overlap, so neither domain clearly lost more"
    return f"At {hook}, {txt('code')} and {txt('prose')} of their above-baseline probe accuracy: {verdict}."


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
