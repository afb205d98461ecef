"""Geometry metrics against known cases and the isoscore package; streaming against in-memory;
geometry and behaviour of a model compared with itself through its cache."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import CORPUS, make_lm, word_dataset
from lensbias.behaviour import BehaviourReport, compare_behaviour, token_losses
from lensbias.errors import LensbiasError
from lensbias.geometry import (CrossMoments, GeometryConfig, GeometryReport, Moments,
                               SampleMeans, anisotropy, anisotropy_zscored, compare_geometry,
                               effective_rank, isoscore, linear_cka, matrix_entropy,
                               pooled_compression_metrics, sample_compression_metrics,
                               top_dim_variance_share, track_losses, twonn_dimension)
from lensbias.geometry.compare import METRICS
from lensbias.geometry.metrics import isoscore_from_variances
from lensbias.store import ActivationStore, CacheConfig, cache_activations


@pytest.fixture(scope="module")
def gauss() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(4000, 16))


def test_isotropic_gaussian(gauss):
    assert abs(anisotropy(gauss, 4000, seed=1)) < 0.02
    assert isoscore(gauss) > 0.98
    assert effective_rank(gauss) == pytest.approx(16, rel=0.01)
    assert effective_rank(cov=np.cov(gauss.T)) == pytest.approx(effective_rank(gauss), rel=1e-9)
    assert top_dim_variance_share(np.cov(gauss.T), 1) == pytest.approx(1 / 16, rel=0.1)
    assert matrix_entropy(np.cov(gauss.T)) == pytest.approx(math.log(16), rel=0.01)
    assert twonn_dimension(gauss, 1500) == pytest.approx(16, rel=0.25)


def test_one_direction_and_offset(gauss):
    rng = np.random.default_rng(1)
    w = rng.normal(size=16)
    line = np.outer(rng.uniform(1, 2, 3000), w) + 1e-4 * rng.normal(size=(3000, 16))
    assert anisotropy(line, 2000) > 0.999
    assert isoscore(line) < 1e-6
    assert effective_rank(line - line.mean(0)) < 2.5
    # a common offset makes raw cosines high; z-scoring each dimension removes it
    shifted = gauss + 5 * w
    assert anisotropy(shifted, 4000) > 0.9
    assert abs(anisotropy_zscored(shifted, 4000)) < 0.02
    # one rogue dimension
    rogue = gauss.copy()
    rogue[:, 3] *= 30
    assert top_dim_variance_share(np.cov(rogue.T), 1) > 0.95
    assert top_dim_variance_share(np.cov(rogue.T), 3) > top_dim_variance_share(np.cov(rogue.T), 1)


def test_isoscore_closed_form_and_package():
    # hand case: variances (2, 0) in 2-D: v̂ = (√2, 0), δ² = ((√2−1)² + 1)/(2(2−√2)) = 1,
    # score = ((2 − 1·(2 − √2))² − 2)/2 = 0
    assert isoscore_from_variances(np.array([2.0, 0.0])) == pytest.approx(0.0, abs=1e-12)
    assert isoscore_from_variances(np.array([3.0, 3.0, 3.0])) == pytest.approx(1.0, abs=1e-12)
    v = np.array([4.0, 1.0])
    n = 2
    vh = math.sqrt(n) * v / np.linalg.norm(v)
    d2 = np.sum((vh - 1) ** 2) / (2 * (n - math.sqrt(n)))
    assert isoscore_from_variances(v) == pytest.approx(((n - d2 * (n - math.sqrt(n))) ** 2 - n)
                                                       / (n * (n - 1)), abs=1e-12)
    assert isoscore(cov=np.diag(v)) == pytest.approx(isoscore_from_variances(v), abs=1e-12)
    iso = pytest.importorskip("IsoScore.IsoScore", reason="PyPI package isoscore not installed")
    rng = np.random.default_rng(2)
    for shape in ((500, 8), (300, 40), (50, 100)):
        x = rng.normal(size=shape) @ rng.normal(size=(shape[1], shape[1]))
        assert isoscore(x) == pytest.approx(float(iso.IsoScore(x)), abs=1e-6)


def test_streaming_moments_match_memory(gauss):
    x = gauss[:500] * np.arange(1, 17) + 1000.0  # large offset: shifted sums stay exact
    y = np.random.default_rng(3).normal(size=(500, 5))
    moments, cross = Moments(16), CrossMoments(16, 5)
    for i in range(0, 500, 7):
        moments.update(x[i:i + 7])
        cross.update(x[i:i + 7], y[i:i + 7])
    assert moments.n == 500
    np.testing.assert_allclose(moments.mean, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(moments.cov, np.cov(x.T), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(moments.second_moment, x.T @ x / 499, rtol=1e-9)
    assert cross.cka() == pytest.approx(linear_cka(x, y), rel=1e-9)


def test_cka_properties(gauss):
    rng = np.random.default_rng(4)
    x = gauss[:1000] @ rng.normal(size=(16, 16))
    q, _ = np.linalg.qr(rng.normal(size=(16, 16)))
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x, 3.7 * x @ q) == pytest.approx(1.0, abs=1e-9)
    assert linear_cka(x, x + 5.0) == pytest.approx(1.0, abs=1e-9)
    assert linear_cka(x, rng.normal(size=(1000, 24))) < 0.05
    assert linear_cka(x, x[:, :8]) < 1.0  # different widths are fine


def test_pooled_compression_metrics_hand_case():
    # eigenvalues 4, 2, 1, 1 (trace 8) in a rotated basis: λ = (.5, .25, .125, .125)
    q, _ = np.linalg.qr(np.random.default_rng(5).normal(size=(4, 4)))
    cov = q @ np.diag([4.0, 2.0, 1.0, 1.0]) @ q.T
    got = pooled_compression_metrics(cov, k=4)
    lam = np.array([0.5, 0.25, 0.125, 0.125])
    assert got["DE"] == pytest.approx(-np.log(lam).sum(), rel=1e-5)
    assert got["SE"] == pytest.approx(-(lam * np.log(lam)).sum(), rel=1e-5)
    # K capped at d/2 = 2: (0.5/0.125 + 0.25/0.125)/2 = 3
    assert got["anisotropy_k"] == pytest.approx(3.0, rel=1e-5)
    assert got["semantic_cv"] == pytest.approx(got["anisotropy_k"] / got["DE"], rel=1e-12)
    rest = np.array([2.0, 1.0, 1.0]) / 4
    assert got["de_without_top"] == pytest.approx(-np.log(rest).sum(), rel=1e-5)
    assert matrix_entropy(cov) == pytest.approx(got["SE"], rel=1e-5)


def test_sample_compression_metrics_hand_case():
    """One sentence of 8 tokens in 2-D: (±1, 0) three times each, (0, ±1) once each.

    Mean 0, rows already unit: ZᵀZ = diag(6, 2), Σ = diag(6, 2)/7 + ε·I, λ = Σ's diagonal
    over its trace. The razor removes Z's top direction e₁: six rows become 0 (kept 0), two stay
    (0, ±1); their mean is 0, so Σ' = diag(0, 2/7) + ε·I. PCS: both eigenvalues = λ_max."""
    eps = 1e-6
    x = np.array([[1, 0]] * 3 + [[-1, 0]] * 3 + [[0, 1], [0, -1]], float) * 5.0 + [2.0, -3.0]
    got = sample_compression_metrics(x, k=4)
    diag = np.array([6 / 7 + eps, 2 / 7 + eps])
    lam = diag / diag.sum()
    de = -np.log(lam).sum()
    assert got["ch_de"] == pytest.approx(de, rel=1e-9)
    assert got["ch_se"] == pytest.approx(-(lam * np.log(lam)).sum(), rel=1e-9)
    assert got["ch_anisotropy_k"] == pytest.approx(lam[0] / lam[1], rel=1e-9)  # K = d // 2 = 1
    assert got["ch_semantic_cv"] == pytest.approx(lam[0] / lam[1] / de, rel=1e-9)
    razored = np.array([eps, 2 / 7 + eps]) / (2 / 7 + 2 * eps)
    assert got["ch_de_razor"] == pytest.approx(-np.log(razored).sum(), rel=1e-9)
    assert got["ch_de_pcs"] == pytest.approx(-2 * np.log(lam[0]), rel=1e-9)


