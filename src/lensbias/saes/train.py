"""Train a sparse autoencoder on one hook of an activation cache, through sae-lens.

lensbias does not implement an SAE or a training loop: ``train_sae`` builds a sae-lens
``TopKTrainingSAE`` or ``StandardTrainingSAE`` and hands it to sae-lens' ``SAETrainer``,
with an endless, shuffled, memory-bounded iterator over the store's rows as data provider.

Held-out tokens: ``holdout_fraction`` of the *documents* of every domain (``heldout_rows``:
sequence label ``doc`` for UD prose, ``file`` for code, the example where a token has
neither; drawn per ``domain`` class with ``split_seed``) are never trained on; the quality
written to ``lensbias.json`` (explained variance, L0, dead features) is measured on them.
Every SAE trained with the same ``split_seed`` and ``holdout_fraction`` on stores of the
same tokens holds out the same documents.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import math
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Bool, Int

from lensbias.errors import LensbiasError
from lensbias.store.reader import ActivationStore
from lensbias.threads import Cancelled

INFO_FILE = "lensbias.json"
ARCHITECTURES = ("topk", "standard")
NORMALIZATIONS = ("none", "expected_average_only_in")


@dataclass(frozen=True)
class SAEConfig:
    """How to train one SAE on one hook of a cache."""

    architecture: str = "topk"
    """'topk' (sae-lens TopKTrainingSAE: exactly ``k`` features fire per token; no sparsity
    coefficient to tune) or 'standard' (ReLU SAE with an L1 penalty, ``l1_coefficient``)."""
    d_sae: int | None = None
    """Number of features; None = ``expansion_factor`` × d_in of the hook."""
    expansion_factor: int = 8
    """Features per input dimension, used when ``d_sae`` is None."""
    k: int = 16
    """Active features per token (topk only)."""
    l1_coefficient: float = 5.0
    """Weight of the L1 sparsity penalty (standard only)."""
    lr: float = 3e-4
    """Adam learning rate (constant schedule)."""
    training_tokens: int = 2_000_000
    """Token activations to train on; the store's training rows are cycled (reshuffled
    each pass) when it holds fewer."""
    batch_size: int = 4096
    """Tokens per optimizer step."""
    seed: int = 0
    """Seeds the SAE's initialisation and the order rows are read in."""
    device: str = "cpu"
    """Torch device the SAE is built and trained on (sae-lens' ``device``; rows are read on
    the CPU and moved per batch); checked when ``train_sae`` starts."""
    normalize_activations: str = "expected_average_only_in"
    """'expected_average_only_in' (sae-lens scales inputs to mean norm √d_in during
    training and folds the factor into the weights afterwards, so the saved SAE takes raw
    activations) or 'none'."""
    holdout_fraction: float = 0.1
    """Share of each domain's documents kept out of training for quality (``heldout_rows``)."""
    split_seed: int = 0
    """Seeds which documents are held out (kept apart from ``seed`` so SAEs of other seeds
    share the split)."""
    outlier_norm_ratio: float | None = 10.0
    """Rows whose L2 norm exceeds this × the median norm are not trained on (massive
    activations, attention sinks); None keeps every row."""
    chunk_tokens: int = 65_536
    """Rows read from disk per block; the shuffle buffer holds ``shuffle_blocks`` blocks,
    which bounds memory at about ``chunk_tokens × shuffle_blocks × d_in × 4`` bytes."""
    shuffle_blocks: int = 4
    """Random blocks mixed into one shuffle buffer."""
    progress: bool = False
    """Show sae-lens' progress bar."""

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {self.architecture!r}")
        if self.normalize_activations not in NORMALIZATIONS:
            raise ValueError(f"normalize_activations must be one of {NORMALIZATIONS}, "
                             f"got {self.normalize_activations!r}")
        if self.d_sae is not None and self.d_sae < 1:
            raise ValueError(f"d_sae must be >= 1, got {self.d_sae}")
        if self.expansion_factor < 1 or self.k < 1 or self.batch_size < 1:
            raise ValueError("expansion_factor, k and batch_size must be >= 1")
        if self.training_tokens < self.batch_size:
            raise ValueError(f"training_tokens ({self.training_tokens}) must be at least "
                             f"one batch ({self.batch_size})")
        if not 0.0 <= self.holdout_fraction < 1.0:
            raise ValueError(f"holdout_fraction must be in [0, 1), got {self.holdout_fraction}")
        if self.chunk_tokens < 1 or self.shuffle_blocks < 1:
            raise ValueError("chunk_tokens and shuffle_blocks must be >= 1")

    def width(self, d_in: int) -> int:
        return self.d_sae if self.d_sae is not None else self.expansion_factor * d_in

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SAEConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


