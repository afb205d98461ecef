"""CLI: the ``--device`` option shared by ``diff``, ``compress`` and ``summary``.

The name is checked while the command line is parsed (``adapter.check_device``), so a
device torch does not know, or ``cuda`` where torch sees no CUDA device, is one line and
exit 2 before anything is loaded or written.
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def _check(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    from lensbias.models.adapter import check_device

    check_device(value)
    return value


def device_option(help: str) -> Callable[[F], F]:
    """``--device NAME`` (default cpu), validated at parse time."""
    def decorate(f: F) -> F:
        return click.option("--device", default="cpu", show_default=True, callback=_check,
                            help=help)(f)
    return decorate
