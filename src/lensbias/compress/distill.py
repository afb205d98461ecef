"""Compress, method family: knowledge distillation (Hinton, Vinyals & Dean 2015, arXiv 1503.02531).

Train a smaller causal student on the calibration tokens (the recipe's CalibConfig domain IS
the distillation corpus) to match the teacher's softened next-token distribution.

Per token, L = (1 − α)·CE(student, next token) + α·T²·KL(softmax(z_t/T) ‖ softmax(z_s/T));
the KL term covers every position, the CE term every position that has a next token.

Student shape: ``n_layers`` (default half the teacher's, at least 1) and ``d_model`` (default
the teacher's); heads keep the teacher's count, ``d_head = d_model / n_heads``, and ``d_mlp``
keeps the teacher's d_mlp/d_model ratio. With ``init="teacher"`` and the teacher's
``d_model``, the student starts as the teacher's embeddings, unembedding, final LN and
evenly spaced teacher blocks (``round(linspace(0, n_teacher − 1, n_student))``: the first
and last block always kept); with another ``d_model`` or ``init="random"`` it starts from
TransformerLens' random init. The tokenizer and token counts are the teacher's.

Optimisation: AdamW (β = 0.9, 0.95, no weight decay), constant ``lr``, gradient norm clipped
to 1, ``steps`` batches of ``batch_size`` calibration sequences drawn without replacement
within a batch by a numpy Generator. Its seed and the random init both come from torch's
global RNG, which ``compress()`` seeds with the recipe's calibration seed: the same recipe
gives bit-identical students on CPU. ``meta`` records ``distill_losses`` (mean loss and KL
over the first and last tenth of the steps, at most 10 steps each), ``distill_student``,
``distill_teacher`` (shapes) and ``distill_init`` (which teacher blocks, or "random").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from lensbias.compress.base import ModelMethod, register
from lensbias.compress.layerdrop import decoder_with_blocks, with_new_model
from lensbias.compress.linear import LinearView
from lensbias.errors import LensbiasError
from lensbias.models import LoadedModel, adapter
from lensbias.models.train import lm_loss

INITS = ("teacher", "random")
SHAPE_KEYS = ("n_layers", "d_model", "n_heads", "d_head", "d_mlp")


@dataclass(frozen=True)
class DistillConfig:
    """The optimisation settings of one distillation run."""

    steps: int
    temperature: float
    alpha: float
    lr: float
    batch_size: int


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, tokens: Tensor, cfg: DistillConfig
            ) -> tuple[Tensor, Tensor]:
    """``(loss, kl)``: Hinton's mixed loss and its mean per-token KL(teacher_T ‖ student_T)."""
    t = cfg.temperature
    log_s = F.log_softmax(student_logits.flatten(0, 1).float() / t, dim=-1)
    log_t = F.log_softmax(teacher_logits.flatten(0, 1).float() / t, dim=-1)
    kl = F.kl_div(log_s, log_t, log_target=True, reduction="batchmean")
    ce = lm_loss(student_logits.float(), tokens)
    return (1.0 - cfg.alpha) * ce + cfg.alpha * t * t * kl, kl


