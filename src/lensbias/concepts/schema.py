"""Concepts, stage 1 of 3: the in-memory form of a concept dataset.

A dataset is a list of examples; each example is a text with labelled character spans
(token-level concepts) and sequence-level labels (domain, genre, ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Span:
    """A labelled character range of an example's text."""

    start: int
    """First character of the span (0-based)."""
    end: int
    """One past the last character (exclusive), so ``text[start:end]`` is the span."""
    labels: dict[str, str]
    """Label-set name -> label value, e.g. ``{"upos": "NOUN", "Number": "Sing"}``."""


@dataclass(frozen=True)
class Example:
    """One text with its labels."""

    id: str
    """Stable identifier, unique within the dataset (e.g. a UD ``sent_id``)."""
    text: str
    """The raw text the model reads."""
    spans: tuple[Span, ...]
    """Labelled character spans, sorted by start, non-overlapping within a label set."""
    seq_labels: dict[str, str] = field(default_factory=dict)
    """Sequence-level labels; every built-in example has ``domain`` ('code' or 'prose')."""


@dataclass(frozen=True)
class ConceptDataset:
    """A named list of examples plus where they came from."""

    name: str
    """Dataset name as the CLI spells it, e.g. ``ud-ewt`` or ``ud-gum:dev``."""
    examples: tuple[Example, ...]
    """The examples, in a fixed order."""
    source: str = ""
    """Provenance and license, one line."""

    @property
    def label_sets(self) -> tuple[str, ...]:
        """Sorted names of every token-level label set that occurs."""
        names = {k for ex in self.examples for sp in ex.spans for k in sp.labels}
        return tuple(sorted(names))

    @property
    def seq_label_sets(self) -> tuple[str, ...]:
        """Sorted names of every sequence-level label set that occurs."""
        return tuple(sorted({k for ex in self.examples for k in ex.seq_labels}))
