"""Do different compressions of the same A damage the same SAE features?

Duan (2026) compares RTN quantisation with magnitude pruning at matched perplexity and
finds overlapping damaged sets (Jaccard 0.79–0.86) and nearly identical damage rankings
(Spearman 0.98). ``damage_overlap`` computes both for any number of compressions of one A,
each given as the ``saes[hook]`` dict of its ``summary.json`` (``SAEReport.to_dict()``):

- the features compared are those stable and active in every report (``stable`` is not
  False and the verdict is a judgement: survived, blurred or dead);
- *damaged* = not 'survived' in the chosen reading; Jaccard = |D_i ∩ D_j| / |D_i ∪ D_j|
  (NaN when both sets are empty);
- *damage score* = 1 − r of the reading (NaN r counts as damage 1), Spearman ρ over the
  common features.

Feature indices mean the same feature only when every report used the same SAE of A:
reports whose ``summary.sae_a_sha256`` differ are refused.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from lensbias.errors import LensbiasError

R_FIELD = {"verdict": "pearson_r", "verdict_aligned": "pearson_r_aligned",
           "verdict_info": "pearson_r_info"}
JUDGED = ("survived", "blurred", "dead")


def damage_overlap(reports: dict[str, dict[str, Any]], reading: str = "verdict"
                   ) -> dict[str, Any]:
    """``{"names", "n_features", "jaccard": [[...]], "spearman": [[...]], "damaged": {name: n}}``
    over the features stable and judged in every report (see the module docstring)."""
    from scipy.stats import spearmanr

    if reading not in R_FIELD:
        raise LensbiasError(f"reading {reading!r} is unknown; use one of {', '.join(R_FIELD)}")
    names = list(reports)
    if len(names) < 2:
        raise LensbiasError("damage overlap needs at least two compressions of the same A")
    digests = {(reports[n].get("summary") or {}).get("sae_a_sha256") for n in names}
    if len(digests) != 1 or None in digests:
        raise LensbiasError("these reports did not use one and the same SAE of A "
                            "(summary.sae_a_sha256 differs or is missing): feature indices "
                            "do not refer to the same features")
    by_index = [{int(f["index"]): f for f in reports[n].get("features", [])} for n in names]
    common = sorted(set.intersection(*[
        {i for i, f in rows.items() if f.get(reading) in JUDGED and f.get("stable") is not False}
        for rows in by_index]))
    damaged = [np.asarray([rows[i][reading] != "survived" for i in common], dtype=bool)
               for rows in by_index]  # dtype: no common feature gives empty boolean sets
    score = [np.asarray([_damage(rows[i].get(R_FIELD[reading])) for i in common], dtype=float)
             for rows in by_index]
    k = len(names)
    jac = np.full((k, k), np.nan)
    rho = np.full((k, k), np.nan)
    for i in range(k):
        for j in range(k):
            union = int((damaged[i] | damaged[j]).sum())
            if union:
                jac[i, j] = int((damaged[i] & damaged[j]).sum()) / union
            if len(common) >= 3 and np.ptp(score[i]) > 0 and np.ptp(score[j]) > 0:
                rho[i, j] = float(spearmanr(score[i], score[j]).statistic)
    return {"reading": reading, "names": names, "n_features": len(common),
            "damaged": {n: int(d.sum()) for n, d in zip(names, damaged)},
            "jaccard": _rows(jac), "spearman": _rows(rho)}


def _damage(r: Any) -> float:
    return 1.0 if r is None or not math.isfinite(float(r)) else 1.0 - float(r)


def _rows(m: np.ndarray) -> list[list[float | None]]:
    return [[None if not math.isfinite(v) else float(v) for v in row] for row in m]
