"""Compress, stage 3: the method interface, the recipe that records a run, and the driver.

A ``MatrixMethod`` rewrites one ``[out, in]`` matrix at a time (optionally from its input
statistics); the driver walks blocks in order and feeds each block the activations of the
already-compressed blocks before it, as SparseGPT's, Wanda's and GPTQ's reference code do, or,
for a method with ``sequential = False`` (AWQ, as llm-awq), the full-precision model's. A
``ModelMethod`` sees the whole model (global or structured pruning, layer removal, distillation).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from lensbias import __version__
from lensbias.compress.calib import CalibConfig, InputStats, calibration_tokens, tokens_fingerprint
from lensbias.compress.linear import LinearView, Targets, linear_views
from lensbias.errors import LensbiasError
from lensbias.models import LoadedModel, adapter


class MatrixMethod:
    """One matrix at a time. Subclasses set ``name``, ``needs_inputs`` and ``compress``."""

    name: ClassVar[str] = ""
    needs_inputs: ClassVar[bool] = False
    """True when ``compress`` needs the input statistics (calibration data)."""
    needs_xtx: ClassVar[bool] = True
    """False when the statistics may skip XᵀX (the costly part), e.g. Wanda's column norms."""
    sequential: bool = True
    """True: each block is calibrated on the outputs of the already-compressed blocks before
    it (SparseGPT's, Wanda's, GPTQ's reference code). False: on the full-precision model's
    block outputs (llm-awq's ``run_awq`` computes the next inputs before touching a block)."""

    def compress(self, weight: Tensor, stats: Any) -> Tensor:  # stats: InputStats | None
        raise NotImplementedError

    def stored_bits(self, view: LinearView, weight: Tensor) -> float:
        """Bits needed to store the compressed matrix (default: 16 per nonzero weight)."""
        return 16.0 * float((weight != 0).sum())


class ModelMethod:
    """The whole model at once; returns the compressed model (shape may change)."""

    name: ClassVar[str] = ""
    needs_inputs: ClassVar[bool] = False

    def apply(self, lm: LoadedModel, views: list[LinearView], tokens: Tensor | None) -> LoadedModel:
        raise NotImplementedError


@dataclass(frozen=True)
class Recipe:
    """Everything that decides a compressed model: written beside its weights."""

    method: str
    """Registered method name (``lensbias compress --help`` lists them)."""
    params: dict[str, Any] = field(default_factory=dict)
    """The method's level and options, e.g. ``{"sparsity": 0.5}`` or ``{"bits": 4}``."""
    targets: Targets = Targets()
    """Which matrices are touched."""
    calib: CalibConfig = CalibConfig()
    """Calibration / distillation data (ignored by data-free methods)."""

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "params": dict(self.params),
                "targets": dataclasses.asdict(self.targets), "calib": dataclasses.asdict(self.calib)}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Recipe:
        """The inverse of ``to_dict`` (e.g. recipe.json's ``"recipe"``); a malformed one
        raises LensbiasError naming the field."""
        if not isinstance(raw, dict):
            raise LensbiasError(f"a recipe must be an object, got {type(raw).__name__}")
        method = raw.get("method")
        if not isinstance(method, str) or not method:
            raise LensbiasError(f"recipe field 'method' must be a method name, got {method!r:.60}")
        params = _section(raw, "params")
        targets = _section(raw, "targets", [f.name for f in dataclasses.fields(Targets)])
        calib = _section(raw, "calib", [f.name for f in dataclasses.fields(CalibConfig)])
        for key in ("attn", "mlp", "embed", "unembed"):
            if key in targets and not isinstance(targets[key], bool):
                raise LensbiasError(f"recipe field targets.{key} must be true or false")
        layers = targets.get("layers")
        if layers is not None:
            if not (isinstance(layers, (list, tuple)) and len(layers) == 2
                    and all(_is_int(x) for x in layers)):
                raise LensbiasError("recipe field targets.layers must be null or "
                                    "[first, last] block numbers")
            targets["layers"] = tuple(layers)
        if "domain" in calib and not isinstance(calib["domain"], str):
            raise LensbiasError("recipe field calib.domain must be a string")
        for key in ("n_seqs", "seq_len", "seed"):
            if key in calib and not (_is_int(calib[key]) and calib[key] >= 0):
                raise LensbiasError(f"recipe field calib.{key} must be a whole number >= 0")
        return cls(method, params, Targets(**targets), CalibConfig(**calib))


