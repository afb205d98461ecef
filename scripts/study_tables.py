"""Print the tables of docs/study.md (Markdown) from finished sweep folders.

    python scripts/study_tables.py study-minilm study-tiny
    python scripts/study_tables.py --rows-only FOLDER   # only the tables read from the rows

Per folder it reads the finished cells (``lensbias.sweep.read_results``) and the study's
interaction from ``analysis.json`` (what ``lensbias sweep`` computed from the same cells;
recomputed when it is missing or from other cells; ``--rows-only`` skips it and the tables
built on it), so every number is the package's.
Tables: who enters (floors and kinds), the interaction per reading with its three
intervals, the per-corpus survivals behind it, the data-free control (a calibrated
method's survival against its data-free counterpart's at the same level: magnitude pruning
for the pruners, round-to-nearest for GPTQ), behaviour per
calibration domain, and anisotropy at a fixed level; per model where a folder holds
several (the training-data view, with its own table first).
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from lensbias.sweep import analyse, read_results
from lensbias.sweep.stats import (READINGS, data_free, entering, method_label, row_calib_domain,
                                  study_kinds, t_interval)


def _f(v: Any, digits: int = 3) -> str:
    return "–" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.{digits}f}"


def _s(v: Any) -> str:
    return "–" if v is None else f"{v:+.3f}"


def _ci(ci: Any) -> str:
    return "–" if not ci or ci[0] is None else f"[{ci[0]:+.3f}, {ci[1]:+.3f}]"


def load(folder: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    rows = read_results(folder)
    ids = sorted({str(r["cell_id"]) for r in rows})
    path = Path(folder) / "analysis.json"
    saved = json.loads(path.read_text()) if path.is_file() else {}
    if saved.get("cell_ids") != ids or not saved.get("inversion"):
        saved = analyse(rows)
    return rows, saved


def kinds_table(rows: list[dict[str, Any]]) -> None:
    """Per concept (one hook): test tokens, A's accuracy, floors, how often a single seed's
    row called it contextual, and the study's kind (t interval of the gain over seeds)."""
    kinds = study_kinds(rows)
    per: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    seen = set()
    for r in rows:
        key = (r["seed"], r["concept"], r["hook"])
        if key in seen:  # A's side is the same in every cell of a seed
            continue
        seen.add(key)
        per[(r["concept_domain"], r["concept"])].append(r)
    print("| domain | concept | test tokens | acc A | majority | token id | embed | gain | "
          "gain over seeds 95% | per-row contextual | study kind | powered |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---|---:|---|---|")
    for (dom, concept), rs in sorted(per.items()):
        mean = {k: np.mean([r[k] for r in rs if r.get(k) is not None] or [np.nan])
                for k in ("n_test", "acc_a", "majority", "token_id", "embed", "context_gain")}
        ctx = sum(r["kind"] == "contextual" for r in rs)
        powered = "yes" if not any(r.get("underpowered") for r in rs) else "no"
        k = kinds.get((str(rs[0]["model"]), str(rs[0]["hook"]), concept), {})
        print(f"| {dom} | {concept} | {mean['n_test']:.0f} | {_f(mean['acc_a'])} | "
              f"{_f(mean['majority'])} | {_f(mean['token_id'])} | {_f(mean['embed'])} | "
              f"{_s(mean['context_gain'])} | {_ci(k.get('ci'))} | {ctx}/{len(rs)} seeds | "
              f"{k.get('kind', '–')} | {powered} |")


def inversion_table(result: dict[str, Any], kind: str) -> None:
    rows = [r for r in result["inversion"]["rows"] if r["kind"] == kind]
    print("| reading | method | level | I | seed t 95% | cluster bootstrap 95% (resamples, "
          "bound spread over 10 RNG seeds; the envelope over them where not stable) | mixed model 95% | p (Holm) | S(code\\|code) | S(code\\|prose) | "
          "S(prose\\|code) | S(prose\\|prose) | seeds · corpora · concepts |")
    print("|---|---|---:|---:|---|---|---|---:|---:|---:|---:|---:|---|")
    for r in sorted(rows, key=lambda r: (r["method"], str(r["level"]),
                                         list(READINGS).index(r["reading"]))):
        m = r.get("means") or {}
        b = r.get("bootstrap") or {}
        mix = r.get("mixed") or {}
        nc, nk = r["n_corpora"], r["n_concepts"]
        boot = (f"{'' if b.get('stable') else 'envelope '}{_ci(b.get('read'))} "
                f"({b.get('n_boot')}, spread {_f(b.get('rng_spread'), 4)})" if b else "–")
        mixed = (_ci(mix.get("ci")) + ("" if mix.get("converged", True) else " (not converged)")
                 if "ci" in mix else mix.get("error", "–"))
        print(f"| {r['reading'].replace('_', ' ')} | {r['method']} | {r['level']} | "
              f"{_s(r.get('interaction'))} | {_ci((r.get('seed_t') or {}).get('ci'))} | "
              f"{boot} | {mixed} | {_f(mix.get('p_holm'))} | "
              + " | ".join(_f(m.get(k)) for k in ("code|code", "code|prose", "prose|code",
                                                  "prose|prose"))
              + f" | {r['n_seeds']} · {nc['code']}+{nc['prose']} · "
                f"{nk['code']}+{nk['prose']} |")


