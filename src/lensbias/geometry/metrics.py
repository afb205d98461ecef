"""Geometry, stage 1: representation-geometry metrics as pure functions on arrays or moments.

Anisotropy (raw and z-scored), rogue-dimension variance share, IsoScore, effective rank,
matrix entropy, the Compression Hacking metrics (per sample, averaged), linear CKA and TwoNN,
plus streaming moments.
"""

from __future__ import annotations

import math

import numpy as np
from jaxtyping import Float

EPS = 1e-12
RIDGE = 1e-6
"""Ridge added to the normalised-row covariance (Compression Hacking: Σ + 1e-6·I)."""


class Moments:
    """Streaming first and second moments of rows, in float64, shifted for stability.

    ``update`` takes ``[b, d]`` batches; ``mean`` and ``cov`` (ddof 1) equal the in-memory
    figures of all rows seen. Sums are kept relative to the first batch's mean, so a large
    common offset (rogue dimensions) does not cancel catastrophically.
    """

    def __init__(self, d: int):
        self.d = d
        self.n = 0
        self._shift: np.ndarray | None = None
        self._sum = np.zeros(d, np.float64)
        self._outer = np.zeros((d, d), np.float64)

    def update(self, batch: Float[np.ndarray, "rows d"]) -> None:
        x = np.asarray(batch, np.float64)
        if x.ndim != 2 or x.shape[1] != self.d:
            raise ValueError(f"expected a [rows, {self.d}] batch, got shape {x.shape}")
        if not len(x):
            return
        if self._shift is None:
            self._shift = x.mean(0)
        x = x - self._shift
        self.n += len(x)
        self._sum += x.sum(0)
        self._outer += x.T @ x

    @property
    def mean(self) -> Float[np.ndarray, " d"]:
        if self.n == 0:
            return np.full(self.d, np.nan)
        return self._shift + self._sum / self.n

    @property
    def scatter(self) -> Float[np.ndarray, "d d"]:
        """Σ (x − mean)(x − mean)ᵀ over all rows (the centred Gram matrix XcᵀXc)."""
        if self.n == 0:
            return np.full((self.d, self.d), np.nan)
        m = self._sum / self.n
        return self._outer - self.n * np.outer(m, m)

    @property
    def cov(self) -> Float[np.ndarray, "d d"]:
        """Sample covariance (ddof 1)."""
        return self.scatter / max(self.n - 1, 1)

    @property
    def second_moment(self) -> Float[np.ndarray, "d d"]:
        """Uncentred Σ x xᵀ / (n − 1): ZᵀZ/(L − 1) for already-centred rows Z."""
        s = self._shift if self._shift is not None else np.zeros(self.d)
        raw = self._outer + np.outer(self._sum, s) + np.outer(s, self._sum) + self.n * np.outer(s, s)
        return raw / max(self.n - 1, 1)


class CrossMoments:
    """Streaming moments of paired rows ``x`` [b, dx] and ``y`` [b, dy] for linear CKA.

    Accumulates XᵀX, YᵀY (as two ``Moments``) and YᵀX with column sums; the centred blocks
    are recovered from the sums, e.g. YcᵀXc = ΣyxᵀΣ − n·ȳx̄ᵀ (shifted for stability).
    """

    def __init__(self, dx: int, dy: int):
        self.x = Moments(dx)
        self.y = Moments(dy)
        self._cross = np.zeros((dy, dx), np.float64)

    @property
    def n(self) -> int:
        return self.x.n

    def update(self, x: Float[np.ndarray, "rows dx"], y: Float[np.ndarray, "rows dy"]) -> None:
        if len(x) != len(y):
            raise ValueError(f"paired batches differ in rows: {len(x)} vs {len(y)}")
        if not len(x):
            return
        self.x.update(x)
        self.y.update(y)
        xs = np.asarray(x, np.float64) - self.x._shift
        ys = np.asarray(y, np.float64) - self.y._shift
        self._cross += ys.T @ xs

    @property
    def cross_scatter(self) -> Float[np.ndarray, "dy dx"]:
        """YcᵀXc: the centred cross Gram matrix."""
        n = self.n
        return self._cross - np.outer(self.y._sum, self.x._sum) / max(n, 1)

    def cka(self) -> float:
        return _cka_from_blocks(self.x.scatter, self.y.scatter, self.cross_scatter)


def _cka_from_blocks(xx: np.ndarray, yy: np.ndarray, yx: np.ndarray) -> float:
    denom = np.linalg.norm(xx) * np.linalg.norm(yy)
    if not np.isfinite(denom) or denom <= 0:
        return float("nan")
    return float(np.sum(yx * yx) / denom)


