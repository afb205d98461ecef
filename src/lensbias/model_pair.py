"""Survival, stage 1: a model pair on one concept dataset, cached side by side.

Resolves the pair (two names/folders, or one model and a compression recipe made on the
fly), merges the chosen concept datasets into one, and caches both models' activations
on identical tokens. Everything later (probes, SAEs, geometry, behaviour) reads these.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lensbias.compress import METHODS, CalibConfig, Recipe, compress
from lensbias.compress.base import Compressed, MatrixMethod, ModelMethod, make_method
from lensbias.compress.calib import check_domain
from lensbias.concepts.jsonl import USER_DOMAIN, with_domain
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


WHOLE_LEVELS = ("bits", "n_drop", "n_layers")
"""Levels that count things (bits, blocks): a whole number, never silently truncated."""


NM_METHODS = ("magnitude", "wanda", "sparsegpt")
"""Methods whose level may be an N:M pattern (``2:4``)."""


def parse_compress_spec(spec: str, calib: CalibConfig) -> Recipe:
    """``wanda:0.5``, ``gptq:4``, ``sparsegpt:2:4`` or ``magnitude:2:4`` (N:M) → a checked
    Recipe.

    No level (``wanda``) records the method's default level in the recipe. The recipe is
    checked (``check_recipe``: options and calibration domain) before anything is loaded.
    """
    method, _, level = spec.partition(":")
    if method not in METHODS:
        near = difflib.get_close_matches(method, list(METHODS), n=2)
        hint = f" (did you mean {' or '.join(near)}?)" if near else ""
        raise LensbiasError(f"unknown compression method {method!r}{hint}; choose from "
                            f"{', '.join(sorted(METHODS))}")
    if not level:
        recipe = Recipe(method, with_default_level(method, {}), calib=calib)
    elif level.count(":") == 1 and method in NM_METHODS:
        recipe = Recipe(method, {"nm": level}, calib=calib)
    else:
        recipe = Recipe(method, {LEVEL_PARAM.get(method, "sparsity"): _level(spec, method, level)},
                        calib=calib)
    check_recipe(recipe)
    return recipe


def _level(spec: str, method: str, level: str) -> float | int:
    try:
        value = float(level)
    except ValueError:
        raise LensbiasError(f"--compress {spec!r}: the level after ':' must be a number") from None
    key = LEVEL_PARAM.get(method, "sparsity")
    if key in WHOLE_LEVELS:
        if not math.isfinite(value) or value != int(value):
            raise LensbiasError(f"{key} must be a whole number, got {level}")
        return int(value)
    if not math.isfinite(value):
        raise LensbiasError(f"{key} must be a finite number, got {level}")
    return value


def with_default_level(method: str, params: dict[str, Any]) -> dict[str, Any]:
    """``params`` plus the method's default level (``LEVEL_PARAM``) when none is given, so
    the recipe states the level it ran at: ``wanda`` alone records ``sparsity: 0.5``.

    An N:M pattern is the level of magnitude/wanda/sparsegpt. A default of None (distill's
    ``n_layers``: half the teacher) is left out; the method records its choice itself.
    """
    key = LEVEL_PARAM.get(method)
    if method not in METHODS or key is None or key in params or "nm" in params:
        return dict(params)
    parameter = inspect.signature(METHODS[method].__init__).parameters.get(key)
    if parameter is None or parameter.default in (inspect.Parameter.empty, None):
        return dict(params)
    return {key: parameter.default, **params}


def check_recipe(recipe: Recipe) -> MatrixMethod | ModelMethod:
    """Everything about ``recipe`` that can be checked without a model, so a bad one is
    refused before models load or folders appear: the method and its options
    (``make_method``: ``wanda:1.5``, ``gptq:0``, ``sparsegpt:3:2``) and the calibration
    domain (a built-in name, ``corpus:NAME`` or an existing file; read for text when the
    method uses it)."""
    method = make_method(recipe.method, recipe.params)
    # unknown corpus:NAME, missing file (read when the method uses it: empty, non-UTF-8)
    check_domain(recipe.calib.domain, read=method.needs_inputs)
    return method


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


def load_concepts(spec: str, max_examples: int | None = None,
                  domain: str = USER_DOMAIN) -> ConceptDataset:
    """``load_dataset`` for people: a user file's examples without a ``domain`` label get
    ``domain``, and a dataset with no text is refused here, before any model is loaded."""
    data = load_dataset(spec, max_examples=max_examples)
    if spec.endswith((".jsonl", ".jsonl.gz")):
        data = with_domain(data, domain)
    if not any(e.text.strip() for e in data.examples):
        what = "no examples" if not data.examples else "only blank texts"
        raise LensbiasError(f"dataset {spec} has {what}; give it lines like "
                            '{"text": "..."}')
    return data


def merged_dataset(specs: list[str], max_examples: int | None,
                   max_chars: int | None = None, domain: str = USER_DOMAIN) -> ConceptDataset:
    """One dataset from several (e.g. prose + code), examples in order, ids prefixed.

    From each dataset at most ``max_examples`` examples and about ``max_chars`` characters
    (whole examples) are taken, so short sentences and long code chunks weigh alike. User
    files' examples without a ``domain`` label get ``domain`` (``load_concepts``).
    """
    if not specs:
        raise LensbiasError(f"no dataset given; built-in: {', '.join(n for n, _ in list_datasets())}")
    examples = []
    for spec in specs:
        data = load_concepts(spec, max_examples, domain)
        used = 0
        for e in data.examples:
            if max_chars is not None and used >= max_chars:
                break
            examples.append(dataclasses.replace(e, id=f"{spec}/{e.id}"))
            used += len(e.text)
    return ConceptDataset("+".join(specs), tuple(examples))


def check_writable(folder: Path, what: str = "output folder") -> None:
    """``folder`` exists and a file can be made in it (tried, then removed): a bad output
    place is refused before minutes of work, in one line."""
    if not folder.is_dir():
        raise LensbiasError(f"{what} {folder} does not exist")
    try:
        handle, probe = tempfile.mkstemp(dir=folder, prefix=".lensbias-probe-")
        os.close(handle)
        os.unlink(probe)
    except OSError as err:
        raise LensbiasError(f"cannot write in {folder}: {err.strerror or err}") from None


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
    """Compress ``a`` by ``recipe`` (reused from ``folder`` when the same recipe made it);
    the folder's recipe.json records the recipe and the measured sparsity and sizes."""
    from lensbias.compress.measure import measure
    from lensbias.compress.save import read_recipe, save_compressed

    if (folder / "recipe.json").exists():
        saved = read_recipe(folder)
        if (saved.get("recipe") == recipe.to_dict()
                and saved.get("original_weights_sha256") == a.weights_hash()):
            lm = load_model(folder, device=str(next(a.model.parameters()).device))
            return Compressed(dataclasses.replace(lm, name=f"{a.name}+{recipe.method}"), recipe,
                              {k: v for k, v in saved.items() if k not in ("recipe", "measured")})
    result = compress(a, recipe)
    # recipe.json states what was done: the level (defaults resolved) and what it achieved
    save_compressed(result, folder, measure(a, result, with_bpb=False), force=True)
    return result
