"""Layer removal (ShortGPT) and distillation on tiny random models.

The distillation-domain test compares KL to the teacher on held-out windows: a student
distilled on code must match the teacher better on code than one distilled on prose.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

import lensbias.compress.distill  # noqa: F401  (registers "distill")
import lensbias.compress.layerdrop  # noqa: F401  (registers "layer-drop")
from lensbias.compress.base import Recipe, compress
from lensbias.compress.calib import CalibConfig, calibration_tokens
from lensbias.compress.distill import DistillConfig, kd_loss
from lensbias.compress.linear import Targets
from lensbias.errors import LensbiasError
from lensbias.models import LoadedModel, adapter
from conftest import make_lm

CALIB = CalibConfig("prose", n_seqs=8, seq_len=32)




def identity_block(lm: LoadedModel, layer: int) -> LoadedModel:
    """Zero block ``layer``'s output maps so it adds nothing to the residual stream."""
    params = dict(lm.model.named_parameters())
    with torch.no_grad():
        for name in ("attn.W_O", "attn.b_O", "mlp.W_out", "mlp.b_out"):
            params[f"blocks.{layer}.{name}"].zero_()
    return lm


def test_layer_drop_removes_the_identity_block(bpe):
    lm = identity_block(make_lm(bpe), 0)
    out = compress(lm, Recipe("layer-drop", {"n_drop": 1}, calib=CALIB))
    scores = out.lm.meta["block_influence"]
    assert out.lm.meta["dropped_blocks"] == [0]
    assert scores[0] < 1e-6 < scores[1]
    assert out.lm.model.cfg.n_layers == 1 and lm.model.cfg.n_layers == 2
    tokens = calibration_tokens(lm, CALIB)
    torch.testing.assert_close(adapter.logits(out.lm.model, tokens),
                               adapter.logits(lm.model, tokens), rtol=1e-5, atol=1e-5)


def test_layer_drop_cosine_score_and_layer_range(bpe):
    lm = identity_block(make_lm(bpe), 0)
    cos = compress(lm, Recipe("layer-drop", {"n_drop": 1, "score": "cosine"}, calib=CALIB))
    assert cos.lm.meta["dropped_blocks"] == [0] and cos.lm.meta["block_score"] == "cosine"
    only_1 = compress(lm, Recipe("layer-drop", {"n_drop": 1}, Targets(layers=(1, 1)), CALIB))
    assert only_1.lm.meta["dropped_blocks"] == [1]
    assert only_1.lm.meta["block_influence"][0] is None


@pytest.mark.parametrize("params", [{"n_drop": 2}, {"n_drop": -1}, {"n_drop": 1.5},
                                    {"score": "euclid"}])
def test_layer_drop_rejects_bad_settings(bpe, params):
    with pytest.raises(LensbiasError):
        compress(make_lm(bpe), Recipe("layer-drop", params, calib=CALIB))


def distilled(lm: LoadedModel, domain: str, **params) -> LoadedModel:
    recipe = Recipe("distill", {"n_layers": 1, **params},
                    calib=CalibConfig(domain, n_seqs=32, seq_len=32))
    return compress(lm, recipe).lm


def test_distill_learns_and_is_reproducible(bpe):
    teacher = make_lm(bpe)
    a = distilled(teacher, "prose", steps=30, alpha=1.0)
    b = distilled(teacher, "prose", steps=30, alpha=1.0)
    losses = a.meta["distill_losses"]
    assert losses["kl_last"] < losses["kl_first"] and losses["last"] < losses["first"]
    assert a.model.cfg.n_layers == 1 and a.meta["distill_student"]["n_layers"] == 1
    assert a.meta["distill_init"] == {"teacher_blocks": [0]}
    assert a.tokenizer is teacher.tokenizer and a.token_counts is teacher.token_counts
    for (name, p), (_, q) in zip(a.model.named_parameters(), b.model.named_parameters()):
        assert torch.equal(p, q), name


def test_distill_random_student_of_another_width(bpe):
    student = distilled(make_lm(bpe), "prose", steps=3, d_model=24, init="teacher")
    assert student.meta["distill_init"] == "random"
    assert (student.model.cfg.d_model, student.model.cfg.d_head) == (24, 8)


def _held_out_kl(teacher: LoadedModel, student: LoadedModel, domain: str) -> float:
    tokens = calibration_tokens(teacher, CalibConfig(domain, n_seqs=64, seq_len=32, seed=123))
    kl = kd_loss(adapter.logits(student.model, tokens), adapter.logits(teacher.model, tokens),
                 tokens, DistillConfig(1, 1.0, 1.0, 1.0, 1))[1]
    return float(kl)


def test_distill_domain_decides_what_the_student_matches(bpe):
    teacher = make_lm(bpe)
    settings = {"steps": 60, "alpha": 1.0, "lr": 3e-3}
    on_code, on_prose = distilled(teacher, "code", **settings), distilled(teacher, "prose", **settings)
    assert _held_out_kl(teacher, on_code, "code") < _held_out_kl(teacher, on_prose, "code")
    assert _held_out_kl(teacher, on_prose, "prose") < _held_out_kl(teacher, on_code, "prose")


@pytest.mark.parametrize("params", [{"temperature": 0}, {"alpha": 1.5}, {"steps": 0},
                                    {"n_layers": 0}, {"init": "zeros"}, {"d_model": 20}])
def test_distill_rejects_bad_settings(bpe, params):
    with pytest.raises(LensbiasError):
        compress(make_lm(bpe), Recipe("distill", {"steps": 1, **params}, calib=CALIB))


@pytest.mark.parametrize("method", ["layer-drop", "distill"])
def test_encoders_are_refused(bpe, method):
    cfg = dict(n_layers=1, d_model=36, n_heads=3, d_head=12, d_mlp=60, d_vocab=bpe.vocab_size,
               n_ctx=64, act_fn="gelu", normalization_type="LN")
    lm = dataclasses.replace(make_lm(bpe), model=adapter.build_encoder(cfg))
    with pytest.raises(LensbiasError, match="encoder"):
        compress(lm, Recipe(method, {}, calib=CALIB))
