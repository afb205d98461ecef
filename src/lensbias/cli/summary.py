"""CLI: ``lensbias summary`` fits a quick linear probe per hook and concept of a cache."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("cache_file", type=click.Path(path_type=Path))
@click.option("--concept", "concepts", multiple=True,
              help="Concept (label set) to probe, repeatable [default: every token-level one].")
@click.option("--max-tokens", type=click.IntRange(min=100), default=20000, show_default=True,
              help="Labelled tokens used per probe.")
@click.option("--seed", type=int, default=0, show_default=True)
def summary(cache_file: Path, concepts: tuple[str, ...], max_tokens: int, seed: int) -> None:
    """Probe every cached hook for each concept and print held-out accuracy.

    Train/test split by example; `majority` is the most-frequent-class rate.

    \b
    Examples:
      lensbias summary activations/tiny-mixed--ud-ewt.h5
      lensbias summary py.h5 --concept token_kind --concept identifier_role
    """
    import numpy as np

    from lensbias.probes import fit_probe, grouped_split
    from lensbias.store import ActivationStore

    with ActivationStore(cache_file) as store:
        chosen = list(concepts) or [c for c in store.token_label_sets if c != "freq_bucket"]
        example = store.tokens()["example"]
        click.echo(f"{store.model_name} on {store.dataset_name}: {store.n_tokens} tokens")
        click.echo(f"{'concept':<18} {'classes':>7} " + " ".join(f"{h:>26}" for h in store.hooks)
                   + f" {'majority':>9}")
        for concept in chosen:
            labels = store.labels(concept)
            rows = np.flatnonzero(labels >= 0)[:max_tokens]
            test = grouped_split(example[rows], seed=seed)
            cells, result = [], None
            for hook in store.hooks:
                result = fit_probe(store.activations(hook, rows), labels[rows], test, seed=seed)
                cells.append(f"{result.accuracy:>26.3f}")
            click.echo(f"{concept:<18} {result.n_classes:>7} " + " ".join(cells)
                       + f" {result.majority:>9.3f}")
