"""Sweeps, part 2a: one cell of a grid — compress, diff, and the cell's results-table rows.

``run_cell`` is what every executor runs (in-process, a process pool, a Ray task); ``run.py``
schedules cells and records their rows, ``execute.py`` runs them. Neither imports the
other: both import this module.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from lensbias.compress import CalibConfig, Recipe, Targets
from lensbias.compress.calib import calib_domain
from lensbias.diff import DiffConfig, run_diff
from lensbias.sweep.config import Cell, SweepConfig

GEOMETRY_METRICS = ("anisotropy", "isoscore", "effective_rank")


def run_cell(cell: Cell, config: SweepConfig, out_dir: str | os.PathLike[str]
             ) -> list[dict[str, Any]]:
    """Compress + diff one cell into ``out_dir/cells/<id>/``; its results-table rows."""
    start = time.perf_counter()
    calib_kw: dict[str, Any] = {"seed": cell.seed}
    if config.calib_n_seqs is not None:
        calib_kw["n_seqs"] = config.calib_n_seqs
    if config.calib_seq_len is not None:
        calib_kw["seq_len"] = config.calib_seq_len
    targets = Targets() if cell.targets is None else Targets(
        **{g: g in cell.targets for g in ("attn", "mlp", "embed", "unembed")})
    recipe = Recipe(cell.method, cell.recipe_params(), targets=targets,
                    calib=CalibConfig(cell.calib, **calib_kw))
    diff_config = DiffConfig(datasets=config.datasets, max_examples=config.max_examples,
                             max_chars=config.max_chars, concepts=config.concepts,
                             hooks=config.hooks, sae=config.sae, seed=cell.seed,
                             n_bootstrap=config.n_bootstrap, probe_control=config.control,
                             probe_ceiling=config.ceiling, device=config.device,
                             overlap=False)  # cells already share the cores
    folder = Path(out_dir) / "cells" / cell.id
    result = run_diff(cell.model, None, recipe, diff_config, folder, force=True)
    return cell_rows(cell, result.to_dict(), round(time.perf_counter() - start, 2))


def cell_rows(cell: Cell, summary: dict[str, Any], seconds: float | None = None
              ) -> list[dict[str, Any]]:
    """One row per concept × layer of a cell's ``summary.json`` (``SurvivalResult.to_dict()``)."""
    base = {"cell_id": cell.id, "cell_index": cell.index, "model": cell.model,
            "method": cell.method, "param": cell.param, "level": cell.level,
            "params": dict(cell.params), "calib": cell.calib,
            "calib_domain": calib_domain(cell.calib), "seed": cell.seed,
            "targets": "+".join(cell.targets) if cell.targets is not None else "attn+mlp"}
    geometry: dict[tuple[str, str], dict[str, Any]] = {}
    for g in (summary.get("geometry") or {}).get("rows", []):
        if g.get("domain") == "all":
            geometry[(g["hook"], g["model"])] = g
    behaviour = _behaviour_fields(summary.get("behaviour") or {})
    rows = []
    for p in (summary.get("probes") or {}).get("rows", []):
        ci = p.get("survival_ci") or [None, None]
        row = {**base, "concept": p["concept"], "concept_domain": p.get("domain"),
               "hook": p["hook"], "layer": p.get("layer"), "acc_a": p.get("acc_a"),
               "transfer": p.get("transfer"), "retrained": p.get("retrained"),
               "majority": p.get("majority"), "survival": p.get("survival"),
               "survival_lo": ci[0], "survival_hi": ci[1],
               **{k: p.get(k) for k in ("token_id", "embed", "floor", "context_gain", "kind",
                                        "baseline", "aligned_transfer", "information",
                                        "readout", "aligned_readout", "n_test",
                                        "underpowered")},
               "replicates": p.get("replicates")}
        a, b = geometry.get((p["hook"], "A"), {}), geometry.get((p["hook"], "B"), {})
        for metric in GEOMETRY_METRICS:
            va, vb = a.get(metric), b.get(metric)
            row[f"{metric}_a"], row[f"{metric}_b"] = va, vb
            row[f"d_{metric}"] = None if va is None or vb is None else vb - va
        row.update(behaviour)
        row["cell_seconds"] = seconds
        rows.append(row)
    return rows


def _behaviour_fields(behaviour: dict[str, Any]) -> dict[str, Any]:
    """A cell's behaviour as flat row fields: bits/byte of A and B (causal models) and, for
    encoders, embedding fidelity per held-out domain (``emb_cos_<d>``: mean cosine of A's and
    B's sentence embeddings; ``emb_nn_<d>``: retrieval agreement)."""
    bpb = behaviour.get("bits_per_byte") or {}
    out = {f"bpb_{m.lower()}_{d}": (bpb.get(m) or {}).get(d)
           for m in ("A", "B") for d in ("code", "prose")}
    emb = behaviour.get("by_domain") if behaviour.get("kind") == "embedding" else None
    for d in ("code", "prose"):
        f = (emb or {}).get(d) or {}
        out[f"emb_cos_{d}"] = f.get("cosine_mean")
        out[f"emb_nn_{d}"] = f.get("retrieval_agreement")
    return out
