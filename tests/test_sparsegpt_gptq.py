"""SparseGPT and GPTQ: exact patterns, grids, and lower layer-wise error than their data-free
or first-order counterparts on correlated inputs; one end-to-end run of each on a tiny model.
"""

from __future__ import annotations

import pytest
import torch

import lensbias.compress.gptq  # noqa: F401 (registration)
import lensbias.compress.sparsegpt  # noqa: F401 (registration)
from lensbias.compress.base import Recipe, compress
from lensbias.compress.calib import CalibConfig, InputStats
from lensbias.compress.gptq import GPTQ, act_order_perm
from lensbias.compress.hessian import layer_error, prepare_hessian
from lensbias.compress.linear import linear_views
from lensbias.compress.magnitude import Magnitude, nm_mask
from lensbias.compress.quant import RoundToNearest, fit_grid
from lensbias.compress.sparsegpt import SparseGPT
from lensbias.compress.wanda import Wanda
from lensbias.errors import LensbiasError
from conftest import make_lm

OUT, IN, TOKENS = 48, 64, 2048


@pytest.fixture(scope="module")
def problem() -> tuple[torch.Tensor, torch.Tensor, InputStats]:
    """Random W [48, 64]; inputs mixed by a random A and scaled per column: XᵀX far from I."""
    gen = torch.Generator().manual_seed(0)
    weight_out_in = torch.randn(OUT, IN, generator=gen)
    mix_in_in = torch.randn(IN, IN, generator=gen)
    x_tok_in = torch.randn(TOKENS, IN, generator=gen) @ mix_in_in * torch.linspace(0.1, 3.0, IN)
    stats = InputStats(IN)
    stats.update(x_tok_in)
    return weight_out_in, x_tok_in, stats


def test_layer_error_matches_explicit_inputs(problem):
    weight, x_tok_in, stats = problem
    new = weight + 0.1 * torch.randn_like(weight)
    direct = (((new - weight).double() @ x_tok_in.double().T) ** 2).sum(0).mean()
    # XᵀX is a float32 product per batch (as in the reference), summed in float64
    assert layer_error(new, weight, stats) == pytest.approx(float(direct), rel=1e-5)


def test_sparsegpt_unstructured_beats_wanda_and_magnitude(problem):
    weight, _, stats = problem
    errs = {m.name: layer_error(m.compress(weight, stats), weight, stats)
            for m in (SparseGPT(0.5), Wanda(0.5), Magnitude(0.5))}
    print("unstructured 50% layer error", errs)
    assert errs["sparsegpt"] < errs["wanda"] <= errs["magnitude"]
    pruned = SparseGPT(0.5).compress(weight, stats)
    assert int((pruned == 0).sum()) == OUT * IN // 2
    assert torch.isfinite(pruned).all() and pruned.dtype == weight.dtype
    odd = SparseGPT(0.3, blocksize=24).compress(weight, stats)  # 3 blocks, cumulative counts
    assert int((odd == 0).sum()) == round(0.3 * OUT * IN)


