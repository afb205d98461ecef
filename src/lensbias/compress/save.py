"""Compress, stage 5: write a compressed model as a loadable folder with its recipe.

``recipe.json`` holds the method, its parameters, targets, calibration choice and its
data fingerprint, seed, lensbias version, the original's fingerprint and the measurements.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lensbias.compress.base import Compressed
from lensbias.errors import LensbiasError
from lensbias.models.folder import save_folder

RECIPE_FILE = "recipe.json"


def save_compressed(result: Compressed, out: str | Path, measured: dict[str, Any] | None = None,
                    force: bool = False) -> Path:
    """Save ``result`` to folder ``out`` (atomic); ``load_model(out)`` reads it back."""
    out = Path(out)
    recipe = {"recipe": result.recipe.to_dict(), **result.provenance,
              "measured": measured or {}}
    meta = {"name": out.name, "compressed_from": result.provenance["original"],
            "method": result.recipe.method, **_extra_meta(result)}
    return save_folder(out, result.lm.model, result.lm.tokenizer, meta, result.lm.token_counts,
                       {RECIPE_FILE: json.dumps(recipe, indent=2, default=str) + "\n"}, force=force)


def _extra_meta(result: Compressed) -> dict[str, Any]:
    """Method-specific notes a ModelMethod left on the model (dropped blocks, student shape)."""
    base = result.lm.meta or {}
    return {k: v for k, v in base.items() if k not in ("transformer_lens_config", "format",
                                                       "format_version", "architecture",
                                                       "tokenizer", "name", "MODEL_CARD.md")}


def read_recipe(folder: str | Path) -> dict[str, Any]:
    """The recipe of a compressed-model folder (LensbiasError if it has none)."""
    path = Path(folder) / RECIPE_FILE
    if not path.exists():
        raise LensbiasError(f"{folder} has no {RECIPE_FILE}: it was not made by `lensbias compress`")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise LensbiasError(f"{path} is not valid JSON ({err.msg} at line {err.lineno})") from None
    except UnicodeDecodeError:
        raise LensbiasError(f"{path} is not UTF-8 text") from None
    except ValueError as err:  # e.g. an integer longer than Python converts
        raise LensbiasError(f"{path} is not valid JSON ({str(err).splitlines()[0]})") from None
    except RecursionError:
        raise LensbiasError(f"{path}: JSON nested too deeply") from None
    except OSError as err:
        raise LensbiasError(f"cannot read {path}: {err.strerror or err}") from None
    if not isinstance(raw, dict):
        raise LensbiasError(f"{path} holds a JSON {type(raw).__name__}, not a JSON object: it "
                            "was not written by `lensbias compress`")
    return raw
