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

from lensbias.errors import LensbiasError


class SklearnProbe:
    """``StandardScaler`` + ``LogisticRegression``, read out like a ``LinearProbe``."""

    def __init__(self, C: float = 1.0, max_iter: int = 500, tol: float = 1e-4,
                 random_state: int | None = 0):
        self.C, self.max_iter, self.tol, self.random_state = C, max_iter, tol, random_state

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

    def decision_function(self, X: Float[np.ndarray, "tokens d_model"]) -> np.ndarray:
        if not hasattr(self, "coef_"):
            raise LensbiasError("this SklearnProbe is not fitted yet; call fit")
        scores = np.asarray(X, np.float32) @ self.coef_.T + self.intercept_
        return scores[:, 0] if scores.shape[1] == 1 else scores

    def predict(self, X: Float[np.ndarray, "tokens d_model"]) -> np.ndarray:
        scores = self.decision_function(X)
        index = (scores > 0).astype(np.int64) if scores.ndim == 1 else scores.argmax(axis=1)
        return self.classes_[index]

    def score(self, X: Float[np.ndarray, "tokens d_model"], y: np.ndarray) -> float:
        return float(np.mean(self.predict(X) == np.asarray(y)))
