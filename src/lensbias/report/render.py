"""Report, stage 2: the feature-survival HTML page, rendered from a summary dict alone.

Works from ``summary.json`` (so ``lensbias report`` re-renders without models); every
string that came from a dataset, a token or a model name goes through ``esc``.
"""

from __future__ import annotations

import json
import math
from html import escape
from typing import Any

from lensbias.report.svg import PALETTE, bar_chart, line_chart
from lensbias.report.static import CSS, JS


VERDICT_ORDER = ("dead", "blurred", "survived", "new")
"""Feature groups in the order a reader wants them: what was lost first."""
CARDS_PER_VERDICT = 60
"""Cards shown per group; keeps the default report well under 10 MB."""


def esc(value: Any) -> str:
    """HTML-escape anything (quotes included: values also land in attributes)."""
    return escape(str(value), quote=True)


def fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return esc(value)


def fmt_ci(ci: Any) -> str:
    if not ci or any(c is None for c in ci):
        return ""
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def render_html(summary: dict[str, Any]) -> str:
    """The whole report as one self-contained HTML string."""
    prov = summary.get("provenance", {})
    title = f"lensbias: {prov.get('model_a', {}).get('name', 'A')} vs {prov.get('model_b', {}).get('name', 'B')}"
    body = "".join([
        f"<header><h1>{esc(title)}</h1><p class='sub'>{esc(prov.get('dataset', ''))}</p></header>",
        _headline(summary),
        _concept_table(summary.get("probes") or {}),
        _layer_plots(summary.get("probes") or {}, summary.get("geometry") or {}),
        _features(summary.get("saes") or {}),
        _behaviour(summary.get("behaviour")),
        _provenance(prov),
    ])
    data = json.dumps({"n_features": sum(len(r.get("features", []))
                                         for r in (summary.get("saes") or {}).values())})
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>{esc(title)}</title><style>{CSS}</style></head><body>{body}"
            f"<script type='application/json' id='meta'>{esc(data)}</script>"
            f"<script>{JS}</script></body></html>")


def _headline(summary: dict[str, Any]) -> str:
    head = summary.get("headline") or {}
    sentence = esc(head.get("sentence", "No probe results."))
    bars, groups = [], []
    for domain, kinds in sorted((head.get("by_domain") or {}).items()):
        agg = kinds.get("contextual") or {}
        if not agg.get("n_concepts"):
            continue
        for key, label in (("information", "information"), ("readout", "readout"),
                           ("aligned_readout", "aligned")):
            bars.append((f"{domain} {label}", agg.get(key), agg.get(f"{key}_ci")))
            groups.append(label)
    chart = (bar_chart("Contextual concepts: share of A's gain over the floor kept on B",
                       bars, lo=0.0, hi=1.1, groups=groups, width=120 + 70 * len(bars),
                       y_label="kept (1 = all of A's gain)",
                       note="unclipped; 95% bootstrap intervals over test documents")
             if bars else "<p class='note'>No contextual concept entered the aggregates at "
             "this hook, so no reading is charted.</p>")
    return (f"<section id='headline'><h2>Headline</h2><p class='headline'>{sentence}</p>"
            f"<p class='note'>Information: a probe retrained on B. Readout: A's probe on B "
            f"unchanged. Aligned: A's probe on B after a label-free "
            f"{esc((summary.get('probes') or {}).get('config', {}).get('realign', 'affine'))} "
            f"map of B onto A fitted on unlabeled training tokens. Each is the share of A's "
            f"gain over the floor (max of majority, token-id lookup and the embedding-stream "
            f"probe) that is kept.</p>{chart}</section>")


