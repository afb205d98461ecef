"""Report, stage 3: the sweep report (``lensbias sweep-report``), from a results table alone.

Same style, scripts and escaping as the diff report (every string from a results row —
model, method, concept, calibration file name — goes through ``esc``). Sections: headline,
interaction table with CIs, phase curves with collapse levels, anisotropy change vs
survival loss, the training-data view of the original models, which SAE features the
compressions damage (overlap matrices, from the cells' ``summary.json`` files when they lie
beside the results), and every cell with a link to its own diff report.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

from lensbias.report.render import esc, fmt, fmt_ci, sortable_table
from lensbias.report.static import CSS, JS
from lensbias.report.svg import bar_chart, line_chart, scatter_chart


def render_sweep_html(rows: list[dict[str, Any]], analysis: dict[str, Any],
                      title: str = "lensbias sweep", linked: set[str] | None = None,
                      overlap: dict[str, Any] | None = None) -> str:
    """The whole sweep report as one self-contained HTML string.

    ``linked``: cell ids whose ``cells/<id>/report.html`` exists beside the page (None: all).
    ``overlap``: ``lensbias.sweep.analysis.feature_overlap`` of the cells' summaries (None:
    no summary was read, and the panel says so).
    """
    models = sorted({str(r.get("model")) for r in rows})
    body = "".join([
        f"<header><h1>{esc(title)}</h1><p class='sub'>{analysis.get('n_cells', 0)} cells, "
        f"{analysis.get('n_rows', 0)} rows (cell × concept × layer); models: "
        f"{esc(', '.join(models) or '–')}</p></header>",
        _headline(analysis),
        _inversion(analysis.get("inversion") or {}),
        _interaction(analysis.get("interaction") or {}),
        _curves(analysis.get("phase_curves") or {}),
        _scatter(analysis.get("anisotropy_vs_loss") or {}),
        _models(analysis.get("model_view") or {}),
        _overlap(overlap if overlap is not None else
                 {"missing": sorted({str(r.get("cell_id")) for r in rows}), "groups": []}),
        _cells(rows, linked),
    ])
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>{esc(title)}</title><style>{CSS}</style></head><body>{body}"
            f"<script>{JS}</script></body></html>")


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _headline(analysis: dict[str, Any]) -> str:
    inv = [r for r in (analysis.get("inversion") or {}).get("rows", [])
           if r.get("interaction") is not None and r.get("kind") == "contextual"]
    rows = [r for r in (analysis.get("interaction") or {}).get("rows", [])
            if r.get("interaction") is not None]
    if inv:
        parts = []
        for reading in ("information", "readout", "aligned_readout"):
            mine = [r for r in inv if r["reading"] == reading]
            if not mine:
                continue
            sure = sum(1 for r in mine if _excludes_zero(r))
            parts.append(f"{reading.replace('_', ' ')}: {sure} of {len(mine)}")
        text = ("Calibration domain × concept domain interaction on contextual concepts, "
                "settings (model × hook × method × level) where the cluster bootstrap and the "
                "Holm-corrected mixed model both exclude 0, per reading: "
                + "; ".join(parts) + ".")
    elif not rows:
        text = ("No interaction could be computed: it needs code and prose calibration and "
                "concepts of both domains at some method and level.")
    else:
        pos = sum(1 for r in rows if r.get("ci") and r["ci"][0] > 0)
        neg = sum(1 for r in rows if r.get("ci") and r["ci"][1] < 0)
        text = (f"Calibration domain × concept domain interaction at {len(rows)} method × level "
                f"settings: interval above 0 (the calibration domain protects its own concepts) "
                f"at {pos}, below 0 at {neg}, including 0 at {len(rows) - pos - neg}.")
    rho = (analysis.get("anisotropy_vs_loss") or {}).get("rho")
    if _num(rho):
        text += f" Spearman ρ between anisotropy change and survival loss across cells: {rho:+.2f}."
    return f"<section id='headline'><h2>Headline</h2><p class='headline'>{esc(text)}</p></section>"


def _excludes_zero(r: dict[str, Any]) -> bool:
    """The cluster-bootstrap interval excludes 0 and the mixed model's Holm p < 0.05, on the
    same side."""
    boot = _boot_ci(r)
    mix = r.get("mixed") or {}
    if not boot or not _num(mix.get("p_holm")) or mix["p_holm"] >= 0.05:
        return False
    return (boot[0] > 0 and mix["estimate"] > 0) or (boot[1] < 0 and mix["estimate"] < 0)


def _boot_ci(r: dict[str, Any]) -> Any:
    """The cluster-bootstrap interval to read (``sweep.stats``: RNG seed 0's when stable
    across RNG seeds, else the envelope over them)."""
    return (r.get("bootstrap") or {}).get("read")


def _with_interaction(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str]:
    """The rows that have an interaction, and a note naming the settings that have none
    (their cells lack a calibration or concept domain: a data-free method's one
    calibration), so a table does not fill with empty rows."""
    lacking = sorted({(str(r.get("method")), fmt(r.get("level"))) for r in rows
                      if r.get("interaction") is None})
    note = (f"<p class='note'>Not in the table, no interaction defined (their cells lack a "
            f"calibration domain or a concept domain; a data-free method has one calibration "
            f"and reads none): {esc(', '.join(f'{m} {lv}' for m, lv in lacking))}.</p>"
            if lacking else "")
    return [r for r in rows if r.get("interaction") is not None], note


def _inversion(inv: dict[str, Any]) -> str:
    rows = inv.get("rows", [])
    if not rows:
        return ("<section id='inversion'><h2>The study's interaction</h2><p>No rows enter: "
                "it needs calibration corpora of both domains and powered concepts of both "
                "domains.</p></section>")
    rows, note = _with_interaction(rows)
    body = []
    for r in rows:
        m = r.get("means") or {}
        mix = r.get("mixed") or {}
        st = r.get("seed_t") or {}
        boot = r.get("bootstrap") or {}
        nc, nk = r.get("n_corpora") or {}, r.get("n_concepts") or {}
        body.append(
            f"<tr><td>{esc(r.get('model'))}<br><small>{esc(r.get('hook'))}</small></td>"
            + "".join(f"<td>{esc(r.get(k))}</td>" for k in ("kind", "reading", "method"))
            + f"<td>{fmt(r.get('level'))}</td><td>{fmt(r.get('interaction'))}</td>"
            f"<td class='ci'>{fmt_ci(st.get('ci'))}</td>"
            f"<td class='ci'>{fmt_ci(_boot_ci(r))}</td>"
            f"<td class='ci'>{fmt_ci(mix.get('ci'))}</td><td>{fmt(mix.get('p_holm'))}</td>"
            + "".join(f"<td>{fmt(m.get(k))}</td>" for k in
                      ("code|code", "code|prose", "prose|code", "prose|prose"))
            + f"<td>{esc(r.get('n_seeds'))} · {esc(nc.get('code'))}+{esc(nc.get('prose'))}"
            f" · {esc(nk.get('code'))}+{esc(nk.get('prose'))}</td></tr>")
    table = sortable_table("inversion-table", [
        "model / hook", "kind", "reading", "method", "level", "I", "seed t", "cluster boot",
        "mixed model", "p Holm", "cc", "cp", "pc", "pp", "seeds · corpora · concepts"], body)
    shown = [r for r in rows if r.get("kind") == "contextual"]
    several = len({r.get("model") for r in shown}) > 1  # name the model where it varies
    bars = [(f"{r.get('model')}:" * several + f"{r.get('reading')}:{r.get('method')}:"
             f"{r.get('level')}", r.get("interaction"), _boot_ci(r)) for r in shown]
    chart = (bar_chart("Interaction on contextual concepts, cluster-bootstrap 95% interval",
                       bars, width=_bar_width(len(bars), 84),
                       groups=[_side(_boot_ci(r)) for r in shown],
                       colors=SIDE_COLORS, y_label="interaction (kept share)",
                       x_label="model:" * several + "reading:method:level") if bars else "")
    return (f"<section id='inversion'><h2>The study's interaction, three readings</h2>"
            f"<p>{esc(inv.get('definition', ''))}. Intervals: a t interval over seeds; a "
            f"cluster bootstrap over seeds, calibration corpora, concept groups and concepts, "
            f"and test documents (resamples raised until each bound moves by less than "
            f"{esc(inv.get('tolerance'))} across 10 RNG seeds; where the cap came first, the "
            f"envelope over the RNG seeds is shown); a mixed model with crossed "
            f"random effects (per-concept readings, each concept weighted equally), p "
            f"Holm-corrected across method × level. All intervals 95%. cc = S(code concepts | "
            f"code calibration), cp = S(code | prose), pc = S(prose | code), pp = S(prose | "
            f"prose); corpora and concepts are counted code + prose.</p>{chart}{table}{note}"
            f"</section>")


def _interaction(inter: dict[str, Any]) -> str:
    rows = inter.get("rows", [])
    rows, note = _with_interaction(rows)
    body = []
    for r in rows:
        m = r.get("means") or {}
        body.append(
            f"<tr><td>{esc(r.get('method'))}</td><td>{esc(r.get('param'))}</td>"
            f"<td>{fmt(r.get('level'))}</td><td>{fmt(r.get('interaction'))}</td>"
            f"<td class='ci'>{fmt_ci(r.get('ci'))}</td>"
            + "".join(f"<td>{fmt(m.get(k))}</td>" for k in
                      ("code|code", "code|prose", "prose|code", "prose|prose"))
            + f"<td>{esc(r.get('n_seeds'))}</td></tr>")
    table = sortable_table("interaction-table", [
        "method", "param", "level", "interaction", "95% CI", "S(code | code calib)",
        "S(code | prose calib)", "S(prose | code calib)", "S(prose | prose calib)", "seeds"],
        body)
    bars = [(f"{r.get('method')}:{r.get('level')}", r.get("interaction"), r.get("ci"))
            for r in rows]
    chart = bar_chart("Interaction (> 0: calibration protects its own domain), 95% interval",
                      bars, width=_bar_width(len(bars), 84), groups=[_side(r.get("ci"))
                                                                     for r in rows],
                      colors=SIDE_COLORS, y_label="interaction (survival)",
                      x_label="method:level")
    return (f"<section id='interaction'><h2>The first study's interaction (readout, per-row "
            f"means)</h2><p>{esc(inter.get('definition', ''))}; S is the mean of per-row "
            f"readouts over every concept, token identity included. Interval: percentile "
            f"bootstrap over seeds and concepts (resamples raised until both bounds move by "
            f"less than 0.01 across 10 RNG seeds). Kept for comparison with the first study; "
            f"the section above is the analysis to read.</p>{chart}{table}{note}</section>")


SIDE_COLORS = {"interval above 0": "#1f77b4", "interval below 0": "#d62728",
               "interval includes 0": "#9e9e9e"}
CALIB_COLORS = {"code": "#1f77b4", "prose": "#ff7f0e", "mixed": "#2ca02c",
                "no calibration": "#555555"}
MAX_CHART = 1140
"""Widest chart (px): fits the page's 1200 px column with the frame's padding."""


def _bar_width(n: int, per_bar: int) -> int:
    return max(480, min(MAX_CHART, per_bar * n + 80))


def _side(ci: Any) -> str:
    """Where a bar's interval lies against 0 (the headline counts the same three)."""
    if ci and ci[0] is not None and ci[0] > 0:
        return "interval above 0"
    if ci and ci[1] is not None and ci[1] < 0:
        return "interval below 0"
    return "interval includes 0"


