"""Survival v2 with known truth: floors (token identity), the three readings (information,
readout, aligned readout), ratio-of-sums aggregates, and the headline's diagnosis."""

from __future__ import annotations

import numpy as np
import pytest

from lensbias.probes.align import AlignMap
from lensbias.probes.floors import TokenIdLookup
from lensbias.probes.pair import ProbeConfig, fit_concept
from lensbias.probes.report import aggregate_readings, reading
from lensbias.survival import diagnosis, headline

CFG = ProbeConfig(n_bootstrap=100, control=False, ceiling=False, C=1.0)
SELECT = ProbeConfig(n_bootstrap=100, control=False, ceiling=False)


def contextual(n=3000, d=24, k=3, strength=1.2, seed=0):
    """A concept planted linearly and independent of the token id; a context-free
    embedding stream that carries only the token id; examples of 10 tokens, documents of 5
    examples, a quarter of the documents held out."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 150, n)
    labels = rng.integers(0, k, n)
    directions = rng.normal(size=(k, d)) * strength
    acts = (rng.normal(size=(n, d)) + directions[labels] + 3.0).astype(np.float32)
    embed = (rng.normal(size=(150, d))[ids] + 0.1 * rng.normal(size=(n, d))).astype(np.float32)
    groups = np.arange(n) // 10
    docs = groups // 5
    test = np.isin(docs, rng.permutation(docs.max() + 1)[: (docs.max() + 1) // 4])
    return dict(acts=acts, labels=labels, ids=ids, embed=embed, groups=groups, docs=docs,
                test=test, rng=rng)


def fit(case, acts_b, **kw):
    return fit_concept(case["acts"], acts_b, case["labels"], case["groups"], case["test"],
                       token_ids=case["ids"], acts_embed=case["embed"], docs=case["docs"],
                       config=kw.pop("config", CFG), **kw)


def test_token_id_lookup_is_most_frequent_label_per_id_and_majority_for_unseen():
    ids = np.array([4, 4, 4, 7, 7, 9, 9])
    y = np.array([1, 2, 2, 0, 0, 1, 0])
    lookup = TokenIdLookup().fit(ids, y)
    # 9 ties between 0 and 1 -> the smaller; 5 unseen -> majority (0: three times)
    assert lookup.predict(np.array([4, 7, 9, 5])).tolist() == [2, 0, 0, 0]
    assert lookup.score(np.array([4, 7]), np.array([2, 1])) == 0.5


def test_a_contextual_concept_beats_its_floors_and_survives_an_identical_b():
    case = contextual()
    row = fit(case, case["acts"].copy(), config=SELECT)
    assert row.kind == "contextual" and row.baseline_kind == "floor"
    assert row.acc_a > 0.9 and row.token_id < 0.45 and row.embed < 0.45
    assert row.floor == max(row.majority, row.token_id, row.embed)
    assert row.context_gain_ci[0] > 0.4
    assert row.information == row.readout == row.aligned_readout == pytest.approx(1.0)
    assert row.train_acc_a >= row.acc_a - 0.05 and row.C_a in SELECT.C_grid


def test_destroyed_concept_has_no_information_and_no_readout():
    case = contextual()
    rng = np.random.default_rng(1)
    destroyed = (rng.normal(size=case["acts"].shape) + 3.0).astype(np.float32)
    row = fit(case, destroyed)
    for name in ("information", "readout", "aligned_readout"):
        assert abs(getattr(row, name)) < 0.12, name


def test_rotated_and_shifted_b_loses_readout_not_information():
    case = contextual()
    d = case["acts"].shape[1]
    q = np.linalg.qr(np.random.default_rng(2).normal(size=(d, d)))[0]
    moved = (case["acts"] @ q * 1.7 - 4.0).astype(np.float32)
    row = fit(case, moved)
    assert row.readout < 0.5
    assert row.information == pytest.approx(1.0, abs=0.03)
    assert row.aligned_readout == pytest.approx(1.0, abs=0.03)
    # a shift alone is undone by the mean map too
    push = np.random.default_rng(7).normal(size=d) * 15.0
    shifted = fit(case, (case["acts"] + push).astype(np.float32), config=ProbeConfig(
        n_bootstrap=0, control=False, ceiling=False, C=1.0, realign="mean"))
    assert shifted.readout < 0.9 and shifted.aligned_readout == pytest.approx(1.0, abs=0.02)


def test_a_pure_token_identity_concept_has_no_context_gain_and_is_labelled_so():
    case = contextual()
    rng = np.random.default_rng(3)
    labels = case["ids"] % 3  # a function of the token id alone
    table = rng.normal(size=(150, 24)) * 2
    acts = (table[case["ids"]] + 0.3 * rng.normal(size=(len(labels), 24))).astype(np.float32)
    row = fit_concept(acts, acts.copy(), labels, case["groups"], case["test"],
                      token_ids=case["ids"], acts_embed=acts, docs=case["docs"], config=CFG)
    assert row.token_id > 0.99 and row.floor >= row.acc_a - 1e-9
    assert row.context_gain_ci[0] <= 0 and row.kind == "token identity"
    assert row.baseline_kind == "majority" and row.baseline == row.majority


def test_aggregate_is_a_ratio_of_sums_of_entering_concepts_only():
    case = contextual()
    rows = [fit(case, case["acts"].copy(), concept="same"),
            fit(case, (case["acts"] * 0.0 + np.random.default_rng(4).normal(
                size=case["acts"].shape)).astype(np.float32), concept="gone")]
    for r in rows:
        r.domain = "prose"
    small = fit(case, case["acts"].copy(), concept="small",
                config=ProbeConfig(n_bootstrap=100, control=False, ceiling=False, C=1.0,
                                   min_test_tokens=10**6))
    small.domain = "prose"
    (agg,) = aggregate_readings(rows + [small])
    assert agg.kind == "contextual" and agg.concepts == ["same", "gone"]
    assert agg.excluded == [{"concept": "small", "reason": f"underpowered ({small.n_test} "
                             "test tokens)"}]
    expected = (sum(r.retrained - r.baseline for r in rows)
                / sum(r.acc_a - r.baseline for r in rows))
    assert agg.information == pytest.approx(expected)
    assert 0.35 < agg.information < 0.65
    lo, hi = agg.information_ci
    assert lo <= agg.information <= hi and hi - lo < 0.3


def test_readings_are_unclipped_and_undefined_without_gain():
    assert float(reading(0.95, 0.9, 0.5)) == pytest.approx(1.125)
    assert float(reading(0.2, 0.9, 0.5)) == pytest.approx(-0.75)
    assert np.isnan(reading(0.6, 0.51, 0.5))


def test_headline_says_how_many_are_token_identity_and_which_reading_moved():
    case = contextual()
    d = case["acts"].shape[1]
    q = np.linalg.qr(np.random.default_rng(5).normal(size=(d, d)))[0]
    moved = (case["acts"] @ q + 1.0).astype(np.float32)
    rows = [fit(case, moved, concept=f"c{i}", hook="blocks.1.hook_resid_post")
            for i in range(2)]
    for r in rows:
        r.domain = "prose"
    from lensbias.probes.report import ProbeReport

    report = ProbeReport(rows, aggregate_readings(rows), [], [{"concept": "x", "reason": "r"}])
    head = headline(report.to_dict())
    assert "0 of 2 concepts are readable from token identity" in head["sentence"]
    assert "the basis shifted, nothing was lost" in head["sentence"]
    assert "Not measured: x (r)" in head["sentence"]
    assert diagnosis({"information": 0.5, "information_ci": [0.4, 0.6]}).startswith(
        "information was lost")


def test_alignment_maps_recover_their_own_transformations():
    rng = np.random.default_rng(6)
    a = rng.normal(size=(800, 10))
    q = np.linalg.qr(rng.normal(size=(10, 10)))[0]
    cases = {"mean": a + 3.0, "scale": a * rng.uniform(0.5, 2.0, 10) + 1.0,
             "affine": a @ rng.normal(size=(10, 10)) + 2.0, "procrustes": a @ q * 2.0 - 1.0}
    for kind, b in cases.items():
        mapped = AlignMap(kind).fit(b, a).transform(b)
        assert np.abs(mapped - a).max() < 0.05, kind


def test_headline_reads_the_hook_with_the_most_contextual_concepts_on_a():
    from lensbias.survival import headline_hook

    def row(hook, kind):
        return {"hook": hook, "kind": kind, "concept": "c"}

    rows = [row("blocks.0.x", "contextual"), row("blocks.0.x", "contextual"),
            row("blocks.1.x", "contextual"), row("blocks.1.x", "token identity"),
            row("blocks.2.x", "token identity"), row("blocks.2.x", "token identity")]
    assert headline_hook(rows) == "blocks.0.x"
    rows.append(row("blocks.1.x", "contextual"))  # a tie goes to the deeper hook
    assert headline_hook(rows) == "blocks.1.x"
