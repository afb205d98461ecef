"""Behaviour, stage 2: for encoders, what compression costs is embedding fidelity.

An encoder (all-MiniLM-L6-v2) has no LM head, so bits per byte is undefined; its behaviour
is its sentence embeddings. A sentence embedding here is what sentence-transformers computes
for all-MiniLM-L6-v2: the last block's hidden state (``blocks.{L-1}.hook_normalized_resid_post``
= BertModel's last hidden state), mean-pooled over the attention mask (CLS and SEP included),
at most 256 word pieces per text (its ``max_seq_length``), compared by cosine.

On held-out code and prose (the bits/byte slice, ``measure.HELD_OUT_SLICE``: the first 400
``ud-gum:dev`` sentences one by one; the first 40 ``python-stdlib`` chunks cut into pieces of
``CODE_LINES`` non-blank lines) two numbers per domain:

* cosine(A's embedding, B's embedding) of every text: mean, 5th percentile, minimum;
* retrieval agreement: the share of texts whose nearest neighbour (by cosine, itself
  excluded) among the domain's N texts is the same under B as under A.

B = A gives cosine 1 and agreement 1 (test); noise gives lower values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from jaxtyping import Float

from lensbias.compress.measure import HELD_OUT, HELD_OUT_SLICE
from lensbias.concepts.registry import load_dataset
from lensbias.errors import LensbiasError
from lensbias.models import LoadedModel, adapter

MAX_TOKENS = 256
"""Word pieces per text, CLS and SEP included (all-MiniLM-L6-v2's ``max_seq_length``)."""
CODE_LINES = 10
"""Non-blank lines per code text (a stdlib chunk is ~1,000 characters: too long for one)."""


def held_out_sentences(domain: str) -> list[str]:
    """The texts embedded for ``domain``: GUM dev sentences, or stdlib chunks cut into
    pieces of ``CODE_LINES`` non-blank lines (from the bits/byte slice)."""
    name, n = HELD_OUT[domain]
    texts = [e.text for e in load_dataset(name, max_examples=n).examples]
    if domain != "code":
        return [t for t in texts if t.strip()]
    pieces = []
    for text in texts:
        lines = [line for line in text.splitlines() if line.strip()]
        pieces += ["\n".join(lines[i:i + CODE_LINES]) for i in range(0, len(lines), CODE_LINES)]
    return pieces


def sentence_embeddings(lm: LoadedModel, texts: list[str], batch_size: int = 32
                        ) -> Float[np.ndarray, "texts d"]:
    """Mean-pooled last hidden state of an encoder, one row per text (float64)."""
    if not lm.is_encoder:
        raise LensbiasError(f"embedding fidelity needs an encoder; {lm.name} is a causal LM "
                            "(its behaviour is bits per byte)")
    if not texts:
        raise LensbiasError("embedding fidelity needs at least one text")
    hook = f"blocks.{lm.model.cfg.n_layers - 1}.hook_normalized_resid_post"
    limit = min(MAX_TOKENS, lm.n_ctx)
    encoded = []
    for text in texts:
        ids = lm.tokenizer.encode(text).ids
        encoded.append(ids if len(ids) <= limit else ids[:limit - 1] + ids[-1:])  # keep SEP
    device = next(lm.model.parameters()).device
    out = []
    for start in range(0, len(encoded), batch_size):
        batch = encoded[start:start + batch_size]
        width = max(map(len, batch))
        tokens = torch.zeros((len(batch), width), dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, ids in enumerate(batch):
            tokens[row, :len(ids)] = torch.tensor(ids)
            mask[row, :len(ids)] = 1
        hidden = adapter.run_hooks(lm.model, tokens.to(device), [hook],
                                   attention_mask=mask.to(device))[hook].double().cpu()
        weights = mask.double()[..., None]
        out.append(((hidden * weights).sum(1) / weights.sum(1)).numpy())
    return np.concatenate(out)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def nearest_neighbours(emb: Float[np.ndarray, "n d"]) -> np.ndarray:
    """Index of each row's most cosine-similar other row (ties: the lowest index)."""
    unit = _unit(np.asarray(emb, np.float64))
    sim = unit @ unit.T
    np.fill_diagonal(sim, -np.inf)
    return np.argmax(sim, axis=1)


@dataclass(frozen=True)
class Fidelity:
    """How closely B's sentence embeddings follow A's on one domain's texts."""

    n: int
    """Texts embedded."""
    cosine_mean: float
    cosine_p05: float
    """5th percentile of the per-text cosine."""
    cosine_min: float
    retrieval_agreement: float
    """Share of texts whose nearest neighbour among the n is the same under B as under A."""

    def to_dict(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                for k, v in self.__dict__.items()}


def fidelity(emb_a: Float[np.ndarray, "n d"], emb_b: Float[np.ndarray, "n d"]) -> Fidelity:
    """Per-text cosine of A's and B's embeddings of the same texts, and retrieval agreement."""
    emb_a, emb_b = np.asarray(emb_a, np.float64), np.asarray(emb_b, np.float64)
    if emb_a.shape[0] != emb_b.shape[0]:
        raise ValueError(f"A and B embedded different numbers of texts: {len(emb_a)} vs {len(emb_b)}")
    cos = np.einsum("ij,ij->i", _unit(emb_a), _unit(emb_b))
    agree = (float(np.mean(nearest_neighbours(emb_a) == nearest_neighbours(emb_b)))
             if len(emb_a) >= 3 else math.nan)
    return Fidelity(len(cos), float(cos.mean()), float(np.percentile(cos, 5)),
                    float(cos.min()), agree)


@dataclass(frozen=True)
class EmbeddingReport:
    """An encoder pair's behaviour: embedding fidelity per held-out domain."""

    model_a: str
    model_b: str
    by_domain: dict[str, Fidelity] = field(default_factory=dict)
    slice: str = HELD_OUT_SLICE
    hook: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{"kind": "embedding", "model_a", "model_b", "slice", "hook",
        "pooling", "max_tokens", "by_domain": {code|prose: {n, cosine_mean, cosine_p05,
        cosine_min, retrieval_agreement}}}``."""
        return {"kind": "embedding", "model_a": self.model_a, "model_b": self.model_b,
                "slice": self.slice, "hook": self.hook,
                "pooling": "mean over the attention mask", "max_tokens": MAX_TOKENS,
                "by_domain": {d: f.to_dict() for d, f in self.by_domain.items()}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EmbeddingReport:
        def num(v: Any) -> float:
            return math.nan if v is None else float(v)

        return cls(d["model_a"], d["model_b"],
                   {k: Fidelity(int(v["n"]), num(v["cosine_mean"]), num(v["cosine_p05"]),
                                num(v["cosine_min"]), num(v["retrieval_agreement"]))
                    for k, v in d["by_domain"].items()}, d.get("slice", HELD_OUT_SLICE),
                   d.get("hook", ""))


def compare_embeddings(lm_a: LoadedModel, lm_b: LoadedModel,
                       domains: tuple[str, ...] = ("code", "prose"),
                       batch_size: int = 32, max_texts: int | None = None) -> EmbeddingReport:
    """Embedding fidelity of encoder B against encoder A on the held-out texts of each domain
    (the first ``max_texts`` of them when given)."""
    from lensbias.behaviour import memo

    for lm in (lm_a, lm_b):
        if not lm.is_encoder:
            raise LensbiasError(f"embedding fidelity needs two encoders; {lm.name} is a causal LM")
    if lm_a.model.cfg.n_layers != lm_b.model.cfg.n_layers:
        hook = "the last block of each"
    else:
        hook = f"blocks.{lm_a.model.cfg.n_layers - 1}.hook_normalized_resid_post"
    out = {}
    for domain in domains:
        texts = held_out_sentences(domain)[:max_texts]
        emb_a = memo.of_model(lm_a, ("sentence_embeddings", domain, max_texts),
                              lambda: sentence_embeddings(lm_a, texts, batch_size))
        out[domain] = fidelity(emb_a, sentence_embeddings(lm_b, texts, batch_size))
    return EmbeddingReport(lm_a.name, lm_b.name, out, HELD_OUT_SLICE, hook)
