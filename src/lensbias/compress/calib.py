"""Compress, stage 2: calibration data as an explicit, recorded choice, and input statistics.

``calibration_tokens`` draws ``n_seqs`` windows of ``seq_len`` tokens from a domain's text
with a seeded generator (same seed, same tokens); ``collect_inputs`` runs the model over
them and accumulates what compressors need per input hook: XᵀX, Σ|x|, Σx², and the
token and sequence counts.

Besides the built-in domains, ``corpus:NAME`` names one of the 16 calibration corpora of
``calib-corpora.jsonl.gz`` (``calib_corpora``: 8 prose, 8 code, ~60,000 characters each;
docs/compression.md), so that the calibration corpus can vary within a domain.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from lensbias.concepts.jsonl import read_jsonl
from lensbias.concepts.registry import DATA_DIR, load_dataset
from lensbias.errors import LensbiasError
from lensbias.models import LoadedModel, adapter

DOMAINS = ("code", "prose", "mixed", "c")
CORPUS_PREFIX = "corpus:"
"""``corpus:NAME``: one named corpus of ``calib-corpora.jsonl.gz`` (``calib_corpora``)."""
CORPORA_FILE = "calib-corpora.jsonl.gz"


@dataclass(frozen=True)
class CalibConfig:
    """Which text the compressor sees, and how much of it."""

    domain: str = "code"
    """'code' (Python stdlib, training side), 'prose' (GUM train paragraphs), 'mixed'
    (half each), 'c' (C headers), 'corpus:NAME' (a named corpus, ``calib_corpora``), or a
    path to a .txt / .jsonl(.gz) file of your own."""
    n_seqs: int = 128
    """Number of calibration sequences (Wanda/SparseGPT default: 128)."""
    seq_len: int = 256
    """Tokens per sequence, BOS included; capped at the model's n_ctx."""
    seed: int = 0
    """Seeds the choice of windows."""

    def __post_init__(self) -> None:
        if self.n_seqs < 1 or self.seq_len < 2:
            raise LensbiasError(f"calibration needs n_seqs >= 1 and seq_len >= 2, got "
                                f"{self.n_seqs} and {self.seq_len}")


@functools.lru_cache(maxsize=1)
def _corpora() -> dict[str, tuple[str, tuple[str, ...]]]:
    """corpus name -> (domain, texts), in the file's order."""
    out: dict[str, tuple[str, list[str]]] = {}
    for example in read_jsonl(DATA_DIR / CORPORA_FILE).examples:
        labels = example.seq_labels
        out.setdefault(labels["corpus"], (labels["domain"], []))[1].append(example.text)
    return {name: (domain, tuple(texts)) for name, (domain, texts) in out.items()}


def calib_corpora() -> dict[str, str]:
    """The named calibration corpora (``corpus:NAME``): name -> domain ('code' or 'prose')."""
    return {name: domain for name, (domain, _) in _corpora().items()}


def corpus_name(domain: str) -> str | None:
    """NAME of a ``corpus:NAME`` domain (None for any other domain); an unknown name is one
    LensbiasError line listing the known names."""
    if not domain.startswith(CORPUS_PREFIX):
        return None
    name = domain[len(CORPUS_PREFIX):]
    known = calib_corpora()
    if name not in known:
        near = difflib.get_close_matches(name, list(known), n=2)
        hint = f" (did you mean {' or '.join(CORPUS_PREFIX + n for n in near)}?)" if near else ""
        raise LensbiasError(f"unknown calibration corpus {name!r} in {domain!r}{hint}; "
                            f"known: {', '.join(known)}")
    return name


def calib_domain(calib: str) -> str | None:
    """The domain of a calibration choice: 'code' for code, c and code corpora; 'prose' for
    prose and prose corpora; None for mixed and user files (an unknown corpus raises)."""
    name = corpus_name(calib)
    if name is not None:
        return calib_corpora()[name]
    return {"code": "code", "c": "code", "prose": "prose"}.get(calib)


def check_domain(domain: str, read: bool) -> None:
    """Refuse a calibration domain that cannot be used, in one LensbiasError line: an
    unknown corpus, or a file that is missing (``read``: or empty, or not UTF-8)."""
    if domain in DOMAINS or corpus_name(domain) is not None:
        return
    if read:
        domain_texts(domain)
    elif not Path(domain).is_file():
        raise LensbiasError(f"calibration domain {domain!r} is neither one of "
                            f"{', '.join(DOMAINS)}, {CORPUS_PREFIX}NAME nor an existing file")


def domain_texts(domain: str) -> list[str]:
    """The documents of a calibration domain (a built-in name, ``corpus:NAME`` or a file)."""
    name = corpus_name(domain)
    if name is not None:
        return list(_corpora()[name][1])
    if domain == "code":
        return [e.text for e in read_jsonl(DATA_DIR / "calib-code.jsonl.gz").examples]
    if domain == "prose":
        return [e.text for e in read_jsonl(DATA_DIR / "calib-prose.jsonl.gz").examples]
    if domain == "c":
        return [e.text for e in load_dataset("c-headers").examples]
    if domain == "mixed":
        raise ValueError("mixed is drawn from code and prose separately")
    return _user_texts(Path(domain))


