"""Sweeps, part 3b: the inversion study's statistics (issue 14). Plain functions over rows.

The question: does calibrating on a domain protect that domain's concepts? Per model, hook,
concept kind, reading and method × level, the interaction

    I = [S(code | code calib) − S(code | prose calib)] − [S(prose | code calib) − S(prose | prose calib)]

where ``S(d | c)`` is a **ratio of sums** over the rows of concept domain d calibrated on a
corpus of domain c: Σ (x − baseline) / Σ (acc_A − baseline), with x the reading's accuracy on
B (``retrained`` for information, ``transfer`` for readout, ``aligned_transfer`` for the
aligned readout). That is the same aggregate survival v2 reports per diff
(``probes.report.aggregate_readings``); per-row ratios are not averaged, because a concept
that beats its floor by 0.02 turns test noise of ±0.01 into a ratio of ±0.5.

Rows enter when their calibration corpus has a domain (code or prose; ``mixed`` and user
files do not), their concept domain is code or prose, their concept's kind is the one
analysed and they are not under-powered. The kind is decided on A alone, across seeds
(``study_kinds``): ``contextual`` when the t interval over seeds of A's gain over its
floors lies above zero (token-identity rows are measured against majority).

Three intervals, each resampling what varies:

- ``seed_t``: the interaction computed within each seed, then a t interval over seeds
  (n − 1 degrees of freedom).
- ``bootstrap``: a cluster bootstrap. Each resample draws seeds; within each calibration
  domain, calibration corpora; within each concept domain, concept groups
  (``concepts.groups``) and then concepts within each drawn group; and, per drawn seed,
  one of the diff's own bootstrap resamples of the test documents (the rows' exported
  replicates: replicate i is the same document resample in every cell of a seed). A seed,
  group or corpus drawn k times counts k times; its document resample is drawn once per
  resample. The resample count is doubled (from ``n_boot``, up to ``max_boot``; several
  doublings at once where the 1/√B law says they are needed) until each bound moves by
  less than ``tolerance`` across ``n_rng`` bootstrap RNG seeds; the spread reached is
  reported either way.
- ``mixed``: a linear mixed model (statsmodels ``MixedLM``, REML) of each row's own reading
  (x − baseline) / (acc_A − baseline): each concept weighs the same here, where the ratio
  of sums weighs concepts by their gain, so the model is also the alternative weighting.
  Fixed effects calib_is_code × concept_is_code (the interaction coefficient is I for
  that weighting); crossed random effects for seed, concept, calibration corpus, cell
  (corpus × seed), each concept's sensitivity to the calibration domain and each corpus's
  effect on each concept domain. Fitted by L-BFGS, Powell and Nelder–Mead; the fit at the
  highest REML log-likelihood is kept (``reml_optimum``). Wald interval and p; Holm's
  correction across the method × level rows of one (model, hook, kind, reading). A row
  near its floor has a noisy ratio, which widens this interval rather than biasing it.
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import numpy as np
from jaxtyping import Float, Int

from lensbias.concepts.groups import concept_group

DOMAINS = ("code", "prose")
READINGS = {"information": "retrained", "readout": "transfer",
            "aligned_readout": "aligned_transfer"}
"""Reading → the accuracy on B it is built from."""
KINDS = ("contextual", "token identity")
CONFIDENCE = 0.95
TOLERANCE = 0.01
"""Largest allowed move of an interval bound across bootstrap RNG seeds."""


def _num(x: Any) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return math.nan
    return float(x)


def row_calib_domain(row: dict[str, Any]) -> str | None:
    """The calibration corpus's domain (``calib_domain`` field; else the calib itself when it
    is ``code`` or ``prose``)."""
    dom = row.get("calib_domain")
    if dom is None and row.get("calib") in DOMAINS:
        dom = row["calib"]
    return dom if dom in DOMAINS else None


def method_label(row: dict[str, Any]) -> str:
    """The method's name, with its module groups when not the default: ``magnitude@attn``."""
    targets = row.get("targets")
    return row["method"] if targets in (None, "attn+mlp") else f"{row['method']}@{targets}"


