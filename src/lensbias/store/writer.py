"""Store, stage 2 of 3: run a model over a concept dataset and stream activations to HDF5.

Rows are written batch by batch (memory bounded by ``batch_size × window``); the file is
written under a temporary name and renamed only when complete, under an exclusive lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch

from lensbias import __version__
from lensbias.concepts.align import align_labels
from lensbias.concepts.frequency import FREQ_LABEL_SET, frequency_buckets
from lensbias.concepts.schema import ConceptDataset
from lensbias.errors import LensbiasError
from lensbias.models import LoadedModel, adapter
from lensbias.store import format as fmt
from lensbias.store.reader import read_fingerprint


@dataclass(frozen=True)
class Window:
    """One forward pass worth of one example: token ids and which positions are kept."""

    example: int
    ids: list[int]
    keep: list[int]
    """Positions in ``ids`` of real (non-special) tokens, in order."""
    first: int
    """Index of the first kept token among the example's real tokens."""


def cache_activations(lm: LoadedModel, dataset: ConceptDataset, out: str | os.PathLike[str],
                      config: fmt.CacheConfig = fmt.CacheConfig(), force: bool = False,
                      progress: bool = False) -> Path:
    """Cache ``config.hooks`` of ``lm`` on ``dataset`` into ``out``; reuse a matching file.

    A file with another fingerprint (model, dataset, hooks, window, dtype or version) is
    refused unless ``force``; a file that is not a complete lensbias cache likewise.
    """
    out = Path(out)
    hooks = tuple(config.hooks or adapter.default_hooks(lm.model))
    _check_hooks(lm, hooks)
    window = config.window or min(lm.n_ctx, 256)
    fp = fmt.fingerprint(lm.weights_hash(), fmt.dataset_hash(dataset), hooks, window,
                         config.dtype, __version__)
    if not out.parent.is_dir():
        raise LensbiasError(f"output folder {out.parent} does not exist")
    with _lock(out):
        _remove_orphans(out)
        if _reusable(out, fp, force):
            return out
        tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
        try:
            _write(tmp, lm, dataset, hooks, window, config, fp, progress)
            os.replace(tmp, out)
        except OSError as err:
            raise LensbiasError(f"could not write {out}: {err.strerror or err}") from None
        finally:
            tmp.unlink(missing_ok=True)
    return out


def _check_hooks(lm: LoadedModel, hooks: tuple[str, ...]) -> None:
    known = set(adapter.hook_names(lm.model))
    for hook in hooks:
        if adapter.resolve_hook(lm.model, hook) not in known:
            near = sorted(h for h in known if h.endswith(hook.split(".")[-1]))[:3]
            raise LensbiasError(f"model {lm.name} has no hook {hook!r}"
                                + (f" (e.g. {', '.join(near)})" if near else ""))


def _reusable(out: Path, fp: dict, force: bool) -> bool:
    if not out.exists():
        return False
    try:
        found = read_fingerprint(out)
    except LensbiasError as err:
        if force:
            return False
        raise LensbiasError(f"{err}; pass --force (force=True) to rebuild it") from None
    if found == fp:
        return True
    if force:
        return False
    changed = [k for k in fp if found.get(k) != fp[k]]
    raise LensbiasError(f"{out} is a cache of a different {', '.join(changed)}; pass --force "
                        "(force=True) to rebuild it or choose another output file")


def _remove_orphans(out: Path) -> None:
    """Delete temporary files of writers that died (we hold the lock: none is alive)."""
    for orphan in out.parent.glob(f".{out.name}.tmp-*"):
        orphan.unlink(missing_ok=True)


@contextlib.contextmanager
def _lock(out: Path) -> Iterator[None]:
    """One writer per output file; a second waits, then finds the finished file."""
    lock_path = out.with_name(f".{out.name}.lock")
    try:
        handle = open(lock_path, "a")
    except OSError as err:
        raise LensbiasError(f"cannot write in {out.parent}: {err.strerror}") from None
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def plan_windows(lm: LoadedModel, dataset: ConceptDataset, window: int
                 ) -> tuple[list[Window], list[list[tuple[int, int]]]]:
    """Tokenize every example and cut it into windows; also each example's real-token offsets."""
    windows, offsets = [], []
    for index, example in enumerate(dataset.examples):
        enc = lm.tokenizer.encode(example.text)
        real = [i for i, s in enumerate(enc.special) if not s]
        head = [enc.ids[i] for i in range(real[0] if real else len(enc.ids))]
        tail = [enc.ids[i] for i in range(real[-1] + 1, len(enc.ids))] if real else []
        room = window - len(head) - len(tail)
        if room < 1:
            raise LensbiasError(f"window {window} leaves no room for text tokens")
        offsets.append([enc.offsets[i] for i in real])
        for first in range(0, len(real), room):
            body = [enc.ids[i] for i in real[first:first + room]]
            keep = list(range(len(head), len(head) + len(body)))
            windows.append(Window(index, head + body + tail, keep, first))
    return windows, offsets


