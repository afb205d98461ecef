"""Runs inside bench_llmcompressor's own virtual environment (llmcompressor, its transformers),
never in lensbias' (it imports no lensbias). One job per call of ``oneshot``:

    python _llmc_worker.py MODEL_DIR CALIB_JSON OUT_DIR JOB [JOB ...]

JOB is ``sparsegpt`` (SparseGPT 50%), ``wanda`` (Wanda 50%), ``gptq`` (GPTQ W4A16) or
``conv1d`` (SparseGPT 50% on a small random GPT-2, whose layers are transformers' Conv1D:
the trap). CALIB_JSON holds the calibration token ids (``{"input_ids": [[...], ...]}``),
the very windows lensbias' compressors see. Each job saves ``OUT_DIR/JOB`` with
``save_compressed=True`` and writes ``OUT_DIR/JOB.json`` (seconds, versions, what changed).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch

SPARSITY = 0.5


def modifier(job: str):
    from llmcompressor.modifiers.pruning import SparseGPTModifier, WandaPruningModifier
    from llmcompressor.modifiers.quantization import GPTQModifier

    # The pruners match ignore against "lm_head." (a trailing dot): a plain "lm_head" does
    # not keep them off the head (measured: it pruned the tied head and embedding), the
    # regular expression their docstring gives does.
    if job in ("sparsegpt", "conv1d"):  # llmcompressor's defaults: blocks of 128, damping 1%
        return SparseGPTModifier(sparsity=SPARSITY, mask_structure="0:0", targets=["Linear"],
                                 ignore=["re:.*lm_head"])
    if job == "wanda":
        return WandaPruningModifier(sparsity=SPARSITY, mask_structure="0:0", targets=["Linear"],
                                    ignore=["re:.*lm_head"])
    if job == "gptq":  # the preset: int4 symmetric, groups of 128, actorder static (default)
        return GPTQModifier(targets="Linear", scheme="W4A16", ignore=["lm_head"])
    raise SystemExit(f"unknown job {job!r}")


def tiny_gpt2(model_dir: Path, out: Path) -> Path:
    """A random GPT-2 (Conv1D layers) with the exported model's vocabulary and tokenizer."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(model_dir)
    cfg = GPT2Config(vocab_size=len(tok), n_positions=256, n_embd=64, n_layer=2, n_head=2)
    folder = out / "gpt2-dense"
    GPT2LMHeadModel(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def run(job: str, model_dir: Path, ids: list[list[int]], out: Path) -> dict:
    from datasets import Dataset
    from llmcompressor import oneshot
    from transformers import AutoModelForCausalLM

    source = tiny_gpt2(model_dir, out) if job == "conv1d" else model_dir
    ids = ids[:16] if job == "conv1d" else ids
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    kinds = sorted({type(m).__name__ for m in model.modules()
                    if type(m).__name__ in ("Linear", "Conv1D")})
    data = Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * len(r) for r in ids]})
    start = time.perf_counter()
    model = oneshot(model=model, dataset=data, recipe=modifier(job), max_seq_length=len(ids[0]),
                    num_calibration_samples=len(ids), batch_size=1)
    seconds = time.perf_counter() - start
    after = model.state_dict()
    changed = sorted(k for k, v in before.items()
                     if k in after and after[k].shape == v.shape and not torch.equal(after[k], v))
    weights = [k for k in before if k.endswith(".weight") and before[k].dim() == 2
               and "wte" not in k and "wpe" not in k and "embed" not in k and "lm_head" not in k]
    zeros = sum(int((after[k] == 0).sum()) for k in weights if k in after
                and after[k].shape == before[k].shape)
    total = sum(before[k].numel() for k in weights)
    model.save_pretrained(out / job, save_compressed=True)
    save_tokenizer(source, out / job)
    import importlib.metadata as md

    return {"job": job, "seconds": seconds, "n_seqs": len(ids), "seq_len": len(ids[0]),
            "layer_classes": kinds, "tensors_changed": len(changed),
            "changed_examples": changed[:6], "block_weight_zero_fraction": zeros / max(total, 1),
            "threads": torch.get_num_threads(),
            "versions": {p: md.version(p) for p in ("llmcompressor", "compressed-tensors",
                                                   "transformers", "torch")}}


def save_tokenizer(source: Path, folder: Path) -> None:
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(source).save_pretrained(folder)


def main() -> None:
    model_dir, calib, out, *jobs = sys.argv[1:]
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1") or 1))
    ids = json.loads(Path(calib).read_text())["input_ids"]
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    for job in jobs:
        print(f"[llmcompressor] {job} ...", flush=True)
        record = run(job, Path(model_dir), ids, out_dir)
        (out_dir / f"{job}.json").write_text(json.dumps(record, indent=2) + "\n")
        print(f"[llmcompressor] {job}: {record['seconds']:.0f} s, {record['tensors_changed']} "
              f"tensors changed, block weights {record['block_weight_zero_fraction']:.1%} zero",
              flush=True)


if __name__ == "__main__":
    main()