DOCUMENT_LABELS = ("doc", "file")
"""Sequence label sets naming a token's source document (UD-EWT ``doc``, code ``file``)."""


def document_groups(store: ActivationStore, labels: tuple[str, ...] = DOCUMENT_LABELS
                    ) -> tuple[Int[np.ndarray, " tokens"], list[str]]:
    """A document id per token and a name per id: the first of ``labels`` the token has
    (``doc=...``, ``file=...``), else its example (``example=...``)."""
    example = store.tokens()["example"].astype(np.int64)
    keys = np.full(len(example), -1, dtype=np.int64)
    names: list[str] = []
    for label in labels:
        if label not in store.label_sets:
            continue
        lab = store.labels(label)
        free = (keys < 0) & (lab >= 0)
        classes = store.classes(label)
        used = np.unique(lab[free])
        offset = len(names)
        names += [f"{label}={classes[c]}" for c in used]
        keys[free] = offset + np.searchsorted(used, lab[free])
    free = keys < 0
    if free.any():
        used = np.unique(example[free])
        offset = len(names)
        names += [f"example={e}" for e in used]
        keys[free] = offset + np.searchsorted(used, example[free])
    return keys, names


def heldout_rows(store: ActivationStore, holdout_fraction: float, seed: int = 0,
                 domain_label: str = "domain") -> tuple[Bool[np.ndarray, " tokens"], dict[str, Any]]:
    """``(held_out, info)``: a mask of the rows of ``holdout_fraction`` of the documents of
    each domain (at least one document of every domain that has two or more), drawn with
    ``seed``; ``info`` counts documents and tokens per domain."""
    groups, names = document_groups(store)
    n = len(groups)
    if domain_label in store.label_sets:
        dom = store.labels(domain_label)
        dom_names = store.classes(domain_label)
    else:
        dom, dom_names = np.zeros(n, np.int64), ["all"]
    rng = np.random.default_rng([seed, 13])
    held = np.zeros(n, dtype=bool)
    per_domain: dict[str, Any] = {}
    for d in np.unique(dom):
        name = dom_names[d] if d >= 0 else "unlabelled"
        docs = np.unique(groups[dom == d])
        n_held = int(round(len(docs) * holdout_fraction))
        if holdout_fraction > 0 and len(docs) >= 2:
            n_held = min(max(1, n_held), len(docs) - 1)
        chosen = rng.choice(docs, size=n_held, replace=False) if n_held else docs[:0]
        rows = (dom == d) & np.isin(groups, chosen)
        held |= rows
        per_domain[name] = {"documents": int(len(docs)), "heldout_documents": int(n_held),
                            "heldout_tokens": int(rows.sum()),
                            "heldout_names": sorted(names[c] for c in chosen)}
    if (~held).sum() < 1:
        raise LensbiasError(f"the store holds {n} tokens: none left to train on after "
                            f"holding out {holdout_fraction:.0%} of its documents")
    return held, {"by": "document", "fraction": holdout_fraction, "seed": seed,
                  "n_tokens": int(held.sum()), "domains": per_domain}


