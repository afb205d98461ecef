"""Against the production compressor: llmcompressor's SparseGPT 50%, Wanda 50% and GPTQ W4A16
on the exported tiny-mixed, next to lensbias' own compressors on the same calibration tokens.

    python -m benchmarks bench_llmcompressor
    python benchmarks/bench_llmcompressor.py [--setup-only] [--skip-conv1d]

``--setup-only`` makes (or checks) the environment and prints its versions; ``--skip-JOB``
leaves out one llmcompressor job (sparsegpt, wanda, gptq, conv1d). A run takes about 10
minutes on 2 shared cores (environment made once: about 4 minutes), one thread
(``OMP_NUM_THREADS``, default 1) for both sides. Outputs stay in the cache folder,
``llmc-run/`` (the export, the calibration ids, llmcompressor's checkpoints and its log).

llmcompressor is not a dependency of lensbias (it pins transformers and compressed-tensors),
so this script makes its own virtual environment (``$LENSBIAS_BENCH_CACHE``, default
``~/.cache/lensbias-bench``, subfolder ``llmc-venv``; reused when present): ``torch==2.13.0``
first, then llmcompressor with a constraints file that holds torch there (an unpinned torch
would pull several GB of CUDA wheels). llmcompressor runs in that environment, in a
subprocess (``benchmarks/_llmc_worker.py``), on ``lensbias export tiny-mixed --hf``; its
compressed checkpoints come back through ``lensbias.models.load_model`` (compressed-tensors,
dense-saved sparse and ``pack-quantized`` W4A16) and are compared with lensbias'
SparseGPT, Wanda and GPTQ run on the same model with the same calibration sequences:

* pruners: the pruned set's Jaccard (|Z_a ∩ Z_b| / |Z_a ∪ Z_b|, Z = the zeroed entries) and
  agreement (the fraction of entries both keep or both prune), per layer and overall;
* GPTQ: each one's relative Frobenius error against the dense weights, and their distance
  from each other (relative to the dense weights' norm);
* bits per byte on the default held-out slice (code and prose) of every model.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

TORCH_PIN = "torch==2.13.0"
LLMC_PIN = "llmcompressor==0.14.0.1"
"""The release the issue measured (it pins transformers <= 5.17, compressed-tensors 0.19)."""
WORKER = Path(__file__).with_name("_llmc_worker.py")
N_SEQS, SEQ_LEN = 128, 256
"""lensbias' default calibration (``CalibConfig``): 128 code windows of 256 tokens, seed 0."""


def cache_dir() -> Path:
    return Path(os.environ.get("LENSBIAS_BENCH_CACHE", Path.home() / ".cache" / "lensbias-bench"))


