"""Store, stage 2 of 3: run a model over a concept dataset and stream activations to HDF5.

Rows are written batch by batch (memory bounded by ``batch_size × window``); the file is
written under a temporary name and renamed only when complete, under an exclusive lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import TypeVar

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

T = TypeVar("T")


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


def iter_windows(lm: LoadedModel, dataset: ConceptDataset, window: int
                 ) -> Iterator[tuple[Window, list[tuple[int, int]]]]:
    """Tokenize example by example and cut each into windows, lazily: every window with its
    kept tokens' character offsets (so callers never hold the whole dataset's tokens)."""
    for index, example in enumerate(dataset.examples):
        enc = lm.tokenizer.encode(example.text)
        real = [i for i, s in enumerate(enc.special) if not s]
        head = [enc.ids[i] for i in range(real[0] if real else len(enc.ids))]
        tail = [enc.ids[i] for i in range(real[-1] + 1, len(enc.ids))] if real else []
        room = window - len(head) - len(tail)
        if room < 1:
            raise LensbiasError(f"window {window} leaves no room for text tokens")
        for first in range(0, len(real), room):
            chosen = real[first:first + room]
            body = [enc.ids[i] for i in chosen]
            keep = list(range(len(head), len(head) + len(body)))
            yield (Window(index, head + body + tail, keep, first),
                   [tuple(enc.offsets[i]) for i in chosen])


def plan_windows(lm: LoadedModel, dataset: ConceptDataset, window: int
                 ) -> tuple[list[Window], list[list[tuple[int, int]]]]:
    """Every window of ``iter_windows`` in a list; also each example's real-token offsets."""
    windows: list[Window] = []
    offsets: list[list[tuple[int, int]]] = [[] for _ in dataset.examples]
    for w, offs in iter_windows(lm, dataset, window):
        windows.append(w)
        offsets[w.example].extend(offs)
    return windows, offsets


def _write(path: Path, lm: LoadedModel, dataset: ConceptDataset, hooks: tuple[str, ...],
           window: int, config: fmt.CacheConfig, fp: dict, progress: bool) -> None:
    """Stream windows → batches → rows: memory is bounded by the write buffers (16 MiB of
    activations, ~65k rows of token columns) and the label classes, whatever the dataset's
    size. Row datasets grow as the buffers are flushed."""
    buckets = frequency_buckets(lm.token_counts, lm.tokenizer.vocab_size)
    with h5py.File(path, "w") as f:
        _write_header(f, lm, dataset, fp, config)
        columns = _Columns(f, dataset, buckets)
        acts = _Acts(f)
        bar = _progress(len(dataset.examples), f"cache {lm.name} on {dataset.name}", progress)
        model = adapter.to_device(lm.model, config.device)
        done_examples = 0
        for batch in _batches(iter_windows(lm, dataset, window), config.batch_size):
            windows = [w for w, _ in batch]
            tokens, mask = _pad(windows, pad_id=windows[0].ids[0])
            got = adapter.run_hooks(model, tokens.to(config.device), hooks,
                                    attention_mask=mask.to(config.device) if lm.is_encoder else None)
            rows = [(b, p) for b, w in enumerate(windows) for p in w.keep]
            index_b = torch.tensor([r[0] for r in rows])
            index_p = torch.tensor([r[1] for r in rows])
            acts.append({hook: value[index_b, index_p].to("cpu", getattr(torch, config.dtype))
                         for hook, value in got.items()}, config.dtype)
            columns.append(batch)
            bar.update(windows[-1].example + 1 - done_examples)
            done_examples = windows[-1].example + 1
        bar.close()
        if columns.n == 0:
            raise LensbiasError(f"dataset {dataset.name} has no text tokens to cache")
        acts.flush()
        columns.finish()
        strings = h5py.string_dtype("utf-8")
        f.create_dataset("examples/id", data=[ex.id for ex in dataset.examples], dtype=strings)
        f.create_dataset("examples/text", data=[ex.text for ex in dataset.examples],
                         dtype=strings)
        for name in dataset.seq_label_sets:
            _write_codes(f, f"examples/labels/{name}",
                         [ex.seq_labels.get(name) for ex in dataset.examples])
        f.attrs["complete"] = 1


