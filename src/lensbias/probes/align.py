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
B). Written by hand: each map is a few lines of linear algebra.

Device: ``AlignMap(kind, device=...)`` (default ``cpu``) fits and applies the map in torch
on that device, one code path everywhere (``lensbias.device_math``): rows travel as float32
(float64 arrays stay float64), the means, Gram matrices, solve and SVD run in float64
(float32 on MPS), ``transform`` returns float32 numpy as before and the fitted ``mean_b_``,
``mean_a_``, ``weight_`` are float64 numpy. Against the float64 numpy implementation this
replaced, on CPU (tests/test_device_math.py, d = 16 to 256): weights agree to 1e-9
relative and transformed rows to float32 rounding (tested at 1e-5 relative).
"""

from __future__ import annotations

import numpy as np
import torch
from jaxtyping import Float

from lensbias import device_math as dm
from lensbias.errors import LensbiasError

MAPS = ("mean", "scale", "affine", "procrustes")
DEFAULT_MAP = "affine"
RIDGE = 1e-6

Rows = np.ndarray | torch.Tensor


class AlignMap:
    """A fitted label-free map from B's activation space into A's, computed on ``device``."""

    def __init__(self, kind: str = DEFAULT_MAP, device: str | torch.device = "cpu"):
        if kind not in MAPS:
            raise LensbiasError(f"alignment map {kind!r} is unknown; use one of {', '.join(MAPS)}")
        self.kind = kind
        self.device = device

    def fit(self, h_b: Float[Rows, "tokens d_b"], h_a: Float[Rows, "tokens d_a"]) -> AlignMap:
        if len(h_b) != len(h_a) or len(h_b) < 2:
            raise LensbiasError(f"an alignment map needs the same >= 2 tokens from both models; "
                                f"got {len(h_b)} and {len(h_a)}")
        if self.kind in ("mean", "scale") and h_b.shape[1] != h_a.shape[1]:
            raise LensbiasError(f"alignment map {self.kind!r} needs equal widths; B has "
                                f"{h_b.shape[1]}, A {h_a.shape[1]} (use 'affine' or 'procrustes')")
        dev = dm.resolve(self.device)
        h_b, h_a = dm.to_device(h_b, dev), dm.to_device(h_a, dev)
        self._mean_b, self._mean_a = h_b.mean(0), h_a.mean(0)
        cb, ca = h_b - self._mean_b, h_a - self._mean_a
        self._weight = _weight(self.kind, cb, ca)
        self.mean_b_, self.mean_a_ = dm.to_numpy(self._mean_b), dm.to_numpy(self._mean_a)
        self.weight_ = None if self._weight is None else dm.to_numpy(self._weight)
        return self

    def transform(self, h_b: Float[Rows, "tokens d_b"]) -> Float[np.ndarray, "tokens d_a"]:
        if not hasattr(self, "mean_b_"):
            raise LensbiasError("this AlignMap is not fitted yet; call fit")
        centred = dm.to_device(h_b, self._mean_b.device) - self._mean_b
        return (_apply(centred, self._weight) + self._mean_a).to("cpu", torch.float32).numpy()

    def rotate(self, direction: Float[Rows, " d_b"]) -> Float[np.ndarray, " d_a"]:
        """A read-out direction of B carried into A's space by the linear part of the map."""
        if not hasattr(self, "mean_b_"):
            raise LensbiasError("this AlignMap is not fitted yet; call fit")
        carried = _apply(dm.to_device(direction, self._mean_b.device), self._weight)
        return carried.to("cpu", torch.float32).numpy()


def _weight(kind: str, cb: torch.Tensor, ca: torch.Tensor) -> torch.Tensor | None:
    """The linear part of the map from centred rows of B (``cb``) and A (``ca``): None
    (mean), ``[d]`` (scale) or ``[d_b, d_a]`` (affine, procrustes)."""
    if kind == "mean":
        return None
    if kind == "scale":
        sb, sa = cb.std(0, correction=0), ca.std(0, correction=0)
        return torch.where(sb > 1e-12, sa / torch.clamp(sb, min=1e-12), 1.0)
    if kind == "affine":
        gram = cb.T @ cb
        damp = RIDGE * max(float(torch.trace(gram)) / gram.shape[0], 1e-30)
        eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
        return torch.linalg.solve(gram + damp * eye, cb.T @ ca)
    u, sigma, vt = torch.linalg.svd(cb.T @ ca, full_matrices=False)
    scale = float(sigma.sum()) / max(float((cb ** 2).sum()), 1e-30)
    return scale * (u @ vt)


def _apply(centred: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    if weight is None:
        return centred
    return centred * weight if weight.ndim == 1 else centred @ weight
