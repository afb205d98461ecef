"""Probes, stage 5: a probe trained on one store and scored on another (same model, other data).

The cross-dataset check ("train on EWT, test on GUM") needs labels aligned *by name*: each
store numbers a label set's classes by its own sorted class list (EWT has 36 deprel
classes, GUM 32), so the same index means different classes in the two files. Here every
label travels as its class name: ``labels_by_name`` maps a store's labels onto a given
class list, and ``score_probe`` scores a ``TrainedProbe`` (which keeps its class names) on
another store's tokens through that map. Tokens of a class the probe never saw are counted
as wrong in ``accuracy`` and reported (``n_unseen_class``, ``accuracy_seen``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from jaxtyping import Int

from lensbias.errors import LensbiasError
from lensbias.probes.fast import LinearProbe
from lensbias.probes.floors import TokenIdLookup
from lensbias.probes.pair import ProbeConfig, _cap, _gather, document_ids, fit_selected


@dataclass
class TrainedProbe:
    """A probe with the class names its outputs mean, and the token-id lookup beside it."""

    concept: str
    hook: str
    classes: list[str]
    """Class names, indexed by the probe's labels."""
    probe: LinearProbe
    lookup: TokenIdLookup
    C: float
    n_train: int
    model: str
    dataset: str


@dataclass
class ProbeScore:
    """A ``TrainedProbe`` on another store's labelled tokens."""

    accuracy: float
    """Over every labelled token; tokens of classes the probe never saw count as wrong."""
    accuracy_seen: float
    """Over the tokens whose class the probe was trained on."""
    majority: float
    """Always answering the probe's most frequent training class."""
    token_id: float
    """The token-id lookup learned on the training store."""
    n_tokens: int
    n_unseen_class: int
    unseen_classes: list[str] = field(default_factory=list)
    """Classes of the scored store the probe never saw."""


def labels_by_name(store, concept: str, classes: list[str], strict: bool = True
                   ) -> Int[np.ndarray, " tokens"]:
    """The store's labels of ``concept`` as indices into ``classes`` (-1: no label).

    With ``strict``, a store class missing from ``classes`` is one ``LensbiasError``; without
    it such tokens get -2 (labelled, but with a class outside the list).
    """
    own = store.classes(concept)
    position = {name: i for i, name in enumerate(classes)}
    missing = [name for name in own if name not in position]
    if missing and strict:
        raise LensbiasError(f"{store.path}: concept {concept!r} has classes "
                            f"{', '.join(missing[:6])}{' …' if len(missing) > 6 else ''} that the "
                            "other side does not have; align them by name (strict=False) or "
                            "choose another concept")
    table = np.array([position.get(name, -2) for name in own] + [-1], np.int64)
    return table[store.labels(concept)]  # -1 (no label) picks the trailing -1


def train_probe(store, concept: str, hook: str, config: ProbeConfig = ProbeConfig()
                ) -> TrainedProbe:
    """Fit a probe of ``concept`` at ``hook`` on up to ``config.max_train`` labelled tokens of
    ``store`` (whole examples in a seeded order); C chosen as in ``ProbePair``."""
    labels = store.labels(concept)
    tokens = store.tokens()
    groups = tokens["example"].astype(np.int64)
    rows = _cap(np.flatnonzero(labels >= 0), groups, config.max_train,
                np.random.default_rng(config.seed))
    values, counts = np.unique(labels[rows], return_counts=True)
    keep = values[counts >= config.min_class_tokens]
    rows = rows[np.isin(labels[rows], keep)]
    if len(keep) < 2:
        raise LensbiasError(f"{store.path}: concept {concept!r} has fewer than two classes with "
                            f"{config.min_class_tokens}+ tokens")
    acts = _gather(store, hook, rows)
    probe, c = fit_selected(acts, labels[rows], document_ids(store, groups)[rows], config)
    ids = tokens["ids"]
    return TrainedProbe(concept, hook, store.classes(concept), probe,
                        TokenIdLookup().fit(ids[rows], labels[rows]), c, len(rows),
                        store.model_name, store.dataset_name)


def score_probe(trained: TrainedProbe, store, hook: str | None = None,
                max_tokens: int | None = None, seed: int = 0) -> ProbeScore:
    """Score ``trained`` on ``store`` (the same model's activations of other data), labels
    aligned by class name."""
    hook = hook or trained.hook
    if store.model_name != trained.model:
        raise LensbiasError(f"{store.path} holds model {store.model_name!r}; the probe was "
                            f"trained on {trained.model!r} (score on the same model's caches)")
    if store.d(hook) != trained.probe.n_features_in_:
        raise LensbiasError(f"{store.path}: hook {hook} has width {store.d(hook)}, the probe "
                            f"{trained.probe.n_features_in_}")
    labels = labels_by_name(store, trained.concept, trained.classes, strict=False)
    tokens = store.tokens()
    rows = np.flatnonzero(labels != -1)
    if max_tokens is not None:
        rows = _cap(rows, tokens["example"].astype(np.int64), max_tokens,
                    np.random.default_rng(seed))
    if len(rows) == 0:
        raise LensbiasError(f"{store.path} has no tokens labelled for {trained.concept!r}")
    y = labels[rows]
    seen = np.isin(y, trained.probe.classes_)
    predicted = trained.probe.predict(_gather(store, hook, rows))
    ids = tokens["ids"][rows]
    own = store.classes(trained.concept)
    unseen = sorted({own[c] for c in store.labels(trained.concept)[rows][~seen]})
    return ProbeScore(accuracy=float(np.mean(predicted == y)),
                      accuracy_seen=float(np.mean(predicted[seen] == y[seen])) if seen.any()
                      else float("nan"),
                      majority=float(np.mean(y == trained.lookup.majority_)),
                      token_id=float(np.mean(trained.lookup.predict(ids) == y)),
                      n_tokens=int(len(rows)), n_unseen_class=int((~seen).sum()),
                      unseen_classes=unseen)
