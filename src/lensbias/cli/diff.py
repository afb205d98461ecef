"""CLI: ``lensbias diff`` (model pair → report) and ``lensbias report`` (re-render)."""

from __future__ import annotations

from pathlib import Path

import click

from lensbias.cli.device import device_option
from lensbias.cli.threads import threads_option

STAGES = ("compress", "cache", "probes", "sae", "geometry", "behaviour", "report")


@click.command()
@click.argument("original", required=False, default="tiny-mixed")
@click.argument("compressed", required=False)
@click.option("--compress", "compress_spec", default=None,
              help="METHOD:LEVEL to compress ORIGINAL on the fly, e.g. wanda:0.5, gptq:4, "
                   "sparsegpt:2:4 [default without COMPRESSED: wanda:0.5].")
@click.option("--calib", default="code", show_default=True,
              help="Compressor data for --compress: code, prose, mixed, c, corpus:NAME (a "
                   "named corpus, listed by lensbias compress --help), or a file.")
@click.option("--dataset", "-d", "datasets", multiple=True,
              help="Concept dataset, repeatable [default: ud-ewt and python-stdlib].")
@click.option("--domain", default="user", show_default=True,
              help="Domain of the examples of a .jsonl dataset that declare none "
                   "(\"labels\": {\"domain\": ...}), e.g. code or prose.")
@click.option("--max-examples", type=click.IntRange(min=1), default=None,
              help="At most N examples per dataset.")
@click.option("--max-chars", type=click.IntRange(min=100), default=60_000, show_default=True,
              help="About N characters of text per dataset (whole examples).")
@click.option("--concept", "concepts", multiple=True, help="Concept to probe, repeatable.")
@click.option("--hook", "hooks", multiple=True, help="Hook to compare, repeatable.")
@click.option("--sae/--no-sae", default=True, show_default=True, help="SAE feature survival.")
@click.option("--sae-hook", default=None, help="Hook for the SAE [default: middle block].")
@click.option("--sae-expansion", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--sae-k", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", "-o", type=click.Path(path_type=Path), default=Path("lensbias-report"),
              show_default=True)
@click.option("--force", is_flag=True, help="Write into an existing non-report folder.")
@click.option("--json", "as_json", is_flag=True, help="Print summary.json on stdout.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@device_option("Torch device for every stage: cpu, cuda or cuda:N.")
@threads_option
def diff(original: str, compressed: str | None, compress_spec: str | None, calib: str,
         datasets: tuple[str, ...], domain: str, max_examples: int | None, max_chars: int,
         concepts: tuple[str, ...],
         hooks: tuple[str, ...], sae: bool, sae_hook: str | None, sae_expansion: int,
         sae_k: int, seed: int, out: Path, force: bool, as_json: bool, quiet: bool,
         device: str) -> None:
    """Compare ORIGINAL with COMPRESSED (names or folders) and write a survival report.

    With no COMPRESSED, ORIGINAL is compressed on the fly (--compress, default wanda:0.5
    calibrated on --calib code). With no arguments at all: tiny-mixed vs its Wanda-50% copy.

    \b
    Examples:
      lensbias diff
      lensbias diff tiny-mixed --compress gptq:3 --calib prose --out gptq3-prose
      lensbias diff tiny-mixed wanda-code/ --no-sae --json
    """
    import json

    from tqdm.auto import tqdm

    from lensbias.compress import CalibConfig
    from lensbias.diff import DiffConfig, run_diff
    from lensbias.errors import LensbiasError
    from lensbias.model_pair import parse_compress_spec

    if compressed and compress_spec:
        raise LensbiasError("give either COMPRESSED or --compress, not both")
    recipe = None
    if compressed is None:
        recipe = parse_compress_spec(compress_spec or "wanda:0.5", CalibConfig(calib, seed=seed))
    config = DiffConfig(datasets=datasets or DiffConfig.datasets, max_examples=max_examples,
                        max_chars=max_chars,
                        concepts=concepts or None, hooks=hooks or None, sae=sae,
                        sae_hook=sae_hook, sae_expansion=sae_expansion, sae_k=sae_k, seed=seed,
                        device=device)
    bars: list = []  # made at the first stage, so a refused run prints only its error

    def stage(name: str) -> None:
        if not bars:
            bars.append(tqdm(total=len(STAGES), desc="diff", unit="stage", disable=quiet,
                             leave=False))
        bar = bars[0]
        bar.n = max(bar.n, STAGES.index(name))  # overlapped stages are joined after the probes
        bar.set_description(f"diff: {name}")
        bar.refresh()

    try:
        result = run_diff(original, compressed, recipe, config, out, force=force, stage=stage,
                          progress=not quiet, domain=domain)
    finally:
        for bar in bars:
            bar.close()
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=1))
    elif not quiet:
        click.echo(result.headline)
        click.echo(f"report: {out / 'report.html'}")


@click.command()
@click.argument("summary", type=click.Path(path_type=Path))
@click.option("--out", "-o", type=click.Path(path_type=Path), default=None,
              help="HTML file [default: report.html beside SUMMARY].")
def report(summary: Path, out: Path | None) -> None:
    """Re-render report.html from a summary.json.

    \b
    Examples:
      lensbias report lensbias-report/summary.json
    """
    import os

    from lensbias.survival import SurvivalResult

    result = SurvivalResult.load(summary)
    target = out or summary.with_name("report.html")
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(result.html(), encoding="utf-8")
    os.replace(tmp, target)
    click.echo(str(target))