def linear_cka(x: Float[np.ndarray, "n dx"], y: Float[np.ndarray, "n dy"]) -> float:
    """Linear CKA ‖YᵀX‖²_F / (‖XᵀX‖_F ‖YᵀY‖_F) on column-centred X, Y (widths may differ)."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    if len(x) != len(y):
        raise ValueError(f"CKA needs the same rows: {len(x)} vs {len(y)}")
    x = x - x.mean(0)
    y = y - y.mean(0)
    return _cka_from_blocks(x.T @ x, y.T @ y, y.T @ x)


def _pairs(n: int, n_pairs: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n_pairs`` random index pairs (u, v) with u ≠ v, seeded."""
    if n < 2:
        raise ValueError(f"anisotropy needs at least 2 rows, got {n}")
    rng = np.random.default_rng(seed)
    u = rng.integers(0, n, n_pairs)
    v = (u + rng.integers(1, n, n_pairs)) % n  # uniform over the other rows
    return u, v


def anisotropy(x: Float[np.ndarray, "n d"], n_pairs: int = 5000, seed: int = 0) -> float:
    """E[cos(h_u, h_v)] over ``n_pairs`` random pairs of distinct rows (Ethayarajh 2019)."""
    x = np.asarray(x, np.float64)
    u, v = _pairs(len(x), n_pairs, seed)
    norms = np.linalg.norm(x, axis=1)
    cos = np.einsum("ij,ij->i", x[u], x[v]) / np.maximum(norms[u] * norms[v], EPS)
    return float(cos.mean())


def anisotropy_zscored(x: Float[np.ndarray, "n d"], n_pairs: int = 5000, seed: int = 0,
                       mean: np.ndarray | None = None, std: np.ndarray | None = None) -> float:
    """Anisotropy after z-scoring every dimension (Timkey & van Schijndel 2021).

    ``mean``/``std`` default to the rows' own; pass the full data's when ``x`` is a sample.
    Dimensions with zero spread are set to 0.
    """
    x = np.asarray(x, np.float64)
    mean = x.mean(0) if mean is None else np.asarray(mean, np.float64)
    std = x.std(0, ddof=1) if std is None else np.asarray(std, np.float64)
    z = np.where(std > EPS, (x - mean) / np.where(std > EPS, std, 1.0), 0.0)
    return anisotropy(z, n_pairs, seed)


def top_dim_variance_share(cov: Float[np.ndarray, "d d"], k: int = 1) -> float:
    """Share of total variance in the ``k`` highest-variance dimensions (rogue dimensions)."""
    var = np.sort(np.clip(np.diag(np.asarray(cov, np.float64)), 0, None))[::-1]
    total = var.sum()
    return float(var[:k].sum() / total) if total > 0 else float("nan")


def _cov_of(points: np.ndarray | None, cov: np.ndarray | None) -> np.ndarray:
    if (points is None) == (cov is None):
        raise ValueError("pass exactly one of points or cov")
    if cov is not None:
        return np.asarray(cov, np.float64)
    return np.cov(np.asarray(points, np.float64), rowvar=False, ddof=1).reshape(
        np.shape(points)[1], np.shape(points)[1])


def _spectrum(cov: np.ndarray) -> np.ndarray:
    """Eigenvalues of a symmetric matrix, descending, as magnitudes (= its singular values)."""
    return np.sort(np.abs(np.linalg.eigvalsh((cov + cov.T) / 2)))[::-1]


def isoscore_from_variances(v: Float[np.ndarray, " n"]) -> float:
    """IsoScore of PCA variances ``v`` (n = dimension): v̂ = √n·v/‖v‖,
    δ = ‖v̂ − 1‖/√(2(n − √n)), score = ((n − δ²(n − √n))² − n)/(n(n − 1))."""
    v = np.asarray(v, np.float64)
    n = float(len(v))
    norm = np.linalg.norm(v)
    if n < 2 or norm <= 0:
        return float("nan")
    v_hat = math.sqrt(n) * v / norm
    delta = np.linalg.norm(v_hat - 1.0) / math.sqrt(2 * (n - math.sqrt(n)))
    return float(((n - delta ** 2 * (n - math.sqrt(n))) ** 2 - n) / (n * (n - 1)))


def isoscore(points: Float[np.ndarray, "n d"] | None = None, *,
             cov: Float[np.ndarray, "d d"] | None = None) -> float:
    """IsoScore (Rudman et al. 2022) of a point cloud ``[samples, dim]`` or its covariance:
    1 for isotropic data, 0 for data along one direction."""
    return isoscore_from_variances(_spectrum(_cov_of(points, cov)))


