"""Compress, method family: GPTQ (Frantar et al. 2022, IST-DASLab ``fasterquant``).

Quantize column by column onto RTN's grid (``quant.fit_grid`` / ``quant.fake_quant``) and
spread each column's rounding error onto the not-yet-quantized columns through the upper
Cholesky factor of H⁻¹, in blocks of ``blocksize`` with a lazy update of later blocks.

Choices, following the reference (``static_groups=False``):

* Per channel (``group_size=-1``, or a group as wide as the matrix): one grid per row, fitted on
  the original weights before any update, so the grid is exactly RTN's.
* Groups: the grid of the group starting at column j is refitted when the sweep reaches j, on
  ``W[:, j:j+g]`` as it stands then: updated by earlier blocks' lazy updates but not by the
  current block's column updates (the reference reads the outer W, not the block copy).
* ``act_order``: columns sorted by diag(H) descending (stable), then un-permuted. With groups
  the groups are consecutive columns *in that order* (the reference's default), so a stored
  matrix needs a group index per input column; ``stored_bits`` counts ceil(log2 groups) bits
  per column for it. ``act_order_perm`` gives the order.
* Quantization itself is float32 (so levels are bit-identical to RTN's arithmetic); the error
  propagation is float64 (see ``hessian``).
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Float
from torch import Tensor

from lensbias.compress.base import register
from lensbias.compress.calib import InputStats
from lensbias.compress.hessian import (check_blocksize, check_percdamp, inverse_cholesky_upper,
                                       need_stats, prepare_hessian)
from lensbias.compress.linear import LinearView
from lensbias.compress.quant import _Quantizer, fake_quant, fit_grid
from lensbias.errors import LensbiasError


def act_order_perm(h_in_in: Tensor) -> Tensor:
    """Input columns by decreasing Hessian diagonal (dead inputs count as H_ii = 1)."""
    diag_in = h_in_in.diagonal().to(torch.float64).clone()
    diag_in[diag_in == 0] = 1.0
    return torch.argsort(diag_in, descending=True, stable=True)


def quantize_obs(weight: Float[Tensor, "out in"], hinv_upper: Float[Tensor, "in in"],
                 bits: int, symmetric: bool, group_size: int, blocksize: int,
                 grid: tuple[Tensor, Tensor] | None) -> Float[Tensor, "out in"]:
    """The column sweep of ``fasterquant`` (float64 ``weight``, columns already in sweep order).

    ``grid`` is the per-row ``(scale, zero)`` for ``group_size == -1``; otherwise each group's
    grid is fitted when the sweep reaches its first column.
    """
    w = weight.clone()
    q_out_in = torch.zeros_like(w)
    cols = w.shape[1]
    scale, zero = grid if grid is not None else (None, None)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        w_blk = w[:, i1:i2].clone()
        err_blk = torch.zeros_like(w_blk)
        hinv_blk = hinv_upper[i1:i2, i1:i2]
        for i in range(i2 - i1):
            j = i1 + i
            if group_size != -1 and j % group_size == 0:
                scale, zero = fit_grid(w[:, j:j + group_size].float(), bits, symmetric)
            col = w_blk[:, i]
            q = fake_quant(col.float()[:, None], scale, zero, bits)[:, 0].to(w.dtype)
            err = (col - q) / hinv_blk[i, i]
            w_blk[:, i:] -= torch.outer(err, hinv_blk[i, i:])
            q_out_in[:, j] = q
            err_blk[:, i] = err
        w[:, i2:] -= err_blk @ hinv_upper[i1:i2, i2:]
    return q_out_in


@register
class GPTQ(_Quantizer):
    """GPTQ quantization: RTN's grid, second-order error compensation from calibration data."""

    name = "gptq"
    needs_inputs = True

    def __init__(self, bits: int = 4, symmetric: bool = False, group_size: int = -1,
                 act_order: bool = False, blocksize: int = 128, percdamp: float = 0.01):
        super().__init__(bits, symmetric, group_size)
        self.act_order = bool(act_order)
        self.blocksize = check_blocksize(blocksize)
        self.percdamp = check_percdamp(percdamp)

    def _groups(self, cols: int) -> int:
        """Effective group size: -1 when one group spans the row (as ``quant.rtn``)."""
        if self.group_size == -1 or self.group_size >= cols:
            return -1
        if cols % self.group_size:
            raise LensbiasError(f"group_size {self.group_size} does not divide the input width "
                                f"{cols}")
        return self.group_size

    def compress(self, weight: Tensor, stats: InputStats | None) -> Tensor:
        group_size = self._groups(weight.shape[1])
        grid = fit_grid(weight.float(), self.bits, self.symmetric) if group_size == -1 else None
        stats = need_stats(stats, self.name)
        perm = act_order_perm(stats.hessian) if self.act_order else None
        h_in_in, w_out_in = prepare_hessian(stats, weight.to(torch.float64), self.percdamp)
        if perm is not None:
            w_out_in, h_in_in = w_out_in[:, perm], h_in_in[perm][:, perm]
        hinv_upper = inverse_cholesky_upper(h_in_in)
        q_out_in = quantize_obs(w_out_in, hinv_upper, self.bits, self.symmetric, group_size,
                                self.blocksize, grid)
        if perm is not None:
            q_out_in = q_out_in[:, torch.argsort(perm)]
        return q_out_in.to(weight.dtype)

    def stored_bits(self, view: LinearView, weight: Tensor) -> float:
        """RTN's budget, plus a group index per input column when act_order permutes groups."""
        base = super().stored_bits(view, weight)
        inp = weight.shape[1]
        if not self.act_order or self.group_size == -1 or self.group_size >= inp:
            return base
        return base + inp * math.ceil(math.log2(inp // self.group_size))
