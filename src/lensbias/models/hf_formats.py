"""Models: a Hugging Face checkpoint folder, dense or compressed, as dense float32 weights.

``read_state_dict(folder)`` returns the state dict that ``AutoModelForCausalLM.from_config``
of the folder's ``config.json`` expects (transformers' key names, tied weights present as
transformers ties them), all floating tensors in float32, on CPU, plus the folder's
quantization / sparsity config (``None`` for a dense folder) for the provenance. Where
``architectures[0]`` names another transformers class for the same config (``BertModel``,
``BertForMaskedLM``), the keys are that class's.

Formats read (docs/models.md, "Compressed checkpoints", says what each was checked against):

- dense: ``model.safetensors``, sharded safetensors with ``model.safetensors.index.json``,
  ``pytorch_model.bin`` (and its index), read with ``torch.load(weights_only=True)``;
- compressed-tensors (llmcompressor): decompressed by the compressed-tensors library's own
  compressors (``pack-quantized``, ``int-quantized``, ``naive-quantized``, ``dense``), weight-only
  schemes; dense-saved sparse models; ``sparse-24-bitmask`` is refused (see below);
- GPTQ (AutoGPTQ / GPTQModel ``gptq`` and ``gptq_v2`` checkpoints), 2, 3, 4 and 8 bits,
  any group size, act-order ``g_idx``;
- AWQ (AutoAWQ ``gemm``), 4 bits;
- bitsandbytes 4-bit (nf4 / fp4, with or without double quantization) and 8-bit (LLM.int8),
  dequantized by bitsandbytes itself on CPU.

Every tensor must be used and every weight the model needs must be present with its shape:
otherwise a ``LensbiasError`` names the tensor. The final key matching (renames, base-model
prefix, tied weights, keys transformers ignores on load) is transformers' own: the dense
tensors are passed to ``from_pretrained(None, config=..., state_dict=...)`` and its loading
report must be empty.
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path
from typing import Any, Iterator

import torch
from jaxtyping import Float, Int
from torch import Tensor

from lensbias.errors import LensbiasError

HF_EXTRA = 'pip install "lensbias[hf]"'
METHODS = ("compressed-tensors", "gptq", "awq", "bitsandbytes")
"""``quantization_config.quant_method`` values this module reads."""
GPTQ_BITS = (2, 3, 4, 8)
AWQ_BITS = (4,)
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
"""AutoAWQ GEMM: nibble ``i`` of each int32 holds column ``AWQ_ORDER[i]`` of its 8."""
_SHOWN = 4
"""How many key names an error message lists before '…'."""


# --------------------------------------------------------------------------- entry point


def read_state_dict(folder: Path) -> tuple[dict[str, Tensor], dict | None]:
    """Dense float32 weights of the HF checkpoint in ``folder`` and its quantization config."""
    folder = Path(folder)
    raw_config = _read_config(folder)
    qconfig = _quantization_config(folder, raw_config)
    tensors = _read_tensors(folder)
    config = _hf_config(folder, raw_config)
    model_cls = _model_class(folder, config)
    method = None if qconfig is None else str(qconfig.get("quant_method", "")).lower()
    if qconfig is not None and method not in METHODS:
        raise LensbiasError(
            f"{folder}: quantization_config.quant_method is {qconfig.get('quant_method')!r}; "
            f"lensbias reads {', '.join(METHODS)} checkpoints (or dense ones)")
    if method == "compressed-tensors":
        tensors = _decompress_compressed_tensors(folder, tensors, qconfig, config, model_cls)
    elif method == "gptq":
        tensors = _dequantize_gptq(folder, tensors, qconfig, config, model_cls)
    elif method == "awq":
        tensors = _dequantize_awq(folder, tensors, qconfig, config, model_cls)
    elif method == "bitsandbytes":
        tensors = _dequantize_bitsandbytes(folder, tensors, qconfig, _meta_model(config, model_cls))
    tensors = {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}
    return _load_as_transformers(folder, tensors, config, model_cls), qconfig


# --------------------------------------------------------------------------- files


def _read_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    if not folder.is_dir():
        raise LensbiasError(f"{folder} is not a folder")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LensbiasError(f"{folder} has no config.json: not a Hugging Face model folder") from None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as err:
        raise LensbiasError(f"{path} is not readable JSON ({type(err).__name__}: "
                            f"{_one_line(err)})") from None
    if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
        raise LensbiasError(f"{path} has no model_type: not a Hugging Face model config")
    return config


def _quantization_config(folder: Path, config: dict[str, Any]) -> dict | None:
    """``quantization_config`` (or compressed-tensors' older ``compression_config``, or
    AutoGPTQ's separate ``quantize_config.json``), else None."""
    qc = config.get("quantization_config")
    if qc is None:
        qc = config.get("compression_config")
        if qc is not None:
            qc = {"quant_method": "compressed-tensors", **qc}
    if qc is None and (folder / "quantize_config.json").is_file():
        try:
            qc = json.loads((folder / "quantize_config.json").read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError, RecursionError) as err:
            raise LensbiasError(f"{folder / 'quantize_config.json'} is not readable JSON "
                                f"({_one_line(err)})") from None
        if isinstance(qc, dict):
            qc = {"quant_method": "gptq", **qc}
    if qc is None:
        return None
    if not isinstance(qc, dict):
        raise LensbiasError(f"{folder}: quantization_config is a {type(qc).__name__}, not an object")
    return qc


def _read_tensors(folder: Path) -> dict[str, Tensor]:
    """Every tensor of the checkpoint, keyed as saved."""
    for index_name, single in (("model.safetensors.index.json", "model.safetensors"),
                               ("pytorch_model.bin.index.json", "pytorch_model.bin")):
        index = folder / index_name
        if index.is_file():
            return _read_shards(folder, index)
        if (folder / single).is_file():
            return _read_file(folder / single)
    others = sorted(folder.glob("*.safetensors"))
    if len(others) == 1:  # AutoGPTQ's own name: gptq_model-4bit-128g.safetensors
        return _read_file(others[0])
    raise LensbiasError(
        f"{folder} holds no weights: expected model.safetensors, model.safetensors.index.json "
        f"or pytorch_model.bin" + (f" (found {len(others)} other .safetensors files)" if others else ""))


def _read_shards(folder: Path, index: Path) -> dict[str, Tensor]:
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        shards = sorted(set(weight_map.values()))
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError,
            RecursionError) as err:
        raise LensbiasError(f"{index} is not a readable shard index ({_one_line(err)})") from None
    tensors: dict[str, Tensor] = {}
    for shard in shards:
        path = folder / str(shard)
        if not path.is_file():
            raise LensbiasError(f"{index} names shard {shard}, which is missing")
        part = _read_file(path)
        twice = sorted(set(part) & set(tensors))
        if twice:
            raise LensbiasError(f"{path}: tensor {_names(twice)} is also in another shard")
        tensors.update(part)
    return tensors


