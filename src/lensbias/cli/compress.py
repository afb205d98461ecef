"""CLI: ``lensbias compress`` makes a compressed copy of a model with a recorded recipe."""

from __future__ import annotations

import json
from pathlib import Path

import click

from lensbias.cli.device import device_option
from lensbias.cli.threads import threads_option

# CLI option name -> method parameter name
_PARAMS = {"sparsity": "sparsity", "nm": "nm", "bits": "bits", "group_size": "group_size",
           "symmetric": "symmetric", "act_order": "act_order", "rank_ratio": "rank_ratio",
           "alpha": "alpha", "n_drop": "n_drop", "student_layers": "n_layers",
           "student_d_model": "d_model", "steps": "steps", "temperature": "temperature"}


def _layers(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    try:
        first, _, last = value.partition("-")
        return int(first), int(last or first)
    except ValueError:
        raise click.BadParameter(f"use FIRST-LAST, e.g. 0-2; got {value!r}") from None


@click.command()
@click.argument("model")
@click.option("--method", "-m", required=True, help="Compression method (see below).")
@click.option("--sparsity", type=float, help="Pruning: fraction of weights (or units) removed.")
@click.option("--nm", help="N:M semi-structured pattern for magnitude/wanda/sparsegpt, e.g. 2:4.")
@click.option("--bits", type=int, help="Quantization: 2, 3, 4 or 8.")
@click.option("--group-size", type=int, help="Quantization group size (-1: per channel).")
@click.option("--symmetric", is_flag=True, default=None, help="Symmetric quantization grid.")
@click.option("--act-order", is_flag=True, default=None, help="GPTQ: columns by Hessian diagonal.")
@click.option("--rank-ratio", type=float, help="Low rank: fraction of parameters kept.")
@click.option("--alpha", type=float, help="ASVD scaling exponent.")
@click.option("--n-drop", type=int, help="Layer removal: number of blocks dropped.")
@click.option("--student-layers", type=int, help="Distillation: student blocks.")
@click.option("--student-d-model", type=int, help="Distillation: student width.")
@click.option("--steps", type=int, help="Distillation: optimizer steps.")
@click.option("--temperature", type=float, help="Distillation: softmax temperature.")
@click.option("--calib", default="code", show_default=True,
              help="Compressor data: code, prose, mixed, c, corpus:NAME (one named corpus; "
                   "prose: gum-academic, gum-fiction, gum-interview, gum-news, brown, "
                   "state-union, movie-reviews, masc; code: stdlib-unittest, stdlib-tkinter, "
                   "stdlib-asyncio, stdlib-email, site-transformers, site-sympy, c-glibc, "
                   "c-gcc; docs/compression.md), or a .txt/.jsonl file.")
@click.option("--calib-seqs", type=click.IntRange(min=1), default=128, show_default=True)
@click.option("--calib-len", type=click.IntRange(min=2), default=256, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--targets", default="attn,mlp", show_default=True,
              help="Module groups: any of attn, mlp, embed, unembed, comma-separated.")
@click.option("--layers", help="Block range FIRST-LAST (inclusive) [default: all].")
@click.option("--out", "-o", type=click.Path(path_type=Path), required=True,
              help="Output model folder.")
@click.option("--force", is_flag=True, help="Overwrite an existing output folder.")
@click.option("--json", "as_json", is_flag=True, help="Print the measurements as JSON.")
@click.option("--no-eval", is_flag=True, help="Skip bits-per-byte evaluation.")
@device_option("Torch device the model is loaded on and compressed on: cpu, cuda or cuda:N.")
@threads_option
def compress(model: str, method: str, calib: str, calib_seqs: int, calib_len: int, seed: int,
             targets: str, layers: str | None, out: Path, force: bool, as_json: bool,
             no_eval: bool, device: str, **options: object) -> None:
    """Compress MODEL with one method and save it, with its recipe, to --out.

    Methods: magnitude-global, magnitude-neurons, magnitude-heads (--sparsity);
    magnitude, wanda, sparsegpt (--sparsity or --nm); rtn, gptq, awq (--bits, --group-size,
    --symmetric, --act-order); svd, asvd, svd-llm (--rank-ratio); layer-drop (--n-drop);
    distill (--student-layers, --student-d-model, --steps, --temperature).

    \b
    Examples:
      lensbias compress tiny-mixed --method wanda --sparsity 0.5 --calib code --out wanda-code
      lensbias compress tiny-mixed -m gptq --bits 4 --group-size 64 --calib prose -o gptq-prose
      lensbias compress tiny-mixed -m magnitude --sparsity 0.6 --targets attn -o mag-attn
      lensbias compress tiny-mixed -m wanda --sparsity 0.5 --calib corpus:gum-news -o wanda-news
    """
    from lensbias.compress import CalibConfig, Recipe, Targets, compress as run
    from lensbias.compress.measure import measure
    from lensbias.compress.save import save_compressed
    from lensbias.errors import LensbiasError
    from lensbias.models import load_model
    from lensbias.model_pair import check_recipe, check_writable, with_default_level

    groups = {g.strip() for g in targets.split(",") if g.strip()}
    unknown = groups - {"attn", "mlp", "embed", "unembed"}
    if unknown or not groups:
        raise LensbiasError(f"--targets {targets!r}: use attn, mlp, embed, unembed")
    if out.exists() and not force:
        raise LensbiasError(f"{out} already exists; pass --force to overwrite it")
    params = {_PARAMS[k]: v for k, v in options.items() if v is not None}
    recipe = Recipe(method, with_default_level(method, params),
                    Targets(attn="attn" in groups, mlp="mlp" in groups, embed="embed" in groups,
                            unembed="unembed" in groups, layers=_layers(layers)),
                    CalibConfig(calib, calib_seqs, calib_len, seed))
    check_recipe(recipe)  # options and calibration data: before the model loads
    check_writable(out.parent)
    lm = load_model(model, device=device)
    result = run(lm, recipe)
    measured = measure(lm, result, with_bpb=not no_eval)
    save_compressed(result, out, measured, force=force)
    if as_json:
        click.echo(json.dumps(measured, indent=2))
    else:
        click.echo(_table(lm.name, out, measured))


def _table(name: str, out: Path, m: dict) -> str:
    lines = [f"saved {out}",
             "sparsity: " + ", ".join(f"{g} {v:.1%}" for g, v in m["sparsity"].items())]
    if m["bits_per_weight_rewritten"] is not None:
        lines.append(f"bits per weight (rewritten matrices): {m['bits_per_weight_rewritten']:.2f}")
    p, b = m["params"], m["bytes_fp16_estimate"]
    lines.append(f"params: {p['original']:,} -> {p['compressed']:,} ({p['nonzero']:,} nonzero)")
    lines.append(f"size at fp16: {b['original']:,} B -> {b['compressed']:,} B")
    for which in ("original", "compressed"):
        bpb = m.get("bits_per_byte", {}).get(which, {})
        if bpb and None not in bpb.values():
            lines.append(f"bits/byte {which:<10}: code {bpb['code']:.3f}, prose {bpb['prose']:.3f}"
                         f" (held-out slice {m.get('bits_per_byte_slice', '?')})")
    return "\n".join(lines)
