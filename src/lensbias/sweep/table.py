"""Sweeps, part 4: the results table as HDF5 (``results.h5``), one row per cell × concept × layer.

``results.jsonl`` is the sweep's append-only journal (what makes it resumable);
``results.h5`` is the same finished rows as columns, for analysis in any HDF5 reader
(h5py, pandas ``read_hdf`` via PyTables is not needed: each column is a plain dataset).

Layout: ``/columns/<name>`` one 1-D dataset per field, all of one length. Numbers are
float64 (missing: NaN) or int64; text and nested values (``params``) are UTF-8 strings,
nested values as JSON; ``attrs["kinds"]`` maps each column to ``float``, ``int``, ``str``
or ``json`` so ``read_table`` gives back the rows ``read_results`` gave.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from lensbias.errors import LensbiasError

ENCODING = "lensbias-sweep-table/1"


def _kind(values: list[Any]) -> str:
    present = [v for v in values if v is not None]
    if all(isinstance(v, bool) for v in present) and present:
        return "json"
    if all(isinstance(v, int) and not isinstance(v, bool) for v in present) and present \
            and len(present) == len(values):
        return "int"
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return "float"
    if all(isinstance(v, str) for v in present) and len(present) == len(values):
        return "str"
    return "json"


def write_table(rows: list[dict[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Write ``rows`` (``read_results`` rows) as columns to ``path``, atomically."""
    path = Path(path)
    names = list(dict.fromkeys(k for r in rows for k in r))
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs["encoding"] = ENCODING
            f.attrs["n_rows"] = len(rows)
            kinds = {}
            for name in names:
                values = [r.get(name) for r in rows]
                kind = kinds[name] = _kind(values)
                key = f"columns/{name}"
                if kind == "int":
                    f[key] = np.asarray(values, np.int64)
                elif kind == "float":
                    f[key] = np.asarray([math.nan if v is None else float(v) for v in values],
                                        np.float64)
                else:
                    text = values if kind == "str" else [json.dumps(v) for v in values]
                    f.create_dataset(key, data=text, dtype=h5py.string_dtype("utf-8"))
            f.attrs["kinds"] = json.dumps(kinds)
            f.attrs["order"] = json.dumps(names)
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise LensbiasError(f"could not write {path}: {err.strerror or err}") from None
    return path


def read_table(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The rows of a ``results.h5`` written by ``write_table`` (NaN floats come back as None)."""
    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("encoding") != ENCODING:
                raise LensbiasError(f"{path} is not a lensbias sweep table")
            kinds = json.loads(f.attrs["kinds"])
            names = json.loads(f.attrs["order"])
            n = int(f.attrs["n_rows"])
            columns: dict[str, list[Any]] = {}
            for name in names:
                data = f[f"columns/{name}"][()]
                kind = kinds[name]
                if kind == "int":
                    columns[name] = [int(v) for v in data]
                elif kind == "float":
                    columns[name] = [None if math.isnan(v) else float(v) for v in data]
                else:
                    text = [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in data]
                    columns[name] = text if kind == "str" else [json.loads(t) for t in text]
    except (OSError, KeyError, ValueError) as err:
        raise LensbiasError(f"{path} is not a readable sweep table ({err})") from None
    return [{k: columns[k][i] for k in names} for i in range(n)]
