"""CLI: the ``--threads`` option shared by every subcommand that runs a model.

torch's intra-op threads default to the number of cores. On a small machine that others
load, that default can be far slower than one thread (torch's threads spin-wait for each
other): measured in benchmarks/bench_cache.py --threads-compare, see docs/performance.md.
So the default is 1 thread on machines with at most 2 cores and torch's own default above.
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

import click

from lensbias.threads import cpu_cores

F = TypeVar("F", bound=Callable[..., Any])

SMALL_MACHINE_CORES = 2


def default_threads() -> int | None:
    """1 on machines with at most SMALL_MACHINE_CORES cores; None (torch's default) above."""
    return 1 if cpu_cores() <= SMALL_MACHINE_CORES else None


def set_threads(threads: int | None) -> None:
    """torch.set_num_threads(threads), or the default policy when ``threads`` is None."""
    chosen = threads if threads is not None else default_threads()
    if chosen is not None:
        import torch

        torch.set_num_threads(chosen)


def _apply(_ctx: click.Context, _param: click.Parameter, value: int | None) -> None:
    set_threads(value)


def threads_option(f: F) -> F:
    """``--threads N``: torch intra-op threads [default: 1 on <= 2 cores, else all cores]."""
    return click.option("--threads", type=click.IntRange(min=1), default=None,
                        expose_value=False, callback=_apply,
                        help="torch intra-op threads [default: 1 on machines with <= 2 "
                             "cores, else torch's default (one per core)].")(f)