def data_free(method: str) -> bool:
    """True for a method that reads no calibration data (``needs_inputs`` false: magnitude
    in every variant, rtn); its calibration corpus is a label of the cell, not an input.
    ``@targets`` (``method_label``) is stripped; an unknown method is not data-free."""
    from lensbias.compress.base import METHODS

    known = METHODS.get(method.split("@", 1)[0])
    return known is not None and not known.needs_inputs


def t_interval(values: np.ndarray, confidence: float = CONFIDENCE
               ) -> tuple[float, list[float], float, int]:
    """Mean, t interval (n − 1 degrees of freedom), standard error and n of ``values``
    (at least two)."""
    from scipy import stats

    n = len(values)
    se = float(np.std(values, ddof=1)) / math.sqrt(n)
    q = float(stats.t.ppf(0.5 + confidence / 2, n - 1))
    mean = float(np.mean(values))
    return mean, [mean - q * se, mean + q * se], se, n


class Design:
    """The entering rows of one (model, hook, kind, method, level) as arrays."""

    def __init__(self, rows: list[dict[str, Any]], reading: str):
        key = READINGS[reading]
        self.rows = rows
        self.seeds = sorted({r["seed"] for r in rows}, key=str)
        self.corpora = sorted({str(r["calib"]) for r in rows})
        self.concepts = sorted({str(r["concept"]) for r in rows})
        self.groups = sorted({concept_group(c) for c in self.concepts})
        ix = {s: i for i, s in enumerate(self.seeds)}
        self.s = np.array([ix[r["seed"]] for r in rows])
        self.k = np.array([self.corpora.index(str(r["calib"])) for r in rows])
        self.j = np.array([self.concepts.index(str(r["concept"])) for r in rows])
        self.g = np.array([self.groups.index(concept_group(str(r["concept"]))) for r in rows])
        self.cal = np.array([DOMAINS.index(row_calib_domain(r)) for r in rows])
        self.dom = np.array([DOMAINS.index(r["concept_domain"]) for r in rows])
        base = np.array([_num(r.get("baseline")) for r in rows])
        self.num = np.array([_num(r.get(key)) for r in rows]) - base
        self.den = np.array([_num(r.get("acc_a")) for r in rows]) - base
        self.corpus_domain = np.zeros(len(self.corpora), int)
        self.corpus_domain[self.k] = self.cal
        self.concept_domain = np.zeros(len(self.concepts), int)
        self.concept_domain[self.j] = self.dom
        self.group_domain = np.zeros(len(self.groups), int)
        self.group_domain[self.g] = self.dom
        self.concept_group = np.zeros(len(self.concepts), int)
        self.concept_group[self.j] = self.g
        # document replicates: [rows, R]; a row without them repeats its point value
        n_rep = max((len((r.get("replicates") or {}).get("acc_a") or ()) for r in rows),
                    default=0)
        self.n_rep = max(n_rep, 1)
        self.rep_num = np.repeat(self.num[:, None], self.n_rep, axis=1)
        self.rep_den = np.repeat(self.den[:, None], self.n_rep, axis=1)
        for i, r in enumerate(rows):
            rep = r.get("replicates") or {}
            if not n_rep or not all(len(rep.get(f) or ()) == n_rep
                                    for f in ("acc_a", "baseline", key)):
                continue
            b = np.array([_num(v) for v in rep["baseline"]])
            x = np.array([_num(v) for v in rep[key]]) - b
            a = np.array([_num(v) for v in rep["acc_a"]]) - b
            ok = np.isfinite(x) & np.isfinite(a)
            self.rep_num[i, ok], self.rep_den[i, ok] = x[ok], a[ok]
        # what every bootstrap block reuses: who is resampled within what, the rows' cells
        # (code|code, code|prose, prose|code, prose|prose) and the replicates in float32
        self.members = {
            "seed": [np.arange(len(self.seeds))],
            "corpus": [np.flatnonzero(self.corpus_domain == c) for c in range(2)],
            "group": [np.flatnonzero(self.group_domain == d) for d in range(2)],
            "concept": [np.flatnonzero(self.concept_group == g) for g in range(len(self.groups))]}
        self.onehot = np.zeros((4, len(rows)), np.float32)
        self.onehot[self.dom * 2 + self.cal, np.arange(len(rows))] = 1
        self.rep_offset = (np.arange(len(rows), dtype=np.int32) * self.n_rep)[:, None]
        self.rep_num32 = self.rep_num.astype(np.float32).ravel()
        self.rep_den32 = self.rep_den.astype(np.float32).ravel()

    def cells(self, weights: np.ndarray, num: np.ndarray, den: np.ndarray) -> dict[str, Any]:
        """S(d|c) for weights ``[B, rows]`` and values ``[B, rows]`` (or ``[rows]``)."""
        out = {}
        for d in range(2):
            for c in range(2):
                m = (self.dom == d) & (self.cal == c)
                with np.errstate(invalid="ignore", divide="ignore"):
                    out[f"{DOMAINS[d]}|{DOMAINS[c]}"] = ((weights[..., m] * num[..., m]).sum(-1)
                                                         / (weights[..., m] * den[..., m]).sum(-1))
        return out

    def point(self, mask: np.ndarray | None = None) -> tuple[float, dict[str, float]]:
        w = np.ones(len(self.rows)) if mask is None else mask.astype(float)
        means = {k: float(v) for k, v in self.cells(w, self.num, self.den).items()}
        return float(contrast(means)), means


