"""Low-rank (svd, asvd, svd-llm) and AWQ compressors: rank, error ordering, budget.

Inputs are correlated, with every 8th channel 10× larger (LLM-like outlier channels), so
activation-aware methods have something to find.
"""

from __future__ import annotations

import pytest
import torch

import lensbias.compress.awq as awq
import lensbias.compress.lowrank as lowrank
from conftest import make_lm
from lensbias.compress.base import Recipe, compress, make_method
from lensbias.compress.calib import CalibConfig, InputStats
from lensbias.compress.linear import linear_views
from lensbias.compress.quant import minmax_rtn, rtn
from lensbias.errors import LensbiasError

M, N, TOKENS = 48, 64, 1024


@pytest.fixture(scope="module")
def problem() -> tuple[torch.Tensor, torch.Tensor, InputStats]:
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(M, N, generator=g) / N ** 0.5
    mix = torch.eye(N) + 0.3 * torch.randn(N, N, generator=g) / N ** 0.5
    shared = torch.randn(TOKENS, 4, generator=g) @ torch.randn(4, N, generator=g)
    x = torch.randn(TOKENS, N, generator=g) @ mix + shared
    scale = torch.ones(N)
    scale[::8] = 10.0
    x = x * scale
    stats = InputStats(N)
    stats.update(x)
    return weight, x, stats


def layer_error(new: torch.Tensor, weight: torch.Tensor, x: torch.Tensor) -> float:
    """Mean over tokens of ‖ΔW x‖²."""
    return float(((x.double() @ (new - weight).double().T) ** 2).sum(1).mean())


def run(name: str, params: dict, weight: torch.Tensor, stats: InputStats) -> torch.Tensor:
    return make_method(name, params).compress(weight, stats)


@pytest.mark.parametrize("ratio", [0.1, 0.5, 0.9])
def test_svd_has_formula_rank(problem, ratio):
    weight, _, _ = problem
    rank = int(ratio * M * N / (M + N))
    assert lowrank.kept_rank((M, N), ratio) == max(1, rank)
    out = run("svd", {"rank_ratio": ratio}, weight, None)
    assert out.shape == weight.shape and out.dtype == weight.dtype
    assert int(torch.linalg.matrix_rank(out)) == max(1, rank)
    method = make_method("svd", {"rank_ratio": ratio})
    assert method.stored_bits(None, out) == 16.0 * max(1, rank) * (M + N)


def test_tiny_ratio_keeps_rank_one(problem):
    weight, _, _ = problem
    assert lowrank.kept_rank((M, N), 1e-3) == 1
    assert int(torch.linalg.matrix_rank(run("svd", {"rank_ratio": 1e-3}, weight, None))) == 1


@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.75])
def test_activation_aware_beat_plain_svd(problem, ratio):
    weight, x, stats = problem
    errors = {name: layer_error(run(name, {"rank_ratio": ratio}, weight, stats), weight, x)
              for name in ("svd", "asvd", "svd-llm")}
    assert errors["asvd"] < errors["svd"]
    assert errors["svd-llm"] < errors["svd"]
    assert errors["svd-llm"] <= errors["asvd"] * (1 + 1e-6)
    for name in ("asvd", "svd-llm"):
        out = run(name, {"rank_ratio": ratio}, weight, stats)
        assert int(torch.linalg.matrix_rank(out)) == lowrank.kept_rank((M, N), ratio)


def test_svd_llm_reaches_the_optimum(problem):
    """Eckart–Young on W·L (L Lᵀ = XᵀX): the best rank-r error is the tail of σ(W·L)²."""
    weight, x, stats = problem
    rank = lowrank.kept_rank((M, N), 0.5)
    sigma = torch.linalg.svdvals(weight.double() @ torch.linalg.cholesky(stats.xtx))
    optimum = float((sigma[rank:] ** 2).sum()) / TOKENS
    got = layer_error(run("svd-llm", {"rank_ratio": 0.5}, weight, stats), weight, x)
    assert got == pytest.approx(optimum, rel=1e-4)
    for alpha in (0.25, 0.5, 1.0):
        asvd = run("asvd", {"rank_ratio": 0.5, "alpha": alpha}, weight, stats)
        assert got <= layer_error(asvd, weight, x) * (1 + 1e-6)


