"""Probes, stage 2: a fast multinomial logistic regression, the estimator behind every probe pair.

``LinearProbe`` minimises the objective of scikit-learn's ``LogisticRegression(C)`` on
standardised features — mean cross-entropy + ||W||² / (2·C·n), intercept unpenalised, one
logit for two classes and one per class above that — with preconditioned full-batch L-BFGS
in float32 torch, to scikit-learn's stopping rule (largest gradient entry in standardised
coordinates ≤ ``tol``). ``fit`` is a batch of one of ``probes.batched.fit_batch``, which
``ProbePair`` uses to fit all probes of a hook together.

Spaces: the solver works on standardised features ``(X - mean_) / scale_`` (``coef_std_``,
``intercept_std_``); ``coef_`` and ``intercept_`` are the same read-out expressed in the raw
activation space (``X @ coef_.T + intercept_`` gives the logits), and that raw space is
where lensbias compares directions.

Device: ``device`` (default ``cpu``) is where the solver runs: the standardised features,
the preconditioner (covariance as a float32 product, its eigendecomposition in float64 below
``probes.batched.EIGH_FLOAT32_FROM`` features and float32 from there) and L-BFGS are torch
tensors on that device, and the fitted arrays come back as numpy. The mean and scale are
computed in numpy float32 on the host; CPU and CUDA run the same code.
"""

from __future__ import annotations

import numpy as np
from jaxtyping import Float, Int

from lensbias.errors import LensbiasError
from lensbias.probes.batched import Problem, solve_batch


class LinearProbe:
    """Multinomial (binary: logistic) regression with an L2 penalty, sklearn-style.

    ``C`` is sklearn's inverse penalty strength; ``max_iter`` caps L-BFGS iterations and
    ``tol`` is the largest gradient entry at which it stops. The solver is deterministic
    (zero start, full batch), so ``random_state`` is only stored, for drop-in use where
    sklearn estimators are expected. ``device`` is the torch device the solver runs on
    (``cpu``, ``cuda``, ``cuda:N``); it is checked when ``fit`` starts.
    """

    def __init__(self, C: float = 1.0, max_iter: int = 100, tol: float = 1e-4,
                 random_state: int | None = 0, device: str = "cpu"):
        self.C = C
        self.max_iter = max_iter
        self.tol = tol
        self.random_state = random_state
        self.device = device

    def get_params(self, deep: bool = True) -> dict[str, object]:
        return {"C": self.C, "max_iter": self.max_iter, "tol": self.tol,
                "random_state": self.random_state, "device": self.device}

    def set_params(self, **params: object) -> LinearProbe:
        for key, value in params.items():
            if key not in self.get_params():
                raise LensbiasError(f"LinearProbe has no parameter {key!r}; "
                                    f"it has {', '.join(self.get_params())}")
            setattr(self, key, value)
        return self

    def fit(self, X: Float[np.ndarray, "tokens d_model"], y: Int[np.ndarray, " tokens"]
            ) -> LinearProbe:
        """Fit on ``X`` and ``y`` (a batch of one for ``probes.batched.fit_batch``)."""
        (fitted,) = fit_batch([Problem(X, y, self.C)], max_iter=self.max_iter, tol=self.tol,
                              device=str(self.device), random_state=self.random_state)
        self.__dict__.update({k: v for k, v in vars(fitted).items()
                              if k not in self.get_params()})
        return self

    def decision_function(self, X: Float[np.ndarray, "tokens d_model"]
                          ) -> Float[np.ndarray, "tokens ..."]:
        """Logits: ``[n]`` for two classes (positive means ``classes_[1]``), else ``[n, k]``."""
        self._check_fitted()
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != self.n_features_in_:
            raise LensbiasError(f"LinearProbe was fitted on {self.n_features_in_} features; "
                                f"got X of shape {X.shape}")
        scores = X @ self.coef_.T + self.intercept_
        return scores[:, 0] if scores.shape[1] == 1 else scores

    def predict(self, X: Float[np.ndarray, "tokens d_model"]) -> np.ndarray:
        scores = self.decision_function(X)
        index = (scores > 0).astype(np.int64) if scores.ndim == 1 else scores.argmax(axis=1)
        return self.classes_[index]

    def score(self, X: Float[np.ndarray, "tokens d_model"], y: np.ndarray) -> float:
        """Accuracy (higher is better)."""
        return float(np.mean(self.predict(X) == np.asarray(y)))

    def log_loss(self, X: Float[np.ndarray, "tokens d_model"], y: np.ndarray) -> float:
        """Mean cross-entropy of the true labels (lower is better; sklearn's ``log_loss``
        of ``predict_proba``). Every label must be one of ``classes_``."""
        return float(np.mean(self.token_log_losses(X, y)))

    def token_log_losses(self, X: Float[np.ndarray, "tokens d_model"], y: np.ndarray
                         ) -> Float[np.ndarray, " tokens"]:
        """Each token's cross-entropy −log p(y | x), in float64."""
        scores = np.asarray(self.decision_function(X), np.float64)
        logits = (np.stack([np.zeros_like(scores), scores], axis=1) if scores.ndim == 1
                  else scores)
        index = np.searchsorted(self.classes_, np.asarray(y))
        if np.any(index >= len(self.classes_)) or np.any(self.classes_[
                np.minimum(index, len(self.classes_) - 1)] != np.asarray(y)):
            raise LensbiasError("log_loss: a label is not one of the probe's classes")
        top = logits.max(axis=1, keepdims=True)
        log_z = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))
        return log_z - logits[np.arange(len(index)), index]

    def _check_fitted(self) -> None:
        if not hasattr(self, "coef_"):
            raise LensbiasError("this LinearProbe is not fitted yet; call fit")


def fit_batch(problems: list[Problem], *, max_iter: int = 500, tol: float = 1e-4,
              device: str = "cpu", random_state: int | None = 0) -> list[LinearProbe]:
    """Fit every problem as one batched solve (``probes.batched``); ``LinearProbe`` objects
    in the order given."""
    out = []
    for problem, fit in zip(problems, solve_batch(problems, max_iter=max_iter, tol=tol,
                                                  device=device)):
        probe = LinearProbe(C=problem.C, max_iter=max_iter, tol=fit["tol"],
                            random_state=random_state, device=str(device))
        probe.classes_, probe.n_features_in_ = fit["classes"], len(fit["mean"])
        probe.mean_, probe.scale_ = fit["mean"], fit["scale"]
        probe.coef_std_, probe.intercept_std_ = fit["coef_std"], fit["intercept_std"]
        probe.n_iter_ = fit["n_iter"]
        probe.coef_ = (fit["coef_std"] / fit["scale"]).astype(np.float32)
        probe.intercept_ = (fit["intercept_std"] - probe.coef_ @ fit["mean"]).astype(np.float32)
        out.append(probe)
    return out