CELLS = ("code|code", "code|prose", "prose|code", "prose|prose")
"""The four S(concept domain | calibration domain), in ``Design.onehot``'s row order."""


def contrast(m: dict[str, Any]) -> Any:
    """I = [S(code|code) − S(code|prose)] − [S(prose|code) − S(prose|prose)]."""
    return (m["code|code"] - m["code|prose"]) - (m["prose|code"] - m["prose|prose"])


def complete(design: Design) -> bool:
    """All four (concept domain, calibration domain) combinations have rows."""
    return all(((design.dom == d) & (design.cal == c)).any() for d in range(2) for c in range(2))


def seed_t(design: Design, confidence: float = CONFIDENCE) -> dict[str, Any]:
    """The interaction per seed and a t interval over seeds."""
    from scipy import stats

    per = []
    for i, seed in enumerate(design.seeds):
        m = design.s == i
        if all(((design.dom == d) & (design.cal == c) & m).any()
               for d in range(2) for c in range(2)):
            value, _ = design.point(m)
            if math.isfinite(value):
                per.append((seed, value))
    values = np.array([v for _, v in per])
    out: dict[str, Any] = {"n": len(values), "per_seed": {str(s): v for s, v in per},
                           "mean": float(values.mean()) if len(values) else None,
                           "ci": None, "p": None}
    if len(values) >= 2:
        _, out["ci"], se, n = t_interval(values, confidence)
        out["sd"] = se * math.sqrt(n)
        out["p"] = (float(2 * stats.t.sf(abs(out["mean"]) / se, len(values) - 1))
                    if se > 0 else (0.0 if out["mean"] != 0 else 1.0))
    return out


def resample_counts(rng: np.random.Generator, members: list[np.ndarray], size: int, n: int
            ) -> Float[np.ndarray, "size n"]:
    """``[size, n]`` draw counts: each member list (indices into size) resampled within
    itself, ``n`` times (``bincount`` over offset draws: ``np.add.at`` cost more than the
    rest of a resample)."""
    counts = np.zeros((size, n), np.float32)  # small integers: exact
    for idx in members:
        m = len(idx)
        if m:
            draw = rng.integers(0, m, (n, m)) + m * np.arange(n)[:, None]
            counts[idx] = np.bincount(draw.ravel(), minlength=n * m).reshape(n, m).T
    return counts


