"""Compress, method family: magnitude pruning (the seed study arXiv 2312.00960's methods).

Unstructured: zero the smallest |W| per matrix (``magnitude``, also N:M such as 2:4) or
across all targeted matrices at once (``magnitude-global``). Structured: remove whole MLP neurons or attention
heads with the smallest Ln norm (``magnitude-neurons``, ``magnitude-heads``).
"""

from __future__ import annotations

from typing import Any

import einops
import torch
from torch import Tensor

from lensbias.compress.base import MatrixMethod, ModelMethod, register
from lensbias.compress.linear import LinearView
from lensbias.errors import LensbiasError
from lensbias.models import LoadedModel


def check_sparsity(sparsity: float) -> float:
    if not 0.0 <= float(sparsity) < 1.0:
        raise LensbiasError(f"sparsity must be in [0, 1), got {sparsity}")
    return float(sparsity)


def smallest_mask(scores: Tensor, n_prune: int) -> Tensor:
    """Boolean mask, True on the ``n_prune`` lowest scores (ties broken by position)."""
    mask = torch.zeros(scores.numel(), dtype=torch.bool)
    if n_prune > 0:
        order = torch.sort(scores.flatten(), stable=True).indices
        mask[order[:n_prune]] = True
    return mask.view_as(scores)


@register
class Magnitude(MatrixMethod):
    """Zero the ``sparsity`` fraction of smallest-|W| weights of each matrix, or (``nm="2:4"``)
    keep the N largest |W| of every M consecutive inputs of each output row.

    N:M follows locuslab/wanda ``prune_magnitude`` with ``prune_n``/``prune_m``: windows are
    the absolute column windows ``[k·M, (k+1)·M)`` of the ``[out, in]`` matrix, and the
    M − N smallest |W| of each are zeroed (ties: ``torch.topk``'s order); 2:4 is the pattern
    sparse tensor cores run. The reference's ``prune_n`` counts pruned weights; ``nm`` here
    counts kept ones, as for wanda and sparsegpt (2:4 is the same either way).
    """

    name = "magnitude"

    def __init__(self, sparsity: float = 0.5, nm: str | None = None):
        self.nm = parse_nm(nm)
        self.sparsity = check_sparsity(sparsity) if self.nm is None else 1 - self.nm[0] / self.nm[1]

    def compress(self, weight: Tensor, stats: Any) -> Tensor:
        if self.nm is not None:
            return weight.masked_fill(nm_mask(weight.abs(), *self.nm), 0.0)
        n_prune = int(round(weight.numel() * self.sparsity))
        return weight.masked_fill(smallest_mask(weight.abs(), n_prune), 0.0)


@register
class MagnitudeGlobal(ModelMethod):
    """One |W| threshold across every targeted matrix (torch's ``global_unstructured``)."""

    name = "magnitude-global"

    def __init__(self, sparsity: float = 0.5):
        self.sparsity = check_sparsity(sparsity)

    def apply(self, lm: LoadedModel, views: list[LinearView], tokens: Tensor | None) -> LoadedModel:
        weights = [v.read(lm.model) for v in views]
        scores = torch.cat([w.abs().flatten() for w in weights])
        mask = smallest_mask(scores, int(round(scores.numel() * self.sparsity)))
        start = 0
        for view, w in zip(views, weights):
            part = mask[start:start + w.numel()].view_as(w)
            view.write(lm.model, w.masked_fill(part, 0.0))
            start += w.numel()
        return lm


class _Structured(ModelMethod):
    """Remove whole units (rows of one matrix and matching columns of the next) by Ln norm."""

    def __init__(self, sparsity: float = 0.5, norm: float = 2.0):
        self.sparsity = check_sparsity(sparsity)
        self.norm = float(norm)

    def _prune_units(self, lm: LoadedModel, reader: LinearView, writer: LinearView,
                     unit_norms: Tensor, unit_size: int) -> None:
        """Zero the lowest-norm units: their rows in ``reader`` and columns in ``writer``."""
        dead = smallest_mask(unit_norms, int(round(unit_norms.numel() * self.sparsity)))
        dead_rows = einops.repeat(dead, "u -> (u s)", s=unit_size)
        w_read, w_write = reader.read(lm.model), writer.read(lm.model)
        reader.write(lm.model, w_read.masked_fill(dead_rows[:, None], 0.0))
        writer.write(lm.model, w_write.masked_fill(dead_rows[None, :], 0.0))


