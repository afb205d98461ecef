"""Report, stage 1: static SVG charts (line charts per layer, bars with CIs); no JS needed.

Every label passes through ``html.escape``: chart text can come from model or dataset names.
"""

from __future__ import annotations

import math
from html import escape

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf")


def _finite(values: list[float | None]) -> list[float]:
    return [v for v in values if v is not None and math.isfinite(v)]


def _scale(lo: float, hi: float, a: float, b: float):  # noqa: ANN202
    span = (hi - lo) or 1.0
    return lambda v: a + (v - lo) / span * (b - a)


def _frame(title: str, width: int, height: int, left: float, right: float, top: float,
           bottom: float) -> list[str]:
    """The opening of a chart: the svg element, its title and the two axes."""
    return [f'<svg viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
            f'role="img" aria-label="{escape(title)}">',
            f'<text x="{left}" y="14" class="ctitle">{escape(title)}</text>',
            f'<line x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}" class="axis"/>',
            f'<line x1="{left}" y1="{top}" x2="{left}" y2="{bottom}" class="axis"/>']


def _with_legend(parts: list[str], names: list[str]) -> str:
    """Close the svg and add a colour key, one entry per series in palette order."""
    legend = "".join(f'<span class="key"><i style="background:{PALETTE[k % len(PALETTE)]}"></i>'
                     f'{escape(name)}</span>' for k, name in enumerate(names))
    return f'<figure class="chart">{"".join(parts)}</svg><figcaption>{legend}</figcaption></figure>'


def line_chart(title: str, xs: list[int | str], series: dict[str, list[float | None]],
               y_label: str = "", width: int = 360, height: int = 220,
               dashed: tuple[str, ...] = ()) -> str:
    """One line per series over the same x positions (layers); None leaves a gap."""
    values = _finite([v for ys in series.values() for v in ys])
    if not values or not xs:
        return f'<figure class="chart"><figcaption>{escape(title)}: no data</figcaption></figure>'
    lo, hi = min(values), max(values)
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    left, right, top, bottom = 46, width - 10, 24, height - 34
    sx = _scale(0, max(1, len(xs) - 1), left, right)
    sy = _scale(lo, hi, bottom, top)
    parts = _frame(title, width, height, left, right, top, bottom)
    for tick in (lo, (lo + hi) / 2, hi):
        parts.append(f'<text x="{left - 4}" y="{sy(tick) + 4:.1f}" class="tick" '
                     f'text-anchor="end">{tick:.3g}</text>')
    for i, x in enumerate(xs):
        parts.append(f'<text x="{sx(i):.1f}" y="{bottom + 14}" class="tick" '
                     f'text-anchor="middle">{escape(str(x))}</text>')
    if y_label:
        parts.append(f'<text x="{left}" y="{height - 4}" class="tick">{escape(y_label)}</text>')
    for k, (name, ys) in enumerate(series.items()):
        color = PALETTE[k % len(PALETTE)]
        dash = ' stroke-dasharray="5 3"' if name in dashed else ""
        points = [(sx(i), sy(y)) for i, y in enumerate(ys)
                  if y is not None and math.isfinite(y)]
        if len(points) > 1:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
            parts.append(f'<polyline points="{path}" fill="none" stroke="{color}" '
                         f'stroke-width="2"{dash}/>')
        for x, y in points:
            parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{color}"/>')
    return _with_legend(parts, list(series))


