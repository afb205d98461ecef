"""Geometry, alignment maps and probe bootstraps computed in torch on a device, against numpy.

The references here are plain float64 numpy: textbook formulas, and, where labelled
"reference: the numpy implementation before devices", the code lensbias ran before this
math moved to torch, copied unchanged. Data are random with planted structure (a low-rank
signal, one rogue dimension, a large common offset, noise) at two sizes, float32 as a store
holds them. Every test runs on the CPU, and again on ``cuda`` where torch sees one.

Tolerances (relative unless said): the measured CPU agreement is 1e-10 or better for every
quantity (bootstrap replicates: 5e-8, the old float32 rounding) except the razored
Compression Hacking DE of 2-row samples, now exact where the numpy version's was rounding
noise (below); the tests allow 1e-6 for the geometry figures and bootstrap replicates and
1e-5 for transformed rows (float32 output), so a CUDA solver's different rounding passes.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import CORPUS, make_lm, word_dataset
from lensbias.geometry import metrics as m
from lensbias.geometry.compare import GeometryConfig, _sample_rows, compare_geometry
from lensbias.probes.align import MAPS, AlignMap
from lensbias.probes.pair import _replicates, bootstrap_weights
from lensbias.store import ActivationStore, CacheConfig, cache_activations

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="torch sees no CUDA device: CUDA path not checked"))]
SIZES = [(800, 16), (3000, 192)]
GEOMETRY = 1e-6
ROWS = 1e-5


def planted(n: int, d: int, seed: int = 0) -> np.ndarray:
    """float32 rows: a rank-d/4 signal, one rogue dimension, offset 50, noise."""
    rng = np.random.default_rng(seed)
    signal = rng.normal(size=(n, max(d // 4, 1))) @ rng.normal(size=(max(d // 4, 1), d))
    x = signal + 0.3 * rng.normal(size=(n, d)) + 50.0
    x[:, 1] += 20 * rng.normal(size=n)
    return x.astype(np.float32)


def rel(got: float, want: float) -> float:
    return abs(got - want) / max(abs(want), 1e-300)


def ref_spectrum(cov: np.ndarray) -> np.ndarray:
    return np.sort(np.abs(np.linalg.eigvalsh((cov + cov.T) / 2)))[::-1]


def ref_entropy(w: np.ndarray) -> float:
    p = w[w > 0] / w.sum()
    return float(-(p * np.log(p)).sum())


def ref_anisotropy(x: np.ndarray, n_pairs: int, seed: int) -> float:
    rng = np.random.default_rng(seed)
    u = rng.integers(0, len(x), n_pairs)
    v = (u + rng.integers(1, len(x), n_pairs)) % len(x)
    norms = np.linalg.norm(x, axis=1)
    return float((np.einsum("ij,ij->i", x[u], x[v]) / (norms[u] * norms[v])).mean())


def ref_cka(x: np.ndarray, y: np.ndarray) -> float:
    x, y = x - x.mean(0), y - y.mean(0)
    return float(np.sum((y.T @ x) ** 2) / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)))


# reference: the numpy implementation before devices (geometry/metrics.py), copied unchanged
def _ref_normalised_spectrum(z, with_top=False):
    rows, d = z.shape
    gram = z @ z.T if rows < d else z.T @ z
    gram = (gram + gram.T) / 2
    if with_top:
        eig, vecs = np.linalg.eigh(gram)
        top = vecs[:, -1] if rows >= d else z.T @ vecs[:, -1]
        top = top / max(np.linalg.norm(top), 1e-12)
    else:
        eig, top = np.linalg.eigvalsh(gram), None
    eig = np.concatenate([np.clip(eig, 0.0, None), np.zeros(d - len(eig))])
    eig = eig / max(rows - 1, 1) + 1e-6
    return np.sort(eig)[::-1] / eig.sum(), top


def _ref_centre_normalise(x):
    z = np.asarray(x, np.float64) - np.asarray(x, np.float64).mean(0)
    return z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)


def ref_sample_compression_metrics(tokens, k=4):
    z = _ref_centre_normalise(tokens)
    lam, top = _ref_normalised_spectrum(z, with_top=True)
    d = len(lam)
    de = float(-np.log(lam).sum())
    kk = max(1, min(k, d // 2))
    aniso = float(np.mean(lam[:kk] / lam[::-1][:kk]))
    razored, _ = _ref_normalised_spectrum(_ref_centre_normalise(z - np.outer(z @ top, top)))
    return {"ch_de": de, "ch_se": float(-(lam * np.log(lam)).sum()), "ch_anisotropy_k": aniso,
            "ch_semantic_cv": aniso / de, "ch_de_razor": float(-np.log(razored).sum()),
            "ch_de_pcs": float(-d * np.log(lam[0]))}


# reference: the numpy implementation before devices (probes/align.py AlignMap), copied
def ref_align(kind, h_b, h_a):
    h_b, h_a = np.asarray(h_b, np.float64), np.asarray(h_a, np.float64)
    mean_b, mean_a = h_b.mean(axis=0), h_a.mean(axis=0)
    cb, ca = h_b - mean_b, h_a - mean_a
    if kind == "mean":
        weight = None
    elif kind == "scale":
        sb, sa = cb.std(axis=0), ca.std(axis=0)
        weight = np.where(sb > 1e-12, sa / np.maximum(sb, 1e-12), 1.0)
    elif kind == "affine":
        gram = cb.T @ cb
        damp = 1e-6 * max(float(np.trace(gram)) / gram.shape[0], 1e-30)
        weight = np.linalg.solve(gram + damp * np.eye(gram.shape[0]), cb.T @ ca)
    else:
        u, sigma, vt = np.linalg.svd(cb.T @ ca, full_matrices=False)
        weight = float(sigma.sum() / max(float((cb ** 2).sum()), 1e-30)) * (u @ vt)

    def transform(h):
        centred = np.asarray(h, np.float64) - mean_b
        mapped = (centred if weight is None else centred * weight if weight.ndim == 1
                  else centred @ weight)
        return (mapped + mean_a).astype(np.float32)
    return weight, transform


# reference: the numpy implementation before devices (probes/pair.py _replicates), copied
def ref_replicates(correct, groups, weights, mask=None):
    w = weights[:, groups] if mask is None else weights[:, groups[mask]]
    hits = np.stack([v if mask is None else v[mask] for v in correct.values()], axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = (w @ hits.astype(np.float32)) / w.sum(axis=1, keepdims=True)
    return {k: acc[:, i].astype(np.float64) for i, k in enumerate(correct)}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n, d", SIZES)
def test_streamed_moments_and_cka_match_numpy(device, n, d):
    x = planted(n, d, 1)
    y = (x[:, : d // 2] @ np.random.default_rng(2).normal(size=(d // 2, d // 3))
         ).astype(np.float32)
    cross = m.CrossMoments(d, d // 3, device)
    for start in range(0, n, 333):  # uneven batches, numpy in
        cross.update(x[start:start + 333], y[start:start + 333])
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(cross.x.mean, x64.mean(0), rtol=1e-12)
    np.testing.assert_allclose(cross.x.cov, np.cov(x64.T), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(cross.x.second_moment, x64.T @ x64 / (n - 1), rtol=1e-9)
    assert isinstance(cross.x.cov, np.ndarray) and cross.x.cov.dtype == np.float64
    want = ref_cka(x64, y.astype(np.float64))
    assert rel(cross.cka(), want) < GEOMETRY
    assert rel(m.linear_cka(x, y, device=device), want) < GEOMETRY
    tensors = m.Moments(d, device)  # tensors already on the device go in as they are
    tensors.update(torch.from_numpy(x).to(device))
    np.testing.assert_allclose(tensors.cov, np.cov(x64.T), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n, d", SIZES)
def test_spectral_metrics_match_numpy(device, n, d):
    x = planted(n, d, 3).astype(np.float64)
    cov = np.cov(x.T)
    lam = ref_spectrum(cov)
    np.testing.assert_allclose(m.spectrum(cov, device), lam, rtol=1e-9, atol=1e-12 * lam[0])
    assert rel(m.isoscore(cov=cov, device=device), m.isoscore_from_variances(lam)) < GEOMETRY
    assert rel(m.isoscore(x, device=device), m.isoscore_from_variances(lam)) < GEOMETRY
    assert rel(m.effective_rank(cov=cov, device=device),
               math.exp(ref_entropy(np.sqrt(lam)))) < GEOMETRY
    sigma = np.linalg.svd(x - x.mean(0), compute_uv=False)
    assert rel(m.effective_rank(x, device=device), math.exp(ref_entropy(sigma))) < GEOMETRY
    assert rel(m.matrix_entropy(cov, device=device), ref_entropy(lam)) < GEOMETRY
    assert m.top_dim_variance_share(cov, 1) == pytest.approx(
        np.sort(np.diag(cov))[-1] / np.trace(cov), rel=1e-12)
    z = x - x.mean(0)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    pooled = m.pooled_compression_metrics(z.T @ z / (n - 1), device=device)
    eig = np.clip(np.linalg.eigvalsh(z.T @ z / (n - 1) + 1e-6 * np.eye(d)), 1e-9, None)
    eig = eig[::-1] / eig.sum()
    assert rel(pooled["DE"], -np.log(eig).sum()) < GEOMETRY
    assert rel(pooled["SE"], -(eig * np.log(eig)).sum()) < GEOMETRY


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n, d", SIZES)
def test_anisotropy_and_twonn_match_numpy(device, n, d):
    x = planted(n, d, 4)
    x64 = x.astype(np.float64)
    assert rel(m.anisotropy(x, 2000, 5, device), ref_anisotropy(x64, 2000, 5)) < GEOMETRY
    mean, std = x64.mean(0), x64.std(0, ddof=1)
    want = ref_anisotropy((x64 - mean) / std, 2000, 5)
    assert abs(m.anisotropy_zscored(x, 2000, 5, device=device) - want) < GEOMETRY
    # a sample z-scored by the full data's moments, given as numpy
    got = m.anisotropy_zscored(x[:300], 500, 5, mean=mean, std=std, device=device)
    assert abs(got - ref_anisotropy((x64[:300] - mean) / std, 500, 5)) < GEOMETRY
    sq = (x64 * x64).sum(1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * x64 @ x64.T, 0.0)
    np.fill_diagonal(d2, np.inf)
    two = np.sqrt(np.sort(d2, axis=1)[:, :2])
    assert rel(m.twonn_dimension(x, n, device=device),
               len(x) / np.log(two[:, 1] / two[:, 0]).sum()) < GEOMETRY


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n, d", SIZES)
def test_compression_hacking_batch_matches_the_numpy_reference(device, n, d):
    x = planted(n, d, 6)
    rng = np.random.default_rng(7)
    lengths = rng.integers(3, 65, 40)
    starts = rng.integers(0, n - 64, 40)
    samples = [x[s:s + L] for s, L in zip(starts, lengths)]
    samples.append(x[:d + 5])  # more rows than dimensions (d x d Gram) for the small width
    got = m.compression_metrics_batch(samples, 4, device)
    worst = 0.0
    for sample, values in zip(samples, got):
        want = ref_sample_compression_metrics(sample)
        assert set(values) == set(m.CH_METRICS)
        worst = max(worst, *(rel(values[k], want[k]) for k in want))
    assert worst < GEOMETRY
    single = m.sample_compression_metrics(samples[0], 4, device)
    assert all(rel(single[k], got[0][k]) < 1e-9 for k in single)
    # a 2-row sample: the razor leaves rounding residue only, which now counts as 0 (the
    # numpy reference scaled it to unit rows: up to 8e-4 off, BLAS-dependent), so every
    # razored eigenvalue is the ridge's, λ = 1/d, and DE = d·log d exactly
    pair = m.sample_compression_metrics(x[10:12], 4, device)
    want = ref_sample_compression_metrics(x[10:12])
    assert all(rel(pair[k], want[k]) < GEOMETRY for k in want if k != "ch_de_razor")
    assert rel(pair["ch_de_razor"], d * math.log(d)) < 1e-12
    with pytest.raises(ValueError):
        m.compression_metrics_batch([x[:5], x[:1]], 4, device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n, d", SIZES)
def test_alignment_maps_match_the_numpy_reference(device, n, d):
    h_a = planted(n, d, 8)
    mix = np.random.default_rng(9).normal(size=(d, d)) / math.sqrt(d)
    h_b = (h_a @ mix * 1.5 + 3.0 + 0.1 * planted(n, d, 10)).astype(np.float32)
    wide = np.concatenate([h_a, h_a[:, :5]], axis=1)  # another width for affine, procrustes
    for kind in MAPS:
        target = h_a if kind in ("mean", "scale") else wide
        fitted = AlignMap(kind, device).fit(h_b[: n // 2], target[: n // 2])
        weight, transform = ref_align(kind, h_b[: n // 2], target[: n // 2])
        if weight is None:
            assert fitted.weight_ is None
        else:
            np.testing.assert_allclose(fitted.weight_, weight, rtol=1e-7,
                                       atol=1e-9 * np.abs(weight).max())
        np.testing.assert_allclose(fitted.mean_a_, target[: n // 2].astype(np.float64).mean(0),
                                   rtol=1e-12)
        got, want = fitted.transform(h_b[n // 2:]), transform(h_b[n // 2:])
        assert got.dtype == np.float32 and got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=ROWS, atol=ROWS * np.abs(want).max())
        direction = h_b[0] - h_b[1]
        carried = direction if weight is None else (
            direction * weight if weight.ndim == 1 else direction @ weight)
        np.testing.assert_allclose(fitted.rotate(direction), carried, rtol=ROWS,
                                   atol=ROWS * np.abs(carried).max())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n_docs, n_tokens", [(30, 500), (400, 4000)])
def test_bootstrap_replicates_match_the_numpy_reference(device, n_docs, n_tokens):
    rng = np.random.default_rng(11)
    docs = np.sort(rng.integers(0, n_docs, n_tokens))
    weights = bootstrap_weights(docs, 200, seed=3)
    correct = {"acc_a": rng.random(n_tokens) < 0.8, "transfer": rng.random(n_tokens) < 0.6,
               "embed": np.full(n_tokens, np.nan)}  # a floor without its input
    got = _replicates(correct, docs, weights, device=device)
    want = ref_replicates(correct, docs, weights)
    for key in ("acc_a", "transfer"):
        assert got[key].dtype == np.float64 and got[key].shape == (200,)
        np.testing.assert_allclose(got[key], want[key], rtol=1e-6)
    assert np.isnan(got["embed"]).all()
    mask = rng.random(n_tokens) < 0.1  # a stratum: some resamples may draw none of it
    got = _replicates(correct, docs, weights, mask, device)
    want = ref_replicates(correct, docs, weights, mask)
    np.testing.assert_allclose(got["acc_a"], want["acc_a"], rtol=1e-6, equal_nan=True)


@pytest.fixture(scope="module")
def two_stores(bpe, tmp_path_factory):
    root = tmp_path_factory.mktemp("devgeo")
    dataset = word_dataset([f"{t} {i}" for i, t in enumerate(CORPUS[:4] * 4)])
    paths = []
    for seed in (0, 1):
        lm = make_lm(bpe, seed=seed, n_ctx=24)
        paths.append(cache_activations(lm, dataset, root / f"{seed}.h5",
                                       CacheConfig(dtype="float32", batch_size=3)))
    return paths


@pytest.mark.parametrize("device", DEVICES)
def test_compare_geometry_matches_in_memory_numpy(two_stores, device):
    config = GeometryConfig(n_pairs=300, batch_tokens=37, twonn=True, device=device)
    with ActivationStore(two_stores[0]) as a, ActivationStore(two_stores[1]) as b:
        report = compare_geometry(a, b, config)
        assert report.to_dict()["config"]["device"] == device
        hook = "blocks.1.hook_resid_post"
        xs = {"A": a.activations(hook).astype(np.float64),
              "B": b.activations(hook).astype(np.float64)}
        example = a.tokens()["example"]
        prose = a.labels("domain") == a.classes("domain").index("prose")
    for domain, mask in (("all", np.ones(len(example), bool)), ("prose", prose)):
        sample = _sample_rows(mask, 2 * config.n_pairs, config.seed)
        for name, x in xs.items():
            got = report.get(hook, domain, name).metrics
            rows = x[mask]
            cov = np.cov(rows.T)
            lam = ref_spectrum(cov)
            std = np.sqrt(np.diag(cov))
            want = {"anisotropy": ref_anisotropy(x[sample], config.n_pairs, config.seed),
                    "isoscore": m.isoscore_from_variances(lam),
                    "effective_rank": math.exp(ref_entropy(np.sqrt(lam))),
                    "matrix_entropy": ref_entropy(lam),
                    "top1_share": np.diag(cov).max() / np.trace(cov)}
            per = [ref_sample_compression_metrics(x[mask & (example == e)][:64])
                   for e in np.unique(example) if (mask & (example == e)).sum() >= 2]
            want.update({k: np.mean([p[k] for p in per]) for k in m.CH_METRICS})
            for key, value in want.items():
                assert rel(got[key], value) < GEOMETRY, (domain, name, key)
            z = (x[sample] - rows.mean(0)) / np.where(std > 1e-12, std, 1.0)
            z[:, std <= 1e-12] = 0.0
            assert abs(got["anisotropy_z"] - ref_anisotropy(z, config.n_pairs, config.seed)
                       ) < GEOMETRY
        cka = next(c for c in report.cka if (c.hook, c.domain) == (hook, domain)).cka
        assert rel(cka, ref_cka(xs["A"][mask], xs["B"][mask])) < GEOMETRY