def _concept_table(probes: dict[str, Any]) -> str:
    best = best_rows(probes)
    min_test = (probes.get("config") or {}).get("min_test_tokens")
    rows = []
    for r in best:
        kind = r.get("kind") or ""
        flag = " <span class='flag'>underpowered</span>" if r.get("underpowered") else ""
        rows.append(
            f"<tr data-domain='{esc(r.get('domain'))}' data-kind='{esc(kind)}'>"
            f"<td>{esc(r.get('concept'))}</td><td>{esc(r.get('domain'))}</td>"
            f"<td>{esc(kind)}</td><td>{esc(r.get('layer'))}</td>"
            f"<td>{esc(r.get('n_test'))}{flag}</td>"
            f"<td>{fmt(r.get('majority'))}</td><td>{fmt(r.get('token_id'))}</td>"
            f"<td>{fmt(r.get('embed'))}</td><td>{fmt(r.get('acc_a'))} "
            f"<span class='ci'>(train {fmt(r.get('train_acc_a'))})</span></td>"
            f"<td>{fmt(r.get('context_gain'))} <span class='ci'>"
            f"{fmt_ci(r.get('context_gain_ci'))}</span></td>"
            f"<td>{fmt(r.get('selectivity_a'))}</td>"
            + "".join(f"<td>{fmt(r.get(k))} <span class='ci'>"
                      f"{fmt_ci(r.get(f'{k}_ci')) if r.get(k) is not None else ''}</span></td>"
                      for k in ("information", "readout", "aligned_readout"))
            + "</tr>")
    table = sortable_table("concept-table", [
        "concept", "domain", "kind", "best layer", "test tokens", "majority", "token id",
        "embed", "acc A", "context gain", "selectivity A", "information", "readout",
        "aligned readout"], rows)
    skipped = probes.get("skipped") or []
    skipped_html = ("<h3>Not measured</h3><ul id='skipped'>"
                    + "".join(f"<li><b>{esc(s.get('concept'))}</b>: {esc(s.get('reason'))}</li>"
                              for s in skipped) + "</ul>") if skipped else ""
    return (f"<section id='concepts'><h2>Concept survival</h2>"
            f"<p>One row per concept at its best layer on A. Floors: majority class, the "
            f"most frequent training label per token id, and the same probe on the "
            f"context-free embedding stream; context gain = acc A − the highest floor, and a "
            f"concept whose gain's lower bound is ≤ 0 is <i>token identity</i>: readable "
            f"from the token alone (its readings are normalised to the majority class "
            f"instead). Readings are unclipped shares of A's gain over that baseline; rows "
            f"under {esc(min_test)} test tokens are flagged and left out of the "
            f"aggregates. Click a header to sort.</p>"
            f"<input id='concept-filter' type='search' placeholder='filter concepts or domain'>"
            f"{table}{skipped_html}</section>")


def sortable_table(table_id: str, headers: list[str], rows: list[str]) -> str:
    """A table the page's script sorts on a header click. ``rows`` are escaped ``<tr>``
    strings; ``headers`` are literals written in this package (not escaped)."""
    head = "".join(f"<th data-col='{i}'>{h}</th>" for i, h in enumerate(headers))
    return (f"<table id='{table_id}' class='sortable'><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>")


def best_rows(probes: dict[str, Any]) -> list[dict[str, Any]]:
    """Each concept's row at the hook where A's accuracy is highest."""
    best: dict[str, dict[str, Any]] = {}
    for r in probes.get("rows", []):
        key = r.get("concept")
        acc = r.get("acc_a") if r.get("acc_a") is not None else -1
        if key not in best or acc > (best[key].get("acc_a") or -1):
            best[key] = r
    return sorted(best.values(), key=lambda r: (str(r.get("domain")), str(r.get("concept"))))


GEOMETRY_AXES = {"anisotropy": ("mean cosine similarity", 1.0),
                 "isoscore": ("IsoScore (1 = isotropic)", 1.0),
                 "effective_rank": ("effective rank (dimensions)", None)}
"""Per-layer geometry charts: y-axis title and the top the axis reaches at least (every
axis starts at 0)."""


