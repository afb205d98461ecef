"""Concepts, stage 3: character-span labels aligned to any model tokenizer's tokens.

Alignment works through character offsets only, so one dataset serves every tokenizer.

The rule. A model token with character range ``[token_start, token_end)`` overlaps a labelled
span ``[span_start, span_end)`` when ``token_start < span_end and span_start < token_end``.
For one label set, a token takes the label of the span it overlaps; if it overlaps several
spans carrying that label set, it takes the label of the span it overlaps most (most shared
characters); ties go to the earlier span (smaller start, then earlier in the input). A token of
zero width, or one that overlaps no span carrying the label set, gets ``None``. Spans of zero
width label nothing. Spans without the label set are ignored.

Cost: spans are sorted once (m log m); each token binary-searches the first span that can
reach it and walks only the spans it overlaps, so the total is O((n + m) log m + overlaps),
never n * m. Token offsets need not be sorted and may overlap each other (byte-level
tokenizers sometimes give two tokens the same character).
"""

from __future__ import annotations

from bisect import bisect_right
from collections import Counter
from collections.abc import Iterable, Sequence
from itertools import accumulate

from lensbias.concepts.schema import ConceptDataset, Example, Span


def align_labels(
    spans: Sequence[Span], offsets: Sequence[tuple[int, int]], label_set: str
) -> list[str | None]:
    """One label (or None) per token of ``offsets`` for ``label_set``, by the module's rule."""
    ordered = sorted(
        (span.start, position, span.end, span.labels[label_set])
        for position, span in enumerate(spans)
        if label_set in span.labels and span.end > span.start
    )
    starts = [item[0] for item in ordered]
    # running maximum of span ends: every span before the first index whose running end
    # exceeds token_start ends at or before token_start (correct even if spans overlap).
    reach = list(accumulate((item[2] for item in ordered), max))
    return [_token_label(start, end, ordered, starts, reach) for start, end in offsets]


def _token_label(
    token_start: int,
    token_end: int,
    ordered: list[tuple[int, int, int, str]],
    starts: list[int],
    reach: list[int],
) -> str | None:
    if token_end <= token_start:
        return None
    first = bisect_right(reach, token_start)
    stop = bisect_right(starts, token_end - 1, lo=first)
    best_label: str | None = None
    best_overlap = 0
    for span_start, _, span_end, label in ordered[first:stop]:
        overlap = min(span_end, token_end) - max(span_start, token_start)
        if overlap > best_overlap:
            best_label, best_overlap = label, overlap
    return best_label


def example_token_labels(
    example: Example, offsets: Sequence[tuple[int, int]], label_set: str
) -> list[str | None]:
    """``align_labels`` for one example's spans."""
    return align_labels(example.spans, offsets, label_set)


def seq_label(example: Example, name: str) -> str | None:
    """The example's sequence-level label ``name`` (e.g. ``domain``, ``genre``), or None."""
    return example.seq_labels.get(name)


def seq_label_values(examples: Iterable[Example], name: str) -> list[str | None]:
    """``seq_label`` for each example, in order."""
    return [example.seq_labels.get(name) for example in examples]


def label_counts(dataset: ConceptDataset, label_set: str) -> Counter[str]:
    """How many spans carry each value of a token label set."""
    return Counter(
        span.labels[label_set]
        for example in dataset.examples
        for span in example.spans
        if label_set in span.labels
    )


def seq_label_counts(dataset: ConceptDataset, name: str) -> Counter[str]:
    """How many examples carry each value of a sequence-level label set."""
    return Counter(
        example.seq_labels[name] for example in dataset.examples if name in example.seq_labels
    )