def effective_rank(points: Float[np.ndarray, "n d"] | None = None, *,
                   cov: Float[np.ndarray, "d d"] | None = None) -> float:
    """exp(−Σ p_k log p_k), p_k = σ_k/Σσ over singular values σ of the centred matrix
    (Roy & Vetterli 2007); from a covariance σ_k ∝ √λ_k."""
    if points is not None and cov is None:
        x = np.asarray(points, np.float64)
        sigma = np.linalg.svd(x - x.mean(0), compute_uv=False)
    else:
        sigma = np.sqrt(_spectrum(_cov_of(points, cov)))
    return float(np.exp(_entropy(sigma)))


def _entropy(weights: np.ndarray) -> float:
    total = weights.sum()
    if total <= 0:
        return float("nan")
    p = weights[weights > 0] / total
    return float(-(p * np.log(p)).sum())


def matrix_entropy(cov: Float[np.ndarray, "d d"]) -> float:
    """−Σ λ̂ log λ̂ (nats) over the eigenvalues of ``cov`` normalised to trace 1."""
    return _entropy(_spectrum(np.asarray(cov, np.float64)))


CH_METRICS = ("ch_de", "ch_se", "ch_anisotropy_k", "ch_semantic_cv", "ch_de_razor", "ch_de_pcs")
"""Compression Hacking metrics of one sample (``sample_compression_metrics``), in report order."""


def _normalised_spectrum(z: Float[np.ndarray, "rows d"], with_top: bool = False
                         ) -> tuple[Float[np.ndarray, " d"], np.ndarray | None]:
    """λ = eig(ZᵀZ/(L−1) + 1e-6·I) / trace, all d of them, descending, for rows Z; with
    ``with_top`` also Z's top right-singular vector ``[d]`` (ZᵀZ's top eigenvector).

    With fewer rows than dimensions the nonzero eigenvalues of ZᵀZ are those of ZZᵀ (L × L),
    the rest 0; the ridge is added to all d, as the reference does on the d × d matrix."""
    rows, d = z.shape
    gram = z @ z.T if rows < d else z.T @ z
    gram = (gram + gram.T) / 2
    if with_top:
        eig, vecs = np.linalg.eigh(gram)
        top = vecs[:, -1] if rows >= d else z.T @ vecs[:, -1]
        top = top / max(np.linalg.norm(top), EPS)
    else:
        eig, top = np.linalg.eigvalsh(gram), None
    eig = np.concatenate([np.clip(eig, 0.0, None), np.zeros(d - len(eig))])
    eig = eig / max(rows - 1, 1) + RIDGE
    return np.sort(eig)[::-1] / eig.sum(), top


def _centre_normalise(x: Float[np.ndarray, "rows d"]) -> Float[np.ndarray, "rows d"]:
    """The reference's ``normalize``: centre by the sample's own mean, rows to unit L2 norm
    (a row that is exactly the mean stays 0; the reference would divide 0 by 0)."""
    x = np.asarray(x, np.float64)
    return normalise_rows(x, x.mean(0))


