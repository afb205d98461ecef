"""Frozen-SAE feature survival: which features of A's SAE still exist in compressed model B?

Following Duan (2026): A's SAE is kept frozen and encodes both A's and B's activations of
the *same* tokens; a feature survives if its activation pattern on B still tracks the one
on A (Pearson r per feature over identical tokens) and it fires about as often. Most
losses under compression are "blurred" (the feature still fires, less faithfully) rather
than destroyed. Tokens with outlier norms (massive activations, attention sinks) are
excluded before anything is measured and counted in the summary.

Everything streams over the stores in ``batch_tokens`` rows: per-feature sums for r,
firing counts, peaks, domain mass, concept co-occurrence and a running top-N for the
contexts; memory is O(batch_tokens × d_sae + n_tokens) (the latter for norms and labels).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from jaxtyping import Bool, Float

from lensbias.errors import LensbiasError
from lensbias.saes.report import FeatureRow, SAEReport
from lensbias.saes.train import QualityAccumulator
from lensbias.store.reader import ActivationStore


@dataclass(frozen=True)
class SurvivalThresholds:
    """The verdict rules, in order: inactive → dead → survived → blurred.

    - ``inactive``: the feature fires on fewer than ``min_active_tokens`` of A's tokens;
      nothing to lose, and r over a handful of tokens means nothing. Excluded from rates.
    - ``dead``: B fires less than ``dead_rate_ratio`` × as often as A, or r < ``dead_r``
      (or r undefined because B's activations are constant).
    - ``survived``: r ≥ ``survived_r`` and rate_b / rate_a within
      [1 / ``rate_ratio``, ``rate_ratio``].
    - ``blurred``: everything between (dead_r ≤ r < survived_r, or r ≥ survived_r with the
      firing rate changed by more than ``rate_ratio``×, but not ``dead_rate_ratio``×).
    """

    survived_r: float = 0.8
    """r ≥ 0.8: B's activations explain ≥ 64% of the variance of A's; the feature's token
    ranking is essentially kept. Duan (2026) reports 51-62% of features above their
    survival cut at INT6; this value is lensbias' choice, not theirs."""
    dead_r: float = 0.3
    """r < 0.3: under 9% shared variance; the activation no longer carries A's pattern."""
    rate_ratio: float = 2.0
    """A feature firing over 2× more or less often has changed what it responds to
    (absorbed into or split from a neighbour) even if its strongest tokens still agree."""
    dead_rate_ratio: float = 0.1
    """Firing under a tenth as often as on A: the feature is effectively gone from B."""
    min_active_tokens: int = 5
    """Fewer firings on A than this → 'inactive' (dead on A already)."""
    outlier_norm_ratio: float | None = 10.0
    """Tokens whose norm exceeds this × the median norm, on A or on B, are excluded
    (attention sinks and massive activations dominate r otherwise); None keeps all."""
    domain_share: float = 0.75
    """A feature is 'code' when its balanced code share is ≥ this, 'prose' when ≤ 1 − this,
    'mixed' in between."""
    min_lift_support: int = 3
    """A concept class counts for the top lift only if the feature fired on at least this
    many tokens of that class (a single co-occurrence gives huge, meaningless lifts)."""
    match_cosine: float = 0.7
    """Decoder directions of A's and B's SAEs matched by the Hungarian algorithm count as
    the same feature only at cosine ≥ this; the rest are unmatched ('new' on B's side)."""
    stable_cosine: float = 0.7
    """A feature of A's SAE is *stable* when a second SAE on A (another seed, same data)
    has a decoder direction at cosine ≥ this (best match). The same bar as
    ``match_cosine``: a B feature counts as 'the same' only as closely as a reseeded A
    feature does. Paulo & Belrose (2025) use 0.7 for seed-to-seed SAE feature sharing."""


@dataclass(frozen=True)
class QualityGate:
    """The bars A's SAE must meet on held-out documents before any per-feature verdict is
    given (otherwise every verdict is 'withheld' and the summary says which bar failed)."""

    min_explained_variance: float = 0.6
    """1 − SSE/SST on held-out A tokens. Below 0.6 the features describe under 60% of
    what A's activations do, and a 'dead' feature may be one that never captured much."""
    max_dead_fraction: float = 0.5
    """Share of features that never fire on held-out tokens; above half, most of the
    dictionary is unused and its verdicts rest on a few hundred features."""
    max_l0_ratio: float = 0.25
    """Mean active features per token ≤ this × d_in (and > 0): a code denser than a quarter
    of the input width is not sparse enough for single features to mean something."""

    def check(self, quality: dict[str, Any], d_in: int) -> list[str]:
        """The failed bars, as sentences (empty: passed)."""
        ev, dead, l0 = (quality.get(k) for k in ("explained_variance", "dead_fraction", "l0"))
        fails = []
        if ev is None or not math.isfinite(ev) or ev < self.min_explained_variance:
            fails.append(f"explained variance on held-out A tokens {_f(ev)} is below "
                         f"{self.min_explained_variance}")
        if dead is None or not math.isfinite(dead) or dead > self.max_dead_fraction:
            fails.append(f"dead fraction on held-out A tokens {_f(dead)} is above "
                         f"{self.max_dead_fraction}")
        if l0 is None or not math.isfinite(l0) or not 0 < l0 <= self.max_l0_ratio * d_in:
            fails.append(f"mean L0 {_f(l0)} is not in (0, {self.max_l0_ratio} × d_in = "
                         f"{self.max_l0_ratio * d_in:g}]")
        return fails


def _f(x: Any) -> str:
    return "undefined" if x is None or not math.isfinite(float(x)) else f"{float(x):.3f}"


def classify(r: float, rate_a: float, rate_b: float, fires_a: int,
             th: SurvivalThresholds = SurvivalThresholds()) -> str:
    """The verdict of one feature (see ``SurvivalThresholds``)."""
    if fires_a < th.min_active_tokens:
        return "inactive"
    if rate_b < th.dead_rate_ratio * rate_a or not (r >= th.dead_r):  # NaN r → dead
        return "dead"
    if r >= th.survived_r and rate_a / th.rate_ratio <= rate_b <= rate_a * th.rate_ratio:
        return "survived"
    return "blurred"


def decoder_cosines(sae_a: Any, sae_b: Any, align: Any = None
                    ) -> Float[np.ndarray, "d_sae_a d_sae_b"]:
    """Cosine of every decoder direction of ``sae_a`` with every one of ``sae_b``; with
    ``align`` (a fitted ``AlignMap`` of B's space onto A's), B's directions are first
    carried into A's space by the map's linear part."""
    wa = sae_a.W_dec.detach().double().cpu().numpy()
    wb = carry_directions(sae_b.W_dec.detach().double().cpu().numpy(), align)
    if wa.shape[1] != wb.shape[1]:
        raise LensbiasError(f"A's SAE reads d_in={wa.shape[1]}, B's d_in={wb.shape[1]}: "
                            f"decoder directions of different widths cannot be matched")
    wa = wa / np.maximum(np.linalg.norm(wa, axis=1, keepdims=True), 1e-12)
    wb = wb / np.maximum(np.linalg.norm(wb, axis=1, keepdims=True), 1e-12)
    return wa @ wb.T


def carry_directions(w: Float[np.ndarray, "n d_b"], align: Any = None) -> Float[np.ndarray, "n d_a"]:
    """Directions of B's space carried into A's by the linear part of an ``AlignMap``."""
    weight = getattr(align, "weight_", None) if align is not None else None
    if weight is None:
        return w
    return w * weight if weight.ndim == 1 else w @ weight


def match_features(sae_a: Any, sae_b: Any, min_cosine: float = 0.7, align: Any = None
                   ) -> dict[str, Any]:
    """One-to-one matching of decoder directions (``scipy.optimize.linear_sum_assignment``
    on cosine similarity; ``align`` carries B's directions into A's space first). Returns
    ``match_a`` (B index per A feature, -1 if unmatched), ``cosine_a``, ``unmatched_a``,
    ``unmatched_b`` (B's 'new' features), ``min_cosine``."""
    wa = sae_a.W_dec.detach().float().cpu()
    wb = sae_b.W_dec.detach().float().cpu()
    if align is not None:
        cos = decoder_cosines(sae_a, sae_b, align)
        return _assign(cos, min_cosine)
    if wa.shape[1] != wb.shape[1]:
        raise LensbiasError(f"A's SAE reads d_in={wa.shape[1]}, B's d_in={wb.shape[1]}: "
                            f"decoder directions of different widths cannot be matched")
    wa = wa / wa.norm(dim=1, keepdim=True).clamp_min(1e-12)
    wb = wb / wb.norm(dim=1, keepdim=True).clamp_min(1e-12)
    cos = (wa @ wb.T).numpy().astype(np.float64)
    return _assign(cos, min_cosine)


def _assign(cos: np.ndarray, min_cosine: float) -> dict[str, Any]:
    from scipy.optimize import linear_sum_assignment

    wb = cos.T
    rows, cols = linear_sum_assignment(-cos)
    match_a = np.full(len(cos), -1, dtype=np.int64)
    cosine_a = np.full(len(cos), np.nan)
    good = cos[rows, cols] >= min_cosine
    match_a[rows[good]] = cols[good]
    cosine_a[rows] = cos[rows, cols]
    matched_b = set(cols[good].tolist())
    return {"match_a": match_a, "cosine_a": cosine_a,
            "unmatched_a": np.flatnonzero(match_a < 0).tolist(),
            "unmatched_b": [j for j in range(len(wb)) if j not in matched_b],
            "min_cosine": min_cosine}


def fit_alignment(store_a: ActivationStore, store_b: ActivationStore, hook: str,
                  train: Bool[np.ndarray, " tokens"], kind: str = "affine",
                  max_tokens: int = 8192, seed: int = 0, hook_b: str | None = None,
                  outlier_norm_ratio: float | None = 10.0, device: str = "cpu"
                  ) -> tuple[Any, dict[str, Any]]:
    """The label-free map of B onto A (``lensbias.probes.align.AlignMap``) that the aligned
    readout uses, fitted on up to ``max_tokens`` unlabeled rows drawn from ``train`` (the
    SAE's training documents; never held-out ones), outlier norms on either side left out,
    on ``device`` (``AlignMap.device``). Returns ``(map, info)``."""
    from lensbias.probes.align import AlignMap

    pool = np.flatnonzero(np.asarray(train, dtype=bool))
    rng = np.random.default_rng([seed, 17])
    rows = np.sort(rng.choice(pool, size=min(max_tokens, len(pool)), replace=False))
    h_a = store_a.activations(hook, rows)
    h_b = store_b.activations(hook_b or hook, rows)
    keep = np.ones(len(rows), dtype=bool)
    if outlier_norm_ratio is not None:
        for h in (h_a, h_b):
            norm = np.linalg.norm(h, axis=1)
            keep &= norm <= outlier_norm_ratio * np.median(norm)
    fitted = AlignMap(kind, device).fit(h_b[keep], h_a[keep])
    return fitted, {"fit_tokens": int(keep.sum()), "fit_on": "training documents (unlabeled)",
                    "seed": seed}


def _fingerprint_sha(store: ActivationStore) -> str:
    return hashlib.sha256(json.dumps(store.fingerprint, sort_keys=True).encode()).hexdigest()


class FeatureSurvival:
    """Compare A's and B's activations through A's frozen SAE (see the module docstring).

    ``FeatureSurvival(sae_a).compare(store_a, store_b, hook)`` → ``SAEReport``.
    """

    def __init__(self, sae: Any, thresholds: SurvivalThresholds = SurvivalThresholds(), *,
                 batch_tokens: int = 4096, top_n: int = 8, left: int = 6, right: int = 3,
                 domain_label: str = "domain", code_class: str = "code",
                 label_sets: list[str] | None = None, max_tokens: int | None = None):
        self.sae = sae
        self.sae.eval()
        self.th = thresholds
        self.batch_tokens, self.top_n, self.left, self.right = batch_tokens, top_n, left, right
        self.domain_label, self.code_class = domain_label, code_class
        self.label_sets, self.max_tokens = label_sets, max_tokens
        self.d_sae = int(sae.cfg.d_sae)
        self.d_in = int(sae.cfg.d_in)

    # -- checks -----------------------------------------------------------------------

    def _check(self, store_a: ActivationStore, store_b: ActivationStore, hook: str,
               hook_b: str) -> dict[str, np.ndarray]:
        for name, store, h in (("A", store_a, hook), ("B", store_b, hook_b)):
            if store.d(h) != self.d_in:
                raise LensbiasError(f"{store.path} ({name}) has d={store.d(h)} at {h}, but the "
                                    f"SAE reads d_in={self.d_in}; train the SAE on this hook")
        ta, tb = store_a.tokens(), store_b.tokens()
        same = (len(ta["ids"]) == len(tb["ids"]) and np.array_equal(ta["ids"], tb["ids"])
                and np.array_equal(ta["example"], tb["example"]))
        if not same:
            raise LensbiasError(
                f"{store_a.path} ({store_a.n_tokens} tokens) and {store_b.path} "
                f"({store_b.n_tokens} tokens) do not hold the same token ids; cache A and B "
                f"on the same dataset with the same tokenizer and window "
                f"(lensbias cache ... with identical dataset and --window)")
        return ta

    # -- the pass ---------------------------------------------------------------------

    @torch.no_grad()
    def compare(self, store_a: ActivationStore, store_b: ActivationStore, hook: str,
                hook_b: str | None = None, sae_b: Any = None,
                sae_config: dict[str, Any] | None = None, *, sae_a2: Any = None,
                align: Any = None, heldout: Bool[np.ndarray, " tokens"] | None = None,
                gate: QualityGate | None = QualityGate(),
                align_info: dict[str, Any] | None = None) -> SAEReport:
        """Run the comparison and return one row per feature of A's SAE.

        - ``sae_b`` (an SAE trained on B): the information reading (Hungarian matching of
          decoder directions, then r of each A feature with its B match on the same tokens).
        - ``sae_a2`` (a second SAE on A, another seed): stability of each feature and the
          seed-to-seed null of r.
        - ``align`` (a fitted ``lensbias.probes.align.AlignMap`` of B onto A): the aligned
          readout; its linear part also carries B's SAE directions into A's space before
          matching.
        - ``heldout`` (a row mask, e.g. ``train.heldout_rows``): quality is measured on
          these rows only (held-out documents); None measures it on every compared token.
        - ``gate``: bars on A's held-out quality; when one fails, every verdict is
          'withheld' and ``summary["gate"]["reasons"]`` says why (None: no gate).
        - ``sae_config`` (e.g. ``read_info(dir)``) and ``align_info`` go into the summary.
        """
        hook_b = hook_b or hook
        tokens = self._check(store_a, store_b, hook, hook_b)
        n = store_a.n_tokens if self.max_tokens is None else min(self.max_tokens, store_a.n_tokens)
        F, th = self.d_sae, self.th

        keep, outliers = self._outlier_mask(store_a, store_b, hook, hook_b, n)
        domain = self._domain_codes(store_a, n)
        label_sets = self.label_sets if self.label_sets is not None else [
            s for s in store_a.token_label_sets if s != self.domain_label]
        codes = {s: store_a.labels(s)[:n] for s in label_sets}
        n_classes = {s: len(store_a.classes(s)) for s in label_sets}
        held = None if heldout is None else np.asarray(heldout, dtype=bool)[:n]

        stab = seed_pair = rand_pair = seed_match = None
        if sae_a2 is not None:
            cos2 = decoder_cosines(self.sae, sae_a2)
            stab = cos2.max(1)  # best match: stability
            seed_match = _assign(cos2, th.match_cosine)  # one-to-one, as for B's SAE: the null
            seed_pair = np.where(seed_match["match_a"] >= 0, seed_match["match_a"],
                                 cos2.argmax(1))
            rand_pair = np.random.default_rng(0).integers(0, cos2.shape[1], F)
        matching = None
        if sae_b is not None:
            matching = match_features(self.sae, sae_b, th.match_cosine, align=align)
        info_cols = None if matching is None else np.maximum(matching["match_a"], 0)

        F2 = None if sae_a2 is None else int(sae_a2.cfg.d_sae)
        FB = None if sae_b is None else int(sae_b.cfg.d_sae)
        pairs = {name: _PairSums(F, width, cols) for name, width, cols, on in (
            ("readout", F, None, True), ("aligned", F, None, align is not None),
            ("information", FB, info_cols, sae_b is not None),
            ("seed", F2, seed_pair, sae_a2 is not None),
            ("seed_random", F2, rand_pair, sae_a2 is not None)) if on}
        fire_a = torch.zeros(F, dtype=torch.float64)
        peak_a = torch.zeros(F)
        mass = {k: torch.zeros(F, dtype=torch.float64) for k in ("code", "other")}
        n_dom = {"code": 0, "other": 0}
        co = {s: torch.zeros(F, n_classes[s], dtype=torch.float64) for s in label_sets}
        fires_lab = {s: torch.zeros(F, dtype=torch.float64) for s in label_sets}
        class_counts = {s: np.zeros(n_classes[s], np.int64) for s in label_sets}
        top_vals = torch.full((F, self.top_n), -math.inf)
        top_rows = torch.full((F, self.top_n), -1, dtype=torch.long)
        quality = {name: QualityAccumulator(d) for name, d, on in (
            ("a", F, True), ("b", F, True), ("b_aligned", F, align is not None),
            ("a_seed2", 0 if sae_a2 is None else int(sae_a2.cfg.d_sae), sae_a2 is not None),
            ("b_own", 0 if sae_b is None else int(sae_b.cfg.d_sae), sae_b is not None)) if on}
        count = 0

        for start in range(0, n, self.batch_tokens):
            stop = min(start + self.batch_tokens, n)
            sel = keep[start:stop]
            if not sel.any():
                continue
            rows = np.arange(start, stop)[sel]
            xa = torch.from_numpy(store_a.activations(hook, slice(start, stop))[sel])
            xb = torch.from_numpy(store_b.activations(hook_b, slice(start, stop))[sel])
            q_rows = torch.ones(len(rows), dtype=torch.bool) if held is None \
                else torch.from_numpy(held[rows])
            za = self._encode("a", self.sae, xa, q_rows, quality)
            ent = _Entries(za)  # A's nonzero activations: TopK codes are sparse
            pairs["readout"].update(ent, self._encode("b", self.sae, xb, q_rows, quality))
            if align is not None:
                xal = torch.from_numpy(align.transform(xb.numpy()))
                pairs["aligned"].update(ent, self._encode("b_aligned", self.sae, xal, q_rows,
                                                          quality))
            if sae_b is not None:
                pairs["information"].update(ent, self._encode("b_own", sae_b, xb, q_rows,
                                                              quality))
            if sae_a2 is not None:
                z2 = self._encode("a_seed2", sae_a2, xa, q_rows, quality)
                pairs["seed"].update(ent, z2)
                pairs["seed_random"].update(ent, z2)
            count += len(rows)
            pos = ent.val.double().clamp_min(0)
            fired_at = ent.val > 0
            fire_a.index_add_(0, ent.col[fired_at], torch.ones(int(fired_at.sum()),
                                                                dtype=torch.float64))
            peak_a.scatter_reduce_(0, ent.col, ent.val, "amax")
            if domain is not None:
                dom = torch.from_numpy(domain[rows])[ent.row]
                for key, code in (("code", 1), ("other", 0)):
                    m = dom == code
                    mass[key].index_add_(0, ent.col[m], pos[m])
                n_dom["code"] += int((domain[rows] == 1).sum())
                n_dom["other"] += int((domain[rows] == 0).sum())
            for s in label_sets:
                lab = codes[s][rows]
                valid = lab >= 0
                if not valid.any():
                    continue
                lab_e = torch.from_numpy(lab)[ent.row]
                ok = (lab_e >= 0) & fired_at
                C = n_classes[s]
                co[s].view(-1).index_add_(0, ent.col[ok] * C + lab_e[ok],
                                          torch.ones(int(ok.sum()), dtype=torch.float64))
                fires_lab[s].index_add_(0, ent.col[ok], torch.ones(int(ok.sum()),
                                                                   dtype=torch.float64))
                class_counts[s] += np.bincount(lab[valid], minlength=n_classes[s])
            k = min(self.top_n, len(rows))
            vals, idx = za.T.topk(k, dim=1)
            cand_vals = torch.cat([top_vals, vals], dim=1)
            cand_rows = torch.cat([top_rows, torch.from_numpy(rows)[idx]], dim=1)
            best_vals, best = cand_vals.topk(self.top_n, dim=1)
            top_vals, top_rows = best_vals, cand_rows.gather(1, best)

        if count == 0:
            raise LensbiasError("no tokens left to compare after excluding outlier norms; "
                                "raise or disable outlier_norm_ratio")
        res = {name: p.result(count) for name, p in pairs.items()}
        r, rate_b = res["readout"]["r"], res["readout"]["rate_b"]
        rate_a = (fire_a / count).numpy()
        s_a = pairs["readout"].s_a
        if seed_match is not None:  # the information reading run on A against itself
            res["seed"]["matched"] = seed_match["match_a"] >= 0
        mean_a = np.where(fire_a > 0, (s_a.clamp_min(0) / fire_a.clamp_min(1)).numpy(), np.nan)
        mean_b = res["readout"]["mean_b"]
        share = self._domain_share(mass, n_dom) if domain is not None else np.full(F, np.nan)
        concept = self._top_concepts(store_a, label_sets, co, fires_lab, class_counts)
        contexts = self._contexts(store_a, store_b, hook, hook_b, tokens, top_vals, top_rows)
        qual = {name: acc.result() for name, acc in quality.items()}
        reasons = gate.check(qual["a"], self.d_in) if gate is not None else []
        dec_norm = self.sae.W_dec.detach().double().norm(dim=1).cpu().numpy()

        def verdict(name: str, f: int) -> str | None:
            if name not in res:
                return None
            if name == "information" and matching is not None and matching["match_a"][f] < 0:
                return "inactive" if fire_a[f] < th.min_active_tokens else "dead"
            v = classify(float(res[name]["r"][f]), float(rate_a[f]),
                         float(res[name]["rate_b"][f]), int(fire_a[f]), th)
            return "withheld" if reasons and v != "inactive" else v

        def opt(name: str, key: str, f: int) -> float:
            return float(res[name][key][f]) if name in res else float("nan")

        features = []
        for f in range(F):
            dom = (None if math.isnan(share[f]) else "code" if share[f] >= th.domain_share
                   else "prose" if share[f] <= 1 - th.domain_share else "mixed")
            top = concept[f]
            matched = matching is not None and matching["match_a"][f] >= 0
            features.append(FeatureRow(
                index=f, verdict=verdict("readout", f) or "", pearson_r=float(r[f]),
                rate_a=float(rate_a[f]), rate_b=float(rate_b[f]),
                peak_a=float(peak_a[f]), peak_b=float(res["readout"]["peak_b"][f]),
                mean_active_a=float(mean_a[f]), mean_active_b=float(mean_b[f]),
                domain_share_code=float(share[f]), domain=dom,
                top_concept=top[0], top_label=top[1], lift=top[2],
                match_b=int(matching["match_a"][f]) if matched else None,
                match_cosine=(float(matching["cosine_a"][f]) if matching is not None
                              else float("nan")),
                verdict_aligned=verdict("aligned", f),
                pearson_r_aligned=opt("aligned", "r", f),
                rate_b_aligned=opt("aligned", "rate_b", f),
                verdict_info=verdict("information", f),
                pearson_r_info=opt("information", "r", f) if matched else float("nan"),
                rate_b_info=opt("information", "rate_b", f) if matched else float("nan"),
                stable=None if stab is None else bool(stab[f] >= th.stable_cosine),
                stability_cosine=float("nan") if stab is None else float(stab[f]),
                seed_match=None if seed_pair is None else int(seed_pair[f]),
                seed_r=opt("seed", "r", f),
                decoder_norm=float(dec_norm[f]),
                contexts=contexts[f]))
        report = SAEReport(features, {})
        report.summary = self._summary(report, store_a, store_b, hook, hook_b, n, count,
                                       outliers, qual, r, n_dom, matching, sae_config)
        report.summary.update(self._v2_summary(report, qual, reasons, res, held, gate,
                                               align, align_info, sae_a2, sae_b))
        return report

    def _encode(self, name: str, sae: Any, x: torch.Tensor, q_rows: torch.Tensor,
                quality: dict[str, QualityAccumulator]) -> torch.Tensor:
        """Dense codes of ``x``; reconstruction quality is accumulated on ``q_rows`` only
        (held-out documents), so only those rows are decoded."""
        dev = next(sae.parameters()).device
        z = sae.encode(x.to(dev))
        if z.is_sparse:
            z = z.to_dense()
        if q_rows.any():
            q = q_rows.to(dev)
            zq = z[q]
            quality[name].update(x.to(dev)[q], zq, sae.decode(zq))
        return z.float().cpu()


    # -- pieces -----------------------------------------------------------------------

    def _outlier_mask(self, store_a: ActivationStore, store_b: ActivationStore, hook: str,
                      hook_b: str, n: int) -> tuple[np.ndarray, dict[str, Any]]:
        keep = np.ones(n, dtype=bool)
        info: dict[str, Any] = {"ratio": self.th.outlier_norm_ratio, "a": 0, "b": 0,
                                "excluded": 0}
        if self.th.outlier_norm_ratio is None:
            return keep, info
        for name, store, h in (("a", store_a, hook), ("b", store_b, hook_b)):
            norms = np.empty(n, dtype=np.float32)
            for start in range(0, n, self.batch_tokens):
                stop = min(start + self.batch_tokens, n)
                norms[start:stop] = np.linalg.norm(store.activations(h, slice(start, stop)), axis=1)
            limit = self.th.outlier_norm_ratio * float(np.median(norms))
            bad = norms > limit
            info[name], info[f"max_norm_{name}"] = int(bad.sum()), limit
            keep &= ~bad
        info["excluded"] = int((~keep).sum())
        return keep, info

    def _domain_codes(self, store: ActivationStore, n: int) -> np.ndarray | None:
        """1 = code, 0 = another domain, -1 = unlabelled; None when the store has no domain."""
        if self.domain_label not in store.label_sets:
            return None
        classes = store.classes(self.domain_label)
        lab = store.labels(self.domain_label)[:n]
        if self.code_class not in classes:
            return np.where(lab >= 0, 0, -1)
        return np.where(lab < 0, -1, (lab == classes.index(self.code_class)).astype(np.int64))

    @staticmethod
    def _domain_share(mass: dict[str, torch.Tensor], n_dom: dict[str, int]) -> np.ndarray:
        if n_dom["code"] == 0 or n_dom["other"] == 0:
            return np.full(len(mass["code"]), np.nan)
        per_code = mass["code"].numpy() / n_dom["code"]
        per_other = mass["other"].numpy() / n_dom["other"]
        total = per_code + per_other
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(total > 0, per_code / total, np.nan)

    def _top_concepts(self, store: ActivationStore, label_sets: list[str],
                      co: dict[str, torch.Tensor], fires_lab: dict[str, torch.Tensor],
                      class_counts: dict[str, np.ndarray]
                      ) -> list[tuple[str | None, str | None, float]]:
        best: list[tuple[str | None, str | None, float]] = [(None, None, float("nan"))] * self.d_sae
        best_lift = np.full(self.d_sae, -np.inf)
        for s in label_sets:
            total = class_counts[s].sum()
            if total == 0:
                continue
            prior = class_counts[s] / total
            c = co[s].numpy()
            fl = fires_lab[s].numpy()[:, None]
            with np.errstate(invalid="ignore", divide="ignore"):
                lift = (c / fl) / prior[None, :]
            lift[(c < self.th.min_lift_support) | ~np.isfinite(lift)] = -np.inf
            arg = lift.argmax(1)
            val = lift[np.arange(self.d_sae), arg]
            classes = store.classes(s)
            for f in np.flatnonzero(val > best_lift):
                best_lift[f] = val[f]
                best[f] = (s, classes[arg[f]], float(val[f]))
        return best

    def _contexts(self, store_a: ActivationStore, store_b: ActivationStore, hook: str,
                  hook_b: str, tokens: dict[str, np.ndarray], top_vals: torch.Tensor,
                  top_rows: torch.Tensor) -> list[list[dict[str, Any]]]:
        """Windows around each feature's top tokens on A, with A and B activations."""
        example, position, offsets = tokens["example"], tokens["position"], tokens["offsets"]
        n_all = len(example)
        span = np.arange(-self.left, self.right + 1)
        F, N, W = self.d_sae, self.top_n, len(span)
        centre = top_rows.numpy()
        valid_top = (top_vals > 0).numpy() & (centre >= 0)
        win = centre[:, :, None] + span[None, None, :]
        inside = (win >= 0) & (win < n_all) & valid_top[:, :, None]
        win_c = np.clip(win, 0, n_all - 1)
        same = inside & (example[win_c] == example[np.clip(centre, 0, n_all - 1)][:, :, None])
        act_a = np.full((F, N, W), np.nan, dtype=np.float32)
        act_b = np.full((F, N, W), np.nan, dtype=np.float32)
        need = np.unique(win_c[same])
        feat_idx = np.broadcast_to(np.arange(F)[:, None, None], (F, N, W))
        for start in range(0, len(need), self.batch_tokens):
            chunk = need[start:start + self.batch_tokens]
            za = _codes(self.sae, torch.from_numpy(store_a.activations(hook, chunk)))
            zb = _codes(self.sae, torch.from_numpy(store_b.activations(hook_b, chunk)))
            za, zb = za.float().cpu().numpy(), zb.float().cpu().numpy()
            in_chunk = same & (win_c >= chunk[0]) & (win_c <= chunk[-1])
            pos = np.searchsorted(chunk, win_c[in_chunk])
            act_a[in_chunk] = za[pos, feat_idx[in_chunk]]
            act_b[in_chunk] = zb[pos, feat_idx[in_chunk]]
        texts = store_a.texts()
        out: list[list[dict[str, Any]]] = []
        for f in range(F):
            rows_f = []
            for j in range(N):
                if not valid_top[f, j]:
                    continue
                cols = np.flatnonzero(same[f, j])
                rows = win[f, j, cols]
                text = texts[int(example[centre[f, j]])]
                rows_f.append({
                    "row": int(centre[f, j]), "example": int(example[centre[f, j]]),
                    "position": int(position[centre[f, j]]),
                    "center": int(np.flatnonzero(rows == centre[f, j])[0]),
                    "tokens": [text[_token_start(r, example, offsets):int(offsets[r][1])]
                               for r in rows],
                    "act_a": act_a[f, j, cols].astype(float).tolist(),
                    "act_b": act_b[f, j, cols].astype(float).tolist()})
            out.append(rows_f)
        return out

    def _summary(self, report: SAEReport, store_a: ActivationStore, store_b: ActivationStore,
                 hook: str, hook_b: str, n: int, count: int, outliers: dict[str, Any],
                 qual: dict[str, dict[str, Any]], r: np.ndarray, n_dom: dict[str, int],
                 matching: dict[str, Any] | None, sae_config: dict[str, Any] | None
                 ) -> dict[str, Any]:
        counts = report.counts()
        active = [f for f in report.features if f.verdict != "inactive"]
        r_active = np.asarray([f.pearson_r for f in active], dtype=np.float64)
        qa = qual["a"]
        for name in ("b", "b_aligned", "b_own"):
            if name in qual:
                q = qual[name]
                q["mse_ratio"] = (q["mse"] / qa["mse"] if qa["mse"] and qa["mse"] > 0
                                  else float("nan"))
                q["explained_variance_drop"] = qa["explained_variance"] - q["explained_variance"]
        qb = qual["b"]

        def store_info(s: ActivationStore) -> dict[str, Any]:
            return {"path": str(s.path), "model": s.model_name, "dataset": s.dataset_name,
                    "fingerprint_sha256": _fingerprint_sha(s)}

        return {
            "hook": hook, "hook_b": hook_b, "store_a": store_info(store_a),
            "store_b": store_info(store_b), "d_sae": self.d_sae, "d_in": self.d_in,
            "n_tokens": n, "n_compared": count, "outliers": outliers,
            "domain_tokens": {"code": n_dom["code"], "other": n_dom["other"]},
            "counts": counts, "n_active": len(active),
            "survival_rate": counts["survived"] / len(active) if active else float("nan"),
            "blurred_rate": counts["blurred"] / len(active) if active else float("nan"),
            "dead_rate": counts["dead"] / len(active) if active else float("nan"),
            "median_r_active": float(np.nanmedian(r_active)) if np.isfinite(r_active).any()
            else float("nan"),
            "counts_by_domain": {d: report.counts(d) for d in ("code", "prose", "mixed")},
            "quality_a": qa, "quality_b": qb,
            "thresholds": asdict(self.th),
            "contexts": {"top_n": self.top_n, "left": self.left, "right": self.right},
            "sae_config": sae_config,
            "matching": None if matching is None else {
                "min_cosine": matching["min_cosine"],
                "unmatched_a": matching["unmatched_a"], "unmatched_b": matching["unmatched_b"],
                "n_new_in_b": len(matching["unmatched_b"]),
                "n_lost_from_a": len(matching["unmatched_a"])},
        }

    def _v2_summary(self, report: SAEReport, qual: dict[str, dict[str, Any]],
                    reasons: list[str], res: dict[str, dict[str, np.ndarray]],
                    held: np.ndarray | None, gate: QualityGate | None, align: Any,
                    align_info: dict[str, Any] | None, sae_a2: Any, sae_b: Any
                    ) -> dict[str, Any]:
        """Survival v2: gate, stability, the three readings over stable features, the
        seed-to-seed null, predictability and the SAE-level headline."""
        th = self.th
        active = [f for f in report.features if f.verdict != "inactive"]
        has_stab = sae_a2 is not None
        stable = [f for f in active if f.stable] if has_stab else active
        unstable = [f for f in active if f.stable is False]
        out: dict[str, Any] = {
            "gate": {"passed": not reasons, "reasons": reasons,
                     "bars": None if gate is None else asdict(gate),
                     "measured_on": "heldout documents" if held is not None
                     else "every compared token"},
            "quality": qual,
            "heldout_tokens": None if held is None else int(held.sum()),
            "sae_a_sha256": sae_digest(self.sae),
            "alignment": None if align is None else {"kind": align.kind, **(align_info or {})},
        }
        if reasons:
            for key in ("survival_rate", "blurred_rate", "dead_rate"):
                out[key] = float("nan")
        cos = np.asarray([f.stability_cosine for f in active], dtype=np.float64)
        out["stability"] = None if not has_stab else {
            "threshold": th.stable_cosine, "n_active": len(active), "n_stable": len(stable),
            "n_unstable": len(unstable),
            "unstable_share": len(unstable) / len(active) if active else float("nan"),
            "best_match_cosine": _quantiles(cos),
            "histogram": _histogram(cos, np.linspace(0, 1, 11))}
        readings = {}
        for name in READINGS:
            if name != "readout" and name not in res:
                continue
            c = reading_counts(stable, name)
            judged = c["survived"] + c["blurred"] + c["dead"]
            readings[name] = {
                "counts_stable": c, "n_stable": len(stable),
                "survived_share": c["survived"] / judged if judged else float("nan"),
                "blurred_share": c["blurred"] / judged if judged else float("nan"),
                "dead_share": c["dead"] / judged if judged else float("nan"),
                "unstable_share": (len(unstable) / len(active) if has_stab and active
                                   else float("nan")),
                "counts_all_active": reading_counts(active, name),
                "median_r_stable": _median([_r_of(f, name) for f in stable])}
        out["readings"] = readings
        if "seed" in res:
            seed_r = np.asarray([f.seed_r for f in stable], dtype=np.float64)
            rand_r = np.abs(res["seed_random"]["r"][[f.index for f in active]])
            out["seed_null"] = {
                "what": "r between each stable feature of A's SAE and its best match in the "
                        "second SAE on A, both on A's tokens: how far two equally valid SAEs "
                        "of the same model agree on one feature",
                "r_matched_stable": _quantiles(seed_r),
                "share_matched_at_or_above_survived_r": _share(seed_r >= th.survived_r, seed_r),
                "share_matched_below_dead_r": _share(seed_r < th.dead_r, seed_r),
                "abs_r_random_pairs": _quantiles(rand_r),
                "abs_r_random_pairs_p99": float(np.nanquantile(rand_r, 0.99))
                if np.isfinite(rand_r).any() else float("nan"),
                "what_random": "|r| between each active feature and a random feature of the "
                               "second SAE: the chance level of r"}
            # the information reading run on A against A's second SAE (nothing compressed):
            # the verdict shares an information reading gives when nothing was lost
            matched = res["seed"].get("matched")
            null_v = [("dead" if matched is not None and not matched[f.index] else
                       classify(float(res["seed"]["r"][f.index]), f.rate_a,
                                float(res["seed"]["rate_b"][f.index]), th.min_active_tokens, th))
                      for f in stable]
            out["seed_null"]["information_null"] = {
                v: (null_v.count(v) / len(null_v) if null_v else float("nan"))
                for v in ("survived", "blurred", "dead")}
        else:
            out["seed_null"] = None
        if "information" in res and sae_b is not None:
            mcos = np.asarray([f.match_cosine for f in active], dtype=np.float64)
            out["information_matching"] = {
                "cosine_active": _quantiles(mcos),
                "histogram": _histogram(mcos, np.linspace(0, 1, 11)),
                "carried_by_alignment": align is not None}
        from lensbias.saes.analysis import survival_predictability

        out["predictability"] = (survival_predictability(report.features) if not reasons
                                 else {"skipped": "verdicts withheld (quality gate)"})
        if not reasons and len(readings) > 1:
            lost = [f for f in stable if f.verdict in ("blurred", "dead")]
            moved = [f for f in lost if "survived" in (f.verdict_aligned, f.verdict_info)]
            last = "verdict_info" if "information" in readings else "verdict_aligned"
            gone = [f for f in lost if f not in moved and getattr(f, last) == "dead"]
            out["moved"], out["gone"] = len(moved), len(gone)
            out["degraded"] = len(lost) - len(moved) - len(gone)
            out["moved_features"] = [f.index for f in moved]
            out["gone_features"] = [f.index for f in gone]
        else:
            out["moved"] = out["gone"] = out["degraded"] = None
        out["headline"] = sae_headline(out, len(active))
        return out


@torch.no_grad()
def _codes(sae: Any, x: torch.Tensor) -> torch.Tensor:
    """Dense float32 CPU codes of raw activations (no decoding)."""
    z = sae.encode(x.to(next(sae.parameters()).device))
    return (z.to_dense() if z.is_sparse else z).float().cpu()


class _Entries:
    """The nonzero entries of a code matrix ``[tokens, features]``: ``row``, ``col``, ``val``
    (a TopK code has k per token, so sums over them cost O(tokens × k), not × d_sae)."""

    def __init__(self, z: torch.Tensor):
        self.row, self.col = z.nonzero(as_tuple=True)
        self.val = z[self.row, self.col]


class _PairSums:
    """Streaming sums for the per-feature r between A's feature f (A's SAE on A) and column
    ``cols[f]`` of a second code matrix (identity when ``cols`` is None) over the same
    tokens, plus that column's firing count and peak. Sums run over nonzero entries only."""

    def __init__(self, n_features: int, width: int | None = None,
                 cols: np.ndarray | None = None):
        width = n_features if width is None else width
        z = lambda k: torch.zeros(k, dtype=torch.float64)  # noqa: E731
        self.s_a, self.s_aa, self.s_ab = z(n_features), z(n_features), z(n_features)
        self.s_b, self.s_bb, self.fire_b = z(width), z(width), z(width)
        self.peak_b = torch.zeros(width)
        self.cols = None if cols is None else torch.as_tensor(np.asarray(cols), dtype=torch.long)

    def update(self, ent: _Entries, zb: torch.Tensor) -> None:
        va = ent.val.double()
        self.s_a.index_add_(0, ent.col, va)
        self.s_aa.index_add_(0, ent.col, va * va)
        col_b = ent.col if self.cols is None else self.cols[ent.col]
        self.s_ab.index_add_(0, ent.col, va * zb[ent.row, col_b].double())
        eb = _Entries(zb)
        vb = eb.val.double()
        self.s_b.index_add_(0, eb.col, vb)
        self.s_bb.index_add_(0, eb.col, vb * vb)
        self.fire_b.index_add_(0, eb.col, (eb.val > 0).double())
        self.peak_b.scatter_reduce_(0, eb.col, eb.val, "amax")

    def result(self, n: int) -> dict[str, np.ndarray]:
        pick = (lambda t: t) if self.cols is None else (lambda t: t[self.cols])  # noqa: E731
        s_b, s_bb, fire_b, peak_b = (pick(t) for t in (self.s_b, self.s_bb, self.fire_b,
                                                       self.peak_b))
        mean_b = np.where(fire_b > 0, (s_b.clamp_min(0) / fire_b.clamp_min(1)).numpy(), np.nan)
        return {"r": _pearson(n, self.s_a, s_b, self.s_aa, s_bb, self.s_ab),
                "rate_b": (fire_b / n).numpy(), "peak_b": peak_b.numpy(), "mean_b": mean_b}


READINGS = {"readout": "verdict", "aligned": "verdict_aligned", "information": "verdict_info"}
"""The three readings of a feature and the FeatureRow field holding each verdict."""


def reading_counts(features: list[FeatureRow], reading: str) -> dict[str, int]:
    field_name = READINGS[reading]
    return {v: sum(getattr(f, field_name) == v for f in features)
            for v in ("survived", "blurred", "dead", "withheld")}


def _quantiles(x: np.ndarray) -> dict[str, float]:
    x = np.asarray(x, dtype=np.float64)
    x = x[np.isfinite(x)]
    if not len(x):
        return {"n": 0}
    q = np.quantile(x, [0.05, 0.25, 0.5, 0.75, 0.95])
    return {"n": int(len(x)), "mean": float(x.mean()), "p05": float(q[0]), "p25": float(q[1]),
            "median": float(q[2]), "p75": float(q[3]), "p95": float(q[4])}


def _histogram(x: np.ndarray, edges: np.ndarray) -> dict[str, list[float] | list[int]]:
    x = np.asarray(x, dtype=np.float64)
    counts, _ = np.histogram(x[np.isfinite(x)], bins=edges)
    return {"edges": [round(float(e), 4) for e in edges], "counts": counts.tolist()}


def _token_start(row: int, example: np.ndarray, offsets: np.ndarray) -> int:
    """Where a token's own text starts, whitespace before it included: the end of the
    previous token of the same example (when tokens do not overlap), else its own start."""
    start = int(offsets[row][0])
    if row > 0 and example[row - 1] == example[row] and int(offsets[row - 1][1]) <= start:
        return int(offsets[row - 1][1])
    return start


def _r_of(f: FeatureRow, reading: str) -> float:
    return {"readout": f.pearson_r, "aligned": f.pearson_r_aligned,
            "information": f.pearson_r_info}[reading]


def _median(x: list[float]) -> float:
    a = np.asarray(x, dtype=np.float64)
    return float(np.nanmedian(a)) if np.isfinite(a).any() else float("nan")


def _share(mask: np.ndarray, x: np.ndarray) -> float:
    ok = np.isfinite(x)
    return float(mask[ok].mean()) if ok.any() else float("nan")


def sae_digest(sae: Any) -> str:
    """sha256 of an SAE's encoder and decoder weights (which SAE the indices refer to)."""
    h = hashlib.sha256()
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        t = getattr(sae, name, None)
        if t is not None:
            h.update(t.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


def sae_headline(summary: dict[str, Any], n_active: int) -> str:
    """One sentence: which reading kept what, and whether the lost features moved or are
    gone (the ``headline`` of an SAE summary)."""
    gate = summary.get("gate") or {}
    if not gate.get("passed", True):
        return ("Per-feature verdicts withheld: A's SAE misses a quality bar ("
                + "; ".join(gate.get("reasons", [])) + ").")
    readings = summary.get("readings") or {}
    stab = summary.get("stability")
    base = (f"Of {stab['n_stable']} stable features of A's SAE ({_pct(stab['unstable_share'])} "
            f"of {n_active} active features are unstable across seeds and not counted)"
            if stab else f"Of {n_active} active features of A's SAE (stability not measured)")
    parts = [f"{label} {_pct(readings[k]['survived_share'])}" for k, label in (
        ("readout", "A's frozen readout keeps"), ("aligned", "after re-aligning B onto A"),
        ("information", "in an SAE trained on B")) if k in readings]
    null = (summary.get("seed_null") or {}).get("information_null")
    if null and "information" in readings:
        parts[-1] += (f" (against {_pct(null['survived'])} when A's own second-seed SAE is "
                      f"read the same way: the information reading's null)")
    sentence = base + ": " + ", ".join(parts) + "."
    moved, gone, degraded = (summary.get(k) for k in ("moved", "gone", "degraded"))
    if moved is not None:
        last = "B's own SAE" if "information" in readings else "the aligned readout"
        lost = moved + gone + degraded
        if lost == 0:
            return sentence + " The readout keeps every stable feature."
        what = ("mostly moved" if moved > gone + degraded else "mostly gone" if gone > moved
                + degraded else "mostly degraded" if degraded > moved + gone else "mixed")
        sentence += (f" Of the {lost} the readout does not keep: moved (another reading "
                     f"keeps them) {moved}, gone (dead in {last}) {gone}, blurred in every "
                     f"reading {degraded}; {what}.")
    return sentence


def _pct(x: Any) -> str:
    return "–" if x is None or not math.isfinite(float(x)) else f"{100 * float(x):.0f}%"


def _pearson(n: int, s_a: torch.Tensor, s_b: torch.Tensor, s_aa: torch.Tensor,
             s_bb: torch.Tensor, s_ab: torch.Tensor) -> np.ndarray:
    """Per-feature Pearson r from streaming sums (float64); NaN where a side is constant."""
    cov = n * s_ab - s_a * s_b
    var_a = n * s_aa - s_a * s_a
    var_b = n * s_bb - s_b * s_b
    den = torch.sqrt(var_a.clamp_min(0) * var_b.clamp_min(0))
    r = torch.where(den > 0, cov / den, torch.full_like(den, float("nan")))
    return r.clamp(-1, 1).numpy()
