"""Geometry, stage 1: representation-geometry metrics as pure functions on arrays or moments.

Anisotropy (raw and z-scored), rogue-dimension variance share, IsoScore, effective rank,
matrix entropy, the Compression Hacking metrics (per sample, averaged), linear CKA and TwoNN,
plus streaming moments.

Device: every function takes ``device`` (default ``cpu``) and computes in torch there, on
the same code path everywhere (``lensbias.device_math``): rows travel as float32 (float64
arrays stay float64), sums, Gram matrices and eigendecompositions run in float64 (float32
on MPS, which has no float64), and results come back as Python floats or float64 numpy
arrays. Against the float64 numpy implementation this replaced, on CPU (random data with
planted structure at d = 16 to 384, tests/test_device_math.py, and ``compare_geometry`` on
two random decoders at d = 512 and 1024): moments, covariances, anisotropy (raw and
z-scored), IsoScore, effective rank, matrix entropy, CKA and TwoNN agree to 1e-13 relative
or better, the Compression Hacking metrics to 1e-10 (the tests allow 1e-6); the seeded
pair and row draws are numpy's, so they pick the same rows. One deliberate change:
``ch_de_razor`` of a sample whose razored rows are rounding residue (a 2-row sample) is
now exactly d·log d (``_centre_normalise``); before it came out up to 1e-3 off, depending
on rounding.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from jaxtyping import Float

from lensbias import device_math as dm

EPS = 1e-12
RIDGE = 1e-6
"""Ridge added to the normalised-row covariance (Compression Hacking: Σ + 1e-6·I)."""
NOISE = 1e-9
"""A sample's row this close to its mean (relative to its longest row) counts as the mean."""

Device = str | torch.device
Rows = np.ndarray | torch.Tensor


class Moments:
    """Streaming first and second moments of rows, in float64, shifted for stability.

    ``update`` takes ``[b, d]`` batches (numpy, or tensors already on ``device``); ``mean``
    and ``cov`` (ddof 1) equal the in-memory figures of all rows seen. Sums are kept
    relative to the first batch's mean, so a large common offset (rogue dimensions) does not
    cancel catastrophically. The sums live on ``device`` (the d × d update XᵀX is the cost);
    the properties return numpy, the ``*_tensor`` methods the same on the device.
    """

    def __init__(self, d: int, device: Device = "cpu"):
        self.d = d
        self.n = 0
        self.device = dm.resolve(device)
        dtype = dm.accumulation_dtype(self.device)
        self._shift: torch.Tensor | None = None
        self._sum = torch.zeros(d, dtype=dtype, device=self.device)
        self._outer = torch.zeros((d, d), dtype=dtype, device=self.device)

    def update(self, batch: Float[Rows, "rows d"]) -> None:
        self._add(batch)

    def _add(self, batch: Float[Rows, "rows d"]) -> torch.Tensor | None:
        """Adds ``batch``; returns its rows minus the shift on the device (None if empty)."""
        shape = tuple(batch.shape)
        if len(shape) != 2 or shape[1] != self.d:
            raise ValueError(f"expected a [rows, {self.d}] batch, got shape {shape}")
        if not shape[0]:
            return None
        x = dm.to_device(batch, self.device)
        if self._shift is None:
            self._shift = x.mean(0)
        x = x - self._shift
        self.n += len(x)
        self._sum += x.sum(0)
        self._outer.addmm_(x.T, x)
        return x

    def _nan(self, *shape: int) -> torch.Tensor:
        return torch.full(shape, math.nan, dtype=self._sum.dtype, device=self.device)

    def mean_tensor(self) -> Float[torch.Tensor, " d"]:
        if self.n == 0:
            return self._nan(self.d)
        assert self._shift is not None
        return self._shift + self._sum / self.n

    def scatter_tensor(self) -> Float[torch.Tensor, "d d"]:
        if self.n == 0:
            return self._nan(self.d, self.d)
        m = self._sum / self.n
        return self._outer - self.n * torch.outer(m, m)

    def cov_tensor(self) -> Float[torch.Tensor, "d d"]:
        return self.scatter_tensor() / max(self.n - 1, 1)

    @property
    def mean(self) -> Float[np.ndarray, " d"]:
        return dm.to_numpy(self.mean_tensor())

    @property
    def scatter(self) -> Float[np.ndarray, "d d"]:
        """Σ (x − mean)(x − mean)ᵀ over all rows (the centred Gram matrix XcᵀXc)."""
        return dm.to_numpy(self.scatter_tensor())

    @property
    def cov(self) -> Float[np.ndarray, "d d"]:
        """Sample covariance (ddof 1)."""
        return dm.to_numpy(self.cov_tensor())

    @property
    def second_moment(self) -> Float[np.ndarray, "d d"]:
        """Uncentred Σ x xᵀ / (n − 1): ZᵀZ/(L − 1) for already-centred rows Z."""
        s = self._shift if self._shift is not None else torch.zeros_like(self._sum)
        raw = (self._outer + torch.outer(self._sum, s) + torch.outer(s, self._sum)
               + self.n * torch.outer(s, s))
        return dm.to_numpy(raw / max(self.n - 1, 1))