def _shown(name: str) -> str:
    """A key as it can appear in a one-line message."""
    return (name if name.isprintable() else repr(name))[:40]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _section(raw: dict[str, Any], key: str, known: list[str] | None = None) -> dict[str, Any]:
    """``raw[key]`` as a dict of string keys (``{}`` when absent), checked against ``known``."""
    value = raw.get(key, {})
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise LensbiasError(f"recipe field {key!r} must be an object, got {type(value).__name__}")
    unknown = sorted(_shown(k) for k in value if known is not None and k not in known)
    if unknown:
        raise LensbiasError(f"recipe field {key}.{unknown[0]} is unknown; "
                            f"{key} takes {', '.join(known or ())}")
    return dict(value)


@dataclass
class Compressed:
    """A compressed model with its recipe and provenance."""

    lm: LoadedModel
    recipe: Recipe
    provenance: dict[str, Any]
    """Original model name and weights hash, calibration fingerprint, lensbias version."""
    stored_bits: dict[str, float] = field(default_factory=dict)
    """Per-parameter storage estimate in bits, for matrices the method rewrote."""


METHODS: dict[str, type[MatrixMethod] | type[ModelMethod]] = {}


def register(cls: type) -> type:
    """Class decorator: make a method available by its ``name``."""
    METHODS[cls.name] = cls
    return cls


def make_method(name: str, params: dict[str, Any]) -> MatrixMethod | ModelMethod:
    if name not in METHODS:
        raise LensbiasError(f"unknown compression method {name!r}; choose from "
                            f"{', '.join(sorted(METHODS))}")
    accepted = method_params(name)
    extra = sorted(_shown(str(p)) for p in set(params) - set(accepted))
    if extra:
        raise LensbiasError(f"method {name} does not take {', '.join(extra)}; it takes "
                            f"{', '.join(accepted) or 'no options'}")
    try:
        return METHODS[name](**params)
    except (TypeError, ValueError, OverflowError) as err:  # e.g. sparsity "half" from a file
        raise LensbiasError(f"method {name}: an option has a value of the wrong kind "
                            f"({str(err).splitlines()[0] if str(err) else type(err).__name__})"
                            ) from None


def method_params(name: str) -> list[str]:
    """The options a registered method's constructor accepts."""
    import inspect

    sig = inspect.signature(METHODS[name].__init__)
    return [p for p in sig.parameters if p != "self"]


def compress(lm: LoadedModel, recipe: Recipe) -> Compressed:
    """Compress a copy of ``lm`` by ``recipe``; ``lm`` itself is not touched."""
    method = make_method(recipe.method, recipe.params)
    work = dataclasses.replace(lm, model=copy.deepcopy(lm.model), name=f"{lm.name}+{recipe.method}")
    views = recipe.targets.select(linear_views(work.model, encoder=lm.is_encoder))
    if not views:
        raise LensbiasError(f"targets {recipe.targets.label()} select no weight matrix")
    tokens = calibration_tokens(lm, recipe.calib) if method.needs_inputs else None
    provenance = {"original": lm.name, "original_weights_sha256": lm.weights_hash(),
                  "lensbias_version": __version__,
                  "calib_tokens_sha256": tokens_fingerprint(tokens) if tokens is not None else None,
                  "calib_tokens": list(tokens.shape) if tokens is not None else None}
    torch.manual_seed(recipe.calib.seed)
    bits: dict[str, float] = {}
    if isinstance(method, ModelMethod):
        work = method.apply(work, views, tokens)
    else:
        bits = _run_matrices(method, work, views, tokens)
    _check_finite(work)
    return Compressed(work, recipe, provenance, bits)


