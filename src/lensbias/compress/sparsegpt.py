"""Compress, method family: SparseGPT (Frantar & Alistarh 2023, IST-DASLab ``fasterprune``).

Prune with second-order (OBS) updates: blocks of ``blocksize`` input columns; the mask of a
block is chosen by w² / [H⁻¹]_cc² (or per window of M for N:M), then column by column the
pruned weights' error is spread onto the later columns through the Cholesky factor of H⁻¹.

Where this departs from the reference, on purpose:

* Unstructured mask: like the reference, one threshold over the whole ``[rows × block]`` score
  matrix (not per row, as Wanda does). The reference prunes ``tmp <= sort(tmp)[int(k·s)]``,
  i.e. ``int(k·s) + 1`` weights (plus ties) per block, so even sparsity 0 prunes one weight per
  block. Here each block prunes exactly its share of ``round(sparsity · numel)`` (cumulative
  rounding over blocks), so the matrix has exactly that many pruned weights, as ``magnitude``.
* Sparsity 0 (and no N:M) returns the weights untouched; the reference would still zero dead
  inputs' columns.
* N:M keeps N of every M inputs (``parse_nm``); the reference's ``prunen`` is the number pruned.
  Windows are the absolute column windows; ``blocksize`` is rounded down to a multiple of M
  (at least M) so no window straddles two blocks.
* float64 sweep (see ``hessian``); the result is returned in the input's dtype.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from lensbias.compress.base import MatrixMethod, register
from lensbias.compress.calib import InputStats
from lensbias.compress.hessian import (check_blocksize, check_percdamp, inverse_cholesky_upper,
                                       need_stats, prepare_hessian)
from lensbias.compress.magnitude import check_sparsity, nm_mask, parse_nm, smallest_mask
from lensbias.errors import LensbiasError


def obs_scores(w_rows_cols: Tensor, hinv_diag_cols: Tensor) -> Tensor:
    """SparseGPT's saliency w² / [H⁻¹]_cc² (the OBS error of zeroing one weight, times 2)."""
    return w_rows_cols ** 2 / hinv_diag_cols[None, :] ** 2


def block_prune_counts(rows: int, cols: int, step: int, sparsity: float) -> list[int]:
    """Pruned weights per block: cumulative rounding, summing to round(sparsity · rows · cols)."""
    edges = [min(i, cols) for i in range(0, cols + step, step)]
    edges = sorted(set(edges))
    total = [int(round(sparsity * rows * e)) for e in edges]
    return [b - a for a, b in zip(total, total[1:])]


def prune_obs(weight: Float[Tensor, "out in"], hinv_upper: Float[Tensor, "in in"],
              sparsity: float, nm: tuple[int, int] | None,
              blocksize: int) -> Float[Tensor, "out in"]:
    """The column sweep of ``fasterprune`` on ``weight`` (float64, dead columns already zero)."""
    w = weight.clone()
    rows, cols = w.shape
    step = blocksize if nm is None else max(nm[1], blocksize - blocksize % nm[1])
    counts = block_prune_counts(rows, cols, step, sparsity) if nm is None else None
    for b, i1 in enumerate(range(0, cols, step)):
        i2 = min(i1 + step, cols)
        w_blk = w[:, i1:i2].clone()
        err_blk = torch.zeros_like(w_blk)
        hinv_blk = hinv_upper[i1:i2, i1:i2]
        d_blk = hinv_blk.diagonal()
        if nm is None:
            mask_blk = smallest_mask(obs_scores(w_blk, d_blk), counts[b])
        else:
            mask_blk = torch.zeros_like(w_blk, dtype=torch.bool)
        for i in range(i2 - i1):
            if nm is not None and i % nm[1] == 0:
                win = slice(i, i + nm[1])
                mask_blk[:, win] = nm_mask(obs_scores(w_blk[:, win], d_blk[win]), *nm)
            col = w_blk[:, i]
            q = col.masked_fill(mask_blk[:, i], 0.0)
            err = (col - q) / d_blk[i]
            w_blk[:, i:] -= torch.outer(err, hinv_blk[i, i:])
            w_blk[:, i] = q
            err_blk[:, i] = err
        w[:, i1:i2] = w_blk
        w[:, i2:] -= err_blk @ hinv_upper[i1:i2, i2:]
    return w


@register
class SparseGPT(MatrixMethod):
    """SparseGPT pruning, unstructured (exact count per matrix) or N:M (``nm="2:4"``)."""

    name = "sparsegpt"
    needs_inputs = True

    def __init__(self, sparsity: float = 0.5, nm: str | None = None, blocksize: int = 128,
                 percdamp: float = 0.01):
        self.nm = parse_nm(nm)
        self.sparsity = check_sparsity(sparsity) if self.nm is None else 1 - self.nm[0] / self.nm[1]
        self.blocksize = check_blocksize(blocksize)
        self.percdamp = check_percdamp(percdamp)

    def compress(self, weight: Tensor, stats: InputStats | None) -> Tensor:
        if self.nm is None and self.sparsity == 0.0:
            return weight.clone()
        if self.nm is not None and weight.shape[1] % self.nm[1]:
            raise LensbiasError(f"N:M {self.nm[0]}:{self.nm[1]} needs the input width "
                                f"({weight.shape[1]}) to be a multiple of {self.nm[1]}")
        h_in_in, w_out_in = prepare_hessian(need_stats(stats, self.name),
                                            weight.to(torch.float64), self.percdamp)
        hinv_upper = inverse_cholesky_upper(h_in_in)
        pruned = prune_obs(w_out_in, hinv_upper, self.sparsity, self.nm, self.blocksize)
        return pruned.to(weight.dtype)