def _read_file(path: Path) -> dict[str, Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            return load_file(path, device="cpu")
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # safetensors, unpickler and zip errors have no common base
        raise LensbiasError(f"{path} is unreadable ({type(err).__name__}: {_one_line(err)})") from None
    if not isinstance(loaded, dict) or not all(isinstance(v, Tensor) for v in loaded.values()):
        raise LensbiasError(f"{path} does not hold a state dict of tensors")
    return loaded


# --------------------------------------------------------------------------- transformers


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' load report and progress bars; errors are raised by us."""
    from transformers.utils import logging as hf_logging
    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _hf_config(folder: Path, raw: dict[str, Any]) -> Any:
    """The transformers config of ``folder`` without its quantization config."""
    from transformers import AutoConfig
    try:
        with _quiet_transformers():
            config = AutoConfig.from_pretrained(folder, trust_remote_code=False,
                                                local_files_only=True)
    except Exception as err:  # transformers raises ValueError, KeyError, OSError, ...
        raise LensbiasError(f"{folder}/config.json: transformers cannot read it "
                            f"(model_type {raw['model_type']!r}: {_one_line(err)})") from None
    for attr in ("quantization_config", "compression_config"):
        if hasattr(config, attr):
            delattr(config, attr)
    return config


def _model_class(folder: Path, config: Any) -> type:
    """The checkpoint's own class (``architectures[0]``) where transformers has it for this
    config, e.g. ``BertModel``; else ``AutoModelForCausalLM``'s class for the config. For a
    causal LM the two are the same class."""
    import transformers
    from transformers import AutoModelForCausalLM
    for name in (getattr(config, "architectures", None) or [])[:1]:
        cls = getattr(transformers, str(name), None)
        if isinstance(cls, type) and getattr(cls, "config_class", None) is type(config):
            return cls
    try:
        return AutoModelForCausalLM._model_mapping[type(config)]
    except KeyError:
        raise LensbiasError(f"{folder}: transformers has no causal-LM class for model_type "
                            f"{config.model_type!r}") from None


def _meta_model(config: Any, model_cls: type) -> torch.nn.Module:
    """The model's module tree on the meta device (no memory), to read names and classes."""
    with _quiet_transformers(), torch.device("meta"):
        return model_cls(config)


def _load_as_transformers(folder: Path, tensors: dict[str, Tensor], config: Any,
                          model_cls: type) -> dict[str, Tensor]:
    """Load ``tensors`` the way transformers loads a checkpoint; refuse any loading-report line."""
    try:
        with _quiet_transformers():
            model, info = model_cls.from_pretrained(
                None, config=config, state_dict=tensors, dtype=torch.float32,
                output_loading_info=True, ignore_mismatched_sizes=True)
    except Exception as err:  # a conversion transformers cannot apply to these tensors
        raise LensbiasError(f"{folder}: transformers could not load the weights "
                            f"({type(err).__name__}: {_one_line(err)})") from None
    mismatched = sorted(info.get("mismatched_keys") or [])
    if mismatched:
        key, *shapes = mismatched[0] if isinstance(mismatched[0], tuple) else (mismatched[0],)
        got = f" has shape {tuple(shapes[0])} but the model needs {tuple(shapes[1])}" \
            if len(shapes) == 2 else " has the wrong shape"
        raise LensbiasError(f"{folder}: tensor {key}{got} ({len(mismatched)} tensor(s) "
                            f"mismatched); the checkpoint does not fit its config.json")
    unexpected = sorted(info.get("unexpected_keys") or [])
    if unexpected:
        raise LensbiasError(
            f"{folder}: {len(unexpected)} tensor(s) are not used by {model_cls.__name__} "
            f"({_names(unexpected)}); lensbias does not drop weights it cannot place")
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        raise LensbiasError(
            f"{folder}: {len(missing)} weight(s) of {model_cls.__name__} are not in the "
            f"checkpoint ({_names(missing)}); lensbias does not fill them with random values")
    errors = info.get("error_msgs") or []
    if errors:
        raise LensbiasError(f"{folder}: transformers reported {_one_line(errors[0])}")
    return {k: v.detach() for k, v in model.state_dict().items()}


# --------------------------------------------------------------------------- compressed-tensors


def _decompress_compressed_tensors(folder: Path, tensors: dict[str, Tensor], qc: dict,
                                   config: Any, model_cls: type) -> dict[str, Tensor]:
    """Decompress with compressed-tensors' own per-module compressors (model-free, CPU)."""
    try:
        import compressed_tensors
        from compressed_tensors.compressors import BaseCompressor
        from compressed_tensors.quantization import (QuantizationConfig, QuantizationMetadata,
                                                     apply_quantization_config)
    except ImportError:
        raise LensbiasError(f"{folder} is a compressed-tensors checkpoint; reading it needs the "
                            f"compressed-tensors library: {HF_EXTRA}") from None
    version = compressed_tensors.__version__
    sparsity = qc.get("sparsity_config") or {}
    sparse_format = sparsity.get("format") if isinstance(sparsity, dict) else None
    if sparse_format not in (None, "dense"):
        raise LensbiasError(
            f"{folder}: sparsity format {sparse_format!r} cannot be decompressed by "
            f"compressed-tensors {version} (its sparse compressors were removed in 0.15); "
            f"save the model with a dense sparsity format (llmcompressor: "
            f"save_pretrained(..., save_compressed=False))")
    if qc.get("transform_config"):
        raise LensbiasError(f"{folder}: the checkpoint has a compressed-tensors transform_config "
                            f"(online rotations); dense weights alone cannot express it")
    if not qc.get("config_groups"):
        return dict(tensors)  # dense-saved sparse weights: nothing to decompress
    try:
        qconfig = QuantizationConfig.model_validate(qc)
    except Exception as err:  # pydantic.ValidationError
        raise LensbiasError(f"{folder}: quantization_config is not a compressed-tensors config "
                            f"({_one_line(err)})") from None
    if qconfig.kv_cache_scheme is not None:
        raise LensbiasError(f"{folder}: the checkpoint quantizes the KV cache; lensbias reads "
                            f"weight-only quantization (e.g. W4A16, W8A16)")
    for name, scheme in qconfig.config_groups.items():
        if scheme.input_activations is not None or scheme.output_activations is not None:
            raise LensbiasError(
                f"{folder}: config group {name} also quantizes activations; dense weights cannot "
                f"express that, lensbias reads weight-only quantization (e.g. W4A16, W8A16)")
    model = _meta_model(config, model_cls)
    apply_quantization_config(model, qconfig, show_progress=False)
    modules = dict(model.named_modules())
    schemes = {name: module.quantization_scheme for name, module in modules.items()
               if getattr(module, "quantization_scheme", None) is not None}
    qparams = set(QuantizationMetadata.all_qparam_names()) | {"weight_packed", "weight_g_idx"}
    holders = sorted({key.rpartition(".")[0] for key in tensors
                      if key.rpartition(".")[2] in qparams})
    strays = [m for m in holders if m not in schemes]
    if strays:
        raise LensbiasError(f"{folder}: module {_names(strays)} holds quantization parameters but "
                            f"no config group of quantization_config targets it")
    out = dict(tensors)
    for module_name, scheme in schemes.items():
        fmt = scheme.format or qconfig.format
        if fmt in (None, "mixed-precision"):
            raise LensbiasError(f"{folder}: no compression format is recorded for {module_name}")
        try:
            compressor = BaseCompressor.get_value_from_registry(fmt)
        except Exception:
            raise LensbiasError(f"{folder}: compression format {fmt!r} (module {module_name}) "
                                f"is not one compressed-tensors {version} can decompress") from None
        names = compressor.compression_param_names(scheme)
        if names[0] == "weight" and f"{module_name}.weight_packed" in out:
            raise LensbiasError(f"{folder}: {module_name} holds packed weights but its format "
                                f"is {fmt!r}; the config does not match the tensors")
        absent = [f"{module_name}.{p}" for p in names if f"{module_name}.{p}" not in out]
        if absent:
            raise LensbiasError(f"{folder}: {absent[0]} is missing; compressed-tensors format "
                                f"{fmt!r} needs {', '.join(names)} for every targeted module")
        local = {p: out.pop(f"{module_name}.{p}") for p in names}
        # the library broadcasts a wrongly shaped scale silently: hold each qparam to the
        # shape compressed-tensors itself initialises for this scheme and layer
        checked = ("weight_scale",) if fmt == "pack-quantized" else \
            ("weight_scale", "weight_zero_point")
        for p in checked:
            want = getattr(modules[module_name], p, None)
            if p in local and want is not None and tuple(local[p].shape) != tuple(want.shape):
                raise LensbiasError(
                    f"{folder}: {module_name}.{p} has shape {tuple(local[p].shape)} but its "
                    f"scheme ({scheme.weights.strategy} quantization) needs {tuple(want.shape)}")
        if fmt == "dense":  # stored already dequantized; its qparams are metadata
            for p in ("weight_scale", "weight_zero_point", "weight_global_scale"):
                out.pop(f"{module_name}.{p}", None)
        try:
            weight = compressor.decompress(local, scheme)["weight"]
        except Exception as err:  # shape errors inside the library
            raise LensbiasError(f"{folder}: compressed-tensors could not decompress "
                                f"{module_name} ({type(err).__name__}: {_one_line(err)})") from None
        out[f"{module_name}.weight"] = weight
        if f"{module_name}.weight_g_idx" in out:
            raise LensbiasError(
                f"{folder}: {module_name}.weight_g_idx (activation-order groups) is not "
                f"supported by compressed-tensors {version}; lensbias will not ignore it")
        zp = out.get(f"{module_name}.weight_zero_point")
        if zp is not None and scheme.weights is not None and scheme.weights.symmetric \
                and not torch.any(zp):
            del out[f"{module_name}.weight_zero_point"]  # older writers kept an all-zero one
    return out


# --------------------------------------------------------------------------- GPTQ and AWQ


def unpack_bitstream(packed: Int[Tensor, "words cols"], bits: int,
                     n: int) -> Int[Tensor, "n cols"]:
    """Unpack ``n`` unsigned ``bits``-bit values per column from int32 words along dim 0.

    Value ``i`` starts at bit ``i * bits`` of the little-endian stream of 32-bit words (this
    is AutoGPTQ's packing for 2, 4 and 8 bits and its 3-bit packing, which splits values
    across word boundaries)."""
    words = packed.to(torch.int64) & 0xFFFFFFFF
    start = torch.arange(n, dtype=torch.int64) * bits
    word, offset = start // 32, (start % 32)[:, None]
    value = words[word] >> offset
    spill = (offset + bits > 32).squeeze(1) & (word + 1 < words.shape[0])
    if bool(spill.any()):
        high = torch.zeros_like(value)
        high[spill] = words[word[spill] + 1] << (32 - offset[spill])
        value = value | high
    return value & ((1 << bits) - 1)


def _gptq_layout(folder: Path, qc: dict) -> tuple[int, int, bool]:
    bits = qc.get("bits")
    if bits not in GPTQ_BITS:
        raise LensbiasError(f"{folder}: GPTQ bits {bits!r} are not supported; lensbias reads "
                            f"{', '.join(map(str, GPTQ_BITS))}-bit GPTQ checkpoints")
    group_size = qc.get("group_size", 128)
    if not isinstance(group_size, int) or isinstance(group_size, bool) or \
            not (group_size == -1 or group_size > 0):
        raise LensbiasError(f"{folder}: GPTQ group_size {group_size!r} is not -1 or positive")
    fmt = str(qc.get("checkpoint_format") or qc.get("format") or "gptq").lower()
    if qc.get("is_marlin_format") or fmt not in ("gptq", "gptq_v2"):
        raise LensbiasError(f"{folder}: GPTQ checkpoint_format {fmt!r} is not supported; "
                            f"lensbias reads 'gptq' (v1) and 'gptq_v2' checkpoints")
    return bits, group_size, fmt == "gptq"


def _dequantize_gptq(folder: Path, tensors: dict[str, Tensor], qc: dict, config: Any,
                     model_cls: type) -> dict[str, Tensor]:
    bits, group_size, plus_one = _gptq_layout(folder, qc)
    out = dict(tensors)
    model = None
    for module_name in _quantized_modules(out):
        qweight, qzeros, scales = _take(folder, out, module_name, ("qweight", "qzeros", "scales"))
        g_idx = out.pop(f"{module_name}.g_idx", None)
        if g_idx is None and qc.get("desc_act"):
            raise LensbiasError(f"{folder}: {module_name}.g_idx is missing; desc_act (act-order) "
                                f"checkpoints need it to place each input in its group")
        try:
            weight = gptq_dequantize(qweight, qzeros, scales, g_idx, bits, group_size, plus_one)
        except ValueError as err:
            raise LensbiasError(f"{folder}: {module_name}: {err}") from None
        out[f"{module_name}.weight"] = weight
        if model is None:
            model = _meta_model(config, model_cls)
        _finish_layer(out, module_name, model)
    return out


def gptq_dequantize(qweight: Int[Tensor, "packed_in out"], qzeros: Int[Tensor, "groups packed_out"],
                    scales: Float[Tensor, "groups out"], g_idx: Int[Tensor, " d_in"] | None,
                    bits: int, group_size: int, plus_one: bool) -> Float[Tensor, "out d_in"]:
    """``W[o, i] = scales[g, o] * (q[i, o] - z[g, o])`` with ``g = g_idx[i]``.

    ``qweight`` packs ``q`` along in_features, ``qzeros`` packs ``z`` along out_features; v1
    checkpoints store ``z - 1`` (``plus_one``). Raises ValueError on inconsistent shapes."""
    if qweight.dtype != torch.int32 or qzeros.dtype != torch.int32:
        raise ValueError(f"qweight and qzeros must be int32, got {qweight.dtype} and {qzeros.dtype}")
    if qweight.ndim != 2 or qzeros.ndim != 2 or scales.ndim != 2:
        raise ValueError("qweight, qzeros and scales must be 2-D")
    if (qweight.shape[0] * 32) % bits:
        raise ValueError(f"qweight has {qweight.shape[0]} rows, not a whole number of "
                         f"{bits}-bit values")
    d_in, d_out = qweight.shape[0] * 32 // bits, qweight.shape[1]
    n_groups = scales.shape[0]
    if scales.shape[1] != d_out:
        raise ValueError(f"scales has shape {tuple(scales.shape)}, qweight has {d_out} outputs")
    if qzeros.shape[0] != n_groups or qzeros.shape[1] != math.ceil(d_out * bits / 32):
        raise ValueError(f"qzeros has shape {tuple(qzeros.shape)}; expected "
                         f"({n_groups}, {math.ceil(d_out * bits / 32)})")
    if g_idx is None:
        g_idx = torch.zeros(d_in, dtype=torch.int64) if group_size == -1 \
            else torch.arange(d_in) // group_size
    elif g_idx.shape != (d_in,):
        raise ValueError(f"g_idx has shape {tuple(g_idx.shape)}, expected ({d_in},)")
    g_idx = g_idx.to(torch.int64)
    if d_in and (int(g_idx.min()) < 0 or int(g_idx.max()) >= n_groups):
        raise ValueError(f"g_idx points outside the {n_groups} groups of scales")
    q = unpack_bitstream(qweight, bits, d_in)                                  # [in, out]
    z = unpack_bitstream(qzeros.T.contiguous(), bits, d_out).T + int(plus_one)  # [groups, out]
    s = scales.float()
    return (s[g_idx] * (q - z[g_idx]).float()).T.contiguous()


def awq_dequantize(qweight: Int[Tensor, "d_in packed_out"], qzeros: Int[Tensor, "groups packed_out"],
                   scales: Float[Tensor, "groups out"], group_size: int) -> Float[Tensor, "out d_in"]:
    """AutoAWQ GEMM: ``W[o, i] = scales[i // g, o] * (q[i, o] - z[i // g, o])``, 4 bits,
    ``q`` and ``z`` packed along out_features in the order ``AWQ_ORDER``."""
    if qweight.dtype != torch.int32 or qzeros.dtype != torch.int32:
        raise ValueError(f"qweight and qzeros must be int32, got {qweight.dtype} and {qzeros.dtype}")
    if qweight.ndim != 2 or qzeros.ndim != 2 or scales.ndim != 2:
        raise ValueError("qweight, qzeros and scales must be 2-D")
    d_in, d_out = qweight.shape[0], qweight.shape[1] * 8
    g = d_in if group_size == -1 else group_size
    if scales.shape != (math.ceil(d_in / g), d_out):
        raise ValueError(f"scales has shape {tuple(scales.shape)}; expected "
                         f"({math.ceil(d_in / g)}, {d_out})")
    if qzeros.shape != (scales.shape[0], qweight.shape[1]):
        raise ValueError(f"qzeros has shape {tuple(qzeros.shape)}; expected "
                         f"({scales.shape[0]}, {qweight.shape[1]})")

    def unpack(packed: Int[Tensor, "rows words"]) -> Int[Tensor, "rows cols"]:
        shifts = torch.arange(0, 32, 4, dtype=torch.int64)
        nibbles = ((packed.to(torch.int64)[:, :, None] & 0xFFFFFFFF) >> shifts) & 0xF
        cols = torch.empty_like(nibbles)
        cols[:, :, list(AWQ_ORDER)] = nibbles  # nibble i -> column AWQ_ORDER[i]
        return cols.reshape(packed.shape[0], -1)

    group = torch.arange(d_in) // g
    q, z = unpack(qweight), unpack(qzeros)
    return (scales.float()[group] * (q - z[group]).float()).T.contiguous()


def _dequantize_awq(folder: Path, tensors: dict[str, Tensor], qc: dict, config: Any,
                    model_cls: type) -> dict[str, Tensor]:
    bits, version = qc.get("bits", qc.get("w_bit")), str(qc.get("version", "gemm")).lower()
    group_size = qc.get("group_size", qc.get("q_group_size", 128))
    if bits not in AWQ_BITS:
        raise LensbiasError(f"{folder}: AWQ bits {bits!r} are not supported; lensbias reads "
                            f"4-bit AWQ (AutoAWQ GEMM) checkpoints")
    if version != "gemm":
        raise LensbiasError(f"{folder}: AWQ version {version!r} is not supported; lensbias reads "
                            f"AutoAWQ's 'gemm' layout")
    if qc.get("zero_point") is False:
        raise LensbiasError(f"{folder}: AWQ zero_point false is not a layout AutoAWQ GEMM writes; "
                            f"lensbias reads zero-point AWQ checkpoints")
    if not isinstance(group_size, int) or isinstance(group_size, bool) or \
            not (group_size == -1 or group_size > 0):
        raise LensbiasError(f"{folder}: AWQ group_size {group_size!r} is not -1 or positive")
    out = dict(tensors)
    model = None
    for module_name in _quantized_modules(out):
        qweight, qzeros, scales = _take(folder, out, module_name, ("qweight", "qzeros", "scales"))
        try:
            out[f"{module_name}.weight"] = awq_dequantize(qweight, qzeros, scales, group_size)
        except ValueError as err:
            raise LensbiasError(f"{folder}: {module_name}: {err}") from None
        if model is None:
            model = _meta_model(config, model_cls)
        _finish_layer(out, module_name, model)
    return out


def _quantized_modules(tensors: dict[str, Tensor]) -> list[str]:
    return sorted(k[: -len(".qweight")] for k in tensors if k.endswith(".qweight"))


def _take(folder: Path, tensors: dict[str, Tensor], module_name: str,
          names: tuple[str, ...]) -> list[Tensor]:
    absent = [f"{module_name}.{n}" for n in names if f"{module_name}.{n}" not in tensors]
    if absent:
        raise LensbiasError(f"{folder}: {absent[0]} is missing (a quantized module needs "
                            f"{', '.join(names)})")
    return [tensors.pop(f"{module_name}.{n}") for n in names]


def _model_module(model: torch.nn.Module, module_name: str) -> torch.nn.Module | None:
    """The layer of ``model`` a checkpoint module name refers to (with or without the
    base-model prefix), or None."""
    modules = dict(model.named_modules())
    prefix = getattr(model, "base_model_prefix", "")
    for name in (module_name, f"{prefix}.{module_name}", module_name.removeprefix(f"{prefix}.")):
        if name in modules:
            return modules[name]
    return None


def _finish_layer(tensors: dict[str, Tensor], module_name: str, model: torch.nn.Module) -> None:
    """Fit a dequantized ``[out, in]`` weight to the model's layer.

    GPT-2's ``Conv1D`` stores its weight as ``[in, out]``; GPTQ, AWQ and bitsandbytes
    quantize its transpose, so it is transposed back (a square layer would otherwise load
    transposed without any shape error). AutoGPTQ / AutoAWQ layers keep a ``bias`` buffer
    even where the original layer had none: it is dropped only when it is all zeros and the
    model's layer has no bias."""
    from transformers.pytorch_utils import Conv1D
    layer = _model_module(model, module_name)
    key = f"{module_name}.weight"
    if isinstance(layer, Conv1D) and key in tensors:
        tensors[key] = tensors[key].T.contiguous()
    bias = tensors.get(f"{module_name}.bias")
    if bias is not None and not torch.any(bias) and \
            isinstance(layer, (torch.nn.Linear, Conv1D)) and layer.bias is None:
        del tensors[f"{module_name}.bias"]


# --------------------------------------------------------------------------- bitsandbytes


_BNB_4BIT_PARTS = ("absmax", "quant_map", "nested_absmax", "nested_quant_map")


def _dequantize_bitsandbytes(folder: Path, tensors: dict[str, Tensor], qc: dict,
                             model: torch.nn.Module) -> dict[str, Tensor]:
    """Dequantize with bitsandbytes' own CPU functions (``dequantize_4bit``,
    ``int8_vectorwise_dequant``)."""
    four = bool(qc.get("load_in_4bit") or qc.get("_load_in_4bit"))
    eight = bool(qc.get("load_in_8bit") or qc.get("_load_in_8bit"))
    if four == eight:
        raise LensbiasError(f"{folder}: the bitsandbytes config sets neither or both of "
                            f"load_in_4bit and load_in_8bit")
    try:
        import bitsandbytes.functional as bnb_f
        from bitsandbytes.functional import QuantState
    except ImportError:
        raise LensbiasError(f"{folder} is a bitsandbytes checkpoint; reading it needs the "
                            f"bitsandbytes library: {HF_EXTRA}") from None
    out = dict(tensors)
    if four:
        marker = ".quant_state.bitsandbytes__"
        for key in sorted(k for k in tensors if marker in k):
            weight_key = key.split(marker)[0]
            if weight_key not in out:
                raise LensbiasError(f"{folder}: {key} has no packed weight {weight_key}")
            stats = {key[len(weight_key) + 1:]: out.pop(key)}
            for part in _BNB_4BIT_PARTS:
                if f"{weight_key}.{part}" in out:
                    stats[part] = out.pop(f"{weight_key}.{part}")
            packed = out.pop(weight_key)
            try:
                state = QuantState.from_dict(stats, device=torch.device("cpu"))
                out[weight_key] = bnb_f.dequantize_4bit(packed, state).float()
            except Exception as err:  # bitsandbytes raises ValueError, RuntimeError, ...
                raise LensbiasError(f"{folder}: bitsandbytes could not dequantize {weight_key} "
                                    f"({type(err).__name__}: {_one_line(err)}); bitsandbytes' "
                                    f"CPU dequantization is needed") from None
            if weight_key.endswith(".weight"):
                _finish_layer(out, weight_key[: -len(".weight")], model)
    else:
        for key in sorted(k for k in tensors if k.endswith(".SCB")):
            module_name = key[: -len(".SCB")]
            weight = out.get(f"{module_name}.weight")
            if weight is None or weight.dtype != torch.int8:
                raise LensbiasError(f"{folder}: {key} has no int8 weight {module_name}.weight")
            layout = out.pop(f"{module_name}.weight_format", None)
            if layout is not None and int(layout) != 0:
                raise LensbiasError(f"{folder}: {module_name}.weight_format is {int(layout)}; "
                                    f"lensbias reads bitsandbytes' row-major int8 layout (0)")
            scb = out.pop(key)
            if scb.shape != (weight.shape[0],):
                raise LensbiasError(f"{folder}: {key} has shape {tuple(scb.shape)}, the int8 "
                                    f"weight has {weight.shape[0]} rows")
            out[f"{module_name}.weight"] = bnb_f.int8_vectorwise_dequant(weight, scb.float()).float()
            _finish_layer(out, module_name, model)
    return out


# --------------------------------------------------------------------------- messages


def _names(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOWN])
    return shown + (", …" if len(keys) > _SHOWN else "")


def _one_line(err: object) -> str:
    text = " ".join(str(err).split())
    return text[:300] + ("…" if len(text) > 300 else "")
