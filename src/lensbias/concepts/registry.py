"""Concepts, stage 5: the built-in concept datasets, and user JSONL files, by name.

``load_dataset("ud-gum:dev")`` reads a packaged file from ``concepts/data``; nothing else.

Spec syntax: ``name`` or ``name:split`` (``ud-ewt:test``), or a path ending in ``.jsonl`` or
``.jsonl.gz`` (a user file, see ``concepts.jsonl``). The packaged files are written by
``scripts/build_datasets.py``; their licenses are in ``concepts/data/LICENSES.md``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from lensbias.concepts.jsonl import read_jsonl
from lensbias.concepts.schema import ConceptDataset, Example
from lensbias.errors import LensbiasError

DATA_DIR = Path(__file__).resolve().parent / "data"


@dataclass(frozen=True)
class BuiltinDataset:
    """A packaged dataset: its file, description, splits and license line."""

    name: str
    file: str
    description: str
    splits: tuple[str, ...]
    """Values of the ``split`` sequence label one may select; empty: no split selection."""
    source: str


BUILTIN: tuple[BuiltinDataset, ...] = (
    BuiltinDataset(
        "ud-ewt", "ud-ewt.jsonl.gz",
        "UD English Web Treebank v2.15, dev+test sentences (weblog, newsgroup, email, reviews, "
        "answers); upos, deprel, Tense/Number/VerbForm/Person/Mood; contextual: head_direction, "
        "head_distance, subj_obj",
        ("dev", "test"),
        "UD English EWT v2.15 (Silveira et al. 2014), CC BY-SA 4.0",
    ),
    BuiltinDataset(
        "ud-gum", "ud-gum.jsonl.gz",
        "UD English GUM, dev+test documents (15 genres; train is the models' prose training "
        "data and is not packaged); upos, deprel, Tense/Number/VerbForm/Person/Mood; "
        "contextual: head_direction, head_distance, subj_obj, entity_type, infstat",
        ("dev", "test"),
        "UD English GUM (Zeldes 2017), CC BY-NC-SA 4.0, research use",
    ),
    BuiltinDataset(
        "python-stdlib", "python-stdlib.jsonl.gz",
        "Python standard library chunks from held-out files only; token_kind, "
        "identifier_role, nesting_depth; contextual: bracket_depth, in_call_args, "
        "name_seen_before",
        (),
        "CPython standard library, PSF License",
    ),
    BuiltinDataset(
        "c-headers", "c-headers.jsonl.gz",
        "glibc and GCC C header chunks; token_kind (with preprocessor)",
        (),
        "glibc headers LGPL-2.1-or-later; GCC headers GPL-3.0 with GCC Runtime Library Exception",
    ),
)


def list_datasets() -> list[tuple[str, str]]:
    """(name, description) of every built-in dataset."""
    return [(dataset.name, dataset.description) for dataset in BUILTIN]


def load_dataset(spec: str, max_examples: int | None = None) -> ConceptDataset:
    """Load a built-in dataset (``name`` / ``name:split``) or a ``.jsonl(.gz)`` file.

    ``max_examples`` keeps the first N examples in the dataset's fixed order.
    """
    if max_examples is not None and (type(max_examples) is not int or max_examples < 1):
        raise LensbiasError(f"max_examples is {max_examples!r}; use a positive integer or None")
    if spec.endswith((".jsonl", ".jsonl.gz")):
        dataset = read_jsonl(spec)
        return _first(dataset, max_examples)
    name, has_split, split = spec.partition(":")
    builtin = _builtin(name)
    splits = _select_splits(builtin, split if has_split else None)
    examples = _load_file(builtin.name)
    if splits != builtin.splits:
        examples = tuple(ex for ex in examples if ex.seq_labels.get("split") in splits)
    return _first(ConceptDataset(spec, examples, builtin.source), max_examples)


def _builtin(name: str) -> BuiltinDataset:
    for dataset in BUILTIN:
        if dataset.name == name:
            return dataset
    names = ", ".join(dataset.name for dataset in BUILTIN)
    raise LensbiasError(f"unknown dataset {name!r}; built-in datasets: {names} "
                        "(or give a path ending in .jsonl or .jsonl.gz)")


def _select_splits(dataset: BuiltinDataset, split: str | None) -> tuple[str, ...]:
    if split is None:
        return dataset.splits
    if split in dataset.splits:
        return (split,)
    if not dataset.splits:
        raise LensbiasError(f"dataset {dataset.name!r} has no splits, found ':{split}'; "
                            f"write just {dataset.name!r}")
    valid = ", ".join(f"{dataset.name}:{name}" for name in dataset.splits)
    raise LensbiasError(f"unknown split {split!r} of {dataset.name!r}; valid: {valid} "
                        f"(or {dataset.name!r} for all)")


@functools.lru_cache(maxsize=None)
def _load_file(name: str) -> tuple[Example, ...]:
    builtin = _builtin(name)
    path = DATA_DIR / builtin.file
    if not path.is_file():
        raise LensbiasError(f"packaged data file {path} is missing; reinstall lensbias or run "
                            "scripts/build_datasets.py")
    return read_jsonl(path, name).examples


def _first(dataset: ConceptDataset, max_examples: int | None) -> ConceptDataset:
    if max_examples is None or len(dataset.examples) <= max_examples:
        return dataset
    return ConceptDataset(dataset.name, dataset.examples[:max_examples], dataset.source)
