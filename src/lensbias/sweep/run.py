"""Sweeps, part 2: run every cell of a grid (compress + diff) into one resumable results table.

Layout of ``out_dir``::

    results.jsonl   one JSON object per row (cell × concept × layer), appended per finished cell
    results.h5      the finished rows of the grid as an HDF5 table (``table.py``), rewritten
                    when a run ends
    done            one line per finished cell: "<cell id> <attempt>", written after its rows
    cells/<id>/     the cell's ``lensbias diff`` folder (summary.json, report.html, caches)
    sweep.json      the config and the grid of the latest run (for people; not read back)

A cell is finished iff its id is in ``done``. Its rows are written in one write + flush +
fsync before its ``done`` line, so a killed sweep loses at most the cells in flight; rows
of a cell whose ``done`` line never came (or that came from another attempt) are ignored
on read, and a rerun redoes only unfinished cells (reusing their caches where they match).
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lensbias.errors import LensbiasError
from lensbias.sweep.cell import run_cell
from lensbias.sweep.config import Cell, SweepConfig, cells
from lensbias.sweep.execute import run_pool, run_ray
from lensbias.sweep.table import write_table

EXECUTORS = ("local", "ray")

RESULTS = "results.jsonl"
TABLE = "results.h5"
DONE = "done"
TIMING_FIELDS = frozenset({"cell_seconds"})
"""Row fields that differ between otherwise identical runs."""


def run_sweep(config: SweepConfig, out_dir: str | os.PathLike[str], jobs: int = 1,
              progress: bool = True, executor: str = "local", address: str | None = None,
              cpus_per_cell: float = 1, gpus_per_cell: float = 0) -> Path:
    """Run the grid's unfinished cells into ``out_dir``; returns ``out_dir/results.jsonl``.

    ``executor="local"``: ``jobs`` = 1 runs cells one after another in this process; more
    runs them in a process pool (spawned workers, each with ``max(1, cores // jobs)`` torch
    threads). ``executor="ray"``: each cell is a Ray task needing ``cpus_per_cell`` CPUs and
    ``gpus_per_cell`` GPUs, on the cluster at ``address`` (None: a local Ray instance).
    Every executor gives the same rows. The first failing cell stops the sweep (cells
    already finished are kept) and its exception is raised; a rerun resumes.
    """
    if not isinstance(jobs, int) or jobs < 1:
        raise LensbiasError(f"jobs must be a whole number >= 1, got {jobs!r}")
    if executor not in EXECUTORS:
        raise LensbiasError(f"unknown executor {executor!r}; choose from {', '.join(EXECUTORS)}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise LensbiasError(f"{out} exists and is not a folder")
    if not out.parent.exists():
        raise LensbiasError(f"output folder {out.parent} does not exist")
    (out / "cells").mkdir(parents=True, exist_ok=True)
    results = out / RESULTS
    grid = cells(config)
    with _lock(out):
        _write_atomic(out / "sweep.json", json.dumps(
            {"config": config.to_dict(),
             "cells": [{"id": c.id, "index": c.index, **c.spec()} for c in grid]}, indent=1))
        finished = set(_done(out))
        todo = [c for c in grid if c.id not in finished]
        from tqdm.auto import tqdm

        bar = tqdm(total=len(grid), initial=len(grid) - len(todo), desc="sweep", unit="cell",
                   disable=not progress, dynamic_ncols=True)
        def on_done(cell: Cell, rows: list[dict[str, Any]]) -> None:
            _record(out, cell, rows)
            bar.set_postfix_str(_label(cell), refresh=False)
            bar.update(1)

        try:
            if executor == "ray":
                if todo:
                    run_ray(todo, config, out, on_done, address, cpus_per_cell, gpus_per_cell)
            elif jobs == 1 or len(todo) <= 1:
                for cell in todo:
                    bar.set_postfix_str(_label(cell), refresh=True)
                    on_done(cell, run_cell(cell, config, out))
            else:
                run_pool(todo, config, out, min(jobs, len(todo)), on_done)
        finally:
            bar.close()
        write_table(read_results(out, config), out / TABLE)
    return results


def _label(cell: Cell) -> str:
    return f"{cell.method}:{cell.level} calib={cell.calib} seed={cell.seed}"


def _record(out: Path, cell: Cell, rows: list[dict[str, Any]]) -> None:
    """Append a finished cell's rows (one write, fsynced), then its ``done`` line."""
    attempt = uuid.uuid4().hex[:12]
    text = "".join(json.dumps({**r, "_attempt": attempt}, allow_nan=False) + "\n" for r in rows)
    _append(out / RESULTS, text)
    _append(out / DONE, f"{cell.id} {attempt}\n")


def _append(path: Path, text: str) -> None:
    """Append whole lines, starting a fresh line if a killed writer left half of one."""
    with open(path, "ab") as f:
        if f.tell() > 0:
            with open(path, "rb") as r:
                r.seek(-1, os.SEEK_END)
                if r.read(1) != b"\n":
                    text = "\n" + text
        f.write(text.encode("utf-8"))
        f.flush()
        os.fsync(f.fileno())


def _done(out: Path) -> dict[str, str]:
    """Finished cells: id → the attempt whose rows count (the last ``done`` line wins)."""
    done: dict[str, str] = {}
    try:
        text = (out / DONE).read_text(encoding="utf-8")
    except FileNotFoundError:
        return done
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2:
            done[parts[0]] = parts[1]
    return done


def _lines(path: Path) -> Iterator[dict[str, Any]]:
    try:
        f = open(path, encoding="utf-8")
    except FileNotFoundError:
        return
    with f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # half a line from a killed run
            if isinstance(row, dict):
                yield row


def read_results(out_dir: str | os.PathLike[str], config: SweepConfig | None = None
                 ) -> list[dict[str, Any]]:
    """Rows of finished cells, grouped by cell in grid order.

    With ``config``, only the cells of its grid (in its order, ``cell_index`` set to it);
    without, every finished cell in ``out_dir`` ordered by the ``cell_index`` it ran with.
    """
    out = Path(out_dir)
    if not out.is_dir():
        raise LensbiasError(f"{out} is not a sweep folder")
    done = _done(out)
    by_cell: dict[str, list[dict[str, Any]]] = {}
    for row in _lines(out / RESULTS):
        cid = row.get("cell_id")
        if cid in done and row.get("_attempt") == done[cid]:
            row.pop("_attempt")
            by_cell.setdefault(cid, []).append(row)
    if config is not None:
        order = {c.id: c.index for c in cells(config)}
        keep = sorted((cid for cid in by_cell if cid in order), key=order.__getitem__)
        rows = []
        for cid in keep:
            rows.extend({**r, "cell_index": order[cid]} for r in by_cell[cid])
        return rows
    keep = sorted(by_cell, key=lambda cid: (by_cell[cid][0].get("cell_index", 0), cid))
    return [r for cid in keep for r in by_cell[cid]]


def finished_cells(out_dir: str | os.PathLike[str]) -> set[str]:
    """Ids of the finished cells in ``out_dir``."""
    return set(_done(Path(out_dir)))


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


class _lock:
    """An exclusive, non-blocking lock on ``out_dir/.lock`` (no two sweeps in one folder)."""

    def __init__(self, out: Path) -> None:
        self.path = out / ".lock"
        self.fd: int | None = None

    def __enter__(self) -> _lock:
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock
            return self
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self.fd)
            self.fd = None
            raise LensbiasError(f"another sweep is running in {self.path.parent}; wait for it "
                                "or choose another --out") from None
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing releases the flock
            self.fd = None
