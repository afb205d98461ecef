"""CLI: ``lensbias models`` and ``lensbias datasets`` list what is built in."""

from __future__ import annotations

import click


@click.command()
def models() -> None:
    """List the built-in models.

    Any local model folder or TransformerLens pretrained name (needs the hub) works too.

    \b
    Examples:
      lensbias models
    """
    from lensbias.models import list_models

    for name, desc in list_models():
        click.echo(f"{name:<20} {desc}")


@click.command()
def datasets() -> None:
    """List the built-in concept datasets (a .jsonl/.jsonl.gz path works too).

    \b
    Examples:
      lensbias datasets
    """
    from lensbias.concepts.registry import list_datasets

    for name, desc in list_datasets():
        click.echo(f"{name:<16} {desc}")
