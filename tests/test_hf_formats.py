"""Compressed Hugging Face checkpoints read back as dense float32 weights (models/hf_formats.py).

Each format is built here: compressed-tensors and bitsandbytes checkpoints by the libraries
themselves on CPU, GPTQ and AWQ layouts packed in this file from the formats' definitions
(AutoGPTQ's ``pack`` loops, AutoAWQ's ``WQLinear_GEMM.from_linear`` loop), independent of
the unpacking code under test. The model is a tiny random Llama, for real key names.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from lensbias.errors import LensbiasError
from lensbias.models.hf_formats import read_state_dict

transformers = pytest.importorskip("transformers")

LLAMA = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=256)
LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def tiny_llama(seed: int = 0, **overrides) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(**{**LLAMA, **overrides})
    return transformers.LlamaForCausalLM(config).eval()


def linear_names(model: torch.nn.Module) -> list[str]:
    return [f"model.layers.{i}.{n}" for i in range(model.config.num_hidden_layers) for n in LINEARS]


def write_config(folder: Path, model: torch.nn.Module, quantization_config: dict | None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(folder)
    if quantization_config is not None:
        config = json.loads((folder / "config.json").read_text())
        config["quantization_config"] = quantization_config
        (folder / "config.json").write_text(json.dumps(config))


def one_line_error(folder: Path, *needles: str) -> str:
    with pytest.raises(LensbiasError) as info:
        read_state_dict(folder)
    message = str(info.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, message
    return message


# --------------------------------------------------------------------------- dense


def test_dense_folders_single_sharded_and_bin(tmp_path):
    model = tiny_llama(tie_word_embeddings=True)
    truth = model.state_dict()
    model.save_pretrained(tmp_path / "single")
    model.save_pretrained(tmp_path / "sharded", max_shard_size="40KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    assert "lm_head.weight" not in load_file(tmp_path / "single" / "model.safetensors")
    write_config(tmp_path / "bin", model, None)
    torch.save({k: v for k, v in truth.items() if k != "lm_head.weight"},
               tmp_path / "bin" / "pytorch_model.bin")
    for name in ("single", "sharded", "bin"):
        state, qconfig = read_state_dict(tmp_path / name)
        assert qconfig is None
        assert set(state) == set(truth), name
        for key, value in truth.items():
            assert state[key].dtype == torch.float32
            assert torch.equal(state[key], value), (name, key)
        # the tied head comes back as transformers ties it: the embedding itself
        assert torch.equal(state["lm_head.weight"], truth["model.embed_tokens.weight"])
        loaded = transformers.AutoModelForCausalLM.from_config(model.config)
        loaded.load_state_dict(state, strict=True)


def test_keys_are_the_checkpoints_own_class(tmp_path):
    """architectures[0] decides the key names where transformers has that class: a bare
    BertModel keeps its keys (no 'bert.' prefix, its pooler)."""
    torch.manual_seed(0)
    config = transformers.BertConfig(hidden_size=64, num_hidden_layers=1, num_attention_heads=4,
                                     intermediate_size=128, vocab_size=256,
                                     max_position_embeddings=32)
    model = transformers.BertModel(config).eval()
    model.save_pretrained(tmp_path / "bert")
    state, _ = read_state_dict(tmp_path / "bert")
    truth = model.state_dict()
    assert set(state) == set(truth) and "pooler.dense.weight" in state
    for key, value in truth.items():
        assert torch.equal(state[key], value), key


def test_dense_errors_missing_unused_mismatched(tmp_path):
    model = tiny_llama()
    truth = {k: v.clone() for k, v in model.state_dict().items()}
    cases = {
        "missing": ({k: v for k, v in truth.items() if k != "model.norm.weight"},
                    ("1 weight(s)", "model.norm.weight", "not in the checkpoint")),
        "unused": ({**truth, "model.layers.0.mlp.extra.weight": torch.zeros(3)},
                   ("not used by LlamaForCausalLM", "model.layers.0.mlp.extra.weight")),
        "mismatched": ({**truth, "model.layers.1.mlp.down_proj.weight": torch.zeros(64, 64)},
                       ("model.layers.1.mlp.down_proj.weight", "(64, 64)", "(64, 128)")),
    }
    for name, (tensors, needles) in cases.items():
        write_config(tmp_path / name, model, None)
        save_file(tensors, tmp_path / name / "model.safetensors")
        one_line_error(tmp_path / name, *needles)
    write_config(tmp_path / "empty", model, None)
    one_line_error(tmp_path / "empty", "holds no weights")
    write_config(tmp_path / "pickle", model, None)
    torch.save([torch.zeros(1)], tmp_path / "pickle" / "pytorch_model.bin")
    one_line_error(tmp_path / "pickle", "pytorch_model.bin does not hold a state dict")


def test_unknown_quant_method_is_refused(tmp_path):
    model = tiny_llama()
    model.save_pretrained(tmp_path / "hqq")
    config = json.loads((tmp_path / "hqq" / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "hqq", "nbits": 4}
    (tmp_path / "hqq" / "config.json").write_text(json.dumps(config))
    one_line_error(tmp_path / "hqq", "quant_method is 'hqq'", "compressed-tensors, gptq, awq")


# --------------------------------------------------------------------------- compressed-tensors


def ct_checkpoint(folder: Path, bits: int, strategy: str, symmetric: bool, fmt: str,
                  seed: int = 0) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Quantize a tiny Llama with compressed-tensors' own APIs and save it compressed, as
    llmcompressor's save wrapper does. Returns (dense weights, the library's fake-quantized
    reconstruction of every quantized weight)."""
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import (QuantizationArgs, QuantizationConfig,
                                                 QuantizationScheme, QuantizationStatus,
                                                 apply_quantization_config)
    from compressed_tensors.quantization.lifecycle.forward import fake_quantize
    from compressed_tensors.quantization.utils import calculate_qparams

    model = tiny_llama(seed)
    dense = {k: v.clone() for k, v in model.state_dict().items()}
    args = QuantizationArgs(num_bits=bits, type="int", symmetric=symmetric, strategy=strategy,
                            group_size=32 if strategy == "group" else None)
    config = QuantizationConfig(config_groups={"group_0": QuantizationScheme(
        targets=["Linear"], weights=args)}, ignore=["lm_head"])
    apply_quantization_config(model, config, show_progress=False)
    fake = {}
    for name, module in model.named_modules():
        scheme = getattr(module, "quantization_scheme", None)
        if scheme is None:
            continue
        w = module.weight.data
        blocks = w.reshape(w.shape[0], -1, 32) if strategy == "group" else w[:, None, :]
        scale, zero = calculate_qparams(blocks.amin(-1), blocks.amax(-1), scheme.weights)
        module.weight_scale.data.copy_(scale.reshape(module.weight_scale.shape))
        zp = getattr(module, "weight_zero_point", None)
        if zp is not None:
            zp.data.copy_(zero.reshape(zp.shape))
        fake[f"{name}.weight"] = fake_quantize(w, module.weight_scale, zp, scheme.weights)
        module.quantization_status = QuantizationStatus.FROZEN
    compressor = ModelCompressor.from_pretrained_model(model, quantization_format=fmt)
    compressor.compress_model(model)
    model.save_pretrained(folder)
    compressor.update_config(folder)
    return dense, fake


