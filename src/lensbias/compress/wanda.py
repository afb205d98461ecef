"""Compress, method family: Wanda (Sun et al. 2023, locuslab/wanda ``prune_wanda``).

Score S_ij = |W_ij| · ‖X_j‖₂ over calibration tokens; within each output row prune the
lowest ``sparsity · d_in`` scores (or the lowest M - N of every M inputs for N:M). No update.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lensbias.compress.base import MatrixMethod, register
from lensbias.compress.calib import InputStats
from lensbias.compress.magnitude import check_sparsity, nm_mask, parse_nm


def wanda_scores(weight: Tensor, stats: InputStats) -> Tensor:
    return weight.abs() * stats.col_norm.to(weight.dtype)[None, :]


def row_mask(scores: Tensor, sparsity: float) -> Tensor:
    """Prune the same count, the lowest scores, in every row."""
    per_row = int(scores.shape[1] * sparsity)
    mask = torch.zeros_like(scores, dtype=torch.bool)
    if per_row:
        lowest = torch.sort(scores, dim=1, stable=True).indices[:, :per_row]
        mask.scatter_(1, lowest, True)
    return mask


@register
class Wanda(MatrixMethod):
    """Wanda pruning, unstructured per output row or N:M (``nm="2:4"``)."""

    name = "wanda"
    needs_inputs = True
    needs_xtx = False

    def __init__(self, sparsity: float = 0.5, nm: str | None = None):
        self.nm = parse_nm(nm)
        self.sparsity = check_sparsity(sparsity) if self.nm is None else 1 - self.nm[0] / self.nm[1]

    def compress(self, weight: Tensor, stats: InputStats) -> Tensor:
        scores = wanda_scores(weight, stats)
        mask = nm_mask(scores, *self.nm) if self.nm else row_mask(scores, self.sparsity)
        return weight.masked_fill(mask, 0.0)