def test_svd_llm_damps_a_singular_gram(problem):
    """LayerNorm-like inputs (rows sum to zero) make XᵀX singular: damping keeps it finite."""
    weight, x, _ = problem
    centred = x - x.mean(1, keepdim=True)
    stats = InputStats(N)
    stats.update(centred)
    out = run("svd-llm", {"rank_ratio": 0.5}, weight, stats)
    assert torch.isfinite(out).all()
    plain = layer_error(run("svd", {"rank_ratio": 0.5}, weight, stats), weight, centred)
    assert layer_error(out, weight, centred) < plain


@pytest.mark.parametrize("name", ["svd", "asvd", "svd-llm"])
def test_ratio_one_is_identity(problem, name):
    weight, _, stats = problem
    out = run(name, {"rank_ratio": 1.0}, weight, stats)
    assert torch.equal(out, weight)
    assert make_method(name, {"rank_ratio": 1.0}).stored_bits(None, out) == 16.0 * M * N


def test_asvd_guards_dead_channels(problem):
    weight, x, _ = problem
    dead = x.clone()
    dead[:, :3] = 0.0
    stats = InputStats(N)
    stats.update(dead)
    assert torch.isfinite(run("asvd", {"rank_ratio": 0.5}, weight, stats)).all()


@pytest.mark.parametrize("bits", [3, 4])
@pytest.mark.parametrize("group_size", [-1, 16])
def test_awq_beats_rtn(problem, bits, group_size):
    weight, x, stats = problem
    params = {"bits": bits, "group_size": group_size}
    method = make_method("awq", params)
    alpha, out, history = method.search(weight, stats)
    plain = minmax_rtn(weight, bits, False, group_size)  # α = 0 on llm-awq's grid
    assert history[0] == pytest.approx(layer_error(plain, weight, x), rel=1e-6)
    assert layer_error(out, weight, x) <= layer_error(plain, weight, x)
    assert layer_error(out, weight, x) < 0.8 * layer_error(plain, weight, x)
    assert alpha > 0 and len(history) == awq.N_GRID
    assert method.stored_bits(None, out) == make_method("rtn", params).stored_bits(None, plain)


def test_awq_on_uniform_inputs_never_worse(problem):
    weight, _, _ = problem
    x = torch.randn(TOKENS, N, generator=torch.Generator().manual_seed(1))
    stats = InputStats(N)
    stats.update(x)
    out = run("awq", {"bits": 3}, weight, stats)
    plain = minmax_rtn(weight, 3, False, -1)
    assert layer_error(out, weight, x) <= layer_error(plain, weight, x) + 1e-9
    on_gptq_grid = run("awq", {"bits": 3, "grid": "gptq"}, weight, stats)
    assert layer_error(on_gptq_grid, weight, x) <= layer_error(rtn(weight, 3, False, -1),
                                                               weight, x) + 1e-9


def reference_pseudo_quantize(w: torch.Tensor, n_bit: int, q_group_size: int) -> torch.Tensor:
    """llm-awq ``pseudo_quantize_tensor(w, n_bit, zero_point=True, q_group_size)``, written out."""
    shape = w.shape
    if q_group_size > 0:
        w = w.reshape(-1, q_group_size)
    max_val = w.amax(dim=1, keepdim=True)
    min_val = w.amin(dim=1, keepdim=True)
    max_int, min_int = 2 ** n_bit - 1, 0
    scales = (max_val - min_val).clamp(min=1e-5) / max_int
    zeros = (-torch.round(min_val / scales)).clamp_(min_int, max_int)
    w = (torch.clamp(torch.round(w / scales) + zeros, min_int, max_int) - zeros) * scales
    return w.reshape(shape)