def fail(msg: str) -> None:
    """One line, exit 2."""
    print(f"bench_llmcompressor: {msg}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def _pip(py: Path, args: list[str], log: Path) -> None:
    cmd = [str(py), "-m", "pip", "install", "--disable-pip-version-check", *args]
    with log.open("a") as fh:
        fh.write(f"\n$ {' '.join(cmd)}\n")
        fh.flush()
        rc = subprocess.call(cmd, stdout=fh, stderr=subprocess.STDOUT)
    if rc:
        lines = [ln.strip() for ln in log.read_text().splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("ERROR")] or lines[-1:]
        fail(f"pip install {' '.join(args)} failed in {py.parent.parent} ({errors[0][:300]}); "
             f"full log: {log}")


def ensure_venv() -> Path:
    """The llmcompressor environment's python: made once, reused while its marker matches."""
    venv = cache_dir() / "llmc-venv"
    py = venv / "bin" / "python"
    marker = venv / ".lensbias-ready"
    want = f"{TORCH_PIN} {LLMC_PIN}"
    if py.exists() and marker.exists() and marker.read_text().strip() == want:
        return py
    if venv.exists():
        shutil.rmtree(venv)
    venv.parent.mkdir(parents=True, exist_ok=True)
    log = venv.parent / "llmc-venv-install.log"
    log.write_text("")
    print(f"making {venv} (log: {log}) ...", flush=True)
    start = time.perf_counter()
    if subprocess.call([sys.executable, "-m", "venv", str(venv)]):
        fail(f"python -m venv {venv} failed")
    constraints = venv / "constraints.txt"
    constraints.write_text(TORCH_PIN + "\n")
    _pip(py, [TORCH_PIN], log)  # first: the CPU build on local disk, never CUDA
    _pip(py, ["-c", str(constraints), LLMC_PIN], log)
    got = subprocess.run([str(py), "-c", "import torch; print(torch.__version__)"],
                         capture_output=True, text=True).stdout.strip()
    if not got.startswith(TORCH_PIN.split("==")[1]):
        fail(f"torch in {venv} is {got!r}, not {TORCH_PIN}")
    marker.write_text(want + "\n")
    print(f"made {venv} in {time.perf_counter() - start:.0f} s", flush=True)
    return py


def venv_versions(py: Path) -> dict[str, str]:
    code = ("import importlib.metadata as m, json; print(json.dumps({p: m.version(p) for p in "
            "('llmcompressor', 'compressed-tensors', 'transformers', 'torch', 'accelerate')}))")
    return json.loads(subprocess.run([str(py), "-c", code], capture_output=True, text=True,
                                     check=True).stdout)


LENSBIAS_RUNS = [  # (label, method, params): lensbias' counterparts of the three recipes
    ("sparsegpt", "sparsegpt", {"sparsity": 0.5}),
    ("wanda", "wanda", {"sparsity": 0.5}),
    ("gptq", "gptq", {"bits": 4, "group_size": 128, "symmetric": True}),
    ("gptq-act-order", "gptq", {"bits": 4, "group_size": 128, "symmetric": True,
                                "act_order": True}),
]
LLMC_LABELS = {"sparsegpt": "SparseGPT 50%", "wanda": "Wanda 50%", "gptq": "GPTQ W4A16"}


def export_tiny_mixed(folder: Path) -> None:
    """``lensbias export tiny-mixed --hf FOLDER`` (the CLI, as a user runs it)."""
    cmd = [sys.executable, "-m", "lensbias", "export", "tiny-mixed", "--hf", str(folder), "--force"]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode:
        fail(f"{' '.join(cmd[2:])} failed: {(res.stderr or res.stdout).strip().splitlines()[-1:]}")
    print(res.stdout.strip(), flush=True)


def run_llmcompressor(py: Path, model_dir: Path, calib: Path, out: Path, jobs: list[str],
                      threads: int) -> dict[str, dict]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               HF_DATASETS_OFFLINE="1", PATH=f"{py.parent}:{env.get('PATH', '')}")
    shutil.rmtree(out, ignore_errors=True)  # never read a previous run's checkpoints
    out.mkdir(parents=True)
    log = out / "llmcompressor.log"
    print(f"llmcompressor ({', '.join(jobs)}) in {py.parent.parent}; log: {log}", flush=True)
    with log.open("w") as fh:
        proc = subprocess.Popen([str(py), str(WORKER), str(model_dir), str(calib), str(out), *jobs],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=env)
        assert proc.stdout is not None
        for line in proc.stdout:  # llmcompressor's own logging goes to the log only
            fh.write(line)
            fh.flush()
            if line.startswith("[llmcompressor]"):
                print("  " + line.rstrip(), flush=True)
        rc = proc.wait()
    if rc:
        tail = [ln for ln in log.read_text().splitlines() if ln.strip()][-1:]
        fail(f"llmcompressor worker exited {rc} ({tail[0][:300] if tail else 'no output'}); "
             f"full log: {log}")
    return {j: json.loads((out / f"{j}.json").read_text()) for j in jobs}


def mask_stats(views, a, b) -> dict[str, float]:
    """Pruned-set Jaccard and agreement of two pruned copies of ``dense`` over ``views``."""
    inter = union = agree = total = zeros_a = zeros_b = 0
    for v in views:
        za, zb = v.read(a) == 0, v.read(b) == 0
        inter += int((za & zb).sum())
        union += int((za | zb).sum())
        agree += int((za == zb).sum())
        total += za.numel()
        zeros_a += int(za.sum())
        zeros_b += int(zb.sum())
    return {"jaccard": inter / max(union, 1), "agreement": agree / max(total, 1),
            "sparsity_a": zeros_a / total, "sparsity_b": zeros_b / total}


