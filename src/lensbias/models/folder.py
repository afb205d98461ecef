"""Models, stage 3 of 4: the model-folder format lensbias writes and reads.

A folder holds ``config.json`` (TransformerLens config + metadata), ``model.safetensors``,
the tokenizer (``tokenizer.json`` for lensbias BPE, or a transformers tokenizer's files),
optionally ``token_counts.safetensors``, ``recipe.json`` (compressed models) and
``MODEL_CARD.md``. Writes are atomic: a temporary folder renamed into place.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from lensbias.errors import LensbiasError
from lensbias.models import adapter
from lensbias.models.tokenizer import BPETokenizer, HFTokenizer, TextTokenizer

FORMAT = "lensbias-model"
_RESERVED = ("format", "format_version", "architecture", "tokenizer", "transformer_lens_config")
"""config.json keys that describe the saved model itself: never taken from ``meta``."""


def save_folder(folder: Path, model: torch.nn.Module, tokenizer: TextTokenizer,
                meta: dict[str, Any], token_counts: np.ndarray | None = None,
                files: dict[str, str] | None = None, force: bool = False) -> Path:
    """Write a complete model folder atomically; an existing folder needs ``force``."""
    folder = check_new_folder(folder, force)
    with staged_folder(folder) as tmp:
        state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()
                 if not k.endswith(("attn.mask", "attn.IGNORE"))}
        save_file(state, tmp / "model.safetensors")
        if token_counts is not None:
            save_file({"counts": torch.as_tensor(np.asarray(token_counts), dtype=torch.int64)},
                      tmp / "token_counts.safetensors")
        kind = _save_tokenizer(tokenizer, tmp)
        config = {**{k: v for k, v in meta.items() if k not in _RESERVED},
                  "format": FORMAT, "format_version": 1,
                  "architecture": "encoder" if adapter.is_encoder(model) else "decoder",
                  "tokenizer": kind, "transformer_lens_config": adapter.config_dict(model)}
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        for name, text in (files or {}).items():
            (tmp / name).write_text(text)
    return folder


def check_new_folder(folder: Path, force: bool) -> Path:
    """``folder`` as a Path, refused in one line when it exists (without ``force``) or its
    parent does not."""
    folder = Path(folder)
    if folder.exists() and not force:
        raise LensbiasError(f"{folder} already exists; pass --force to overwrite it")
    if not folder.parent.is_dir():
        raise LensbiasError(f"output folder {folder.parent} does not exist")
    return folder


@contextlib.contextmanager
def staged_folder(folder: Path) -> Iterator[Path]:
    """A fresh sibling of ``folder`` to write into: moved into place (replacing ``folder``)
    when the block finishes, removed whatever happens, so ``folder`` is never half-written.
    An OSError becomes one ``LensbiasError`` line."""
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.tmp"))
    try:
        tmp.chmod(0o755)
        yield tmp
        _replace(tmp, folder)
    except OSError as err:
        raise LensbiasError(f"could not write {folder}: {err.strerror or err}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _save_tokenizer(tokenizer: TextTokenizer, folder: Path) -> str:
    if isinstance(tokenizer, BPETokenizer):
        tokenizer.save(folder / "tokenizer.json")
        return "bpe"
    if isinstance(tokenizer, HFTokenizer):
        tokenizer.hf.save_pretrained(folder)
        return "hf-prepend-bos" if tokenizer.prepend_bos else "hf"
    raise TypeError(f"cannot save a {type(tokenizer).__name__}")


def _replace(tmp: Path, folder: Path) -> None:
    if folder.exists():
        old = folder.with_name(f".{folder.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, folder)


def read_config(folder: Path) -> dict[str, Any]:
    path = Path(folder) / "config.json"
    if not path.exists():
        raise LensbiasError(f"{folder} holds no config.json: not a lensbias model folder")
    try:
        meta = json.loads(path.read_text())
        meta["transformer_lens_config"]
    except KeyError:
        raise LensbiasError(f"{path} has neither transformer_lens_config (a lensbias model "
                            "folder) nor model_type (a transformers checkpoint)") from None
    except (json.JSONDecodeError, TypeError) as err:
        raise LensbiasError(f"{path}: unreadable model config ({err})") from None
    return meta


def load_folder(folder: Path) -> tuple[torch.nn.Module, TextTokenizer, np.ndarray | None, dict]:
    """``(model, tokenizer, token_counts, config)`` from a folder, weights as stored."""
    meta = read_config(folder)
    try:
        state = load_file(folder / "model.safetensors")
    except (OSError, Exception) as err:  # safetensors raises its own error types
        raise LensbiasError(f"{folder}/model.safetensors is unreadable: {err}") from None
    kind = meta.get("tokenizer", "bpe")
    if kind == "bpe":
        tok: TextTokenizer = BPETokenizer.from_file(folder / "tokenizer.json")
        hf = tok.to_transformers()
    else:
        from transformers import AutoTokenizer

        hf = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        tok = HFTokenizer(hf, prepend_bos=kind == "hf-prepend-bos")
    build = adapter.build_encoder if meta.get("architecture") == "encoder" else adapter.build_decoder
    try:
        model = build(meta["transformer_lens_config"], state, tokenizer=hf)
    except (ValueError, TypeError) as err:
        raise LensbiasError(f"{folder}: weights do not fit the config ({err})") from None
    counts_path = folder / "token_counts.safetensors"
    try:
        counts = load_file(counts_path)["counts"].numpy() if counts_path.exists() else None
    except Exception as err:  # safetensors raises its own error types; a missing key
        raise LensbiasError(f"{counts_path} is unreadable: {err}".splitlines()[0]) from None
    return model, tok, counts, meta