def draw_resamples(design: Design, rng: np.random.Generator, n: int
                   ) -> tuple[Float[np.ndarray, "rows n"], Int[np.ndarray, "rows n"]]:
    """``n`` cluster resamples: each row's weight (how often its seed, corpus, group and
    concept were drawn, multiplied) and the document replicate drawn for its seed."""
    m = design.members
    ws = resample_counts(rng, m["seed"], len(design.seeds), n)
    wk = resample_counts(rng, m["corpus"], len(design.corpora), n)
    wg = resample_counts(rng, m["group"], len(design.groups), n)
    wj = resample_counts(rng, m["concept"], len(design.concepts), n) * wg[design.concept_group]
    doc = rng.integers(0, design.n_rep, (len(design.seeds), n), dtype=np.int32)
    return ws[design.s] * wk[design.k] * wj[design.j], doc[design.s]


def resampled_interaction(design: Design, weights: Float[np.ndarray, "rows n"],
                          doc: Int[np.ndarray, "rows n"]) -> Float[np.ndarray, "n"]:
    """The interaction of each resample: ``Design.cells`` on the drawn replicates, as one
    ``[4, rows] @ [rows, n]`` product per sum (rows on the first axis: gathering columns
    of a ``[n, rows]`` array was half of a resample's time)."""
    at = design.rep_offset + doc
    num = (design.onehot @ (weights * design.rep_num32[at])).astype(float)
    den = (design.onehot @ (weights * design.rep_den32[at])).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return contrast(dict(zip(CELLS, num / den)))


def bootstrap_replicates(design: Design, n_boot: int, rng_seed: int,
                         block: int = 4096) -> Float[np.ndarray, "n_boot"]:
    """``[n_boot]`` cluster-bootstrap replicates of the interaction (NaN: undefined)."""
    rng = np.random.default_rng([rng_seed, 14])
    out = np.empty(n_boot)
    for start in range(0, n_boot, block):
        n = min(block, n_boot - start)
        out[start:start + n] = resampled_interaction(design, *draw_resamples(design, rng, n))
    return out


MAX_BOOT = 8_192_000
"""Default cap on the resample count per RNG seed (2,000 doubled twelve times). About 1.8
µs of wall clock per resample of 240 rows with the RNG seeds in two threads on 2 cores
(2.8–3.8 µs in one; 5.3–6.8 µs before the resamples were vectorised;
``benchmarks/bench_study_stats.py``): a design that needs the cap spends about 2.5 min on
its 10 RNG seeds there."""


def _bounds(replicates: Callable[[int, int], np.ndarray], n_boot: int, rng_seed: int,
            alpha: float) -> list[float]:
    reps = replicates(n_boot, rng_seed)
    reps = reps[np.isfinite(reps)]
    return ([float(np.quantile(reps, alpha)), float(np.quantile(reps, 1 - alpha))]
            if len(reps) else [math.nan, math.nan])


def next_count(n_boot: int, spread: float, tolerance: float, max_boot: int) -> int:
    """The next resample count: ``n_boot`` doubled as often as the 1/√B law of Monte Carlo
    error says the spread needs to fall below ``tolerance`` (with a 20% margin, at least
    once), but never past ``max_boot``; ``n_boot`` itself when it cannot double."""
    want = 1.2 * (spread / tolerance) ** 2
    doublings = max(1, math.ceil(math.log2(want))) if want > 1 else 1
    while doublings and n_boot * 2 ** doublings > max_boot:
        doublings -= 1
    return n_boot * 2 ** doublings


def stable_bootstrap(design: Design, n_boot: int = 2000, max_boot: int = MAX_BOOT,
                     n_rng: int = 10, tolerance: float = TOLERANCE,
                     confidence: float = CONFIDENCE, workers: int | None = None
                     ) -> dict[str, Any]:
    """The cluster bootstrap's percentile interval, stable across RNG seeds
    (``stable_interval`` over ``bootstrap_replicates``)."""
    return stable_interval(lambda n, r: bootstrap_replicates(design, n, r), n_boot, max_boot,
                           n_rng, tolerance, confidence, workers)