def _data_free(method: str) -> bool:
    """``sweep.stats.data_free``; False where it cannot be imported (the report still
    renders without torch)."""
    try:
        from lensbias.sweep.stats import data_free
    except ImportError:  # pragma: no cover
        return False
    return data_free(method)


def _curves(curves: dict[str, Any]) -> str:
    by_method: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for c in curves.get("curves", []):
        by_method[(str(c.get("method")), str(c.get("param")))].append(c)
    charts, collapse = [], []
    for (method, param), group in by_method.items():
        descending = bool(group[0].get("descending"))
        levels = sorted({p["level"] for c in group for p in c.get("points", [])},
                        reverse=descending)
        free = _data_free(method)
        series, colors, dashed = {}, {}, []
        for c in group:
            at = {p["level"]: p.get("survival") for p in c.get("points", [])}
            calib = "no calibration" if free else str(c.get("calib"))
            name = (f"{c.get('concept_domain')} concepts"
                    + ("" if free else f", {c.get('calib')} calibration"))
            series[name] = [at.get(lv) for lv in levels]
            # a corpus takes its domain's colour (an older analysis has no calib_domain)
            colors[name] = CALIB_COLORS.get(
                calib if free else (c.get("calib_domain") or calib), "#8c564b")
            if c.get("concept_domain") == "prose":
                dashed.append(name)
            shown_calib = "none (data-free)" if free else c.get("calib")
            collapse.append(
                f"<tr><td>{esc(method)}</td><td>{esc(shown_calib)}</td>"
                f"<td>{esc(c.get('concept_domain'))}</td><td>{esc(param)}</td>"
                f"<td>{fmt(c.get('collapse_level'))}</td></tr>")
        charts.append(line_chart(
            f"{method}: survival vs {param}, harder →", levels, series, y_label="mean survival",
            x_label=f"{param}{' (data-free: no calibration)' if free else ''}", y_to=1.0,
            width=540, height=270, colors=colors, dashed=tuple(dashed)))
    table = sortable_table("collapse-table",
                           ["method", "calib", "concepts", "level", "collapse level"], collapse)
    return (f"<section id='curves'><h2>Phase curves</h2><p>Mean survival per level, read "
            f"towards harder compression; the collapse level is where it first drops below "
            f"{fmt(curves.get('threshold'), 2)} (interpolated; – if never). Colour: the "
            f"calibration domain; solid line and point: code concepts, dashed line and "
            f"hollow point: prose concepts.</p>"
            f"<div class='charts'>{''.join(charts)}</div>{table}</section>")


