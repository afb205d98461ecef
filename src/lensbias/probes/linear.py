"""Probes, stage 1: a logistic-regression probe per (hook, concept), scored on held-out examples.

Train and test tokens come from disjoint examples (sentences, code chunks), so a probe
cannot score by remembering a sentence; the majority-class rate is reported beside it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from jaxtyping import Float, Int
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from lensbias.errors import LensbiasError


@dataclass(frozen=True)
class ProbeResult:
    """A fitted probe's held-out scores."""

    accuracy: float
    """Held-out accuracy."""
    majority: float
    """Held-out accuracy of always answering the most frequent training class."""
    n_train: int
    n_test: int
    n_classes: int


def grouped_split(groups: Int[np.ndarray, " tokens"], test_fraction: float = 0.25,
                  seed: int = 0) -> np.ndarray:
    """Boolean test mask that puts whole groups (examples) on one side of the split."""
    unique = np.unique(groups)
    rng = np.random.default_rng(seed)
    test_groups = rng.choice(unique, size=max(1, int(round(len(unique) * test_fraction))),
                             replace=False)
    return np.isin(groups, test_groups)


def stratified_split(groups: Int[np.ndarray, " tokens"], strata: np.ndarray | None,
                     test_fraction: float = 0.25, seed: int = 0) -> np.ndarray:
    """Boolean test mask with whole groups (documents) on one side, drawn within each
    stratum (a token's domain): ``test_fraction`` of each stratum's groups, at least one on
    each side of a stratum that has two or more. One stratum (or ``strata`` None) draws
    exactly as ``grouped_split``. Without strata a small domain can land wholly on one side:
    at 40,000 characters GUM gives a handful of documents among hundreds of code files, and
    one seed in ten put none of them in the test split."""
    groups = np.asarray(groups)
    if strata is not None:               # each group in one stratum: its tokens' most common
        strata = np.asarray(strata).astype(str)
        named = strata != ""             # ("" = unlabelled, e.g. special tokens)
        pairs, counts = np.unique(np.stack([groups[named].astype(str), strata[named]]),
                                  axis=1, return_counts=True)
        best: dict[str, tuple[int, str]] = {}
        for g, st, c in zip(pairs[0], pairs[1], counts):
            if c > best.get(g, (0, ""))[0]:
                best[g] = (int(c), st)
        unique_groups = np.unique(groups)
        of_group = np.array([best.get(str(g), (0, ""))[1] for g in unique_groups])
    if strata is None or len(np.unique(of_group)) < 2:
        return grouped_split(groups, test_fraction, seed)
    rng = np.random.default_rng([seed, 29])
    chosen = []
    for stratum in np.unique(of_group):
        unique = unique_groups[of_group == stratum]
        n = int(round(len(unique) * test_fraction))
        if len(unique) >= 2:
            n = min(max(1, n), len(unique) - 1)
        chosen.append(rng.choice(unique, size=n, replace=False))
    return np.isin(groups, np.concatenate(chosen))


def fit_probe(acts: Float[np.ndarray, "tokens d_model"], labels: Int[np.ndarray, " tokens"],
              test_mask: np.ndarray, C: float = 1.0, seed: int = 0,
              max_iter: int = 200) -> ProbeResult:
    """Fit a standardised multinomial logistic regression on the train side, score the test side."""
    train = ~test_mask
    if len(np.unique(labels[train])) < 2 or test_mask.sum() == 0:
        raise LensbiasError("a probe needs at least two classes in training and a non-empty "
                            "test split; use more examples")
    clf = make_pipeline(StandardScaler(),
                        LogisticRegression(C=C, max_iter=max_iter, random_state=seed))
    clf.fit(acts[train], labels[train])
    accuracy = float(clf.score(acts[test_mask], labels[test_mask]))
    values, counts = np.unique(labels[train], return_counts=True)
    majority = float(np.mean(labels[test_mask] == values[np.argmax(counts)]))
    return ProbeResult(accuracy, majority, int(train.sum()), int(test_mask.sum()),
                       int(len(values)))
