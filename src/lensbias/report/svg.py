"""Report, stage 1: static SVG charts (line charts per layer, bars with CIs); no JS needed.

Every label passes through ``html.escape``: chart text can come from model or dataset names.

What a reader can rely on in every chart: the value axis is ticked at round numbers and
starts at a stated baseline (0 unless the caller names another), or the chart says
"zoomed" on the axis and breaks it; both axes carry a title; every text stays inside the
chart (titles wrap, the layout leaves room for the widest tick label); colours mean what
the legend says. ``tests/test_report_browser.py`` holds the geometry in Chromium.
"""

from __future__ import annotations

import math
from html import escape

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf")
NEUTRAL = "#4c78a8"
"""Bars whose colour carries no group."""
MUTED = "#bdbdbd"
TICK_CHAR = 6.2
"""Estimated width (px) of one character of a 10px tick label (DejaVu Sans, the widest
common fallback); layout is sized from it, the browser test checks the result."""
TITLE_CHAR = 7.6
"""The same for the 12px bold chart title."""


def _finite(values: list[float | None]) -> list[float]:
    return [v for v in values if v is not None and math.isfinite(v)]


def _scale(lo: float, hi: float, a: float, b: float):  # noqa: ANN202
    span = (hi - lo) or 1.0
    return lambda v: a + (v - lo) / span * (b - a)


def nice_ticks(lo: float, hi: float, most: int = 6) -> list[float]:
    """Round tick values (steps of 1, 2, 2.5 or 5 × 10^k) covering ``[lo, hi]`` in at most
    ``most`` intervals, the finest such step; the first and last tick are the axis ends."""
    if not hi > lo:
        lo, hi = lo - 0.5, hi + 0.5
    mag = 10 ** (math.floor(math.log10((hi - lo) / most)) - 1)
    while True:
        for m in (1, 2, 2.5, 5):
            step = m * mag
            start = math.floor(lo / step + 1e-9)
            stop = math.ceil(hi / step - 1e-9)
            if stop - start <= most:
                return [round(k * step, 12) for k in range(start, stop + 1)]
        mag *= 10


def _tick_format(ticks: list[float]):  # noqa: ANN202
    step = abs(ticks[1] - ticks[0]) if len(ticks) > 1 else 1.0
    digits = 0
    while digits < 6 and abs(step * 10 ** digits - round(step * 10 ** digits)) > 1e-6:
        digits += 1

    def text(v: float) -> str:
        s = f"{v:.{digits}f}"
        return s[1:] if s.startswith("-") and float(s) == 0 else s

    return text


def _wrap(text: str, width: float, char: float) -> list[str]:
    """Greedy word wrap to ``width`` px; a word longer than a line is cut into pieces."""
    per_line = max(4, int(width / char))
    lines: list[str] = []
    words = [w[i:i + per_line] for w in text.split() for i in range(0, len(w), per_line)]
    for word in words:
        if lines and len(lines[-1]) + 1 + len(word) <= per_line:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return lines or [""]


