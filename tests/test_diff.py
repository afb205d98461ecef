"""`lensbias diff` end to end on a tiny random model: outputs, reuse, escaping, errors."""

from __future__ import annotations

import dataclasses
import json
import time

import pytest

from conftest import CORPUS, model_folder, word_dataset
from lensbias.cli import main
from lensbias.concepts.jsonl import write_jsonl
from lensbias.survival import SurvivalResult

HOSTILE = ['<script>alert(1)</script> the cat sat', '"><img src=x onerror=alert(2)> dogs ran']
EVIL_CONCEPT = "<i onmouseover=alert(3)>"
EVIL_LABEL = "<script>alert(4)</script>"


def hostile_dataset():
    """Hostile text, a hostile concept name and hostile label values (every word labelled)."""
    data = word_dataset((CORPUS + HOSTILE) * 4)
    examples = []
    for ex in data.examples:
        spans = tuple(dataclasses.replace(sp, labels={**sp.labels, EVIL_CONCEPT: (
            EVIL_LABEL if sp.labels["kind"] == "long" else "plain")}) for sp in ex.spans)
        examples.append(dataclasses.replace(ex, spans=spans))
    return dataclasses.replace(data, examples=tuple(examples))


@pytest.fixture(scope="module")
def setup(tmp_path_factory, bpe):
    root = tmp_path_factory.mktemp("diff")
    model = model_folder(root / "model", bpe)
    data = root / '"><img src=x onerror=alert(5)>.jsonl'
    write_jsonl(hostile_dataset(), data)
    return root, model, data


def _diff(model, data, out, *extra):
    return main(["diff", str(model), "--compress", "magnitude:0.5", "-d", str(data), "--out",
                 str(out), "--sae-expansion", "2", "--sae-k", "4", "-q", *extra])


def test_diff_writes_report_and_reuses_artefacts(setup):
    root, model, data = setup
    out = root / "report"
    start = time.perf_counter()
    assert _diff(model, data, out) == 0
    cold = time.perf_counter() - start
    summary = SurvivalResult.load(out / "summary.json")
    d = summary.to_dict()
    assert d["provenance"]["recipe"]["method"] == "magnitude"
    assert {r["concept"] for r in d["probes"]["rows"]} >= {"kind", "initial"}
    assert d["geometry"]["cka"] and d["behaviour"]["by_bucket"]
    assert next(iter(d["saes"].values()))["features"]
    html = (out / "report.html").read_text()
    assert "id='headline'" in html and "concept-table" in html
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "artefacts").glob("*.json")}
    start = time.perf_counter()
    assert _diff(model, data, out) == 0
    warm = time.perf_counter() - start
    assert {p.name: p.stat().st_mtime_ns for p in (out / "artefacts").glob("*.json")} == stamps
    assert warm < cold


def test_report_escapes_dataset_text(setup):
    root, model, data = setup
    out = root / "report"
    if not (out / "report.html").exists():
        assert _diff(model, data, out) == 0
    html = (out / "report.html").read_text()
    for payload in ("<script>alert", "<img src=x", "<i onmouseover"):
        assert payload not in html
    assert "&lt;i onmouseover=alert(3)&gt;" in html  # the concept name, shown as text
    assert "&lt;img src=x onerror=alert(5)&gt;" in html  # the dataset (file) name
    assert html.count("<script") == 2  # our inline script and the JSON metadata block


def test_report_rerenders_from_summary(setup, tmp_path):
    root, model, data = setup
    out = root / "report"
    if not (out / "summary.json").exists():
        assert _diff(model, data, out) == 0
    target = tmp_path / "again.html"
    assert main(["report", str(out / "summary.json"), "-o", str(target)]) == 0
    assert target.read_text() == (out / "report.html").read_text()


def test_model_against_itself(setup):
    root, model, data = setup
    out = root / "self"
    assert main(["diff", str(model), str(model), "-d", str(data), "--out", str(out),
                 "--no-sae", "-q"]) == 0
    d = json.loads((out / "summary.json").read_text())
    for row in d["probes"]["rows"]:
        assert row["transfer"] == row["acc_a"] == row["retrained"]
    assert all(abs(r["cka"] - 1) < 1e-6 for r in d["geometry"]["cka"])
    assert d["behaviour"]["overall"]["extra"] == 0


@pytest.mark.parametrize("args, message", [
    (["tiny-mixd"], "did you mean tiny-mixed"),
    (["MODEL", "--compress", "wandaa:0.5"], "did you mean wanda"),
    (["MODEL", "all-MiniLM-L6-v2"], "different tokenizers"),
    (["MODEL", "-d", "BAD"], "bad.jsonl:1:"),
])
def test_diff_user_errors(setup, tmp_path, capsys, args, message):
    root, model, data = setup
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{oops\n")
    args = [str(model) if a == "MODEL" else str(bad) if a == "BAD" else a for a in args]
    assert main(["diff", *args, "--out", str(tmp_path / "r"), "-q"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


def test_existing_foreign_folder_is_refused(setup, tmp_path, capsys):
    root, model, data = setup
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    assert _diff(model, data, foreign) == 2
    assert "not a lensbias report folder" in capsys.readouterr().err
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
