"""Compress, method family: AWQ (Lin et al. 2023, mit-han-lab/llm-awq ``auto_scale``).

Scale input channel j by s_j = (mean|x_j|)^α before round-to-nearest and back after, so
salient channels (large activations) get a finer grid. As in the reference, s is clamped at
1e-4 and normalised by sqrt(max(s)·min(s)), and α runs over the 20 points 0, 0.05, .., 0.95
(``range(20) / 20``); the best α minimises this matrix's output error on calibration
inputs, trace(ΔW XᵀX ΔWᵀ) / n with ΔW = Q(W·diag(s))·diag(s)⁻¹ − W. α = 0 gives s = 1, plain RTN,
and is tried first (ties keep it), so AWQ's error is never above RTN's.

Simplifications, for analysis: the reference scores α by the output MSE of the whole
module (attention / MLP) that the scaled matrices feed, searches one α jointly for matrices
sharing an input (Q, K, V), folds 1/s into the previous op (LayerNorm, previous linear) and
then also searches a weight clipping range (``auto_clip``). Here each matrix gets its own α
by its own output error, no clipping, and the weight is stored dequantized,
Q(W·diag(s))·diag(s)⁻¹: the same function the folded model computes. ``stored_bits`` is
RTN's (the per-channel scales fold away into the previous op, as in the reference).
"""

from __future__ import annotations

import torch
from torch import Tensor

from lensbias.compress.base import register
from lensbias.compress.calib import InputStats
from lensbias.compress.quant import _Quantizer, rtn

N_GRID = 20
SCALE_MIN = 1e-4


def awq_scales(abs_mean: Tensor, alpha: float) -> Tensor:
    """Per-input-channel s = mean|x|^α, clamped, normalised by sqrt(max·min)."""
    scales = abs_mean.float().pow(alpha).clamp(min=SCALE_MIN)
    return scales / (scales.max() * scales.min()).sqrt()


def output_error(delta: Tensor, xtx: Tensor, n: int) -> float:
    """trace(ΔW XᵀX ΔWᵀ) / n: mean over tokens of ‖ΔW x‖²."""
    delta = delta.to(torch.float64)
    return float(((delta @ xtx) * delta).sum()) / max(n, 1)


@register
class AWQ(_Quantizer):
    """Activation-aware weight quantization: per-channel scales searched, then RTN."""

    name = "awq"
    needs_inputs = True

    def scaled_quant(self, weight: Tensor, scales: Tensor) -> Tensor:
        """Q(W·diag(s))·diag(s)⁻¹."""
        q = rtn(weight * scales[None, :], self.bits, self.symmetric, self.group_size)
        return q / scales[None, :]

    def search(self, weight: Tensor, stats: InputStats) -> tuple[float, Tensor, list[float]]:
        """``(best α, its dequantized weight, error per grid α)``."""
        best: tuple[float, Tensor] | None = None
        best_error = float("inf")
        history = []
        for step in range(N_GRID):
            alpha = step / N_GRID
            candidate = self.scaled_quant(weight, awq_scales(stats.mean_abs, alpha))
            error = output_error(candidate - weight, stats.xtx, stats.n)
            history.append(error)
            if best is None or error < best_error:
                best, best_error = (alpha, candidate), error
        assert best is not None
        return best[0], best[1], history

    def compress(self, weight: Tensor, stats: InputStats) -> Tensor:
        return self.search(weight, stats)[1]