def bar_chart(title: str, bars: list[tuple[str, float | None, tuple[float, float] | None]],
              width: int = 360, height: int = 200, lo: float | None = None,
              hi: float | None = None) -> str:
    """Vertical bars with optional CI whiskers: ``[(label, value, (ci_lo, ci_hi))]``."""
    values = _finite([v for _, v, _ in bars] + [c for _, _, ci in bars if ci for c in ci])
    if not values:
        return f'<figure class="chart"><figcaption>{escape(title)}: no data</figcaption></figure>'
    lo = min(0.0, min(values)) if lo is None else lo
    hi = max(values) if hi is None else hi
    left, right, top, bottom = 46, width - 10, 24, height - 30
    sy = _scale(lo, hi if hi > lo else lo + 1, bottom, top)
    step = (right - left) / max(1, len(bars))
    parts = [f'<svg viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
             f'role="img" aria-label="{escape(title)}">',
             f'<text x="{left}" y="14" class="ctitle">{escape(title)}</text>',
             f'<line x1="{left}" y1="{sy(0):.1f}" x2="{right}" y2="{sy(0):.1f}" class="axis"/>']
    for tick in (lo, hi):
        parts.append(f'<text x="{left - 4}" y="{sy(tick) + 4:.1f}" class="tick" '
                     f'text-anchor="end">{tick:.3g}</text>')
    for i, (label, value, ci) in enumerate(bars):
        x = left + i * step + step * 0.2
        w = step * 0.6
        color = PALETTE[i % len(PALETTE)]
        if value is not None and math.isfinite(value):
            y0, y1 = sorted((sy(0), sy(value)))
            parts.append(f'<rect x="{x:.1f}" y="{y0:.1f}" width="{w:.1f}" height="{y1 - y0:.1f}" '
                         f'fill="{color}" opacity="0.8"><title>{escape(label)}: {value:.3f}</title></rect>')
            parts.append(f'<text x="{x + w / 2:.1f}" y="{y0 - 4:.1f}" class="tick" '
                         f'text-anchor="middle">{value:.3f}</text>')
        if ci and all(c is not None and math.isfinite(c) for c in ci):
            cx = x + w / 2
            parts.append(f'<line x1="{cx:.1f}" y1="{sy(ci[0]):.1f}" x2="{cx:.1f}" '
                         f'y2="{sy(ci[1]):.1f}" class="whisker"/>')
        parts.append(f'<text x="{x + w / 2:.1f}" y="{bottom + 16}" class="tick" '
                     f'text-anchor="middle">{escape(label)}</text>')
    parts.append("</svg>")
    return f'<figure class="chart">{"".join(parts)}</figure>'


def scatter_chart(title: str, groups: dict[str, list[tuple[float, float, str]]],
                  x_label: str = "", y_label: str = "", width: int = 420,
                  height: int = 300) -> str:
    """Points coloured by group: ``{group: [(x, y, tooltip)]}``; non-finite points dropped."""
    pts = {g: [(x, y, t) for x, y, t in ps if math.isfinite(x) and math.isfinite(y)]
           for g, ps in groups.items()}
    xs = [x for ps in pts.values() for x, _, _ in ps]
    ys = [y for ps in pts.values() for _, y, _ in ps]
    if not xs:
        return f'<figure class="chart"><figcaption>{escape(title)}: no data</figcaption></figure>'
    (x0, x1), (y0, y1) = _span(xs), _span(ys)
    left, right, top, bottom = 50, width - 10, 24, height - 36
    sx, sy = _scale(x0, x1, left, right), _scale(y0, y1, bottom, top)
    parts = _frame(title, width, height, left, right, top, bottom)
    for tick in (y0, (y0 + y1) / 2, y1):
        parts.append(f'<text x="{left - 4}" y="{sy(tick) + 4:.1f}" class="tick" '
                     f'text-anchor="end">{tick:.3g}</text>')
    for tick in (x0, (x0 + x1) / 2, x1):
        parts.append(f'<text x="{sx(tick):.1f}" y="{bottom + 14}" class="tick" '
                     f'text-anchor="middle">{tick:.3g}</text>')
    parts.append(f'<text x="{right}" y="{height - 6}" class="tick" text-anchor="end">'
                 f'{escape(x_label)}</text>')
    parts.append(f'<text x="{left + 4}" y="{top + 10}" class="tick">{escape(y_label)}</text>')
    for k, (_, ps) in enumerate(pts.items()):
        color = PALETTE[k % len(PALETTE)]
        for x, y, tip in ps:
            parts.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3.5" fill="{color}" '
                         f'opacity="0.75"><title>{escape(tip)}</title></circle>')
    return _with_legend(parts, list(pts))


def _span(values: list[float]) -> tuple[float, float]:
    lo, hi = min(values), max(values)
    pad = (hi - lo) * 0.05 or 0.5
    return lo - pad, hi + pad
