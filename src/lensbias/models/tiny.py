"""Models, stage 2 of 4: the built-in tiny models: their shape and training mixtures.

They are trained by ``scripts/train_tiny.py`` and live under ``models/weights/<name>/``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