def _write(path: Path, lm: LoadedModel, dataset: ConceptDataset, hooks: tuple[str, ...],
           window: int, config: fmt.CacheConfig, fp: dict, progress: bool) -> None:
    windows, offsets = plan_windows(lm, dataset, window)
    n_tokens = sum(len(w.keep) for w in windows)
    if n_tokens == 0:
        raise LensbiasError(f"dataset {dataset.name} has no text tokens to cache")
    with h5py.File(path, "w") as f:
        _write_metadata(f, lm, dataset, windows, offsets, fp, config)
        acts = {h: None for h in hooks}
        row = 0
        bar = _progress(n_tokens, f"cache {lm.name} on {dataset.name}", progress)
        model = adapter.to_device(lm.model, config.device)
        for batch in _batches(windows, config.batch_size):
            tokens, mask = _pad(batch, pad_id=batch[0].ids[0])
            got = adapter.run_hooks(model, tokens.to(config.device), hooks,
                                    attention_mask=mask.to(config.device) if lm.is_encoder else None)
            rows = [(b, p) for b, w in enumerate(batch) for p in w.keep]
            index_b = torch.tensor([r[0] for r in rows])
            index_p = torch.tensor([r[1] for r in rows])
            for hook, value in got.items():
                kept = value[index_b, index_p].to("cpu", getattr(torch, config.dtype))
                if acts[hook] is None:
                    acts[hook] = f.create_dataset(
                        f"acts/{hook}", shape=(n_tokens, kept[0].numel()), dtype=config.dtype,
                        chunks=(min(n_tokens, 1024), kept[0].numel()))
                    acts[hook].attrs["shape"] = list(kept.shape[1:])  # e.g. [n_heads, d_head]
                kept = kept.flatten(1).numpy()
                acts[hook][row:row + len(rows)] = kept
            row += len(rows)
            bar.update(len(rows))
        bar.close()
        f.attrs["complete"] = 1


def _write_metadata(f: h5py.File, lm: LoadedModel, dataset: ConceptDataset,
                    windows: list[Window], offsets: list[list[tuple[int, int]]], fp: dict,
                    config: fmt.CacheConfig) -> None:
    f.attrs.update({"encoding-type": fmt.ENCODING_TYPE, "encoding-version": fmt.VERSION,
                    "lensbias-version": __version__, "complete": 0,
                    "fingerprint": json.dumps(fp, sort_keys=True),
                    "fingerprint-sha256": fmt.fingerprint_sha(fp), "model": lm.name,
                    "dataset": dataset.name, "config": json.dumps(fmt.config_dict(config))})
    example = np.concatenate([[w.example] * len(w.keep) for w in windows]).astype(np.int32)
    position = np.concatenate([np.arange(w.first, w.first + len(w.keep)) for w in windows])
    ids = np.concatenate([[w.ids[p] for p in w.keep] for w in windows]).astype(np.int32)
    flat_offsets = np.asarray([o for per in offsets for o in per], dtype=np.int32).reshape(-1, 2)
    f["tokens/ids"], f["tokens/example"] = ids, example
    f["tokens/position"] = position.astype(np.int32)
    f["tokens/offsets"] = flat_offsets
    for label_set in dataset.label_sets:
        per_token = [lab for ex, offs in zip(dataset.examples, offsets)
                     for lab in align_labels(ex.spans, offs, label_set)]
        _write_codes(f, f"labels/{label_set}", per_token)
    buckets = frequency_buckets(lm.token_counts, lm.tokenizer.vocab_size)
    if buckets is not None:
        _write_codes(f, f"labels/{FREQ_LABEL_SET}", [buckets[i] for i in ids])
    strings = h5py.string_dtype("utf-8")
    f.create_dataset("examples/id", data=[ex.id for ex in dataset.examples], dtype=strings)
    f.create_dataset("examples/text", data=[ex.text for ex in dataset.examples], dtype=strings)
    for name in dataset.seq_label_sets:
        _write_codes(f, f"examples/labels/{name}",
                     [ex.seq_labels.get(name) for ex in dataset.examples])


def _write_codes(f: h5py.File, key: str, values: list[str | None]) -> None:
    classes = sorted({v for v in values if v is not None})
    lookup = {c: i for i, c in enumerate(classes)}
    codes = np.asarray([lookup[v] if v is not None else -1 for v in values], dtype=np.int16)
    f[key] = codes
    f[key].attrs["classes"] = json.dumps(classes)


def _batches(windows: list[Window], size: int) -> Iterator[list[Window]]:
    for i in range(0, len(windows), size):
        yield windows[i:i + size]


def _pad(batch: list[Window], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to the longest window; the mask is 1 on real positions."""
    width = max(len(w.ids) for w in batch)
    tokens = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for b, w in enumerate(batch):
        tokens[b, :len(w.ids)] = torch.tensor(w.ids)
        mask[b, :len(w.ids)] = 1
    return tokens, mask


def _progress(total: int, desc: str, enabled: bool):  # noqa: ANN202 (tqdm type)
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="tok", disable=not enabled, leave=False)
