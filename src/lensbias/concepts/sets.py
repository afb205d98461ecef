"""Concepts, stage 6: concept sets, the probe definitions shipped in the top-level probes/.

A concept set names a dataset and the concepts (label sets) to probe on it; it is read
from ``probes/<name>.yaml`` (installed as ``lensbias.probe_sets``) or from any YAML path.
"""

from __future__ import annotations

import importlib.resources
from dataclasses import dataclass
from pathlib import Path

import yaml

from lensbias.errors import LensbiasError

FIELDS = ("name", "description", "domain", "dataset", "concepts")


@dataclass(frozen=True)
class ConceptSet:
    """Which concepts to probe, on which dataset."""

    name: str
    """Name as the CLI spells it, e.g. ``prose-syntax``."""
    description: str
    """One line for listings and reports."""
    domain: str
    """``code`` or ``prose``: what the concepts are about."""
    dataset: str
    """A built-in dataset spec (``ud-ewt``, ``python-stdlib`` ...) or a .jsonl path."""
    concepts: tuple[str, ...]
    """Label sets of the dataset, token-level or sequence-level."""


def _shipped() -> dict[str, str]:
    root = importlib.resources.files("lensbias.probe_sets")
    return {p.name[:-5]: p.read_text(encoding="utf-8") for p in root.iterdir()
            if p.name.endswith(".yaml")}


def list_concept_sets() -> list[ConceptSet]:
    """Every concept set that ships with lensbias, sorted by name."""
    return [_parse(text, f"probes/{name}.yaml") for name, text in sorted(_shipped().items())]


def load_concept_set(spec: str | Path) -> ConceptSet:
    """A shipped concept set by name, or a YAML file by path."""
    shipped = _shipped()
    if str(spec) in shipped:
        return _parse(shipped[str(spec)], f"probes/{spec}.yaml")
    path = Path(spec)
    if path.suffix in (".yaml", ".yml"):
        try:
            return _parse(path.read_text(encoding="utf-8"), str(path))
        except OSError as err:
            raise LensbiasError(f"cannot read concept set {path}: {err.strerror}") from None
        except UnicodeDecodeError:
            raise LensbiasError(f"concept set {path} is not UTF-8 text") from None
    raise LensbiasError(f"unknown concept set {str(spec)!r}; shipped: {', '.join(sorted(shipped))}"
                        " (or give a .yaml path)")


def _parse(text: str, where: str) -> ConceptSet:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise LensbiasError(f"{where}: not valid YAML ({str(err).splitlines()[0]})") from None
    except RecursionError:
        raise LensbiasError(f"{where}: YAML nested too deeply") from None
    if not isinstance(raw, dict):
        raise LensbiasError(f"{where}: expected a mapping with fields {', '.join(FIELDS)}")
    missing = [f for f in FIELDS if f not in raw]
    unknown = [f for f in raw if f not in FIELDS]
    if missing or unknown:
        raise LensbiasError(f"{where}: missing fields {missing}, unknown fields {unknown}")
    concepts = raw["concepts"]
    if not isinstance(concepts, list) or not concepts or not all(isinstance(c, str) for c in concepts):
        raise LensbiasError(f"{where}: concepts must be a non-empty list of names")
    if raw["domain"] not in ("code", "prose"):
        raise LensbiasError(f"{where}: domain is {raw['domain']!r}; use 'code' or 'prose'")
    for key in ("name", "description", "dataset"):
        if not isinstance(raw[key], str):
            raise LensbiasError(f"{where}: {key} must be a string")
    return ConceptSet(raw["name"], raw["description"], raw["domain"], raw["dataset"],
                      tuple(concepts))
