"""Compression driver, references, recipes and saved folders (tiny random models)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from torch.nn.utils import prune

from conftest import make_lm
from lensbias.cli import main
from lensbias.compress import CalibConfig, Recipe, Targets, compress
from lensbias.compress.calib import InputStats, calibration_tokens
from lensbias.compress.linear import linear_views
from lensbias.compress.magnitude import Magnitude
from lensbias.compress.measure import group_sparsity
from lensbias.compress.quant import rtn
from lensbias.compress.save import read_recipe, save_compressed
from lensbias.compress.wanda import Wanda
from lensbias.errors import LensbiasError
from lensbias.models import load_model
from lensbias.models.folder import save_folder

SMALL = CalibConfig("prose", n_seqs=8, seq_len=32)


def test_linear_views_round_trip_every_layout(bpe):
    lm = make_lm(bpe)
    for view in linear_views(lm.model):
        before = lm.model.get_parameter(view.param).detach().clone()
        w = view.read(lm.model)
        view.write(lm.model, w)
        assert torch.equal(lm.model.get_parameter(view.param), before), view.param
    q = next(v for v in linear_views(lm.model) if v.param == "blocks.0.attn.W_Q")
    # [out, in] = [(n_heads d_head), d_model]: row h*12 + j is head h's j-th query unit
    assert q.read(lm.model).shape == (36, 36)
    assert torch.equal(q.read(lm.model)[12 + 5], lm.model.blocks[0].attn.W_Q[1, :, 5])


def _random_norms(lm):
    """LayerNorm weights and biases away from 1 and 0 (a fresh model's hide the difference
    between a norm's hook_normalized, taken before them, and its output)."""
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in lm.model.named_parameters():
            if name.split(".")[-2].startswith("ln"):
                p.copy_(p + 0.5 * torch.randn(p.shape, generator=gen))
    return lm


@pytest.mark.parametrize("norm", ["LN", "RMS"])
def test_views_read_the_input_that_feeds_them(bpe, norm):
    """x @ W + b of every view's input must equal what the model computes: the MLP's
    pre-activation, a head's queries, the logits (norm weights and biases not 1 and 0)."""
    lm = make_lm(bpe)
    if norm == "RMS":
        from lensbias.models.adapter import build_decoder

        cfg = {**lm.model.cfg.to_dict(), "normalization_type": "RMS"}
        cfg = {k: cfg[k] for k in ("n_layers", "d_model", "n_heads", "d_head", "d_mlp",
                                   "d_vocab", "n_ctx", "act_fn", "normalization_type")}
        lm = dataclasses.replace(lm, model=build_decoder(cfg))
    lm = _random_norms(lm)
    views = {v.param: v for v in linear_views(lm.model)}
    tokens = torch.tensor([bpe.encode("def add(a, b):").ids])
    logits, cache = lm.model.run_with_cache(tokens)
    for param, bias, out in [("blocks.1.mlp.W_in", "blocks.1.mlp.b_in", "blocks.1.mlp.hook_pre"),
                             ("blocks.0.attn.W_Q", "blocks.0.attn.b_Q", "blocks.0.attn.hook_q"),
                             ("unembed.W_U", "unembed.b_U", None)]:
        view = views[param]
        x = view.input_of(lm.model, cache[view.input_hook][0])
        got = x @ view.read(lm.model).T + lm.model.get_parameter(bias).reshape(-1)
        want = logits[0] if out is None else cache[out][0]
        torch.testing.assert_close(got, want.reshape(got.shape), atol=1e-4, rtol=1e-4)


def test_wanda_scores_the_norm_output_not_its_hook(bpe):
    """The driver's Wanda mask on W_Q is |W|·‖x‖ of ln1's output (weight and bias applied)."""
    from lensbias.compress.calib import collect_inputs
    from lensbias.compress.wanda import row_mask

    lm = _random_norms(make_lm(bpe))
    view = next(v for v in linear_views(lm.model) if v.param == "blocks.0.attn.W_Q")
    out = compress(lm, Recipe("wanda", {"sparsity": 0.5}, calib=SMALL))
    tokens = calibration_tokens(lm, SMALL)
    real = collect_inputs(lm.model, tokens, [view], with_xtx=False)[view.input_hook]
    hook = collect_inputs(lm.model, tokens, [view.input_hook], with_xtx=False)[view.input_hook]
    w = view.read(lm.model)
    got = view.read(out.lm.model) == 0
    assert torch.equal(got, row_mask(w.abs() * real.col_norm.float()[None], 0.5))
    assert not torch.equal(got, row_mask(w.abs() * hook.col_norm.float()[None], 0.5))


def test_magnitude_matches_torch_l1_unstructured():
    w = torch.randn(24, 40, generator=torch.Generator().manual_seed(3))
    module = torch.nn.Linear(40, 24, bias=False)
    module.weight.data = w.clone()
    prune.l1_unstructured(module, "weight", amount=0.37)
    ours = Magnitude(0.37).compress(w, None)
    assert torch.equal(ours != 0, module.weight_mask.bool())



@pytest.mark.parametrize("nm", ["2:4", "1:4", "3:8"])
def test_magnitude_nm_keeps_the_largest_n_of_every_m(nm):
    n, m = (int(x) for x in nm.split(":"))
    w = torch.randn(24, 40, generator=torch.Generator().manual_seed(4))
    out = Magnitude(nm=nm).compress(w, None)
    windows_w = w.abs().view(24, 40 // m, m)
    windows_out = out.view(24, 40 // m, m)
    kept = windows_out != 0
    assert (kept.sum(-1) <= n).all() and (kept.sum(-1) == n).all()  # continuous w: no ties
    assert torch.equal(out[out != 0], w[out != 0])  # kept weights are untouched
    # each window's kept entries are its n largest |w|: the smallest kept ≥ the largest pruned
    smallest_kept = windows_w.masked_fill(~kept, float("inf")).min(-1).values
    largest_pruned = windows_w.masked_fill(kept, -1.0).max(-1).values
    assert (smallest_kept > largest_pruned).all()
    assert Magnitude(nm=nm).sparsity == pytest.approx(1 - n / m)
    with pytest.raises(LensbiasError, match="multiple of"):
        Magnitude(nm=nm).compress(torch.randn(4, 42), None)

def test_wanda_matches_its_definition():
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(6, 8, generator=gen)
    x = torch.randn(50, 8, generator=gen) * torch.arange(1, 9)
    stats = InputStats(8, with_xtx=False)
    stats.update(x)
    score = w.abs() * x.norm(dim=0)  # S_ij = |W_ij| * ||X_j||_2, compared within each row
    expected = torch.ones_like(w, dtype=torch.bool)
    for i in range(6):
        expected[i, score[i].argsort()[:4]] = False
    assert torch.equal(Wanda(0.5).compress(w, stats) != 0, expected)


def test_zero_level_is_identity(bpe):
    lm = make_lm(bpe)
    for method, params in [("magnitude", {"sparsity": 0.0}), ("wanda", {"sparsity": 0.0}),
                           ("magnitude-neurons", {"sparsity": 0.0})]:
        out = compress(lm, Recipe(method, params, calib=SMALL))
        for (name, a), b in zip(lm.model.state_dict().items(), out.lm.model.state_dict().values()):
            assert torch.equal(a, b), (method, name)


def test_targets_follow_the_seed_study_groups(bpe):
    lm = make_lm(bpe)
    attn_only = compress(lm, Recipe("magnitude", {"sparsity": 0.5}, Targets(mlp=False)))
    sp = group_sparsity(attn_only.lm.model, encoder=False)
    assert sp["attn"] == pytest.approx(0.5, abs=1e-3) and sp["mlp"] == 0.0
    layer1 = compress(lm, Recipe("magnitude", {"sparsity": 0.5}, Targets(layers=(1, 1))))
    assert (layer1.lm.model.blocks[0].mlp.W_in != 0).all()
    assert float((layer1.lm.model.blocks[1].mlp.W_in == 0).float().mean()) == pytest.approx(0.5)
    assert torch.equal(lm.model.blocks[1].mlp.W_in, make_lm(bpe).model.blocks[1].mlp.W_in)


def test_rtn_levels_and_bits(bpe):
    w = torch.randn(10, 32, generator=torch.Generator().manual_seed(0))
    for bits in (2, 3, 4, 8):
        q = rtn(w, bits, symmetric=False, group_size=-1)
        assert max(len(torch.unique(row)) for row in q) <= 2 ** bits
    lm = make_lm(bpe)
    out = compress(lm, Recipe("rtn", {"bits": 4, "group_size": 12}))
    w_in = out.lm.model.blocks[0].mlp.W_in  # [d_model, d_mlp]: groups run along d_model
    assert not torch.equal(w_in, lm.model.blocks[0].mlp.W_in)
    n = lm.model.blocks[0].mlp.W_in.numel()
    assert out.stored_bits["blocks.0.mlp.W_in"] == 4 * n + (16 + 4) * (n // 12)


def test_calibration_is_seeded_and_domain_specific(bpe):
    lm = make_lm(bpe)
    a = calibration_tokens(lm, CalibConfig("code", 4, 16, seed=0))
    assert torch.equal(a, calibration_tokens(lm, CalibConfig("code", 4, 16, seed=0)))
    assert not torch.equal(a, calibration_tokens(lm, CalibConfig("code", 4, 16, seed=1)))
    assert not torch.equal(a, calibration_tokens(lm, CalibConfig("prose", 4, 16, seed=0)))
    assert a.shape == (4, 16) and (a[:, 0] == bpe.bos_id).all()
    mixed = calibration_tokens(lm, CalibConfig("mixed", 4, 16))
    assert mixed.shape == (4, 16)


def test_same_seed_bit_identical_and_saved_folder_loads_back(bpe, tmp_path):
    lm = make_lm(bpe)
    recipe = Recipe("sparsegpt", {"sparsity": 0.5}, calib=SMALL)
    a, b = compress(lm, recipe), compress(lm, recipe)
    for x, y in zip(a.lm.model.parameters(), b.lm.model.parameters()):
        assert torch.equal(x, y)
    folder = save_compressed(a, tmp_path / "sgpt", {"note": 1})
    back = load_model(folder)
    assert back.weights_hash() == a.lm.weights_hash()
    recipe_json = read_recipe(folder)
    assert recipe_json["recipe"]["calib"]["domain"] == "prose"
    assert recipe_json["original_weights_sha256"] == lm.weights_hash()
    assert len(recipe_json["calib_tokens_sha256"]) == 64
    assert Recipe.from_dict(recipe_json["recipe"]) == recipe


def test_bits_per_byte_is_measured_once_per_weights(bpe, monkeypatch):
    import lensbias.compress.measure as measure

    calls = []
    real = measure._measure_bpb
    monkeypatch.setattr(measure, "_measure_bpb", lambda lm: calls.append(1) or real(lm))
    monkeypatch.setattr(measure, "_BPB_MEMO", {})
    lm = make_lm(bpe)
    first = measure.model_bits_per_byte(lm)
    first["code"] = -1.0  # callers get a copy
    again = measure.model_bits_per_byte(make_lm(bpe))  # same seed: same weights
    assert len(calls) == 1 and again["code"] > 0
    pruned = compress(lm, Recipe("magnitude", {"sparsity": 0.5})).lm
    measure.model_bits_per_byte(pruned)
    assert len(calls) == 2  # new weights, new measurement


def test_nan_is_reported_not_saved(bpe, monkeypatch, tmp_path):
    lm = make_lm(bpe)
    monkeypatch.setattr(Magnitude, "compress", lambda self, w, s: w * float("nan"))
    with pytest.raises(LensbiasError, match="NaN/Inf"):
        compress(lm, Recipe("magnitude", {"sparsity": 0.5}))


@pytest.fixture()
def model_dir(bpe, tmp_path):
    lm = make_lm(bpe)
    return save_folder(tmp_path / "base", lm.model, bpe, {"name": "base"}, lm.token_counts)


@pytest.mark.parametrize("args, message", [
    (["--method", "nope"], "unknown compression method 'nope'"),
    (["--method", "magnitude", "--sparsity", "1.5"], "sparsity must be in [0, 1)"),
    (["--method", "rtn", "--bits", "5"], "bits must be one of"),
    (["--method", "wanda", "--bits", "4"], "method wanda does not take bits"),
    (["--method", "wanda", "--calib", "EMPTY"], "holds no text"),
    (["--method", "wanda", "--calib", "BINARY"], "not UTF-8 text"),
    (["--method", "wanda", "--calib", "missing.txt"], "neither one of"),
    (["--method", "magnitude", "--targets", "ffn"], "--targets 'ffn'"),
])
def test_compress_user_errors(model_dir, tmp_path, capsys, args, message):
    (tmp_path / "EMPTY").write_text("  \n")
    (tmp_path / "BINARY").write_bytes(b"\xff\xfe\x00\x81" * 10)
    args = [a.replace("EMPTY", str(tmp_path / "EMPTY")).replace("BINARY", str(tmp_path / "BINARY"))
            for a in args]
    out = tmp_path / "out"
    assert main(["compress", str(model_dir), *args, "--out", str(out), "--no-eval"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_compress_table_names_the_bits_per_byte_slice(tmp_path):
    from lensbias.cli.compress import _table

    m = {"sparsity": {"attn": 0.5}, "bits_per_weight_rewritten": None,
         "params": {"original": 10, "compressed": 10, "nonzero": 5},
         "bytes_fp16_estimate": {"original": 20, "compressed": 10},
         "bits_per_byte": {"original": {"code": 1.9, "prose": 2.4},
                           "compressed": {"code": 2.0, "prose": 2.5}},
         "bits_per_byte_slice": "stdlib40-gumdev400"}
    lines = [line for line in _table("m", tmp_path, m).splitlines() if "bits/byte" in line]
    assert len(lines) == 2 and all("held-out slice stdlib40-gumdev400" in line for line in lines)


def test_compress_cli_writes_recipe_and_measures(model_dir, tmp_path, capsys):
    out = tmp_path / "w"
    assert main(["compress", str(model_dir), "-m", "wanda", "--sparsity", "0.5", "--calib",
                 "code", "--calib-seqs", "8", "--calib-len", "32", "-o", str(out), "--json"]) == 0
    measured = json.loads(capsys.readouterr().out)
    assert measured["sparsity"]["attn"] == pytest.approx(0.5, abs=1e-3)
    bpb = measured["bits_per_byte"]
    assert bpb["compressed"]["code"] > 0 and bpb["original"]["prose"] > 0
    assert measured["bits_per_byte_slice"] == "stdlib40-gumdev400"  # the one default slice
    assert read_recipe(out)["recipe"]["method"] == "wanda"
    assert main(["compress", str(model_dir), "-m", "wanda", "-o", str(out)]) == 2  # exists
    with pytest.raises(LensbiasError, match="no recipe.json"):
        read_recipe(model_dir)