def stable_interval(replicates: Callable[[int, int], np.ndarray], n_boot: int = 2000,
                    max_boot: int = MAX_BOOT, n_rng: int = 10, tolerance: float = TOLERANCE,
                    confidence: float = CONFIDENCE, workers: int | None = None
                    ) -> dict[str, Any]:
    """Percentile interval of ``replicates(n, rng_seed)`` (``n`` bootstrap replicates drawn
    with that RNG seed; NaN: undefined), with the resample count raised until each bound
    moves by less than ``tolerance`` across ``n_rng`` RNG seeds.

    The count starts at ``n_boot`` and is doubled, as many times at once as the spread
    reached predicts (``next_count``), up to ``max_boot``. The RNG seeds run in ``workers``
    threads (default: the cores; numpy's BLAS held to one thread meanwhile). ``ci`` is RNG
    seed 0's interval; ``envelope`` the widest over the RNG seeds (lowest lower bound,
    highest upper bound); ``read`` the one to read: ``ci`` when stable, else the envelope
    (the cap stopped the doubling first). ``bound_spread``: how far each bound moved;
    ``counts``: every resample count tried."""
    from concurrent.futures import ThreadPoolExecutor

    from threadpoolctl import threadpool_limits

    from lensbias.threads import cpu_cores

    alpha = (1 - confidence) / 2
    counts = []
    with ThreadPoolExecutor(max(1, min(n_rng, workers or cpu_cores()))) as pool, \
            threadpool_limits(1):
        while True:
            counts.append(n_boot)
            bounds = list(pool.map(lambda r: _bounds(replicates, n_boot, r, alpha),
                                   range(n_rng)))
            b = np.array(bounds)
            spread = float(np.max(b.max(axis=0) - b.min(axis=0))) if np.isfinite(b).all() \
                else math.nan
            if not math.isfinite(spread) or spread < tolerance:
                break
            step = next_count(n_boot, spread, tolerance, max_boot)
            if step == n_boot:
                break
            n_boot = step
    ok = bool(np.isfinite(b).all())
    stable = bool(math.isfinite(spread) and spread < tolerance)
    envelope = [float(b[:, 0].min()), float(b[:, 1].max())] if ok else None
    return {"ci": bounds[0] if ok else None, "n_boot": n_boot, "envelope": envelope,
            "read": (bounds[0] if stable else envelope) if ok else None,
            "bound_spread": [float(np.ptp(b[:, 0])), float(np.ptp(b[:, 1]))] if ok else None,
            "n_rng": n_rng, "rng_spread": spread if math.isfinite(spread) else None,
            "stable": stable, "tolerance": tolerance, "counts": counts}


VARIANCE_COMPONENTS = {"seed": "0 + C(seed)", "concept": "0 + C(concept)",
                       "corpus": "0 + C(corpus)", "cell": "0 + C(cell)",
                       "concept_x_calib": "0 + C(concept):xc",
                       "corpus_x_domain": "0 + C(corpus):xd"}