class CrossMoments:
    """Streaming moments of paired rows ``x`` [b, dx] and ``y`` [b, dy] for linear CKA.

    Accumulates XᵀX, YᵀY (as two ``Moments``) and YᵀX with column sums, on ``device``; the
    centred blocks are recovered from the sums, e.g. YcᵀXc = ΣyxᵀΣ − n·ȳx̄ᵀ (shifted for
    stability).
    """

    def __init__(self, dx: int, dy: int, device: Device = "cpu"):
        self.x = Moments(dx, device)
        self.y = Moments(dy, device)
        self._cross = torch.zeros((dy, dx), dtype=self.x._sum.dtype, device=self.x.device)

    @property
    def n(self) -> int:
        return self.x.n

    def update(self, x: Float[Rows, "rows dx"], y: Float[Rows, "rows dy"]) -> None:
        if len(x) != len(y):
            raise ValueError(f"paired batches differ in rows: {len(x)} vs {len(y)}")
        if not len(x):
            return
        xs, ys = self.x._add(x), self.y._add(y)
        assert xs is not None and ys is not None
        self._cross.addmm_(ys.T, xs)

    def cross_scatter_tensor(self) -> Float[torch.Tensor, "dy dx"]:
        return self._cross - torch.outer(self.y._sum, self.x._sum) / max(self.n, 1)

    @property
    def cross_scatter(self) -> Float[np.ndarray, "dy dx"]:
        """YcᵀXc: the centred cross Gram matrix."""
        return dm.to_numpy(self.cross_scatter_tensor())

    def cka(self) -> float:
        return _cka_from_blocks(self.x.scatter_tensor(), self.y.scatter_tensor(),
                                self.cross_scatter_tensor())


def _cka_from_blocks(xx: torch.Tensor, yy: torch.Tensor, yx: torch.Tensor) -> float:
    denom = float(torch.linalg.norm(xx) * torch.linalg.norm(yy))
    if not math.isfinite(denom) or denom <= 0:
        return float("nan")
    return float((yx * yx).sum()) / denom


def linear_cka(x: Float[Rows, "n dx"], y: Float[Rows, "n dy"], device: Device = "cpu"
               ) -> float:
    """Linear CKA ‖YᵀX‖²_F / (‖XᵀX‖_F ‖YᵀY‖_F) on column-centred X, Y (widths may differ)."""
    if len(x) != len(y):
        raise ValueError(f"CKA needs the same rows: {len(x)} vs {len(y)}")
    dev = dm.resolve(device)
    x, y = dm.to_device(x, dev), dm.to_device(y, dev)
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


def anisotropy(x: Float[Rows, "n d"], n_pairs: int = 5000, seed: int = 0,
               device: Device = "cpu") -> float:
    """E[cos(h_u, h_v)] over ``n_pairs`` random pairs of distinct rows (Ethayarajh 2019)."""
    return _mean_pair_cosine(x, n_pairs, seed, dm.resolve(device))


