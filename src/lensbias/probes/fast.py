"""Probes, stage 2: a fast multinomial logistic regression, the estimator behind every probe pair.

``LinearProbe`` minimises the objective of scikit-learn's ``LogisticRegression(C)`` on
standardised features — mean cross-entropy + ||W||² / (2·C·n), intercept unpenalised, one
logit for two classes and one per class above that — with full-batch L-BFGS in float32
torch. It reaches sklearn's held-out accuracy (benchmarks/bench_probes.py) several times
faster, which matters when a comparison fits a few hundred probes.

Spaces: the solver works on standardised features ``(X - mean_) / scale_`` (``coef_std_``,
``intercept_std_``); ``coef_`` and ``intercept_`` are the same read-out expressed in the raw
activation space (``X @ coef_.T + intercept_`` gives the logits), and that raw space is
where lensbias compares directions.

Device: ``device`` (default ``cpu``) is where the solver runs: the standardised features,
the preconditioner (covariance in float32, eigendecomposition in float64) and L-BFGS are
torch tensors on that device, and the fitted arrays come back as numpy. The mean and
scale are computed in numpy float32 on the host (one pass, O(n·d)), so a CPU fit is
bit-identical to the one before devices existed; CPU and CUDA run the same code.
"""

from __future__ import annotations

import numpy as np
import torch
from jaxtyping import Float, Int

from lensbias.errors import LensbiasError


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
        X = np.asarray(X, dtype=np.float32)
        y = np.asarray(y)
        if X.ndim != 2 or len(X) != len(y):
            raise LensbiasError(f"LinearProbe.fit needs X [n, d] and y [n]; got X {X.shape}, "
                                f"y {y.shape}")
        if self.C <= 0:
            raise LensbiasError(f"LinearProbe C is {self.C}; it must be > 0")
        from lensbias.models.adapter import check_device

        device = check_device(str(self.device))
        self.classes_, target = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise LensbiasError(f"LinearProbe.fit needs at least two classes; y holds only "
                                f"{self.classes_.tolist()}")
        self.n_features_in_ = X.shape[1]
        self.mean_ = X.mean(axis=0)
        scale = X.std(axis=0)
        self.scale_ = np.where(scale > 1e-6 * max(float(scale.max()), 1e-30), scale, 1.0
                               ).astype(np.float32)
        rows = torch.from_numpy(np.require(X, requirements=["C", "W"])).to(device)
        Z = (rows - torch.from_numpy(self.mean_).to(device)) \
            / torch.from_numpy(self.scale_).to(device)
        weight, bias, self.n_iter_ = _lbfgs(Z, torch.from_numpy(target.astype(np.int64)
                                                                ).to(device),
                                            len(self.classes_), 1.0 / (self.C * len(y)),
                                            self.max_iter, self.tol)
        self.coef_std_ = weight
        self.intercept_std_ = bias
        self.coef_ = (weight / self.scale_).astype(np.float32)
        self.intercept_ = (bias - self.coef_ @ self.mean_).astype(np.float32)
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

    def _check_fitted(self) -> None:
        if not hasattr(self, "coef_"):
            raise LensbiasError("this LinearProbe is not fitted yet; call fit")


def _lbfgs(Z: torch.Tensor, target: torch.Tensor, n_classes: int, l2: float, max_iter: int,
           tol: float) -> tuple[np.ndarray, np.ndarray, int]:
    """Minimise mean cross-entropy + l2/2·||W||² from zero on ``Z``'s device; returns
    (W, b, iterations) with W and b as numpy arrays."""
    n_out = 1 if n_classes == 2 else n_classes
    # Precondition: W = V·P with P ≈ (Σ/4 + l2·I)^(-1/2), the inverse square root of the
    # objective's curvature at zero. Same objective and optimum, far fewer iterations.
    cov = (Z.T @ Z).double() / len(Z)
    eigval, eigvec = torch.linalg.eigh(cov)
    precond = (eigvec / torch.sqrt(eigval.clamp(min=0) / 4 + l2)).T.to(Z.dtype)  # [d, d]
    Zp = Z @ precond.T
    weight = torch.zeros(n_out, Z.shape[1], device=Z.device, requires_grad=True)
    bias = torch.zeros(n_out, device=Z.device, requires_grad=True)
    binary_target = target.to(Z.dtype)[:, None] if n_out == 1 else None
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter,
                                  tolerance_grad=tol, tolerance_change=1e-9,
                                  history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        logits = torch.addmm(bias, Zp, weight.T)
        if n_out == 1:
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, binary_target)
        else:
            loss = torch.nn.functional.cross_entropy(logits, target)
        loss = loss + 0.5 * l2 * (weight @ precond).pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    state = optimizer.state[optimizer._params[0]]
    return ((weight.detach() @ precond).cpu().numpy().copy(),
            bias.detach().cpu().numpy().copy(),
            int(state.get("n_iter", 0)))
