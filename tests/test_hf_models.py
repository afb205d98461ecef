"""Transformers checkpoints in and out: tiny random-weight GPT-2, GPT-NeoX, Llama, Qwen2,
Mistral and BERT folders (built here from their configs, no hub) load with logits equal to
transformers'; compressors and the store run on them; `lensbias diff` runs on a pair;
`lensbias export` writes the tiny models as OPT checkpoints that read back to the same
logits; every refusal is one line and exit 2."""

from __future__ import annotations

import json
import socket
import sys
import types

import pytest
import torch

transformers = pytest.importorskip("transformers")

from conftest import CORPUS, model_folder, word_dataset  # noqa: E402
from lensbias.cli import main  # noqa: E402
from lensbias.concepts.jsonl import write_jsonl  # noqa: E402
from lensbias.errors import LensbiasError  # noqa: E402
from lensbias.models import adapter, load_model  # noqa: E402
from lensbias.models.export import PROBE_TEXT, fold_unembed_bias  # noqa: E402
from lensbias.models.tokenizer import BPETokenizer  # noqa: E402

TEXT = "def add(a, b):\n    return a + b\nThe cat sat on the mat. The dogs ran in the park."
TOL = 1e-4


def _perturb(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """transformers' 0.02-std init gives logits near zero, which match anything; noise of
    0.1 on every parameter (norm weights and biases included) gives logits of std ~0.8."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return model.eval()


def _small(**kw):
    return dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=128, bos_token_id=0, eos_token_id=0, **kw)


def _causal_cases(vocab: int) -> dict[str, tuple]:
    t = transformers
    return {
        # n_inner 96: TransformerLens assumes 4 * n_embd; GPT-2's config has no n_ctx
        "gpt2": (t.GPT2Config(n_layer=2, n_embd=64, n_head=4, n_inner=96, vocab_size=vocab,
                              n_positions=128, bos_token_id=0, eos_token_id=0),
                 t.GPT2LMHeadModel),
        "pythia": (t.GPTNeoXConfig(vocab_size=vocab, **_small()), t.GPTNeoXForCausalLM),
        # a folder named like llama sends TransformerLens down a name-based branch
        "my-llama-3": (t.LlamaConfig(vocab_size=vocab, num_key_value_heads=2, **_small()),
                       t.LlamaForCausalLM),
        "qwen2": (t.Qwen2Config(vocab_size=vocab, num_key_value_heads=2, tie_word_embeddings=True,
                                **_small()), t.Qwen2ForCausalLM),
        "mistral": (t.MistralConfig(vocab_size=vocab, num_key_value_heads=2, sliding_window=8,
                                    **_small()), t.MistralForCausalLM),
    }


@pytest.fixture(scope="module")
def bpe_hf(bpe: BPETokenizer):
    return bpe.to_pretrained()


@pytest.fixture(scope="module")
def causal(tmp_path_factory, bpe_hf):
    """name -> (folder, the transformers model it holds). The vocabulary is padded past the
    tokenizer's, as real checkpoints' often is."""
    root = tmp_path_factory.mktemp("hf")
    out = {}
    for i, (name, (config, cls)) in enumerate(_causal_cases(len(bpe_hf) + 20).items()):
        torch.manual_seed(i)
        model = _perturb(cls(config), seed=i)
        folder = root / name
        model.save_pretrained(folder)
        bpe_hf.save_pretrained(folder)
        out[name] = (folder, model)
    # GPT-NeoX saved the old way: pytorch_model.bin instead of safetensors
    folder = out["pythia"][0]
    (folder / "model.safetensors").unlink()
    torch.save(out["pythia"][1].state_dict(), folder / "pytorch_model.bin")
    return out


def _wordpiece():
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, \
        trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(CORPUS, trainers.WordPieceTrainer(
        vocab_size=200, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
        show_progress=False))
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    return transformers.BertTokenizerFast(tokenizer_object=tok, unk_token="[UNK]",
                                          cls_token="[CLS]", sep_token="[SEP]",
                                          pad_token="[PAD]", mask_token="[MASK]")


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    """'mlm' / 'bare' -> (folder, model): BertForMaskedLM and a bare BertModel."""
    root = tmp_path_factory.mktemp("bert")
    tok = _wordpiece()
    out = {}
    for name, cls in (("mlm", transformers.BertForMaskedLM), ("bare", transformers.BertModel)):
        config = transformers.BertConfig(hidden_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, intermediate_size=96,
                                         vocab_size=len(tok), max_position_embeddings=128)
        torch.manual_seed(0)
        model = _perturb(cls(config))
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
        out[name] = (root / name, model)
    return out


@pytest.mark.parametrize("name", list(_causal_cases(8)))
def test_causal_logits_match_transformers(causal, name):
    folder, hf = causal[name]
    lm = load_model(folder)
    assert lm.source == "hf" and not lm.is_encoder and lm.recipe is None
    enc = lm.tokenizer.encode(TEXT)
    spans = [o for o, special in zip(enc.offsets, enc.special) if not special]
    assert all(0 <= a <= b <= len(TEXT) for a, b in spans)  # character offsets, in order
    assert [a for a, _ in spans] == sorted(a for a, _ in spans)
    ids = torch.tensor([enc.ids])
    with torch.no_grad():
        ref = hf(ids).logits
    got = adapter.logits(lm.model, ids)
    assert ref.std() > 0.3  # logits big enough for a 1e-4 match to mean something
    assert (ref - got).abs().max() < TOL


@pytest.mark.parametrize("kind", ["mlm", "bare"])
def test_bert_matches_transformers(bert, kind):
    folder, hf = bert[kind]
    lm = load_model(folder)
    assert lm.is_encoder
    enc = lm.tokenizer.encode(TEXT)
    assert enc.special[0] and enc.special[-1] and not any(enc.special[1:-1])  # [CLS] ... [SEP]
    ids = torch.tensor([enc.ids])
    with torch.no_grad():
        out = hf(ids, output_hidden_states=True)
    acts = adapter.run_hooks(lm.model, ids, adapter.default_hooks(lm.model))
    for layer in range(2):
        got = acts[f"blocks.{layer}.hook_normalized_resid_post"]
        assert (out.hidden_states[layer + 1] - got).abs().max() < TOL
    if kind == "mlm":
        with torch.no_grad():
            logits = lm.model(ids, return_type="logits")
        assert out.logits.std() > 0.3 and (out.logits - logits).abs().max() < TOL


def test_compressors_and_store_run_on_a_loaded_checkpoint(causal, tmp_path):
    from lensbias.compress import CalibConfig, Recipe, compress
    from lensbias.store import ActivationStore, cache_activations

    lm = load_model(causal["my-llama-3"][0])  # gated MLP, grouped-query attention
    result = compress(lm, Recipe("wanda", {"sparsity": 0.5},
                                 calib=CalibConfig("code", n_seqs=4, seq_len=32)))
    sd = result.lm.model.state_dict()
    for key in ("blocks.0.attn.W_Q", "blocks.0.attn._W_K", "blocks.1.mlp.W_in",
                "blocks.1.mlp.W_gate", "blocks.1.mlp.W_out"):
        assert abs((sd[key] == 0).float().mean().item() - 0.5) < 0.02, key
    path = cache_activations(result.lm, word_dataset(CORPUS[:4]), tmp_path / "b.h5")
    with ActivationStore(path) as store:
        acts, labels = store.load("blocks.1.hook_resid_post", "kind")
        assert acts.shape[1] == 64 and len(labels) == acts.shape[0] > 0
    # saved as a lensbias folder (with its transformers tokenizer) and read back exactly
    from lensbias.compress.save import save_compressed

    back = load_model(save_compressed(result, tmp_path / "wanda"))
    assert back.source == "folder" and back.weights_hash() == result.lm.weights_hash()
    ids = torch.tensor([lm.tokenizer.encode(TEXT).ids])
    assert back.tokenizer.encode(TEXT).ids == ids[0].tolist()
    assert torch.equal(adapter.logits(back.model, ids), adapter.logits(result.lm.model, ids))


def test_diff_runs_on_a_pair_of_checkpoints(causal, tmp_path):
    """A is the Llama folder; B its copy with half of every projection's weights zeroed in
    transformers (as another tool would), read back through the same loader."""
    folder, hf = causal["my-llama-3"]
    pruned = transformers.LlamaForCausalLM(hf.config)
    pruned.load_state_dict(hf.state_dict())
    with torch.no_grad():
        for name, p in pruned.named_parameters():
            if name.endswith("proj.weight"):
                p.mul_(p.abs() > p.abs().median())
    pruned.save_pretrained(tmp_path / "b")
    load_model(folder).tokenizer.hf.save_pretrained(tmp_path / "b")
    data = tmp_path / "words.jsonl"
    write_jsonl(word_dataset(CORPUS), data)
    out = tmp_path / "report"
    assert main(["diff", str(folder), str(tmp_path / "b"), "-d", str(data), "--no-sae",
                 "--out", str(out), "-q"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    prov = summary["provenance"]
    assert prov["model_a"]["source"] == prov["model_b"]["source"] == "hf"
    assert prov["model_a"]["weights_sha256"] != prov["model_b"]["weights_sha256"]
    assert (out / "report.html").stat().st_size > 0


def test_compressed_checkpoint_goes_through_read_state_dict(causal, tmp_path, monkeypatch):
    """The contract with hf_formats: a folder whose config.json has a quantization_config
    is built from the config with the dense weights ``read_state_dict`` returns, and that
    config becomes the recipe. (The reader is stubbed: its own tests live with it.)"""
    folder, hf = causal["qwen2"]
    target = tmp_path / "q"
    hf.save_pretrained(target)
    load_model(folder).tokenizer.hf.save_pretrained(target)
    quant = {"quant_method": "compressed-tensors", "format": "pack-quantized"}
    config = json.loads((target / "config.json").read_text())
    (target / "config.json").write_text(json.dumps({**config, "quantization_config": quant}))
    dense = {k: v * 0.5 for k, v in hf.state_dict().items() if k != "lm_head.weight"}  # tied
    calls = []

    def read_state_dict(path):
        calls.append(path)
        return dense, quant

    monkeypatch.setitem(sys.modules, "lensbias.models.hf_formats",
                        types.SimpleNamespace(read_state_dict=read_state_dict))
    lm = load_model(target)
    assert calls and lm.recipe["quantization_config"] == quant
    halved = transformers.Qwen2ForCausalLM(hf.config)
    halved.load_state_dict(dense, strict=False)
    halved.tie_weights()
    ids = torch.tensor([lm.tokenizer.encode(TEXT).ids])
    with torch.no_grad():
        ref = halved.eval()(ids).logits
    assert (adapter.logits(lm.model, ids) - ref).abs().max() < TOL
    bad = {k: v for k, v in dense.items() if not k.endswith("layers.1.mlp.up_proj.weight")}
    monkeypatch.setitem(sys.modules, "lensbias.models.hf_formats",
                        types.SimpleNamespace(read_state_dict=lambda path: (bad, quant)))
    with pytest.raises(LensbiasError, match="up_proj"):
        load_model(target)


def _one_line_error(argv, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err


def test_refusals_are_one_line(causal, tmp_path, capsys, monkeypatch):
    folder = causal["gpt2"][0]
    out = str(tmp_path / "x")
    config = json.loads((folder / "config.json").read_text())

    def variant(name: str, **changes) -> str:
        target = tmp_path / name
        target.mkdir()
        for f in folder.iterdir():
            (target / f.name).symlink_to(f)
        (target / "config.json").unlink()
        (target / "config.json").write_text(json.dumps({**config, **changes}))
        return str(target)

    remote = variant("remote", auto_map={"AutoModelForCausalLM": "mine.MyModel"})
    assert "trust_remote_code" in _one_line_error(["export", remote, "--hf", out], capsys)
    unknown = variant("unknown", model_type="my-own-arch")
    assert "custom code" in _one_line_error(["export", unknown, "--hf", out], capsys)
    big = variant("bigcode", model_type="gpt_bigcode", architectures=["GPTBigCodeForCausalLM"])
    assert "not one TransformerLens can hook" in _one_line_error(
        ["export", big, "--hf", out], capsys)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text(json.dumps(config))
    assert "holds no weights" in _one_line_error(["export", str(empty), "--hf", out], capsys)
    # a hub id, offline: one line, and no connection attempted beyond a refused one
    monkeypatch.setattr(socket.socket, "connect", lambda *a: (_ for _ in ()).throw(
        OSError("network disabled in tests")))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert "could not be fetched" in _one_line_error(
        ["export", "nobody-here/no-such-model", "--hf", out], capsys)
    assert not (tmp_path / "x").exists()


# -- export -----------------------------------------------------------------------------


def test_export_tiny_mixed_round_trips(tmp_path, capsys):
    out = tmp_path / "tiny-mixed-hf"
    assert main(["export", "tiny-mixed", "--hf", str(out)]) == 0
    assert "max abs logit difference" in capsys.readouterr().out
    a, b = load_model("tiny-mixed"), load_model(out)
    ea, eb = a.tokenizer.encode(PROBE_TEXT), b.tokenizer.encode(PROBE_TEXT)
    assert (ea.ids, ea.offsets, ea.special) == (eb.ids, eb.offsets, eb.special)
    ids = torch.tensor([ea.ids])
    la, lb = adapter.logits(a.model, ids), adapter.logits(b.model, ids)
    assert (la - lb).abs().max() < TOL
    hooks = adapter.default_hooks(a.model)
    ra, rb = adapter.run_hooks(a.model, ids, hooks), adapter.run_hooks(b.model, ids, hooks)
    assert all(torch.equal(ra[h], rb[h]) for h in hooks)  # the blocks are copied exactly
    # transformers itself, as a user of the export sees it
    hf = transformers.OPTForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        assert (hf(ids).logits - la).abs().max() < TOL
    # the bias the fold carries matters: a plain export, dropping it, would be this far off
    assert a.model.state_dict()["unembed.b_U"].abs().max() > 0.1
    record = json.loads((out / "lensbias-export.json").read_text())
    assert record["unembed_bias_folded"] and record["max_abs_logit_diff"] < TOL


def test_export_a_model_folder_and_refusals(bpe, causal, tmp_path, capsys):
    folder = model_folder(tmp_path / "m", bpe)
    out = tmp_path / "m-hf"
    assert main(["export", str(folder), "--hf", str(out)]) == 0
    a, b = load_model(folder), load_model(out)
    ids = torch.tensor([a.tokenizer.encode(TEXT).ids])
    assert (adapter.logits(a.model, ids) - adapter.logits(b.model, ids)).abs().max() < TOL
    before = sorted(p.name for p in out.iterdir())
    assert "already exists" in _one_line_error(["export", str(folder), "--hf", str(out)], capsys)
    assert sorted(p.name for p in out.iterdir()) == before
    llama = str(causal["my-llama-3"][0])
    assert "does not fit a transformers OPT checkpoint" in _one_line_error(
        ["export", llama, "--hf", str(tmp_path / "l")], capsys)
    assert "does not exist" in _one_line_error(
        ["export", str(folder), "--hf", str(tmp_path / "no" / "such")], capsys)
    assert "BERT encoder" in _one_line_error(
        ["export", "all-MiniLM-L6-v2", "--hf", str(tmp_path / "e")], capsys)
    assert not (tmp_path / "l").exists() and not (tmp_path / "e").exists()


def test_export_over_tolerance_writes_nothing(bpe, tmp_path, capsys, monkeypatch):
    import lensbias.models.export as export

    monkeypatch.setattr(export, "TOLERANCE", 1e-12)  # float32 cannot meet it
    folder = model_folder(tmp_path / "m", bpe)
    assert "in logits (> 1e-12" in _one_line_error(
        ["export", str(folder), "--hf", str(tmp_path / "out")], capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temporary folder left


def test_fold_is_exact_through_layernorm():
    g = torch.Generator().manual_seed(0)
    d, v = 16, 40
    w, b = torch.rand(d, generator=g, dtype=torch.float64) + 0.5, torch.randn(d, generator=g,
                                                                               dtype=torch.float64)
    w_u, b_u = torch.randn(d, v, generator=g, dtype=torch.float64), torch.randn(v, generator=g,
                                                                                dtype=torch.float64)
    folded, _ = fold_unembed_bias(w_u, b_u, w, b)
    x = torch.randn(7, d, generator=g, dtype=torch.float64)
    ln = torch.nn.functional.layer_norm(x, (d,), w, b)
    assert (ln @ folded - (ln @ w_u + b_u)).abs().max() < 1e-9
    assert (ln @ w_u - (ln @ w_u + b_u)).abs().max() > 0.1
    with pytest.raises(LensbiasError, match="sum to"):
        fold_unembed_bias(w_u, b_u, w, w * 0)  # bias zero: nothing to carry b_U through
    same, size = fold_unembed_bias(w_u, torch.zeros(v, dtype=torch.float64), w, b)
    assert size == 0 and torch.equal(same, w_u)  # no bias: the head is copied as it is


def test_bfloat16_checkpoint_loads_in_float32(causal, tmp_path):
    folder, hf = causal["qwen2"]
    half = transformers.Qwen2ForCausalLM(hf.config)
    half.load_state_dict(hf.state_dict())
    half = half.to(torch.bfloat16)
    half.save_pretrained(tmp_path / "bf16")
    load_model(folder).tokenizer.hf.save_pretrained(tmp_path / "bf16")
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["dtype"] == "bfloat16"
    lm = load_model(tmp_path / "bf16")
    assert all(p.dtype == torch.float32 for p in lm.model.parameters())
    ids = torch.tensor([lm.tokenizer.encode(TEXT).ids])
    # transformers' own float32 load of it (``half.float()`` would keep a rounded rotary
    # inv_freq buffer)
    ref_model = transformers.Qwen2ForCausalLM.from_pretrained(tmp_path / "bf16",
                                                              dtype=torch.float32).eval()
    assert all(p.dtype == torch.float32 for p in ref_model.parameters())
    with torch.no_grad():
        ref = ref_model(ids).logits
    assert (adapter.logits(lm.model, ids) - ref).abs().max() < TOL


class _Payload:
    """Unpickling this creates folder ``marker``: proof that a pickle ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):  # noqa: ANN204
        import os

        return (os.mkdir, (self.marker,))


