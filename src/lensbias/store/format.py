"""Store, stage 1 of 3: the on-disk format of an activation cache, and its fingerprint.

Specification (HDF5, one file per model × dataset; see docs/store.md):

- root attributes MUST hold ``encoding-type`` = ``lensbias.activations``,
  ``encoding-version`` (this module's ``VERSION``), ``lensbias-version``, ``complete`` (1 only
  once every row is written), ``fingerprint`` (JSON) and ``fingerprint-sha256``.
- ``tokens/{ids,example,position}`` int32 ``[n_tokens]``, ``tokens/offsets`` int32
  ``[n_tokens, 2]`` (character range in the example text); special tokens are not stored.
- ``labels/<set>`` int16 ``[n_tokens]``: class index or -1 (no label); attribute ``classes``;
  ``<set>`` is the label-set name with ``%`` and ``/`` percent-encoded (``encode_name``).
- ``examples/{id,text}`` strings ``[n_examples]``; ``examples/labels/<set>`` int16 as above.
- ``acts/<hook>`` float16, float32, or bfloat16 stored as uint16 with attribute
  ``storage`` = ``bfloat16`` ``[n_tokens, d]``, chunked by rows.
- Version 2: every numeric dataset has the Fletcher-32 filter (a checksum per chunk, checked
  by HDF5 on every read); the string datasets (HDF5 cannot filter them) carry attribute
  ``sha256`` (``strings_sha``), checked by ``verify`` and by ``ActivationStore.texts``. Version 1 files (no checksums, no bfloat16, no encoded names) stay readable.
A reader MUST refuse a file whose type is not ours, whose version it does not know, or
whose ``complete`` flag is not set.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from typing import Any

from lensbias.concepts.schema import ConceptDataset

ENCODING_TYPE = "lensbias.activations"
VERSION = "2"
READABLE_VERSIONS = ("1", "2")
DTYPES = ("float16", "float32", "bfloat16")


@dataclass(frozen=True)
class CacheConfig:
    """What to cache and how."""

    hooks: tuple[str, ...] | None = None
    """Hook names as TransformerLens spells them; None = residual stream after every block."""
    dtype: str = "float16"
    """Storage dtype of activations: 'float16' (half the disk), 'float32' (exact) or
    'bfloat16' (half the disk, float32's range: for large models whose activations overflow
    float16; stored as raw uint16 bits, read back as float32)."""
    batch_size: int = 16
    """With ``window``, bounds one forward pass to ``batch_size × window`` token positions
    (padding included); windows of similar length are batched together, so short windows
    run many to a pass."""
    window: int | None = None
    """Max tokens per forward pass (specials included); None = min(model n_ctx, 256).
    Longer examples are cut into consecutive windows, each read independently."""
    device: str = "cpu"
    """Torch device for the forward pass."""

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.window is not None and self.window < 2:
            raise ValueError(f"window must be >= 2 tokens, got {self.window}")


def encode_name(name: str) -> str:
    """A label-set name as an HDF5 link name: ``%`` and ``/`` percent-encoded (HDF5 reads
    ``/`` as a path separator); ``.`` alone would name the group itself, so it is encoded too.
    Names without these characters are unchanged."""
    if name in (".", ""):
        return "%2E" if name == "." else "%00"
    return name.replace("%", "%25").replace("/", "%2F")


def decode_name(key: str) -> str:
    """The inverse of ``encode_name``."""
    if key in ("%2E", "%00"):
        return "." if key == "%2E" else ""
    return re.sub("%(25|2F)", lambda m: "%" if m.group(1) == "25" else "/", key)


def strings_sha(values: list[str]) -> str:
    """sha256 of a string dataset (each value's UTF-8 bytes, NUL-terminated)."""
    h = hashlib.sha256()
    for v in values:
        h.update(v.encode() + b"\0")
    return h.hexdigest()


def dataset_hash(dataset: ConceptDataset) -> str:
    """sha256 of the examples' canonical JSON: the dataset's identity (name excluded)."""
    h = hashlib.sha256()
    for ex in dataset.examples:
        record = {"id": ex.id, "text": ex.text, "labels": ex.seq_labels,
                  "spans": [[s.start, s.end, s.labels] for s in ex.spans]}
        h.update(json.dumps(record, sort_keys=True, ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()


def fingerprint(weights_sha: str, data_sha: str, hooks: tuple[str, ...], window: int,
                dtype: str, version: str) -> dict[str, Any]:
    """Everything that decides a cache's contents; two caches agree iff these agree."""
    return {"model_weights_sha256": weights_sha, "dataset_sha256": data_sha,
            "hooks": list(hooks), "window": window, "dtype": dtype,
            "encoding_version": VERSION, "lensbias_version": version}


def fingerprint_sha(fp: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()


def config_dict(cfg: CacheConfig) -> dict[str, Any]:
    return asdict(cfg)
