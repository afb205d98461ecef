"""CLI: ``lensbias cache`` runs a model over a concept dataset into an HDF5 activation cache."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("model")
@click.option("--dataset", "-d", required=True, help="Built-in name (`lensbias datasets`), "
              "NAME:SPLIT, or a .jsonl/.jsonl.gz file.")
@click.option("--out", "-o", type=click.Path(path_type=Path), default=None,
              help="Output .h5 file [default: activations/MODEL--DATASET.h5].")
@click.option("--hook", "hooks", multiple=True, help="Hook name, repeatable "
              "[default: residual stream after every block].")
@click.option("--dtype", type=click.Choice(["float16", "float32"]), default="float16",
              show_default=True)
@click.option("--max-examples", type=click.IntRange(min=1), default=None,
              help="Use only the first N examples.")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--force", is_flag=True, help="Rebuild a cache made from another model/dataset.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def cache(model: str, dataset: str, out: Path | None, hooks: tuple[str, ...], dtype: str,
          max_examples: int | None, batch_size: int, device: str, force: bool,
          quiet: bool) -> None:
    """Cache MODEL's activations on a concept dataset.

    A rerun with the same model, dataset and options reuses the file; a file made from
    anything else is refused unless --force.

    \b
    Examples:
      lensbias cache tiny-mixed --dataset ud-ewt
      lensbias cache tiny-code --dataset python-stdlib --max-examples 100 --out py.h5
      lensbias cache all-MiniLM-L6-v2 -d ud-gum:dev --hook blocks.2.hook_normalized_resid_post
    """
    from lensbias.concepts.registry import load_dataset
    from lensbias.models import load_model
    from lensbias.store import CacheConfig, cache_activations

    data = load_dataset(dataset, max_examples=max_examples)
    config = CacheConfig(hooks=hooks or None, dtype=dtype, batch_size=batch_size, device=device)
    lm = load_model(model, device=device)
    if out is None:
        safe = lambda s: "".join(c if c.isalnum() or c in "-_." else "_" for c in s)  # noqa: E731
        out = Path("activations") / f"{safe(Path(model).name)}--{safe(dataset)}.h5"
        out.parent.mkdir(exist_ok=True)
    path = cache_activations(lm, data, out, config, force=force, progress=not quiet)
    click.echo(str(path))
