"""Compress, method family: round-to-nearest weight quantization (the grid GPTQ also uses).

Asymmetric or symmetric, per output channel (``group_size=-1``) or in groups of inputs;
2, 3, 4 or 8 bits. Weights are stored dequantized (for analysis); ``stored_bits`` records
the true budget: ``bits`` per weight plus a 16-bit scale (and a ``bits``-bit zero point
when asymmetric) per group.
"""

from __future__ import annotations

from typing import Any

import einops
import torch
from torch import Tensor

from lensbias.compress.base import MatrixMethod, register
from lensbias.compress.linear import LinearView
from lensbias.errors import LensbiasError

SUPPORTED_BITS = (2, 3, 4, 8)


def check_bits(bits: int, group_size: int) -> tuple[int, int]:
    for name, value in (("bits", bits), ("group_size", group_size)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
            raise LensbiasError(f"{name} must be a whole number, got {value!r}")
    if int(bits) not in SUPPORTED_BITS:
        raise LensbiasError(f"bits must be one of {SUPPORTED_BITS}, got {bits}")
    if int(group_size) != -1 and int(group_size) < 2:
        raise LensbiasError(f"group_size must be -1 (per channel) or >= 2, got {group_size}")
    return int(bits), int(group_size)


def fit_grid(weight: Tensor, bits: int, symmetric: bool) -> tuple[Tensor, Tensor]:
    """Per-row ``(scale, zero)`` ``[rows, 1]`` of a uniform grid covering each row and 0."""
    maxq = 2 ** bits - 1
    xmin = weight.min(dim=1).values.clamp(max=0)
    xmax = weight.max(dim=1).values.clamp(min=0)
    if symmetric:
        xmax = torch.maximum(xmin.abs(), xmax)
        xmin = torch.where(xmin < 0, -xmax, xmin)
    both_zero = (xmin == 0) & (xmax == 0)
    xmin, xmax = torch.where(both_zero, -1.0, xmin), torch.where(both_zero, 1.0, xmax)
    scale = (xmax - xmin) / maxq
    zero = torch.full_like(scale, (maxq + 1) / 2) if symmetric else torch.round(-xmin / scale)
    return scale[:, None], zero[:, None]


def fake_quant(weight: Tensor, scale: Tensor, zero: Tensor, bits: int) -> Tensor:
    """Round onto the grid and map back to floats."""
    q = torch.clamp(torch.round(weight / scale) + zero, 0, 2 ** bits - 1)
    return scale * (q - zero)


def rtn(weight: Tensor, bits: int, symmetric: bool, group_size: int) -> Tensor:
    """Round-to-nearest of a whole ``[out, in]`` matrix."""
    if group_size == -1 or group_size >= weight.shape[1]:
        return fake_quant(weight, *fit_grid(weight, bits, symmetric), bits)
    if weight.shape[1] % group_size:
        raise LensbiasError(f"group_size {group_size} does not divide the input width "
                            f"{weight.shape[1]}")
    groups = einops.rearrange(weight, "o (g s) -> (o g) s", s=group_size)
    out = fake_quant(groups, *fit_grid(groups, bits, symmetric), bits)
    return einops.rearrange(out, "(o g) s -> o (g s)", o=weight.shape[0])


def minmax_rtn(weight: Tensor, bits: int, symmetric: bool, group_size: int) -> Tensor:
    """Round-to-nearest on llm-awq's grid (``pseudo_quantize_tensor``), per row or group.

    Asymmetric (``zero_point=True``, what AWQ runs): the grid spans the row's own min..max,
    which need not include 0: scale = max(max − min, 1e-5) / (2^b − 1), zero =
    clamp(−round(min / scale), 0, 2^b − 1), q = (clamp(round(w / scale) + zero, 0, 2^b − 1)
    − zero) · scale. Symmetric: scale = max(|w|max, 1e-5) / (2^(b−1) − 1), levels
    −2^(b−1) .. 2^(b−1) − 1. ``fit_grid`` (GPTQ's, used by ``rtn``) instead stretches every
    grid to cover 0, so on a row whose entries share a sign the two grids differ.
    """
    if group_size != -1 and group_size < weight.shape[1]:
        if weight.shape[1] % group_size:
            raise LensbiasError(f"group_size {group_size} does not divide the input width "
                                f"{weight.shape[1]}")
        groups = einops.rearrange(weight, "o (g s) -> (o g) s", s=group_size)
        out = minmax_rtn(groups, bits, symmetric, -1)
        return einops.rearrange(out, "(o g) s -> o (g s)", o=weight.shape[0])
    if symmetric:
        max_int, min_int = 2 ** (bits - 1) - 1, -(2 ** (bits - 1))
        scale = weight.abs().amax(dim=1, keepdim=True).clamp(min=1e-5) / max_int
        return torch.clamp(torch.round(weight / scale), min_int, max_int) * scale
    max_int = 2 ** bits - 1
    w_max = weight.amax(dim=1, keepdim=True)
    w_min = weight.amin(dim=1, keepdim=True)
    scale = (w_max - w_min).clamp(min=1e-5) / max_int
    zero = torch.clamp(-torch.round(w_min / scale), 0, max_int)
    return (torch.clamp(torch.round(weight / scale) + zero, 0, max_int) - zero) * scale


class _Quantizer(MatrixMethod):
    def __init__(self, bits: int = 4, symmetric: bool = False, group_size: int = -1):
        self.bits, self.group_size = check_bits(bits, group_size)
        self.symmetric = bool(symmetric)

    def stored_bits(self, view: LinearView, weight: Tensor) -> float:
        out, inp = weight.shape
        groups = out * (1 if self.group_size == -1 else max(1, inp // self.group_size))
        per_group = 16 + (0 if self.symmetric else self.bits)
        return float(self.bits * weight.numel() + per_group * groups)


@register
class RoundToNearest(_Quantizer):
    """Round-to-nearest quantization (data-free)."""

    name = "rtn"

    def compress(self, weight: Tensor, stats: Any) -> Tensor:
        return rtn(weight, self.bits, self.symmetric, self.group_size)
