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

from lensbias.errors import LensbiasError
from lensbias.saes.report import FeatureRow, SAEReport
from lensbias.saes.train import QualityAccumulator, encode_decode
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


def match_features(sae_a: Any, sae_b: Any, min_cosine: float = 0.7) -> dict[str, Any]:
    """One-to-one matching of decoder directions (``scipy.optimize.linear_sum_assignment``
    on cosine similarity). Returns ``match_a`` (B index per A feature, -1 if unmatched),
    ``cosine_a``, ``unmatched_a``, ``unmatched_b`` (B's 'new' features), ``min_cosine``."""
    from scipy.optimize import linear_sum_assignment

    wa = sae_a.W_dec.detach().float().cpu()
    wb = sae_b.W_dec.detach().float().cpu()
    if wa.shape[1] != wb.shape[1]:
        raise LensbiasError(f"A's SAE reads d_in={wa.shape[1]}, B's d_in={wb.shape[1]}: "
                            f"decoder directions of different widths cannot be matched")
    wa = wa / wa.norm(dim=1, keepdim=True).clamp_min(1e-12)
    wb = wb / wb.norm(dim=1, keepdim=True).clamp_min(1e-12)
    cos = (wa @ wb.T).numpy().astype(np.float64)
    rows, cols = linear_sum_assignment(-cos)
    match_a = np.full(len(wa), -1, dtype=np.int64)
    cosine_a = np.full(len(wa), np.nan)
    good = cos[rows, cols] >= min_cosine
    match_a[rows[good]] = cols[good]
    cosine_a[rows] = cos[rows, cols]
    matched_b = set(cols[good].tolist())
    return {"match_a": match_a, "cosine_a": cosine_a,
            "unmatched_a": np.flatnonzero(match_a < 0).tolist(),
            "unmatched_b": [j for j in range(len(wb)) if j not in matched_b],
            "min_cosine": min_cosine}


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
                sae_config: dict[str, Any] | None = None) -> SAEReport:
        """Run the comparison; ``sae_b`` (an SAE trained on B) adds decoder matching;
        ``sae_config`` (e.g. ``read_info(dir)``) is copied into the summary."""
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

        f64 = dict(dtype=torch.float64)
        s_a, s_b, s_aa, s_bb, s_ab = (torch.zeros(F, **f64) for _ in range(5))
        fire_a, fire_b = torch.zeros(F, **f64), torch.zeros(F, **f64)
        peak_a, peak_b = torch.zeros(F), torch.zeros(F)
        mass = {k: torch.zeros(F, **f64) for k in ("code", "other")}
        n_dom = {"code": 0, "other": 0}
        co = {s: torch.zeros(F, n_classes[s], **f64) for s in label_sets}
        fires_lab = {s: torch.zeros(F, **f64) for s in label_sets}
        class_counts = {s: np.zeros(n_classes[s], np.int64) for s in label_sets}
        top_vals = torch.full((F, self.top_n), -math.inf)
        top_rows = torch.full((F, self.top_n), -1, dtype=torch.long)
        qa, qb = QualityAccumulator(F), QualityAccumulator(F)
        count = 0

        for start in range(0, n, self.batch_tokens):
            stop = min(start + self.batch_tokens, n)
            sel = keep[start:stop]
            if not sel.any():
                continue
            rows = np.arange(start, stop)[sel]
            xa = torch.from_numpy(store_a.activations(hook, slice(start, stop))[sel])
            xb = torch.from_numpy(store_b.activations(hook_b, slice(start, stop))[sel])
            za, ra = encode_decode(self.sae, xa)
            zb, rb = encode_decode(self.sae, xb)
            qa.update(xa.to(za.device), za, ra)
            qb.update(xb.to(zb.device), zb, rb)
            za, zb = za.float().cpu(), zb.float().cpu()
            count += len(rows)
            da, db = za.double(), zb.double()
            s_a += da.sum(0); s_b += db.sum(0)  # noqa: E702
            s_aa += (da * da).sum(0); s_bb += (db * db).sum(0); s_ab += (da * db).sum(0)  # noqa: E702
            on_a, on_b = za > 0, zb > 0
            fire_a += on_a.sum(0); fire_b += on_b.sum(0)  # noqa: E702
            peak_a = torch.maximum(peak_a, za.max(0).values)
            peak_b = torch.maximum(peak_b, zb.max(0).values)
            pos_a = da.clamp_min(0)
            if domain is not None:
                dom = domain[rows]
                is_code, is_other = dom == 1, dom == 0
                mass["code"] += pos_a[torch.from_numpy(is_code)].sum(0)
                mass["other"] += pos_a[torch.from_numpy(is_other)].sum(0)
                n_dom["code"] += int(is_code.sum()); n_dom["other"] += int(is_other.sum())  # noqa: E702
            for s in label_sets:
                lab = codes[s][rows]
                valid = lab >= 0
                if not valid.any():
                    continue
                lab_v = torch.from_numpy(lab[valid])
                onehot = torch.nn.functional.one_hot(lab_v, n_classes[s]).double()
                fired = on_a[torch.from_numpy(valid)].double()
                co[s] += fired.T @ onehot
                fires_lab[s] += fired.sum(0)
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
        r = _pearson(count, s_a, s_b, s_aa, s_bb, s_ab)
        rate_a, rate_b = (fire_a / count).numpy(), (fire_b / count).numpy()
        mean_a = np.where(fire_a > 0, (s_a.clamp_min(0) / fire_a.clamp_min(1)).numpy(), np.nan)
        mean_b = np.where(fire_b > 0, (s_b.clamp_min(0) / fire_b.clamp_min(1)).numpy(), np.nan)
        share = self._domain_share(mass, n_dom) if domain is not None else np.full(F, np.nan)
        concept = self._top_concepts(store_a, label_sets, co, fires_lab, class_counts)
        contexts = self._contexts(store_a, store_b, hook, hook_b, tokens, top_vals, top_rows)
        matching = match_features(self.sae, sae_b, th.match_cosine) if sae_b is not None else None

        features = []
        for f in range(F):
            verdict = classify(float(r[f]), float(rate_a[f]), float(rate_b[f]),
                               int(fire_a[f]), th)
            dom = (None if math.isnan(share[f]) else "code" if share[f] >= th.domain_share
                   else "prose" if share[f] <= 1 - th.domain_share else "mixed")
            top = concept[f]
            features.append(FeatureRow(
                index=f, verdict=verdict, pearson_r=float(r[f]),
                rate_a=float(rate_a[f]), rate_b=float(rate_b[f]),
                peak_a=float(peak_a[f]), peak_b=float(peak_b[f]),
                mean_active_a=float(mean_a[f]), mean_active_b=float(mean_b[f]),
                domain_share_code=float(share[f]), domain=dom,
                top_concept=top[0], top_label=top[1], lift=top[2],
                match_b=(int(matching["match_a"][f]) if matching is not None
                         and matching["match_a"][f] >= 0 else None),
                match_cosine=(float(matching["cosine_a"][f]) if matching is not None
                              else float("nan")),
                contexts=contexts[f]))
        report = SAEReport(features, {})
        report.summary = self._summary(report, store_a, store_b, hook, hook_b, n, count,
                                       outliers, qa.result(), qb.result(), r, n_dom,
                                       matching, sae_config)
        return report

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
            za, _ = encode_decode(self.sae, torch.from_numpy(store_a.activations(hook, chunk)))
            zb, _ = encode_decode(self.sae, torch.from_numpy(store_b.activations(hook_b, chunk)))
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
                    "tokens": [text[int(offsets[r][0]):int(offsets[r][1])] for r in rows],
                    "act_a": act_a[f, j, cols].astype(float).tolist(),
                    "act_b": act_b[f, j, cols].astype(float).tolist()})
            out.append(rows_f)
        return out

    def _summary(self, report: SAEReport, store_a: ActivationStore, store_b: ActivationStore,
                 hook: str, hook_b: str, n: int, count: int, outliers: dict[str, Any],
                 qa: dict[str, Any], qb: dict[str, Any], r: np.ndarray, n_dom: dict[str, int],
                 matching: dict[str, Any] | None, sae_config: dict[str, Any] | None
                 ) -> dict[str, Any]:
        counts = report.counts()
        active = [f for f in report.features if f.verdict != "inactive"]
        r_active = np.asarray([f.pearson_r for f in active], dtype=np.float64)
        qb = dict(qb)
        qb["mse_ratio"] = qb["mse"] / qa["mse"] if qa["mse"] and qa["mse"] > 0 else float("nan")
        qb["explained_variance_drop"] = qa["explained_variance"] - qb["explained_variance"]

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


def _pearson(n: int, s_a: torch.Tensor, s_b: torch.Tensor, s_aa: torch.Tensor,
             s_bb: torch.Tensor, s_ab: torch.Tensor) -> np.ndarray:
    """Per-feature Pearson r from streaming sums (float64); NaN where a side is constant."""
    cov = n * s_ab - s_a * s_b
    var_a = n * s_aa - s_a * s_a
    var_b = n * s_bb - s_b * s_b
    den = torch.sqrt(var_a.clamp_min(0) * var_b.clamp_min(0))
    r = torch.where(den > 0, cov / den, torch.full_like(den, float("nan")))
    return r.clamp(-1, 1).numpy()
