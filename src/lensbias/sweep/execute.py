"""Sweeps, part 2b: where cells run. A process pool on this machine, or Ray tasks on a cluster.

Every executor calls ``on_done(cell, rows)`` in the driver as each cell finishes, so the
results table is written by one process, in one way (``run._record``), whatever ran the cell.

Ray: each cell is one ``ray.remote`` task declaring ``num_cpus`` and ``num_gpus``. A task
works in a scratch folder on its worker (workers need not share a disk with the driver)
and returns its rows with the cell's ``summary.json`` and ``report.html``, which the driver
writes to ``out/cells/<id>/``; the caches stay behind and are deleted.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lensbias.errors import LensbiasError
from lensbias.sweep.config import Cell, SweepConfig
from lensbias.threads import cpu_cores

OnDone = Callable[[Cell, list[dict[str, Any]]], None]
KEPT_FILES = ("summary.json", "report.html")
"""What a Ray task sends back from its cell folder."""


def run_pool(todo: list[Cell], config: SweepConfig, out: Path, jobs: int,
             on_done: OnDone) -> None:
    """Cells in ``jobs`` spawned processes, each with ``max(1, cores // jobs)`` torch threads.

    The first failing cell cancels the cells not yet started and is raised after the
    running ones finish (and are recorded)."""
    import multiprocessing
    from concurrent.futures import CancelledError, ProcessPoolExecutor, as_completed

    from lensbias.sweep.cell import run_cell

    threads = config.threads or max(1, cpu_cores() // jobs)
    ctx = multiprocessing.get_context("spawn")
    error: BaseException | None = None
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_set_threads,
                             initargs=(threads,)) as pool:
        futures = {pool.submit(run_cell, cell, config, out): cell for cell in todo}
        try:
            for future in as_completed(futures):
                try:
                    rows = future.result()
                except CancelledError:
                    continue
                except BaseException as err:  # noqa: BLE001 (re-raised below)
                    if error is None:
                        error = err
                        for f in futures:
                            f.cancel()
                    continue
                on_done(futures[future], rows)
        except BaseException:
            for f in futures:
                f.cancel()
            raise
    if error is not None:
        raise error


def _set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def run_ray(todo: list[Cell], config: SweepConfig, out: Path, on_done: OnDone,
            address: str | None = None, cpus_per_cell: float = 1, gpus_per_cell: float = 0
            ) -> None:
    """Cells as Ray tasks on the cluster at ``address`` (None: a private local instance).

    A failing cell cancels the tasks not yet finished and is raised; finished cells are kept.
    """
    try:
        import ray
    except ImportError:
        raise LensbiasError("the ray executor needs Ray: pip install 'lensbias[ray]' "
                            "(or pip install ray)") from None
    if cpus_per_cell <= 0 or gpus_per_cell < 0:
        raise LensbiasError(f"cpus per cell must be > 0 and gpus per cell >= 0; got "
                            f"{cpus_per_cell} and {gpus_per_cell}")
    started_here = not ray.is_initialized()
    if started_here and address not in (None, "auto", "local"):
        _check_reachable(address)
    if started_here:
        try:
            if address is None:
                ray.init(include_dashboard=False, log_to_driver=False,
                         num_cpus=cpu_cores())
            else:
                ray.init(address=address, include_dashboard=False, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise LensbiasError(f"could not connect to Ray at {address}: {first}") from None
    try:
        task = ray.remote(num_cpus=cpus_per_cell, num_gpus=gpus_per_cell,
                          max_retries=0)(ray_cell)
        threads = config.threads or max(1, int(cpus_per_cell))
        pending = {task.remote(cell, config, threads): cell for cell in todo}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            cell = pending.pop(ready[0])
            try:
                rows, files = ray.get(ready[0])
            except Exception as err:
                for ref in pending:
                    ray.cancel(ref, force=True)
                cause = getattr(err, "cause", None)
                raise (cause if isinstance(cause, BaseException) else err) from None
            folder = out / "cells" / cell.id
            folder.mkdir(parents=True, exist_ok=True)
            for name, text in files.items():
                tmp = folder / f".{name}.tmp"
                tmp.write_text(text, encoding="utf-8")
                os.replace(tmp, folder / name)
            on_done(cell, rows)
    finally:
        if started_here:
            ray.shutdown()


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail in one line, fast, when nothing listens at ``host:port`` (``ray.init`` would
    retry for minutes)."""
    import socket

    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise LensbiasError(f"Ray address {address!r} must be host:port (or 'auto')")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as err:
        raise LensbiasError(f"could not connect to Ray at {address}: "
                            f"{err.strerror or type(err).__name__}") from None


def ray_cell(cell: Cell, config: SweepConfig, threads: int
             ) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """One cell on a Ray worker, in a scratch folder: its rows and its kept files' text."""
    import torch

    from lensbias.sweep.cell import run_cell

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory(prefix="lensbias-cell-") as tmp:
        (Path(tmp) / "cells").mkdir()
        rows = run_cell(cell, config, tmp)
        folder = Path(tmp) / "cells" / cell.id
        files = {name: (folder / name).read_text(encoding="utf-8") for name in KEPT_FILES
                 if (folder / name).exists()}
    return rows, files
