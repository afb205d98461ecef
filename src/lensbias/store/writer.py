"""Store, stage 2 of 3: run a model over a concept dataset and stream activations to HDF5.

Windows are read in pools of about ``POOL_BYTES`` of activations; inside a pool they are run
in order of length, in batches of at most ``batch_size × window`` token positions, so batches
hold windows of nearly equal length (little padding). Every row is then written at its own
offset, in the dataset's order: the file's layout does not depend on the batching. The file is
written under a temporary name and renamed only when complete, under an exclusive lock; a
SIGTERM during writing removes the temporary file as Ctrl-C does.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import threading
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import accumulate, islice
from pathlib import Path
from typing import TypeVar

import h5py
import numpy as np
import torch

from lensbias import __version__
from lensbias.concepts.align import align_labels
from lensbias.concepts.frequency import FREQ_LABEL_SET, frequency_buckets
from lensbias.concepts.schema import ConceptDataset, Span
from lensbias.errors import LensbiasError
from lensbias.models import LoadedModel, adapter
from lensbias.store import format as fmt
from lensbias.store.reader import read_fingerprint

T = TypeVar("T")

POOL_BYTES = 64 << 20
"""Activation bytes (all hooks, storage dtype) a pool of windows may hold while its batches run
in length order; a pool holds 4 to 8 full batches (``batch_size × window`` tokens each), so
that windows of equal length meet while the pool's bookkeeping stays small."""


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
            with _sigterm_as_exit():
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
    while True:
        try:
            handle = open(lock_path, "a")
        except OSError as err:
            raise LensbiasError(f"cannot write in {out.parent}: {err.strerror}") from None
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:  # the holder before us may have removed the file we waited on: lock the new one
            same = os.fstat(handle.fileno()).st_ino == os.stat(lock_path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        handle.close()
    try:
        yield
    finally:
        lock_path.unlink(missing_ok=True)  # while still held: a waiter then retries
        handle.close()


@contextlib.contextmanager
def _sigterm_as_exit() -> Iterator[None]:
    """While writing, SIGTERM raises SystemExit(143) so the ``finally`` clean-ups run (the
    temporary file and the lock are removed), as KeyboardInterrupt does for SIGINT. Only
    where SIGTERM has its default action: a handler someone installed (the CLI's, which
    raises its own exception) is left in place."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL):
        yield
        return

    def stop(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


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
    """Stream windows → pools → length-sorted batches → rows in dataset order: memory is
    bounded by one pool (``POOL_BYTES``), the write buffers and the label classes, whatever
    the dataset's size. Row datasets grow pool by pool."""
    buckets = frequency_buckets(lm.token_counts, lm.tokenizer.vocab_size)
    budget = config.batch_size * window
    pool_tokens = pool_size(lm, hooks, config.dtype, budget)
    with h5py.File(path, "w") as f:
        _write_header(f, lm, dataset, fp, config)
        columns = _Columns(f, dataset, buckets)
        acts = _Acts(f, config.dtype)
        bar = _progress(f"cache {lm.name} on {dataset.name}", progress)
        model = adapter.to_device(lm.model, config.device)
        n_examples = len(dataset.examples)
        for pool in _pools(iter_windows(lm, dataset, window), pool_tokens):
            acts.append(*_run_pool(model, lm, [w for w, _ in pool], hooks, budget, config))
            columns.append(pool)
            bar.update(sum(len(w.keep) for w, _ in pool))
            bar.set_postfix_str(f"{pool[-1][0].example + 1}/{n_examples} examples", refresh=False)
        bar.close()
        if columns.n == 0:
            raise LensbiasError(f"dataset {dataset.name} has no text tokens to cache")
        acts.flush()
        columns.finish()
        strings = h5py.string_dtype("utf-8")
        for key, values in (("examples/id", [ex.id for ex in dataset.examples]),
                            ("examples/text", [ex.text for ex in dataset.examples])):
            # HDF5 filters cannot apply to variable-length strings: a sha256 stands in
            f.create_dataset(key, data=values, dtype=strings).attrs["sha256"] = \
                fmt.strings_sha(values)
        for name in dataset.seq_label_sets:
            _write_codes(f, f"examples/labels/{fmt.encode_name(name)}",
                         [ex.seq_labels.get(name) for ex in dataset.examples])
        f.attrs["complete"] = 1


_CHECKSUM = {"fletcher32": True}
"""Every dataset carries HDF5's Fletcher-32 checksum per chunk; h5py verifies it on read."""


def pool_size(lm: LoadedModel, hooks: tuple[str, ...], dtype: str, budget: int) -> int:
    """Tokens per pool: POOL_BYTES of rows, clamped to 4..8 batches of ``budget`` positions."""
    return min(8 * budget, max(4 * budget, POOL_BYTES // _row_bytes_guess(lm, hooks, dtype)))


def _row_bytes_guess(lm: LoadedModel, hooks: tuple[str, ...], dtype: str) -> int:
    """Bytes one stored token takes over all hooks (MLP hooks at d_mlp, others at d_model)."""
    cfg = lm.model.cfg
    d_model = int(cfg.d_model)
    d_mlp = int(getattr(cfg, "d_mlp", None) or 4 * d_model)
    width = sum(d_mlp if "mlp.hook_pre" in h or "mlp.hook_post" in h else d_model for h in hooks)
    return max(1, width * (4 if dtype == "float32" else 2))


def _pools(items: Iterable[tuple[Window, list[tuple[int, int]]]], tokens: int
           ) -> Iterator[list[tuple[Window, list[tuple[int, int]]]]]:
    """Consecutive runs of windows holding at least ``tokens`` kept tokens (the last: fewer)."""
    pool: list[tuple[Window, list[tuple[int, int]]]] = []
    held = 0
    for item in items:
        pool.append(item)
        held += len(item[0].keep)
        if held >= tokens:
            yield pool
            pool, held = [], 0
    if pool:
        yield pool


MAX_PADDING = 0.05
"""A batch already filled to MIN_FILL of its budget is closed before a window that would
make more than this fraction of its positions padding."""
MIN_FILL = 0.25


def length_batches(windows: list[Window], budget: int) -> list[list[int]]:
    """Indices of ``windows`` in length order (ties: dataset order), cut into batches whose
    padded size (count × longest) stays within ``budget`` positions (one window at least),
    and whose padding stays under MAX_PADDING once they hold MIN_FILL × ``budget``."""
    order = sorted(range(len(windows)), key=lambda i: len(windows[i].ids))
    batches: list[list[int]] = []
    current: list[int] = []
    real = 0
    for i in order:  # ascending: the newest window is the batch's longest
        width = len(windows[i].ids)
        if current:
            padded = (len(current) + 1) * width
            filled = len(current) * len(windows[current[-1]].ids) >= MIN_FILL * budget
            if padded > budget or (filled and 1 - (real + width) / padded > MAX_PADDING):
                batches.append(current)
                current, real = [], 0
        current.append(i)
        real += width
    if current:
        batches.append(current)
    return batches


def _run_pool(model: object, lm: LoadedModel, windows: list[Window], hooks: tuple[str, ...],
              budget: int, config: fmt.CacheConfig
              ) -> tuple[dict[str, np.ndarray], dict[str, list[int]]]:
    """The kept rows of every window of a pool, per hook, in the pool's (dataset) order; and
    per hook the shape of one row before flattening (e.g. ``[n_heads, d_head]``)."""
    starts = [0, *accumulate(len(w.keep) for w in windows)]
    out: dict[str, np.ndarray] = {}
    shapes: dict[str, list[int]] = {}
    for batch in length_batches(windows, budget):
        chosen = [windows[i] for i in batch]
        tokens, mask = pad_windows(chosen, pad_id=chosen[0].ids[0])
        got = adapter.run_hooks(model, tokens.to(config.device), hooks,
                                attention_mask=mask.to(config.device) if lm.is_encoder else None)
        index_b = torch.tensor([b for b, w in enumerate(chosen) for _ in w.keep])
        index_p = torch.tensor([p for w in chosen for p in w.keep])
        dest = np.concatenate([np.arange(starts[i], starts[i + 1]) for i in batch])
        for hook, value in got.items():
            rows = _to_storage(value[index_b, index_p].flatten(1), config.dtype)
            if hook not in out:
                out[hook] = np.empty((starts[-1], rows.shape[1]), rows.dtype)
                shapes[hook] = list(value.shape[2:])
            out[hook][dest] = rows
    return out, shapes


def _to_storage(value: torch.Tensor, dtype: str) -> np.ndarray:
    """Rows in the storage dtype; bfloat16 as its raw 16 bits (HDF5 has no bfloat16)."""
    if dtype == "bfloat16":
        return value.to("cpu", torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    return value.to("cpu", getattr(torch, dtype)).numpy()


def _write_header(f: h5py.File, lm: LoadedModel, dataset: ConceptDataset, fp: dict,
                  config: fmt.CacheConfig) -> None:
    f.attrs.update({"encoding-type": fmt.ENCODING_TYPE, "encoding-version": fmt.VERSION,
                    "lensbias-version": __version__, "complete": 0,
                    "fingerprint": json.dumps(fp, sort_keys=True),
                    "fingerprint-sha256": fmt.fingerprint_sha(fp), "model": lm.name,
                    "dataset": dataset.name, "config": json.dumps(fmt.config_dict(config))})


class _Acts:
    """The activation datasets, written in blocks of at least BUFFER_BYTES (all hooks)."""

    BUFFER_BYTES = 16 << 20

    def __init__(self, f: h5py.File, dtype: str):
        self.f, self.dtype, self.rows, self.written, self.nbytes = f, dtype, 0, 0, 0
        self.datasets: dict[str, h5py.Dataset] = {}
        self.parts: dict[str, list[np.ndarray]] = {}

    def append(self, kept: dict[str, np.ndarray], shapes: dict[str, list[int]]) -> None:
        """One pool's rows per hook (``[rows, width]``); flushes when the buffer is full."""
        for hook, block in kept.items():
            if hook not in self.datasets:
                width = block.shape[1]
                ds = self.f.create_dataset(f"acts/{hook}", shape=(0, width),
                                           maxshape=(None, width), dtype=block.dtype,
                                           chunks=(1024, width), **_CHECKSUM)
                ds.attrs["shape"] = shapes[hook]  # e.g. [n_heads, d_head]
                if self.dtype == "bfloat16":
                    ds.attrs["storage"] = "bfloat16"
                self.datasets[hook], self.parts[hook] = ds, []
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
                ds[self.written:self.rows] = parts[0] if len(parts) == 1 else np.concatenate(parts)
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
            self.columns[_label_key(s)] = ((), np.int16)
            self._classes(s, sorted(values[s]))
        if buckets is not None:
            self.columns[_label_key(FREQ_LABEL_SET)] = ((), np.int16)
            self._classes(FREQ_LABEL_SET, sorted(set(buckets)))
            self.bucket_codes = np.asarray([self.lookup[FREQ_LABEL_SET][b] for b in buckets],
                                           np.int16)
        self.datasets = {key: f.create_dataset(key, shape=(0, *tail), maxshape=(None, *tail),
                                               dtype=dtype, chunks=(self.CHUNK, *tail),
                                               **_CHECKSUM)
                         for key, (tail, dtype) in self.columns.items()}
        self.pending: dict[str, list[np.ndarray]] = {}
        self.buffered = 0
        self._spans_of: tuple[int, tuple[Span, ...], list[int], list[int], list[int]] | None = None

    LONG = 256
    """Examples with more spans than this are aligned window by window on the spans that
    reach the window only (same labels; avoids re-sorting every span for every window)."""

    def _spans(self, example: int, offs: list[tuple[int, int]]) -> Sequence[Span]:
        spans = self.dataset.examples[example].spans
        if len(spans) <= self.LONG or not offs:
            return spans
        if self._spans_of is None or self._spans_of[0] != example:
            by_start = sorted(range(len(spans)), key=lambda i: spans[i].start)
            reach = list(accumulate((spans[i].end for i in by_start), max))
            starts = [spans[i].start for i in by_start]
            self._spans_of = (example, spans, by_start, starts, reach)
        _, spans, by_start, starts, reach = self._spans_of
        lo, hi = min(o[0] for o in offs), max(o[1] for o in offs)
        first = bisect_right(reach, lo)  # every span before it ends at or before lo
        stop = bisect_left(starts, hi, lo=first)  # every span from here starts at or after hi
        chosen = sorted(i for i in by_start[first:stop] if spans[i].end > lo)
        return [spans[i] for i in chosen]  # input order kept: ties resolve as before

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
            spans = self._spans(w.example, offs)
            for s in self.label_sets:  # per token, so aligning a window = slicing the example
                per_set[s].extend(align_labels(spans, offs, s))
        n = len(ids)
        data: dict[str, np.ndarray] = {
            "tokens/ids": np.asarray(ids, np.int32), "tokens/example": np.asarray(example, np.int32),
            "tokens/position": np.asarray(position, np.int32),
            "tokens/offsets": np.asarray(offsets, np.int32).reshape(-1, 2)}
        for s, values in per_set.items():
            lookup = self.lookup[s]
            data[_label_key(s)] = np.asarray([lookup[v] if v is not None else -1
                                              for v in values], np.int16)
        if self.buckets is not None:
            data[_label_key(FREQ_LABEL_SET)] = self.bucket_codes[data["tokens/ids"]]
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
        ds = self.f[_label_key(label_set)]
        for start in range(0, ds.shape[0], self.CHUNK):
            codes = ds[start:start + self.CHUNK]
            ds[start:start + self.CHUNK] = table[codes]  # index -1 reads table's last entry

    def finish(self) -> None:
        """Keep only classes that occur, sorted; set each label dataset's ``classes``."""
        self.flush()
        sets = [*self.label_sets] + ([FREQ_LABEL_SET] if self.buckets is not None else [])
        for s in sets:
            classes = self.classes.get(s, [])
            ds = self.f[_label_key(s)]
            seen = np.zeros(len(classes) + 1, bool)
            for start in range(0, ds.shape[0], self.CHUNK):
                seen[ds[start:start + self.CHUNK]] = True  # -1 marks the last slot
            kept = [c for i, c in enumerate(classes) if seen[i]]
            if len(kept) != len(classes):
                index = {c: i for i, c in enumerate(kept)}
                self._map(s, np.asarray([index.get(c, -1) for c in classes] + [-1], np.int16))
            ds.attrs["classes"] = json.dumps(kept)


def _label_key(label_set: str) -> str:
    return f"labels/{fmt.encode_name(label_set)}"


def _write_codes(f: h5py.File, key: str, values: list[str | None]) -> None:
    classes = sorted({v for v in values if v is not None})
    lookup = {c: i for i, c in enumerate(classes)}
    codes = np.asarray([lookup[v] if v is not None else -1 for v in values], dtype=np.int16)
    f.create_dataset(key, data=codes, **_CHECKSUM)
    f[key].attrs["classes"] = json.dumps(classes)


def _batches(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive lists of ``size`` items (the last may be shorter), lazily."""
    it = iter(items)
    while batch := list(islice(it, size)):
        yield batch


def pad_windows(batch: list[Window], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to the longest window; the mask is 1 on real positions."""
    width = max(len(w.ids) for w in batch)
    tokens = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for b, w in enumerate(batch):
        tokens[b, :len(w.ids)] = torch.tensor(w.ids)
        mask[b, :len(w.ids)] = 1
    return tokens, mask


def _progress(desc: str, enabled: bool):  # noqa: ANN202 (tqdm type)
    """Counts stored tokens (the total is not known before the examples are tokenized)."""
    from tqdm.auto import tqdm

    return tqdm(desc=desc, unit="tok", unit_scale=True, disable=not enabled, leave=False)