def _layer_plots(probes: dict[str, Any], geometry: dict[str, Any]) -> str:
    charts = []
    rows = probes.get("rows", [])
    layers = sorted({r["layer"] for r in rows if r.get("layer") is not None})
    for concept in sorted({r["concept"] for r in rows})[:12]:
        by_layer = {r["layer"]: r for r in rows if r["concept"] == concept}
        charts.append(line_chart(f"{concept}: probe accuracy", layers, {
            "A": [by_layer.get(x, {}).get("acc_a") for x in layers],
            "A's probe on B": [by_layer.get(x, {}).get("transfer") for x in layers],
            "retrained on B": [by_layer.get(x, {}).get("retrained") for x in layers],
            "majority": [by_layer.get(x, {}).get("majority") for x in layers],
            **({"floor": [by_layer.get(x, {}).get("floor") for x in layers]}
               if any(r.get("floor") is not None for r in by_layer.values()) else {})},
            y_label="accuracy", y_to=1.0, dashed=("majority", "floor")))
    cka = geometry.get("cka", [])
    g_layers = sorted({r["layer"] for r in cka if r.get("layer") is not None})
    if cka:  # axes from 0 to 1: a CKA of 0.97 must not look like a collapse
        charts.append(line_chart("Linear CKA(A, B)", g_layers, {
            d: [next((r["cka"] for r in cka if r["layer"] == x and r["domain"] == d), None)
                for x in g_layers] for d in sorted({r["domain"] for r in cka})},
            y_label="CKA (1 = same geometry)", y_to=1.0))
    geo_rows = geometry.get("rows", [])
    domains = sorted({r["domain"] for r in geo_rows})
    colors = {f"{m} {d}": PALETTE[k % len(PALETTE)] for k, d in enumerate(domains)
              for m in ("A", "B")}  # one colour per domain; B dashed
    for metric in ("anisotropy", "isoscore", "effective_rank"):
        series = {}
        for domain in domains:
            for model in ("A", "B"):
                series[f"{model} {domain}"] = [
                    next((r.get(metric) for r in geo_rows if r["layer"] == x
                          and r["domain"] == domain and r["model"] == model), None)
                    for x in g_layers]
        if series:
            charts.append(line_chart(metric.replace("_", " "), g_layers, series,
                                     y_label=GEOMETRY_AXES[metric][0],
                                     y_to=GEOMETRY_AXES[metric][1], colors=colors,
                                     dashed=tuple(k for k in series if k.startswith("B"))))
    return (f"<section id='layers'><h2>Per layer</h2><p>Every value axis starts at 0 (a "
            f"chart that does not says \"zoomed\" and breaks its axis). Dashed: the majority "
            f"baseline and the floor (the best of majority, a token-id lookup and the embeddings), or "
            f"model B.</p><div class='charts'>{''.join(charts)}</div></section>")


def _features(saes: dict[str, Any]) -> str:
    if not saes:
        return "<section id='features'><h2>SAE features</h2><p>No SAE was trained (--no-sae).</p></section>"
    parts = []
    for hook, rep in saes.items():
        s = rep.get("summary", {})
        counts = s.get("counts", {})
        gate = s.get("gate") or {}
        parts.append(f"<h3>{esc(hook)}</h3>")
        if s.get("headline"):
            parts.append(f"<p class='headline'>{esc(s['headline'])}</p>")
        parts.append(f"<p>A's SAE frozen as the basis; readout verdicts (A's SAE on B as it "
                     f"is), all active features: "
                     + ", ".join(f"{esc(k)}: {esc(v)}" for k, v in counts.items())
                     + f". Explained variance on A {fmt((s.get('quality_a') or {}).get('explained_variance'))},"
                     f" on B {fmt((s.get('quality_b') or {}).get('explained_variance'))}"
                     f" ({esc(gate.get('measured_on', 'every compared token'))}).</p>")
        parts.append(_sae_panels(s))
        if gate and not gate.get("passed", True):
            parts.append(f"<p class='withheld'><b>Per-feature verdicts withheld.</b> A's SAE "
                         f"misses a quality bar: {esc('; '.join(gate.get('reasons') or []))}. "
                         f"No feature card is shown.</p>")
            continue
        for verdict in VERDICT_ORDER:
            group = [f for f in rep.get("features", []) if f.get("verdict") == verdict]
            if not group:
                continue
            group.sort(key=lambda f: -(f.get("rate_a") or 0))  # most active first
            shown = group[:CARDS_PER_VERDICT]
            parts.append(f"<h4 class='group'>{esc(verdict)} in the readout: {len(group)} features"
                         f"{'' if len(shown) == len(group) else f' ({len(shown)} most active shown)'}"
                         f"</h4><div class='cards'>{''.join(_card(hook, f) for f in shown)}</div>")
    controls = ("<div class='filters'>verdict <select id='verdict-filter'><option value=''>all</option>"
                "<option>survived</option><option>blurred</option><option>dead</option>"
                "<option>new</option></select> domain <select id='domain-filter'>"
                "<option value=''>all</option><option>code</option><option>prose</option>"
                "<option>mixed</option></select> concept <input id='feature-concept' "
                "type='search' placeholder='e.g. NOUN'></div>")
    return f"<section id='features'><h2>SAE features</h2>{controls}{''.join(parts)}</section>"


