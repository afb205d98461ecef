"""Concepts, stage 4: token-frequency buckets from a model's training-corpus counts.

Tokens are ranked by count; ``common`` tokens cover the first 50% of the corpus mass,
``medium`` the next 40%, ``rare`` the last 10%, and ids never seen are ``unseen``.
"""

from __future__ import annotations

import numpy as np

FREQ_LABEL_SET = "freq_bucket"
BUCKETS = ("common", "medium", "rare", "unseen")


def frequency_buckets(counts: np.ndarray | None, vocab_size: int) -> list[str] | None:
    """The bucket name of every token id, or None when the counts are unknown."""
    if counts is None:
        return None
    counts = np.zeros(vocab_size) if counts.size == 0 else counts.astype(np.float64)
    counts = np.pad(counts, (0, max(0, vocab_size - counts.size)))[:vocab_size]
    order = np.argsort(-counts, kind="stable")
    mass = np.cumsum(counts[order]) / max(counts.sum(), 1.0)
    before = np.concatenate([[0.0], mass[:-1]])  # mass strictly before each token
    names = np.where(before < 0.5, "common", np.where(before < 0.9, "medium", "rare"))
    names = np.where(counts[order] == 0, "unseen", names)
    out = np.empty(vocab_size, dtype=object)
    out[order] = names
    return out.tolist()
