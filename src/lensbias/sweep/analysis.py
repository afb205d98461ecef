"""Sweeps, part 3: what a results table says. Plain functions over rows, plain dicts out.

- ``interaction``: per method and level, does calibrating on a domain protect that domain's
  concepts? ``[S(code|code) − S(code|prose)] − [S(prose|code) − S(prose|prose)]``, where
  ``S(d|c)`` is the mean survival of concepts of domain ``d`` after calibrating on ``c``;
  positive: each calibration domain protects its own concepts. 95% percentile bootstrap
  interval, resampling seeds (with replacement) and, within each concept domain, concepts.
- ``phase_curves``: mean survival vs level per method, calibration domain and concept domain,
  with the collapse threshold: the level where survival first drops below 0.5, linearly
  interpolated between the last level above and the first below (read in the direction of
  harder compression; the first level itself when survival starts below 0.5; None if never).
- ``anisotropy_vs_loss``: Spearman rank correlation across cells between the change in
  anisotropy (B − A, mean over the probed layers, all tokens) and survival loss (1 − mean
  survival).
- ``model_view``: the training-data view of the original models: per model and domain, its
  bits per byte on held-out text (the compression rate it reached in training) beside its
  probe accuracy above the majority baseline and above its floors, and the survival of its
  contextual concepts on each reading, each with a bootstrap interval over seeds and
  concepts.

Rows are ``read_results`` rows; rows without a survival (A barely beats the baseline) are
left out of every mean.
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from lensbias.sweep.config import MORE_IS_LESS
from lensbias.sweep.stats import (CELLS, MAX_BOOT, READINGS, contrast, entering, method_label,
                                  resample_counts, row_calib_domain, stable_interval,
                                  study_kinds)

THRESHOLD = 0.5
DOMAINS = ("code", "prose")


def _ok(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _rows_with_survival(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if _ok(r.get("survival"))]


BOOT_BLOCK = 8192
"""Resamples per block in this module's bootstraps (a ``[rows, block]`` weight array at a time)."""


def interaction(rows: list[dict[str, Any]], n_boot: int = 1000, seed: int = 0,
                confidence: float = 0.95) -> dict[str, Any]:
    """Calibration domain × concept domain interaction per (method, level), with a bootstrap CI
    over seeds and, within each domain, concepts (from ``n_boot`` resamples raised until
    both bounds move by less than 0.01 across 10 RNG seeds: ``stats.stable_interval``).

    Returns ``{"definition", "confidence", "n_boot", "rows": [{method, param, level,
    interaction, ci: [lo, hi] | None, means: {"code|code": S(code concepts | code calib),
    ...}, n_rows, n_seeds, n_concepts: {code, prose}}]}``; ``interaction`` is None when one
    of the four (concept domain, calibration domain) combinations has no rows.
    """
    groups: dict[tuple[str, str, Any], list[dict[str, Any]]] = defaultdict(list)
    for r in _rows_with_survival(rows):
        if row_calib_domain(r) in DOMAINS and r.get("concept_domain") in DOMAINS:
            groups[(method_label(r), r.get("param"), r["level"])].append({
                **r, "calib": row_calib_domain(r)})  # a corpus counts as its domain
    out = []
    for (method, param, level), group in sorted(groups.items(), key=lambda kv: _gkey(kv[0])):
        out.append({"method": method, "param": param, "level": level,
                    **_interaction_group(group, n_boot, seed, confidence)})
    return {"definition": "S(code|code calib) - S(code|prose calib) - "
                          "[S(prose|code calib) - S(prose|prose calib)]",
            "confidence": confidence, "n_boot": n_boot, "rows": out}


