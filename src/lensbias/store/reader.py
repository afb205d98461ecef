"""Store, stage 3 of 3: read an activation cache back, per hook and concept, in bounded batches.

``ActivationStore`` checks the file's type, version and completeness before anything is
read, and returns labels as class indices (-1 where a token has none). Every read goes
through HDF5's Fletcher-32 check (version 2 files): a damaged chunk is one line naming the
dataset, never silently different numbers. ``verify`` reads every dataset once.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from jaxtyping import Float, Int

from lensbias.errors import LensbiasError
from lensbias.store import format as fmt


def _open(path: Path) -> h5py.File:
    if not path.exists():
        raise LensbiasError(f"activation cache {path} does not exist; run `lensbias cache` first")
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise LensbiasError(f"{path} is not a readable HDF5 file (truncated or corrupt?): "
                            f"{str(err).splitlines()[0]}") from None
    kind = f.attrs.get("encoding-type")
    version = str(f.attrs.get("encoding-version", ""))
    if kind != fmt.ENCODING_TYPE:
        f.close()
        raise LensbiasError(f"{path} is not a lensbias activation cache (encoding-type {kind!r})")
    if version not in fmt.READABLE_VERSIONS:
        writer = f.attrs.get("lensbias-version", "?")
        f.close()
        raise LensbiasError(f"{path} has store format version {version}, written by lensbias "
                            f"{writer}; this lensbias reads versions {', '.join(fmt.READABLE_VERSIONS)}")
    if int(f.attrs.get("complete", 0)) != 1:
        f.close()
        raise LensbiasError(f"{path} is an incomplete cache (its writer was interrupted)")
    return f


def _read(path: Path, ds: h5py.Dataset, rows: Any = slice(None)) -> np.ndarray:
    """``ds[rows]``, with a failed checksum (or any HDF5 read error) as one line."""
    try:
        return ds[rows]
    except OSError as err:
        raise LensbiasError(f"{path}: dataset {ds.name} is damaged "
                            f"({_reason(ds, err)}); rebuild the cache with --force") from None


def _reason(ds: h5py.Dataset, err: OSError) -> str:
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    # the Fletcher-32 filter is the only one lensbias writes: its failure is the checksum
    if ds.fletcher32 and ("fletcher32" in text.lower() or "filter returned failure" in text):
        return "Fletcher-32 checksum mismatch"
    return text


def _strings(path: Path, ds: h5py.Dataset) -> list[str]:
    """A string dataset's values, checked against its ``sha256`` attribute where it has one."""
    values = [t.decode() if isinstance(t, bytes) else t for t in _read(path, ds)]
    want = ds.attrs.get("sha256")
    if want is not None and fmt.strings_sha(values) != want:
        raise LensbiasError(f"{path}: dataset {ds.name} is damaged (sha256 mismatch); "
                            "rebuild the cache with --force")
    return values


def _float32(ds: h5py.Dataset, block: np.ndarray) -> np.ndarray:
    """Stored activations as float32 (bfloat16 is kept as raw uint16 bits)."""
    if ds.attrs.get("storage") == "bfloat16":
        return (block.astype(np.uint32) << 16).view(np.float32)
    return np.asarray(block, dtype=np.float32)


def verify(path: str | os.PathLike[str], block_rows: int = 65536) -> int:
    """Read every dataset of a cache once, so HDF5 checks every chunk's checksum; returns
    the number of datasets read. Raises LensbiasError (one line) at the first damage, and
    for a version 1 file, which has no checksums to check."""
    path = Path(path)
    with _open(path) as f:
        if str(f.attrs.get("encoding-version")) == "1":
            raise LensbiasError(f"{path} is a version 1 cache, written without checksums; "
                                "rebuild it with --force to be able to verify it")
        names: list[str] = []
        f.visititems(lambda name, node: names.append(name)
                     if isinstance(node, h5py.Dataset) else None)
        for name in names:
            ds = f[name]
            if ds.dtype.kind == "O":
                _strings(path, ds)
                continue
            if not ds.shape or ds.shape[0] == 0:
                _read(path, ds, ())
                continue
            for start in range(0, ds.shape[0], block_rows):
                _read(path, ds, slice(start, start + block_rows))
    return len(names)