def median_norm(store: ActivationStore, hook: str, stop: int, sample: int = 65_536,
                seed: int = 0, rows: np.ndarray | None = None) -> float:
    """Median L2 norm of up to ``sample`` rows spread over [0, stop), or over ``rows``
    (sorted row indices) when given."""
    pool = np.arange(stop) if rows is None else np.asarray(rows)
    if len(pool) > sample:
        pool = np.sort(np.random.default_rng(seed).choice(pool, sample, replace=False))
    acts = store.activations(hook, pool if rows is not None or len(pool) < stop
                             else slice(0, stop))
    return float(np.median(np.linalg.norm(acts, axis=1)))


class StoreActivations(Iterator[torch.Tensor]):
    """Endless iterator of shuffled ``[batch_size, d]`` float32 CPU tensors from one hook.

    Blocks of ``chunk_tokens`` consecutive rows are read in a seeded random order (a new
    permutation each pass over the rows), ``shuffle_blocks`` of them are pooled, filtered
    for outlier norms and shuffled row-wise; rows left over after the last full batch are
    carried into the next pool, so every row is seen once per pass.
    """

    def __init__(self, store: ActivationStore, hook: str, batch_size: int, start: int,
                 stop: int, seed: int = 0, chunk_tokens: int = 65_536,
                 shuffle_blocks: int = 4, max_norm: float | None = None,
                 skip: Bool[np.ndarray, " tokens"] | None = None,
                 cancel: threading.Event | None = None):
        if stop <= start:
            raise LensbiasError(f"no rows to read from {store.path} (rows {start}:{stop})")
        self.store, self.hook, self.batch_size = store, hook, batch_size
        self.start, self.stop = start, stop
        self.chunk, self.pool_blocks, self.max_norm = chunk_tokens, shuffle_blocks, max_norm
        self.skip = skip  # rows never yielded (held-out documents), indexed like the store
        self.cancel = cancel  # set by another thread: the next batch raises Cancelled
        self.rng = np.random.default_rng(seed)
        self.gen = torch.Generator().manual_seed(seed)
        self.block_starts = np.arange(start, stop, chunk_tokens)
        self._order: list[int] = []
        self._ready: list[torch.Tensor] = []
        self._rest = torch.empty(0, store.d(hook))
        self.rows_read = 0
        self.rows_dropped = 0
        self._pass_rows = 0

    def __iter__(self) -> StoreActivations:
        return self

    def __next__(self) -> torch.Tensor:
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled(f"training on {self.hook} stopped")
        while not self._ready:
            self._refill()
        return self._ready.pop()

    def _next_block(self) -> int:
        if not self._order:
            self._order = self.rng.permutation(self.block_starts).tolist()
        return self._order.pop()

    def _refill(self) -> None:
        parts = [self._rest]
        for _ in range(self.pool_blocks):
            first = self._next_block()
            last = min(first + self.chunk, self.stop)
            acts = torch.from_numpy(self.store.activations(self.hook, slice(first, last)))
            if self.skip is not None:
                acts = acts[torch.from_numpy(~self.skip[first:last])]
            self.rows_read += len(acts)
            if self.max_norm is not None:
                keep = acts.norm(dim=1) <= self.max_norm
                self.rows_dropped += int((~keep).sum())
                acts = acts[keep]
            parts.append(acts)
            if not self._order:  # end of a pass: do not mix two passes' rows twice over
                break
        pool = torch.cat(parts)
        self._pass_rows += len(pool) - len(self._rest)
        if len(pool) == 0 and (self._order or self._pass_rows > 0):
            self._rest = pool  # only skipped or filtered rows so far: read on
            if not self._order:
                self._pass_rows = 0
            return
        if not self._order:
            self._pass_rows = 0
        if len(pool) == 0:
            raise LensbiasError(f"every row of {self.hook} in {self.store.path} was filtered "
                                f"as an outlier; raise or disable outlier_norm_ratio")
        pool = pool[torch.randperm(len(pool), generator=self.gen)]
        n_full = len(pool) // self.batch_size
        if n_full == 0:  # fewer rows than one batch in the whole store: sample with repeats
            idx = torch.randint(len(pool), (self.batch_size,), generator=self.gen)
            self._ready = [pool[idx]]
            self._rest = pool[:0]
            return
        batches = list(pool[: n_full * self.batch_size].split(self.batch_size))
        self._ready = batches[::-1]  # pop() from the end yields them in order
        self._rest = pool[n_full * self.batch_size:]