def mixed_model(design: Design, confidence: float = CONFIDENCE) -> dict[str, Any]:
    """MixedLM of the kept gain with crossed random effects; the interaction coefficient."""
    try:
        import pandas as pd
        import statsmodels.formula.api as smf
    except ImportError:
        return {"error": "statsmodels is not installed (pip install 'lensbias[study]')"}
    frame = pd.DataFrame({
        "y": design.num / design.den,
        "xc": (design.cal == 0).astype(float), "xd": (design.dom == 0).astype(float),
        "seed": design.s.astype(str), "concept": design.j.astype(str),
        "corpus": design.k.astype(str),
        "cell": [f"{k}:{s}" for k, s in zip(design.k, design.s)], "one": 1})
    vc = {name: f for name, f in VARIANCE_COMPONENTS.items()
          if not (name == "seed" and len(design.seeds) < 2)}
    try:
        model = smf.mixedlm("y ~ xc * xd", frame, groups="one", vc_formula=vc, re_formula="0")
    except Exception as err:  # too few levels: reported, not raised
        return {"error": f"{type(err).__name__}: {err}"}
    fit, best, tried, caught = reml_optimum(model)
    if fit is None:
        return {"error": tried.get("error", "no optimizer reached a finite likelihood")}
    est = float(fit.fe_params["xc:xd"])
    names = list(vc)
    out = {"estimate": est, "converged": bool(fit.converged), "optimizer": best,
           "llf": float(fit.llf), "llf_by_optimizer": {k: v for k, v in tried.items()
                                                       if k != "error"},
           "warnings": sorted({str(w.message).split(".")[0] for w in caught})[:4],
           "variance": {n: float(v) for n, v in zip(names, np.atleast_1d(fit.vcomp))},
           "residual_variance": float(fit.scale), "n_rows": int(len(frame))}
    se = float(fit.bse_fe["xc:xd"])
    if not math.isfinite(se):  # a lower point's finite SE would be an arbitrary one
        return {**out, "error": "Hessian not positive definite at the REML optimum: "
                                f"estimate {est:+.3f}, no Wald interval"}
    from scipy import stats

    z = float(stats.norm.ppf(0.5 + confidence / 2))
    p = float(2 * stats.norm.sf(abs(est) / se)) if se > 0 else None
    return {**out, "se": se, "ci": [est - z * se, est + z * se], "p": p}


OPTIMIZERS = ("lbfgs", "powell", "nm")
"""MixedLM optimizers tried from statsmodels' default start."""
RESTARTS = 4
"""Most L-BFGS restarts from the best point (they stop once one gains < 1e-6)."""


def reml_optimum(model: Any) -> tuple[Any, str | None, dict[str, Any], list[Any]]:
    """The fit of ``model`` (a statsmodels MixedLM) at the highest REML log-likelihood
    reached by ``OPTIMIZERS`` from statsmodels' default start, then polished by up to
    ``RESTARTS`` L-BFGS restarts from the best point so far.

    With variance components on the boundary the likelihood surface is flat in places and
    one optimizer's stopping point can be far from the optimum: on MiniLM's Wanda 50%
    readout, L-BFGS stopped at log-likelihood 168.05 (interval half-width 0.126) and Powell
    reached 178.36 (half-width 0.084), which L-BFGS, Powell and Nelder–Mead restarted from
    there all confirm.
    Which point statsmodels' default path ends on also changed with the scipy version.
    Where the Hessian at the optimum is not positive definite the standard error is not
    finite; the caller then reports the estimate without an interval rather than the SE of
    a lower point (near such an optimum those swing by 2× between nearby points). Returns
    ``(fit, path, {optimizer: llf from the default start}, warnings)``; ``fit`` is None
    when every optimizer failed (``{"error": ...}`` says why)."""
    tried: dict[str, Any] = {}

    def attempt(method: str, start: Any = None) -> Any:
        try:
            f = model.fit(reml=True, method=method, start_params=start)
        except Exception as err:  # singular on this optimizer's path: the others go on
            tried.setdefault("error", f"{type(err).__name__}: {err}")
            return None
        return f if math.isfinite(f.llf) else None

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fits = {m: f for m in OPTIMIZERS if (f := attempt(m)) is not None}
        tried.update({m: float(f.llf) for m, f in fits.items()})
        if not fits:
            return None, None, tried, list(caught)
        path = max(fits, key=lambda m: fits[m].llf)
        best = fits[path]
        for _ in range(RESTARTS):
            f = attempt("lbfgs", best.params_object)
            if f is None or f.llf <= best.llf + 1e-6:
                break
            best, path = f, f"{path}>lbfgs"
    return best, path, tried, list(caught)


def holm(pvalues: list[float | None]) -> list[float | None]:
    """Holm's step-down adjusted p-values (None stays None; monotone, capped at 1)."""
    idx = [i for i, p in enumerate(pvalues) if p is not None and math.isfinite(p)]
    order = sorted(idx, key=lambda i: pvalues[i])
    out: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * float(pvalues[i])))
        out[i] = running
    return out