SAE_READINGS = (("readout", "readout: A's SAE on B as is"),
                ("aligned", "aligned readout: A's SAE on B mapped onto A"),
                ("information", "information: an SAE trained on B, matched"))
"""The SAE readings in the order the report lists them, with what each one reads."""


def _sae_panels(s: dict[str, Any]) -> str:
    """Quality gates, stability, the three readings over stable features, the seed-to-seed
    null and the survival predictability of one SAE summary (v2; empty for v1 files)."""
    out = []
    qual = s.get("quality") or {}
    if qual:
        names = {"a": "A's SAE on A", "b": "A's SAE on B", "b_aligned": "A's SAE on aligned B",
                 "a_seed2": "second-seed SAE on A", "b_own": "B's own SAE on B"}
        rows = "".join(
            f"<tr><td>{esc(names.get(k, k))}</td><td>{esc(q.get('n_tokens'))}</td>"
            f"<td>{fmt(q.get('explained_variance'))}</td><td>{fmt(q.get('mse_ratio'))}</td>"
            f"<td>{fmt(q.get('l0'), 1)}</td><td>{fmt(q.get('dead_fraction'))}</td></tr>"
            for k, q in qual.items())
        bars = (s.get("gate") or {}).get("bars") or {}
        bar_txt = (f"Bars on A's SAE: explained variance ≥ {fmt(bars.get('min_explained_variance'), 2)}, "
                   f"dead fraction ≤ {fmt(bars.get('max_dead_fraction'), 2)}, mean L0 ≤ "
                   f"{fmt(bars.get('max_l0_ratio'), 2)} × d_in." if bars else "")
        out.append(f"<h4>Quality on held-out documents</h4><p>{bar_txt}</p><table><thead><tr>"
                   f"<th>SAE on activations</th><th>tokens</th><th>explained variance</th>"
                   f"<th>MSE ratio to A</th><th>L0</th><th>dead fraction</th></tr></thead>"
                   f"<tbody>{rows}</tbody></table>")
    stab = s.get("stability")
    if stab:
        hist = stab.get("histogram") or {}
        edges, counts = hist.get("edges") or [], hist.get("counts") or []
        bins = [(f"{edges[i]:.1f}", c, None) for i, c in enumerate(counts)]
        out.append(f"<h4>Stability across seeds</h4><p>{esc(stab.get('n_stable'))} of "
                   f"{esc(stab.get('n_active'))} active features have a best match at decoder "
                   f"cosine ≥ {fmt(stab.get('threshold'), 2)} in a second SAE on A (another "
                   f"seed): stable. Unstable share {fmt(stab.get('unstable_share'))}; median "
                   f"best-match cosine {fmt((stab.get('best_match_cosine') or {}).get('median'))}.</p>"
                   + bar_chart("Best-match decoder cosine in the second SAE (active features)",
                               bins, lo=0.0, y_label="features",
                               x_label="best-match cosine (bin start)"))
    readings = s.get("readings") or {}
    if readings:
        labels = dict(SAE_READINGS)
        rows = "".join(
            f"<tr><td>{esc(labels.get(k, k))}</td><td>{esc(v.get('n_stable'))}</td>"
            f"<td>{fmt(v.get('survived_share'))}</td><td>{fmt(v.get('blurred_share'))}</td>"
            f"<td>{fmt(v.get('dead_share'))}</td><td>{fmt(v.get('unstable_share'))}</td>"
            f"<td>{fmt(v.get('median_r_stable'))}</td></tr>"
            for k, v in readings.items())
        out.append(f"<h4>Readings over stable features</h4><table><thead><tr><th>reading</th>"
                   f"<th>stable features</th><th>survived</th><th>blurred</th><th>dead</th>"
                   f"<th>unstable share (not judged)</th><th>median r</th></tr></thead>"
                   f"<tbody>{rows}</tbody></table>")
    null = s.get("seed_null")
    if null:
        m = null.get("r_matched_stable") or {}
        out.append(f"<p>Seed-to-seed null: a stable feature and its match in the second SAE, "
                   f"both on A's tokens, reach r median {fmt(m.get('median'))} (5th percentile "
                   f"{fmt(m.get('p05'))}); {fmt(null.get('share_matched_at_or_above_survived_r'))} "
                   f"of them reach the survived cut-off. Random feature pairs: |r| 99th "
                   f"percentile {fmt(null.get('abs_r_random_pairs_p99'))}.</p>")
    pred = s.get("predictability")
    if pred:
        if pred.get("skipped"):
            out.append(f"<p>Survival predictability not computed: {esc(pred['skipped'])}.</p>")
        else:
            single = ", ".join(f"{esc(k)} {fmt(v.get('auc'))}"
                               for k, v in (pred.get("single") or {}).items())
            out.append(f"<p>Predicting a stable feature's readout survival from A-only "
                       f"statistics: cross-validated AUC {fmt(pred.get('auc'))} "
                       f"({esc(pred.get('folds'))}-fold, {esc(pred.get('n_features'))} "
                       f"features); alone: {single}; strongest: "
                       f"<b>{esc(pred.get('strongest'))}</b>.</p>")
    return "".join(out)


