"""Compress, method family: low-rank factorisation (truncated SVD, ASVD, SVD-LLM).

Each keeps a ``rank_ratio`` fraction of a matrix's parameters: an ``[m, n]`` matrix becomes
two factors of rank ``r = max(1, floor(rank_ratio · m·n / (m + n)))`` (ASVD's ``param_ratio``).
``svd`` truncates W itself (data-free); ``asvd`` (hahnyuan/ASVD4LLM) truncates W·S with
S = diag(mean|x|^α); ``svd-llm`` (Wang et al. 2024, SVD-LLM) truncates W·S with S the
Cholesky factor of XᵀX, which makes the truncation optimal for the layer's output error
‖(W − W')X‖ on the calibration inputs. The weight keeps the dense product (for analysis);
``stored_bits`` records the true budget, 16 bits per factor entry: ``16 · r · (m + n)``.
``rank_ratio=1.0`` means no compression: the weight comes back unchanged and is counted
dense (16 · m · n bits), since at ratio 1 the formula's rank would still be below full rank.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from lensbias.compress.base import MatrixMethod, register
from lensbias.compress.calib import InputStats
from lensbias.compress.linear import LinearView
from lensbias.errors import LensbiasError

ABS_MEAN_EPS = 1e-6
"""Added to mean|x_j| before scaling (ASVD4LLM's guard for dead input channels)."""
DAMP_START = 1e-6
"""First Cholesky damping, relative to the mean diagonal of XᵀX; grows ×10 per retry."""
PIVOT_RTOL = 1e-10
"""A Cholesky pivot² below this × mean diagonal counts as not positive definite."""


def check_ratio(rank_ratio: float) -> float:
    if not 0.0 < float(rank_ratio) <= 1.0:
        raise LensbiasError(f"rank_ratio must be in (0, 1], got {rank_ratio}")
    return float(rank_ratio)


def kept_rank(shape: tuple[int, int], rank_ratio: float) -> int:
    """``max(1, floor(rank_ratio · m·n / (m + n)))`` for an ``[m, n]`` matrix."""
    m, n = shape
    return max(1, math.floor(rank_ratio * m * n / (m + n)))


def truncated(matrix: Tensor, rank: int) -> tuple[Tensor, Tensor, Tensor]:
    """``(U_r [m, r], Σ_r [r], V_rᵀ [r, n])`` of the best rank-``rank`` approximation."""
    u, sigma, vh = torch.linalg.svd(matrix, full_matrices=False)
    return u[:, :rank], sigma[:rank], vh[:rank]


def svd_truncate(weight: Tensor, rank: int) -> Tensor:
    u_r, sigma_r, vh_r = truncated(weight.to(torch.float64), rank)
    return ((u_r * sigma_r) @ vh_r).to(weight.dtype)


def asvd_truncate(weight: Tensor, abs_mean: Tensor, alpha: float, rank: int) -> Tensor:
    """(U_r Σ_r V_rᵀ) S⁻¹ from the SVD of W·S, S = diag((mean|x| + ε)^α)."""
    scale_in = (abs_mean.to(torch.float64) + ABS_MEAN_EPS).pow(alpha)
    u_r, sigma_r, vh_r = truncated(weight.to(torch.float64) * scale_in[None, :], rank)
    return ((u_r * sigma_r) @ (vh_r / scale_in[None, :])).to(weight.dtype)


def cholesky_factor(xtx: Tensor) -> Tensor:
    """Lower L with L Lᵀ = XᵀX, damped on the diagonal when XᵀX is not numerically PD.

    SVD-LLM adds (−λ_min + 1e-6)·I on failure; here the damping is relative to the mean
    diagonal (scale-free): none first, then 1e-6, 1e-5, ... until every pivot² exceeds
    1e-10 × the mean diagonal. A singular XᵀX is common: LayerNorm outputs sum to zero.
    """
    d = xtx.shape[0]
    level = xtx.diagonal().mean().clamp_min(torch.finfo(torch.float64).tiny)
    eye = torch.eye(d, dtype=torch.float64)
    damp = 0.0
    while damp <= 1.0:
        lower, info = torch.linalg.cholesky_ex(xtx + damp * level * eye)
        if int(info) == 0 and bool((lower.diagonal() ** 2 > PIVOT_RTOL * level).all()):
            return lower
        damp = DAMP_START if damp == 0.0 else damp * 10
    raise LensbiasError("XᵀX of the calibration inputs is not finite; check the model "
                        "for NaN/Inf activations")


def svd_llm_truncate(weight: Tensor, xtx: Tensor, rank: int) -> Tensor:
    """U_r Σ_r (V_rᵀ S⁻¹) from the SVD of W·S, S = Cholesky(XᵀX) (triangular solve)."""
    lower = cholesky_factor(xtx.to(torch.float64))
    u_r, sigma_r, vh_r = truncated(weight.to(torch.float64) @ lower, rank)
    # V_rᵀ S⁻¹ = Y with Y S = V_rᵀ, i.e. Sᵀ Yᵀ = V_r: an upper-triangular solve
    right = torch.linalg.solve_triangular(lower.T, vh_r.T, upper=True).T
    return ((u_r * sigma_r) @ right).to(weight.dtype)


class _LowRank(MatrixMethod):
    def __init__(self, rank_ratio: float = 0.5):
        self.rank_ratio = check_ratio(rank_ratio)

    def compress(self, weight: Tensor, stats: Any) -> Tensor:
        if self.rank_ratio == 1.0:
            return weight.clone()
        return self._truncate(weight, stats, kept_rank(tuple(weight.shape), self.rank_ratio))

    def _truncate(self, weight: Tensor, stats: Any, rank: int) -> Tensor:
        raise NotImplementedError

    def stored_bits(self, view: LinearView, weight: Tensor) -> float:
        m, n = weight.shape
        if self.rank_ratio == 1.0:
            return 16.0 * m * n
        return 16.0 * kept_rank((m, n), self.rank_ratio) * (m + n)


@register
class TruncatedSVD(_LowRank):
    """Plain truncated SVD of the weight (data-free)."""

    name = "svd"

    def _truncate(self, weight: Tensor, stats: Any, rank: int) -> Tensor:
        return svd_truncate(weight, rank)


@register
class ActivationAwareSVD(_LowRank):
    """ASVD: truncate W·diag(mean|x|^α), then undo the scaling."""

    name = "asvd"
    needs_inputs = True

    def __init__(self, rank_ratio: float = 0.5, alpha: float = 0.5):
        super().__init__(rank_ratio)
        if not (math.isfinite(float(alpha)) and float(alpha) >= 0.0):
            raise LensbiasError(f"alpha must be a finite number >= 0, got {alpha}")
        self.alpha = float(alpha)

    def _truncate(self, weight: Tensor, stats: InputStats, rank: int) -> Tensor:
        return asvd_truncate(weight, stats.mean_abs, self.alpha, rank)


@register
class SVDLLM(_LowRank):
    """SVD-LLM: truncate W·Cholesky(XᵀX), then undo the whitening."""

    name = "svd-llm"
    needs_inputs = True

    def _truncate(self, weight: Tensor, stats: InputStats, rank: int) -> Tensor:
        return svd_llm_truncate(weight, stats.xtx, rank)