def anisotropy_zscored(x: Float[Rows, "n d"], n_pairs: int = 5000, seed: int = 0,
                       mean: Float[Rows, " d"] | None = None,
                       std: Float[Rows, " d"] | None = None, device: Device = "cpu") -> float:
    """Anisotropy after z-scoring every dimension (Timkey & van Schijndel 2021).

    ``mean``/``std`` default to the rows' own; pass the full data's when ``x`` is a sample.
    Dimensions with zero spread are set to 0.
    """
    dev = dm.resolve(device)
    if mean is None or std is None:
        full = dm.to_device(x, dev)
        mean = full.mean(0) if mean is None else mean
        std = full.std(0, correction=1) if std is None else std
    mean, std = dm.to_device(mean, dev), dm.to_device(std, dev)
    spread = std > EPS
    scale = torch.where(spread, 1.0 / torch.where(spread, std, 1.0), 0.0)
    return _mean_pair_cosine(x, n_pairs, seed, dev, mean, scale)


def _mean_pair_cosine(x: Float[Rows, "n d"], n_pairs: int, seed: int, device: torch.device,
                      mean: torch.Tensor | None = None, scale: torch.Tensor | None = None
                      ) -> float:
    """Mean cosine of the seeded pairs' rows, each z-scored first when ``mean``/``scale``
    (1/std, 0 where a dimension has no spread) are given; only the picked rows are
    widened to the accumulation dtype."""
    u, v = (torch.from_numpy(i).to(device) for i in _pairs(len(x), n_pairs, seed))
    wire = dm.to_device(x, device, widen=False)
    dtype = dm.accumulation_dtype(device)
    a, b = (wire.index_select(0, i).to(dtype) for i in (u, v))
    if mean is not None and scale is not None:
        a, b = (a - mean) * scale, (b - mean) * scale
    norms = torch.linalg.vector_norm(a, dim=1) * torch.linalg.vector_norm(b, dim=1)
    return float(((a * b).sum(1) / torch.clamp(norms, min=EPS)).mean())


def top_dim_variance_share(cov: Float[Rows, "d d"], k: int = 1) -> float:
    """Share of total variance in the ``k`` highest-variance dimensions (rogue dimensions)."""
    diag = cov.diagonal() if isinstance(cov, torch.Tensor) else np.diag(np.asarray(cov))
    return top_variance_share(diag, k)


def top_variance_share(variances: Float[Rows, " d"], k: int = 1) -> float:
    """``top_dim_variance_share`` from the per-dimension variances (a covariance's diagonal)."""
    var = variances.detach().cpu().numpy() if isinstance(variances, torch.Tensor) else variances
    var = np.sort(np.clip(np.asarray(var, np.float64), 0, None))[::-1]
    total = var.sum()
    return float(var[:k].sum() / total) if total > 0 else float("nan")


def _cov_of(points: Rows | None, cov: Rows | None, device: torch.device) -> torch.Tensor:
    if (points is None) == (cov is None):
        raise ValueError("pass exactly one of points or cov")
    if cov is not None:
        return dm.to_device(cov, device)
    x = dm.to_device(points, device)
    x = x - x.mean(0)
    return x.T @ x / (len(x) - 1)


def spectrum(cov: Float[Rows, "d d"], device: Device = "cpu") -> Float[np.ndarray, " d"]:
    """Eigenvalues of a symmetric matrix, descending, as magnitudes (= its singular values);
    decomposed on ``device`` in float64 (``torch.linalg.eigvalsh``)."""
    values = dm.eigvalsh(dm.to_device(cov, dm.resolve(device)))
    return dm.to_numpy(torch.sort(torch.abs(values), descending=True).values)


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


def isoscore(points: Float[Rows, "n d"] | None = None, *,
             cov: Float[Rows, "d d"] | None = None, device: Device = "cpu") -> float:
    """IsoScore (Rudman et al. 2022) of a point cloud ``[samples, dim]`` or its covariance:
    1 for isotropic data, 0 for data along one direction."""
    dev = dm.resolve(device)
    return isoscore_from_variances(spectrum(_cov_of(points, cov, dev), dev))


def effective_rank(points: Float[Rows, "n d"] | None = None, *,
                   cov: Float[Rows, "d d"] | None = None, device: Device = "cpu") -> float:
    """exp(−Σ p_k log p_k), p_k = σ_k/Σσ over singular values σ of the centred matrix
    (Roy & Vetterli 2007); from a covariance σ_k ∝ √λ_k."""
    dev = dm.resolve(device)
    if points is not None and cov is None:
        x = dm.to_device(points, dev)
        sigma = dm.to_numpy(torch.linalg.svdvals(x - x.mean(0)))
        return float(np.exp(_entropy(sigma)))
    return effective_rank_from_spectrum(spectrum(_cov_of(points, cov, dev), dev))