class _Layout:
    """Margins and scales of one chart, from its title, tick labels and axis titles."""

    def __init__(self, title: str, width: int, height: int, y_ticks: list[str],
                 x_label: str, y_label: str, x_lines: int = 1, head_room: int = 0) -> None:
        self.title_lines = _wrap(title, width - 12, TITLE_CHAR)
        self.width, self.height = width, height
        self.left = (18 if y_label else 4) + max(len(t) for t in y_ticks) * TICK_CHAR + 8
        self.right = width - 14
        self.top = 16 * len(self.title_lines) + 8 + head_room
        self.bottom = height - 8 - 13 * x_lines - (15 if x_label else 0)
        self.x_label, self.y_label = x_label, y_label

    def open(self, title: str) -> list[str]:
        parts = [f'<svg viewBox="0 0 {self.width} {self.height}" width="{self.width}" '
                 f'height="{self.height}" role="img" aria-label="{escape(title)}">']
        parts += [f'<text x="6" y="{14 + 16 * i}" class="ctitle">{escape(line)}</text>'
                  for i, line in enumerate(self.title_lines)]
        if self.y_label:
            cy = (self.top + self.bottom) / 2
            parts.append(f'<text x="13" y="{cy:.1f}" transform="rotate(-90 13 {cy:.1f})" '
                         f'class="atitle" text-anchor="middle">{escape(self.y_label)}</text>')
        if self.x_label:
            parts.append(f'<text x="{(self.left + self.right) / 2:.1f}" y="{self.height - 5}" '
                         f'class="atitle" text-anchor="middle">{escape(self.x_label)}</text>')
        return parts

    def y_axis(self, ticks: list[float], sy, zoomed: bool = False) -> list[str]:  # noqa: ANN001
        text = _tick_format(ticks)
        parts = []
        for t in ticks:
            y = sy(t)
            parts.append(f'<line x1="{self.left}" y1="{y:.1f}" x2="{self.right}" y2="{y:.1f}" '
                         f'class="grid"/>')
            parts.append(f'<text x="{self.left - 5:.1f}" y="{y + 3.5:.1f}" class="tick" '
                         f'text-anchor="end">{text(t)}</text>')
        parts.append(f'<line x1="{self.left}" y1="{self.top}" x2="{self.left}" '
                     f'y2="{self.bottom}" class="axis"/>')
        if zoomed:  # a break in the axis: it does not start at a baseline
            x, y = self.left, self.bottom - 8
            parts.append(f'<path d="M{x - 5},{y + 3} l10,-3 M{x - 5},{y + 7} l10,-3" '
                         f'class="break"/>')
        return parts


def _y_range(values: list[float], y_from: float | None, y_to: float | None
             ) -> tuple[list[float], bool]:
    """Ticks of the value axis, and whether it is zoomed (does not reach a baseline)."""
    lo, hi = min(values), max(values)
    if y_from is not None:
        lo = min(lo, y_from)
    if y_to is not None:
        hi = max(hi, y_to)
    return nice_ticks(lo, hi), y_from is None


def _legend(keys: list[tuple[str, str, bool]]) -> str:
    """One entry per (name, colour, dashed)."""
    out = []
    for name, color, dashed in keys:
        style = (f"background:repeating-linear-gradient(90deg,{color} 0 4px,transparent 4px 6px)"
                 if dashed else f"background:{color}")
        out.append(f'<span class="key"><i class="{"dash" if dashed else "box"}" '
                   f'style="{style}"></i>{escape(name)}</span>')
    return "".join(out)


def _figure(parts: list[str], width: int, caption: str = "") -> str:
    """Close the svg; the figure is as wide as the chart (its caption wraps inside it)."""
    cap = f"<figcaption>{caption}</figcaption>" if caption else ""
    return (f'<figure class="chart" style="width:{width + 10}px">{"".join(parts)}</svg>{cap}'
            f'</figure>')


def _empty(title: str) -> str:
    return f'<figure class="chart"><figcaption>{escape(title)}: no data</figcaption></figure>'


def line_chart(title: str, xs: list[int | str], series: dict[str, list[float | None]],
               y_label: str = "", width: int = 360, height: int = 230,
               dashed: tuple[str, ...] = (), x_label: str = "layer",
               y_from: float | None = 0.0, y_to: float | None = None,
               colors: dict[str, str] | None = None, note: str = "") -> str:
    """One line per series over the same x positions (layers); None leaves a gap.

    The value axis runs from ``y_from`` (a baseline; default 0) to at least ``y_to``;
    ``y_from=None`` zooms to the data and marks the axis "zoomed". ``colors``: a colour
    per series name (default: the palette in order). ``dashed`` series also get hollow
    points (a single level shows no line). ``note``: escaped text after the legend.
    """
    values = _finite([v for ys in series.values() for v in ys])
    if not values or not xs:
        return _empty(title)
    ticks, zoomed = _y_range(values, y_from, y_to)
    text = _tick_format(ticks)
    if zoomed:
        y_label = f"{y_label} (zoomed)".strip()
    lay = _Layout(title, width, height, [text(t) for t in ticks], x_label, y_label)
    sx = (_scale(0, len(xs) - 1, lay.left + 8, lay.right - 8) if len(xs) > 1
          else lambda _: (lay.left + lay.right) / 2)
    sy = _scale(ticks[0], ticks[-1], lay.bottom, lay.top)
    parts = lay.open(title) + lay.y_axis(ticks, sy, zoomed)
    parts.append(f'<line x1="{lay.left}" y1="{lay.bottom}" x2="{lay.right}" y2="{lay.bottom}" '
                 f'class="axis"/>')
    room = (lay.right - lay.left) / max(1, len(xs))
    every = max(1, math.ceil(max(len(str(x)) for x in xs) * TICK_CHAR / max(1.0, room - 4)))
    for i, x in enumerate(xs):
        if i % every == 0:
            parts.append(f'<text x="{sx(i):.1f}" y="{lay.bottom + 15}" class="tick" '
                         f'text-anchor="middle">{escape(str(x))}</text>')
    keys = []
    for k, (name, ys) in enumerate(series.items()):
        color = (colors or {}).get(name) or PALETTE[k % len(PALETTE)]
        dash = ' stroke-dasharray="5 3"' if name in dashed else ""
        keys.append((name, color, name in dashed))
        points = [(sx(i), sy(y)) for i, y in enumerate(ys)
                  if y is not None and math.isfinite(y)]
        if len(points) > 1:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
            parts.append(f'<polyline points="{path}" fill="none" stroke="{color}" '
                         f'stroke-width="2"{dash}/>')
        for (x, y), v in zip(points, [y for y in ys if y is not None and math.isfinite(y)]):
            fill = f'fill="#fff" stroke="{color}" stroke-width="1.5"' if dash else f'fill="{color}"'
            parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" {fill}>'  # hollow: dashed
                         f'<title>{escape(name)}: {v:.4g}</title></circle>')
    caption = _legend(keys) + (f' <span class="note">{escape(note)}</span>' if note else "")
    return _figure(parts, width, caption)