def _scatter(av: dict[str, Any]) -> str:
    groups: dict[str, list[tuple[float, float, str]]] = defaultdict(list)
    for p in av.get("points", []):
        if _num(p.get("d_anisotropy")) and _num(p.get("survival_loss")):
            tip = (f"{p.get('method')}:{p.get('level')} calib={p.get('calib')} "
                   f"seed={p.get('seed')}")
            groups[str(p.get("method"))].append((float(p["d_anisotropy"]),
                                                 float(p["survival_loss"]), tip))
    rho = av.get("rho")
    per = ", ".join(f"{m}: {fmt(v.get('rho'), 2)} (n={v.get('n_cells')})"
                    for m, v in (av.get("by_method") or {}).items())
    chart = scatter_chart("Anisotropy change vs survival loss, one point per cell", groups,
                          x_label="Δ anisotropy (B − A)", y_label="1 − mean survival",
                          width=560, height=340)
    return (f"<section id='scatter'><h2>Geometry vs concept loss</h2>"
            f"<p>Spearman ρ across {esc(av.get('n_cells', 0))} cells: "
            f"{fmt(rho, 2) if _num(rho) else '–'}; by method: {esc(per) or '–'}.</p>"
            f"{chart}</section>")


def _stability(boot: Any) -> str:
    """How many of the model view's intervals settled across bootstrap RNG seeds."""
    if not isinstance(boot, dict) or not boot.get("n_intervals"):
        return ""
    return (f" ({boot['n_stable']} of {boot['n_intervals']} intervals with both bounds "
            f"moving by less than {boot.get('tolerance')} across {boot.get('n_rng')} RNG "
            f"seeds, at up to {boot.get('max_n_boot'):,} resamples"
            + ("; the others: the envelope over those seeds)"
               if boot["n_stable"] < boot["n_intervals"] else ")"))


