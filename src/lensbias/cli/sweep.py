"""CLI: ``lensbias sweep CONFIG``: a grid of compress + diff runs, resumable, then its analysis."""

from __future__ import annotations

from pathlib import Path

import click

from lensbias.sweep.stats import MAX_BOOT


@click.command()
@click.argument("config", type=click.Path(path_type=Path))
@click.option("--out", "-o", type=click.Path(path_type=Path), default=Path("sweep-results"),
              show_default=True, help="Folder for results.jsonl, analysis.json and cells/.")
@click.option("--jobs", "-j", type=click.IntRange(min=1), default=1, show_default=True,
              help="Cells run at once in a process pool (torch threads = cores // N each).")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local",
              show_default=True, help="local: this machine (--jobs); ray: one Ray task per cell.")
@click.option("--address", default=None,
              help="Ray cluster address (host:port, or 'auto'); default: a local Ray instance.")
@click.option("--cpus-per-cell", type=click.FloatRange(min=0, min_open=True), default=1,
              show_default=True, help="CPUs each Ray task declares (its torch threads).")
@click.option("--gpus-per-cell", type=click.FloatRange(min=0), default=0, show_default=True,
              help="GPUs each Ray task declares (set device: cuda in the config to use them).")
@click.option("--quick", is_flag=True,
              help="Only the first model, seed and level of each method (for CI).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar and no table.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="torch intra-op threads per cell [default: the config's `threads`, else "
                   "cores // jobs in a pool, else 1 on <= 2 cores].")
@click.option("--max-boot", type=click.IntRange(min=100), default=MAX_BOOT, show_default=True,
              help="Most cluster-bootstrap resamples per interval and RNG seed: they start "
                   "at 2,000 and double until each bound moves by < 0.01 across 10 RNG "
                   "seeds (a design that needs the cap: about 2.5 min on 2 cores).")
def sweep(config: Path, out: Path, jobs: int, executor: str, address: str | None,
          cpus_per_cell: float, gpus_per_cell: float, quick: bool, quiet: bool,
          threads: int | None, max_boot: int) -> None:
    """Run the grid in CONFIG (YAML): compress + diff per cell, into one results table.

    Each cell (model × method × level × calibration domain × seed) adds its rows
    (concept × layer) to OUT/results.jsonl when it finishes; a rerun skips finished cells,
    so a killed sweep loses at most the cells in flight. At the end OUT/analysis.json holds
    the calibration × concept domain interaction (per reading: information, readout, aligned
    readout; with a seed-level t interval, a cluster bootstrap and a mixed model, Holm-
    corrected), phase curves with collapse levels, and anisotropy change vs survival loss;
    the interaction table is printed.

    \b
    Examples:
      lensbias sweep sweeps/study-tiny.yaml --out study-tiny --jobs 2
      lensbias sweep sweeps/study-quick.yaml --out quick-study -q --max-boot 2000
      lensbias sweep sweeps/study-minilm.yaml --quick -q
      lensbias sweep sweeps/study-full-tiny.yaml --executor ray --address head:6379
    """
    import dataclasses

    from lensbias.cli.threads import set_threads
    from lensbias.sweep.analysis import interaction_table, write_analysis
    from lensbias.sweep.stats import inversion_table
    from lensbias.sweep.config import cells, load_sweep_config
    from lensbias.sweep.run import read_results, run_sweep

    cfg = load_sweep_config(config)
    if threads is not None:
        cfg = dataclasses.replace(cfg, threads=threads)
    set_threads(cfg.threads)  # cells run in this process when jobs = 1
    if quick:
        cfg = cfg.quick()
    if not quiet:
        click.echo(f"sweep: {len(cells(cfg))} cells -> {out}", err=True)
    if executor == "local" and (address is not None or gpus_per_cell):
        raise click.UsageError("--address and --gpus-per-cell need --executor ray")
    run_sweep(cfg, out, jobs=jobs, progress=not quiet, executor=executor, address=address,
              cpus_per_cell=cpus_per_cell, gpus_per_cell=gpus_per_cell)
    rows = read_results(out, cfg)
    result = write_analysis(rows, out, max_boot)
    target = out / "analysis.json"
    if not quiet:
        click.echo(inversion_table(result["inversion"]))
        click.echo("\nThe first study's analysis (mean per-row readout, every concept kind):")
        click.echo(interaction_table(result))
        for curve in result["phase_curves"]["curves"]:
            if curve["collapse_level"] is not None:
                click.echo(f"collapse: {curve['method']} calib={curve['calib']} "
                           f"{curve['concept_domain']} concepts at {curve['param']} "
                           f"~{curve['collapse_level']:.3g}")
        rho = result["anisotropy_vs_loss"]["rho"]
        if rho is not None:
            click.echo(f"Spearman(d anisotropy, survival loss) across "
                       f"{result['anisotropy_vs_loss']['n_cells']} cells: {rho:+.2f}")
        click.echo(f"results: {out / 'results.jsonl'}  analysis: {target}")


@click.command("sweep-report")
@click.argument("results", type=click.Path(path_type=Path))
@click.option("--out", "-o", type=click.Path(path_type=Path), default=None,
              help="HTML file to write [default: RESULTS/sweep-report.html].")
@click.option("--title", default=None, help="Page title [default: the folder's name].")
def sweep_report(results: Path, out: Path | None, title: str | None) -> None:
    """Write a self-contained HTML report of a sweep folder (or its results.jsonl).

    The analysis is recomputed from the finished cells' rows, so a report of a sweep still
    running shows the cells finished so far; the study's interaction (its bootstraps take
    minutes) is read from RESULTS/analysis.json when that was computed from the same cells. Cell rows link to each cell's diff report; the
    SAE feature-overlap matrices are read from the cells' summary.json files (cells/<id>/).

    \b
    Examples:
      lensbias sweep-report quick-results
      lensbias sweep-report sweep-results/results.jsonl --out study.html --title "study"
    """
    import os

    from lensbias.errors import LensbiasError
    from lensbias.report.sweep import render_sweep_html
    from lensbias.sweep.analysis import cell_summaries, feature_overlap
    from lensbias.sweep.run import RESULTS, read_results

    folder = results.parent if results.name == RESULTS and results.is_file() else results
    if not folder.is_dir() or not (folder / RESULTS).exists():
        raise LensbiasError(f"{results} is not a sweep folder (no {RESULTS} in it)")
    rows = read_results(folder)
    if not rows:
        raise LensbiasError(f"{folder} has no finished cells yet")
    target = out or folder / "sweep-report.html"
    if not target.parent.is_dir():
        raise LensbiasError(f"output folder {target.parent} does not exist")
    ids = {str(r.get("cell_id")) for r in rows}
    linked = {cid for cid in ids if (folder / "cells" / cid / "report.html").is_file()}
    if target.resolve().parent != folder.resolve():
        linked = set()  # links are relative to the sweep folder
    html = render_sweep_html(rows, _analysis(folder, rows),
                             title or f"lensbias sweep: {folder.name}", linked,
                             overlap=feature_overlap(rows, cell_summaries(folder)))
    tmp = target.with_name(f".{target.name}.tmp")
    try:
        tmp.write_text(html, encoding="utf-8")
        os.replace(tmp, target)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise LensbiasError(f"could not write {target}: {err.strerror or err}") from None
    click.echo(f"sweep report: {target}")


def _analysis(folder: Path, rows: list) -> dict:
    """``analyse(rows)``, reusing the study interaction of ``folder/analysis.json`` when it
    was computed from exactly these cells (same ids); else everything is recomputed."""
    import json

    from lensbias.sweep.analysis import analyse

    ids = sorted({str(r.get("cell_id")) for r in rows})
    try:
        saved = json.loads((folder / "analysis.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        saved = None
    if isinstance(saved, dict) and saved.get("cell_ids") == ids and "inversion" in saved:
        return {**analyse(rows, study_boot=0), "inversion": saved["inversion"]}
    return analyse(rows)
