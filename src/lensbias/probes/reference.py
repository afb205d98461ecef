"""Probes, the reference: scikit-learn's ``LogisticRegression`` behind ``LinearProbe``'s
interface (``ProbeConfig(solver="sklearn")``).

The same objective as ``LinearProbe`` (``StandardScaler`` then ``LogisticRegression(C,
lbfgs)``: mean cross-entropy + ||W||²/(2·C·n) on standardised features, intercept
unpenalised), fitted from zero, one probe at a time, to sklearn's own tolerance (1e-4) with
``max_iter`` as the cap. It is what lensbias' batched solver is benchmarked and tested
against (``benchmarks/bench_probes.py --stage``); ``coef_`` and ``intercept_`` are given
in the raw activation space, as ``LinearProbe`` gives them.
"""

from __future__ import annotations

import warnings

import numpy as np
from jaxtyping import Float, Int
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from lensbias.probes.fast import LinearProbe


class SklearnProbe(LinearProbe):
    """``StandardScaler`` + ``LogisticRegression`` fitted on the host, read out by
    ``LinearProbe``'s raw-space ``decision_function`` / ``predict`` / ``score``."""

    def fit(self, X: Float[np.ndarray, "tokens d_model"], y: Int[np.ndarray, " tokens"]
            ) -> SklearnProbe:
        X = np.asarray(X, np.float32)
        scaler = StandardScaler().fit(X)
        model = LogisticRegression(C=self.C, max_iter=self.max_iter, tol=self.tol,
                                   random_state=self.random_state)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(scaler.transform(X), y)
        scale = np.where(scaler.scale_ > 0, scaler.scale_, 1.0)
        self.classes_ = model.classes_
        self.n_features_in_ = X.shape[1]
        self.n_iter_ = int(np.max(model.n_iter_))
        self.coef_ = (model.coef_ / scale).astype(np.float32)
        self.intercept_ = (model.intercept_ - self.coef_ @ scaler.mean_).astype(np.float32)
        return self
