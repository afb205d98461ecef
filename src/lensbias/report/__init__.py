"""Report: a self-contained HTML page (inline CSS, JS and SVG; no network) from a summary."""

from lensbias.report.render import render_html

__all__ = ["render_html"]