def sample_compression_metrics(tokens: Float[np.ndarray, "rows d"], k: int = 4) -> dict[str, float]:
    """Compression Hacking (arXiv 2505.17793, hggzjx/compression_hacking ``MetricLab``) of one
    sample: ``tokens`` is one sentence's token matrix ``[L, d]``, L ≥ 2.

    Z = rows centred by the sample mean and L2-normalised; Σ = ZᵀZ/(L−1) + 1e-6·I; λ = the d
    eigenvalues of Σ / tr Σ, descending. ``ch_de`` = −Σ log λ (DE), ``ch_se`` = −Σ λ log λ
    (SE), ``ch_anisotropy_k`` = mean over k ≤ K of λ_(k-th largest) / λ_(k-th smallest)
    with K = min(k, d // 2), ``ch_semantic_cv`` = anisotropy_K / DE. The two razors of
    ``compute_compression_revised``: ``ch_de_razor`` ("remove direction", K = 1) projects Z
    onto the complement of its top right-singular vector, centres and re-normalises those
    rows and takes DE of all d eigenvalues again; ``ch_de_pcs`` ("pcs", the reference's
    default razor) sets all d eigenvalues to the largest: −d · log λ_max.
    """
    x = np.asarray(tokens, np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"a sample needs a [rows >= 2, d] token matrix, got shape {x.shape}")
    z = _centre_normalise(x)
    lam, top = _normalised_spectrum(z, with_top=True)
    assert top is not None
    d = len(lam)
    de = float(-np.log(lam).sum())
    kk = max(1, min(k, d // 2))
    aniso = float(np.mean(lam[:kk] / lam[::-1][:kk]))
    razored, _ = _normalised_spectrum(_centre_normalise(z - np.outer(z @ top, top)))
    return {"ch_de": de, "ch_se": float(-(lam * np.log(lam)).sum()), "ch_anisotropy_k": aniso,
            "ch_semantic_cv": aniso / de if de != 0 else float("nan"),
            "ch_de_razor": float(-np.log(razored).sum()),
            "ch_de_pcs": float(-d * np.log(lam[0]))}


class SampleMeans:
    """Compression Hacking metrics averaged over samples, as the reference's ``compute_metrics``
    averages its per-sample list (the ratio semantic CV is averaged, not recomputed)."""

    def __init__(self, k: int = 4):
        self.k = k
        self.n = 0
        self._sums = dict.fromkeys(CH_METRICS, 0.0)

    def add(self, tokens: Float[np.ndarray, "rows d"]) -> dict[str, float] | None:
        """One sample's token matrix (its metrics are returned); fewer than 2 rows: skipped."""
        if len(tokens) < 2:
            return None
        values = sample_compression_metrics(tokens, self.k)
        self.add_values(values)
        return values

    def add_values(self, values: dict[str, float]) -> None:
        """One sample's metrics, already computed."""
        for key in CH_METRICS:
            self._sums[key] += values[key]
        self.n += 1

    def result(self) -> dict[str, float]:
        return {key: (v / self.n if self.n else float("nan")) for key, v in self._sums.items()}


def pooled_compression_metrics(cov_normalised: Float[np.ndarray, "d d"], k: int = 4
                               ) -> dict[str, float]:
    """Not the paper's: the Compression Hacking spectra of ONE covariance ``ZᵀZ/(L−1)`` pooled
    over all tokens (Z centred by the data's mean, L2-normalised). With Σ + 1e-6·I and
    λ = eig/tr: DE, SE, anisotropy_k and semantic_cv as in ``sample_compression_metrics``, and
    ``de_without_top`` = DE of the spectrum without its top eigenvalue (renormalised), which is
    not the reference's razor either. Kept for comparison with earlier lensbias figures."""
    sigma = np.asarray(cov_normalised, np.float64)
    sigma = sigma + RIDGE * np.eye(len(sigma))
    lam = np.clip(np.linalg.eigvalsh((sigma + sigma.T) / 2), RIDGE * 1e-3, None)[::-1]
    lam = lam / lam.sum()
    de = float(-np.log(lam).sum())
    se = float(-(lam * np.log(lam)).sum())
    kk = min(k, len(lam) // 2) or 1
    aniso = float(np.mean(lam[:kk] / lam[::-1][:kk]))
    rest = lam[1:] / lam[1:].sum() if len(lam) > 1 else lam
    return {"DE": de, "SE": se, "anisotropy_k": aniso,
            "semantic_cv": aniso / de if de != 0 else float("nan"),
            "de_without_top": float(-np.log(rest).sum())}


def normalise_rows(x: Float[np.ndarray, "n d"], mean: Float[np.ndarray, " d"]
                   ) -> Float[np.ndarray, "n d"]:
    """Rows centred by ``mean`` (the data's) and scaled to unit L2 norm (zero rows stay 0)."""
    z = np.asarray(x, np.float64) - mean
    return z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), EPS)


def twonn_dimension(x: Float[np.ndarray, "n d"], max_points: int = 2000, seed: int = 0) -> float:
    """TwoNN intrinsic dimension (Facco et al. 2017): d̂ = N / Σ log(r₂/r₁) on a seeded
    subsample of at most ``max_points`` rows; rows with a duplicate (r₁ = 0) are dropped."""
    x = np.asarray(x, np.float64)
    if len(x) > max_points:
        x = x[np.sort(np.random.default_rng(seed).choice(len(x), max_points, replace=False))]
    if len(x) < 3:
        return float("nan")
    sq = (x * x).sum(1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * x @ x.T, 0.0)
    np.fill_diagonal(d2, np.inf)
    two = np.sqrt(np.partition(d2, 1, axis=1)[:, :2])
    ok = two[:, 0] > EPS
    mu = two[ok, 1] / two[ok, 0]
    logs = np.log(mu).sum()
    return float(ok.sum() / logs) if logs > 0 else float("nan")