def _gkey(key: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple((0, x, "") if _ok(x) else (1, 0, str(x)) for x in key)


def _interaction_group(group: list[dict[str, Any]], n_boot: int, seed: int,
                       confidence: float) -> dict[str, Any]:
    seeds = sorted({r["seed"] for r in group})
    concepts = {d: sorted({r["concept"] for r in group if r["concept_domain"] == d})
                for d in DOMAINS}
    seed_ix = {s: i for i, s in enumerate(seeds)}
    concept_ix = {(d, c): i for d in DOMAINS for i, c in enumerate(concepts[d])}
    s = np.array([r["survival"] for r in group], float)
    si = np.array([seed_ix[r["seed"]] for r in group])
    ci_ = np.array([concept_ix[(r["concept_domain"], r["concept"])] for r in group])
    dom = np.array([DOMAINS.index(r["concept_domain"]) for r in group])
    cal = np.array([DOMAINS.index(r["calib"]) for r in group])
    masks = {(d, c): (dom == i) & (cal == j)
             for i, d in enumerate(DOMAINS) for j, c in enumerate(DOMAINS)}
    means = {f"{d}|{c}": (float(s[m].mean()) if m.any() else None) for (d, c), m in masks.items()}
    info = {"n_rows": len(group), "n_seeds": len(seeds),
            "n_concepts": {d: len(concepts[d]) for d in DOMAINS}, "means": means}
    if any(v is None for v in means.values()):
        return {"interaction": None, "ci": None, **info}
    value = contrast(means)
    onehot = np.zeros((4, len(group)))
    for k, m in enumerate(masks.values()):  # in stats.CELLS order
        onehot[k, m] = 1

    def replicates(n_total: int, rng_seed: int) -> np.ndarray:
        rng_ = np.random.default_rng([seed, rng_seed, 53])
        out = np.empty(n_total)
        for start in range(0, n_total, BOOT_BLOCK):
            k = min(BOOT_BLOCK, n_total - start)
            w = resample_counts(rng_, [np.arange(len(seeds))], len(seeds), k)[si]
            for i, d in enumerate(DOMAINS):
                rows_d = dom == i
                n_d = len(concepts[d])  # concepts are resampled within their domain
                w[rows_d] *= resample_counts(rng_, [np.arange(n_d)], n_d, k)[ci_[rows_d]]
            with np.errstate(invalid="ignore", divide="ignore"):
                cell = (onehot @ (w * s[:, None])) / (onehot @ w)
                out[start:start + k] = contrast(dict(zip(CELLS, cell)))
        return out

    res = stable_interval(replicates, n_boot, MAX_BOOT, confidence=confidence)
    return {"interaction": float(value), "ci": res["read"], "stable": res["stable"],
            "n_boot": res["n_boot"], "rng_spread": res["rng_spread"], **info}


def collapse_threshold(levels: list[float], survival: list[float], descending: bool = False,
                       threshold: float = THRESHOLD) -> float | None:
    """The level where survival first drops below ``threshold``, linearly interpolated.

    Levels are read in the order of harder compression (increasing, or decreasing when
    ``descending``: bits, rank ratio, student layers). None if survival never drops below;
    the first level itself if survival is already below there.
    """
    pts = sorted(zip(levels, survival), key=lambda p: p[0], reverse=descending)
    prev = None
    for level, s in pts:
        if s < threshold:
            if prev is None:
                return float(level)
            (l0, s0), (l1, s1) = prev, (level, s)
            return float(l0 + (s0 - threshold) / (s0 - s1) * (l1 - l0))
        prev = (level, s)
    return None


def phase_curves(rows: list[dict[str, Any]], threshold: float = THRESHOLD) -> dict[str, Any]:
    """Mean survival vs level per (method, calibration domain, concept domain), with thresholds.

    Returns ``{"threshold", "curves": [{method, param, calib, calib_domain, concept_domain,
    descending, points: [{level, survival, n}], collapse_level}]}`` (points by increasing
    level; ``calib_domain``: code, prose or None, a corpus's domain).
    """
    acc: dict[tuple[Any, ...], dict[Any, list[float]]] = defaultdict(lambda: defaultdict(list))
    domain: dict[tuple[Any, ...], str | None] = {}   # a corpus's calibration domain
    for r in _rows_with_survival(rows):
        key = (method_label(r), r.get("param"), r.get("calib"), r.get("concept_domain") or "none")
        acc[key][r["level"]].append(float(r["survival"]))
        domain.setdefault(key, row_calib_domain(r))
    curves = []
    for key in sorted(acc, key=_gkey):
        method, param, calib, cdom = key
        by_level = acc[key]
        levels = sorted(by_level)
        means = [float(np.mean(by_level[lv])) for lv in levels]
        descending = param in MORE_IS_LESS
        curves.append({"method": method, "param": param, "calib": calib,
                       "calib_domain": domain[key], "concept_domain": cdom,
                       "descending": descending,
                       "points": [{"level": lv, "survival": m, "n": len(by_level[lv])}
                                  for lv, m in zip(levels, means)],
                       "collapse_level": collapse_threshold(levels, means, descending,
                                                            threshold)})
    return {"threshold": threshold, "curves": curves}


def spearman(x: list[float], y: list[float]) -> float | None:
    """Spearman's rho (average ranks for ties); None with < 3 points or a constant side."""
    if len(x) != len(y) or len(x) < 3:
        return None
    rx, ry = _ranks(np.asarray(x, float)), _ranks(np.asarray(y, float))
    rx, ry = rx - rx.mean(), ry - ry.mean()
    den = math.sqrt(float((rx * rx).sum() * (ry * ry).sum()))
    return None if den == 0 else float((rx * ry).sum() / den)


def _ranks(v: np.ndarray) -> np.ndarray:
    order = np.argsort(v, kind="mergesort")
    ranks = np.empty(len(v))
    ranks[order] = np.arange(1, len(v) + 1)
    for value in np.unique(v):
        tied = v == value
        if tied.sum() > 1:
            ranks[tied] = ranks[tied].mean()
    return ranks


def anisotropy_vs_loss(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Spearman rho across cells: change in anisotropy (B − A) vs survival loss (1 − survival).

    ``by_level`` holds the level fixed (per model, method and level, across calibration
    corpora and seeds): across levels, rho mostly measures that harder compression changes
    both. Returns ``{"rho", "n_cells", "by_method": {method: {rho, n_cells}}, "by_level":
    [{model, method, level, rho, n_cells}], "points": [{cell_id,
    method, level, calib, seed, d_anisotropy, survival_loss}]}``.
    """
    per_cell: dict[str, dict[str, Any]] = {}
    for r in rows:
        c = per_cell.setdefault(r["cell_id"], {"row": r, "aniso": {}, "surv": []})
        if _ok(r.get("d_anisotropy")):
            c["aniso"][r["hook"]] = float(r["d_anisotropy"])
        if _ok(r.get("survival")):
            c["surv"].append(float(r["survival"]))
    points = []
    for cid, c in per_cell.items():
        if not c["aniso"] or not c["surv"]:
            continue
        r = c["row"]
        points.append({"cell_id": cid, "model": r.get("model"), "method": method_label(r),
                       "level": r["level"], "calib": r.get("calib"), "seed": r.get("seed"),
                       "d_anisotropy": float(np.mean(list(c["aniso"].values()))),
                       "survival_loss": 1.0 - float(np.mean(c["surv"]))})
    by_method: dict[str, Any] = {}
    for method in sorted({p["method"] for p in points}):
        pts = [p for p in points if p["method"] == method]
        by_method[method] = {"rho": spearman([p["d_anisotropy"] for p in pts],
                                             [p["survival_loss"] for p in pts]),
                             "n_cells": len(pts)}
    by_level: list[dict[str, Any]] = []  # the study's comparison holds the level fixed
    for key in sorted({(p["model"], p["method"], p["level"]) for p in points}, key=_gkey):
        pts = [p for p in points if (p["model"], p["method"], p["level"]) == key]
        by_level.append({"model": key[0], "method": key[1], "level": key[2],
                         "rho": spearman([p["d_anisotropy"] for p in pts],
                                         [p["survival_loss"] for p in pts]),
                         "n_cells": len(pts)})
    return {"rho": spearman([p["d_anisotropy"] for p in points],
                            [p["survival_loss"] for p in points]),
            "n_cells": len(points), "by_method": by_method, "by_level": by_level,
            "points": points}


def model_view(rows: list[dict[str, Any]], n_boot: int = 1000, seed: int = 0,
               confidence: float = 0.95) -> dict[str, Any]:
    """Per original model and concept domain: bits/byte of A, probe gain and survival.

    ``gain`` is A's probe accuracy minus the majority baseline, averaged over concepts and
    hooks (each concept × hook counted once per seed: A does not depend on the compression);
    ``survival`` is the mean over every row with one (the first study's reading). Survival
    v2: ``context_gain`` is acc_A minus its best floor, and ``readings`` gives, per method
    and level, each reading's survival (``sweep.stats.READINGS``) of the model's
    contextual concepts (``stats.study_kinds``; the rows ``stats.entering`` lets into the
    study) as a ratio of sums, Σ (x − baseline) / Σ (acc_A − baseline), as the study's
    interaction computes it. Intervals: percentile bootstrap resampling seeds and, within
    them, concepts, from ``n_boot`` resamples raised until both bounds move by less than
    0.01 across 10 RNG seeds (``stats.stable_interval``; the envelope over them where the
    cap came first). Returns ``{"rows": [{model, domain, bpb_a, gain, gain_ci, acc_a,
    survival, survival_ci, context_gain, context_gain_ci, n_contextual, readings: [{method,
    level, n_rows, n_concepts, n_seeds, READING: {value, ci}}], n_concepts, n_seeds}],
    "bootstrap": {n_intervals, n_stable, max_rng_spread, max_n_boot, n_rng, tolerance}}``.
    """
    checks: list[dict[str, Any]] = []

    def boot_mean(items: list[tuple[Any, str, float]]) -> tuple[Any, Any]:
        point, ci, check = _boot_mean(items, n_boot, seed, confidence)
        if check:
            checks.append(check)
        return point, ci

    kinds = study_kinds(rows)
    contextual = entering(rows, "contextual", kinds)
    out = []
    for model in sorted({str(r.get("model")) for r in rows}):
        mine = [r for r in rows if str(r.get("model")) == model]
        for dom in DOMAINS:
            sub = [r for r in mine if r.get("concept_domain") == dom]
            if not sub:
                continue
            bpb = [float(r[f"bpb_a_{dom}"]) for r in sub if _ok(r.get(f"bpb_a_{dom}"))]
            a_rows: dict[tuple[Any, ...], dict[str, Any]] = {}
            for r in sub:
                if _ok(r.get("acc_a")) and _ok(r.get("majority")):
                    a_rows.setdefault((r.get("seed"), r["concept"], r["hook"]), r)
            gain = boot_mean([(k[0], k[1], float(r["acc_a"]) - float(r["majority"]))
                              for k, r in a_rows.items()])
            surv = boot_mean([(r.get("seed"), r["concept"], float(r["survival"]))
                              for r in _rows_with_survival(sub)])
            ctx = boot_mean([(k[0], k[1], float(r["context_gain"]))
                             for k, r in a_rows.items() if _ok(r.get("context_gain"))])
            out.append({"model": model, "domain": dom,
                        "context_gain": ctx[0], "context_gain_ci": ctx[1],
                        "n_contextual": len({c for (m, _h, c), v in kinds.items()
                                             if m == model and v["kind"] == "contextual"
                                             and c in {k[1] for k in a_rows}}),
                        "readings": _model_readings(
                            [r for r in contextual if str(r.get("model")) == model
                             and r.get("concept_domain") == dom], n_boot, seed, confidence,
                            checks),
                        "bpb_a": float(np.mean(bpb)) if bpb else None,
                        "acc_a": float(np.mean([r["acc_a"] for r in a_rows.values()]))
                        if a_rows else None,
                        "gain": gain[0], "gain_ci": gain[1], "survival": surv[0],
                        "survival_ci": surv[1],
                        "n_concepts": len({k[1] for k in a_rows}),
                        "n_seeds": len({k[0] for k in a_rows})})
    spreads = [c["rng_spread"] for c in checks if c.get("rng_spread") is not None]
    return {"rows": out, "bootstrap": {
        "n_intervals": len(checks), "n_stable": sum(bool(c["stable"]) for c in checks),
        "max_rng_spread": max(spreads) if spreads else None,
        "max_n_boot": max((c["n_boot"] for c in checks), default=None),
        "n_rng": 10, "tolerance": 0.01}}


def _model_readings(rows: list[dict[str, Any]], n_boot: int, seed: int, confidence: float,
                    checks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (method, level): each reading's ratio-of-sums survival with its interval."""
    groups: dict[tuple[str, Any], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[(method_label(r), r["level"])].append(r)
    out = []
    for (method, level), group in sorted(groups.items(), key=lambda kv: _gkey(kv[0])):
        entry: dict[str, Any] = {"method": method, "level": level, "n_rows": len(group),
                                 "n_concepts": len({r["concept"] for r in group}),
                                 "n_seeds": len({r.get("seed") for r in group})}
        den = [(r.get("seed"), r["concept"], float(r["acc_a"]) - float(r["baseline"]))
               for r in group]
        for reading, field in READINGS.items():
            num = [float(r[field]) - float(r["baseline"]) for r in group]
            value, ci, check = _boot_ratio(den, num, n_boot, seed, confidence)
            entry[reading] = {"value": value, "ci": ci}
            if check:
                checks.append(check)
        out.append(entry)
    return out


def _boot_ratio(den: list[tuple[Any, str, float]], num: list[float], n_boot: int, seed: int,
                confidence: float, max_boot: int = MAX_BOOT
                ) -> tuple[float | None, list[float] | None, dict[str, Any] | None]:
    """Σ num / Σ den over (seed, concept, den) items, with a percentile bootstrap CI whose
    replicate weights draw seeds, then concepts; the resample count (from ``n_boot``) is
    raised until both bounds move by less than 0.01 across 10 RNG seeds
    (``stats.stable_interval``; the envelope over them where ``max_boot`` came first).
    Returns ``(point, ci, {stable, n_boot, rng_spread})``."""
    if not den:
        return None, None, None
    seeds = sorted({i[0] for i in den}, key=str)
    concepts = sorted({i[1] for i in den})
    sx = np.array([seeds.index(i[0]) for i in den])
    cx = np.array([concepts.index(i[1]) for i in den])
    d = np.array([i[2] for i in den], float)
    n = np.array(num, float)
    point = float(n.sum() / d.sum()) if d.sum() > 0 else None
    if point is None or n_boot <= 0 or len(den) < 2:
        return point, None, None

    def replicates(n_total: int, rng_seed: int) -> np.ndarray:
        rng = np.random.default_rng([seed, rng_seed, 245])
        out = np.empty(n_total)
        for start in range(0, n_total, BOOT_BLOCK):
            k = min(BOOT_BLOCK, n_total - start)
            w = (resample_counts(rng, [np.arange(len(seeds))], len(seeds), k)[sx]
                 * resample_counts(rng, [np.arange(len(concepts))], len(concepts), k)[cx])
            wd = d @ w
            with np.errstate(invalid="ignore", divide="ignore"):
                out[start:start + k] = np.where(wd > 0, (n @ w) / wd, np.nan)
        return out

    res = stable_interval(replicates, n_boot, max_boot, confidence=confidence)
    return point, res["read"], {k: res[k] for k in ("stable", "n_boot", "rng_spread")}


def _boot_mean(items: list[tuple[Any, str, float]], n_boot: int, seed: int,
               confidence: float
               ) -> tuple[float | None, list[float] | None, dict[str, Any] | None]:
    """Mean of (seed, concept, value) items and a bootstrap CI over seeds, then concepts:
    ``_boot_ratio`` with every denominator 1."""
    return _boot_ratio([(i[0], i[1], 1.0) for i in items], [i[2] for i in items], n_boot, seed,
                       confidence)


def analyse(rows: list[dict[str, Any]], n_boot: int = 1000, seed: int = 0,
            study_boot: int = 2000, study_max_boot: int = MAX_BOOT) -> dict[str, Any]:
    """The study's interactions (``inversion``: ``sweep.stats``, three readings, three
    intervals; ``study_boot`` = 0 skips it), the per-row readout interaction of the first study (``interaction``), phase
    curves, anisotropy vs loss and the model view for one table."""
    from lensbias.sweep.stats import inversion

    return {"n_rows": len(rows), "n_cells": len({r["cell_id"] for r in rows}),
            "cell_ids": sorted({str(r["cell_id"]) for r in rows}),
            "inversion": (inversion(rows, n_boot=study_boot, max_boot=study_max_boot,
                                    kinds=("contextual", "token identity"))
                          if study_boot > 0 else None),
            "interaction": interaction(rows, n_boot=n_boot, seed=seed),
            "phase_curves": phase_curves(rows),
            "anisotropy_vs_loss": anisotropy_vs_loss(rows),
            "model_view": model_view(rows, n_boot=n_boot, seed=seed)}


def write_analysis(rows: list[dict[str, Any]], out_dir: str | os.PathLike[str],
                   max_boot: int = MAX_BOOT) -> dict[str, Any]:
    """``analyse(rows)`` with the study's resample cap ``max_boot``, written atomically to
    ``out_dir/analysis.json`` (what ``lensbias sweep`` leaves beside its results, and what
    ``lensbias sweep-report`` reuses when it holds the same cells); returns the analysis."""
    result = analyse(rows, study_boot=min(2000, max_boot), study_max_boot=max_boot)
    target = Path(out_dir) / "analysis.json"
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(json.dumps(result, indent=1, allow_nan=False))
    os.replace(tmp, target)
    return result


def interaction_table(result: dict[str, Any]) -> str:
    """The interaction rows as a small text table (what ``lensbias sweep`` prints)."""
    rows = result["interaction"]["rows"] if "interaction" in result else result["rows"]
    if not rows:
        return ("No interaction: it needs code and prose calibration and concepts of both "
                "domains (with a survival) at some method and level.")
    head = f"{'method':<12} {'level':>7} {'interaction':>11}  {'95% CI':<17} cc    cp    pc    pp"
    lines = [head]
    for r in rows:
        m = r["means"]
        val = "–" if r["interaction"] is None else f"{r['interaction']:+.3f}"
        ci = "" if not r["ci"] else f"[{r['ci'][0]:+.3f}, {r['ci'][1]:+.3f}]"
        cells = " ".join("  –  " if m[k] is None else f"{m[k]:.2f}"
                         for k in ("code|code", "code|prose", "prose|code", "prose|prose"))
        lines.append(f"{r['method']:<12} {r['level']!s:>7} {val:>11}  {ci:<17} {cells}")
    lines.append("cc = S(code concepts | code calib), cp = S(code | prose calib), "
                 "pc = S(prose | code calib), pp = S(prose | prose calib)")
    return "\n".join(lines)


MAX_OVERLAP_CELLS = 12
"""Most cells in one feature-overlap matrix (12 × 12 stays readable on the page)."""


def feature_overlap(rows: list[dict[str, Any]],
                    summaries: Mapping[str, Any] | Callable[[str], Any],
                    max_cells: int = MAX_OVERLAP_CELLS, reading: str = "verdict"
                    ) -> dict[str, Any]:
    """Which SAE features do different compressions of the same A damage? (issue 13 item 4)

    ``summaries``: a cell id's ``summary.json`` as a dict (None or absent: no summary beside
    the results), as a mapping or a function (``cell_summaries(folder)``). Cells that share
    an SAE of A are compared with ``lensbias.saes.damage_overlap``: the pairwise Jaccard
    overlap of their damaged features (not 'survived' in ``reading``) and the Spearman ρ of
    their damage scores (1 − r), over the features stable and judged in every cell.

    Which cells (the rule, so a matrix stays readable): per model, the lowest seed that has
    any cell with an SAE report; of that seed, the first ``max_cells`` such cells in grid
    order. Their reports are grouped by SAE hook and then by ``summary.sae_a_sha256``: cells
    of one model and seed train the same SAE of A (training is seeded and deterministic), but
    a group whose digests differ is split, never mixed, and a digest held by one cell only is
    listed as not comparable. Summaries are read lazily, one cell at a time, and only the
    fields the overlap needs are kept.

    Returns ``{"reading", "max_cells", "rule", "n_cells", "missing": [cell ids],
    "no_sae": [cell ids], "not_shown": n, "alone": [{model, seed, hook, cell_id, label,
    reason}], "groups": [{model, seed, hook, sae_a_sha256, cells, labels, damaged,
    n_features, n_gate_failed, jaccard, spearman}]}``: ``missing`` / ``no_sae`` are the
    cells looked at whose summary is missing or has no SAE report, ``not_shown`` the cells
    the rule did not look at (later seeds, or past the first ``max_cells``); matrices are
    lists of rows (None: undefined).
    """
    from lensbias.saes.overlap import R_FIELD, damage_overlap

    if reading not in R_FIELD:
        raise ValueError(f"reading {reading!r} is unknown; use one of {', '.join(R_FIELD)}")
    get = summaries if callable(summaries) else summaries.get
    first: dict[str, dict[str, Any]] = {}
    for r in rows:
        first.setdefault(str(r.get("cell_id")), r)
    by_model: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in sorted(first.values(), key=lambda r: r["cell_index"] if _ok(r.get("cell_index"))
                    else math.inf):  # grid order (stable: rows come in it)
        by_model[str(r.get("model"))].append(r)
    missing: list[str] = []
    no_sae: list[str] = []
    alone: list[dict[str, Any]] = []
    groups: list[dict[str, Any]] = []
    not_shown = 0
    for model, cells_m in by_model.items():
        seeds = sorted({c.get("seed") for c in cells_m}, key=lambda s: _gkey((s,)))
        chosen = False
        for seed in seeds:
            if chosen:
                not_shown += sum(1 for c in cells_m if c.get("seed") == seed)
                continue
            picked: list[tuple[dict[str, Any], dict[str, Any]]] = []
            for c in (c for c in cells_m if c.get("seed") == seed):
                if len(picked) >= max_cells:
                    not_shown += 1
                    continue
                saes = _sae_reports(get(str(c["cell_id"])), reading)
                if saes is None:
                    missing.append(str(c["cell_id"]))
                elif not saes:
                    no_sae.append(str(c["cell_id"]))
                else:
                    picked.append((c, saes))
            chosen = bool(picked)
            by_sae: dict[tuple[str, Any], list[tuple[dict[str, Any], dict[str, Any]]]] = {}
            for c, saes in picked:
                for hook, rep in saes.items():
                    key = (hook, rep["summary"].get("sae_a_sha256"))
                    by_sae.setdefault(key, []).append((c, rep))
            for (hook, digest), members in sorted(by_sae.items(), key=lambda kv: (
                    kv[0][0], -len(kv[1]), str(kv[0][1]))):
                where = {"model": model, "seed": seed, "hook": hook}
                if digest is None or len(members) < 2:
                    alone.extend({**where, "cell_id": str(c["cell_id"]),
                                  "label": overlap_label(c),
                                  "reason": "its summary does not name its SAE of A "
                                            "(sae_a_sha256)" if digest is None else
                                            "no other cell shown used the same SAE of A"}
                                 for c, _ in members)
                    continue
                ids = [str(c["cell_id"]) for c, _ in members]
                out = damage_overlap({cid: rep for cid, (_, rep) in zip(ids, members)},
                                     reading=reading)
                labels = [overlap_label(c) for c, _ in members]
                dup = {lab for lab in labels if labels.count(lab) > 1}
                groups.append({
                    **where, "sae_a_sha256": digest, "cells": ids,
                    "labels": [f"{lab} ({cid})" if lab in dup else lab
                               for lab, cid in zip(labels, ids)],
                    "damaged": [out["damaged"][cid] for cid in ids],
                    "n_features": out["n_features"],
                    "n_gate_failed": sum(1 for _, rep in members
                                         if not rep["summary"].get("gate_passed", True)),
                    "jaccard": out["jaccard"], "spearman": out["spearman"]})
    return {"reading": reading, "max_cells": max_cells,
            "rule": f"per model, the lowest seed with SAE reports; its first {max_cells} "
                    f"cells with one, in grid order; one matrix per SAE of A",
            "n_cells": len(first), "missing": missing, "no_sae": no_sae,
            "not_shown": not_shown, "alone": alone, "groups": groups}


def overlap_label(row: dict[str, Any]) -> str:
    """A cell as the overlap matrix names it: ``method:level calib``."""
    return f"{method_label(row)}:{row.get('level')} {row.get('calib')}"


def _sae_reports(summary: Any, reading: str) -> dict[str, dict[str, Any]] | None:
    """The fields of a summary's SAE reports that ``damage_overlap`` reads (None: no summary;
    {}: no SAE report)."""
    from lensbias.saes.overlap import R_FIELD

    if not isinstance(summary, dict):
        return None
    keep = ("index", "stable", reading, R_FIELD[reading])
    out = {}
    for hook, rep in (summary.get("saes") or {}).items():
        if not isinstance(rep, dict) or not rep.get("features"):
            continue
        head = rep.get("summary") or {}
        out[str(hook)] = {
            "summary": {"sae_a_sha256": head.get("sae_a_sha256"),
                        "gate_passed": (head.get("gate") or {}).get("passed", True)},
            "features": [{k: f.get(k) for k in keep} for f in rep["features"]]}
    return out


def cell_summaries(folder: str | os.PathLike[str]) -> Callable[[str], dict[str, Any] | None]:
    """A cell id → its ``folder/cells/<id>/summary.json`` (None when missing or unreadable),
    read when asked for (for ``feature_overlap``)."""
    base = Path(folder) / "cells"

    def read(cell_id: str) -> dict[str, Any] | None:
        path = base / cell_id / "summary.json"
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    return read
