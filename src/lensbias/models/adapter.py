"""Models, stage 1 of 3: the one place lensbias calls TransformerLens.

Every construction, weight load and hooked forward pass goes through this module, so a
later move from HookedTransformer/HookedEncoder to TransformerBridge touches one file.
Weights are never processed (no fold_ln, no centring): a pair of models stays comparable.
"""

from __future__ import annotations

import contextlib
import logging
import re
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from lensbias.errors import LensbiasError

# TransformerLens imports bitsandbytes whenever it is installed (lensbias[hf] brings it for
# 4/8-bit checkpoints); its CPU backend then logs that optional "kernels" are missing on
# every start. The message concerns a GPU speed-up lensbias never uses: keep it out of
# users' terminals.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

_DEPRECATION = r"Hooked(Transformer|Encoder)(\.from_pretrained)? is deprecated"


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence TransformerLens 3.9's own deprecation notice, and only that one."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_DEPRECATION, category=DeprecationWarning)
        yield


def build_decoder(config: dict[str, Any], state_dict: dict[str, torch.Tensor] | None = None,
                  tokenizer: Any = None) -> Any:
    """A HookedTransformer from a plain config dict (HookedTransformerConfig fields).

    With ``state_dict`` the weights are loaded as they are (strict, no processing).
    """
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(**_with_dtype(config))
    with _quiet():
        model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False)
    if state_dict is not None:
        _load_exact(model, state_dict)
    return model.eval()


def build_encoder(config: dict[str, Any], state_dict: dict[str, torch.Tensor] | None = None,
                  tokenizer: Any = None) -> Any:
    """A HookedEncoder (BERT) from a plain config dict; weights loaded as they are."""
    from transformer_lens import HookedEncoder, HookedTransformerConfig

    cfg = HookedTransformerConfig(**_with_dtype(config))
    with _quiet():
        model = HookedEncoder(cfg, tokenizer=tokenizer, move_to_device=False)
    if state_dict is not None:
        _load_exact(model, state_dict)
    return model.eval()


def _with_dtype(config: dict[str, Any]) -> dict[str, Any]:
    """A config whose ``dtype`` may be a string ('float32') as written by ``config_dict``."""
    if isinstance(config.get("dtype"), str):
        return {**config, "dtype": getattr(torch, config["dtype"])}
    return config


def from_pretrained(name: str, device: str = "cpu") -> Any:
    """A TransformerLens pretrained model by name (needs the hub), with no weight processing."""
    from transformer_lens import HookedTransformer

    with _quiet():
        return HookedTransformer.from_pretrained_no_processing(name, device=device).eval()


def hf_config(config_dir: str, hf_cfg: dict[str, Any], dtype: torch.dtype = torch.float32,
              trust_remote_code: bool = False) -> Any:
    """TransformerLens' HookedTransformerConfig for a Hugging Face config.

    ``config_dir`` holds the config.json TransformerLens reads (the caller makes it: its
    path must not contain a name such as "llama" that sends TransformerLens down a
    name-based branch). Raises NotImplementedError for an architecture TransformerLens
    cannot hook.
    """
    from transformer_lens.loading_from_pretrained import get_pretrained_model_config

    kwargs = {"trust_remote_code": True} if trust_remote_code else {}
    return get_pretrained_model_config(config_dir, hf_cfg=hf_cfg, dtype=dtype, device="cpu",
                                       **kwargs)


def with_config(cfg: Any, **changes: Any) -> Any:
    """A copy of a HookedTransformerConfig with some fields changed (derived ones recomputed)."""
    from transformer_lens import HookedTransformerConfig

    return HookedTransformerConfig.from_dict({**cfg.to_dict(), **changes})


def hf_weights(config_dir: str, cfg: Any, hf_model: Any) -> dict[str, torch.Tensor]:
    """A transformers causal LM's weights in TransformerLens names and layout (no processing)."""
    from transformer_lens.loading_from_pretrained import get_pretrained_state_dict

    with _quiet():
        return get_pretrained_state_dict(config_dir, cfg, hf_model, dtype=cfg.dtype)