CT_CASES = [(4, "group", False, "pack-quantized"), (4, "group", True, "pack-quantized"),
            (8, "channel", True, "pack-quantized"), (4, "channel", False, "pack-quantized"),
            (4, "group", True, "int-quantized"), (8, "channel", False, "int-quantized")]


@pytest.mark.parametrize("bits,strategy,symmetric,fmt", CT_CASES)
def test_compressed_tensors_match_the_library_reconstruction(tmp_path, bits, strategy,
                                                             symmetric, fmt):
    pytest.importorskip("compressed_tensors")
    dense, fake = ct_checkpoint(tmp_path / "ct", bits, strategy, symmetric, fmt)
    saved = load_file(tmp_path / "ct" / "model.safetensors")
    packed = "weight_packed" if fmt == "pack-quantized" else "weight"
    assert saved[f"model.layers.0.mlp.down_proj.{packed}"].dtype in (torch.int32, torch.int8)
    state, qconfig = read_state_dict(tmp_path / "ct")
    assert qconfig["quant_method"] == "compressed-tensors" and qconfig["format"] == fmt
    assert qconfig["config_groups"]["group_0"]["weights"]["num_bits"] == bits
    assert set(fake) == {f"{m}.weight" for m in linear_names(tiny_llama())}
    for key, value in fake.items():
        assert state[key].shape == value.shape
        assert torch.allclose(state[key], value, rtol=0, atol=1e-6), key
        # and it is quantized: not the dense weight, within one step of it
        assert not torch.equal(state[key], dense[key])
    for key in set(dense) - set(fake):  # embeddings, norms, lm_head (ignored) are untouched
        assert torch.equal(state[key], dense[key]), key
    assert set(state) == set(dense)


