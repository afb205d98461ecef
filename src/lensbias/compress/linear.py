"""Compress, stage 1: every weight matrix seen as a linear map ``[out, in]`` with its input hook.

TransformerLens stores weights per head (``W_Q`` is ``[n_heads, d_model, d_head]``) and
right-multiplies (``x @ W``); compressors think in ``W[out, in]``. A ``LinearView`` reads a
parameter as ``[out, in]``, writes it back in TransformerLens layout, and names the hook
whose activations (flattened to ``[tokens, in]``) are that map's input.
"""

from __future__ import annotations

from dataclasses import dataclass

import einops
import torch
from jaxtyping import Float
from torch import Tensor

GROUPS = ("attn", "mlp", "embed", "unembed")

# parameter layout -> [out, in]; ``h`` heads, ``i`` input dim, ``o`` output dim
_ATTN_IN = "h i o -> (h o) i"      # W_Q, W_K, W_V: [n_heads, d_model, d_head]
_ATTN_OUT = "h i o -> o (h i)"     # W_O: [n_heads, d_head, d_model], input hook_z (h d_head)
_MATRIX = "i o -> o i"             # W_in, W_out, W_U: [d_in, d_out]
_EMBED = "v d -> d v"              # W_E: [d_vocab, d_model], input one-hot tokens


@dataclass(frozen=True)
class LinearView:
    """One weight matrix as a linear map, and where its input can be read."""

    param: str
    """State-dict name, e.g. ``blocks.0.attn.W_Q``."""
    group: str
    """'attn', 'mlp', 'embed' or 'unembed' (the seed study's module groups)."""
    layer: int | None
    """Block index, None for embed/unembed."""
    input_hook: str | None
    """Hook whose activations are the input ``[.., in]``; None for W_E (one-hot tokens)."""
    pattern: str
    """einops pattern from the parameter's layout to ``[out, in]``."""
    input_norm: str | None = None
    """The norm module whose ``hook_normalized`` is ``input_hook``, or None. TransformerLens
    hooks a LayerNorm's or RMSNorm's output *before* its weight and bias (``x / scale``);
    the matrix reads ``x / scale · w + b``, which ``input_of`` rebuilds."""

    def input_of(self, model: torch.nn.Module, act: Tensor) -> Tensor:
        """The matrix's actual input, from ``input_hook``'s activations."""
        if self.input_norm is None:
            return act
        norm = model.get_submodule(self.input_norm)
        w, b = getattr(norm, "w", None), getattr(norm, "b", None)
        x = act * w.detach() if isinstance(w, Tensor) else act
        return x + b.detach() if isinstance(b, Tensor) else x

    def read(self, model: torch.nn.Module) -> Float[Tensor, "out in"]:
        """A float32 copy of the weight as ``[out, in]``."""
        return einops.rearrange(_param(model, self.param).detach(), self.pattern).float().clone()

    def write(self, model: torch.nn.Module, weight: Float[Tensor, "out in"]) -> None:
        """Store ``[out, in]`` back into the parameter, in its layout and dtype."""
        param = _param(model, self.param)
        left, right = self.pattern.split("->")
        heads = {"h": param.shape[0]} if left.split()[0] == "h" else {}
        back = einops.rearrange(weight, f"{right} -> {left}", **heads)
        with torch.no_grad():
            param.copy_(back.to(param.dtype))

    def numel(self, model: torch.nn.Module) -> int:
        return _param(model, self.param).numel()


def _param(model: torch.nn.Module, name: str) -> torch.nn.Parameter:
    return model.get_parameter(name)


def linear_views(model: torch.nn.Module, encoder: bool = False) -> list[LinearView]:
    """Every compressible matrix of a TransformerLens model, in forward order."""
    hooks = set(model.hook_dict)
    views: list[LinearView] = []
    if "embed.W_E" in dict(model.named_parameters()):
        views.append(LinearView("embed.W_E", "embed", None, None, _EMBED))
    for layer in range(model.cfg.n_layers):
        b = f"blocks.{layer}"
        if encoder:  # post-LN BERT: attention reads resid_pre, the MLP reads ln1's output
            attn_in, mlp_in = f"{b}.hook_resid_pre", f"{b}.ln1.hook_normalized"
        else:
            attn_in = f"{b}.ln1.hook_normalized" if f"{b}.ln1.hook_normalized" in hooks else f"{b}.hook_resid_pre"
            mlp_in = f"{b}.ln2.hook_normalized" if f"{b}.ln2.hook_normalized" in hooks else f"{b}.hook_resid_mid"
        attn_norm, mlp_norm = _norm_of(attn_in), _norm_of(mlp_in)
        params = dict(model.named_parameters())
        for w in ("W_Q", "W_K", "W_V"):
            name = f"{b}.attn.{w}" if f"{b}.attn.{w}" in params else f"{b}.attn._{w}"
            views.append(LinearView(name, "attn", layer, attn_in, _ATTN_IN, attn_norm))
        views.append(LinearView(f"{b}.attn.W_O", "attn", layer, f"{b}.attn.hook_z", _ATTN_OUT))
        if f"{b}.mlp.W_in" in params:
            views.append(LinearView(f"{b}.mlp.W_in", "mlp", layer, mlp_in, _MATRIX, mlp_norm))
            if f"{b}.mlp.W_gate" in params:  # gated MLP (Llama, Qwen2, Mistral): same input
                views.append(LinearView(f"{b}.mlp.W_gate", "mlp", layer, mlp_in, _MATRIX,
                                        mlp_norm))
            views.append(LinearView(f"{b}.mlp.W_out", "mlp", layer, f"{b}.mlp.hook_post", _MATRIX))
    if "unembed.W_U" in dict(model.named_parameters()) and not encoder:
        final = "ln_final.hook_normalized" if "ln_final.hook_normalized" in hooks else f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
        views.append(LinearView("unembed.W_U", "unembed", None, final, _MATRIX, _norm_of(final)))
    return views


def _norm_of(hook: str) -> str | None:
    """``blocks.0.ln1`` for ``blocks.0.ln1.hook_normalized``; None for a residual hook."""
    return hook.removesuffix(".hook_normalized") if hook.endswith(".hook_normalized") else None


@dataclass(frozen=True)
class Targets:
    """Which matrices a compressor touches (the seed study's module groups)."""

    attn: bool = True
    """Attention projections W_Q, W_K, W_V, W_O."""
    mlp: bool = True
    """MLP matrices W_in, W_out (and W_gate of a gated MLP)."""
    embed: bool = False
    """The token embedding W_E."""
    unembed: bool = False
    """The unembedding W_U."""
    layers: tuple[int, int] | None = None
    """Inclusive block range ``(first, last)``; None = every block."""

    def select(self, views: list[LinearView]) -> list[LinearView]:
        chosen = []
        for v in views:
            if not getattr(self, v.group):
                continue
            if v.layer is not None and self.layers is not None and not (
                    self.layers[0] <= v.layer <= self.layers[1]):
                continue
            chosen.append(v)
        return chosen

    def label(self) -> str:
        groups = [g for g in GROUPS if getattr(self, g)]
        span = "" if self.layers is None else f" layers {self.layers[0]}-{self.layers[1]}"
        return "+".join(groups) + span