@contextlib.contextmanager
def _quiet(progress: bool) -> Iterator[None]:
    """Silence sae-lens' progress bar (unless asked for) and its info-level logging."""
    from tqdm.auto import tqdm

    import sae_lens.training.activation_scaler as scaler_module
    import sae_lens.training.sae_trainer as trainer_module

    logger = logging.getLogger("sae_lens")
    level = logger.level
    modules = (trainer_module, scaler_module)
    originals = [m.tqdm for m in modules]
    for m in modules:
        m.tqdm = functools.partial(tqdm, disable=not progress, leave=False)
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for m, original in zip(modules, originals):
            m.tqdm = original
        logger.setLevel(level)


def _import_sae_lens() -> None:
    """Import sae-lens once, without the DeprecationWarning its import of
    transformer_lens.utils emits (nothing lensbias can act on)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import sae_lens  # noqa: F401


def build_training_sae(config: SAEConfig, d_in: int) -> Any:
    """A freshly initialised sae-lens TrainingSAE (seeded by ``config.seed``)."""
    _import_sae_lens()
    from sae_lens import (StandardTrainingSAE, StandardTrainingSAEConfig, TopKTrainingSAE,
                          TopKTrainingSAEConfig)

    common = dict(d_in=d_in, d_sae=config.width(d_in), device=config.device,
                  dtype="float32", normalize_activations=config.normalize_activations)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        if config.architecture == "topk":
            return TopKTrainingSAE(TopKTrainingSAEConfig(k=min(config.k, common["d_sae"]),
                                                         **common))
        return StandardTrainingSAE(StandardTrainingSAEConfig(
            l1_coefficient=config.l1_coefficient, **common))


def trainer_config(config: SAEConfig, n_train_rows: int) -> Any:
    """The sae-lens ``SAETrainerConfig`` lensbias trains with (no wandb, no checkpoints)."""
    _import_sae_lens()
    from sae_lens.config import LoggingConfig, SAETrainerConfig

    steps = config.training_tokens // config.batch_size
    return SAETrainerConfig(
        total_training_samples=steps * config.batch_size,
        train_batch_size_samples=config.batch_size,
        lr=config.lr, lr_end=config.lr, lr_scheduler_name="constant",
        device=config.device,
        # a feature counts as dead (and enters TopK's auxiliary loss) after this many
        # steps without firing: ~a fifth of the run, within sae-lens' usual 1000
        dead_feature_window=int(min(1000, max(20, steps // 5))),
        feature_sampling_window=2000,
        n_checkpoints=0, checkpoint_path=None, save_final_checkpoint=False,
        logger=LoggingConfig(log_to_wandb=False, eval_every_n_wandb_logs=2**31 - 1),
        n_batches_for_norm_estimate=int(max(1, min(100, n_train_rows // config.batch_size))),
    )


def train_sae(store: ActivationStore, hook: str, config: SAEConfig = SAEConfig(),
              out_dir: str | os.PathLike[str] | None = None,
              cancel: threading.Event | None = None) -> Any:
    """Train an SAE on ``hook`` of ``store`` with sae-lens; save it to ``out_dir`` if given.

    Returns the trained sae-lens ``TrainingSAE`` (``encode``/``decode`` take raw
    activations: the normalisation factor is folded in). ``out_dir`` receives sae-lens'
    inference files (``save_inference_model``) and ``lensbias.json``: the config, the
    hook, the store's fingerprint, training speed and held-out quality (``sae_quality``).
    ``cancel`` (set from another thread) stops training at the next batch with
    ``lensbias.threads.Cancelled``; nothing is saved.
    """
    from lensbias.models.adapter import check_device

    check_device(config.device)  # an unknown device or CUDA without one: before any work
    _import_sae_lens()
    from sae_lens.training.sae_trainer import SAETrainer

    d_in = store.d(hook)
    n_tokens = store.n_tokens
    held_mask, held_info = heldout_rows(store, config.holdout_fraction, config.split_seed)
    train_rows = np.flatnonzero(~held_mask)
    n_train = len(train_rows)
    max_norm = None
    if config.outlier_norm_ratio is not None:
        max_norm = config.outlier_norm_ratio * median_norm(store, hook, n_tokens,
                                                           seed=config.seed, rows=train_rows)
    data = StoreActivations(store, hook, config.batch_size, 0, n_tokens, seed=config.seed,
                            chunk_tokens=config.chunk_tokens,
                            shuffle_blocks=config.shuffle_blocks, max_norm=max_norm,
                            skip=held_mask if held_mask.any() else None, cancel=cancel)
    sae = build_training_sae(config, d_in)
    tcfg = trainer_config(config, n_train)
    t0 = time.perf_counter()
    with _quiet(config.progress):
        trainer = SAETrainer(cfg=tcfg, sae=sae, data_provider=data)
        sae = trainer.fit()
    seconds = time.perf_counter() - t0
    sae.eval()
    if out_dir is not None:
        info = {
            "lensbias_sae": 1, "hook": hook, "d_in": d_in, "d_sae": config.width(d_in),
            "config": config.to_dict(),
            "store": {"path": str(store.path), "model": store.model_name,
                      "dataset": store.dataset_name, "n_tokens": n_tokens,
                      "fingerprint": store.fingerprint,
                      "fingerprint_sha256": hashlib.sha256(json.dumps(
                          store.fingerprint, sort_keys=True).encode()).hexdigest()},
            "training": {"n_train_rows": n_train, "heldout": held_info,
                         "max_norm": max_norm, "tokens": tcfg.total_training_samples,
                         "seconds": seconds,
                         "tokens_per_second": tcfg.total_training_samples / max(seconds, 1e-9),
                         "rows_dropped_as_outliers": data.rows_dropped},
            "quality_heldout": heldout_quality(sae, store, hook, np.flatnonzero(held_mask),
                                               max_norm),
        }
        save_sae(sae, out_dir, info)
    return sae


def save_sae(sae: Any, out_dir: str | os.PathLike[str], info: dict[str, Any]) -> Path:
    """sae-lens' ``save_inference_model`` plus ``lensbias.json`` (NaN written as null)."""
    out = Path(out_dir)
    sae.save_inference_model(out)
    (out / INFO_FILE).write_text(json.dumps(_nan_to_none(info), indent=2, sort_keys=True))
    return out


