"""Models, stage 3 of 3: next-token training for the built-in tiny models (and students).

A plain AdamW loop with linear warm-up and cosine decay, on batches drawn from token
streams by a seeded generator: the same seed and data give the same weights on CPU.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class TrainConfig:
    """How a causal LM is trained on a weighted mixture of token streams."""

    steps: int = 2000
    """Optimizer steps."""
    batch_size: int = 16
    """Sequences per step."""
    seq_len: int = 128
    """Tokens per sequence (BOS included)."""
    lr: float = 2e-3
    """Peak learning rate."""
    warmup: int = 100
    """Linear warm-up steps before cosine decay to 10% of ``lr``."""
    weight_decay: float = 0.05
    """AdamW weight decay."""
    seed: int = 0
    """Seeds weight init (by the caller) and batch sampling."""


def sample_batch(streams: Sequence[np.ndarray], weights: Sequence[float], cfg: TrainConfig,
                 bos_id: int, rng: np.random.Generator) -> torch.Tensor:
    """``[batch, seq_len]`` windows: BOS + a random slice of a stream chosen by ``weights``."""
    probs = np.asarray(weights, dtype=np.float64) / np.sum(weights)
    rows = []
    for _ in range(cfg.batch_size):
        stream = streams[rng.choice(len(streams), p=probs)]
        start = rng.integers(0, len(stream) - cfg.seq_len)
        rows.append(np.concatenate([[bos_id], stream[start:start + cfg.seq_len - 1]]))
    return torch.from_numpy(np.stack(rows).astype(np.int64))


def lm_loss(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy in nats; ``logits`` ``[batch, pos, vocab]``."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten())


def train_lm(model: torch.nn.Module, streams: Sequence[np.ndarray], weights: Sequence[float],
             cfg: TrainConfig, bos_id: int,
             log: Callable[[int, float, float], None] | None = None) -> list[float]:
    """Train ``model`` in place; returns the loss of every step."""
    rng = np.random.default_rng(cfg.seed)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=cfg.lr, betas=(0.9, 0.95))
    losses: list[float] = []
    start = time.perf_counter()
    model.train()
    for step in range(cfg.steps):
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, cfg)
        tokens = sample_batch(streams, weights, cfg, bos_id, rng)
        loss = lm_loss(model(tokens, return_type="logits"), tokens)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if log is not None:
            log(step, losses[-1], time.perf_counter() - start)
    model.eval()
    return losses


def _lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


@torch.inference_mode()
def bits_per_byte(model: torch.nn.Module, texts: Sequence[str], encode: Callable[[str], list[int]],
                  bos_id: int, seq_len: int, batch_size: int = 16) -> float:
    """Total next-token loss in bits divided by the UTF-8 bytes of the predicted text.

    Each text is cut into windows of ``seq_len - 1`` tokens, each preceded by BOS; every
    non-BOS token is predicted once, so the figure is comparable across tokenizers.
    Windows are batched (right-padded; padding is masked out of the loss).
    """
    windows, total_bytes = [], 0
    for text in texts:
        ids = encode(text)
        total_bytes += len(text.encode("utf-8"))
        windows += [[bos_id, *ids[i:i + seq_len - 1]] for i in range(0, len(ids), seq_len - 1)]
    total_nats = 0.0
    for start in range(0, len(windows), batch_size):
        batch = windows[start:start + batch_size]
        width = max(map(len, batch))
        tokens = torch.full((len(batch), width), bos_id, dtype=torch.long)
        real = torch.zeros((len(batch), width), dtype=torch.bool)
        for row, w in enumerate(batch):
            tokens[row, :len(w)] = torch.tensor(w)
            real[row, :len(w)] = True
        logits = model(tokens, return_type="logits")
        nats = F.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten(),
                               reduction="none")
        total_nats += float(nats[real[:, 1:].flatten()].sum())
    return total_nats / math.log(2) / max(1, total_bytes)
