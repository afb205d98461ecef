"""Concepts, grouped: which label sets measure related things (the study's resampling unit).

The built-in label sets are not independent: UD's morphological features (Number, Person,
Tense, VerbForm, Mood) are read off the same words, and its syntactic labels (upos, deprel,
head direction and distance, subject/object) off the same parse. A bootstrap that resamples
concepts as if each were an independent draw overstates how much evidence a study has, so
the study's cluster bootstrap (``lensbias.sweep.stats``) resamples *groups* of concepts and
then concepts within a drawn group. A label set not listed here is its own group.
"""

from __future__ import annotations

CONCEPT_GROUPS: dict[str, tuple[str, ...]] = {
    "ud-syntax": ("upos", "deprel", "head_direction", "head_distance", "subj_obj"),
    "ud-morphology": ("Number", "Person", "Tense", "VerbForm", "Mood"),
    "gum-entities": ("entity_type", "infstat"),
    "code-lexical": ("token_kind",),
    "code-structure": ("nesting_depth", "bracket_depth", "in_call_args"),
    "code-names": ("identifier_role", "name_seen_before"),
}

_GROUP_OF = {c: g for g, members in CONCEPT_GROUPS.items() for c in members}


def concept_group(concept: str) -> str:
    """The group a label set belongs to (itself when ungrouped)."""
    return _GROUP_OF.get(concept, concept)
