"""Survival, stage 1: a model pair on one concept dataset, cached side by side.

Resolves the pair (two names/folders, or one model and a compression recipe made on the
fly), merges the chosen concept datasets into one, and caches both models' activations
on identical tokens. Everything later (probes, SAEs, geometry, behaviour) reads these.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from pathlib import Path

from lensbias.compress import METHODS, CalibConfig, Recipe, compress
from lensbias.compress.base import Compressed
from lensbias.concepts.registry import list_datasets, load_dataset
from lensbias.concepts.schema import ConceptDataset
from lensbias.errors import LensbiasError
from lensbias.models import LoadedModel, list_models, load_model
from lensbias.store import ActivationStore, CacheConfig, cache_activations

LEVEL_PARAM = {"magnitude": "sparsity", "magnitude-global": "sparsity",
               "magnitude-neurons": "sparsity", "magnitude-heads": "sparsity",
               "wanda": "sparsity", "sparsegpt": "sparsity", "rtn": "bits", "gptq": "bits",
               "awq": "bits", "svd": "rank_ratio", "asvd": "rank_ratio",
               "svd-llm": "rank_ratio", "layer-drop": "n_drop", "distill": "n_layers"}
"""The parameter that ``--compress METHOD:LEVEL`` sets for each method."""


def parse_compress_spec(spec: str, calib: CalibConfig) -> Recipe:
    """``wanda:0.5``, ``gptq:4``, ``sparsegpt:2:4`` (N:M) → a Recipe."""
    method, _, level = spec.partition(":")
    if method not in METHODS:
        near = difflib.get_close_matches(method, list(METHODS), n=2)
        hint = f" (did you mean {' or '.join(near)}?)" if near else ""
        raise LensbiasError(f"unknown compression method {method!r}{hint}; choose from "
                            f"{', '.join(sorted(METHODS))}")
    if not level:
        return Recipe(method, {}, calib=calib)
    if level.count(":") == 1 and method in ("wanda", "sparsegpt"):
        return Recipe(method, {"nm": level}, calib=calib)
    try:
        value: float | int = float(level)
    except ValueError:
        raise LensbiasError(f"--compress {spec!r}: the level after ':' must be a number") from None
    key = LEVEL_PARAM.get(method, "sparsity")
    if key in ("bits", "n_drop", "n_layers"):
        value = int(value)
    return Recipe(method, {key: value}, calib=calib)


def resolve_model(spec: str, device: str = "cpu") -> LoadedModel:
    """load_model with a close-name suggestion on failure."""
    try:
        return load_model(spec, device=device)
    except LensbiasError as err:
        if "unknown model" not in str(err):
            raise
        names = [n for n, _ in list_models()]
        near = difflib.get_close_matches(spec, names, n=2, cutoff=0.5)
        hint = f"; did you mean {' or '.join(near)}?" if near else ""
        raise LensbiasError(f"{err}{hint}") from None


def check_same_tokenizer(a: LoadedModel, b: LoadedModel, probe_text: str) -> None:
    """Both models must cut text into the same tokens: probes compare token by token."""
    if a.tokenizer.encode(probe_text).ids != b.tokenizer.encode(probe_text).ids:
        raise LensbiasError(f"{a.name} and {b.name} use different tokenizers; lensbias compares "
                            "models token by token, so both must share one tokenizer")


def merged_dataset(specs: list[str], max_examples: int | None,
                   max_chars: int | None = None) -> ConceptDataset:
    """One dataset from several (e.g. prose + code), examples in order, ids prefixed.

    From each dataset at most ``max_examples`` examples and about ``max_chars`` characters
    (whole examples) are taken, so short sentences and long code chunks weigh alike.
    """
    if not specs:
        raise LensbiasError(f"no dataset given; built-in: {', '.join(n for n, _ in list_datasets())}")
    examples = []
    for spec in specs:
        data = load_dataset(spec, max_examples=max_examples)
        used = 0
        for e in data.examples:
            if max_chars is not None and used >= max_chars:
                break
            examples.append(dataclasses.replace(e, id=f"{spec}/{e.id}"))
            used += len(e.text)
    return ConceptDataset("+".join(specs), tuple(examples))


@dataclass
class CachedPair:
    """Two models and their activation caches on the same tokens."""

    a: LoadedModel
    b: LoadedModel
    dataset: ConceptDataset
    path_a: Path
    path_b: Path
    compressed: Compressed | None = None

    def stores(self) -> tuple[ActivationStore, ActivationStore]:
        return ActivationStore(self.path_a), ActivationStore(self.path_b)


def cache_pair(a: LoadedModel, b: LoadedModel, dataset: ConceptDataset, folder: Path,
               config: CacheConfig, progress: bool = False) -> tuple[Path, Path]:
    """Cache both models (reusing matching caches) into ``folder``/{a,b}.h5."""
    folder.mkdir(parents=True, exist_ok=True)
    path_a = cache_activations(a, dataset, folder / "a.h5", config, force=True, progress=progress)
    path_b = cache_activations(b, dataset, folder / "b.h5", config, force=True, progress=progress)
    return path_a, path_b


def compress_on_the_fly(a: LoadedModel, recipe: Recipe, folder: Path) -> Compressed:
    """Compress ``a`` by ``recipe`` (reused from ``folder`` when the same recipe made it)."""
    from lensbias.compress.save import read_recipe, save_compressed

    if (folder / "recipe.json").exists():
        saved = read_recipe(folder)
        if (saved.get("recipe") == recipe.to_dict()
                and saved.get("original_weights_sha256") == a.weights_hash()):
            lm = load_model(folder, device=str(next(a.model.parameters()).device))
            return Compressed(dataclasses.replace(lm, name=f"{a.name}+{recipe.method}"), recipe,
                              {k: v for k, v in saved.items() if k not in ("recipe", "measured")})
    result = compress(a, recipe)
    save_compressed(result, folder, force=True)
    return result