def student_config(teacher: Any, n_layers: int, d_model: int) -> dict[str, Any]:
    """The teacher's TransformerLens config resized to ``n_layers`` × ``d_model``."""
    config = adapter.config_dict(teacher)
    n_heads, old_d = int(config["n_heads"]), int(config["d_model"])
    if d_model % n_heads:
        raise LensbiasError(f"distill d_model={d_model} is not divisible by the teacher's "
                            f"n_heads={n_heads}; pick a multiple of {n_heads}")
    d_head = d_model // n_heads
    config.update(n_layers=n_layers, d_model=d_model, d_head=d_head, seed=None,
                  initializer_range=-1.0)  # -1: TransformerLens' default for this d_model
    if config.get("d_mlp"):
        config["d_mlp"] = max(1, round(int(config["d_mlp"]) * d_model / old_d))
    if config.get("rotary_dim"):
        config["rotary_dim"] = max(2, int(config["rotary_dim"]) * d_head // int(teacher.cfg.d_head)
                                   // 2 * 2)
    return config


def spaced_blocks(n_teacher: int, n_student: int) -> list[int]:
    """``n_student`` teacher block indices, evenly spaced, first and last included."""
    return [int(i) for i in np.rint(np.linspace(0, n_teacher - 1, n_student))]


@register
class Distill(ModelMethod):
    """Distil the teacher into a smaller student on the calibration domain's tokens."""

    name = "distill"
    needs_inputs = True

    def __init__(self, n_layers: int | None = None, d_model: int | None = None, steps: int = 60,
                 temperature: float = 2.0, alpha: float = 0.5, lr: float = 1e-3,
                 batch_size: int = 8, init: str = "teacher"):
        _check_int("n_layers", n_layers, 1, allow_none=True)
        _check_int("d_model", d_model, 1, allow_none=True)
        _check_int("steps", steps, 1)
        _check_int("batch_size", batch_size, 1)
        if not float(temperature) > 0:
            raise LensbiasError(f"distill temperature must be > 0, got {temperature}")
        if not 0.0 <= float(alpha) <= 1.0:
            raise LensbiasError(f"distill alpha must be in [0, 1], got {alpha}")
        if not float(lr) > 0:
            raise LensbiasError(f"distill lr must be > 0, got {lr}")
        if init not in INITS:
            raise LensbiasError(f"distill init {init!r} is unknown; choose from {', '.join(INITS)}")
        self.n_layers = None if n_layers is None else int(n_layers)
        self.d_model = None if d_model is None else int(d_model)
        self.init = init
        self.cfg = DistillConfig(int(steps), float(temperature), float(alpha), float(lr),
                                 int(batch_size))

    def apply(self, lm: LoadedModel, views: list[LinearView], tokens: Tensor | None) -> LoadedModel:
        if lm.is_encoder:
            raise LensbiasError(f"distill supports causal decoders only; {lm.name} is an "
                                "encoder: pick a decoder model")
        if tokens is None:
            raise LensbiasError("distill needs a corpus; give it a calibration domain")
        teacher = lm.model
        rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, (1,)).item()))
        student, init = self._student(teacher)
        losses, kls = distill(teacher, student, tokens, self.cfg, rng)
        k = max(1, min(10, len(losses) // 10))
        summary = {"first": float(np.mean(losses[:k])), "last": float(np.mean(losses[-k:])),
                   "kl_first": float(np.mean(kls[:k])), "kl_last": float(np.mean(kls[-k:])),
                   "window": k}
        return with_new_model(lm, student, {
            "distill_losses": summary, "distill_init": init,
            "distill_student": _shape(student), "distill_teacher": _shape(teacher)})

    def _student(self, teacher: Any) -> tuple[Any, Any]:
        n_teacher, d_teacher = int(teacher.cfg.n_layers), int(teacher.cfg.d_model)
        n_layers = self.n_layers if self.n_layers is not None else max(1, n_teacher // 2)
        d_model = self.d_model if self.d_model is not None else d_teacher
        config = student_config(teacher, n_layers, d_model)
        if self.init == "teacher" and d_model == d_teacher:
            keep = spaced_blocks(n_teacher, n_layers)
            return decoder_with_blocks(teacher, keep), {"teacher_blocks": keep}
        student = adapter.build_decoder(config, tokenizer=getattr(teacher, "tokenizer", None))
        return adapter.to_device(student, str(next(teacher.parameters()).device)), "random"


def distill(teacher: Any, student: Any, tokens: Tensor, cfg: DistillConfig,
            rng: np.random.Generator) -> tuple[list[float], list[float]]:
    """Train ``student`` in place against ``teacher``; per-step ``(losses, kls)``."""
    device = next(student.parameters()).device
    opt = torch.optim.AdamW(student.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=0.0)
    size = min(cfg.batch_size, len(tokens))
    losses: list[float] = []
    kls: list[float] = []
    student.train()
    for _ in range(cfg.steps):
        rows = torch.from_numpy(rng.choice(len(tokens), size=size, replace=False))
        batch = tokens[rows].to(device)
        target = adapter.logits(teacher, batch).clone()  # out of inference mode
        loss, kl = kd_loss(adapter.train_logits(student, batch), target, batch, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        kls.append(kl.item())
    student.eval()
    return losses, kls


def _shape(model: Any) -> dict[str, int | None]:
    return {k: getattr(model.cfg, k, None) for k in SHAPE_KEYS}


def _check_int(name: str, value: Any, low: int, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if (isinstance(value, bool) or not isinstance(value, (int, float, np.integer))
            or int(value) != value or value < low):
        raise LensbiasError(f"distill {name} must be a whole number >= {low}, got {value!r}")