def _models(view: dict[str, Any]) -> str:
    rows = view.get("rows", [])
    if not rows:
        return ""
    body = [
        f"<tr><td>{esc(r.get('model'))}</td><td>{esc(r.get('domain'))}</td>"
        f"<td>{fmt(r.get('bpb_a'))}</td><td>{fmt(r.get('acc_a'))}</td>"
        f"<td>{fmt(r.get('gain'))}</td><td class='ci'>{fmt_ci(r.get('gain_ci'))}</td>"
        f"<td>{fmt(r.get('context_gain'))}</td>"
        f"<td class='ci'>{fmt_ci(r.get('context_gain_ci'))}</td>"
        f"<td>{esc(r.get('n_contextual', '–'))}/{esc(r.get('n_concepts'))}</td>"
        f"<td>{fmt(r.get('survival'))}</td><td class='ci'>{fmt_ci(r.get('survival_ci'))}</td>"
        f"</tr>" for r in rows]
    table = sortable_table("model-table", [
        "model", "domain", "bits/byte A", "probe acc A", "acc − majority", "CI",
        "acc − floor", "CI", "contextual / concepts", "survival (v1)", "CI"], body)
    reads = [(r, m) for r in rows for m in r.get("readings") or []]
    read_body = [
        f"<tr><td>{esc(r.get('model'))}</td><td>{esc(r.get('domain'))}</td>"
        f"<td>{esc(m.get('method'))}</td><td>{fmt(m.get('level'))}</td>"
        f"<td>{esc(m.get('n_concepts'))}</td>"
        + "".join(f"<td>{fmt((m.get(k) or {}).get('value'))}</td>"
                  f"<td class='ci'>{fmt_ci((m.get(k) or {}).get('ci'))}</td>"
                  for k in ("information", "readout", "aligned_readout"))
        + "</tr>" for r, m in reads]
    read_table = sortable_table("model-readings-table", [
        "model", "domain", "method", "level", "contextual concepts", "information", "CI",
        "A's readout", "CI", "aligned readout", "CI"], read_body) if reads else ""
    bars = [(str(r.get("model")), r.get("gain"), r.get("gain_ci")) for r in rows]
    chart = bar_chart("Probe accuracy above majority, per model and domain, 95% interval",
                      bars, width=_bar_width(len(bars), 110),
                      groups=[f"{r.get('domain')} concepts" for r in rows],
                      y_label="accuracy − majority", x_label="model")
    return (f"<section id='models'><h2>Original models: training data</h2><p>Each original "
            f"model's bits per byte on held-out text of a domain (lower: compresses it "
            f"better) beside its probe accuracy on that domain's concepts, above the majority "
            f"class and above the best floor (token identity, context-free embedding). "
            f"Survival (v1) is each row's own ratio, over every concept.</p>{chart}{table}"
            + (f"<p>Survival v2 of each model's <em>contextual</em> concepts (acc A above "
               f"its floors over seeds), per reading: information (a probe retrained on B), "
               f"A's readout (A's probe on B), the readout after a label-free re-alignment; "
               f"Σ (accuracy − baseline) / Σ (acc A − baseline), the baseline each row's floor "
               f"(majority where a seed's own test found no context), 95% bootstrap over "
               f"seeds and concepts{_stability(view.get('bootstrap'))}.</p>{read_table}"
               if read_table else "")
            + "</section>")


