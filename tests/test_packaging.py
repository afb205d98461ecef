"""Packaging: every subpackage ships, shipped concept sets are consistent with the datasets."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

import lensbias
from lensbias.concepts.registry import load_dataset
from lensbias.concepts.sets import list_concept_sets, load_concept_set
from lensbias.errors import LensbiasError

ROOT = Path(__file__).resolve().parents[1]


def test_every_subpackage_is_listed_in_pyproject():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT / "src").parts)
             for p in (ROOT / "src").rglob("__init__.py")}
    assert found <= listed, f"add to pyproject [tool.setuptools] packages: {found - listed}"


def test_public_api_resolves():
    for name in lensbias.__all__:
        assert getattr(lensbias, name) is not None
    with pytest.raises(AttributeError):
        lensbias.no_such_name  # noqa: B018


def test_shipped_concept_sets_name_real_concepts():
    sets = list_concept_sets()
    assert {s.name for s in sets} >= {"prose-syntax", "python-tokens", "c-tokens"}
    for concept_set in sets:
        data = load_dataset(concept_set.dataset, max_examples=200)
        available = set(data.label_sets) | set(data.seq_label_sets)
        assert set(concept_set.concepts) <= available, concept_set.name
        assert {ex.seq_labels["domain"] for ex in data.examples} == {concept_set.domain}


def test_concept_set_errors(tmp_path):
    with pytest.raises(LensbiasError, match="unknown concept set 'nope'"):
        load_concept_set("nope")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ndomain: poetry\ndescription: d\ndataset: ud-ewt\nconcepts: [upos]\n")
    with pytest.raises(LensbiasError, match="domain is 'poetry'"):
        load_concept_set(bad)
    bad.write_text("name: [unclosed\n")
    with pytest.raises(LensbiasError, match="not valid YAML"):
        load_concept_set(bad)
