"""CLI: ``lensbias export`` writes a lensbias causal model as a transformers checkpoint."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("model")
@click.option("--hf", "out", type=click.Path(path_type=Path), required=True,
              help="Output folder: a transformers checkpoint (config.json, model.safetensors, "
                   "tokenizer).")
@click.option("--force", is_flag=True, help="Overwrite an existing output folder.")
def export(model: str, out: Path, force: bool) -> None:
    """Export MODEL (a built-in tiny model or a lensbias model folder) as a transformers
    OPTForCausalLM checkpoint with its tokenizer, for compressing with other tools.

    The blocks are copied as they are; the unembedding bias, which OPT's head lacks, is
    folded exactly into the head's weight through the final LayerNorm. transformers'
    logits are checked against lensbias' before the folder is written (max abs difference
    at most 1e-4, printed). `load_model` and `lensbias diff` read the folder back.

    \b
    Examples:
      lensbias export tiny-mixed --hf ./tiny-mixed-hf
      lensbias export wanda-code/ --hf ./wanda-code-hf --force
      lensbias diff tiny-mixed ./tiny-mixed-hf-w4a16
    """
    from lensbias.errors import LensbiasError
    from lensbias.models import load_model
    from lensbias.models.export import export_hf

    if out.exists() and not force:
        raise LensbiasError(f"{out} already exists; pass --force to overwrite it")
    lm = load_model(model)
    record = export_hf(lm, out, force=force)
    click.echo(f"saved {out} (OPTForCausalLM, from {lm.name}): max abs logit difference "
               f"{record['max_abs_logit_diff']:.2g} on the probe text")
