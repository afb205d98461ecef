"""Compress, method family: layer removal (ShortGPT, Men et al. 2024, arXiv 2403.03853).

Score every block by how much it turns the residual stream on the calibration tokens, drop
the ``n_drop`` blocks that turn it least, and renumber the rest into a shallower model.

Block influence of block i over all calibration tokens t (BOS/CLS and other specials
included, as ShortGPT's reference code and ``collect_inputs`` do), with
x_i = ``blocks.i.hook_resid_pre`` and x_{i+1} = ``blocks.i.hook_resid_post``:

* ``score="angular"`` (default): mean_t arccos(cos(x_i, x_{i+1})) / π, the angular distance
  of Gromov et al. 2024 (arXiv 2403.17887) for one block; in [0, 1], and it spreads out the
  near-1 cosines of deep blocks that ``1 − cos`` crowds together.
* ``score="cosine"``: ShortGPT's BI_i = 1 − mean_t cos(x_i, x_{i+1}), in [0, 2].

Both rank an identity block (zero output) lowest. The result is recorded in the returned
model's ``meta``: ``dropped_blocks`` (original indices), ``block_influence`` (one score per
original block, ``None`` for blocks outside the targeted layer range) and ``block_score``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from lensbias.compress.base import ModelMethod, register
from lensbias.compress.linear import LinearView
from lensbias.errors import LensbiasError
from lensbias.models import LoadedModel, adapter

SCORES = ("angular", "cosine")


def block_influence(model: Any, tokens: Tensor, layers: list[int], score: str = "angular",
                    batch_size: int = 16) -> dict[int, float]:
    """Influence of each block in ``layers`` over every position of ``tokens``."""
    hooks = [h for i in layers for h in (f"blocks.{i}.hook_resid_pre", f"blocks.{i}.hook_resid_post")]
    sums = dict.fromkeys(layers, 0.0)
    count = 0
    device = next(model.parameters()).device
    for start in range(0, len(tokens), batch_size):
        batch = tokens[start:start + batch_size].to(device)
        acts = adapter.run_hooks(model, batch, hooks)
        count += batch.numel()
        for i in layers:
            cos = F.cosine_similarity(acts[f"blocks.{i}.hook_resid_pre"].double(),
                                      acts[f"blocks.{i}.hook_resid_post"].double(), dim=-1)
            sums[i] += float(_per_token(cos, score).sum())
    return {i: sums[i] / count for i in layers}


def _per_token(cos: Tensor, score: str) -> Tensor:
    if score == "angular":
        return torch.arccos(cos.clamp(-1.0, 1.0)) / math.pi
    return 1.0 - cos


def keep_blocks_state(state: dict[str, Tensor], keep: list[int]) -> dict[str, Tensor]:
    """A state dict with only the blocks in ``keep``, renumbered ``blocks.keep[j].* → blocks.j.*``."""
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if not key.startswith("blocks."):
            out[key] = value
            continue
        _, old, rest = key.split(".", 2)
        for j, k in enumerate(keep):  # a block may be kept more than once (a deeper student)
            if k == int(old):
                out[f"blocks.{j}.{rest}"] = value.clone()
    return out


def decoder_with_blocks(model: Any, keep: list[int]) -> Any:
    """A new HookedTransformer made of ``model``'s blocks ``keep`` (in that order), its
    embeddings, final LN and unembedding; same dtype and device as ``model``."""
    config = adapter.config_dict(model)
    config["n_layers"] = len(keep)
    config["seed"] = None  # a set seed would reseed every global RNG on construction
    state = keep_blocks_state(model.state_dict(), keep)
    new = adapter.build_decoder(config, state, tokenizer=getattr(model, "tokenizer", None))
    first = next(model.parameters())
    return adapter.to_device(new, str(first.device))


def with_new_model(lm: LoadedModel, model: Any, extra: dict[str, Any]) -> LoadedModel:
    """``lm`` with ``model`` swapped in and ``extra`` added to its meta (config updated)."""
    meta = dict(lm.meta or {})
    if "transformer_lens_config" in meta:  # a folder's old shape must not outlive the model
        meta["transformer_lens_config"] = adapter.config_dict(model)
    meta.update(extra)
    return dataclasses.replace(lm, model=model, meta=meta)


@register
class LayerDrop(ModelMethod):
    """Remove the ``n_drop`` blocks with the lowest influence on the residual stream."""

    name = "layer-drop"
    needs_inputs = True

    def __init__(self, n_drop: int = 1, score: str = "angular"):
        if isinstance(n_drop, bool) or int(n_drop) != n_drop:
            raise LensbiasError(f"n_drop must be a whole number of blocks, got {n_drop!r}")
        if score not in SCORES:
            raise LensbiasError(f"layer-drop score {score!r} is unknown; choose from "
                                f"{', '.join(SCORES)}")
        self.n_drop = int(n_drop)
        self.score = score

    def apply(self, lm: LoadedModel, views: list[LinearView], tokens: Tensor | None) -> LoadedModel:
        if lm.is_encoder:
            raise LensbiasError(f"layer-drop supports causal decoders only; {lm.name} is an "
                                "encoder: pick a decoder model")
        n_layers = int(lm.model.cfg.n_layers)
        candidates = sorted({v.layer for v in views if v.layer is not None})
        self._check(n_layers, candidates)
        if tokens is None:
            raise LensbiasError("layer-drop needs calibration tokens; give it a calibration domain")
        scores = block_influence(lm.model, tokens, candidates, self.score)
        order = sorted(candidates, key=lambda i: (scores[i], i))  # ties: the earlier block
        dropped = sorted(order[:self.n_drop])
        keep = [i for i in range(n_layers) if i not in dropped]
        model = decoder_with_blocks(lm.model, keep)
        return with_new_model(lm, model, {
            "dropped_blocks": dropped,
            "block_influence": [scores.get(i) for i in range(n_layers)],
            "block_score": self.score})

    def _check(self, n_layers: int, candidates: list[int]) -> None:
        if not 0 <= self.n_drop <= n_layers - 1:
            raise LensbiasError(f"n_drop={self.n_drop} is out of range for a {n_layers}-block "
                                f"model; use 0..{n_layers - 1}")
        if self.n_drop > len(candidates):
            raise LensbiasError(f"n_drop={self.n_drop} exceeds the {len(candidates)} blocks the "
                                "targets select; widen the targeted layer range")