def test_hostile_pytorch_model_bin_never_runs(causal, tmp_path, capsys):
    folder = tmp_path / "evil"
    folder.mkdir()
    for f in causal["pythia"][0].iterdir():
        if f.name != "pytorch_model.bin":
            (folder / f.name).symlink_to(f)
    marker = tmp_path / "pwned"
    torch.save({"gpt_neox.embed_in.weight": _Payload(marker)}, folder / "pytorch_model.bin")
    err = _one_line_error(["export", str(folder), "--hf", str(tmp_path / "x")], capsys)
    assert "could not read the weights" in err and "never unpickles code" in err
    assert "weights_only` set to `False`" not in err  # torch's advice is not passed on
    assert not marker.exists()


def test_a_real_compressed_tensors_folder_loads(bpe_hf, tmp_path, monkeypatch):
    """End to end with hf_formats: a W4A16 pack-quantized Llama made by compressed-tensors
    itself (tests/test_hf_formats.py's builder) loads through load_model with the library's
    reconstruction as its weights, and its quantization config as the recipe."""
    pytest.importorskip("compressed_tensors")
    import test_hf_formats as formats

    monkeypatch.setitem(formats.LLAMA, "vocab_size", len(bpe_hf) + 20)  # our tokenizer's ids
    folder = tmp_path / "llama-w4a16"
    dense, fake = formats.ct_checkpoint(folder, 4, "group", True, "pack-quantized")
    bpe_hf.save_pretrained(folder)
    lm = load_model(folder)
    assert lm.recipe["quantization_config"]["format"] == "pack-quantized"
    assert lm.recipe["quantization_config"]["config_groups"]["group_0"]["weights"]["num_bits"] == 4
    ref = formats.tiny_llama()
    ref.load_state_dict({**dense, **fake})
    ids = torch.tensor([lm.tokenizer.encode(TEXT).ids])
    with torch.no_grad():
        want = ref(ids).logits
        ref.load_state_dict(dense)
        original = ref(ids).logits
    got = adapter.logits(lm.model, ids)
    assert (got - want).abs().max() < 1e-5
    assert (got - original).abs().max() > 10 * (got - want).abs().max()  # it is the 4-bit one
