"""Models: Hugging Face checkpoints (a ``save_pretrained`` folder, or a hub id) as
TransformerLens models.

A folder with a ``config.json`` naming a ``model_type``, safetensors or ``.bin`` weights and
tokenizer files loads offline as a HookedTransformer (causal LMs: GPT-2, GPT-NeoX/Pythia,
Llama, Qwen2, Mistral and every other architecture TransformerLens converts) or a
HookedEncoder (BERT), in float32, with no weight processing. The tokenizer is the folder's
own fast tokenizer (character offsets). Folders whose config.json carries a
``quantization_config`` (compressed-tensors, GPTQ, AWQ, bitsandbytes) are dequantized by
``lensbias.models.hf_formats.read_state_dict`` first; that config becomes the recipe of B.

Every TransformerLens call is in ``adapter``; this module only reads files and builds the
transformers model TransformerLens converts.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from lensbias.errors import LensbiasError
from lensbias.models import adapter
from lensbias.models.tokenizer import HFTokenizer

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
"""What transformers' ``from_pretrained`` reads, in its order of preference."""

ROTARY_N_CTX = 2048
"""Context cap for rotary models: TransformerLens allocates an ``n_ctx``² mask per block,
and a config's ``max_position_embeddings`` (32k-128k) would cost gigabytes. lensbias reads
windows of at most 256 tokens; rotary positions do not depend on ``n_ctx``."""

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
"""``owner/name`` as the Hugging Face hub spells a repository."""

_TRAPS = ("llama", "gemma", "wav2vec2")
"""Names TransformerLens' config reader matches in a *path* before it reads config.json."""