def build_from_config(cfg: Any, state_dict: dict[str, torch.Tensor], tokenizer: Any = None,
                      encoder: bool = False) -> Any:
    """A HookedTransformer (or HookedEncoder) from a HookedTransformerConfig and converted
    weights, loaded with no processing: no fold_ln, no centring, no value-bias folding."""
    from transformer_lens import HookedEncoder, HookedTransformer

    with _quiet():
        if encoder:
            model = HookedEncoder(cfg, tokenizer=tokenizer, move_to_device=False)
            _load_exact(model, state_dict)
            return model.eval()
        model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False)
        model.load_and_process_state_dict(state_dict, fold_ln=False, center_writing_weights=False,
                                          center_unembed=False, fold_value_biases=False,
                                          refactor_factored_attn_matrices=False)
    return model.eval()


def _load_exact(model: torch.nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Copy weights in, checking every name and shape (buffers such as masks may be absent)."""
    own = model.state_dict()
    buffers = dict(model.named_buffers())
    missing = [k for k in own if k not in state_dict and k not in buffers]
    unexpected = [k for k in state_dict if k not in own]
    if missing or unexpected:
        raise ValueError(f"state dict mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
    for k, v in state_dict.items():
        if own[k].shape != v.shape:
            raise ValueError(f"{k}: checkpoint shape {tuple(v.shape)} != model {tuple(own[k].shape)}")
    model.load_state_dict(state_dict, strict=False)


def check_device(device: str) -> torch.device:
    """``device`` as a torch device, or one clear error: unknown name, or CUDA asked for
    where this torch build or machine has none."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise LensbiasError(f"unknown torch device {device!r}; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise LensbiasError(f"device {device!r} asked for, but this torch "
                            f"({torch.__version__}) sees no CUDA device; use cpu")
    return dev


def to_device(model: Any, device: str) -> Any:
    """Move a model only when it is elsewhere (TransformerLens prints on every move)."""
    check_device(device)
    first = next(model.parameters(), None)
    if first is not None and first.device == torch.device(device):
        return model
    return model.to(device)


def _on_model(model: Any, t: torch.Tensor | None) -> torch.Tensor | None:
    """``t`` on the model's device (callers build token batches on the CPU)."""
    first = next(model.parameters(), None)
    return t if t is None or first is None or t.device == first.device else t.to(first.device)


def is_encoder(model: Any) -> bool:
    """True for a bidirectional encoder (HookedEncoder), False for a causal LM."""
    from transformer_lens import HookedEncoder

    return isinstance(model, HookedEncoder)


def hook_names(model: Any) -> list[str]:
    """Every hook point name of the model, as TransformerLens spells them."""
    return list(model.hook_dict.keys())


def default_hooks(model: Any) -> list[str]:
    """The residual stream after every block, as the model's next block reads it.

    ``blocks.{l}.hook_resid_post`` for a pre-LN decoder; for a post-LN encoder (BERT)
    ``blocks.{l}.hook_normalized_resid_post``, which equals BertModel's hidden_states[l+1].
    """
    hook = "hook_normalized_resid_post" if is_encoder(model) else "hook_resid_post"
    return [f"blocks.{layer}.{hook}" for layer in range(model.cfg.n_layers)]


_RELATIVE = re.compile(r"^blocks\.(-\d+)\.(.+)$")


def resolve_hook(model: Any, hook: str) -> str:
    """The model's own name for ``hook``: a negative block index counts from the last block
    (``blocks.-1.hook_resid_post`` is the last block's output), so models of different
    depth (a distilled or layer-dropped student and its teacher) can be compared by one
    name. Other names are returned unchanged; an index past the first block is an error."""
    found = _RELATIVE.match(hook)
    if not found:
        return hook
    layer = model.cfg.n_layers + int(found.group(1))
    if layer < 0:
        raise LensbiasError(f"hook {hook!r} counts {-int(found.group(1))} blocks back, but "
                            f"the model has {model.cfg.n_layers}")
    return f"blocks.{layer}.{found.group(2)}"


def run_hooks(model: Any, tokens: torch.Tensor, hooks: Sequence[str],
              attention_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """One forward pass that keeps only ``hooks`` and stops after the last block needed.

    Returns ``{hook: [batch, pos, d]}`` keyed by the names asked for (relative block indices
    included, see ``resolve_hook``). Uses forward hooks (no full cache is built).
    """
    got: dict[str, torch.Tensor] = {}
    tokens, attention_mask = _on_model(model, tokens), _on_model(model, attention_mask)
    real = {h: resolve_hook(model, h) for h in hooks}  # asked name -> the model's name
    needed = list(dict.fromkeys(real.values()))
    fwd = _recorders(needed, got)
    with torch.inference_mode():
        if is_encoder(model):
            with model.hooks(fwd_hooks=fwd):
                model(tokens, return_type=None, one_zero_attention_mask=attention_mask)
        else:
            with model.hooks(fwd_hooks=fwd):
                model(tokens, return_type=None, stop_at_layer=_stop_layer(model, needed),
                      attention_mask=attention_mask)
    return {h: got[name] for h, name in real.items()}


def _recorders(hooks: Sequence[str], got: dict[str, torch.Tensor]
               ) -> list[tuple[str, Callable[[torch.Tensor, Any], None]]]:
    """Forward hooks that store each named hook's activation into ``got``."""
    def keep(name: str) -> Callable[[torch.Tensor, Any], None]:
        def fn(act: torch.Tensor, hook: Any) -> None:
            got[name] = act.detach()
        return fn

    return [(h, keep(h)) for h in hooks]


def block_input(model: Any, tokens: torch.Tensor) -> torch.Tensor:
    """The residual stream entering block 0 (embeddings), ``[batch, pos, d_model]``."""
    return run_hooks(model, tokens, ["blocks.0.hook_resid_pre"])["blocks.0.hook_resid_pre"]


def run_block(model: Any, layer: int, resid: torch.Tensor, hooks: Sequence[str] = ()
              ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Run one block on its input residual stream; returns its output and the named hooks."""
    got: dict[str, torch.Tensor] = {}
    with torch.inference_mode(), model.hooks(fwd_hooks=_recorders(hooks, got)):
        out = model.blocks[layer](_on_model(model, resid))
    return out, got


def final_norm(model: Any, resid: torch.Tensor) -> torch.Tensor:
    """What the unembedding reads: ``ln_final`` of the last residual stream (if any)."""
    with torch.inference_mode():
        return model.ln_final(resid) if hasattr(model, "ln_final") else resid


def _stop_layer(model: Any, hooks: Sequence[str]) -> int | None:
    """The first block that no requested hook needs, or None when the whole model is needed."""
    last = -1
    for h in hooks:
        if h.startswith("blocks."):
            last = max(last, int(h.split(".")[1]))
        else:
            return None
    return last + 1 if last + 1 < model.cfg.n_layers else None


def logits(model: Any, tokens: torch.Tensor) -> torch.Tensor:
    """Next-token logits ``[batch, pos, d_vocab]`` of a causal model."""
    with torch.inference_mode():
        return model(_on_model(model, tokens), return_type="logits")


def official_name(name: str) -> str | None:
    """TransformerLens' canonical name for a pretrained model alias, or None if unknown."""
    from transformer_lens.loading_from_pretrained import get_official_model_name

    try:
        return get_official_model_name(name)
    except ValueError:
        return None


def config_dict(model: Any) -> dict[str, Any]:
    """The model's TransformerLens config as plain JSON data (``build_*`` reads it back)."""
    import dataclasses
    import json

    out: dict[str, Any] = {}
    for f in dataclasses.fields(model.cfg):
        value = getattr(model.cfg, f.name)
        if f.name == "dtype":
            out["dtype"] = str(value).removeprefix("torch.")
            continue
        try:
            json.dumps(value)
        except TypeError:
            continue
        out[f.name] = value
    out["device"] = "cpu"
    return out


def train_logits(model: Any, tokens: torch.Tensor) -> torch.Tensor:
    """Next-token logits ``[batch, pos, d_vocab]`` of a causal model, autograd on (training)."""
    return model(_on_model(model, tokens), return_type="logits")