def load_sae(path: str | os.PathLike[str], device: str = "cpu") -> Any:
    """The inference SAE saved by ``train_sae`` (``sae_lens.SAE.load_from_disk``)."""
    _import_sae_lens()
    from sae_lens import SAE

    path = Path(path)
    if not (path / "cfg.json").exists():
        raise LensbiasError(f"{path} holds no saved SAE (no cfg.json); train one with "
                            f"lensbias.saes.train_sae(store, hook, config, out_dir={str(path)!r})")
    try:
        sae = SAE.load_from_disk(path, device=device)
    except Exception as err:  # noqa: BLE001 (safetensors, json and shape errors alike)
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise LensbiasError(f"{path} holds a damaged SAE ({type(err).__name__}: {first}); "
                            "retrain it") from None
    sae.eval()
    return sae


def read_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """``lensbias.json`` of a saved SAE ({} when it was not saved by lensbias)."""
    file = Path(path) / INFO_FILE
    return json.loads(file.read_text()) if file.exists() else {}


class QualityAccumulator:
    """Streaming reconstruction statistics of one SAE over batches of activations."""

    def __init__(self, d_sae: int):
        self.n = 0
        self.sse = 0.0
        self.sum_x: torch.Tensor | None = None
        self.sum_sq = 0.0
        self.l0_sum = 0.0
        self.fired = torch.zeros(d_sae, dtype=torch.bool)

    def update(self, x: torch.Tensor, feats: torch.Tensor, recon: torch.Tensor) -> None:
        x64 = x.double()
        self.n += len(x)
        self.sse += float(((x64 - recon.double()) ** 2).sum())
        s = x64.sum(0).cpu()
        self.sum_x = s if self.sum_x is None else self.sum_x + s
        self.sum_sq += float((x64 ** 2).sum())
        active = feats > 0
        self.l0_sum += float(active.sum())
        self.fired |= active.any(0).cpu()

    def result(self) -> dict[str, float | int]:
        if self.n == 0:
            nan = float("nan")
            return {"n_tokens": 0, "explained_variance": nan, "mse": nan, "l0": nan,
                    "dead_features": int(self.fired.numel()), "dead_fraction": 1.0}
        assert self.sum_x is not None
        sst = self.sum_sq - float((self.sum_x ** 2).sum()) / self.n
        dead = int((~self.fired).sum())
        return {"n_tokens": self.n,
                "explained_variance": 1.0 - self.sse / sst if sst > 0 else float("nan"),
                "mse": self.sse / self.n / len(self.sum_x),
                "l0": self.l0_sum / self.n,
                "dead_features": dead, "dead_fraction": dead / self.fired.numel()}