def _card(hook: str, f: dict[str, Any]) -> str:
    contexts = "".join(_context(c) for c in (f.get("contexts") or [])[:4])
    concept = f"{f.get('top_concept') or ''}={f.get('top_label') or ''}"
    other = ""
    if f.get("verdict_aligned") or f.get("verdict_info"):
        other = (f" · aligned {esc(f.get('verdict_aligned'))} r={fmt(f.get('pearson_r_aligned'), 2)}"
                 f" · information {esc(f.get('verdict_info'))} r={fmt(f.get('pearson_r_info'), 2)}")
    if f.get("stable") is not None:
        other += (f" · {'stable' if f.get('stable') else 'unstable'} "
                  f"(seed cos {fmt(f.get('stability_cosine'), 2)})")
    return (f"<div class='card {esc(f.get('verdict'))}' data-verdict='{esc(f.get('verdict'))}' "
            f"data-domain='{esc(f.get('domain'))}' data-concept='{esc(concept)}'>"
            f"<div class='card-head'><b>#{esc(f.get('index'))}</b> <span class='verdict'>"
            f"{esc(f.get('verdict'))}</span> r={fmt(f.get('pearson_r'), 2)} · rate A "
            f"{fmt(f.get('rate_a'), 4)} → B {fmt(f.get('rate_b'), 4)} · {esc(f.get('domain'))}"
            f" · {esc(concept)}{other}</div>{contexts}</div>")


def _context(c: dict[str, Any]) -> str:
    """A token window as the source reads: each token's own text, whitespace included
    (the ``.side`` box keeps spaces; a newline shows as ↵ and breaks the line)."""
    tokens, act_a, act_b = c.get("tokens", []), c.get("act_a", []), c.get("act_b", [])
    peak = max([abs(a) for a in act_a + act_b if a is not None] or [1.0]) or 1.0

    def row(acts: list[float]) -> str:
        return "".join(
            f"<span class='tok' style='background:rgba(255,120,0,{max(0.0, (a or 0) / peak):.2f})'"
            f" title='{(a or 0):.3f}'>{esc(t.replace(chr(10), '↵' + chr(10)))}</span>"
            for t, a in zip(tokens, acts))

    return (f"<div class='ctx'><div class='side'><i>A</i>{row(act_a)}</div>"
            f"<div class='side'><i>B</i>{row(act_b)}</div></div>")


MIN_BUCKET_TOKENS = 50
"""A frequency bucket with fewer tokens is listed (greyed) but not charted: its mean is
too noisy to set the chart's scale (e.g. a 3-token "unseen" bucket)."""