def reference_sample_metrics(emb: np.ndarray, k: int = 4) -> dict[str, float]:
    """hggzjx/compression_hacking ``MetricLab`` for one sample, written out in torch on the
    d × d covariance (``normalize``, ``compute_cov``, ``svdvals(cov / trace)``, razors)."""
    def normalize(e):
        e = e - e.mean(dim=0)
        return e / torch.norm(e, p=2, dim=1, keepdim=True)

    def eig_values(e, alpha=1e-6):
        xx = F.normalize(normalize(e), dim=1)
        cov = xx.T @ xx / (xx.shape[0] - 1) + alpha * torch.eye(xx.shape[1], dtype=xx.dtype)
        return torch.linalg.svdvals(cov / torch.trace(cov))

    e = torch.tensor(emb, dtype=torch.float64)
    lam = eig_values(e)
    comp = float(-torch.log(lam).nansum())
    asc = torch.sort(lam)[0]
    kk = min(k, len(asc) // 2)
    aniso = sum(float(asc[-j] / asc[j - 1]) for j in range(1, kk + 1)) / kk
    xc = normalize(e)
    top = torch.linalg.svd(xc, full_matrices=False)[2].T[:, :1]
    razored = eig_values(xc - (xc @ top) @ top.T)
    return {"ch_de": comp, "ch_se": float(-(lam * torch.log(lam)).nansum()),
            "ch_anisotropy_k": aniso, "ch_semantic_cv": aniso / comp,
            "ch_de_razor": float(-torch.log(razored).nansum()),
            "ch_de_pcs": float(-torch.log(torch.ones_like(lam) * lam.max()).nansum())}


def test_compression_metrics_are_per_sample_means_as_the_reference():
    rng = np.random.default_rng(7)
    mix = rng.normal(size=(12, 12)) * np.linspace(3.0, 0.1, 12)
    samples = [rng.normal(size=(n, 12)) @ mix + rng.normal(size=12) * 4 for n in (5, 9, 30)]
    means = SampleMeans(k=4)
    for sample in samples:
        ref = reference_sample_metrics(sample)
        got = sample_compression_metrics(sample)
        for key, value in ref.items():  # few rows (5 < d) go through the Gram matrix
            assert got[key] == pytest.approx(value, rel=1e-6), key
        means.add(sample)
    means.add(samples[0][:1])  # one token: no covariance, skipped
    assert means.n == 3
    expected = {key: np.mean([reference_sample_metrics(x)[key] for x in samples]) for key in ref}
    for key, value in means.result().items():
        assert value == pytest.approx(expected[key], rel=1e-6), key
    # the pooled covariance of all tokens is a different number
    z = np.concatenate(samples)
    z = z - z.mean(0)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    pooled = pooled_compression_metrics(z.T @ z / (len(z) - 1))
    assert abs(pooled["DE"] - means.result()["ch_de"]) > 0.05 * abs(pooled["DE"])
    with pytest.raises(ValueError):
        sample_compression_metrics(samples[0][:1])


@pytest.fixture(scope="module")
def cached(bpe, tmp_path_factory):
    lm = make_lm(bpe, n_ctx=24)  # window 24: the long examples span several windows
    dataset = word_dataset([f"{t} {i}" for i, t in enumerate(CORPUS[:4] * 4)])
    path = cache_activations(lm, dataset, tmp_path_factory.mktemp("geo") / "a.h5",
                             CacheConfig(dtype="float32", batch_size=3))
    return lm, dataset, path


def test_model_against_itself(cached):
    lm, dataset, path = cached
    with ActivationStore(path) as a, ActivationStore(path) as b:
        config = GeometryConfig(n_pairs=300, batch_tokens=37, twonn=True)
        report = compare_geometry(a, b, config)
        assert {c.domain for c in report.cka} == {"all", "code", "prose"}
        assert len(report.cka) == 2 * 3
        for c in report.cka:
            assert c.cka == pytest.approx(1.0, abs=1e-9)
        for row in report.rows:
            if row.model == "A":
                np.testing.assert_equal(report.get(row.hook, row.domain, "B").metrics,
                                        row.metrics)
        all_a = report.get("blocks.1.hook_resid_post", "all", "A")
        assert all_a.n_tokens == a.n_tokens and all_a.layer == 1
        assert set(all_a.metrics) == set(METRICS)
        assert all(math.isfinite(v) for v in all_a.metrics.values())
        # streamed metrics equal the in-memory ones
        x = a.activations("blocks.1.hook_resid_post").astype(np.float64)
        assert all_a.metrics["isoscore"] == pytest.approx(isoscore(x), abs=1e-9)
        assert all_a.metrics["effective_rank"] == pytest.approx(effective_rank(x), rel=1e-9)
        # Compression Hacking: one sample per example (its first 64 rows in the domain), averaged
        example = a.tokens()["example"]
        prose = a.labels("domain") == a.classes("domain").index("prose")

        def direct(mask, cap):
            per = [sample_compression_metrics(x[mask & (example == e)][:cap])
                   for e in np.unique(example) if (mask & (example == e)).sum() >= 2]
            return {key: np.mean([p[key] for p in per]) for key in per[0]}

        for domain, mask in (("all", np.ones(len(x), bool)), ("prose", prose)):
            want = direct(mask, 64)
            got = report.get("blocks.1.hook_resid_post", domain, "A").metrics
            for key in ("ch_de", "ch_de_razor", "ch_semantic_cv", "ch_de_pcs"):
                assert got[key] == pytest.approx(want[key], rel=1e-9), (domain, key)
        capped = compare_geometry(a, b, GeometryConfig(n_pairs=50, ch_tokens=5))
        got = capped.get("blocks.1.hook_resid_post", "all", "A").metrics["ch_de"]
        assert got == pytest.approx(direct(np.ones(len(x), bool), 5)["ch_de"], rel=1e-9)
        assert got != pytest.approx(all_a.metrics["ch_de"], rel=1e-3)
        # JSON round trip, NaN as null
        data = json.loads(json.dumps(report.to_dict(), allow_nan=False))
        assert GeometryReport.from_dict(data).to_dict() == data
        assert GeometryReport.from_dict(data).rows[0] == report.rows[0]
        rho = track_losses(report, {(c.hook, c.domain): float(i) for i, c in enumerate(report.cka)})
        assert set(rho) == set(METRICS) and all(math.isnan(v) for v in rho.values())  # no change
        sub = compare_geometry(a, b, GeometryConfig(n_pairs=50, max_tokens=100, min_tokens=10))
        assert next(c for c in sub.cka if c.domain == "all").n_tokens == 100


def test_track_losses_spearman():
    from lensbias.geometry import GeometryRow

    rows = []
    for i, hook in enumerate(["h0", "h1", "h2", "h3"]):
        rows.append(GeometryRow(hook, i, "all", "A", 10, {m: 0.0 for m in METRICS}))
        rows.append(GeometryRow(hook, i, "all", "B", 10, {m: float(i * i) for m in METRICS}))
    report = GeometryReport("a", "b", "d", GeometryConfig(), rows, [])
    rho = track_losses(report, {(h, "all"): loss for h, loss in
                                zip(["h0", "h1", "h2", "h3"], [0.1, 0.2, 0.3, 0.4])})
    assert rho["isoscore"] == pytest.approx(1.0)


def test_token_losses_match_direct_forward(cached, bpe):
    lm, dataset, path = cached
    with ActivationStore(path) as store:
        losses = token_losses(lm, dataset, store, batch_size=5)
        assert losses.shape == (store.n_tokens,) and np.isfinite(losses).all()
        # every row at its own offset: each window run alone, unpadded, in dataset order
        from lensbias.store.writer import plan_windows

        alone = []
        for w in plan_windows(lm, dataset, int(store.fingerprint["window"]))[0]:
            seq = torch.tensor([w.ids])
            with torch.inference_mode():
                logits = lm.model(seq, return_type="logits")[0]
            alone += [F.cross_entropy(logits[p - 1], seq[0, p]).item() if p > 0 else np.nan
                      for p in w.keep]
        np.testing.assert_allclose(losses, alone, atol=1e-4)
        tokens = store.tokens()
        window = store.fingerprint["window"]
        for index in (0, 1, 2):  # example 2 is longer than one window
            ids = lm.tokenizer.encode(dataset.examples[index].text).ids
            bos, body = ids[0], ids[1:]
            direct = []
            for first in range(0, len(body), window - 1):
                seq = torch.tensor([[bos, *body[first:first + window - 1]]])
                with torch.inference_mode():
                    logits = lm.model(seq, return_type="logits")[0]
                direct += F.cross_entropy(logits[:-1], seq[0, 1:], reduction="none").tolist()
            np.testing.assert_allclose(losses[tokens["example"] == index], direct, atol=1e-4)
        assert (tokens["position"][tokens["example"] == 2] >= window - 1).any()

        report = compare_behaviour(lm, lm, dataset, store, with_bpb=False, n_boot=200)
        assert report.overall.extra == 0.0 and report.overall.n == store.n_tokens
        assert report.by_bucket and set(report.by_bucket) <= {"common", "medium", "rare", "unseen"}
        for stats in report.by_bucket.values():
            assert stats.extra == 0.0 and stats.ci["extra"] == (0.0, 0.0)
            assert stats.ci["loss_a"][0] <= stats.loss_a <= stats.ci["loss_a"][1]
        assert set(report.by_domain) == {"code", "prose"}
        assert set(report.by_concept) == {"kind", "initial"}
        assert sum(s.n for s in report.by_concept["kind"].values()) <= store.n_tokens
        assert all(s.extra == 0.0 for per in report.by_concept.values() for s in per.values())
        data = json.loads(json.dumps(report.to_dict(), allow_nan=False))
        assert BehaviourReport.from_dict(data) == report
        assert report.bits_per_byte_slice is None  # not measured, no slice named

        import lensbias.behaviour.loss as loss_module
        with pytest.MonkeyPatch.context() as mp:  # bits/byte name their slice
            mp.setattr(loss_module, "model_bits_per_byte", lambda lm: {"code": 1.0, "prose": 2.0})
            measured = compare_behaviour(lm, lm, dataset, store, n_boot=10)
        assert measured.bits_per_byte_slice == "stdlib40-gumdev400"
        data = json.loads(json.dumps(measured.to_dict(), allow_nan=False))
        assert data["bits_per_byte_slice"] == "stdlib40-gumdev400"
        assert BehaviourReport.from_dict(data) == measured

        other = make_lm(bpe, seed=1, n_ctx=24)
        worse = compare_behaviour(lm, other, dataset, store, with_bpb=False, n_boot=50)
        assert worse.overall.extra != 0.0
        assert worse.overall.loss_a == pytest.approx(report.overall.loss_a)


def test_behaviour_refuses_encoders_and_other_data(cached, monkeypatch):
    lm, dataset, path = cached
    with ActivationStore(path) as store:
        with pytest.raises(LensbiasError, match="not the dataset"):
            token_losses(lm, word_dataset(CORPUS[:2]), store)
        monkeypatch.setattr(type(lm), "is_encoder", property(lambda self: True))
        with pytest.raises(LensbiasError, match="causal LM"):
            token_losses(lm, dataset, store)