def _heat(v: Any, signed: bool) -> str:
    """A matrix cell: the value on a background whose strength is its size (blue: positive,
    red: negative; only numbers reach the style attribute)."""
    if not _num(v):
        return "<td class='ci'>–</td>"
    rgb = "31,119,180" if v >= 0 or not signed else "214,39,40"
    return (f"<td style='background:rgba({rgb},{min(abs(float(v)), 1.0) * 0.6:.2f});"
            f"text-align:right'>{float(v):.2f}</td>")


def _matrix(name: str, m: list[list[Any]], labels: list[str], signed: bool) -> str:
    n = len(labels)
    head = "".join(f"<th title='{esc(lab)}'>{i + 1}</th>" for i, lab in enumerate(labels))
    body = "".join(
        f"<tr><th title='{esc(labels[i])}'>{i + 1}</th>"
        + "".join(_heat(m[i][j] if i < len(m) and j < len(m[i]) else None, signed)
                  for j in range(n)) + "</tr>" for i in range(n))
    return (f"<div style='margin-right:24px'><p><b>{name}</b></p>"
            f"<table class='overlap' style='width:auto'><thead><tr>"
            f"<th></th>{head}</tr></thead><tbody>{body}</tbody></table></div>")


def _overlap(ov: dict[str, Any]) -> str:
    """Which features do different compressions damage? One Jaccard and one Spearman matrix
    per SAE of A (``feature_overlap``), its cells listed by number."""
    missing, no_sae = len(ov.get("missing", [])), len(ov.get("no_sae", []))
    groups = ov.get("groups", [])
    why = ([f"{missing} cell{'s' if missing != 1 else ''} with no summary.json beside the "
            f"results (cells/&lt;cell id&gt;/summary.json)"] if missing else []) + (
        [f"{no_sae} cell{'s' if no_sae != 1 else ''} whose summary has no SAE report (a "
         f"sweep runs SAEs with <code>sae: true</code>)"] if no_sae else [])
    skipped = f" Skipped: {' and '.join(why)}." if why else ""
    intro = (f"<p>For the cells that share an SAE of A (same model, seed and SAE hook): the "
             f"Jaccard overlap of the features each compression damages (not 'survived' in "
             f"the readout), and the Spearman ρ of their damage scores (1 − r), over the "
             f"features stable and judged in every cell of the matrix. Jaccard near 1 and ρ "
             f"near 1: the compressions break the same features, in the same order; low "
             f"values: each damages its own. Cells whose SAEs of A differ "
             f"(summary.sae_a_sha256) are never put in one matrix."
             + (f" Cells shown: {esc(ov['rule'])}." if ov.get("rule") else "") + f"{skipped}"
             + (f" Not looked at under this rule: {esc(ov.get('not_shown'))} "
                f"cell{'s' if ov.get('not_shown') != 1 else ''}."
                if ov.get("not_shown") else "") + "</p>")
    parts = []
    if not groups:
        parts.append("<p class='headline'>No two cells with an SAE report of the same SAE of "
                     "A are beside these results, so there is no overlap to show.</p>")
    for g in groups:
        labels = [str(x) for x in g.get("labels", [])]
        damaged = g.get("damaged") or []
        legend = "".join(
            f"<tr><td>{i + 1}</td><td style='overflow-wrap:anywhere'>{esc(lab)}</td>"
            f"<td>{fmt(damaged[i] if i < len(damaged) else None)}</td>"
            f"<td><code class='cid'>{esc((g.get('cells') or [''] * len(labels))[i])}</code>"
            f"</td></tr>" for i, lab in enumerate(labels))
        n_feat = g.get("n_features") or 0
        note = ""
        if not n_feat:
            note = (" No feature is judged in every cell"
                    + (f" ({esc(g.get('n_gate_failed'))} of {len(labels)} cells withhold "
                       f"their verdicts: A's SAE missed a quality bar)"
                       if g.get("n_gate_failed") else "") + ", so the matrices are empty.")
        parts.append(
            f"<h3 style='overflow-wrap:anywhere'>{esc(g.get('model'))}, seed "
            f"{esc(g.get('seed'))}, {esc(g.get('hook'))} <code class='cid'>SAE "
            f"{esc(str(g.get('sae_a_sha256'))[:12])}</code></h3>"
            f"<p>{esc(n_feat)} features compared.{note}</p>"
            f"<table style='width:auto'><thead><tr><th>#</th><th>cell (method:level calib)"
            f"</th><th>damaged</th><th>cell id</th></tr></thead><tbody>{legend}</tbody>"
            f"</table><div class='charts'>"
            + _matrix("Jaccard of damaged features", g.get("jaccard") or [], labels, False)
            + _matrix("Spearman ρ of damage scores", g.get("spearman") or [], labels, True)
            + "</div>")
    alone = ov.get("alone") or []
    if alone:
        parts.append("<p>Not compared (" + "; ".join(
            f"{esc(a.get('label'))} <code class='cid'>{esc(a.get('cell_id'))}</code>: "
            f"{esc(a.get('reason'))}" for a in alone) + ").</p>")
    return (f"<section id='overlap'><h2>Which features do different compressions damage?</h2>"
            f"{intro}{''.join(parts)}</section>")