def study_kinds(rows: list[dict[str, Any]], confidence: float = CONFIDENCE
                ) -> dict[tuple[str, str, str], dict[str, Any]]:
    """Each (model, hook, concept)'s kind for the study, decided on A alone across seeds.

    A's side of a row (its accuracy and floors) is the same in every cell of a seed, and
    each seed draws another split of the documents. Within one seed the gain's bootstrap
    over a few test documents is wide (on MiniLM, identifier_role beats its floors by
    +0.17 to +0.21 in every seed, yet one seed's interval reaches 0), so with two or more
    seeds the study calls a concept **contextual** when the t interval over seeds of its
    context gain (acc_A − floor) lies above 0, else token identity; with one seed, the
    row's own kind. Returns ``{(model, hook, concept): {kind, gains: {seed: gain},
    ci}}``."""
    gains: dict[tuple[str, str, str], dict[Any, float]] = defaultdict(dict)
    own: dict[tuple[str, str, str], str] = {}
    for r in rows:
        key = (str(r.get("model")), str(r.get("hook")), str(r.get("concept")))
        g = _num(r.get("context_gain"))
        if math.isfinite(g):
            gains[key].setdefault(r.get("seed"), g)
        own.setdefault(key, str(r.get("kind")))
    out = {}
    for key, per in gains.items():
        v = np.array(list(per.values()))
        if len(v) < 2:
            out[key] = {"kind": own[key], "gains": {str(s): g for s, g in per.items()},
                        "ci": None}
            continue
        _, ci, _, _ = t_interval(v, confidence)
        out[key] = {"kind": KINDS[0] if ci[0] > 0 else KINDS[1],
                    "gains": {str(s): g for s, g in per.items()}, "ci": ci}
    return out


def entering(rows: list[dict[str, Any]], kind: str,
             kinds: dict[tuple[str, str, str], dict[str, Any]] | None = None
             ) -> list[dict[str, Any]]:
    """Rows that enter the interaction (see the module docstring); the kind is the
    concept's ``study_kinds`` (computed here when not given)."""
    kinds = study_kinds(rows) if kinds is None else kinds
    out = []
    for r in rows:
        if row_calib_domain(r) is None or r.get("concept_domain") not in DOMAINS:
            continue
        k = kinds.get((str(r.get("model")), str(r.get("hook")), str(r.get("concept"))))
        if (k["kind"] if k else r.get("kind")) != kind or r.get("underpowered"):
            continue
        if not all(math.isfinite(_num(r.get(f))) for f in ("acc_a", "baseline", "information",
                                                            "readout", "aligned_readout")):
            continue
        out.append(r)
    return out