def _user_texts(path: Path) -> list[str]:
    if not path.exists():
        raise LensbiasError(f"calibration domain {str(path)!r} is neither one of "
                            f"{', '.join(DOMAINS)}, {CORPUS_PREFIX}NAME nor an existing file")
    if path.name.endswith((".jsonl", ".jsonl.gz")):
        texts = [e.text for e in read_jsonl(path).examples]
    else:
        try:
            texts = [path.read_text(encoding="utf-8")]
        except UnicodeDecodeError:
            raise LensbiasError(f"calibration file {path} is not UTF-8 text") from None
    if not any(t.strip() for t in texts):
        raise LensbiasError(f"calibration file {path} holds no text")
    return texts


def calibration_tokens(lm: LoadedModel, cfg: CalibConfig) -> Int[Tensor, "n_seqs seq_len"]:
    """``n_seqs`` windows, each BOS/CLS-led, drawn reproducibly from the domain's token stream."""
    seq_len = min(cfg.seq_len, lm.n_ctx)
    rng = np.random.default_rng(cfg.seed)
    if cfg.domain == "mixed":
        halves = [_windows(lm, domain_texts(d), n, seq_len, rng)
                  for d, n in (("code", (cfg.n_seqs + 1) // 2), ("prose", cfg.n_seqs // 2))]
        return torch.cat([h for h in halves if len(h)])
    return _windows(lm, domain_texts(cfg.domain), cfg.n_seqs, seq_len, rng)


def _windows(lm: LoadedModel, texts: Sequence[str], n: int, seq_len: int,
             rng: np.random.Generator) -> Tensor:
    head: list[int] = []
    stream: list[int] = []
    for text in texts:
        enc = lm.tokenizer.encode(text)
        real = [i for i, s in zip(enc.ids, enc.special) if not s]
        head = head or [i for i, s in zip(enc.ids, enc.special) if s][:1]
        stream.extend(real)
    body = seq_len - len(head)
    if len(stream) <= body:
        raise LensbiasError(f"calibration text has {len(stream)} tokens; need more than {body}")
    starts = rng.integers(0, len(stream) - body, size=n)
    return torch.tensor([head + stream[s:s + body] for s in starts], dtype=torch.long)


def tokens_fingerprint(tokens: Tensor) -> str:
    """sha256 of the calibration token ids: the data's identity in a recipe."""
    return hashlib.sha256(tokens.to(torch.int64).numpy().tobytes()).hexdigest()


class InputStats:
    """Running statistics of one input hook, over calibration tokens (float64)."""

    def __init__(self, d: int, with_xtx: bool = True):
        self.n = 0
        """Tokens seen (rows of every ``update``)."""
        self.n_seqs = 0
        """Sequences seen: the count the references divide the Hessian by."""
        self.xtx: Float[Tensor, "d d"] | None = (torch.zeros(d, d, dtype=torch.float64)
                                                 if with_xtx else None)
        self.abs_sum: Float[Tensor, " d"] = torch.zeros(d, dtype=torch.float64)
        self.sq_sum: Float[Tensor, " d"] = torch.zeros(d, dtype=torch.float64)

    def update(self, x: Float[Tensor, "tokens d"], seqs: int = 1) -> None:
        """Add ``x``, the flattened tokens of ``seqs`` calibration sequences (default 1: the
        references' ``add_batch`` counts a 2-D input as one sample)."""
        x = x.to(torch.float32)
        self.n += x.shape[0]
        self.n_seqs += int(seqs)
        if self.xtx is not None:  # float32 product per batch, float64 running sum
            self.xtx += (x.T @ x).to(torch.float64)
        self.abs_sum += x.abs().sum(0, dtype=torch.float64)
        self.sq_sum += (x * x).sum(0, dtype=torch.float64)

    @property
    def hessian(self) -> Float[Tensor, "d d"]:
        """SparseGPT/GPTQ's H = (2/N) XᵀX with N the number of calibration *sequences*, as
        their ``add_batch`` (``H *= nsamples / (nsamples + tmp)``, ``tmp = inp.shape[0]``)
        computes it; X holds every token of those sequences."""
        if self.xtx is None:
            raise ValueError("these statistics were collected without XᵀX")
        return 2.0 * self.xtx / max(self.n_seqs, 1)

    @property
    def col_norm(self) -> Float[Tensor, " d"]:
        """Wanda's ‖X_j‖₂ over all calibration tokens."""
        return self.sq_sum.sqrt()

    @property
    def mean_abs(self) -> Float[Tensor, " d"]:
        """ASVD/AWQ's mean |x_j|."""
        return self.abs_sum / max(self.n, 1)


def collect_inputs(model: torch.nn.Module, tokens: Tensor, hooks: Sequence[Any],
                   batch_size: int = 16, encoder: bool = False,
                   with_xtx: bool = True) -> dict[str, InputStats]:
    """Statistics of every hook in ``hooks`` over all calibration tokens (specials included,
    as the reference implementations do). A ``LinearView`` in ``hooks`` stands for its
    ``input_hook`` read as its matrix's input (``input_of``: a norm's weight and bias
    applied); a string is the hook's activations as they are."""
    views = {h.input_hook: h for h in hooks if not isinstance(h, str)}
    stats: dict[str, InputStats] = {}
    unique = list(dict.fromkeys(h if isinstance(h, str) else h.input_hook for h in hooks))
    for start in range(0, len(tokens), batch_size):
        batch = tokens[start:start + batch_size]
        mask = torch.ones_like(batch) if encoder else None
        for hook, act in adapter.run_hooks(model, batch, unique, attention_mask=mask).items():
            act = views[hook].input_of(model, act) if hook in views else act
            flat = act.reshape(-1, act[0, 0].numel())
            stats.setdefault(hook, InputStats(flat.shape[1], with_xtx)).update(flat, len(act))
    return stats