@pytest.mark.parametrize("bits, group_size", [(4, -1), (3, 16), (8, -1)])
def test_awq_grid_is_llm_awq_min_max(bits, group_size):
    """On all-positive rows llm-awq's grid spans min..max; RTN's (GPTQ's) is stretched to 0."""
    gen = torch.Generator().manual_seed(2)
    w = torch.rand(M, N, generator=gen) + 0.5  # every entry in [0.5, 1.5)
    ours = minmax_rtn(w, bits, False, group_size)
    ref = reference_pseudo_quantize(w, bits, group_size)
    assert torch.equal(ours, ref)
    through_zero = rtn(w, bits, False, group_size)
    assert (through_zero != ref).float().mean() > 0.5  # the two grids really differ
    # the reference clamps the zero point to [0, 2^b − 1]: a row with min > 0 gets zero 0, so
    # its levels are k · (max − min) / (2^b − 1) and entries above max − min are clipped
    top = (w.amax(1, keepdim=True) - w.amin(1, keepdim=True)) if group_size == -1 else None
    if top is not None:
        assert (ours <= top + 1e-6).all() and (ours >= 0).all()
    # and AWQ's α = 0 candidate is exactly that quantizer
    method = make_method("awq", {"bits": bits, "group_size": group_size})
    assert torch.equal(method.scaled_quant(w, torch.ones(N)), ref)
    mixed = torch.randn(M, N, generator=gen)  # rows through 0: min..max already covers 0
    mixed[:, 0], mixed[:, 1] = -3.0, 3.0  # every row and group of 16 holds both signs
    mixed[:, 16], mixed[:, 17] = -3.0, 3.0
    mixed[:, 32], mixed[:, 33], mixed[:, 48], mixed[:, 49] = -3.0, 3.0, -3.0, 3.0
    ref_mixed = reference_pseudo_quantize(mixed, bits, group_size)
    assert torch.equal(minmax_rtn(mixed, bits, False, group_size), ref_mixed)
    assert torch.allclose(rtn(mixed, bits, False, group_size), ref_mixed, atol=1e-6)


def test_awq_calibrates_every_block_on_the_full_precision_model(bpe, monkeypatch):
    """llm-awq's run_awq: block i's inputs come from the original blocks before it."""
    from lensbias.compress.calib import calibration_tokens, collect_inputs

    lm = make_lm(bpe)
    calib = CalibConfig("prose", n_seqs=4, seq_len=16)
    seen: dict[int, list[torch.Tensor]] = {}
    original = awq.AWQ.compress

    def spy(self, weight, stats):
        seen.setdefault(id(self), []).append(stats.mean_abs.clone())
        return original(self, weight, stats)

    monkeypatch.setattr(awq.AWQ, "compress", spy)
    views = Recipe("awq").targets.select(linear_views(lm.model))
    hooks = [v.input_hook for v in views]
    full = collect_inputs(lm.model, calibration_tokens(lm, calib), hooks)
    for mode, same in (("original", True), ("compressed", False)):
        seen.clear()
        compress(lm, Recipe("awq", {"bits": 2, "calib_inputs": mode}, calib=calib))
        got = next(iter(seen.values()))
        assert len(got) == len(views)
        last = [(v, g) for v, g in zip(views, got) if v.layer == max(w.layer for w in views)]
        for view, mean_abs in last:
            close = torch.allclose(mean_abs, full[view.input_hook].mean_abs, rtol=1e-4, atol=1e-6)
            assert close == same, (mode, view.param)


@pytest.mark.parametrize("name, params", [
    ("svd", {"rank_ratio": 0.0}), ("svd", {"rank_ratio": 1.5}), ("svd-llm", {"rank_ratio": -0.1}),
    ("asvd", {"rank_ratio": 0.5, "alpha": -1.0}), ("asvd", {"rank": 3}),
    ("awq", {"bits": 5}), ("awq", {"group_size": 1}), ("awq", {"grid": "minmax"}),
    ("awq", {"calib_inputs": "quantized"}),
])
def test_bad_args(name, params):
    with pytest.raises(LensbiasError):
        make_method(name, params)


def test_end_to_end_svd_llm(bpe):
    lm = make_lm(bpe)
    recipe = Recipe("svd-llm", {"rank_ratio": 0.5},
                    calib=CalibConfig("prose", n_seqs=8, seq_len=32))
    out = compress(lm, recipe)
    views = recipe.targets.select(linear_views(out.lm.model))
    assert len(views) == 2 * 6
    for view in views:
        new = view.read(out.lm.model)
        assert torch.isfinite(new).all()
        rank = lowrank.kept_rank(tuple(new.shape), 0.5)
        assert int(torch.linalg.matrix_rank(new)) == rank, view.param
        assert out.stored_bits[view.param] == 16.0 * rank * sum(new.shape)
        assert not torch.equal(new, view.read(lm.model))
    assert out.provenance["calib_tokens"] == [8, 32]