def _method(r: dict[str, Any]) -> str:
    """The method, with its module groups when not the default (as the analysis labels it)."""
    targets = r.get("targets")
    return str(r.get("method")) + ("" if targets in (None, "attn+mlp") else f"@{targets}")


def _cells(rows: list[dict[str, Any]], linked: set[str] | None) -> str:
    per: dict[str, dict[str, Any]] = {}
    for r in rows:
        c = per.setdefault(str(r.get("cell_id")), {"row": r, "code": [], "prose": []})
        if r.get("concept_domain") in ("code", "prose") and _num(r.get("survival")):
            c[r["concept_domain"]].append(float(r["survival"]))
    body = []
    for cid, c in per.items():
        r = c["row"]
        mean = {d: sum(c[d]) / len(c[d]) if c[d] else None for d in ("code", "prose")}
        body.append(
            f"<tr><td>{esc(r.get('model'))}</td><td>{esc(_method(r))}</td>"
            f"<td>{fmt(r.get('level'))}</td><td>{esc(r.get('calib'))}</td>"
            f"<td>{esc(r.get('seed'))}</td><td>{fmt(mean['code'])}</td>"
            f"<td>{fmt(mean['prose'])}</td><td>{fmt(r.get('bpb_b_code'))}</td>"
            f"<td>{fmt(r.get('bpb_b_prose'))}</td><td>{fmt(r.get('cell_seconds'), 1)}</td>"
            + (f"<td><a href='cells/{esc(cid)}/report.html'>report</a> "
               f"<code class='cid'>{esc(cid)}</code></td></tr>"
               if linked is None or cid in linked else
               f"<td><code class='cid' title='no report beside this page'>{esc(cid)}</code>"
               f"</td></tr>"))
    n_linked = len(per) if linked is None else len(linked & set(per))
    if n_linked == len(per):
        note, last = "Each cell links to its own diff report.", "cell report"
    else:
        note = (f"{'No' if n_linked == 0 else f'Only {n_linked} of {len(per)}'} cell diff "
                f"reports are beside this page: a sweep writes each to "
                f"cells/&lt;cell id&gt;/report.html in its folder (run lensbias sweep-report "
                f"there to link them); the cell id names that folder.")
        last = "cell id" if n_linked == 0 else "cell report / id"
    table = sortable_table("cell-table", [
        "model", "method", "level", "calib", "seed", "survival code", "survival prose",
        "bits/byte B code", "bits/byte B prose", "seconds", last], body)
    return (f"<section id='cells'><h2>Cells</h2><p>{note}</p>"
            f"<input id='cell-filter' data-filter='cell-table' type='search' "
            f"placeholder='filter cells'>{table}</section>")
