"""CLI: ``lensbias summary`` fits a quick linear probe per hook and concept of a cache."""

from __future__ import annotations

from pathlib import Path

import click

from lensbias.cli.device import device_option
from lensbias.cli.threads import threads_option


@click.command()
@click.argument("cache_file", type=click.Path(path_type=Path))
@click.option("--concept", "concepts", multiple=True,
              help="Concept (label set) to probe, repeatable [default: every token-level one].")
@click.option("--max-tokens", type=click.IntRange(min=100), default=20000, show_default=True,
              help="Labelled tokens used per probe.")
@click.option("--seed", type=int, default=0, show_default=True)
@device_option("Torch device the probes are fitted on: cpu, cuda or cuda:N.")
@threads_option
def summary(cache_file: Path, concepts: tuple[str, ...], max_tokens: int, seed: int,
            device: str) -> None:
    """Probe every cached hook for each concept and print held-out accuracy.

    Train/test split by source document (UD `doc`, code `file`, else the example), drawn
    within each domain as `lensbias diff` draws it; `majority` is the most-frequent-class rate. The probe is
    the estimator `lensbias diff` fits (LinearProbe, C = 1).

    \b
    Examples:
      lensbias summary activations/tiny-mixed--ud-ewt.h5
      lensbias summary py.h5 --concept token_kind --concept identifier_role
    """
    import numpy as np

    from lensbias.errors import LensbiasError
    from lensbias.probes import LinearProbe, ProbeConfig
    from lensbias.probes.linear import stratified_split
    from lensbias.probes.pair import document_ids, token_strata
    from lensbias.store import ActivationStore

    cfg = ProbeConfig(seed=seed)
    C = cfg.C if cfg.C is not None else 1.0  # one fixed C: a quick look, not a C search
    with ActivationStore(cache_file) as store:
        chosen = list(concepts) or [c for c in store.token_label_sets if c != "freq_bucket"]
        docs = document_ids(store)
        domain = token_strata(store).get("domain")
        click.echo(f"{store.model_name} on {store.dataset_name}: {store.n_tokens} tokens")
        click.echo(f"{'concept':<18} {'classes':>7} " + " ".join(f"{h:>26}" for h in store.hooks)
                   + f" {'majority':>9}")
        for concept in chosen:
            labels = store.labels(concept)
            rows = np.flatnonzero(labels >= 0)[:max_tokens]
            test = stratified_split(docs[rows], None if domain is None else domain[rows],
                                    cfg.test_fraction, seed=seed)
            y = labels[rows]
            values, counts = np.unique(y[~test], return_counts=True)
            if len(values) < 2 or not test.any():
                raise LensbiasError(f"concept {concept!r}: a probe needs at least two classes "
                                    "in training and a non-empty test split; use more examples")
            majority = float(np.mean(y[test] == values[np.argmax(counts)]))
            cells = []
            for hook in store.hooks:
                acts = store.activations(hook, rows)
                probe = LinearProbe(C=C, max_iter=cfg.max_iter, random_state=seed,
                                    device=device).fit(acts[~test], y[~test])
                cells.append(f"{probe.score(acts[test], y[test]):>26.3f}")
            click.echo(f"{concept:<18} {len(values):>7} " + " ".join(cells)
                       + f" {majority:>9.3f}")
