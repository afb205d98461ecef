"""Compress, method family: AWQ (Lin et al. 2023, mit-han-lab/llm-awq ``auto_scale``).

Scale input channel j by s_j = (mean|x_j|)^α before round-to-nearest and back after, so
salient channels (large activations) get a finer grid. As in the reference, s is clamped at
1e-4 and normalised by sqrt(max(s)·min(s)), and α runs over the 20 points 0, 0.05, .., 0.95
(``range(20) / 20``); the best α minimises this matrix's output error on calibration
inputs, trace(ΔW XᵀX ΔWᵀ) / n with ΔW = Q(W·diag(s))·diag(s)⁻¹ − W. α = 0 gives s = 1, plain RTN,
and is tried first (ties keep it), so AWQ's error is never above plain round-to-nearest's
on the same grid.

Simplifications, for analysis: the reference scores α by the output MSE of the whole
module (attention / MLP) that the scaled matrices feed, searches one α jointly for matrices
sharing an input (Q, K, V), folds 1/s into the previous op (LayerNorm, previous linear) and
then also searches a weight clipping range (``auto_clip``). Here each matrix gets its own α
by its own output error, no clipping, and the weight is stored dequantized,
Q(W·diag(s))·diag(s)⁻¹: the same function the folded model computes. ``stored_bits`` is
RTN's (the per-channel scales fold away into the previous op, as in the reference).

Followed from the reference by default (``grid`` and ``calib_inputs`` offer the alternative):

* ``grid="awq"``: llm-awq's ``pseudo_quantize_tensor`` (``zero_point=True``): each row's (or
  group's) grid spans its own min..max (``quant.minmax_rtn``). ``grid="gptq"`` is RTN's grid,
  stretched to include 0 (``quant.fit_grid``); on rows of one sign nearly every entry differs.
* ``calib_inputs="original"``: every block is calibrated on the full-precision model's
  activations, as ``run_awq`` computes a block's output as the next block's input before it
  scales or clips that block. ``"compressed"`` feeds each block the already-quantized blocks'
  outputs (the SparseGPT/GPTQ driver).
"""

from __future__ import annotations

import torch
from torch import Tensor

from lensbias.compress.base import register
from lensbias.compress.calib import InputStats
from lensbias.compress.quant import _Quantizer, minmax_rtn, rtn
from lensbias.errors import LensbiasError

N_GRID = 20
SCALE_MIN = 1e-4
GRIDS = ("awq", "gptq")
CALIB_INPUTS = ("original", "compressed")


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

    def __init__(self, bits: int = 4, symmetric: bool = False, group_size: int = -1,
                 grid: str = "awq", calib_inputs: str = "original"):
        super().__init__(bits, symmetric, group_size)
        if grid not in GRIDS:
            raise LensbiasError(f"awq grid must be one of {', '.join(GRIDS)} (awq: llm-awq's "
                                f"min..max; gptq: RTN's grid through 0), got {grid!r:.40}")
        if calib_inputs not in CALIB_INPUTS:
            raise LensbiasError(f"awq calib_inputs must be one of {', '.join(CALIB_INPUTS)}, "
                                f"got {calib_inputs!r:.40}")
        self.grid, self.calib_inputs = grid, calib_inputs
        self.sequential = calib_inputs == "compressed"

    def quantize(self, weight: Tensor) -> Tensor:
        """Plain round-to-nearest on the chosen grid (α = 0)."""
        quant = minmax_rtn if self.grid == "awq" else rtn
        return quant(weight, self.bits, self.symmetric, self.group_size)

    def scaled_quant(self, weight: Tensor, scales: Tensor) -> Tensor:
        """Q(W·diag(s))·diag(s)⁻¹."""
        return self.quantize(weight * scales[None, :]) / scales[None, :]

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