@torch.no_grad()
def encode_decode(sae: Any, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(features, reconstruction)`` of raw activations, as dense float32 tensors."""
    device = next(sae.parameters()).device
    feats = sae.encode(x.to(device))
    if feats.is_sparse:
        feats = feats.to_dense()
    return feats, sae.decode(feats)


@torch.no_grad()
def sae_quality(sae: Any, acts: np.ndarray | torch.Tensor, batch_tokens: int = 4096
                ) -> dict[str, float | int]:
    """Explained variance (1 − SSE/SST), MSE per element, mean L0 and features that never
    fire (``dead_features``, ``dead_fraction``) of ``sae`` on ``acts`` ``[n, d_in]``."""
    x_all = torch.as_tensor(np.asarray(acts, dtype=np.float32) if isinstance(acts, np.ndarray)
                            else acts.float())
    acc = QualityAccumulator(int(sae.cfg.d_sae))
    _feed(acc, sae, x_all, batch_tokens)
    return acc.result()


def heldout_quality(sae: Any, store: ActivationStore, hook: str, rows: np.ndarray,
                    max_norm: float | None, block: int = 32768) -> dict[str, float | int] | None:
    """``sae_quality`` on the store's ``rows`` at ``hook``, read ``block`` rows at a time
    (memory bounded by the block, not by the held-out share), rows above ``max_norm``
    left out as in training; None when no row is left."""
    acc = QualityAccumulator(int(sae.cfg.d_sae))
    for start in range(0, len(rows), block):
        x = store.activations(hook, rows[start:start + block])
        if max_norm is not None:
            x = x[np.linalg.norm(x, axis=1) <= max_norm]
        _feed(acc, sae, torch.as_tensor(np.asarray(x, dtype=np.float32)), 4096)
    return acc.result() if acc.n else None


def _feed(acc: QualityAccumulator, sae: Any, x: torch.Tensor, batch_tokens: int) -> None:
    for part in x.split(batch_tokens):
        feats, recon = encode_decode(sae, part)
        acc.update(part.to(feats.device), feats, recon)


def _nan_to_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_nan_to_none(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return _nan_to_none(value.item())
    return value