def _write_header(f: h5py.File, lm: LoadedModel, dataset: ConceptDataset, fp: dict,
                  config: fmt.CacheConfig) -> None:
    f.attrs.update({"encoding-type": fmt.ENCODING_TYPE, "encoding-version": fmt.VERSION,
                    "lensbias-version": __version__, "complete": 0,
                    "fingerprint": json.dumps(fp, sort_keys=True),
                    "fingerprint-sha256": fmt.fingerprint_sha(fp), "model": lm.name,
                    "dataset": dataset.name, "config": json.dumps(fmt.config_dict(config))})


class _Acts:
    """The activation datasets, written in blocks of at most BUFFER_BYTES (all hooks)."""

    BUFFER_BYTES = 16 << 20

    def __init__(self, f: h5py.File):
        self.f, self.rows, self.written, self.nbytes = f, 0, 0, 0
        self.datasets: dict[str, h5py.Dataset] = {}
        self.parts: dict[str, list[np.ndarray]] = {}

    def append(self, kept: dict[str, torch.Tensor], dtype: str) -> None:
        """One batch's kept rows per hook (``[rows, *shape]``); flushes when the buffer is full."""
        for hook, value in kept.items():
            if hook not in self.datasets:
                width = value[0].numel()
                ds = self.f.create_dataset(f"acts/{hook}", shape=(0, width),
                                           maxshape=(None, width), dtype=dtype,
                                           chunks=(1024, width))
                ds.attrs["shape"] = list(value.shape[1:])  # e.g. [n_heads, d_head]
                self.datasets[hook], self.parts[hook] = ds, []
            block = value.flatten(1).numpy()
            self.parts[hook].append(block)
            self.nbytes += block.nbytes
        self.rows += len(next(iter(kept.values())))
        if self.nbytes >= self.BUFFER_BYTES:
            self.flush()

    def flush(self) -> None:
        for hook, parts in self.parts.items():
            if parts:
                ds = self.datasets[hook]
                ds.resize(self.rows, axis=0)
                ds[self.written:self.rows] = np.concatenate(parts)
                self.parts[hook] = []
        self.written, self.nbytes = self.rows, 0