def read_fingerprint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The fingerprint of a complete cache (raises LensbiasError for anything else)."""
    with _open(Path(path)) as f:
        return json.loads(f.attrs["fingerprint"])


class ActivationStore:
    """Read access to one cache file. Use as a context manager or call ``close()``."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self._f = _open(self.path)
        self.fingerprint: dict[str, Any] = json.loads(self._f.attrs["fingerprint"])
        self.model_name: str = str(self._f.attrs["model"])
        self.dataset_name: str = str(self._f.attrs["dataset"])
        self._encoded = str(self._f.attrs["encoding-version"]) != "1"  # v1: names as given

    def __enter__(self) -> ActivationStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._f.close()

    def __repr__(self) -> str:
        return (f"ActivationStore({str(self.path)!r}, model={self.model_name!r}, "
                f"dataset={self.dataset_name!r}, n_tokens={self.n_tokens}, hooks={self.hooks})")

    @property
    def hooks(self) -> list[str]:
        """Cached hook names, in the order they were requested."""
        return list(self.fingerprint["hooks"])

    @property
    def n_tokens(self) -> int:
        return int(self._f["tokens/ids"].shape[0])

    def d(self, hook: str) -> int:
        return int(self._acts(hook).shape[1])

    @property
    def token_label_sets(self) -> list[str]:
        return (sorted(self._decode(k) for k in self._f["labels"].keys())
                if "labels" in self._f else [])

    @property
    def seq_label_sets(self) -> list[str]:
        return (sorted(self._decode(k) for k in self._f["examples/labels"].keys())
                if "examples/labels" in self._f else [])

    @property
    def label_sets(self) -> list[str]:
        """Every concept the cache can be read for: token-level, then sequence-level."""
        return self.token_label_sets + [s for s in self.seq_label_sets
                                        if s not in self.token_label_sets]

    def classes(self, label_set: str) -> list[str]:
        return json.loads(self._label_node(label_set).attrs["classes"])

    def labels(self, label_set: str) -> Int[np.ndarray, " tokens"]:
        """Class index of every token (-1: no label); sequence labels are broadcast."""
        node = self._label_node(label_set)
        codes = _read(self.path, node)
        if node.name.startswith("/examples/"):
            codes = codes[_read(self.path, self._f["tokens/example"])]
        return codes.astype(np.int64)

    def tokens(self) -> dict[str, np.ndarray]:
        """``ids``, ``example``, ``position`` and ``offsets`` of every stored token."""
        return {k: _read(self.path, self._f[f"tokens/{k}"])
                for k in ("ids", "example", "position", "offsets")}

    def texts(self) -> list[str]:
        return _strings(self.path, self._f["examples/text"])

    def activations(self, hook: str, rows: np.ndarray | slice | None = None
                    ) -> Float[np.ndarray, "tokens d_model"]:
        """Activations of ``hook`` as float32 (all rows, or a sorted row selection)."""
        data = self._acts(hook)
        return _float32(data, _read(self.path, data, rows if rows is not None else slice(None)))

    def load(self, hook: str, label_set: str, max_tokens: int | None = None
             ) -> tuple[Float[np.ndarray, "tokens d_model"], Int[np.ndarray, " tokens"]]:
        """``(activations, labels)`` of the labelled tokens, the first ``max_tokens`` of them."""
        labels = self.labels(label_set)
        rows = np.flatnonzero(labels >= 0)[:max_tokens]
        return self.activations(hook, rows), labels[rows]

    def iter_batches(self, hook: str, label_set: str | None = None, batch_tokens: int = 8192
                     ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(activations [b, d] float32, labels [b])`` over the file, ``batch_tokens`` rows
        read at a time; with ``label_set`` only labelled tokens are yielded."""
        data = self._acts(hook)
        labels = self.labels(label_set) if label_set else np.zeros(self.n_tokens, np.int64)
        for start in range(0, self.n_tokens, batch_tokens):
            stop = min(start + batch_tokens, self.n_tokens)
            acts = _float32(data, _read(self.path, data, slice(start, stop)))
            lab = labels[start:stop]
            if label_set:
                keep = lab >= 0
                acts, lab = acts[keep], lab[keep]
            if len(lab):
                yield acts, lab

    def _decode(self, key: str) -> str:
        return fmt.decode_name(key) if self._encoded else key

    def _acts(self, hook: str) -> h5py.Dataset:
        if hook not in self.hooks:
            raise LensbiasError(f"{self.path} has no activations for hook {hook!r}; "
                                f"it holds {', '.join(self.hooks)}")
        return self._f[f"acts/{hook}"]

    def _label_node(self, label_set: str) -> h5py.Dataset:
        name = fmt.encode_name(label_set) if self._encoded else label_set
        if not self._encoded and ("/" in name or name in ("", ".")):
            name = "\0"  # cannot name a link in a version 1 file: reported as absent below
        for key in (f"labels/{name}", f"examples/labels/{name}"):
            if key in self._f:
                return self._f[key]
        raise LensbiasError(f"{self.path} has no concept {label_set!r}; "
                            f"it has {', '.join(self.label_sets)}")
