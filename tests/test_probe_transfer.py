"""A probe trained on one store and scored on another: labels travel by class name."""

from __future__ import annotations

import numpy as np
import pytest

from lensbias.concepts.registry import load_dataset
from lensbias.errors import LensbiasError
from lensbias.models import load_model
from lensbias.probes import ProbeConfig, labels_by_name, score_probe, train_probe
from lensbias.store import ActivationStore, CacheConfig, cache_activations

HOOK = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def two_treebanks(tmp_path_factory):
    root = tmp_path_factory.mktemp("transfer")
    lm = load_model("tiny-mixed")
    config = CacheConfig(hooks=(HOOK,), dtype="float32")
    ewt = cache_activations(lm, load_dataset("ud-ewt", max_examples=400), root / "ewt.h5",
                            config)
    gum = cache_activations(lm, load_dataset("ud-gum", max_examples=400), root / "gum.h5",
                            config)
    return ewt, gum


def test_ewt_probe_scores_on_gum_by_class_name(two_treebanks):
    ewt_path, gum_path = two_treebanks
    with ActivationStore(ewt_path) as ewt, ActivationStore(gum_path) as gum:
        assert ewt.classes("deprel") != gum.classes("deprel")  # the trap: other numbering
        trained = train_probe(ewt, "deprel", HOOK, ProbeConfig(C=1.0, max_train=4000))
        score = score_probe(trained, gum)
        # by hand: GUM's labels as names, the probe's predictions as names
        names = np.array(gum.classes("deprel"), dtype=object)[gum.labels("deprel")]
        rows = np.flatnonzero(gum.labels("deprel") >= 0)
        predicted = np.array(trained.classes, dtype=object)[
            trained.probe.predict(gum.activations(HOOK, rows))]
        assert score.accuracy == pytest.approx(float(np.mean(predicted == names[rows])))
        assert score.n_tokens == len(rows)
        assert score.accuracy > score.majority + 0.1
        # reading GUM's indices as if they were EWT's mislabels many tokens
        naive = float(np.mean(trained.probe.predict(gum.activations(HOOK, rows))
                              == gum.labels("deprel")[rows]))
        assert naive < score.accuracy - 0.1
        fitted = {trained.classes[c] for c in trained.probe.classes_}
        assert score.unseen_classes == sorted(set(names[rows]) - fitted)
        assert score.n_unseen_class == int(sum(n not in fitted for n in names[rows]))


def test_classes_that_do_not_match_are_refused_or_marked(two_treebanks):
    _, gum_path = two_treebanks
    with ActivationStore(gum_path) as gum:
        classes = gum.classes("upos")
        with pytest.raises(LensbiasError, match="classes .* that the other side does not have"):
            labels_by_name(gum, "upos", classes[:3])
        marked = labels_by_name(gum, "upos", classes[:3], strict=False)
        own = gum.labels("upos")
        assert np.array_equal(marked[own < 0], own[own < 0])
        assert set(np.unique(marked[own >= 3])) == {-2}
        assert np.array_equal(labels_by_name(gum, "upos", classes), own)