def corpus_table(rows: list[dict[str, Any]], kind: str = "contextual") -> None:
    """S(concept domain | calibration corpus) per reading: ratio of sums over seeds and
    concepts, with the spread over seeds."""
    acc: dict[tuple[Any, ...], dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in entering(rows, kind):
        for reading, key in READINGS.items():
            acc[(r["method"], r["level"], reading, r["calib"], r["concept_domain"])][
                r["seed"]].append((r[key] - r["baseline"], r["acc_a"] - r["baseline"]))
    print("| method | level | reading | calibration corpus | corpus domain | S(code concepts) "
          "| S(prose concepts) |")
    print("|---|---:|---|---|---|---:|---:|")
    keys = sorted({k[:4] for k in acc}, key=lambda k: (k[0], str(k[1]), k[2], k[3]))
    for method, level, reading, calib in keys:
        cells = []
        for dom in ("code", "prose"):
            per_seed = acc.get((method, level, reading, calib, dom), {})
            if not per_seed:
                cells.append("–")
                continue
            num = sum(n for v in per_seed.values() for n, _ in v)
            den = sum(d for v in per_seed.values() for _, d in v)
            seeds = [sum(n for n, _ in v) / sum(d for _, d in v) for v in per_seed.values()]
            cells.append(f"{num / den:.3f} ± {np.std(seeds):.3f}")
        dom = row_calib_domain({"calib": calib, "calib_domain": next(
            r.get("calib_domain") for r in rows if r["calib"] == calib)})
        print(f"| {method} | {level} | {reading.replace('_', ' ')} | {calib} | {dom} | "
              f"{cells[0]} | {cells[1]} |")


def _survival(rows: list[dict[str, Any]], key: str) -> float:
    """S = Σ(reading − baseline) / Σ(acc A − baseline): the ratio of sums over ``rows``."""
    den = sum(r["acc_a"] - r["baseline"] for r in rows)
    return sum(r[key] - r["baseline"] for r in rows) / den if den else float("nan")


DATA_FREE = {"sparsity": "magnitude", "bits": "rtn"}
"""The data-free counterpart of a calibrated method, by the parameter its level sets:
magnitude pruning (per matrix, attention and MLP) for Wanda and SparseGPT, round-to-nearest
on the same grid for GPTQ."""


def data_free_table(rows: list[dict[str, Any]], kind: str = "contextual") -> None:
    """Each calibrated method's S(code concepts) and S(prose concepts), pooled over the
    calibration corpora of one domain, beside its data-free counterpart's (``DATA_FREE``: it
    reads no calibration data) at the same level; the difference per seed (same seed: the
    same probes and data) with a seed-level t interval."""
    entered = entering(rows, kind)
    free = [r for r in entered if method_label(r) == DATA_FREE.get(r.get("param"))]
    entered = [r for r in entered if not _data_free(r)]
    if not free:
        print("(no data-free cells: magnitude or rtn)")
        return
    print("| level | reading | method | calibration | S(code) | S(prose) | S(code) − data-free "
          "(seed t 95%) | S(prose) − data-free (seed t 95%) | seeds |")
    print("|---:|---|---|---|---:|---:|---|---|---:|")
    for param, level in sorted({(r["param"], r["level"]) for r in free}):
        base = [r for r in free if r["param"] == param and r["level"] == level]
        methods = sorted({r["method"] for r in entered
                          if r["param"] == param and r["level"] == level})
        for reading, key in READINGS.items():
            name = reading.replace("_", " ")
            ref = {dom: _survival([r for r in base if r["concept_domain"] == dom], key)
                   for dom in ("code", "prose")}
            print(f"| {level} | {name} | {base[0]['method']} | none (data-free) | "
                  f"{ref['code']:.3f} | {ref['prose']:.3f} | – | – | "
                  f"{len({r['seed'] for r in base})} |")
            for method in methods:
                for calib in ("code", "prose"):
                    mine = [r for r in entered if r["method"] == method and r["param"] == param
                            and r["level"] == level and row_calib_domain(r) == calib]
                    seeds = sorted({r["seed"] for r in mine} & {r["seed"] for r in base})
                    cells, counts = [], []
                    for dom in ("code", "prose"):
                        diffs = np.array([
                            _survival([r for r in mine if r["seed"] == s
                                       and r["concept_domain"] == dom], key)
                            - _survival([r for r in base if r["seed"] == s
                                         and r["concept_domain"] == dom], key)
                            for s in seeds])
                        diffs = diffs[np.isfinite(diffs)]    # a seed without that domain's rows
                        counts.append(len(diffs))
                        if len(diffs) >= 2:
                            mean, ci, _, _ = t_interval(diffs)
                            cells.append(f"{mean:+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}]")
                        else:
                            cells.append("–")
                    pooled = {dom: _survival([r for r in mine if r["concept_domain"] == dom], key)
                              for dom in ("code", "prose")}
                    n = "/".join(sorted({str(v) for v in counts}))
                    print(f"| {level} | {name} | {method} | {calib} | {pooled['code']:.3f} | "
                          f"{pooled['prose']:.3f} | {cells[0]} | {cells[1]} | {n} |")


def _data_free(row: dict[str, Any]) -> bool:
    return data_free(str(row["method"]))


def module_group_table(rows: list[dict[str, Any]], kind: str = "contextual") -> None:
    """Every data-free method (magnitude per matrix on attention and MLP, on one module
    group alone, global, structured) at each level: S(code concepts) and S(prose concepts)
    per reading (ratio of sums over seeds), and the gap S(code) − S(prose) per seed with a
    seed-level t interval. Printed only where a folder holds more than one such method."""
    free = [r for r in entering(rows, kind) if _data_free(r)]
    labels = sorted({(method_label(r), r["level"]) for r in free})
    if len({m for m, _ in labels}) < 2:
        print("(one data-free method; see the data-free control)")
        return
    print("| method | level | reading | S(code) | S(prose) | S(code) − S(prose) (seed t 95%) "
          "| seeds |")
    print("|---|---:|---|---:|---:|---|---:|")
    for label, level in labels:
        mine = [r for r in free if method_label(r) == label and r["level"] == level]
        seeds = sorted({r["seed"] for r in mine})
        for reading, key in READINGS.items():
            pooled = {dom: _survival([r for r in mine if r["concept_domain"] == dom], key)
                      for dom in ("code", "prose")}
            gaps = np.array([
                _survival([r for r in mine if r["seed"] == s and r["concept_domain"] == "code"],
                          key)
                - _survival([r for r in mine if r["seed"] == s and r["concept_domain"] == "prose"],
                            key) for s in seeds])
            gap = "–"
            gaps = gaps[np.isfinite(gaps)]
            if len(gaps) >= 2:
                mean, ci, _, _ = t_interval(gaps)
                gap = f"{mean:+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}]"
            print(f"| {label} | {level} | {reading.replace('_', ' ')} | {pooled['code']:.3f} | "
                  f"{pooled['prose']:.3f} | {gap} | {len(seeds)} |")


def behaviour_table(rows: list[dict[str, Any]]) -> None:
    """B's behaviour per method, level and calibration domain (cells averaged): embedding
    fidelity for encoders, bits/byte for causal models."""
    cells = {r["cell_id"]: r for r in rows}
    acc: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
    for r in cells.values():
        acc[(method_label(r), r["level"], "none (data-free)" if _data_free(r)
             else r.get("calib_domain") or r["calib"])].append(r)
    enc = any(r.get("emb_cos_code") is not None for r in cells.values())
    fields = (("emb_cos_code", "emb_cos_prose", "emb_nn_code", "emb_nn_prose") if enc else
              ("bpb_b_code", "bpb_b_prose"))
    names = (("cosine, code", "cosine, prose", "retrieval agreement, code",
              "retrieval agreement, prose") if enc else ("bits/byte, code", "bits/byte, prose"))
    if not enc:
        a = next(iter(cells.values()))
        print(f"A: code {_f(a.get('bpb_a_code'))}, prose {_f(a.get('bpb_a_prose'))} bits/byte.\n")
    print("| method | level | calibration domain | " + " | ".join(names) + " | cells |")
    print("|---|---:|---|" + "---:|" * len(names) + "---:|")
    for (method, level, dom), rs in sorted(acc.items(), key=lambda kv: tuple(map(str, kv[0]))):
        vals = []
        for f in fields:
            v = [r[f] for r in rs if r.get(f) is not None]
            vals.append(f"{np.mean(v):.3f} ± {np.std(v):.3f}" if v else "–")
        print(f"| {method} | {level} | {dom} | " + " | ".join(vals) + f" | {len(rs)} |")


def anisotropy_table(result: dict[str, Any]) -> None:
    av = result["anisotropy_vs_loss"]
    print(f"Across all {av['n_cells']} cells: Spearman ρ = {_f(av['rho'], 2)}.\n")
    print("| model | method | level | ρ(Δ anisotropy, readout loss) | cells |")
    print("|---|---|---:|---:|---:|")
    for r in av.get("by_level", []):
        print(f"| {r['model']} | {r['method']} | {r['level']} | {_f(r['rho'], 2)} | "
              f"{r['n_cells']} |")


def model_view_table(result: dict[str, Any]) -> None:
    """The training-data view (``analysis.model_view``): per original model and concept
    domain, bits/byte, gains over majority and floors, and each reading's survival of its
    contextual concepts per method and level."""
    print("| model | concepts | bits/byte A | acc A − majority | acc A − floor (95%) | contextual "
          "| method | level | information (95%) | A's readout (95%) | aligned readout (95%) |")
    print("|---|---|---:|---:|---|---:|---|---:|---|---|---|")
    for r in result["model_view"]["rows"]:
        head = (f"| {r['model']} | {r['domain']} | {_f(r.get('bpb_a'))} | {_s(r.get('gain'))} | "
                f"{_s(r.get('context_gain'))} {_ci(r.get('context_gain_ci'))} | "
                f"{r.get('n_contextual', '–')}/{r.get('n_concepts')} |")
        for m in r.get("readings") or [{}]:
            reads = " | ".join(
                f"{_f((m.get(k) or {}).get('value'))} {_ci((m.get(k) or {}).get('ci'))}"
                if m else "–" for k in READINGS)
            print(f"{head} {m.get('method', '–')} | {m.get('level', '–')} | {reads} |")


def main(argv: list[str]) -> None:
    rows_only = "--rows-only" in argv
    for folder in [a for a in argv if a != "--rows-only"]:
        if rows_only:
            all_rows, result = read_results(folder), None
        else:
            all_rows, result = load(folder)
        seconds = {r["cell_id"]: r.get("cell_seconds") or 0.0 for r in all_rows}
        print(f"# {folder}: {len(seconds)} cells, {len(all_rows)} rows; "
              f"sum of cell seconds {sum(seconds.values()) / 60:.1f} min\n")
        models = sorted({str(r["model"]) for r in all_rows})
        if len(models) > 1 and result:
            print("## The original models (training-data view)\n")
            model_view_table(result)
            print()
        for model in models:
            rows = [r for r in all_rows if str(r["model"]) == model]
            if len(models) > 1:
                print(f"# Model {model}\n")
            print("## Concepts, floors and kinds\n")
            kinds_table(rows)
            if result:
                mine = {**result, "inversion": {**result["inversion"], "rows": [
                    r for r in result["inversion"]["rows"] if r["model"] == model]}}
                for kind in ("contextual", "token identity"):
                    print(f"\n## Interaction, {kind} concepts\n")
                    inversion_table(mine, kind)
            print("\n## Survival per calibration corpus (contextual concepts)\n")
            corpus_table(rows)
            print("\n## The data-free control: calibrated methods against magnitude pruning "
                  "and RTN\n")
            data_free_table(rows)
            print("\n## The data-free control by module group and structure\n")
            module_group_table(rows)
            print("\n## Behaviour\n")
            behaviour_table(rows)
            print()
        if result:
            print("\n## Anisotropy at a fixed level\n")
            anisotropy_table(result)
            print()


if __name__ == "__main__":
    from lensbias.errors import LensbiasError

    try:
        main(sys.argv[1:])
    except LensbiasError as err:   # e.g. a folder that is not a sweep folder: one line
        print(f"study_tables: {err}", file=sys.stderr)
        raise SystemExit(2) from None
