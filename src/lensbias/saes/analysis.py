"""Frozen-SAE analyses from the literature: is a feature's survival predictable from A alone?

Duan (2026) predicts, from full-precision feature statistics only, which features of a
frozen SAE survive quantisation (cross-validated AUC 0.92–0.97, peak activation the
strongest predictor). ``survival_predictability`` does the same on one comparison: over
the *stable* active features of A's SAE, a logistic regression (sklearn, standardised
inputs) predicts "survived in the readout" from A-only statistics (log firing rate, log
peak, log mean activation when firing, decoder norm), scored by stratified k-fold
cross-validated ROC AUC; each statistic alone is scored the same way and the strongest
is named.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from jaxtyping import Float

PREDICTORS = ("rate_a", "peak_a", "mean_active_a", "decoder_norm")
"""A-only statistics of a feature (fields of ``FeatureRow``)."""
LOGGED = frozenset({"rate_a", "peak_a", "mean_active_a"})
"""Heavy-tailed statistics, entered as log(x)."""


def predictor_matrix(features: list[Any]) -> tuple[Float[np.ndarray, "features predictors"],
                                                   list[str]]:
    """``(X, names)``: one row per feature, one column per usable A-only statistic."""
    cols, names = [], []
    for name in PREDICTORS:
        x = np.asarray([float(getattr(f, name)) for f in features], dtype=np.float64)
        if name in LOGGED:
            with np.errstate(divide="ignore", invalid="ignore"):
                x = np.log(np.where(x > 0, x, np.nan))
        if not np.isfinite(x).all() or np.ptp(x) <= 1e-12 * max(1.0, float(np.abs(x).max())):
            continue  # undefined for some feature, or constant (e.g. unit-norm decoders)
        cols.append(x)
        names.append(name)
    return (np.stack(cols, axis=1) if cols else np.zeros((len(features), 0))), names


def survival_predictability(features: list[Any], reading: str = "verdict", folds: int = 5,
                            min_class: int = 10, seed: int = 0) -> dict[str, Any]:
    """Cross-validated AUC of predicting survival (``reading`` == 'survived') of the stable
    active features (``stable`` True, or every active one when stability is unknown) from
    A-only statistics; ``{"skipped": reason}`` when a class has fewer than ``min_class``
    features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rows = [f for f in features if getattr(f, reading) in ("survived", "blurred", "dead")
            and f.stable is not False]
    y = np.asarray([getattr(f, reading) == "survived" for f in rows], dtype=np.int64)
    n_pos, n_neg = int(y.sum()), int(len(y) - y.sum())
    base = {"reading": reading, "target": "survived", "n_features": len(rows),
            "n_survived": n_pos, "n_not_survived": n_neg, "folds": folds,
            "model": "StandardScaler + LogisticRegression, stratified k-fold ROC AUC"}
    if min(n_pos, n_neg) < min_class:
        return {**base, "skipped": f"fewer than {min_class} features in a class "
                                   f"({n_pos} survived, {n_neg} not)"}
    X, names = predictor_matrix(rows)
    if not names:
        return {**base, "skipped": "no A-only statistic varies across the features"}
    k = int(min(folds, n_pos, n_neg))
    cv = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)

    def auc(cols: list[int]) -> tuple[float, float]:
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
        scores = cross_val_score(model, X[:, cols], y, cv=cv, scoring="roc_auc")
        return float(np.mean(scores)), float(np.std(scores))

    auc_all, sd_all = auc(list(range(len(names))))
    single = {}
    for j, name in enumerate(names):
        m, sd = auc([j])
        # a single statistic can rank either way; the CV fit picks the sign per fold
        single[name] = {"auc": m, "auc_sd": sd}
    strongest = max(single, key=lambda n: single[n]["auc"])
    return {**base, "folds": k, "predictors": names, "auc": auc_all, "auc_sd": sd_all,
            "single": single, "strongest": strongest,
            "dropped": [p for p in PREDICTORS if p not in names]}


def _finite(x: Any) -> bool:
    return x is not None and math.isfinite(float(x))