def bar_chart(title: str, bars: list[tuple[str, float | None, tuple[float, float] | None]],
              width: int = 360, height: int = 220, lo: float | None = None,
              hi: float | None = None, groups: list[str] | None = None,
              colors: dict[str, str] | None = None, y_label: str = "", x_label: str = "",
              notes: list[str] | None = None, note: str = "") -> str:
    """Vertical bars from 0 with optional CI whiskers: ``[(label, value, (ci_lo, ci_hi))]``.

    The axis covers 0, every value and interval, and ``lo``/``hi`` when given. ``groups``
    (one name per bar) colours bars by group, with a legend; without it all bars share one
    colour. ``notes``: a second line under each bar's label (e.g. its count). A bar's value
    is written above its whisker, never across it.
    """
    values = _finite([v for _, v, _ in bars] + [c for _, _, ci in bars if ci for c in ci])
    if not values:
        return _empty(title)
    ticks = nice_ticks(min([0.0, *values] + ([lo] if lo is not None else [])),
                       max([0.0, *values] + ([hi] if hi is not None else [])))
    text = _tick_format(ticks)
    lines = [_bar_label(label, (width - 80) / max(1, len(bars))) for label, _, _ in bars]
    x_lines = max(len(ls) for ls in lines) + (1 if notes else 0)
    lay = _Layout(title, width, height, [text(t) for t in ticks], x_label, y_label,
                  x_lines=x_lines, head_room=12)
    sy = _scale(ticks[0], ticks[-1], lay.bottom, lay.top)
    step = (lay.right - lay.left) / max(1, len(bars))
    parts = lay.open(title) + lay.y_axis(ticks, sy)
    parts.append(f'<line x1="{lay.left}" y1="{sy(0):.1f}" x2="{lay.right}" y2="{sy(0):.1f}" '
                 f'class="axis zero"/>')
    palette = dict(colors or {})
    for g in groups or []:
        palette.setdefault(g, PALETTE[len(palette) % len(PALETTE)])
    for i, (label, value, ci) in enumerate(bars):
        x = lay.left + i * step + step * 0.2
        w = step * 0.6
        color = palette[groups[i]] if groups else NEUTRAL
        ok_ci = bool(ci) and all(c is not None and math.isfinite(c) for c in ci)
        top_at = 0.0
        if value is not None and math.isfinite(value):
            y0, y1 = sorted((sy(0), sy(value)))
            tip = f"{label}: {value:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ok_ci else "")
            parts.append(f'<rect x="{x:.1f}" y="{y0:.1f}" width="{w:.1f}" height="{y1 - y0:.1f}" '
                         f'fill="{color}" opacity="0.85"><title>{escape(tip)}</title></rect>')
            top_at = max(top_at, value)
        if ok_ci:
            cx = x + w / 2
            parts.append(f'<line x1="{cx:.1f}" y1="{sy(ci[0]):.1f}" x2="{cx:.1f}" '
                         f'y2="{sy(ci[1]):.1f}" class="whisker"/>')
            for c in ci:
                parts.append(f'<line x1="{cx - 4:.1f}" y1="{sy(c):.1f}" x2="{cx + 4:.1f}" '
                             f'y2="{sy(c):.1f}" class="whisker"/>')
            top_at = max(top_at, ci[0], ci[1])
        if value is not None and math.isfinite(value):
            parts.append(f'<text x="{x + w / 2:.1f}" y="{sy(top_at) - 4:.1f}" class="tick value" '
                         f'text-anchor="middle">{value:.3f}</text>')
        below = lines[i] + ([notes[i]] if notes else [])
        for j, line in enumerate(below):
            parts.append(f'<text x="{x + w / 2:.1f}" y="{lay.bottom + 15 + 13 * j}" '
                         f'class="tick{" sub" if notes and j == len(below) - 1 else ""}" '
                         f'text-anchor="middle">{escape(line)}</text>')
    keys = [(g, palette[g], False) for g in dict.fromkeys(groups or [])]
    caption = _legend(keys) + (f' <span class="note">{escape(note)}</span>' if note else "")
    return _figure(parts, width, caption)