def _run_matrices(method: MatrixMethod, lm: LoadedModel, views: list[LinearView],
                  tokens: Tensor | None) -> dict[str, float]:
    """Compress block by block. With calibration data, each block's input is the output of
    the already-compressed blocks before it (kept in memory, one block run per layer), or of
    the full-precision blocks when ``method.sequential`` is False."""
    if method.needs_inputs and any(v.input_hook is None for v in views):
        raise LensbiasError(f"method {method.name} needs input activations; the embedding has "
                            "none: turn embeddings off")
    bits: dict[str, float] = {}
    model = lm.model
    resid = ([adapter.block_input(model, b) for b in tokens.split(_CALIB_BATCH)]
             if method.needs_inputs and tokens is not None else None)
    last = max((v.layer for v in views if v.layer is not None), default=-1)
    for view in [v for v in views if v.group == "embed"]:
        bits.update(_apply(method, model, [view], {}))
    for layer in range(last + 1):
        group = [v for v in views if v.layer == layer]
        stats = _block_stats(method, model, layer, resid, group)
        advance = bool(group) or layer < last
        if resid is not None and advance and not method.sequential:  # before compressing it
            resid = [adapter.run_block(model, layer, r)[0] for r in resid]
        bits.update(_apply(method, model, group, stats))
        if resid is not None and advance and method.sequential:
            resid = [adapter.run_block(model, layer, r)[0] for r in resid]
    unembed = [v for v in views if v.group == "unembed"]
    if unembed:
        stats = {}
        if resid is not None:
            for layer in range(last + 1, model.cfg.n_layers):
                resid = [adapter.run_block(model, layer, r)[0] for r in resid]
            # ln_final's whole output (weight and bias applied), as unembed[0].input_of gives
            stats = _accumulate({unembed[0].input_hook: [adapter.final_norm(model, r) for r in resid]},
                                method.needs_xtx)
        bits.update(_apply(method, model, unembed, stats))
    return bits


_CALIB_BATCH = 16


def _block_stats(method: MatrixMethod, model: torch.nn.Module, layer: int,
                 resid: list[Tensor] | None, group: list[LinearView]) -> dict[str, InputStats]:
    if resid is None or not group:
        return {}
    readers = {v.input_hook: v for v in group}  # views sharing a hook share its norm
    hooks = list(readers)
    stats: dict[str, InputStats] = {}
    for r in resid:
        _, got = adapter.run_block(model, layer, r, hooks)
        for h in hooks:
            x = readers[h].input_of(model, got[h])
            flat = x.reshape(-1, x[0, 0].numel())
            stats.setdefault(h, InputStats(flat.shape[1], method.needs_xtx)).update(flat, len(r))
    return stats


def _accumulate(acts: dict[str, list[Tensor]], with_xtx: bool) -> dict[str, InputStats]:
    stats: dict[str, InputStats] = {}
    for hook, parts in acts.items():
        for a in parts:
            flat = a.reshape(-1, a.shape[-1])
            stats.setdefault(hook, InputStats(flat.shape[1], with_xtx)).update(flat, len(a))
    return stats


def _apply(method: MatrixMethod, model: torch.nn.Module, group: list[LinearView],
           stats: dict[str, InputStats]) -> dict[str, float]:
    bits = {}
    for view in group:
        new = method.compress(view.read(model), stats.get(view.input_hook))
        view.write(model, new)
        bits[view.param] = method.stored_bits(view, new)
    return bits


def _check_finite(lm: LoadedModel) -> None:
    for name, p in lm.model.named_parameters():
        if not torch.isfinite(p).all():
            raise LensbiasError(f"compression produced NaN/Inf in {name}; the setting is too "
                                "aggressive for this model (nothing was saved)")
