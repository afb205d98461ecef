"""CLI: ``lensbias cache`` runs a model over a concept dataset into an HDF5 activation cache."""

from __future__ import annotations

from pathlib import Path

import click

from lensbias.cli.threads import threads_option


@click.command()
@click.argument("model", required=False)
@click.option("--dataset", "-d", default=None, help="Built-in name (`lensbias datasets`), "
              "NAME:SPLIT, or a .jsonl/.jsonl.gz file (required unless --verify).")
@click.option("--domain", default="user", show_default=True,
              help="Domain of the examples of a .jsonl dataset that declare none.")
@click.option("--out", "-o", type=click.Path(path_type=Path), default=None,
              help="Output .h5 file [default: activations/MODEL--DATASET.h5].")
@click.option("--hook", "hooks", multiple=True, help="Hook name, repeatable "
              "[default: residual stream after every block].")
@click.option("--dtype", type=click.Choice(["float16", "float32", "bfloat16"]),
              default="float16", show_default=True,
              help="Activation storage; bfloat16 is stored as uint16 bits, read as float32.")
@click.option("--max-examples", type=click.IntRange(min=1), default=None,
              help="Use only the first N examples.")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--force", is_flag=True, help="Rebuild a cache made from another model/dataset.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@click.option("--verify", "verify_file", type=click.Path(path_type=Path), default=None,
              metavar="FILE", help="Check every checksum of an existing cache FILE and exit.")
@threads_option
def cache(model: str | None, dataset: str | None, domain: str, out: Path | None,
          hooks: tuple[str, ...], dtype: str, max_examples: int | None, batch_size: int,
          device: str, force: bool, quiet: bool, verify_file: Path | None) -> None:
    """Cache MODEL's activations on a concept dataset.

    A rerun with the same model, dataset and options reuses the file; a file made from
    anything else is refused unless --force.

    \b
    Examples:
      lensbias cache tiny-mixed --dataset ud-ewt
      lensbias cache tiny-code --dataset python-stdlib --max-examples 100 --out py.h5
      lensbias cache all-MiniLM-L6-v2 -d ud-gum:dev --hook blocks.2.hook_normalized_resid_post
      lensbias cache --verify activations/tiny-mixed--ud-ewt.h5
    """
    from lensbias.models import load_model
    from lensbias.model_pair import check_writable, load_concepts
    from lensbias.store import CacheConfig, cache_activations, verify

    if verify_file is not None:
        if model is not None or dataset is not None:
            raise click.UsageError("--verify FILE takes no MODEL or --dataset")
        n = verify(verify_file)
        click.echo(f"{verify_file}: ok ({n} datasets, every checksum matches)")
        return
    if model is None or dataset is None:
        raise click.UsageError("MODEL and --dataset are required (or --verify FILE)")

    data = load_concepts(dataset, max_examples, domain)  # bad or empty data: before the model
    config = CacheConfig(hooks=hooks or None, dtype=dtype, batch_size=batch_size, device=device)
    made = None
    if out is None:
        safe = lambda s: "".join(c if c.isalnum() or c in "-_." else "_" for c in s)  # noqa: E731
        name = Path(dataset).name  # a file: its stem; a built-in name (NAME:SPLIT) as given
        for suffix in (".gz", ".jsonl"):
            name = name.removesuffix(suffix)
        out = Path("activations") / f"{safe(Path(model).name)}--{safe(name)}.h5"
        made = None if out.parent.exists() else out.parent
    check_writable(out.parent if made is None else made.parent)  # before the model loads
    lm = load_model(model, device=device)
    try:
        if made is not None:
            made.mkdir()
        path = cache_activations(lm, data, out, config, force=force, progress=not quiet)
    except BaseException:
        if made is not None and made.is_dir() and not any(made.iterdir()):
            made.rmdir()  # a failed or interrupted first run leaves no empty activations/
        raise
    click.echo(str(path))
