"""The charts' content as a reader reads it: axes from a baseline, axis titles, counts per
bucket, legends that say what was varied (issue 17, items 19-21). Geometry in a browser:
tests/test_report_browser.py."""

from __future__ import annotations

import re

from lensbias.report.render import MIN_BUCKET_TOKENS, _behaviour, _layer_plots
from lensbias.report.svg import bar_chart, line_chart, nice_ticks


def ticks(svg: str) -> list[str]:
    return re.findall(r'class="tick"[^>]*text-anchor="end">([^<]+)</text>', svg)


def axis_titles(svg: str) -> list[str]:
    return re.findall(r'class="atitle"[^>]*>([^<]+)</text>', svg)


def test_nice_ticks_are_round_and_cover_the_range():
    assert nice_ticks(0, 0.982) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert nice_ticks(-0.055, 0.489) == [-0.1, 0.0, 0.1, 0.2, 0.3, 0.4, 0.5]
    assert nice_ticks(0, 113) == [0, 20, 40, 60, 80, 100, 120]
    for lo, hi in ((0.972, 0.982), (-3.2, 7.9), (1e-5, 3e-5)):
        t = nice_ticks(lo, hi)
        assert t[0] <= lo and t[-1] >= hi and len(t) <= 7


def test_cka_near_one_is_drawn_from_zero_with_both_axis_titles():
    cka = {"geometry": {"cka": [{"layer": x, "domain": "all", "cka": v}
                                for x, v in enumerate((0.982, 0.975, 0.972))], "rows": []}}
    html = _layer_plots({"rows": []}, cka["geometry"])
    assert ticks(html)[0] == "0.0" and ticks(html)[-1] == "1.0"  # not 0.972..0.982
    assert axis_titles(html) == ["CKA (1 = same geometry)", "layer"]
    assert "(zoomed)" not in html and 'class="break"' not in html


def test_a_zoomed_axis_says_so_and_breaks():
    svg = line_chart("t", [0, 1], {"s": [0.972, 0.982]}, y_label="CKA", y_from=None)
    assert ticks(svg)[0] == "0.972" and "CKA (zoomed)" in axis_titles(svg)
    assert 'class="break"' in svg
    plain = line_chart("t", [0, 1], {"s": [0.972, 0.982]}, y_label="CKA")
    assert ticks(plain)[0] == "0.0" and 'class="break"' not in plain


def test_bar_chart_has_a_zero_tick_and_colours_only_by_group():
    svg = bar_chart("t", [("a", 0.3, (0.1, 0.5)), ("b", -0.1, (-0.2, 0.05))])
    assert "0.0" in ticks(svg)
    assert len(set(re.findall(r'<rect[^>]*fill="([^"]+)"', svg))) == 1  # no group: one colour
    grouped = bar_chart("t", [("a", 0.3, None), ("b", 0.2, None)], groups=["x", "y"])
    assert len(set(re.findall(r'<rect[^>]*fill="([^"]+)"', grouped))) == 2
    assert grouped.count('class="key"') == 2  # and a legend says what the colours mean


def test_small_frequency_bucket_is_listed_not_charted():
    def stats(n, extra):
        return {"n": n, "n_examples": 4, "loss_a": 2.0, "loss_b": 2.0 + extra, "extra": extra,
                "ci": {"extra": [extra - 0.01, extra + 0.01]}}

    beh = {"bits_per_byte": None, "by_bucket": {"common": stats(5000, 0.02),
                                                "rare": stats(300, 0.05),
                                                "unseen": stats(3, 4.0)}}
    html = _behaviour(beh)
    chart = html[html.index("Extra loss"):html.index("</figure>", html.index("Extra loss"))]
    assert chart.count("<rect") == 2 and "unseen" not in chart.split("<figcaption>")[0]
    assert "n=5,000" in chart and "n=300" in chart  # counts under the bars
    assert f"under {MIN_BUCKET_TOKENS} tokens: unseen (3 tokens)" in chart
    assert max(float(t) for t in ticks(chart)) < 1  # 4.0 nats on 3 tokens sets no scale
    assert "<tr class=small><td>unseen</td><td>3</td>" in html  # still in the table, greyed


def test_sweep_legends_and_cell_column(tmp_path):
    from test_sweep import hand_rows

    from lensbias.report.sweep import render_sweep_html
    from lensbias.sweep import analyse

    rows = hand_rows()
    magnitude = [{**r, "method": "magnitude", "cell_id": "m" + r["cell_id"]} for r in rows]
    html = render_sweep_html(rows + magnitude, analyse(rows + magnitude, n_boot=20),
                             linked=set())
    curve = html[html.index("magnitude: survival"):]
    curve = curve[:curve.index("</figure>")]
    assert "calibration" not in curve.split("<figcaption>")[1]  # data-free: no calib legend
    assert "data-free" in curve
    cells = html[html.index("id='cells'"):]
    assert "No cell diff reports are beside this page" in cells and ">cell id</th>" in cells
    linked = render_sweep_html(rows, analyse(rows, n_boot=20))
    assert "cells/" in linked and ">cell report</th>" in linked