def test_sparsegpt_2_4_exact_pattern_and_lower_error(problem):
    weight, _, stats = problem
    pruned = SparseGPT(nm="2:4").compress(weight, stats)
    zeros_per_window = (pruned == 0).view(OUT, IN // 4, 4).sum(-1)
    assert (zeros_per_window == 2).all()
    errs = {"sparsegpt": layer_error(pruned, weight, stats),
            "wanda": layer_error(Wanda(nm="2:4").compress(weight, stats), weight, stats),
            "magnitude": layer_error(weight.masked_fill(nm_mask(weight.abs(), 2, 4), 0.0),
                                     weight, stats)}
    print("2:4 layer error", errs)
    assert errs["sparsegpt"] < errs["wanda"] and errs["sparsegpt"] < errs["magnitude"]
    # lazy block updates are exact: a block of 16 columns gives the same matrix as one block
    small_blocks = SparseGPT(nm="2:4", blocksize=16).compress(weight, stats)
    assert torch.equal(small_blocks == 0, pruned == 0)
    assert torch.allclose(small_blocks, pruned, atol=1e-5)


@pytest.mark.parametrize("bits", [4, 3])
@pytest.mark.parametrize("group_size", [-1, 16])
@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_beats_rtn_on_its_grid(problem, bits, group_size, act_order):
    weight, _, stats = problem
    quant = GPTQ(bits, group_size=group_size, act_order=act_order).compress(weight, stats)
    err_gptq = layer_error(quant, weight, stats)
    err_rtn = layer_error(RoundToNearest(bits, group_size=group_size).compress(weight, stats),
                          weight, stats)
    print(f"bits {bits} group {group_size} act_order {act_order}: gptq {err_gptq:.1f} "
          f"rtn {err_rtn:.1f}")
    assert err_gptq < err_rtn
    order = act_order_perm(stats.hessian) if act_order else torch.arange(IN)
    width = IN if group_size == -1 else group_size
    for start in range(0, IN, width):  # groups are consecutive in the sweep order
        group = quant[:, order[start:start + width]]
        assert max(len(torch.unique(row)) for row in group) <= 2 ** bits
    if group_size == -1:  # per channel: exactly RTN's grid on the original weights
        scale, zero = fit_grid(weight, bits, False)
        level = quant / scale + zero
        assert torch.allclose(level, level.round(), atol=1e-3)
        assert level.round().min() >= 0 and level.round().max() <= 2 ** bits - 1


def test_gptq_blocks_equal_one_block(problem):
    weight, _, stats = problem
    one = GPTQ(4, blocksize=128).compress(weight, stats)
    many = GPTQ(4, blocksize=16).compress(weight, stats)
    assert (one != many).float().mean() < 0.01  # float64 round-off may flip a rare tie


def test_sparsity_zero_is_identity_and_bad_args(problem):
    weight, _, stats = problem
    assert torch.equal(SparseGPT(0.0).compress(weight, stats), weight)
    for bad in (lambda: SparseGPT(1.2), lambda: SparseGPT(nm="4:2"), lambda: GPTQ(bits=5),
                lambda: SparseGPT(percdamp=-1), lambda: GPTQ(blocksize=0),
                lambda: SparseGPT(0.5).compress(weight, None),
                lambda: GPTQ(4, group_size=24).compress(weight, stats)):
        with pytest.raises(LensbiasError):
            bad()


def test_dead_input_column(problem):
    weight, x_tok_in, _ = problem
    x_dead = x_tok_in.clone()
    x_dead[:, [3, 40]] = 0.0
    stats = InputStats(IN)
    stats.update(x_dead)
    h_in_in, w_zeroed = prepare_hessian(stats, weight, 0.01)
    assert (w_zeroed[:, [3, 40]] == 0).all() and (h_in_in.diagonal() > 0).all()
    for method in (SparseGPT(0.5), SparseGPT(nm="2:4"), GPTQ(4), GPTQ(3, 16, act_order=True)):
        out = method.compress(weight, stats)
        assert torch.isfinite(out).all()
        assert (out[:, [3, 40]] == 0).all()


def test_end_to_end_on_tiny_model(bpe):
    lm = make_lm(bpe)
    calib = CalibConfig("prose", n_seqs=8, seq_len=32)
    pruned = compress(lm, Recipe("sparsegpt", {"sparsity": 0.5}, calib=calib))
    views = linear_views(pruned.lm.model)
    targeted = [v for v in views if v.group in ("attn", "mlp")]
    assert len(targeted) == 12
    for view in targeted:
        w = view.read(pruned.lm.model)
        assert torch.isfinite(w).all()
        assert int((w == 0).sum()) == round(0.5 * w.numel()), view.param

    quant = compress(lm, Recipe("gptq", {"bits": 4}, calib=calib))
    w_in = next(v for v in linear_views(quant.lm.model) if v.param == "blocks.0.mlp.W_in")
    new, old = w_in.read(quant.lm.model), w_in.read(lm.model)
    assert not torch.equal(new, old)
    assert max(len(torch.unique(row)) for row in new) <= 16
    assert quant.stored_bits["blocks.0.mlp.W_in"] == 4 * new.numel() + (16 + 4) * new.shape[0]


def reference_hessian(seqs: list[torch.Tensor], percdamp: float) -> tuple[torch.Tensor, torch.Tensor]:
    """IST-DASLab ``add_batch`` + ``fasterquant``'s preparation, written out: one sample per
    call (tmp = 1), H *= nsamples / (nsamples + tmp); inp *= sqrt(2 / nsamples); H += inp inpᵀ;
    then dead = diag(H) == 0 → H[dead, dead] = 1; damp = percdamp · mean(diag H)."""
    d = seqs[0].shape[1]
    h = torch.zeros(d, d, dtype=torch.float64)
    nsamples = 0
    for seq in seqs:
        tmp = 1
        h *= nsamples / (nsamples + tmp)
        nsamples += tmp
        inp = (2 / nsamples) ** 0.5 * seq.double().T  # [d, tokens]
        h += inp @ inp.T
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    h += percdamp * torch.mean(torch.diag(h)) * torch.eye(d, dtype=torch.float64)
    return h, dead


def test_hessian_scale_matches_the_reference_with_dead_inputs(problem):
    """H = 2XᵀX / n_sequences (not n_tokens): with dead inputs the dead H_ii = 1 and the
    damping are then exactly the reference's; with /n_tokens the damped H differs."""
    _, x_tok_in, _ = problem
    x_dead = x_tok_in.clone()
    x_dead[:, [3, 40]] = 0.0
    seqs = list(x_dead.view(16, TOKENS // 16, IN))  # 16 sequences of 128 tokens
    stats = InputStats(IN)
    for batch in (seqs[:5], seqs[5:]):  # batches of sequences, as the driver feeds them
        stats.update(torch.cat(batch), seqs=len(batch))
    assert stats.n_seqs == 16 and stats.n == TOKENS
    weight = torch.randn(OUT, IN, generator=torch.Generator().manual_seed(5))
    ours, w_zeroed = prepare_hessian(stats, weight, 0.01)
    ref, dead = reference_hessian(seqs, 0.01)
    assert dead.tolist() == [i in (3, 40) for i in range(IN)]
    # XᵀX is a float32 product per batch (as in the reference), the reference here float64
    scale = float(ref.abs().max())
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6 * scale)
    assert ours[3, 3] == pytest.approx(float(ref[3, 3]), rel=1e-6)  # 1 + damping
    assert (w_zeroed[:, dead] == 0).all()
    # the per-token scale (the previous behaviour) is not the reference's damped H
    per_token = prepare_hessian(2.0 * stats.xtx / stats.n, weight, 0.01)[0]
    rescaled = per_token * (TOKENS / 16)  # same live entries, dead H_ii = 1 scaled by 128
    seq_len = TOKENS // 16  # dead: seq_len + damp' vs 1 + damp, damp' − damp from 2 dead entries
    gap = (seq_len - 1) * (1 + 0.01 * 2 / IN)
    assert float(rescaled[3, 3] - ref[3, 3]) == pytest.approx(gap, rel=1e-3)
    # act-order ranks the dead columns (H_ii = 1) against live ones at the reference's scale
    ref_order = torch.argsort(torch.diag(ref), descending=True, stable=True)
    assert torch.equal(act_order_perm(stats.hessian), ref_order)