def effective_rank_from_spectrum(eigenvalues: Float[np.ndarray, " d"]) -> float:
    """``effective_rank`` of a covariance with these eigenvalues (σ_k ∝ √λ_k)."""
    return float(np.exp(_entropy(np.sqrt(np.asarray(eigenvalues, np.float64)))))


def _entropy(weights: np.ndarray) -> float:
    total = weights.sum()
    if total <= 0:
        return float("nan")
    p = weights[weights > 0] / total
    return float(-(p * np.log(p)).sum())


def matrix_entropy(cov: Float[Rows, "d d"], device: Device = "cpu") -> float:
    """−Σ λ̂ log λ̂ (nats) over the eigenvalues of ``cov`` normalised to trace 1."""
    return matrix_entropy_from_spectrum(spectrum(cov, device))


def matrix_entropy_from_spectrum(eigenvalues: Float[np.ndarray, " d"]) -> float:
    """``matrix_entropy`` of a matrix with these eigenvalue magnitudes."""
    return _entropy(np.asarray(eigenvalues, np.float64))


CH_METRICS = ("ch_de", "ch_se", "ch_anisotropy_k", "ch_semantic_cv", "ch_de_razor", "ch_de_pcs")
"""Compression Hacking metrics of one sample (``sample_compression_metrics``), in report order."""


def _normalised_spectrum(z: Float[torch.Tensor, "samples rows d"],
                         lengths: Float[torch.Tensor, " samples"], with_top: bool = False
                         ) -> tuple[Float[torch.Tensor, "samples d"], torch.Tensor | None]:
    """Per sample, λ = eig(ZᵀZ/(L−1) + 1e-6·I) / trace, all d of them, descending, for rows Z
    (zero-padded to a common row count; ``lengths`` holds each sample's L); with
    ``with_top`` also Z's top right-singular vector ``[samples, d]`` (ZᵀZ's top eigenvector).

    With fewer rows than dimensions the nonzero eigenvalues of ZᵀZ are those of ZZᵀ (rows ×
    rows; padded rows add zeros), the rest 0; the ridge is added to all d, as the reference
    does on the d × d matrix."""
    _, rows, d = z.shape
    gram = z @ z.transpose(1, 2) if rows < d else z.transpose(1, 2) @ z
    if with_top:
        eig, vecs = dm.eigh(gram)
        top = vecs[..., -1]
        if rows < d:
            top = (z.transpose(1, 2) @ top[..., None])[..., 0]
        top = top / torch.clamp(torch.linalg.vector_norm(top, dim=1, keepdim=True), min=EPS)
    else:
        eig, top = dm.eigvalsh(gram), None
    eig = torch.clamp(eig, min=0.0)
    eig = torch.cat([eig, eig.new_zeros(len(eig), d - eig.shape[1])], dim=1)
    eig = eig / torch.clamp(lengths - 1, min=1)[:, None] + RIDGE
    return torch.sort(eig, dim=1, descending=True).values / eig.sum(1, keepdim=True), top


def _centre_normalise(x: Float[torch.Tensor, "samples rows d"],
                      mask: Float[torch.Tensor, "samples rows 1"],
                      lengths: Float[torch.Tensor, " samples"], scale: float | None = None
                      ) -> Float[torch.Tensor, "samples rows d"]:
    """The reference's ``normalize`` per sample: centre by the sample's own mean (over its
    real rows; padded rows of ``x`` are 0), rows to unit L2 norm; padded rows come out 0.
    A row at the mean stays 0 (the reference would divide 0 by 0), and so does one within
    ``NOISE × scale`` of it (``scale``: the rows' length before, 1 for the razor's unit
    rows; default: the sample's longest centred row): that is rounding (the razor's residue
    of a row along the removed direction, e.g. both rows of a 2-row sample), which scaled
    to unit length would make ``ch_de_razor`` depend on the BLAS (up to 1e-3 relative,
    before)."""
    z = x - x.sum(1, keepdim=True) / lengths[:, None, None]
    norm = torch.linalg.vector_norm(z, dim=2, keepdim=True) * mask
    real = norm > NOISE * (norm.amax(dim=1, keepdim=True) if scale is None else scale)
    return z * (real / torch.clamp(norm, min=EPS))