class _Columns:
    """The per-row datasets (tokens/*, labels/*), appended in blocks of about CHUNK rows.

    Labels are written as codes into a provisional class list (every value the dataset's
    spans hold for the set; every frequency bucket), then renumbered in place, chunk by
    chunk, to the classes that occur on a token, sorted (the layout docs/store.md specifies)."""

    CHUNK = 65536

    def __init__(self, f: h5py.File, dataset: ConceptDataset, buckets: list[str] | None):
        self.f, self.n, self.dataset = f, 0, dataset
        self.label_sets, self.buckets = tuple(dataset.label_sets), buckets
        self.columns = {"tokens/ids": ((), np.int32), "tokens/example": ((), np.int32),
                        "tokens/position": ((), np.int32), "tokens/offsets": ((2,), np.int32)}
        self.classes: dict[str, list[str]] = {}
        self.lookup: dict[str, dict[str, int]] = {}
        values: dict[str, set[str]] = {s: set() for s in self.label_sets}
        for ex in dataset.examples:
            for span in ex.spans:
                for s, v in span.labels.items():
                    if s in values:
                        values[s].add(v)
        for s in self.label_sets:
            self.columns[f"labels/{s}"] = ((), np.int16)
            self._classes(s, sorted(values[s]))
        if buckets is not None:
            self.columns[f"labels/{FREQ_LABEL_SET}"] = ((), np.int16)
            self._classes(FREQ_LABEL_SET, sorted(set(buckets)))
            self.bucket_codes = np.asarray([self.lookup[FREQ_LABEL_SET][b] for b in buckets],
                                           np.int16)
        self.datasets = {key: f.create_dataset(key, shape=(0, *tail), maxshape=(None, *tail),
                                               dtype=dtype, chunks=(self.CHUNK, *tail))
                         for key, (tail, dtype) in self.columns.items()}
        self.pending: dict[str, list[np.ndarray]] = {}
        self.buffered = 0

    def _classes(self, label_set: str, classes: list[str]) -> None:
        self.classes[label_set] = classes
        self.lookup[label_set] = {c: i for i, c in enumerate(classes)}

    def append(self, batch: list[tuple[Window, list[tuple[int, int]]]]) -> None:
        ids, example, position, offsets = [], [], [], []
        per_set: dict[str, list[str | None]] = {s: [] for s in self.label_sets}
        for w, offs in batch:
            ids.extend(w.ids[p] for p in w.keep)
            example.extend([w.example] * len(w.keep))
            position.extend(range(w.first, w.first + len(w.keep)))
            offsets.extend(offs)
            spans = self.dataset.examples[w.example].spans
            for s in self.label_sets:  # per token, so aligning a window = slicing the example
                per_set[s].extend(align_labels(spans, offs, s))
        n = len(ids)
        data: dict[str, np.ndarray] = {
            "tokens/ids": np.asarray(ids, np.int32), "tokens/example": np.asarray(example, np.int32),
            "tokens/position": np.asarray(position, np.int32),
            "tokens/offsets": np.asarray(offsets, np.int32).reshape(-1, 2)}
        for s, values in per_set.items():
            lookup = self.lookup[s]
            data[f"labels/{s}"] = np.asarray([lookup[v] if v is not None else -1
                                              for v in values], np.int16)
        if self.buckets is not None:
            data[f"labels/{FREQ_LABEL_SET}"] = self.bucket_codes[data["tokens/ids"]]
        for key, value in data.items():
            self.pending.setdefault(key, []).append(value)
        self.n += n
        self.buffered += n
        if self.buffered >= self.CHUNK:
            self.flush()

    def flush(self) -> None:
        """Write the buffered rows (at most about CHUNK of them) in one call per column."""
        if not self.buffered:
            return
        start = self.n - self.buffered
        for key, parts in self.pending.items():
            ds = self.datasets[key]
            ds.resize(self.n, axis=0)
            ds[start:self.n] = np.concatenate(parts)
        self.pending, self.buffered = {}, 0

    def _map(self, label_set: str, table: np.ndarray) -> None:
        ds = self.f[f"labels/{label_set}"]
        for start in range(0, ds.shape[0], self.CHUNK):
            codes = ds[start:start + self.CHUNK]
            ds[start:start + self.CHUNK] = table[codes]  # index -1 reads table's last entry

    def finish(self) -> None:
        """Keep only classes that occur, sorted; set each label dataset's ``classes``."""
        self.flush()
        sets = [*self.label_sets] + ([FREQ_LABEL_SET] if self.buckets is not None else [])
        for s in sets:
            classes = self.classes.get(s, [])
            ds = self.f[f"labels/{s}"]
            seen = np.zeros(len(classes) + 1, bool)
            for start in range(0, ds.shape[0], self.CHUNK):
                seen[ds[start:start + self.CHUNK]] = True  # -1 marks the last slot
            kept = [c for i, c in enumerate(classes) if seen[i]]
            if len(kept) != len(classes):
                index = {c: i for i, c in enumerate(kept)}
                self._map(s, np.asarray([index.get(c, -1) for c in classes] + [-1], np.int16))
            ds.attrs["classes"] = json.dumps(kept)


def _write_codes(f: h5py.File, key: str, values: list[str | None]) -> None:
    classes = sorted({v for v in values if v is not None})
    lookup = {c: i for i, c in enumerate(classes)}
    codes = np.asarray([lookup[v] if v is not None else -1 for v in values], dtype=np.int16)
    f[key] = codes
    f[key].attrs["classes"] = json.dumps(classes)


def _batches(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive lists of ``size`` items (the last may be shorter), lazily."""
    it = iter(items)
    while batch := list(islice(it, size)):
        yield batch


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