def _embedding_fidelity(beh: dict[str, Any]) -> str:
    """An encoder pair's behaviour (``behaviour/embedding.py``): one row per held-out domain."""
    rows = "".join(
        f"<tr><td>{esc(d)}</td><td>{esc(f.get('n'))}</td><td>{fmt(f.get('cosine_mean'))}</td>"
        f"<td>{fmt(f.get('cosine_p05'))}</td><td>{fmt(f.get('cosine_min'))}</td>"
        f"<td>{fmt(f.get('retrieval_agreement'))}</td></tr>"
        for d, f in (beh.get("by_domain") or {}).items())
    return (f"<section id='behaviour'><h2>Behaviour: embedding fidelity</h2><p>Cosine between "
            f"A's and B's sentence embeddings ({esc(beh.get('pooling'))} of "
            f"<code>{esc(beh.get('hook'))}</code>) of the same held-out texts (slice "
            f"<code>{esc(beh.get('slice'))}</code>), and retrieval agreement: the share of "
            f"texts whose nearest neighbour among the domain's texts is the same under B as "
            f"under A. B = A gives 1 and 1.</p>"
            f"<table><thead><tr><th>domain</th><th>texts</th><th>cosine, mean</th>"
            f"<th>cosine, 5th percentile</th><th>cosine, min</th><th>retrieval agreement</th>"
            f"</tr></thead><tbody>{rows}</tbody></table></section>")


def _behaviour(beh: dict[str, Any] | None) -> str:
    if not beh:
        return "<section id='behaviour'><h2>Behaviour</h2><p>Not measured.</p></section>"
    if beh.get("kind") == "embedding":  # an encoder pair: no LM head, no bits per byte
        return _embedding_fidelity(beh)
    bpb = beh.get("bits_per_byte") or {}
    bars = [(d, v, None) for m in ("A", "B") for d, v in (bpb.get(m) or {}).items()]
    models = [f"model {m}" for m in ("A", "B") for _ in (bpb.get(m) or {})]
    buckets = beh.get("by_bucket") or {}
    big = {b: s for b, s in buckets.items() if (s.get("n") or 0) >= MIN_BUCKET_TOKENS}
    small = [f"{b} ({s.get('n') or 0} tokens)" for b, s in buckets.items() if b not in big]
    extra = [(b, s.get("extra"), (s.get("ci") or {}).get("extra")) for b, s in big.items()]
    left_out = (f"Not charted, under {MIN_BUCKET_TOKENS} tokens: {', '.join(small)}."
                if small else "")
    rows = "".join(
        f"<tr{'' if b in big else ' class=small'}><td>{esc(b)}</td><td>{esc(s.get('n'))}</td>"
        f"<td>{esc(s.get('n_examples', '–'))}</td><td>{fmt(s.get('loss_a'))}</td>"
        f"<td>{fmt(s.get('loss_b'))}</td><td>{fmt(s.get('extra'))}</td>"
        f"<td class='ci'>{fmt_ci((s.get('ci') or {}).get('extra'))}</td></tr>"
        for b, s in buckets.items())
    held_out = (f"held-out slice {beh['bits_per_byte_slice']}" if beh.get("bits_per_byte_slice")
                else "held-out text")  # summaries written before the slice was named
    bpb_chart = bar_chart(f"Bits per byte on {held_out}", bars, groups=models, width=400,
                          y_label="bits per byte", x_label="held-out text domain")
    extra_chart = bar_chart("Extra loss of B by token frequency, 95% interval", extra,
                            width=460, y_label="extra loss (nats/token)",
                            x_label="frequency bucket (training-data counts)",
                            notes=[f"n={s.get('n'):,}" for s in big.values()], note=left_out)
    return (f"<section id='behaviour'><h2>Behaviour</h2><div class='charts'>{bpb_chart}"
            f"{extra_chart}</div><p>Extra loss: B's mean next-token loss minus A's on a "
            f"bucket's tokens; the interval is a bootstrap over examples; greyed rows are not "
            f"charted (under {MIN_BUCKET_TOKENS} tokens).</p>"
            f"<table><thead><tr><th>frequency bucket</th><th>tokens</th><th>examples</th>"
            f"<th>loss A</th><th>loss B</th><th>extra</th><th>95% CI</th></tr></thead>"
            f"<tbody>{rows}</tbody></table></section>")


def _provenance(prov: dict[str, Any]) -> str:
    return (f"<section id='provenance'><h2>Provenance</h2><pre>"
            f"{esc(json.dumps(prov, indent=2, default=str))}</pre></section>")
