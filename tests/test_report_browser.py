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
    from test_sweep import hostile_rows

    from lensbias.report.sweep import render_sweep_html
    from lensbias.sweep import analyse

    rows = hostile_rows()
    path = tmp_path / "sweep-report.html"
    path.write_text(render_sweep_html(rows, analyse(rows, n_boot=50)), encoding="utf-8")
    with open_page(path) as (page, errors):
        assert "interaction" in page.locator("#headline").inner_text()
        assert page.locator("#interaction-table tbody tr").count() == 1
        assert page.locator("#interaction svg rect").count() == 1
        assert page.locator("#curves svg").count() >= 1
        assert page.locator("#scatter svg circle").count() == 4  # one point per cell
        assert page.locator("#model-table tbody tr").count() == 2
        # hostile model names arrive as text, not markup
        assert "<script>alert(1)</script>" in page.locator("#model-table tbody tr").first.inner_text()
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
