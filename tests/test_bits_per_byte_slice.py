"""Bits per byte are named by their held-out slice: the figures the model card and
docs/models.md give for lensbias' default slice are what lensbias measures on it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lensbias.compress.measure import HELD_OUT_SLICE, model_bits_per_byte
from lensbias.models import load_model
from lensbias.models.tiny import WEIGHTS_DIR

DOCS = Path(__file__).resolve().parents[1] / "docs" / "models.md"


def _default_slice_rows(card: str) -> list[float]:
    part = card[card.index(f"default slice `{HELD_OUT_SLICE}`"):]
    return [float(v) for v in re.findall(r"\| (\d\.\d{3}) \|", part)]


def test_tiny_mixed_card_and_docs_state_the_default_slice_figures():
    measured = model_bits_per_byte(load_model("tiny-mixed"))
    card = (WEIGHTS_DIR / "tiny-mixed" / "MODEL_CARD.md").read_text()
    assert _default_slice_rows(card) == [round(measured["code"], 3), round(measured["prose"], 3)]
    assert "train-eval-150k" in card  # the training script's own slice is named too
    row = next(line for line in DOCS.read_text().splitlines() if line.startswith("| `tiny-mixed` | code"))
    assert f"{measured['code']:.3f} | {measured['prose']:.3f}" in row
    header = next(line for line in DOCS.read_text().splitlines()
                  if line.startswith("| model | training mix"))
    assert HELD_OUT_SLICE in header and "train-eval-150k" in header


@pytest.mark.parametrize("name", ["tiny-code", "tiny-prose"])
def test_every_card_names_both_slices(name):
    card = (WEIGHTS_DIR / name / "MODEL_CARD.md").read_text()
    assert len(_default_slice_rows(card)) == 2 and "train-eval-150k" in card


def test_the_report_names_the_slice_of_its_bits_per_byte():
    from lensbias.report.render import _behaviour

    stats = {"n": 100, "n_examples": 5, "loss_a": 1.0, "loss_b": 1.5, "extra": 0.5,
             "ci": {"extra": [0.4, 0.6]}}
    beh = {"bits_per_byte": {"A": {"code": 1.9, "prose": 2.4}, "B": {"code": 2.0, "prose": 2.5}},
           "bits_per_byte_slice": HELD_OUT_SLICE, "overall": stats, "by_bucket": {"common": stats},
           "by_domain": {}, "by_concept": {}}
    assert f"held-out slice {HELD_OUT_SLICE}" in _behaviour(beh)
    del beh["bits_per_byte_slice"]  # a summary written before the slice had a name
    assert "Bits per byte on held-out text" in _behaviour(beh)