def inversion(rows: list[dict[str, Any]], n_boot: int = 2000, max_boot: int = MAX_BOOT,
              n_rng: int = 10, kinds: tuple[str, ...] = ("contextual",),
              readings: tuple[str, ...] = tuple(READINGS), mixed: bool = True,
              confidence: float = CONFIDENCE) -> dict[str, Any]:
    """Every (model, hook, kind, reading, method, level)'s interaction with its three
    intervals; Holm-adjusted mixed-model p-values. Returns ``{"definition", "confidence",
    "rows": [...]}``; see the module docstring."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
    decided = study_kinds(rows, confidence)
    for kind in kinds:
        for r in entering(rows, kind, decided):
            groups[(str(r.get("model")), str(r.get("hook")), kind, method_label(r),
                    r.get("param"), r["level"])].append(r)
    out = []
    for key in sorted(groups, key=lambda k: tuple(str(x) if not isinstance(x, (int, float))
                                                  else f"{x:012.4f}" for x in k)):
        model, hook, kind, method, param, level = key
        for reading in readings:
            design = Design(groups[key], reading)
            row: dict[str, Any] = {
                "model": model, "hook": hook, "kind": kind, "reading": reading,
                "method": method, "param": param, "level": level,
                "n_rows": len(design.rows), "n_seeds": len(design.seeds),
                "n_corpora": {d: int((design.corpus_domain == i).sum())
                              for i, d in enumerate(DOMAINS)},
                "n_concepts": {d: int((design.concept_domain == i).sum())
                               for i, d in enumerate(DOMAINS)},
                "n_groups": {d: int((design.group_domain == i).sum())
                             for i, d in enumerate(DOMAINS)},
                "n_document_replicates": design.n_rep}
            if not complete(design):
                out.append({**row, "interaction": None, "means": None, "seed_t": None,
                            "bootstrap": None, "mixed": None})
                continue
            value, means = design.point()
            row.update(interaction=value, means=means, seed_t=seed_t(design, confidence),
                       bootstrap=stable_bootstrap(design, n_boot, max_boot, n_rng,
                                                  confidence=confidence),
                       mixed=mixed_model(design, confidence) if mixed else None)
            out.append(row)
    family: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
    for r in out:
        family[(r["model"], r["hook"], r["kind"], r["reading"])].append(r)
    for members in family.values():
        ps = [(m.get("mixed") or {}).get("p") for m in members]
        for m, adj in zip(members, holm(ps)):
            if m.get("mixed") and "estimate" in m["mixed"]:
                m["mixed"]["p_holm"] = adj
    return _clean({"definition": "[S(code|code calib) - S(code|prose calib)] - "
                          "[S(prose|code calib) - S(prose|prose calib)], S a ratio of sums "
                          "(x - baseline) / (acc_A - baseline)",
            "confidence": confidence, "tolerance": TOLERANCE, "rows": out,
            "kinds": [{"model": m, "hook": h, "concept": c, **v}
                      for (m, h, c), v in sorted(decided.items())]})


def _clean(x: Any) -> Any:
    """JSON-ready: non-finite floats → None, numpy scalars → Python."""
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(float(x)) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


def inversion_table(result: dict[str, Any]) -> str:
    """The interactions as a text table (what ``lensbias sweep`` prints)."""
    rows = [r for r in result["rows"]]
    if not rows:
        return ("No interaction: it needs calibration corpora of both domains and powered "
                "concepts of both domains at some method and level.")

    def ci(x: Any) -> str:  # a bound is None where it was not finite (a singular Hessian)
        return "–" if not x or x[0] is None or x[1] is None else f"[{x[0]:+.3f}, {x[1]:+.3f}]"

    lines = []
    head = (f"{'reading':<16} {'method':<12} {'level':>6} {'I':>7}  {'seed t':<17} "
            f"{'cluster boot':<17} {'mixed model':<17} {'p Holm':>7}")
    for (model, hook, kind), members in _by(rows, ("model", "hook", "kind")).items():
        lines.append(f"{model} at {hook}, {kind} concepts")
        lines.append(head)
        for r in members:
            mix = r.get("mixed") or {}
            val = "–" if r.get("interaction") is None else f"{r['interaction']:+.3f}"
            p = mix.get("p_holm")
            lines.append(f"{r['reading']:<16} {r['method']:<12} {r['level']!s:>6} {val:>7}  "
                         f"{ci((r.get('seed_t') or {}).get('ci')):<17} "
                         f"{ci((r.get('bootstrap') or {}).get('read')):<17} "
                         f"{ci(mix.get('ci')):<17} "
                         f"{'–' if p is None else f'{p:.3f}':>7}")
        lines.append("")
    lines.append("I = [S(code|code calib) - S(code|prose calib)] - [S(prose|code calib) - "
                 "S(prose|prose calib)]; > 0: each calibration domain protects its own concepts")
    return "\n".join(lines)


def _by(rows: list[dict[str, Any]], keys: tuple[str, ...]) -> dict[tuple[Any, ...], list]:
    out: dict[tuple[Any, ...], list] = {}
    for r in rows:
        out.setdefault(tuple(r[k] for k in keys), []).append(r)
    return out