def sample_compression_metrics(tokens: Float[Rows, "rows d"], k: int = 4,
                               device: Device = "cpu") -> dict[str, float]:
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
    return compression_metrics_batch([tokens], k, device)[0]


def compression_metrics_batch(samples: Sequence[Float[Rows, "rows d"]], k: int = 4,
                              device: Device = "cpu", chunk_values: int | None = None
                              ) -> list[dict[str, float]]:
    """``sample_compression_metrics`` of many samples of one width on ``device``, decomposed
    in batches (zero-padded to the longest in the batch) of about ``chunk_values`` numbers
    each: one call per batch instead of one per sample. The eigenvalues are float64; a
    batch whose longest sample has L ≥ d rows uses the d × d Gram matrices, else the rows
    × rows ones (the same nonzero spectrum). ``chunk_values`` defaults to 2¹⁸ on the CPU
    (cache-sized: on 2 cores larger batches were up to 2× slower) and 2²⁴ elsewhere (fewer,
    larger kernels; not measured, no GPU was at hand)."""
    shapes = [tuple(s.shape) for s in samples]
    if any(len(shape) != 2 or shape[0] < 2 or shape[1] != shapes[0][1] for shape in shapes):
        raise ValueError(f"a sample needs a [rows >= 2, d] token matrix of one width d, got "
                         f"shapes {sorted(set(shapes))}")
    dev = dm.resolve(device)
    if chunk_values is None:
        chunk_values = 1 << 18 if dev.type == "cpu" else 1 << 24
    out: list[dict[str, float]] = []
    start = 0
    while start < len(samples):
        stop, longest = start + 1, shapes[start][0]
        while stop < len(samples) and (stop + 1 - start) * max(longest, shapes[stop][0]) \
                * shapes[0][1] <= chunk_values:
            longest = max(longest, shapes[stop][0])
            stop += 1
        out.extend(_compression_batch(samples[start:stop], k, dev))
        start = stop
    return out