@register
class MagnitudeNeurons(_Structured):
    """Whole MLP neurons: W_in's row and W_out's column, by the Ln norm of W_in's row."""

    name = "magnitude-neurons"

    def apply(self, lm: LoadedModel, views: list[LinearView], tokens: Tensor | None) -> LoadedModel:
        by_name = {v.param: v for v in views}
        for view in views:
            if view.param.endswith("mlp.W_in"):
                out_view = by_name.get(view.param.replace("W_in", "W_out"))
                if out_view is None:
                    raise LensbiasError("neuron pruning needs both W_in and W_out targeted")
                norms = view.read(lm.model).norm(p=self.norm, dim=1)
                self._prune_units(lm, view, out_view, norms, 1)
                _zero_bias(lm.model, view.param.replace("W_in", "b_in"), norms, self)
        if not any(v.param.endswith("mlp.W_in") for v in views):
            raise LensbiasError("magnitude-neurons needs MLP targets")
        return lm


@register
class MagnitudeHeads(_Structured):
    """Whole attention heads: W_V's head block and W_O's head columns, by their joint Ln norm."""

    name = "magnitude-heads"

    def apply(self, lm: LoadedModel, views: list[LinearView], tokens: Tensor | None) -> LoadedModel:
        by_name = {v.param: v for v in views}
        n_heads = lm.model.cfg.n_heads
        found = False
        for view in views:
            if not view.param.endswith("attn.W_O"):
                continue
            found = True
            w_o = view.read(lm.model)  # [d_model, (h d_head)]
            per_head = einops.rearrange(w_o, "o (h i) -> h (o i)", h=n_heads)
            norms = per_head.norm(p=self.norm, dim=1)
            dead = smallest_mask(norms, int(round(n_heads * self.sparsity)))
            cols = einops.repeat(dead, "h -> (h i)", i=w_o.shape[1] // n_heads)
            view.write(lm.model, w_o.masked_fill(cols[None, :], 0.0))
            for w in ("W_Q", "W_K", "W_V"):
                qkv = by_name.get(view.param.replace("W_O", w))
                if qkv is not None:
                    qkv.write(lm.model, qkv.read(lm.model).masked_fill(cols[:, None], 0.0))
        if not found:
            raise LensbiasError("magnitude-heads needs attention targets")
        return lm


def _zero_bias(model: torch.nn.Module, name: str, norms: Tensor, method: _Structured) -> None:
    params = dict(model.named_parameters())
    if name in params:
        dead = smallest_mask(norms, int(round(norms.numel() * method.sparsity)))
        with torch.no_grad():
            params[name][dead] = 0.0


def parse_nm(nm: str | None) -> tuple[int, int] | None:
    """``"2:4"`` -> (2, 4): keep N of every M consecutive inputs (prune M - N)."""
    if nm is None:
        return None
    try:
        n, m = (int(x) for x in str(nm).split(":"))
    except ValueError:
        raise LensbiasError(f"N:M pattern must look like 2:4, got {nm!r}") from None
    if not 0 < n < m:
        raise LensbiasError(f"N:M pattern needs 0 < N < M, got {nm!r}")
    return n, m


def nm_mask(scores: Tensor, n: int, m: int) -> Tensor:
    """True on the M - N lowest scores inside every window of M inputs of each row."""
    rows, cols = scores.shape
    if cols % m:
        raise LensbiasError(f"N:M {n}:{m} needs the input width ({cols}) to be a multiple of {m}")
    windows = einops.rearrange(scores, "r (g m) -> r g m", m=m)
    low = torch.topk(windows, m - n, dim=-1, largest=False).indices
    mask = torch.zeros_like(windows, dtype=torch.bool).scatter_(-1, low, True)
    return einops.rearrange(mask, "r g m -> r (g m)")
