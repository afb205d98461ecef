"""Print the tables of docs/study.md (Markdown) from finished sweep folders.

    python scripts/study_tables.py study-results bias-results

Reads each folder's finished cells (``lensbias.sweep.read_results``) and recomputes the
analysis, so the numbers are the package's, not this script's.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from typing import Any

import numpy as np

from lensbias.sweep import analyse, read_results
from lensbias.sweep.analysis import interaction, method_label


def _f(v: Any, digits: int = 3) -> str:
    return "–" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.{digits}f}"


def _ci(ci: Any) -> str:
    return "" if not ci else f"[{ci[0]:+.3f}, {ci[1]:+.3f}]"


def interaction_table(result: dict[str, Any]) -> None:
    print("| method | level | interaction | 95% CI | S(code\\|code) | S(code\\|prose) | "
          "S(prose\\|code) | S(prose\\|prose) |")
    print("|---|---:|---:|---|---:|---:|---:|---:|")
    for r in result["interaction"]["rows"]:
        if r["interaction"] is None:
            continue
        m = r["means"]
        print(f"| {r['method']} | {r['level']} | {r['interaction']:+.3f} | {_ci(r['ci'])} | "
              + " | ".join(_f(m[k]) for k in ("code|code", "code|prose", "prose|code",
                                                 "prose|prose")) + " |")


def curves_table(result: dict[str, Any]) -> None:
    rows: dict[tuple[str, str], dict[str, Any]] = defaultdict(dict)
    levels: dict[str, list[Any]] = {}
    for c in result["phase_curves"]["curves"]:
        key = (c["method"], c["calib"])
        rows[key][c["concept_domain"]] = c
        levels[c["method"]] = [p["level"] for p in c["points"]]
    print("| method | calib | concepts | survival by level | collapse level |")
    print("|---|---|---|---|---:|")
    for (method, calib), per in rows.items():
        for dom in ("code", "prose"):
            c = per.get(dom)
            if c is None:
                continue
            pts = sorted(c["points"], key=lambda p: p["level"], reverse=c["descending"])
            curve = ", ".join(f"{p['level']}: {p['survival']:.2f}" for p in pts)
            print(f"| {method} | {calib} | {dom} | {curve} | {_f(c['collapse_level'], 2)} |")


def bpb_table(rows: list[dict[str, Any]]) -> None:
    """Mean bits/byte of B on held-out code and prose per method, level and calibration."""
    cells: dict[tuple[Any, ...], dict[str, Any]] = {}
    for r in rows:
        cells[r["cell_id"]] = r
    acc: dict[tuple[Any, ...], list[tuple[float, float]]] = defaultdict(list)
    base = None
    for r in cells.values():
        acc[(method_label(r), r["level"], r["calib"])].append((r["bpb_b_code"], r["bpb_b_prose"]))
        base = (r["bpb_a_code"], r["bpb_a_prose"])
    print(f"Original: code {base[0]:.3f}, prose {base[1]:.3f} bits/byte.\n")
    print("| method | level | calib | code bits/byte | prose bits/byte | cells |")
    print("|---|---:|---|---:|---:|---:|")
    for (method, level, calib), v in sorted(acc.items(), key=lambda kv: (kv[0][0], str(kv[0][1]),
                                                                          kv[0][2])):
        arr = np.array(v, float)
        print(f"| {method} | {level} | {calib} | {arr[:, 0].mean():.3f} | {arr[:, 1].mean():.3f} "
              f"| {len(v)} |")


def layer_table(rows: list[dict[str, Any]]) -> None:
    """Mean survival per method, level, hook and concept domain (all calibrations)."""
    acc: dict[tuple[Any, ...], list[float]] = defaultdict(list)
    for r in rows:
        if r.get("survival") is not None and r.get("concept_domain") in ("code", "prose"):
            acc[(method_label(r), r["level"], r["hook"], r["concept_domain"])].append(
                float(r["survival"]))
    print("| method | level | hook | code concepts | prose concepts |")
    print("|---|---:|---|---:|---:|")
    keys = sorted({k[:3] for k in acc}, key=lambda k: (k[0], str(k[1]), k[2]))
    for method, level, hook in keys:
        code = acc.get((method, level, hook, "code"), [])
        prose = acc.get((method, level, hook, "prose"), [])
        print(f"| {method} | {level} | {hook} | {_f(np.mean(code) if code else None, 2)} | "
              f"{_f(np.mean(prose) if prose else None, 2)} |")


def anisotropy(result: dict[str, Any]) -> None:
    av = result["anisotropy_vs_loss"]
    print(f"Spearman rho over {av['n_cells']} cells: {_f(av['rho'], 2)}")
    for m, v in av["by_method"].items():
        print(f"- {m}: rho {_f(v['rho'], 2)} over {v['n_cells']} cells")


def model_view(rows: list[dict[str, Any]]) -> None:
    result = analyse(rows)
    print("| model | domain | bits/byte A | probe acc A | acc − majority | 95% CI | "
          "survival | 95% CI |")
    print("|---|---|---:|---:|---:|---|---:|---|")
    for r in result["model_view"]["rows"]:
        print(f"| {r['model']} | {r['domain']} | {_f(r['bpb_a'])} | {_f(r['acc_a'])} | "
              f"{_f(r['gain'])} | {_ci(r['gain_ci'])} | {_f(r['survival'])} | "
              f"{_ci(r['survival_ci'])} |")
    print()
    print("Interaction per original model (Wanda 50%):\n")
    print("| model | interaction | 95% CI |")
    print("|---|---:|---|")
    for model in sorted({r["model"] for r in rows}):
        inter = interaction([r for r in rows if r["model"] == model])
        for r in inter["rows"]:
            if r["interaction"] is not None:
                print(f"| {model} | {r['interaction']:+.3f} | {_ci(r['ci'])} |")


def main(argv: list[str]) -> None:
    study = read_results(argv[0])
    result = analyse(study)
    print(f"# {argv[0]}: {result['n_cells']} cells, {result['n_rows']} rows\n")
    seconds = {r["cell_id"]: r["cell_seconds"] or 0.0 for r in study}
    print(f"sum of cell seconds: {sum(seconds.values()) / 60:.1f} min\n")
    print("## Interaction\n")
    interaction_table(result)
    print("\n## Phase curves\n")
    curves_table(result)
    print("\n## Bits per byte\n")
    bpb_table(study)
    print("\n## By layer\n")
    layer_table(study)
    print("\n## Anisotropy vs survival loss\n")
    anisotropy(result)
    if len(argv) > 1:
        print(f"\n## Models ({argv[1]})\n")
        model_view(read_results(argv[1]))


if __name__ == "__main__":
    main(sys.argv[1:])