def _compression_batch(samples: Sequence[Float[Rows, "rows d"]], k: int,
                       device: torch.device) -> list[dict[str, float]]:
    sizes = [len(s) for s in samples]
    flat = dm.to_device(samples[0] if len(samples) == 1 else _concat(samples), device)
    lengths = torch.tensor(sizes, dtype=flat.dtype, device=device)
    which = torch.repeat_interleave(torch.arange(len(sizes), device=device),
                                    torch.tensor(sizes, device=device))
    starts = torch.tensor(np.cumsum([0] + sizes[:-1]), device=device)
    x = flat.new_zeros((len(sizes), max(sizes), flat.shape[1]))
    x[which, torch.arange(len(flat), device=device) - starts[which]] = flat
    mask = (torch.arange(max(sizes), device=device)[None] < lengths[:, None]
            ).to(flat.dtype)[..., None]
    z = _centre_normalise(x, mask, lengths)
    lam, top = _normalised_spectrum(z, lengths, with_top=True)
    assert top is not None
    d = lam.shape[1]
    de = -torch.log(lam).sum(1)
    kk = max(1, min(k, d // 2))
    aniso = (lam[:, :kk] / lam.flip(1)[:, :kk]).mean(1)
    removed = torch.baddbmm(z, z @ top[..., None], top[:, None, :], alpha=-1.0)
    razored, _ = _normalised_spectrum(_centre_normalise(removed, mask, lengths, 1.0), lengths)
    columns = {"ch_de": de, "ch_se": -(lam * torch.log(lam)).sum(1), "ch_anisotropy_k": aniso,
               "ch_de_razor": -torch.log(razored).sum(1), "ch_de_pcs": -d * torch.log(lam[:, 0])}
    values = {key: dm.to_numpy(v).tolist() for key, v in columns.items()}
    out = []
    for i in range(len(sizes)):
        row = {key: values[key][i] for key in columns}
        row["ch_semantic_cv"] = (row["ch_anisotropy_k"] / row["ch_de"] if row["ch_de"] != 0
                                 else float("nan"))
        out.append({key: row[key] for key in CH_METRICS})
    return out


def _concat(samples: Sequence[Rows]) -> Rows:
    if all(isinstance(s, torch.Tensor) for s in samples):
        return torch.cat(list(samples))
    return np.concatenate([s.detach().cpu().numpy() if isinstance(s, torch.Tensor) else s
                           for s in samples])


class SampleMeans:
    """Compression Hacking metrics averaged over samples, as the reference's ``compute_metrics``
    averages its per-sample list (the ratio semantic CV is averaged, not recomputed)."""

    def __init__(self, k: int = 4, device: Device = "cpu"):
        self.k = k
        self.device = device
        self.n = 0
        self._sums = dict.fromkeys(CH_METRICS, 0.0)

    def add(self, tokens: Float[Rows, "rows d"]) -> dict[str, float] | None:
        """One sample's token matrix (its metrics are returned); fewer than 2 rows: skipped."""
        if len(tokens) < 2:
            return None
        values = sample_compression_metrics(tokens, self.k, self.device)
        self.add_values(values)
        return values

    def add_values(self, values: dict[str, float]) -> None:
        """One sample's metrics, already computed."""
        for key in CH_METRICS:
            self._sums[key] += values[key]
        self.n += 1

    def result(self) -> dict[str, float]:
        return {key: (v / self.n if self.n else float("nan")) for key, v in self._sums.items()}


def pooled_compression_metrics(cov_normalised: Float[Rows, "d d"], k: int = 4,
                               device: Device = "cpu") -> dict[str, float]:
    """Not the paper's: the Compression Hacking spectra of ONE covariance ``ZᵀZ/(L−1)`` pooled
    over all tokens (Z centred by the data's mean, L2-normalised). With Σ + 1e-6·I and
    λ = eig/tr: DE, SE, anisotropy_k and semantic_cv as in ``sample_compression_metrics``, and
    ``de_without_top`` = DE of the spectrum without its top eigenvalue (renormalised), which is
    not the reference's razor either. Kept for comparison with earlier lensbias figures."""
    sigma = dm.to_device(cov_normalised, dm.resolve(device))
    sigma = sigma + RIDGE * torch.eye(len(sigma), dtype=sigma.dtype, device=sigma.device)
    lam = np.clip(dm.to_numpy(dm.eigvalsh(sigma)), RIDGE * 1e-3, None)[::-1]
    lam = lam / lam.sum()
    de = float(-np.log(lam).sum())
    se = float(-(lam * np.log(lam)).sum())
    kk = min(k, len(lam) // 2) or 1
    aniso = float(np.mean(lam[:kk] / lam[::-1][:kk]))
    rest = lam[1:] / lam[1:].sum() if len(lam) > 1 else lam
    return {"DE": de, "SE": se, "anisotropy_k": aniso,
            "semantic_cv": aniso / de if de != 0 else float("nan"),
            "de_without_top": float(-np.log(rest).sum())}


def twonn_dimension(x: Float[Rows, "n d"], max_points: int = 2000, seed: int = 0,
                    device: Device = "cpu") -> float:
    """TwoNN intrinsic dimension (Facco et al. 2017): d̂ = N / Σ log(r₂/r₁) on a seeded
    subsample of at most ``max_points`` rows; rows with a duplicate (r₁ = 0) are dropped."""
    if len(x) > max_points:
        x = x[np.sort(np.random.default_rng(seed).choice(len(x), max_points, replace=False))]
    if len(x) < 3:
        return float("nan")
    x = dm.to_device(x, dm.resolve(device))
    sq = (x * x).sum(1)
    d2 = torch.clamp(sq[:, None] + sq[None, :] - 2 * x @ x.T, min=0.0)
    d2.fill_diagonal_(math.inf)
    two = torch.sqrt(torch.topk(d2, 2, dim=1, largest=False).values)
    ok = two[:, 0] > EPS
    logs = float(torch.log(two[ok, 1] / two[ok, 0]).sum())
    return float(int(ok.sum()) / logs) if logs > 0 else float("nan")