def test_compressed_tensors_dense_saved_sparse(tmp_path):
    pytest.importorskip("compressed_tensors")
    from compressed_tensors.config import DenseSparsityConfig, Sparse24BitMaskConfig

    model = tiny_llama()
    with torch.no_grad():  # 2:4 by magnitude in every Linear
        for name in linear_names(model):
            w = model.get_submodule(name).weight
            groups = w.view(w.shape[0], -1, 4)
            keep = groups.abs().topk(2, dim=-1).indices
            mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, keep, True)
            w.copy_((groups * mask).view_as(w))
    truth = model.state_dict()
    model.save_pretrained(tmp_path / "sparse")
    sparsity = DenseSparsityConfig(global_sparsity=0.5, sparsity_structure="2:4").model_dump()
    write_config(tmp_path / "sparse", model, {"quant_method": "compressed-tensors",
                                              "sparsity_config": sparsity})
    state, qconfig = read_state_dict(tmp_path / "sparse")
    assert qconfig["sparsity_config"]["sparsity_structure"] == "2:4"
    for key, value in truth.items():
        assert torch.equal(state[key], value), key
    w = state["model.layers.1.mlp.up_proj.weight"].view(128, -1, 4)
    assert int((w != 0).sum(-1).max()) == 2
    # 2:4 sparse-24-bitmask compressed: the installed library has no decompressor for it
    bitmask = Sparse24BitMaskConfig(global_sparsity=0.5, sparsity_structure="2:4").model_dump()
    write_config(tmp_path / "sparse", model, {"quant_method": "compressed-tensors",
                                              "sparsity_config": bitmask})
    one_line_error(tmp_path / "sparse", "'sparse-24-bitmask'", "cannot be decompressed")


def test_compressed_tensors_errors(tmp_path, monkeypatch):
    pytest.importorskip("compressed_tensors")
    ct_checkpoint(tmp_path / "ct", 4, "group", False, "pack-quantized")
    folder = tmp_path / "ct"
    original = load_file(folder / "model.safetensors")
    config = json.loads((folder / "config.json").read_text())

    def rewrite(tensors=None, qconfig=None):
        save_file(original if tensors is None else tensors, folder / "model.safetensors")
        (folder / "config.json").write_text(json.dumps(
            {**config, "quantization_config": qconfig or config["quantization_config"]}))

    key = "model.layers.1.self_attn.v_proj"
    rewrite({k: v for k, v in original.items() if k != f"{key}.weight_scale"})
    one_line_error(folder, f"{key}.weight_scale is missing")
    rewrite({**original, f"{key}.weight_scale": original[f"{key}.weight_scale"][:, :1].contiguous()})
    one_line_error(folder, f"{key}.weight_scale has shape (32, 1)", "needs (32, 2)")
    rewrite({**original, "lm_head.weight_scale": torch.ones(256, 2)})
    one_line_error(folder, "lm_head holds quantization parameters", "no config group")
    rewrite({**original, f"{key}.weight_g_idx": torch.zeros(64, dtype=torch.int32)})
    one_line_error(folder, f"{key}.weight_g_idx", "not supported")
    qc = json.loads(json.dumps(config["quantization_config"]))
    qc["config_groups"]["group_0"]["input_activations"] = {"num_bits": 8, "type": "int",
                                                           "strategy": "token", "dynamic": True}
    rewrite(qconfig=qc)
    one_line_error(folder, "also quantizes activations", "weight-only")
    rewrite()
    monkeypatch.setitem(sys.modules, "compressed_tensors", None)
    one_line_error(folder, 'pip install "lensbias[hf]"')


