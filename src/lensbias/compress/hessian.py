"""Compress, method family: the second-order machinery SparseGPT and GPTQ share.

The layer-wise Hessian H = (2/N) XᵀX of ‖W X‖² with dead inputs fixed and the diagonal damped
(IST-DASLab ``fasterprune`` / ``fasterquant``), the upper Cholesky factor of H⁻¹ their column
sweeps read, and the layer-wise reconstruction error on the calibration inputs.

N is the number of calibration sequences, as in the references (``InputStats.hessian``), not
the number of tokens: the two differ by the factor seq_len, which cancels in the sweeps
except where H meets a constant, the dead inputs' H_ii = 1. That 1 enters the damping
(percdamp · mean(diag H)), the OBS updates through H⁻¹ and act-order's ranking of columns,
so the scale is the reference's.

Everything here is float64: H is accumulated in float64 by ``InputStats``, and the factors
stay float64 so the column sweeps propagate errors without float32 round-off (the reference
runs float32 on GPU; float64 only makes the same algorithm more exact).
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from lensbias.compress.calib import InputStats
from lensbias.errors import LensbiasError


def need_stats(stats: InputStats | None, method: str) -> InputStats:
    """The input statistics, or an error saying the method needs calibration data."""
    if stats is None or stats.n == 0:
        raise LensbiasError(f"method {method} needs calibration input statistics; got none "
                            "(run it through compress() with a calibration config)")
    return stats


def check_percdamp(percdamp: float) -> float:
    if not 0.0 <= float(percdamp) < 1.0:
        raise LensbiasError(f"percdamp must be in [0, 1) (reference: 0.01), got {percdamp}")
    return float(percdamp)


def check_blocksize(blocksize: int) -> int:
    if int(blocksize) != blocksize or int(blocksize) < 1:
        raise LensbiasError(f"blocksize must be a positive integer (reference: 128), got {blocksize}")
    return int(blocksize)


def prepare_hessian(stats_or_h: InputStats | Tensor, weight: Float[Tensor, "out in"],
                    percdamp: float) -> tuple[Float[Tensor, "in in"], Float[Tensor, "out in"]]:
    """Damped float64 H and a copy of ``weight`` with dead inputs' columns zeroed.

    Dead inputs (H_ii == 0: never nonzero on the calibration data) get H_ii = 1 and W[:, i] = 0;
    then ``percdamp · mean(diag H)`` is added to the diagonal. ``weight`` keeps its dtype.
    """
    h_in_in = (stats_or_h.hessian if isinstance(stats_or_h, InputStats) else stats_or_h)
    h_in_in = h_in_in.to(torch.float64).clone()
    if h_in_in.shape != (weight.shape[1], weight.shape[1]):
        raise LensbiasError(f"Hessian of shape {tuple(h_in_in.shape)} does not match the "
                            f"weight's input width {weight.shape[1]}; recollect the statistics")
    diag_in = h_in_in.diagonal()
    dead_in = diag_in == 0
    diag_in[dead_in] = 1.0
    weight_out_in = weight.clone()
    weight_out_in[:, dead_in] = 0.0
    diag_in += percdamp * diag_in.mean()
    return h_in_in, weight_out_in


def inverse_cholesky_upper(h_in_in: Float[Tensor, "in in"]) -> Float[Tensor, "in in"]:
    """Upper U with H⁻¹ = UᵀU (float64): row i of U from column i on is what the sweeps use."""
    h64 = h_in_in.to(torch.float64)
    lower, info = torch.linalg.cholesky_ex(h64)
    if int(info) == 0:
        upper, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(lower), upper=True)
    if int(info) != 0:
        raise LensbiasError("the damped Hessian is not positive definite; raise percdamp "
                            "(e.g. 0.1) or use more calibration data")
    return upper


def layer_error(weight_new: Float[Tensor, "out in"], weight_old: Float[Tensor, "out in"],
                stats: InputStats) -> float:
    """Mean over calibration tokens of ‖(W_new − W_old) x‖², from XᵀX: tr(ΔW XᵀX ΔWᵀ) / n."""
    delta_out_in = (weight_new.to(torch.float64) - weight_old.to(torch.float64))
    return float(((delta_out_in @ stats.xtx) * delta_out_in).sum() / max(stats.n, 1))
