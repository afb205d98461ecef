"""Compression speed on the embedded default: every method at its default level and the
default calibration (128 sequences × 256 tokens), plus model load time.

    python -m benchmarks bench_compress
"""

from __future__ import annotations

import platform
import time

import torch

METHODS = [
    ("magnitude", {"sparsity": 0.5}),
    ("magnitude-global", {"sparsity": 0.5}),
    ("magnitude-neurons", {"sparsity": 0.3}),
    ("magnitude-heads", {"sparsity": 0.25}),
    ("wanda", {"sparsity": 0.5}),
    ("wanda", {"nm": "2:4"}),
    ("sparsegpt", {"sparsity": 0.5}),
    ("sparsegpt", {"nm": "2:4"}),
    ("rtn", {"bits": 4, "group_size": 64}),
    ("gptq", {"bits": 4, "group_size": 64}),
    ("awq", {"bits": 4, "group_size": 64}),
    ("svd", {"rank_ratio": 0.5}),
    ("asvd", {"rank_ratio": 0.5}),
    ("svd-llm", {"rank_ratio": 0.5}),
    ("layer-drop", {"n_drop": 1}),
    ("distill", {"n_layers": 2}),
]


def main(model: str = "tiny-mixed") -> None:
    import transformer_lens  # noqa: F401 (import time is not load time)

    from lensbias.compress import CalibConfig, Recipe, compress
    from lensbias.compress.measure import model_bits_per_byte
    from lensbias.models import load_model

    print(f"device cpu, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    start = time.perf_counter()
    lm = load_model(model)
    print(f"load {model}: {time.perf_counter() - start:.2f} s (TransformerLens already imported)")
    start = time.perf_counter()
    model_bits_per_byte(lm)
    print(f"bits-per-byte evaluation (code + prose): {time.perf_counter() - start:.1f} s")
    print(f"{'method':<18} {'params':<28} {'seconds':>8}")
    for name, params in METHODS:
        calib = CalibConfig("code", n_seqs=512 if name == "distill" else 128, seq_len=256)
        start = time.perf_counter()
        compress(lm, Recipe(name, params, calib=calib))
        print(f"{name:<18} {str(params):<28} {time.perf_counter() - start:>8.1f}", flush=True)


if __name__ == "__main__":
    main()