# --------------------------------------------------------------------------- GPTQ


def autogptq_pack_qweight(intweight: np.ndarray, bits: int) -> np.ndarray:
    """AutoGPTQ ``QuantLinear.pack``: ``intweight`` [in, out] uint -> qweight [in*bits/32, out]."""
    intweight = intweight.astype(np.uint32)
    qweight = np.zeros((intweight.shape[0] // 32 * bits, intweight.shape[1]), dtype=np.uint32)
    i = row = 0
    while row < qweight.shape[0]:
        if bits in (2, 4, 8):
            for j in range(i, i + 32 // bits):
                qweight[row] |= intweight[j] << (bits * (j - i))
            i += 32 // bits
            row += 1
        else:  # bits == 3: 32 values in 3 words, two of them split across words
            for j in range(i, i + 10):
                qweight[row] |= intweight[j] << (3 * (j - i))
            i += 10
            qweight[row] |= intweight[i] << 30
            row += 1
            qweight[row] |= (intweight[i] >> 2) & 1
            i += 1
            for j in range(i, i + 10):
                qweight[row] |= intweight[j] << (3 * (j - i) + 1)
            i += 10
            qweight[row] |= intweight[i] << 31
            row += 1
            qweight[row] |= (intweight[i] >> 1) & 0x3
            i += 1
            for j in range(i, i + 10):
                qweight[row] |= intweight[j] << (3 * (j - i) + 2)
            i += 10
            row += 1
    return qweight.view(np.int32)


def autogptq_pack_qzeros(zeros: np.ndarray, bits: int) -> np.ndarray:
    """AutoGPTQ ``QuantLinear.pack`` for zeros [groups, out] -> qzeros [groups, out*bits/32]:
    the same packing, along out_features."""
    return np.ascontiguousarray(autogptq_pack_qweight(zeros.T, bits).T)


def tiny_gpt2(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = transformers.GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=32,
                                     vocab_size=256)
    return transformers.GPT2LMHeadModel(config).eval()


def conv1d_names(model: torch.nn.Module) -> list[str]:
    from transformers.pytorch_utils import Conv1D
    return [n for n, m in model.named_modules() if isinstance(m, Conv1D)]


def gptq_checkpoint(folder: Path, bits: int, group_size: int, act_order: bool, v1: bool,
                    seed: int = 0, zero_bias: bool = False,
                    model: torch.nn.Module | None = None) -> dict[str, torch.Tensor]:
    """A GPTQ folder of a tiny Llama (or ``model``): every Linear (GPT-2: Conv1D) quantized
    with random levels, zeros and scales (and a random permutation of groups for act-order).
    Returns W = s[g] * (q - z[g]), transposed to GPT-2's [in, out] for a Conv1D, as
    AutoGPTQ quantizes Conv1D's transpose."""
    conv1d = model is not None
    model = tiny_llama(seed) if model is None else model
    rng = np.random.default_rng(seed)
    tensors = {k: v.clone() for k, v in model.state_dict().items()}
    expected = dict(tensors)
    for name in conv1d_names(model) if conv1d else linear_names(model):
        d_out, d_in = tensors.pop(f"{name}.weight").shape[::-1 if conv1d else 1]
        n_groups = 1 if group_size == -1 else d_in // group_size
        g_idx = np.arange(d_in) // (d_in if group_size == -1 else group_size)
        if act_order:
            g_idx = rng.permutation(g_idx)
        q = rng.integers(0, 2 ** bits, size=(d_in, d_out))
        # v1 stores z - 1, so its zeros start at 1 (z = 0 is not representable in v1)
        z = rng.integers(1 if v1 else 0, 2 ** bits, size=(n_groups, d_out))
        s = torch.from_numpy(rng.uniform(0.001, 0.05, size=(n_groups, d_out))).half()
        tensors[f"{name}.qweight"] = torch.from_numpy(autogptq_pack_qweight(q, bits))
        tensors[f"{name}.qzeros"] = torch.from_numpy(autogptq_pack_qzeros(z - int(v1), bits))
        tensors[f"{name}.scales"] = s
        tensors[f"{name}.g_idx"] = torch.from_numpy(g_idx.astype(np.int32))
        if zero_bias:
            tensors[f"{name}.bias"] = torch.zeros(d_out, dtype=torch.float16)
        gi = torch.from_numpy(g_idx)
        w = s.float()[gi] * (torch.from_numpy(q) - torch.from_numpy(z)[gi]).float()  # [in, out]
        expected[f"{name}.weight"] = w if conv1d else w.T.contiguous()
    write_config(folder, model, {"quant_method": "gptq", "bits": bits, "group_size": group_size,
                                 "desc_act": act_order, "sym": False,
                                 "checkpoint_format": "gptq" if v1 else "gptq_v2"})
    save_file(tensors, folder / "model.safetensors")
    return expected


@pytest.mark.parametrize("bits,group_size,act_order,v1", [
    (4, 32, False, True), (4, 32, True, True), (4, -1, False, False), (8, 64, True, False),
    (8, 32, False, True), (3, 32, True, True), (3, 64, False, False), (2, 32, True, False)])
def test_gptq_gives_back_scales_times_q_minus_z(tmp_path, bits, group_size, act_order, v1):
    expected = gptq_checkpoint(tmp_path / "gptq", bits, group_size, act_order, v1,
                               zero_bias=bits == 4)
    state, qconfig = read_state_dict(tmp_path / "gptq")
    assert qconfig["quant_method"] == "gptq" and qconfig["bits"] == bits
    assert set(state) == set(expected)
    for key, value in expected.items():
        assert torch.equal(state[key], value.float()), key


def test_gptq_gpt2_conv1d_comes_back_in_its_own_orientation(tmp_path):
    """GPT-2's Conv1D holds [in, out]; AutoGPTQ quantizes the [out, in] transpose. Its
    attention output projection is square (64 x 64), so only the values can tell."""
    model = tiny_gpt2()
    expected = gptq_checkpoint(tmp_path / "gptq", 4, 32, True, True, model=model)
    state, _ = read_state_dict(tmp_path / "gptq")
    assert set(state) == set(model.state_dict())
    assert state["transformer.h.0.attn.c_proj.weight"].shape == (64, 64)
    for key, value in expected.items():
        assert torch.equal(state[key], value.float()), key
    assert torch.equal(state["lm_head.weight"], state["transformer.wte.weight"])  # tied


def test_gptq_v1_offset_and_act_order_are_applied(tmp_path):
    """Reading a v1 folder as v2 or ignoring g_idx gives other weights: both are used."""
    expected = gptq_checkpoint(tmp_path / "g", 4, 32, True, True)
    key = "model.layers.0.mlp.down_proj.weight"
    config = json.loads((tmp_path / "g" / "config.json").read_text())
    config["quantization_config"]["checkpoint_format"] = "gptq_v2"
    (tmp_path / "g" / "config.json").write_text(json.dumps(config))
    state, _ = read_state_dict(tmp_path / "g")
    assert not torch.allclose(state[key], expected[key], atol=1e-3)
    # and without g_idx, in plain group order
    config["quantization_config"].update(checkpoint_format="gptq", desc_act=False)
    (tmp_path / "g" / "config.json").write_text(json.dumps(config))
    tensors = load_file(tmp_path / "g" / "model.safetensors")
    del tensors["model.layers.0.mlp.down_proj.g_idx"]
    save_file(tensors, tmp_path / "g" / "model.safetensors")
    state, _ = read_state_dict(tmp_path / "g")
    assert not torch.allclose(state[key], expected[key], atol=1e-3)
    assert torch.equal(state["model.layers.0.mlp.up_proj.weight"],
                       expected["model.layers.0.mlp.up_proj.weight"])


def test_gptq_errors(tmp_path):
    folder = tmp_path / "gptq"
    gptq_checkpoint(folder, 4, 32, True, True)
    original = load_file(folder / "model.safetensors")
    config = json.loads((folder / "config.json").read_text())
    key = "model.layers.1.mlp.up_proj"

    def rewrite(tensors=None, **qc):
        save_file(original if tensors is None else tensors, folder / "model.safetensors")
        (folder / "config.json").write_text(json.dumps(
            {**config, "quantization_config": {**config["quantization_config"], **qc}}))

    rewrite({k: v for k, v in original.items() if k != f"{key}.scales"})
    one_line_error(folder, f"{key}.scales is missing")
    rewrite({**original, f"{key}.scales": original[f"{key}.scales"][:, :64].contiguous()})
    one_line_error(folder, key, "scales has shape (2, 64)")
    rewrite({k: v for k, v in original.items() if k != f"{key}.g_idx"})
    one_line_error(folder, f"{key}.g_idx is missing", "desc_act")
    rewrite({**original, f"{key}.g_idx": original[f"{key}.g_idx"] + 5})
    one_line_error(folder, key, "g_idx points outside")
    rewrite({**original, f"{key}.bias": torch.ones(128, dtype=torch.float16)})
    one_line_error(folder, "not used by LlamaForCausalLM", f"{key}.bias")
    rewrite({**original, f"{key}.qweight_extra": torch.zeros(2)})
    one_line_error(folder, "not used by LlamaForCausalLM", f"{key}.qweight_extra")
    rewrite(bits=5)
    one_line_error(folder, "GPTQ bits 5 are not supported", "2, 3, 4, 8")
    rewrite(checkpoint_format="marlin")
    one_line_error(folder, "checkpoint_format 'marlin'")


# --------------------------------------------------------------------------- AWQ


def autoawq_pack(intweight: np.ndarray) -> np.ndarray:
    """AutoAWQ ``WQLinear_GEMM.from_linear``: [rows, out] 4-bit -> [rows, out/8] int32, with
    ``order_map = [0, 2, 4, 6, 1, 3, 5, 7]``."""
    order_map = [0, 2, 4, 6, 1, 3, 5, 7]
    intweight = intweight.astype(np.uint32)
    packed = np.zeros((intweight.shape[0], intweight.shape[1] // 8), dtype=np.uint32)
    for col in range(intweight.shape[1] // 8):
        for i in range(8):
            packed[:, col] |= intweight[:, col * 8 + order_map[i]] << (i * 4)
    return packed.view(np.int32)


def awq_checkpoint(folder: Path, group_size: int, seed: int = 0):
    model = tiny_llama(seed)
    rng = np.random.default_rng(seed)
    tensors = {k: v.clone() for k, v in model.state_dict().items()}
    expected = dict(tensors)
    for name in linear_names(model):
        d_out, d_in = tensors.pop(f"{name}.weight").shape
        n_groups = d_in // group_size
        q = rng.integers(0, 16, size=(d_in, d_out))
        z = rng.integers(0, 16, size=(n_groups, d_out))
        s = torch.from_numpy(rng.uniform(0.001, 0.05, size=(n_groups, d_out))).half()
        tensors[f"{name}.qweight"] = torch.from_numpy(autoawq_pack(q))
        tensors[f"{name}.qzeros"] = torch.from_numpy(autoawq_pack(z))
        tensors[f"{name}.scales"] = s
        g = torch.arange(d_in) // group_size
        w = s.float()[g] * (torch.from_numpy(q) - torch.from_numpy(z)[g]).float()
        expected[f"{name}.weight"] = w.T.contiguous()
    write_config(folder, model, {"quant_method": "awq", "bits": 4, "group_size": group_size,
                                 "zero_point": True, "version": "gemm",
                                 "modules_to_not_convert": None})
    save_file(tensors, folder / "model.safetensors")
    return expected, tensors


@pytest.mark.parametrize("group_size", [32, 64])
def test_awq_gives_back_scales_times_q_minus_z(tmp_path, group_size):
    expected, tensors = awq_checkpoint(tmp_path / "awq", group_size)
    state, qconfig = read_state_dict(tmp_path / "awq")
    assert qconfig["quant_method"] == "awq"
    assert set(state) == set(expected)
    for key, value in expected.items():
        assert torch.equal(state[key], value.float()), key
    # compressed-tensors' own AutoAWQ reader agrees (its converter, then its decompressor)
    ct = pytest.importorskip("compressed_tensors")
    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.entrypoints.convert.converters.autoawq import AutoAWQConverter

    converter = AutoAWQConverter(bits=4, group_size=group_size, zero_point=True)
    scheme = converter._build_quant_config().config_groups["config_group_0"]
    converted = converter.process({k: v.clone() for k, v in tensors.items()})
    compressor = BaseCompressor.get_value_from_registry("pack-quantized")
    for name in linear_names(tiny_llama()):
        local = {p: converted[f"{name}.{p}"] for p in compressor.compression_param_names(scheme)}
        local["weight_scale"] = local["weight_scale"].float()  # else it computes in float16
        weight = compressor.decompress(local, scheme)["weight"].float()
        assert torch.allclose(weight, state[f"{name}.weight"], rtol=0, atol=1e-6), (ct, name)


def test_awq_errors(tmp_path):
    folder = tmp_path / "awq"
    awq_checkpoint(folder, 32)
    config = json.loads((folder / "config.json").read_text())
    for change, needle in (({"bits": 8}, "AWQ bits 8 are not supported"),
                           ({"version": "gemv"}, "AWQ version 'gemv'"),
                           ({"group_size": 64}, "down_proj: scales has shape (4, 64); expected (2, 64)")):
        qc = {**config["quantization_config"], **change}
        (folder / "config.json").write_text(json.dumps({**config, "quantization_config": qc}))
        one_line_error(folder, needle)


# --------------------------------------------------------------------------- bitsandbytes


@pytest.mark.parametrize("kind,arch", [("nf4-double", "llama"), ("fp4", "llama"),
                                       ("int8", "llama"), ("nf4-double", "gpt2")])
def test_bitsandbytes_matches_its_own_dequantization(tmp_path, kind, arch):
    bnb = pytest.importorskip("bitsandbytes")
    model = tiny_llama() if arch == "llama" else tiny_gpt2()
    dense = {k: v.clone() for k, v in model.state_dict().items()}
    model.save_pretrained(tmp_path / "dense")
    if kind == "int8":
        qc = transformers.BitsAndBytesConfig(load_in_8bit=True)
    else:
        qc = transformers.BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type=kind[:3],
            bnb_4bit_use_double_quant=kind.endswith("double"), bnb_4bit_compute_dtype=torch.float32)
    quantized = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path / "dense", quantization_config=qc, device_map="cpu", dtype=torch.float32)
    quantized.save_pretrained(tmp_path / "bnb")
    state, qconfig = read_state_dict(tmp_path / "bnb")
    assert qconfig["quant_method"] == "bitsandbytes"
    assert set(state) == set(dense)
    names = linear_names(model) if arch == "llama" else conv1d_names(model)
    for name in names:
        param = quantized.get_submodule(name).weight
        if kind == "int8":  # LLM.int8 row-wise absmax: W = CB * SCB / 127
            own = param.data.float() * param.SCB.float()[:, None] / 127
            step = param.SCB.float()[:, None] / 127
            # within half a step of the original, plus float16 rounding (bitsandbytes casts
            # the weight to float16 before quantizing it)
            bound = step / 2 + dense[f"{name}.weight"].abs() * 2.0 ** -11 + 1e-7
            assert bool(((state[f"{name}.weight"] - dense[f"{name}.weight"]).abs()
                         <= bound).all()), name
        else:  # the in-memory quant state, not the one read back from disk
            own = bnb.functional.dequantize_4bit(param.data, param.quant_state).float()
        if arch == "gpt2":  # bitsandbytes holds Conv1D's [in, out] weight as [out, in]
            own = own.T
        assert torch.allclose(state[f"{name}.weight"], own, rtol=0, atol=1e-6), name
        error = (state[f"{name}.weight"] - dense[f"{name}.weight"]).norm()
        assert 0 < error < 0.2 * dense[f"{name}.weight"].norm(), name
    for key in set(dense) - {f"{n}.weight" for n in names}:
        assert torch.equal(state[key], dense[key]), key