def weight_stats(views, dense, a, b) -> dict[str, float]:
    """Relative Frobenius errors against the dense weights, and between the two copies."""
    import torch

    sq_w = sq_a = sq_b = sq_ab = 0.0
    same = total = 0
    for v in views:
        w, wa, wb = v.read(dense).double(), v.read(a).double(), v.read(b).double()
        sq_w += float((w ** 2).sum())
        sq_a += float(((wa - w) ** 2).sum())
        sq_b += float(((wb - w) ** 2).sum())
        sq_ab += float(((wa - wb) ** 2).sum())
        same += int(torch.isclose(wa, wb, rtol=1e-4, atol=1e-7).sum())
        total += w.numel()
    return {"rel_err_a": (sq_a / sq_w) ** 0.5, "rel_err_b": (sq_b / sq_w) ** 0.5,
            "rel_dist_ab": (sq_ab / sq_w) ** 0.5, "same_value": same / total}


def main() -> None:
    py = ensure_venv()
    versions = venv_versions(py)
    if "--setup-only" in sys.argv:
        print(json.dumps(versions))
        return
    threads = int(os.environ.get("OMP_NUM_THREADS", "1") or 1)
    import torch

    torch.set_num_threads(threads)
    import importlib.metadata as md

    from lensbias.compress import CalibConfig, Recipe, compress
    from lensbias.compress.calib import calibration_tokens, tokens_fingerprint
    from lensbias.compress.linear import linear_views
    from lensbias.compress.measure import HELD_OUT_SLICE, model_bits_per_byte
    from lensbias.models import load_model

    work = cache_dir() / "llmc-run"
    work.mkdir(parents=True, exist_ok=True)
    model_dir = work / "tiny-mixed-hf"
    export_tiny_mixed(model_dir)
    dense = load_model(str(model_dir))
    calib_cfg = CalibConfig("code", n_seqs=N_SEQS, seq_len=SEQ_LEN)
    tokens = calibration_tokens(dense, calib_cfg)
    builtin = calibration_tokens(load_model("tiny-mixed"), calib_cfg)
    if not torch.equal(tokens, builtin):
        fail("the exported tokenizer draws other calibration windows than tiny-mixed's")
    fingerprint = tokens_fingerprint(tokens)
    calib = work / "calib-code.json"
    calib.write_text(json.dumps({"sha256": fingerprint, "input_ids": tokens.tolist()}))

    jobs = [j for j in ("sparsegpt", "wanda", "gptq", "conv1d")
            if not any(a == f"--skip-{j}" for a in sys.argv)]
    llmc = run_llmcompressor(py, model_dir, calib, work / "out", jobs, threads)

    lb: dict[str, object] = {}
    lb_seconds: dict[str, float] = {}
    for label, method, params in LENSBIAS_RUNS:
        start = time.perf_counter()
        result = compress(dense, Recipe(method, params, calib=calib_cfg))
        lb_seconds[label] = time.perf_counter() - start
        if result.provenance["calib_tokens_sha256"] != fingerprint:
            fail(f"lensbias {label} calibrated on other tokens than llmcompressor")
        lb[label] = result.lm
        print(f"lensbias {label}: {lb_seconds[label]:.1f} s", flush=True)
    loaded = {j: load_model(str(work / "out" / j)) for j in ("sparsegpt", "wanda", "gptq")
              if j in llmc}

    views = [v for v in linear_views(dense.model) if v.group in ("attn", "mlp")]
    layers = sorted({v.layer for v in views})
    print(f"\n## Against llmcompressor (tiny-mixed exported as OPT; calibration: {N_SEQS} "
          f"code windows x {SEQ_LEN} tokens, seed 0, sha256 {fingerprint[:12]}; "
          f"{threads} thread(s), {platform.machine()})")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items())
          + f" (llmcompressor venv); lensbias {md.version('lensbias')}, transformers "
            f"{md.version('transformers')}, torch {torch.__version__} (lensbias venv)")
    for j in ("sparsegpt", "wanda"):
        if j not in loaded:
            continue
        print(f"\n{LLMC_LABELS[j]}: zeroed entries of W_Q, W_K, W_V, W_O, W_in, W_out, "
              "llmcompressor (a) vs lensbias (b)\n")
        print("| layer | Jaccard | agreement | sparsity llmcompressor | sparsity lensbias |")
        print("| --- | --- | --- | --- | --- |")
        for layer in [*layers, None]:
            sel = [v for v in views if layer is None or v.layer == layer]
            st = mask_stats(sel, loaded[j].model, lb[j].model)
            name = "all" if layer is None else str(layer)
            print(f"| {name} | {st['jaccard']:.3f} | {st['agreement']:.3f} | "
                  f"{st['sparsity_a']:.3f} | {st['sparsity_b']:.3f} |")
        by_kind = {}
        for kind in ("W_Q", "W_K", "W_V", "W_O", "W_in", "W_out"):
            sel = [v for v in views if v.param.endswith(kind)]
            by_kind[kind] = mask_stats(sel, loaded[j].model, lb[j].model)["jaccard"]
        print("\nJaccard by matrix: " + ", ".join(f"{k} {v:.3f}" for k, v in by_kind.items()))
    if "gptq" in loaded:
        print("\nGPTQ W4A16 (int4 symmetric, groups of 128): relative Frobenius error against "
              "the dense weights\n")
        print("| layer | llmcompressor | lensbias gptq | lensbias gptq act-order | "
              "llmcompressor vs lensbias (distance, same value) | "
              "llmcompressor vs lensbias act-order |")
        print("| --- | --- | --- | --- | --- | --- |")
        for layer in [*layers, None]:
            sel = [v for v in views if layer is None or v.layer == layer]
            s1 = weight_stats(sel, dense.model, loaded["gptq"].model, lb["gptq"].model)
            s2 = weight_stats(sel, dense.model, loaded["gptq"].model, lb["gptq-act-order"].model)
            name = "all" if layer is None else str(layer)
            print(f"| {name} | {s1['rel_err_a']:.4f} | {s1['rel_err_b']:.4f} | "
                  f"{s2['rel_err_b']:.4f} | {s1['rel_dist_ab']:.4f}, {s1['same_value']:.1%} | "
                  f"{s2['rel_dist_ab']:.4f}, {s2['same_value']:.1%} |")
    print(f"\nbits per byte, held-out slice {HELD_OUT_SLICE}\n")
    print("| model | code | prose | seconds to compress |")
    print("| --- | --- | --- | --- |")
    rows = [("dense (exported tiny-mixed)", dense, None)]
    for j in ("sparsegpt", "wanda", "gptq"):
        if j in loaded:
            rows.append((f"llmcompressor {LLMC_LABELS[j]}", loaded[j], llmc[j]["seconds"]))
        rows.append((f"lensbias {j}" + (" (4 bits, groups of 128, symmetric)" if j == "gptq"
                                        else " 50%"), lb[j], lb_seconds[j]))
    rows.append(("lensbias gptq act-order", lb["gptq-act-order"], lb_seconds["gptq-act-order"]))
    for name, lm, secs in rows:
        bpb = model_bits_per_byte(lm)
        print(f"| {name} | {bpb['code']:.3f} | {bpb['prose']:.3f} | "
              f"{'—' if secs is None else f'{secs:.0f}'} |", flush=True)
    if "conv1d" in llmc:
        c = llmc["conv1d"]
        print(f"\nConv1D trap: SparseGPT 50% (targets Linear, lm_head ignored) on a random "
              f"2-layer GPT-2 ({', '.join(c['layer_classes'])} modules): {c['tensors_changed']} "
              f"tensors changed, block weights {c['block_weight_zero_fraction']:.1%} zero")


if __name__ == "__main__":
    main()