def is_hf_folder(path: Path) -> bool:
    """True for a folder whose config.json is a transformers config (has ``model_type``)
    and not a lensbias model folder."""
    try:
        cfg = json.loads((Path(path) / "config.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(cfg, dict) and "model_type" in cfg and "transformer_lens_config" not in cfg


def read_hf_config(folder: Path) -> dict[str, Any]:
    """config.json of a transformers checkpoint, as a dict (one-line errors)."""
    path = Path(folder) / "config.json"
    try:
        cfg = json.loads(path.read_text())
    except FileNotFoundError:
        raise LensbiasError(f"{folder} holds no config.json") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise LensbiasError(f"{path}: unreadable ({str(err).splitlines()[0]})") from None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("model_type"), str):
        raise LensbiasError(f"{path} has no model_type: not a transformers checkpoint")
    return cfg


def architecture(cfg: dict[str, Any]) -> str:
    """The transformers class the checkpoint was saved from (``architectures[0]``), or the
    causal-LM class of its ``model_type`` when the config names none."""
    names = cfg.get("architectures")
    if isinstance(names, list) and names and isinstance(names[0], str):
        return names[0]
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if cfg["model_type"] == "bert":
        return "BertModel"
    name = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(cfg["model_type"])
    if name is None:
        raise LensbiasError(f"config.json names no architecture and model_type "
                            f"{cfg['model_type']!r} has no causal-LM class in transformers")
    return name


def load_hf(folder: Path, trust_remote_code: bool = False, dtype: torch.dtype = torch.float32
            ) -> tuple[Any, HFTokenizer, dict[str, Any], dict[str, Any] | None]:
    """``(model, tokenizer, config.json, compression config or None)`` of a transformers
    checkpoint folder, offline. Cheap checks (config, remote code, architecture, weight
    files, tokenizer) come before any weight is read."""
    folder = Path(folder)
    cfg = read_hf_config(folder)
    _check_remote_code(folder, cfg, trust_remote_code)
    arch = architecture(cfg)
    encoder = cfg["model_type"] == "bert"
    if not any((folder / f).is_file() for f in WEIGHT_FILES):
        raise LensbiasError(f"{folder} holds no weights ({', '.join(WEIGHT_FILES[::2])})")
    hf_tok = _tokenizer(folder, trust_remote_code)
    quant = cfg.get("quantization_config")
    with _config_dir(cfg, arch, encoder) as (tmp, tl_cfg_input), quiet_progress():
        tl_cfg = _tl_config(tmp, tl_cfg_input, arch, dtype, trust_remote_code)
        hf_model = _hf_model(folder, cfg, arch, encoder, quant, dtype, trust_remote_code)
        try:
            if encoder:
                state = _bert_weights(hf_model.state_dict(), tl_cfg.to_dict())
            else:
                state = adapter.hf_weights(str(tmp), tl_cfg, hf_model)
        except (ValueError, KeyError, AttributeError, RuntimeError) as err:
            raise LensbiasError(f"{folder}: TransformerLens could not convert the {arch} "
                                f"weights ({_line(err)})") from None
    del hf_model
    prepend = not encoder and bool(tl_cfg.default_prepend_bos)
    try:
        model = adapter.build_from_config(tl_cfg, state, tokenizer=hf_tok, encoder=encoder)
    except (ValueError, RuntimeError) as err:
        raise LensbiasError(f"{folder}: weights do not fit the {arch} config ({_line(err)})") from None
    recipe = None
    if quant is not None:
        recipe = {"method": f"hf:{quant.get('quant_method', 'unknown')}",
                  "quantization_config": quant, "source": "checkpoint config.json"}
    return model, HFTokenizer(hf_tok, prepend_bos=prepend), cfg, recipe


def download(repo_id: str) -> Path:
    """A hub repository's config, weights and tokenizer in the local cache (needs network)."""
    from huggingface_hub import snapshot_download

    text = ["*.json", "*.txt", "*.model", "*.tiktoken"]
    try:
        path = Path(snapshot_download(repo_id, allow_patterns=[*text, "*.safetensors"]))
        if not any((path / f).is_file() for f in WEIGHT_FILES):
            path = Path(snapshot_download(repo_id, allow_patterns=[*text, "*.bin"]))
    except Exception as err:  # offline, unknown repo, gated: huggingface_hub's own errors
        raise LensbiasError(f"{repo_id!r} is not a folder here and could not be fetched from "
                            f"the Hugging Face hub ({type(err).__name__}: {_line(err)})") from None
    return path


@contextlib.contextmanager
def quiet_progress() -> Iterator[None]:
    """No "Loading weights" / "Writing model shards" bars from transformers meanwhile."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def _line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _check_remote_code(folder: Path, cfg: dict[str, Any], trust: bool) -> None:
    from transformers import CONFIG_MAPPING

    if trust:
        return
    if "auto_map" in cfg:
        raise LensbiasError(f"{folder}: config.json asks for the checkpoint's own Python code "
                            "(auto_map); lensbias does not run it unless "
                            "load_model(..., trust_remote_code=True)")
    if cfg["model_type"] not in CONFIG_MAPPING:
        raise LensbiasError(f"{folder}: model_type {cfg['model_type']!r} is unknown to this "
                            "transformers; it needs custom code, which lensbias does not run "
                            "unless load_model(..., trust_remote_code=True)")


def _tokenizer(folder: Path, trust: bool) -> Any:
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True,
                                            trust_remote_code=trust)
    except Exception as err:  # missing or damaged files: transformers raises many types
        raise LensbiasError(f"{folder}: no usable tokenizer ({type(err).__name__}: "
                            f"{_line(err)})") from None
    if not getattr(tok, "is_fast", False):
        raise LensbiasError(f"{folder}: the tokenizer is not a fast tokenizer (no tokenizer.json); "
                            "lensbias needs character offsets, which only fast tokenizers give")
    return tok


@contextlib.contextmanager
def _config_dir(cfg: dict[str, Any], arch: str, encoder: bool
                ) -> Iterator[tuple[Path, dict[str, Any]]]:
    """A temporary folder holding the config.json TransformerLens reads: quantization
    removed, GPT-2's missing ``n_ctx`` set from ``n_positions``, BERT named as the
    architecture TransformerLens knows. Its path never contains a name TransformerLens
    matches before reading the file (a checkpoint folder called ``my-llama`` would send it
    down a name-based branch that fails), and the weights never pass through it."""
    out = {k: v for k, v in cfg.items() if k != "quantization_config"}
    out["architectures"] = ["BertForMaskedLM" if encoder else arch]
    if cfg["model_type"] == "gpt2" and "n_ctx" not in cfg:
        out["n_ctx"] = cfg.get("n_positions", 1024)
    tmp = Path(tempfile.mkdtemp(prefix="lensbias-hf-")).resolve()
    try:
        if any(t in str(tmp).lower() for t in _TRAPS):
            raise LensbiasError(f"the temporary folder {tmp} has a name TransformerLens reads "
                                "as a model name; set TMPDIR to another folder")
        (tmp / "config.json").write_text(json.dumps(out))
        yield tmp, out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _tl_config(tmp: Path, cfg: dict[str, Any], arch: str, dtype: torch.dtype,
               trust: bool) -> Any:
    try:
        tl_cfg = adapter.hf_config(str(tmp), cfg, dtype=dtype, trust_remote_code=trust)
    except NotImplementedError:
        raise LensbiasError(f"architecture {arch} is not one TransformerLens can hook; lensbias "
                            "loads GPT-2, GPT-NeoX (Pythia), Llama, Mistral, Qwen2, BERT and the "
                            "other architectures TransformerLens converts") from None
    except (AttributeError, KeyError, TypeError, ValueError) as err:
        raise LensbiasError(f"config.json of this {arch} checkpoint lacks what TransformerLens "
                            f"needs ({type(err).__name__}: {_line(err)})") from None
    changes: dict[str, Any] = {}
    if cfg["model_type"] == "gpt2" and cfg.get("n_inner"):
        changes["d_mlp"] = int(cfg["n_inner"])  # TransformerLens assumes 4 * n_embd
    if tl_cfg.positional_embedding_type == "rotary" and tl_cfg.n_ctx > ROTARY_N_CTX:
        changes["n_ctx"] = ROTARY_N_CTX
    return adapter.with_config(tl_cfg, **changes) if changes else tl_cfg


def _hf_model(folder: Path, cfg: dict[str, Any], arch: str, encoder: bool,
              quant: dict[str, Any] | None, dtype: torch.dtype, trust: bool) -> Any:
    """The transformers model whose weights TransformerLens converts."""
    import transformers

    cls = getattr(transformers, arch, None)
    if encoder:
        cls = transformers.BertForMaskedLM if arch == "BertForMaskedLM" else transformers.BertModel
    if cls is None or trust:
        cls = transformers.AutoModelForCausalLM
    if quant is None:
        try:
            model = cls.from_pretrained(str(folder), dtype=dtype, local_files_only=True,
                                        trust_remote_code=trust)
        except Exception as err:  # damaged or mismatched files: one line
            if type(err).__name__ == "UnpicklingError" or "Weights only load failed" in str(err):
                raise LensbiasError(f"{folder}: transformers could not read the weights: the "
                                    ".bin file holds more than tensors, and lensbias never "
                                    "unpickles code (weights_only=True)") from None
            raise LensbiasError(f"{folder}: transformers could not read the weights "
                                f"({type(err).__name__}: {_line(err)})") from None
        return model.eval()
    return _dequantized(folder, cls, dtype, trust)


def _dequantized(folder: Path, cls: Any, dtype: torch.dtype, trust: bool) -> Any:
    """A compressed checkpoint as a dense transformers model: ``hf_formats.read_state_dict``
    gives float weights in transformers' names, loaded strictly into a model built from the
    config with its quantization_config removed."""
    try:
        from lensbias.models.hf_formats import read_state_dict
    except ImportError:
        raise LensbiasError(f"{folder} is a compressed checkpoint (quantization_config), and "
                            "this lensbias has no reader for compressed formats yet") from None
    from transformers import AutoConfig

    state, _ = read_state_dict(folder)
    config = AutoConfig.from_pretrained(str(folder), local_files_only=True, trust_remote_code=trust)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("cpu"):
        model = cls.from_config(config, dtype=dtype, trust_remote_code=trust) if trust else \
            cls._from_config(config, dtype=dtype)
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    own = model.state_dict()
    for k in own:
        if k not in state and _is_tied(model, k):
            state[k] = own[k]
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} != {tuple(own[k].shape)}" for k in own
              if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        what = "; ".join(f"{label}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
                         for label, keys in (("missing", missing), ("unexpected", unexpected),
                                             ("shape", shapes)) if keys)
        raise LensbiasError(f"{folder}: dequantized weights do not fit the {cls.__name__} "
                            f"built from config.json ({what})")
    model.load_state_dict(state, strict=True)
    return model.eval()


def _is_tied(model: Any, key: str) -> bool:
    """True for the output embedding of a model that ties it to the input embedding."""
    if not getattr(model.config, "tie_word_embeddings", False):
        return False
    out = model.get_output_embeddings()
    return out is not None and key.endswith("weight") and any(
        name == key for name, p in model.named_parameters(remove_duplicate=False) if p is out.weight)


def _bert_weights(sd: dict[str, torch.Tensor], config: dict[str, Any]) -> dict[str, torch.Tensor]:
    """A BertModel / BertForMaskedLM state dict in HookedEncoder names.

    The encoder is mapped as for MiniLM. A checkpoint with an MLM head (``cls.predictions``)
    keeps it (logits are then meaningful); without one the head is the documented
    placeholder (``minilm.convert_bert_state_dict``). A missing pooler (BertForMaskedLM has
    none) is a zero placeholder: lensbias reads only the residual stream and the logits.
    """
    from lensbias.models.minilm import convert_bert_state_dict

    sd = {k.removeprefix("bert."): v for k, v in sd.items()}
    d = config["d_model"]
    if "pooler.dense.weight" not in sd:
        sd = {**sd, "pooler.dense.weight": torch.zeros(d, d), "pooler.dense.bias": torch.zeros(d)}
    out = convert_bert_state_dict(sd, {**config, "d_vocab_out": config["d_vocab"]})
    if "cls.predictions.transform.dense.weight" in sd:
        head = "cls.predictions."
        out["mlm_head.W"] = sd[f"{head}transform.dense.weight"].T.contiguous()
        out["mlm_head.b"] = sd[f"{head}transform.dense.bias"]
        out["mlm_head.ln.w"] = sd[f"{head}transform.LayerNorm.weight"]
        out["mlm_head.ln.b"] = sd[f"{head}transform.LayerNorm.bias"]
        decoder = sd.get(f"{head}decoder.weight", sd["embeddings.word_embeddings.weight"])
        out["unembed.W_U"] = decoder.T.contiguous()
        out["unembed.b_U"] = sd.get(f"{head}decoder.bias", sd.get(f"{head}bias"))
    return out
