"""Probes, stage 2c: label-free maps of B's activations onto A's, fitted on unlabeled tokens.

Much of what a frozen read-out of A "loses" on B is a change of basis: B's mean moved, its
dimensions rescaled, its features rotated. The *aligned readout* applies A's probe (or A's
SAE) to B after one of these maps, fitted on unlabeled training-split tokens of both
models (the same tokens through A and B), never on test tokens and never on labels:

- ``mean``: ``h − μ_B + μ_A`` (a shift only; same width);
- ``scale``: per dimension, ``(h − μ_B)·σ_A/σ_B + μ_A`` (same width);
- ``affine`` (the default): least squares ``(h − μ_B)·W + μ_A``, ridge-damped by
  ``1e-6 ×`` the mean variance of B (numerical safety only), any widths;
- ``procrustes``: ``s·(h − μ_B)·R + μ_A`` with R = UVᵀ from the SVD of H_Bᵀ·H_A (an
  isometry and one scale; any widths).

An affine map cannot put back what B does not linearly carry, so an aligned readout near
A's accuracy says "the basis moved, nothing was lost"; near the floor, "gone from A's
read-out even after re-alignment" (compare the information reading, a probe retrained on
B). Written by hand: each map is a few lines of linear algebra in float64.
"""

from __future__ import annotations

import numpy as np
from jaxtyping import Float

from lensbias.errors import LensbiasError

MAPS = ("mean", "scale", "affine", "procrustes")
DEFAULT_MAP = "affine"
RIDGE = 1e-6


class AlignMap:
    """A fitted label-free map from B's activation space into A's."""

    def __init__(self, kind: str = DEFAULT_MAP):
        if kind not in MAPS:
            raise LensbiasError(f"alignment map {kind!r} is unknown; use one of {', '.join(MAPS)}")
        self.kind = kind

    def fit(self, h_b: Float[np.ndarray, "tokens d_b"], h_a: Float[np.ndarray, "tokens d_a"]
            ) -> AlignMap:
        h_b, h_a = np.asarray(h_b, np.float64), np.asarray(h_a, np.float64)
        if len(h_b) != len(h_a) or len(h_b) < 2:
            raise LensbiasError(f"an alignment map needs the same >= 2 tokens from both models; "
                                f"got {len(h_b)} and {len(h_a)}")
        if self.kind in ("mean", "scale") and h_b.shape[1] != h_a.shape[1]:
            raise LensbiasError(f"alignment map {self.kind!r} needs equal widths; B has "
                                f"{h_b.shape[1]}, A {h_a.shape[1]} (use 'affine' or 'procrustes')")
        self.mean_b_, self.mean_a_ = h_b.mean(axis=0), h_a.mean(axis=0)
        cb, ca = h_b - self.mean_b_, h_a - self.mean_a_
        if self.kind == "mean":
            self.weight_ = None
        elif self.kind == "scale":
            sb, sa = cb.std(axis=0), ca.std(axis=0)
            self.weight_ = np.where(sb > 1e-12, sa / np.maximum(sb, 1e-12), 1.0)  # [d]
        elif self.kind == "affine":
            gram = cb.T @ cb
            damp = RIDGE * max(float(np.trace(gram)) / gram.shape[0], 1e-30)
            self.weight_ = np.linalg.solve(gram + damp * np.eye(gram.shape[0]), cb.T @ ca)
        else:
            u, sigma, vt = np.linalg.svd(cb.T @ ca, full_matrices=False)
            scale = float(sigma.sum() / max(float((cb ** 2).sum()), 1e-30))
            self.weight_ = scale * (u @ vt)  # [d_b, d_a]
        return self

    def transform(self, h_b: Float[np.ndarray, "tokens d_b"]) -> Float[np.ndarray, "tokens d_a"]:
        if not hasattr(self, "mean_b_"):
            raise LensbiasError("this AlignMap is not fitted yet; call fit")
        centred = np.asarray(h_b, np.float64) - self.mean_b_
        if self.weight_ is None:
            mapped = centred
        elif self.weight_.ndim == 1:
            mapped = centred * self.weight_
        else:
            mapped = centred @ self.weight_
        return (mapped + self.mean_a_).astype(np.float32)

    def rotate(self, direction: Float[np.ndarray, " d_b"]) -> Float[np.ndarray, " d_a"]:
        """A read-out direction of B carried into A's space by the linear part of the map."""
        direction = np.asarray(direction, np.float64)
        if self.weight_ is None:
            return direction.astype(np.float32)
        if self.weight_.ndim == 1:
            return (direction * self.weight_).astype(np.float32)
        return (direction @ self.weight_).astype(np.float32)
