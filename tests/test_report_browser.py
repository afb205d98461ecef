"""The report in a real browser: headless Chromium via Playwright (CI installs both)."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

import pytest

from conftest import CORPUS, model_folder, word_dataset
from lensbias.cli import main
from lensbias.concepts.jsonl import write_jsonl

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed "
                                 "(pip install playwright; CI installs it)")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine "
                                "(apt-get install chromium; CI installs it)")

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def report(tmp_path_factory, bpe) -> Path:
    root = tmp_path_factory.mktemp("browser")
    model = model_folder(root / "model", bpe)
    data = root / "data.jsonl"
    write_jsonl(word_dataset((CORPUS + ["<script>alert(1)</script> the cat"]) * 4), data)
    out = root / "report"
    assert main(["diff", str(model), "--compress", "magnitude:0.5", "-d", str(data), "--out",
                 str(out), "--sae-expansion", "2", "--sae-k", "4", "-q"]) == 0
    return out / "report.html"


@contextlib.contextmanager
def open_page(path: Path):
    """``path`` in headless Chromium: yields (page, errors); errors collects console errors,
    page errors and any dialog (a script the report should never run)."""
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page()
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("dialog", lambda d: errors.append(f"dialog opened: {d.message}"))
        page.goto(path.as_uri())
        try:
            yield page, errors
        finally:
            browser.close()


def test_report_renders_and_filters_in_chromium(report, tmp_path):
    with open_page(report) as (page, errors):
        assert page.locator("#headline .headline").inner_text().strip()
        rows = page.locator("#concept-table tbody tr")
        assert rows.count() >= 2
        assert page.locator(".card").count() >= 1
        assert page.locator("#layers svg").count() >= 3
        assert page.locator("#behaviour svg").count() >= 1
        # filtering the concept table by typing a concept name hides the other rows
        page.fill("#concept-filter", "initial")
        visible = [r for r in rows.all() if r.is_visible()]
        assert visible and all("initial" in r.inner_text() for r in visible)
        assert len(visible) < rows.count()
        # sorting by a header click reorders rows
        page.fill("#concept-filter", "")
        page.click("#concept-table th[data-col='0']")
        names = [r.locator("td").first.inner_text() for r in rows.all()]
        assert names == sorted(names)
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
    assert (tmp_path / "report.png").stat().st_size > 10_000
    assert errors == []


def test_sweep_report_renders_sorts_and_filters_in_chromium(tmp_path):
    from test_sweep import EVIL, hostile_rows, sae_summary

    from lensbias.report.sweep import render_sweep_html
    from lensbias.sweep import analyse
    from lensbias.sweep.analysis import feature_overlap

    rows = hostile_rows()
    summaries = {r["cell_id"]: sae_summary({0, 1, 2} if r["calib"] == "code" else {1, 2},
                                           list(range(10))) for r in rows}
    path = tmp_path / "sweep-report.html"
    path.write_text(render_sweep_html(rows, analyse(rows, n_boot=50),
                                      overlap=feature_overlap(rows, summaries)),
                    encoding="utf-8")
    with open_page(path) as (page, errors):
        assert "interaction" in page.locator("#headline").inner_text()
        assert page.locator("#interaction-table tbody tr").count() == 1
        assert page.locator("#interaction svg rect").count() == 1
        assert page.locator("#curves svg").count() >= 1
        assert page.locator("#scatter svg circle").count() == 4  # one point per cell
        assert page.locator("#model-table tbody tr").count() == 2
        # hostile model names arrive as text, not markup
        assert "<script>alert(1)</script>" in page.locator("#model-table tbody tr").first.inner_text()
        # the feature-overlap panel: seed 0's two cells share one SAE of A; {1,2} of {0,1,2}
        assert page.locator("#overlap table.overlap").count() == 2
        assert page.locator("#overlap table.overlap tbody tr").first.inner_text().split() == [
            "1", "1.00", "0.67"]
        assert EVIL in page.locator("#overlap h3").first.inner_text()
        cells = page.locator("#cell-table tbody tr")
        assert cells.count() == 4
        page.fill("#cell-filter", "prose-1")
        visible = [r for r in cells.all() if r.is_visible()]
        assert len(visible) == 1 and "prose-1" in visible[0].inner_text()
        page.fill("#cell-filter", "")
        page.click("#cell-table th[data-col='3']")  # calib
        calibs = [r.locator("td").nth(3).inner_text() for r in cells.all()]
        assert calibs == sorted(calibs)
        page.screenshot(path=str(tmp_path / "sweep.png"), full_page=True)
    assert (tmp_path / "sweep.png").stat().st_size > 10_000
    assert errors == []
    assert layout_problems(path, widths=(1400,)) == []  # long hostile names wrap, stay inside


# --- layout: what a reader sees ------------------------------------------------------------

LAYOUT = """() => {
  const problems = [];
  const de = document.documentElement;
  if (de.scrollWidth > window.innerWidth)
    problems.push(`page scrolls sideways: ${de.scrollWidth} > ${window.innerWidth}`);
  const box = (svg, el) => {  // el's bounding box in its svg's viewBox coordinates
    const b = el.getBBox();
    const m = svg.getScreenCTM().inverse().multiply(el.getScreenCTM());
    const pts = [[b.x, b.y], [b.x + b.width, b.y], [b.x, b.y + b.height],
                 [b.x + b.width, b.y + b.height]].map(([x, y]) => new DOMPoint(x, y).matrixTransform(m));
    const xs = pts.map(p => p.x), ys = pts.map(p => p.y);
    return {x0: Math.min(...xs), y0: Math.min(...ys), x1: Math.max(...xs), y1: Math.max(...ys)};
  };
  const meets = (a, b) => a.x0 < b.x1 - 0.5 && b.x0 < a.x1 - 0.5 && a.y0 < b.y1 - 0.5 && b.y0 < a.y1 - 0.5;
  document.querySelectorAll('svg').forEach((svg, i) => {
    const name = `svg ${i} (${svg.getAttribute('aria-label')})`;
    const vb = svg.viewBox.baseVal;
    const frame = svg.parentElement.getBoundingClientRect(), own = svg.getBoundingClientRect();
    if (own.right > frame.right + 0.5 || own.left < frame.left - 0.5)
      problems.push(`${name} is wider than its frame: ${own.width} > ${frame.width}`);
    const texts = Array.from(svg.querySelectorAll('text')).map(t => [t, box(svg, t)]);
    texts.forEach(([t, b]) => {
      if (b.x0 < vb.x - 0.5 || b.y0 < vb.y - 0.5 || b.x1 > vb.x + vb.width + 0.5 || b.y1 > vb.y + vb.height + 0.5)
        problems.push(`${name}: text "${t.textContent}" is cut off by the chart's edge`);
    });
    texts.forEach(([t, b], k) => texts.slice(k + 1).forEach(([u, c]) => {
      if (meets(b, c)) problems.push(`${name}: "${t.textContent}" overlaps "${u.textContent}"`);
    }));
    svg.querySelectorAll('text.value').forEach(t => {
      const b = box(svg, t);
      svg.querySelectorAll('.whisker').forEach(w => {
        const c = box(svg, w);
        if (meets(b, {x0: c.x0 - 0.5, y0: c.y0, x1: c.x1 + 0.5, y1: c.y1}))
          problems.push(`${name}: an error bar strikes through the value label "${t.textContent}"`);
      });
    });
  });
  return problems;
}"""


def layout_problems(path: Path, widths: tuple[int, ...] = (1400, 800)) -> list[str]:
    """Horizontal overflow, charts wider than their frame, chart text cut off by (outside
    the viewBox of) its SVG or overlapping other text, value labels crossed by error bars;
    at each window width."""
    problems = []
    with open_page(path) as (page, errors):
        for width in widths:
            page.set_viewport_size({"width": width, "height": 1000})
            problems += [f"at {width} px: {p}" for p in page.evaluate(LAYOUT)]
        assert errors == []
    return problems


def test_layout_check_fails_on_overflow_and_clipped_text(tmp_path):
    """The check itself: a page wider than the window and an SVG whose text runs past its
    viewBox are both reported."""
    bad = tmp_path / "bad.html"
    bad.write_text("<!DOCTYPE html><html><body style='margin:0'><div style='width:1500px'>x</div>"
                   "<figure><svg viewBox='0 0 100 50' width='100' height='50'>"
                   "<text x='60' y='20' style='font-size:12px'>far too long a title</text>"
                   "<text x='5' y='40' class='value'>0.5</text>"
                   "<line x1='10' y1='30' x2='10' y2='45' class='whisker' stroke='black'/>"
                   "</svg></figure></body></html>", encoding="utf-8")
    problems = layout_problems(bad, widths=(1400,))
    assert any("scrolls sideways" in p for p in problems)
    assert any("far too long a title" in p and "cut off" in p for p in problems)
    assert any("strikes through" in p for p in problems)


def test_diff_report_layout(report):
    assert layout_problems(report) == []


def test_committed_study_report_layout(tmp_path):
    """The sweep report of the committed first study (13 interaction bars, seven phase-curve
    panels, long method names) fits the window, and no chart text is cut off."""
    import gzip
    import json

    from lensbias.report.sweep import render_sweep_html
    from lensbias.sweep import analyse

    results = Path(__file__).parent.parent / "docs" / "study" / "v1" / "study-results.jsonl.gz"
    with gzip.open(results, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    path = tmp_path / "study.html"
    path.write_text(render_sweep_html(rows, analyse(rows, n_boot=20), linked=set()),
                    encoding="utf-8")
    assert layout_problems(path) == []


def test_committed_v2_study_report_layout(tmp_path):
    """The sweep report of the committed v2 study (MiniLM: the study table with three
    readings, both kinds, two methods) fits the window, and no chart text is cut off. The
    study section comes from the committed analysis (its bootstraps take minutes)."""
    import gzip
    import json

    from lensbias.report.sweep import render_sweep_html
    from lensbias.sweep import analyse

    here = Path(__file__).parent.parent / "docs" / "study"
    with gzip.open(here / "minilm-results.jsonl.gz", "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    saved = json.loads((here / "minilm-analysis.json").read_text(encoding="utf-8"))
    analysis = {**analyse(rows, n_boot=20, study_boot=0), "inversion": saved["inversion"]}
    path = tmp_path / "study.html"
    path.write_text(render_sweep_html(rows, analysis, linked=set()), encoding="utf-8")
    assert "id='inversion'" in path.read_text(encoding="utf-8")
    assert layout_problems(path) == []
