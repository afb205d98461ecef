"""SAEs through sae-lens and frozen-SAE feature survival, on tiny stores (d_in 36)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from conftest import make_lm, word_dataset
from lensbias.errors import LensbiasError
from lensbias.models.tokenizer import BPETokenizer
from lensbias.saes import (FeatureSurvival, SAEConfig, SAEReport, SurvivalThresholds,
                           load_sae, match_features, read_info, sae_quality, train_sae)
from lensbias.saes.survival import classify
from lensbias.store import ActivationStore, CacheConfig, cache_activations

HOOK = "blocks.1.hook_resid_post"
WORDS = ("the cat sat on a mat while dogs ran in the park and quick brown foxes jumped "
         "over lazy dogs as cats slept").split()
CODE = ["def add(a, b):\n    return a + b\n", "for i in range(10):\n    print(i * 2)\n",
        "def mul(x, y):\n    return x * y\n"]
FAST = SAEConfig(d_sae=96, k=6, lr=3e-3, training_tokens=24_576, batch_size=256, seed=0)




def _texts(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [CODE[i % 3] if i % 4 == 0 else " ".join(rng.choice(WORDS, 10)) + "."
            for i in range(n)]


def _replace_acts(src: Path, dst: Path, make) -> Path:  # noqa: ANN001
    """A copy of ``src`` whose activations are ``make(acts)``; ids, labels and fingerprint
    attributes stay as they are, so ActivationStore opens it as a store of the same tokens."""
    shutil.copy(src, dst)
    with h5py.File(dst, "r+") as f:
        for hook in json.loads(f.attrs["fingerprint"])["hooks"]:
            data = f[f"acts/{hook}"]
            data[...] = make(data[...].astype(np.float32)).astype(data.dtype)
    return dst


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("saes")
    corpus = _texts(40, 1)
    lm = make_lm(BPETokenizer.train(corpus, vocab_size=200))
    a = cache_activations(lm, word_dataset(_texts(240, 0)), tmp / "a.h5",
                          CacheConfig(dtype="float32"))
    rng = np.random.default_rng(0)

    def noise(x: np.ndarray) -> np.ndarray:  # same per-dimension mean and scale, no signal
        return x.mean(0) + x.std(0) * rng.standard_normal(x.shape)

    def planted(x: np.ndarray) -> np.ndarray:  # 48 sparse unit directions, 3 per token
        dirs = np.random.default_rng(1).standard_normal((48, x.shape[1]))
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        codes = np.zeros((len(x), 48))
        for row in range(len(x)):
            codes[row, rng.choice(48, 3, replace=False)] = rng.uniform(1, 3, 3)
        return codes @ dirs

    other = cache_activations(lm, word_dataset(_texts(60, 5)), tmp / "other.h5",
                              CacheConfig(dtype="float32"))
    return {"a": a, "noise": _replace_acts(a, tmp / "noise.h5", noise),
            "planted": _replace_acts(a, tmp / "planted.h5", planted), "other": other,
            "dir": tmp}


@pytest.fixture(scope="module")
def sae_dir(stores) -> Path:
    out = stores["dir"] / "sae_a"
    with ActivationStore(stores["a"]) as store:
        train_sae(store, HOOK, FAST, out)
    return out


@pytest.fixture(scope="module")
def self_report(stores, sae_dir) -> SAEReport:
    sae = load_sae(sae_dir)
    with ActivationStore(stores["a"]) as a, ActivationStore(stores["a"]) as b:
        return FeatureSurvival(sae, batch_tokens=700).compare(a, b, HOOK,
                                                              sae_config=read_info(sae_dir))


def test_train_saves_loads_and_reconstructs(stores, sae_dir):
    info = read_info(sae_dir)
    assert info["hook"] == HOOK and info["d_sae"] == 96
    assert SAEConfig.from_dict(info["config"]) == FAST
    with ActivationStore(stores["a"]) as store:
        assert info["store"]["fingerprint"] == store.fingerprint
        n_train, n_tokens = info["training"]["heldout_rows"]
        held = store.activations(HOOK, slice(n_train, n_tokens))
    assert n_tokens - n_train > 100
    q = info["quality_heldout"]
    assert q["explained_variance"] > 0.5 and q["l0"] == pytest.approx(6)
    sae = load_sae(sae_dir)
    assert sae.cfg.d_sae == 96 and sae.cfg.d_in == 36
    assert sae_quality(sae, held)["explained_variance"] == pytest.approx(
        q["explained_variance"], abs=1e-5)


def test_standard_sae_trains(stores):
    config = SAEConfig(architecture="standard", d_sae=64, l1_coefficient=0.5, lr=3e-3,
                       training_tokens=8192, batch_size=256)
    with ActivationStore(stores["a"]) as store:
        sae = train_sae(store, HOOK, config)
        q = sae_quality(sae, store.activations(HOOK, slice(0, 1000)))
    assert q["explained_variance"] > 0.3 and 0 < q["l0"] < 64


def test_sae_recovers_planted_features(stores):
    config = SAEConfig(d_sae=64, k=3, lr=5e-3, training_tokens=49_152, batch_size=256,
                       normalize_activations="none")
    with ActivationStore(stores["planted"]) as store:
        sae = train_sae(store, HOOK, config)
        q = sae_quality(sae, store.activations(HOOK, slice(store.n_tokens - 500, None)))
    assert q["explained_variance"] > 0.7
    dirs = np.random.default_rng(1).standard_normal((48, 36))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    dec = sae.W_dec.detach().numpy()
    dec /= np.linalg.norm(dec, axis=1, keepdims=True)
    best = (dirs @ dec.T).max(1)
    assert np.mean(best > 0.9) > 0.5  # most planted directions have a matching feature


def test_model_against_itself_every_active_feature_survives(self_report):
    active = [f for f in self_report.features if f.verdict != "inactive"]
    assert len(active) > 40
    assert all(f.verdict == "survived" for f in active)
    assert all(abs(f.pearson_r - 1) < 1e-6 and f.rate_a == f.rate_b for f in active)
    s = self_report.summary
    assert s["survival_rate"] == 1.0 and s["quality_b"]["mse_ratio"] == pytest.approx(1.0)
    assert s["n_compared"] + s["outliers"]["excluded"] == s["n_tokens"]
    assert s["sae_config"]["config"]["d_sae"] == 96


def test_contexts_are_windows_of_the_text(stores, self_report):
    with ActivationStore(stores["a"]) as store:
        texts, tokens = store.texts(), store.tokens()
    feature = max(self_report.features, key=lambda f: f.rate_a)
    assert 0 < len(feature.contexts) <= 8
    acts = [c["act_a"][c["center"]] for c in feature.contexts]
    assert acts == sorted(acts, reverse=True) and acts[0] == pytest.approx(feature.peak_a)
    for c in feature.contexts:
        assert all(isinstance(t, str) for t in c["tokens"]) and 1 <= len(c["tokens"]) <= 10
        text = texts[c["example"]]
        start, end = tokens["offsets"][c["row"]]
        assert c["tokens"][c["center"]] == text[start:end]
        assert "".join(c["tokens"]).replace(" ", "") in text.replace(" ", "")
        assert c["act_a"] == c["act_b"]


def test_labels_domain_and_concepts(self_report):
    active = [f for f in self_report.features if f.verdict != "inactive"]
    assert all(0 <= f.domain_share_code <= 1 for f in active)
    assert {f.domain for f in active} <= {"code", "prose", "mixed"}
    assert any(f.domain == "code" for f in active)
    with_concept = [f for f in active if f.top_concept is not None]
    assert with_concept and all(f.lift > 0 and f.top_label for f in with_concept)
    by_domain = self_report.summary["counts_by_domain"]
    assert sum(sum(c.values()) for c in by_domain.values()) == len(active) + sum(
        f.verdict == "inactive" and f.domain is not None for f in self_report.features)


def test_noise_kills_most_features(stores, sae_dir):
    sae = load_sae(sae_dir)
    with ActivationStore(stores["a"]) as a, ActivationStore(stores["noise"]) as b:
        report = FeatureSurvival(sae).compare(a, b, HOOK)
    active = [f for f in report.features if f.verdict != "inactive"]
    assert sum(f.verdict == "dead" for f in active) > 0.8 * len(active)
    assert np.nanmedian([abs(f.pearson_r) for f in active]) < 0.15
    assert report.summary["quality_b"]["explained_variance"] < 0.3


def test_report_round_trip(self_report, tmp_path):
    data = self_report.to_dict()
    text = json.dumps(data, allow_nan=False)  # NaN written as null
    back = SAEReport.from_dict(json.loads(text))
    assert back.to_dict() == data
    inactive = [f for f in back.features if f.verdict == "inactive" and f.rate_a == 0]
    for f in inactive:
        assert math.isnan(f.pearson_r)
    path = self_report.save(tmp_path / "report.json")
    assert SAEReport.load(path).counts() == self_report.counts()


def test_different_tokens_are_refused(stores, sae_dir):
    sae = load_sae(sae_dir)
    with ActivationStore(stores["a"]) as a, ActivationStore(stores["other"]) as b:
        with pytest.raises(LensbiasError, match="same dataset"):
            FeatureSurvival(sae).compare(a, b, HOOK)


def test_matching_decoder_directions(stores, sae_dir):
    sae = load_sae(sae_dir)
    same = match_features(sae, sae)
    assert same["unmatched_a"] == [] and same["unmatched_b"] == []
    assert (same["match_a"] == np.arange(96)).all()
    with ActivationStore(stores["noise"]) as store:
        sae_noise = train_sae(store, HOOK, FAST)
    other = match_features(sae, sae_noise)
    assert len(other["unmatched_b"]) > 10
    with ActivationStore(stores["a"]) as a, ActivationStore(stores["a"]) as b:
        report = FeatureSurvival(sae).compare(a, b, HOOK, sae_b=sae)
    assert report.summary["matching"]["n_new_in_b"] == 0
    assert all(f.match_b == f.index for f in report.features)


def test_verdict_thresholds():
    th = SurvivalThresholds()
    assert classify(0.95, 0.1, 0.1, 100, th) == "survived"
    assert classify(0.95, 0.1, 0.3, 100, th) == "blurred"   # fires 3x as often
    assert classify(0.5, 0.1, 0.1, 100, th) == "blurred"
    assert classify(0.2, 0.1, 0.1, 100, th) == "dead"
    assert classify(0.9, 0.1, 0.005, 100, th) == "dead"     # fires 20x less
    assert classify(float("nan"), 0.1, 0.0, 100, th) == "dead"
    assert classify(1.0, 0.0, 0.0, 0, th) == "inactive"


def test_config_validation():
    with pytest.raises(ValueError):
        SAEConfig(architecture="jumprelu")
    with pytest.raises(ValueError):
        SAEConfig(training_tokens=10, batch_size=256)


def test_outlier_tokens_are_excluded_and_counted(stores, sae_dir, tmp_path):
    def spike(x: np.ndarray) -> np.ndarray:
        x[:5] *= 100.0
        return x

    spiked = _replace_acts(stores["a"], tmp_path / "spiked.h5", spike)
    sae = load_sae(sae_dir)
    with ActivationStore(stores["a"]) as a, ActivationStore(spiked) as b:
        report = FeatureSurvival(sae).compare(a, b, HOOK)
    out = report.summary["outliers"]
    assert out["b"] == 5 and out["a"] == 0 and out["excluded"] == 5
    assert report.summary["n_compared"] == report.summary["n_tokens"] - 5
    assert all(f.verdict == "survived" for f in report.features if f.verdict != "inactive")


def test_row_iterator_is_seeded_shuffled_and_covers_every_row(stores):
    from lensbias.saes.train import StoreActivations

    with ActivationStore(stores["a"]) as store:
        x = store.activations(HOOK, slice(0, 1000))
        it = StoreActivations(store, HOOK, 100, 0, 1000, seed=3, chunk_tokens=256)
        first_pass = torch.cat([next(it) for _ in range(10)]).numpy()
        again = StoreActivations(store, HOOK, 100, 0, 1000, seed=3, chunk_tokens=256)
        assert np.array_equal(next(again).numpy(), first_pass[:100])
        next(it)  # endless: a second pass starts
    assert first_pass.shape == (1000, 36)
    assert not np.array_equal(first_pass, x)  # shuffled
    order = np.lexsort(first_pass.T[::-1])
    np.testing.assert_array_equal(first_pass[order], x[np.lexsort(x.T[::-1])])