def _bar_label(label: str, room: float) -> list[str]:
    """A bar's label in lines that fit its slot: split at spaces, then at ':'."""
    if len(label) * TICK_CHAR <= room:
        return [label]
    words = label.replace(":", ": ").split()
    lines = _wrap(" ".join(words), room, TICK_CHAR)
    return [line.replace(": ", ":") for line in lines]


def scatter_chart(title: str, groups: dict[str, list[tuple[float, float, str]]],
                  x_label: str = "", y_label: str = "", width: int = 420,
                  height: int = 300) -> str:
    """Points coloured by group: ``{group: [(x, y, tooltip)]}``; non-finite points dropped.
    Both axes are zoomed to the data (a scatter compares points, not magnitudes) and a line
    marks 0 where it lies inside."""
    pts = {g: [(x, y, t) for x, y, t in ps if math.isfinite(x) and math.isfinite(y)]
           for g, ps in groups.items()}
    xs = [x for ps in pts.values() for x, _, _ in ps]
    ys = [y for ps in pts.values() for _, y, _ in ps]
    if not xs:
        return _empty(title)
    xt, yt = nice_ticks(*_span(xs)), nice_ticks(*_span(ys))
    xtext, ytext = _tick_format(xt), _tick_format(yt)
    lay = _Layout(title, width, height, [ytext(t) for t in yt], x_label, y_label)
    # the last x tick label is centred on the right end: keep half of it inside
    lay.right = min(lay.right, width - 4 - len(xtext(xt[-1])) * TICK_CHAR / 2)
    sx, sy = _scale(xt[0], xt[-1], lay.left, lay.right), _scale(yt[0], yt[-1], lay.bottom, lay.top)
    parts = lay.open(title) + lay.y_axis(yt, sy)
    parts.append(f'<line x1="{lay.left}" y1="{lay.bottom}" x2="{lay.right}" y2="{lay.bottom}" '
                 f'class="axis"/>')
    for t in xt:
        parts.append(f'<text x="{sx(t):.1f}" y="{lay.bottom + 15}" class="tick" '
                     f'text-anchor="middle">{xtext(t)}</text>')
    if xt[0] < 0 < xt[-1]:
        parts.append(f'<line x1="{sx(0):.1f}" y1="{lay.top}" x2="{sx(0):.1f}" '
                     f'y2="{lay.bottom}" class="axis zero"/>')
    keys = []
    for k, (name, ps) in enumerate(pts.items()):
        color = PALETTE[k % len(PALETTE)]
        keys.append((name, color, False))
        for x, y, tip in ps:
            parts.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3.5" fill="{color}" '
                         f'opacity="0.75"><title>{escape(tip)}</title></circle>')
    return _figure(parts, width, _legend(keys))


def _span(values: list[float]) -> tuple[float, float]:
    lo, hi = min(values), max(values)
    pad = (hi - lo) * 0.02 or 0.5
    return lo - pad, hi + pad
