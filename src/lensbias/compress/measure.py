"""Compress, stage 4: what a compression achieved, measured: sparsity per module group,
bits per weight, parameters and bytes, and bits per byte on held-out code and prose.
"""

from __future__ import annotations

from typing import Any

import torch

from lensbias.compress.base import Compressed
from lensbias.compress.linear import GROUPS, linear_views
from lensbias.concepts.registry import load_dataset
from lensbias.models import LoadedModel
from lensbias.models.train import bits_per_byte

HELD_OUT = {"code": ("python-stdlib", 40), "prose": ("ud-gum:dev", 400)}
"""Held-out text for bits per byte: (dataset, examples); never seen by the tiny models."""
HELD_OUT_SLICE = "stdlib40-gumdev400"
"""The name of that slice, written beside every bits/byte figure lensbias reports: the first
40 chunks of the packaged ``python-stdlib`` dataset (held-out stdlib files, 41,220 bytes) and
the first 400 sentences of ``ud-gum:dev`` joined into passages of 20 (25,256 bytes). It is the
one default slice (``lensbias compress``, ``diff``, ``sweep``). The tiny models' training
script also measured its own slice, ``train-eval-150k`` (the first 150,000 characters of
held-out stdlib files and of GUM dev documents); the two give different figures (see
docs/models.md)."""


def held_out_texts(domain: str) -> list[str]:
    name, n = HELD_OUT[domain]
    texts = [e.text for e in load_dataset(name, max_examples=n).examples]
    return texts if domain == "code" else ["\n".join(texts[i:i + 20]) for i in range(0, len(texts), 20)]


_BPB_MEMO: dict[str, dict[str, float | None]] = {}
"""Bits per byte by weights sha256, so a sweep measures its original model once per process."""


def model_bits_per_byte(lm: LoadedModel) -> dict[str, float | None]:
    """Bits per byte on held-out code and prose (None for encoders: no LM head)."""
    if lm.is_encoder:
        return {d: None for d in HELD_OUT}
    key = lm.weights_hash()
    if key not in _BPB_MEMO:
        if len(_BPB_MEMO) >= 16:
            _BPB_MEMO.pop(next(iter(_BPB_MEMO)))
        _BPB_MEMO[key] = _measure_bpb(lm)
    return dict(_BPB_MEMO[key])


def _measure_bpb(lm: LoadedModel) -> dict[str, float | None]:
    head = [i for i, s in zip(*_enc(lm, "x")) if s]

    def encode(text: str) -> list[int]:
        ids, special = _enc(lm, text)
        return [i for i, s in zip(ids, special) if not s]

    bos = head[0] if head else 0
    return {d: bits_per_byte(lm.model, held_out_texts(d), encode, bos, min(lm.n_ctx, 256))
            for d in HELD_OUT}


def _enc(lm: LoadedModel, text: str) -> tuple[list[int], list[bool]]:
    e = lm.tokenizer.encode(text)
    return e.ids, e.special


def group_sparsity(model: torch.nn.Module, encoder: bool) -> dict[str, float]:
    """Fraction of exactly-zero weights per module group (all blocks)."""
    zeros: dict[str, int] = {}
    total: dict[str, int] = {}
    for view in linear_views(model, encoder=encoder):
        w = model.get_parameter(view.param)
        zeros[view.group] = zeros.get(view.group, 0) + int((w == 0).sum())
        total[view.group] = total.get(view.group, 0) + w.numel()
    return {g: zeros[g] / total[g] for g in GROUPS if g in total}


def measure(original: LoadedModel, result: Compressed, with_bpb: bool = True) -> dict[str, Any]:
    """The numbers ``lensbias compress`` prints and writes into recipe.json."""
    model = result.lm.model
    n_orig = sum(p.numel() for p in original.model.parameters())
    n_new = sum(p.numel() for p in model.parameters())
    rewritten = {name: bits for name, bits in result.stored_bits.items()}
    n_rewritten = sum(model.get_parameter(k).numel() for k in rewritten)
    other = n_new - n_rewritten
    out: dict[str, Any] = {
        "sparsity": group_sparsity(model, result.lm.is_encoder),
        "bits_per_weight_rewritten": (sum(rewritten.values()) / n_rewritten) if n_rewritten else None,
        "params": {"original": n_orig, "compressed": n_new,
                   "nonzero": int(sum(int((p != 0).sum()) for p in model.parameters()))},
        "bytes_fp16_estimate": {"original": 2 * n_orig,
                                "compressed": int((sum(rewritten.values()) + 16 * other) / 8)},
    }
    if with_bpb:
        out["bits_per_byte"] = {"original": model_bits_per_byte(original),
                                "compressed": model_bits_per_byte(result.lm)}
        out["bits_per_byte_slice"] = HELD_OUT_SLICE
    return out
