"""Models, stage 2 of 3: the built-in tiny models' shape and their folder format.

A model folder holds ``config.json`` (TransformerLens config + lensbias metadata),
``model.safetensors``, ``tokenizer.json``, ``token_counts.safetensors`` and ``MODEL_CARD.md``.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

WEIGHTS_DIR = Path(__file__).parent / "weights"
TINY_NAMES = ("tiny-mixed", "tiny-code", "tiny-prose")

TINY_MIXTURES: dict[str, dict[str, float]] = {
    "tiny-mixed": {"code": 0.5, "prose": 0.5},
    "tiny-code": {"code": 0.9, "prose": 0.1},
    "tiny-prose": {"code": 0.1, "prose": 0.9},
}
"""Share of training sequences drawn from each domain."""


def tiny_config(d_vocab: int, seed: int = 0) -> dict[str, Any]:
    """HookedTransformerConfig fields of every tiny model: 4 layers, d_model 256."""
    return dict(n_layers=4, d_model=256, n_heads=4, d_head=64, d_mlp=1024, d_vocab=d_vocab,
                n_ctx=256, act_fn="gelu", normalization_type="LN",
                positional_embedding_type="standard", seed=seed, default_prepend_bos=True)


def save_model_folder(folder: Path, tl_config: dict[str, Any], model: torch.nn.Module,
                      tokenizer_json: Path, token_counts: torch.Tensor,
                      meta: dict[str, Any], card: str) -> None:
    """Write a complete model folder atomically (temporary folder, then rename)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.tmp"))
    tmp.chmod(0o755)
    state = {k: v.contiguous() for k, v in model.state_dict().items()
             if not k.endswith(("attn.mask", "attn.IGNORE"))}
    save_file(state, tmp / "model.safetensors")
    save_file({"counts": token_counts.to(torch.int64)}, tmp / "token_counts.safetensors")
    (tmp / "tokenizer.json").write_bytes(tokenizer_json.read_bytes())
    config = {"format": "lensbias-model", "format_version": 1, "architecture": "decoder",
              "tokenizer": "bpe", "transformer_lens_config": tl_config, **meta}
    (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (tmp / "MODEL_CARD.md").write_text(card)
    if folder.exists():
        old = folder.with_name(f".{folder.name}.old")
        os.replace(folder, old)
        os.replace(tmp, folder)
        for f in old.iterdir():
            f.unlink()
        old.rmdir()
    else:
        os.replace(tmp, folder)
