"""SAEs through sae-lens and frozen-SAE feature survival, on tiny stores (d_in 36)."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from conftest import make_lm, word_dataset
from lensbias.errors import LensbiasError
from lensbias.models.tokenizer import BPETokenizer
from lensbias.report import render_html
from lensbias.saes import (FeatureSurvival, QualityGate, SAEConfig, SAEReport,
                           SurvivalThresholds, damage_overlap, fit_alignment, heldout_rows,
                           load_sae, match_features, read_info, sae_quality,
                           survival_predictability, train_sae)
from lensbias.saes.report import FeatureRow
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
        mask, _ = heldout_rows(store, FAST.holdout_fraction, FAST.split_seed)
        held = store.activations(HOOK, np.flatnonzero(mask))
    assert info["training"]["heldout"]["n_tokens"] == len(held) > 100
    assert info["training"]["n_train_rows"] + len(held) == info["store"]["n_tokens"]
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
        assert c["tokens"][c["center"]].endswith(text[start:end])
        # each token's own text, whitespace before it included: the window reads like the source
        assert "".join(c["tokens"]) in text
        assert c["act_a"] == c["act_b"]
    spaced = [c for f in self_report.features for c in f.contexts
              if any(t.startswith(" ") for t in c["tokens"])]
    assert spaced  # the prose windows keep their spaces


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


def test_heldout_quality_is_read_in_bounded_blocks(stores, sae_dir, monkeypatch):
    """The saved held-out quality reads the store a block at a time (no read larger than
    the block) and equals sae_quality on all held-out rows at once, with and without the
    outlier cap."""
    from lensbias.saes.train import heldout_quality

    sae = load_sae(sae_dir)
    with ActivationStore(stores["a"]) as store:
        mask, _ = heldout_rows(store, FAST.holdout_fraction, FAST.split_seed)
        rows = np.flatnonzero(mask)
        held = store.activations(HOOK, rows)
        reads = []
        read = store.activations
        monkeypatch.setattr(store, "activations",
                            lambda hook, idx: reads.append(len(idx)) or read(hook, idx))
        cap = float(np.quantile(np.linalg.norm(held, axis=1), 0.8))
        for max_norm, want in ((None, held), (cap, held[np.linalg.norm(held, axis=1) <= cap])):
            reads.clear()
            got = heldout_quality(sae, store, HOOK, rows, max_norm, block=50)
            assert max(reads) <= 50 and sum(reads) == len(rows) and len(reads) > 2
            ref = sae_quality(sae, want)
            assert got["n_tokens"] == ref["n_tokens"] == len(want)
            for key in ("explained_variance", "mse", "l0", "dead_features"):
                assert got[key] == pytest.approx(ref[key], rel=1e-6, abs=1e-9), key
        assert heldout_quality(sae, store, HOOK, rows[:0], None) is None


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


# -- survival v2: planted truth ---------------------------------------------------------

N_PLANT, DESTROYED = 24, tuple(range(6))
PLANT = SAEConfig(d_sae=32, k=3, lr=5e-3, training_tokens=36_864, batch_size=256,
                  normalize_activations="none", holdout_fraction=0.15)


def _doc_dataset(texts: list[str]):  # noqa: ANN202
    """word_dataset with a ``doc`` sequence label: a domain's examples among six
    consecutive ones form a document."""
    from lensbias.concepts.schema import ConceptDataset, Example

    base = word_dataset(texts)
    return ConceptDataset("docs", tuple(
        Example(e.id, e.text, e.spans, {**e.seq_labels, "doc": f"{e.seq_labels['domain']}-{i // 6}"})
        for i, e in enumerate(base.examples)))


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> dict:
    """A store of real tokens whose activations are replaced by planted sparse features:
    24 random unit directions in d=36, 3 active per token, magnitudes in [1, 3]."""
    tmp = tmp_path_factory.mktemp("planted")
    lm = make_lm(BPETokenizer.train(_texts(40, 1), vocab_size=200))
    base = cache_activations(lm, _doc_dataset(_texts(240, 0)), tmp / "base.h5",
                             CacheConfig(dtype="float32"))
    with ActivationStore(base) as store:
        n, d = store.n_tokens, store.d(HOOK)
    rng = np.random.default_rng(7)
    dirs = rng.standard_normal((N_PLANT, d))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    codes = np.zeros((n, N_PLANT))
    for row in range(n):
        codes[row, rng.choice(N_PLANT, 3, replace=False)] = rng.uniform(1, 3, 3)
    kept = codes.copy()
    kept[:, list(DESTROYED)] = 0
    rotation, _ = np.linalg.qr(np.random.default_rng(8).standard_normal((d, d)))
    a = _replace_acts(base, tmp / "a.h5", lambda x: codes @ dirs)
    paths = {"a": a, "destroyed": _replace_acts(base, tmp / "b_destroyed.h5",
                                                lambda x: kept @ dirs),
             "rotated": _replace_acts(base, tmp / "b_rotated.h5",
                                      lambda x: codes @ dirs @ rotation)}
    with ActivationStore(a) as sa, ActivationStore(paths["destroyed"]) as sd, \
            ActivationStore(paths["rotated"]) as sr:
        saes = {"a": train_sae(sa, HOOK, PLANT), "a2": train_sae(sa, HOOK, replace(PLANT, seed=1)),
                "destroyed": train_sae(sd, HOOK, PLANT), "rotated": train_sae(sr, HOOK, PLANT)}
        held, _ = heldout_rows(sa, PLANT.holdout_fraction, PLANT.split_seed)
    cos = saes["a"].W_dec.detach().numpy()
    cos = (cos / np.linalg.norm(cos, axis=1, keepdims=True)) @ dirs.T
    recovered = {f: int(cos[f].argmax()) for f in range(len(cos)) if cos[f].max() > 0.9}
    return {**paths, "saes": saes, "held": held, "recovered": recovered}


def _compare(planted, b: str, **kw) -> SAEReport:
    saes = planted["saes"]
    with ActivationStore(planted["a"]) as sa, ActivationStore(planted[b]) as sb:
        align, info = fit_alignment(sa, sb, HOOK, ~planted["held"])
        return FeatureSurvival(saes["a"]).compare(
            sa, sb, HOOK, sae_b=saes[b], sae_a2=saes["a2"], align=align,
            heldout=planted["held"], align_info=info, **kw)


def test_heldout_is_whole_documents_of_every_domain(planted):
    with ActivationStore(planted["a"]) as store:
        mask, info = heldout_rows(store, 0.15, 0)
        doc = store.labels("doc")
        dom = store.labels("domain")
    assert set(info["domains"]) == {"code", "prose"}
    for d in np.unique(dom):
        assert mask[dom == d].any() and not mask[dom == d].all()  # every domain, not all
    for g in np.unique(doc):
        assert len(set(mask[doc == g].tolist())) == 1  # a document is on one side only
    assert not np.array_equal(np.flatnonzero(mask), np.arange(len(mask))[-mask.sum():])


def test_planted_sae_is_recovered_and_stable(planted):
    rec = planted["recovered"]
    assert len(set(rec.values())) >= 20  # most of the 24 planted directions have a feature
    report = _compare(planted, "destroyed")
    s = report.summary
    assert s["gate"]["passed"] and s["quality"]["a"]["explained_variance"] > 0.8
    assert s["quality"]["a"]["n_tokens"] == int(planted["held"].sum())
    stable = {f.index for f in report.features if f.stable}
    assert set(rec) <= stable | {f for f in rec if report.features[f].verdict == "inactive"}
    assert s["stability"]["n_stable"] + s["stability"]["n_unstable"] == s["stability"]["n_active"]
    # seed-to-seed null: a recovered feature and its match in the reseeded SAE agree closely
    assert np.median([report.features[f].seed_r for f in rec]) > 0.9
    assert s["seed_null"]["abs_r_random_pairs"]["median"] < 0.3


def test_destroyed_subset_is_exactly_the_dead_set(planted):
    report = _compare(planted, "destroyed")
    # recovered features that fire on >= 1% of tokens (a planted feature fires on 12.5%)
    rec = {f: p for f, p in planted["recovered"].items() if report.features[f].rate_a >= 0.01}
    truth = {f for f, p in rec.items() if p in DESTROYED}
    assert len(truth) >= 4 and len(rec) >= 18
    # B's own SAE is a separate training run: one more miss allowed in the information reading
    for field, tol in (("verdict", 1), ("verdict_aligned", 1), ("verdict_info", 2)):
        dead = {f for f in rec if getattr(report.features[f], field) == "dead"}
        survived = {f for f in rec if getattr(report.features[f], field) == "survived"}
        assert len(dead ^ truth) <= tol, (field, dead, truth)
        assert len((set(rec) - truth) - survived) <= tol, field
    assert report.summary["gone"] >= len(truth) - 1 and "gone" in report.summary["headline"]


def test_rotation_loses_the_readout_but_not_the_information(planted):
    report = _compare(planted, "rotated")
    rec = [f for f in planted["recovered"]
           if report.features[f].stable and report.features[f].rate_a >= 0.01]
    assert len(rec) >= 18
    share = {field: np.mean([getattr(report.features[f], field) == "survived" for f in rec])
             for field in ("verdict", "verdict_aligned", "verdict_info")}
    assert share["verdict"] < 0.3, share          # A's SAE reads a rotated B wrongly
    assert share["verdict_aligned"] > 0.9, share  # the affine map puts it back
    assert share["verdict_info"] > 0.8, share     # B's own SAE has the same features
    r = report.summary["readings"]
    # over every stable feature (weak, rarely firing latents included)
    assert r["readout"]["survived_share"] < 0.3
    assert r["aligned"]["survived_share"] > 0.8 and r["information"]["survived_share"] > 0.6
    assert report.summary["moved"] > report.summary["gone"]
    assert "moved" in report.summary["headline"]
    back = SAEReport.from_dict(json.loads(json.dumps(report.to_dict())))
    assert back.to_dict() == report.to_dict()


def test_failed_quality_gate_withholds_verdicts_and_says_why(planted):
    # k=1 cannot reconstruct tokens made of three features: explained variance stays low
    weak = SAEConfig(d_sae=32, k=1, lr=5e-3, training_tokens=8192, batch_size=256,
                     normalize_activations="none", holdout_fraction=0.15)
    with ActivationStore(planted["a"]) as sa, ActivationStore(planted["destroyed"]) as sb:
        sae = train_sae(sa, HOOK, weak)
        report = FeatureSurvival(sae).compare(sa, sb, HOOK, heldout=planted["held"])
    s = report.summary
    assert s["quality"]["a"]["explained_variance"] < QualityGate().min_explained_variance
    assert not s["gate"]["passed"] and "explained variance" in s["gate"]["reasons"][0]
    assert {f.verdict for f in report.features} <= {"withheld", "inactive"}
    assert math.isnan(s["survival_rate"]) and "withheld" in s["headline"]
    html = render_html({"saes": {HOOK: report.to_dict()}})
    assert "withheld" in html and "explained variance on held-out A tokens" in html
    assert "class='card" not in html  # no per-feature cards are shown


def _row(i: int, verdict: str, r: float, peak: float, rate: float) -> FeatureRow:
    return FeatureRow(index=i, verdict=verdict, pearson_r=r, rate_a=rate, rate_b=rate,
                      peak_a=peak, peak_b=peak, mean_active_a=1.0, decoder_norm=1.0,
                      stable=True)


def test_predictability_names_the_planted_predictor():
    rng = np.random.default_rng(0)
    peak = rng.lognormal(0, 1, 200)
    rate = rng.uniform(0.01, 0.1, 200)
    survived = peak + rng.normal(0, 0.2, 200) > np.median(peak)
    rows = [_row(i, "survived" if s else "dead", 0.9 if s else 0.1, p, q)
            for i, (s, p, q) in enumerate(zip(survived, peak, rate))]
    out = survival_predictability(rows)
    assert out["strongest"] == "peak_a" and out["single"]["peak_a"]["auc"] > 0.9
    assert out["auc"] > 0.85 and out["single"]["rate_a"]["auc"] < 0.7
    assert "decoder_norm" in out["dropped"] and "mean_active_a" in out["dropped"]  # constant
    coin = [_row(i, "survived" if rng.random() < 0.5 else "dead", 0.5, p, q)
            for i, (p, q) in enumerate(zip(peak, rate))]
    assert abs(survival_predictability(coin)["auc"] - 0.5) < 0.15
    assert "skipped" in survival_predictability(rows[:12])


def test_damage_overlap_of_known_sets():
    def report(damaged: set[int], scores: list[float], sha: str = "x") -> dict:
        return {"summary": {"sae_a_sha256": sha}, "features": [
            {"index": i, "verdict": "dead" if i in damaged else "survived",
             "pearson_r": 1 - s, "stable": i != 9} for i, s in enumerate(scores)]}

    scores = [0.9, 0.8, 0.7, 0.6, 0.1, 0.2, 0.05, 0.0, 0.3, 0.95]
    a = report({0, 1, 2, 3, 9}, scores)
    b = report({0, 1, 2, 8}, [s * 0.5 for s in scores])  # same ranking, halved damage
    out = damage_overlap({"rtn": a, "wanda": b})
    assert out["n_features"] == 9  # feature 9 is unstable
    assert out["jaccard"][0][1] == pytest.approx(3 / 5)  # {0,1,2} of {0,1,2,3,8}
    assert out["spearman"][0][1] == pytest.approx(1.0) and out["jaccard"][0][0] == 1.0
    with pytest.raises(LensbiasError, match="same SAE"):
        damage_overlap({"rtn": a, "other": report({0}, scores, sha="y")})
    withheld = {"summary": {"sae_a_sha256": "x"}, "features": [  # a failed quality gate
        {"index": i, "verdict": "withheld", "pearson_r": 0.5} for i in range(3)]}
    none = damage_overlap({"rtn": withheld, "wanda": withheld})
    assert none["n_features"] == 0 and none["jaccard"] == [[None, None], [None, None]]
