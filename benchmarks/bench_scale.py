"""How `lensbias diff` scales with model size: every stage on random-weight Llama-shaped
transformers checkpoints from d_model 512 to 2048 (0.92B parameters), on a small token budget,
with per-stage time and peak memory, fitted growth exponents, the store's bytes per token,
and a check that probes and geometry read the store in bounded batches.

    python -m benchmarks bench_scale                                  # the default ladder
    python benchmarks/bench_scale.py --sizes 512x8,1024x12 --threads 1
    python benchmarks/bench_scale.py --max-params 5e8 --tokens 2000 --hooks 4
    python benchmarks/bench_scale.py --no-ladder --memory-tokens 5000,20000,60000
    python benchmarks/bench_scale.py --no-ladder --memory-tokens 20000,60000 --probe-batch-mib 48
    python benchmarks/bench_scale.py --concepts all --tokens 2000 --sae-tokens 4096
    python benchmarks/bench_scale.py --no-ladder --match-widths 256,512,1024,1536,2048

Each size is a ``LlamaConfig`` + ``LlamaForCausalLM(config)`` random init (transformers'
0.02-std init, seed 0; RMSNorm, rotary, SwiGLU with d_mlp ~2.75 d, d_head 64, grouped-query
attention with a quarter as many key/value heads; untied embeddings) over the built-in BPE
tokenizer (``tiny-mixed``'s, 4,096 tokens, ``to_pretrained``), saved with ``save_pretrained``
into a temporary folder. Nothing is downloaded.

For each size a fresh subprocess runs the stages of ``lensbias diff`` (``diff._run_diff``)
through the functions that stage calls:

  load       ``model_pair.resolve_model(folder)`` (transformers -> TransformerLens, float32)
  compress   ``model_pair.compress_on_the_fly``: Wanda 50% calibrated on ``--calib-seqs``
             code windows of ``--calib-len`` tokens; B is saved to disk, as diff does
  cache      ``model_pair.cache_pair``: A and B, ``--hooks`` evenly spaced residual streams
             plus ``blocks.0.hook_resid_pre`` (``diff._cache_hooks``), ``--dtype`` storage
  probes     ``diff._probes`` (``ProbePair``, diff's defaults; ``--concepts``: by default
             upos, deprel, token_kind, identifier_role, not every label set, for time)
  sae        ``diff._sae`` on the middle cached hook (3 TopK SAEs of ``--sae-tokens`` each,
             alignment, feature survival)
  geometry   ``diff._geometry`` (``compare_geometry`` on the chosen hooks)
  behaviour  ``behaviour.loss.compare_behaviour`` on the cached windows, ``with_bpb=False``;
             bits per byte on the fixed held-out slice (``diff._behaviour`` always measures
             it) is timed apart as ``bpb`` for sizes up to ``--bpb-max-params``

Per stage: seconds, and peak RSS growth (VmHWM after ``/proc/self/clear_refs`` at the
stage's start, minus VmRSS then). ``build`` (random init + ``save_pretrained``) is not a
diff stage and is reported apart. time(x) ~ c x^k: k is the least-squares slope of log time
on log parameters (and on log d_model) over the sizes that ran.

The memory check (``--memory-tokens``) caches one size (``--memory-size``) on growing token
counts, then runs the probe and geometry stages each in its own fresh subprocess, beside the
rows ``ProbePair.fit`` gathers per hook. ``--probe-batch-mib`` runs the probes again at
smaller read budgets (``ProbeConfig.batch_bytes``: the concepts of a hook are read and
fitted in groups within it). ``--match-widths`` times the SAE stage's one-to-one feature
matching (a d_sae x d_sae cosine matrix and its assignment) alone.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

try:
    from benchmarks.bench_cache import _device_line, _load_line, _vm
    from benchmarks.bench_scaling import slope
except ImportError:  # run as a script: benchmarks/ itself is on sys.path
    from bench_cache import _device_line, _load_line, _vm
    from bench_scaling import slope

DEFAULT_SIZES = "512x8,1024x12,1536x16,2048x20"
STAGES = ("load", "compress", "cache", "probes", "sae", "geometry", "behaviour", "bpb")
DATASETS = ("ud-ewt", "python-stdlib")
CONCEPTS = ("upos", "deprel", "token_kind", "identifier_role")
"""The default probe set: two prose and two code label sets (``lensbias diff`` probes every
token-level one, 15 on this budget; probe time grows about linearly with their number)."""
MIB = 1 << 20
BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}


# ---------------------------------------------------------------- models

def llama_shape(d_model: int, n_layers: int) -> dict:
    """The LlamaConfig fields of one size: d_head 64, SwiGLU d_mlp ~2.75 d (a multiple of
    128), a quarter as many key/value heads as query heads."""
    heads = max(1, d_model // 64)
    return {"hidden_size": d_model, "num_hidden_layers": n_layers,
            "num_attention_heads": heads, "num_key_value_heads": max(1, heads // 4),
            "intermediate_size": int(round(2.75 * d_model / 128)) * 128}


def count_params(d_model: int, n_layers: int, vocab: int = 4096) -> int:
    """Parameters of the Llama of ``llama_shape`` (untied embeddings), without building it."""
    s = llama_shape(d_model, n_layers)
    kv = s["num_key_value_heads"] * 64
    attn = 2 * d_model * d_model + 2 * d_model * kv
    mlp = 3 * d_model * s["intermediate_size"]
    return n_layers * (attn + mlp + 2 * d_model) + 2 * vocab * d_model + d_model


def build_checkpoint(d_model: int, n_layers: int, folder: Path, seed: int = 0) -> int:
    """A random-weight LlamaForCausalLM saved with its tokenizer into ``folder``; returns its
    parameter count."""
    import transformers

    from lensbias.models import load_model

    tok = load_model("tiny-mixed").tokenizer
    config = transformers.LlamaConfig(vocab_size=tok.vocab_size, max_position_embeddings=2048,
                                      bos_token_id=tok.bos_id, eos_token_id=tok.bos_id,
                                      tie_word_embeddings=False, **llama_shape(d_model, n_layers))
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(config).eval()
    n = sum(p.numel() for p in model.parameters())
    model.save_pretrained(folder)
    tok.to_pretrained().save_pretrained(folder)
    del model
    gc.collect()
    return n


def chosen_hooks(n_layers: int, n_hooks: int) -> tuple[str, ...]:
    """``n_hooks`` residual streams after evenly spaced blocks, first and last included."""
    layers = sorted({int(round(x)) for x in np.linspace(0, n_layers - 1, min(n_hooks, n_layers))})
    return tuple(f"blocks.{i}.hook_resid_post" for i in layers)


def budget_dataset(tokenizer, n_tokens: int, seed: int = 0):
    """About ``n_tokens / 2`` real tokens of whole examples from each of ud-ewt and
    python-stdlib, merged as ``lensbias diff`` merges them (``merged_dataset``). The examples
    are drawn in a seeded random order and kept in dataset order, so a small budget still
    spans many source documents (the probes split train and test by document)."""
    from lensbias.concepts.schema import ConceptDataset
    from lensbias.model_pair import merged_dataset

    full = merged_dataset(list(DATASETS), None, None)
    keep = []
    for name in DATASETS:
        index = [i for i, ex in enumerate(full.examples) if ex.id.split("/", 1)[0] == name]
        got = 0
        for i in np.random.default_rng(seed).permutation(index):
            if got >= n_tokens / 2:
                break
            keep.append(int(i))
            got += sum(not s for s in tokenizer.encode(full.examples[i].text).special)
    return ConceptDataset(f"{full.name}~{n_tokens}", tuple(full.examples[i] for i in sorted(keep)))


# ---------------------------------------------------------------- one stage, measured

class Meter:
    """Seconds and peak RSS growth of each stage, in order."""

    def __init__(self) -> None:
        self.rows: dict[str, dict] = {}

    def run(self, name: str, fn):
        gc.collect()
        before = _vm("VmRSS")
        try:  # reset the peak (VmHWM) to the current RSS, so it covers this stage only
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pass
        start = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - start
        peak = _vm("VmHWM")
        self.rows[name] = {"seconds": seconds, "rss_before": before, "peak": peak,
                           "growth": max(0, peak - before)}
        print(f"  [{name}] {seconds:.1f} s, peak RSS +{(peak - before) / MIB:.0f} MiB "
              f"(from {before / MIB:.0f})", file=sys.stderr, flush=True)
        return out


def _diff_config(args_concepts: tuple[str, ...] | None, hooks: tuple[str, ...], sae_tokens: int,
                 device: str):
    from lensbias.diff import DiffConfig

    return DiffConfig(datasets=DATASETS, concepts=args_concepts, hooks=hooks,
                      sae_tokens=sae_tokens, device=device)


def _acts_bytes(path: Path) -> int:
    """Bytes the activation datasets (``acts/<hook>``) take in the file."""
    import h5py

    with h5py.File(path, "r") as f:
        return sum(ds.id.get_storage_size() for ds in f["acts"].values())


def size_child(job: dict) -> dict:
    """Every stage of one size (the ``--child`` subprocess); returns the JSON row."""
    from lensbias import diff
    from lensbias.behaviour.loss import compare_behaviour
    from lensbias.compress import CalibConfig, Recipe
    from lensbias.compress.measure import model_bits_per_byte
    from lensbias.model_pair import cache_pair, check_same_tokenizer, compress_on_the_fly, \
        resolve_model
    from lensbias.store import ActivationStore, CacheConfig

    folder, work = Path(job["folder"]), Path(job["work"])
    stages = job["stages"]
    meter = Meter()
    a = meter.run("load", lambda: resolve_model(str(folder), job["device"]))
    hooks = chosen_hooks(a.model.cfg.n_layers, job["hooks"])
    config = _diff_config(job["concepts"], hooks, job["sae_tokens"], job["device"])
    data = budget_dataset(a.tokenizer, job["tokens"])
    recipe = Recipe("wanda", {"sparsity": 0.5},
                    calib=CalibConfig("code", n_seqs=job["calib_seqs"], seq_len=job["calib_len"]))
    compressed = meter.run("compress", lambda: compress_on_the_fly(a, recipe, work / "model-b"))
    b = compressed.lm
    check_same_tokenizer(a, b, data.examples[0].text)
    cache_cfg = CacheConfig(hooks=diff._cache_hooks(a, config), dtype=job["dtype"],
                            device=job["device"])
    path_a, path_b = meter.run("cache", lambda: cache_pair(a, b, data, work / "cache", cache_cfg))
    row = {"d_model": a.model.cfg.d_model, "n_layers": a.model.cfg.n_layers,
           "params_tl": sum(p.numel() for p in a.model.parameters()),
           "hooks": list(cache_cfg.hooks)}
    with ActivationStore(path_a) as store_a, ActivationStore(path_b) as store_b:
        row.update(n_tokens=store_a.n_tokens, n_examples=len(data.examples),
                   file_bytes=path_a.stat().st_size, n_hooks_stored=len(store_a.hooks),
                   acts_bytes=_acts_bytes(path_a))
        if "probes" in stages:
            probes = meter.run("probes", lambda: diff._probes(store_a, store_b, config))
            row["probe_rows"] = len(probes.get("rows", []))
            row["probe_skipped"] = len(probes.get("skipped", []))
            row["concepts"] = sorted({r["concept"] for r in probes.get("rows", [])})
        if "sae" in stages:
            probed = [h for h in store_a.hooks if h != "blocks.0.hook_resid_pre"]
            hook = probed[len(probed) // 2]
            row["sae_hook"] = hook
            meter.run("sae", lambda: diff._sae(store_a, store_b, hook, config, work))
        if "geometry" in stages:
            meter.run("geometry", lambda: diff._geometry(store_a, store_b, config))
        if "behaviour" in stages:
            meter.run("behaviour", lambda: compare_behaviour(a, b, data, store_a, with_bpb=False,
                                                             seed=config.seed))
        if "bpb" in stages and row["params_tl"] <= job["bpb_max_params"]:
            meter.run("bpb", lambda: (model_bits_per_byte(a), model_bits_per_byte(b)))
    row["stages"] = meter.rows
    return row


def gathered_rows(store_a, config) -> int:
    """The rows ``ProbePair.fit`` gathers per hook and model (its ``needed``): every
    concept's capped train and test selection plus the alignment rows, computed with the
    same selection functions, without fitting anything."""
    from lensbias.probes import pair
    from lensbias.probes.pair import ProbeConfig

    cfg = ProbeConfig(concepts=config.concepts, seed=config.seed)
    groups = store_a.tokens()["example"].astype(np.int64)
    test = pair.grouped_split(pair.document_ids(store_a, groups), cfg.test_fraction,
                              seed=cfg.seed)
    parts = [pair._cap(np.flatnonzero(~test), groups, cfg.max_train,
                       np.random.default_rng([cfg.seed, 4]))]
    for concept in pair._concepts(store_a, cfg):
        tr, te = pair.select_tokens(store_a.labels(concept), groups, test, cfg)
        parts += [tr, te]
    return int(len(np.unique(np.concatenate(parts))))


def memory_child(job: dict) -> dict:
    """One stage (probes or geometry) on caches made earlier, in a fresh process."""
    from dataclasses import replace

    from lensbias import diff
    from lensbias.store import ActivationStore

    work = Path(job["work"])
    meter = Meter()
    with ActivationStore(work / "cache" / "a.h5") as store_a, \
            ActivationStore(work / "cache" / "b.h5") as store_b:
        hooks = tuple(h for h in store_a.hooks if h != "blocks.0.hook_resid_pre")
        config = _diff_config(job["concepts"], hooks, 2048, job["device"])
        if job.get("batch_bytes"):
            config = replace(config, probe_batch_bytes=int(job["batch_bytes"]))
        fn = {"probes": lambda: diff._probes(store_a, store_b, config),
              "geometry": lambda: diff._geometry(store_a, store_b, config)}[job["stage"]]
        meter.run(job["stage"], fn)
        n, d = store_a.n_tokens, store_a.d(hooks[0])
        gathered = gathered_rows(store_a, config) if job["stage"] == "probes" else None
    return {"n_tokens": n, "d_model": d, "n_hooks": len(hooks), **meter.rows[job["stage"]],
            "gathered": gathered}


# ---------------------------------------------------------------- parent

def _child(job: dict, threads: int) -> dict | None:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(job),
           "--threads", str(threads)]
    done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=None, text=True, env=env,
                          check=False)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if done.returncode or not lines:
        print(f"  child failed (exit {done.returncode})", flush=True)
        return None
    return json.loads(lines[-1])


def parse_sizes(text: str) -> list[tuple[int, int]]:
    out = []
    for part in text.split(","):
        d, _, layers = part.strip().partition("x")
        out.append((int(d), int(layers)))
    return out


def ladder(args, root: Path) -> None:
    sizes = [s for s in parse_sizes(args.sizes) if count_params(*s) <= args.max_params]
    skipped = [s for s in parse_sizes(args.sizes) if s not in sizes]
    stages = [s for s in STAGES if s not in args.skip]
    print(f"\nladder: {', '.join(f'{d}x{l}' for d, l in sizes)} (d_model x layers)"
          + (f"; over --max-params {args.max_params:.3g}: "
             f"{', '.join(f'{d}x{l}' for d, l in skipped)}" if skipped else ""))
    print(f"{args.tokens} tokens ({', '.join(DATASETS)}), {args.hooks} hooks + "
          f"blocks.0.hook_resid_pre, {args.dtype} store, Wanda 50% on {args.calib_seqs} x "
          f"{args.calib_len} code tokens, SAE {args.sae_tokens} tokens x 3, concepts: "
          f"{','.join(args.concepts) if args.concepts else 'all'}; each size in a fresh "
          f"subprocess, {args.threads} thread(s)", flush=True)
    rows = []
    started = time.perf_counter()
    for d, layers in sizes:
        if rows and args.time_budget:
            last = rows[-1]
            spent = time.perf_counter() - started
            guess = (last["build_s"] + sum(s["seconds"] for s in last["stages"].values())) \
                * count_params(d, layers) / last["params"]
            if spent + guess > args.time_budget:
                print(f"\nstopped before {d}x{layers}: {spent:.0f} s spent, and the previous "
                      f"size's time x the parameter ratio predicts {guess:.0f} s more, past "
                      f"--time-budget {args.time_budget:.0f} s", flush=True)
                break
        folder = root / f"scale-d{d}-l{layers}"
        print(f"\n== d_model {d}, {layers} layers (~{count_params(d, layers) / 1e6:.0f}M "
              f"params); {_load_line()}", flush=True)
        start = time.perf_counter()
        n = build_checkpoint(d, layers, folder)
        build_s = time.perf_counter() - start
        ckpt = sum(p.stat().st_size for p in folder.iterdir())
        print(f"  [build, not a diff stage] {build_s:.1f} s, {n / 1e6:.1f}M params, "
              f"checkpoint {ckpt / 1e9:.2f} GB", flush=True)
        gc.collect()
        work = root / f"work-d{d}"
        work.mkdir()
        job = {"kind": "size", "folder": str(folder), "work": str(work), "stages": stages,
               "device": args.device, "hooks": args.hooks, "tokens": args.tokens,
               "dtype": args.dtype, "concepts": args.concepts, "sae_tokens": args.sae_tokens,
               "calib_seqs": args.calib_seqs, "calib_len": args.calib_len,
               "bpb_max_params": args.bpb_max_params}
        row = _child(job, args.threads)
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
        if row is None:
            break
        row["build_s"] = build_s
        row["params"] = n  # the transformers model's (TransformerLens adds zero biases)
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "stages"}), flush=True)
    if rows:
        report(rows, args)


def report(rows: list[dict], args) -> None:
    names = [s for s in STAGES if any(s in r["stages"] for r in rows)]
    print(f"\nper-stage seconds / peak RSS growth (MiB); {rows[0]['n_tokens']} tokens cached "
          f"per model ({rows[0]['n_examples']} examples); {_load_line()} (after)")
    head = f"{'params M':>9}{'d_model':>8}{'layers':>7}{'build s':>8}"
    head += "".join(f"{name:>16}" for name in names) + f"{'total s':>9}"
    print(head)
    for r in rows:
        line = f"{r['params'] / 1e6:>9.1f}{r['d_model']:>8}{r['n_layers']:>7}{r['build_s']:>8.1f}"
        for name in names:
            s = r["stages"].get(name)
            line += (f"{s['seconds']:>9.1f} /{s['growth'] / MIB:>5.0f}" if s else f"{'-':>16}")
        total = sum(s["seconds"] for s in r["stages"].values())
        print(line + f"{total:>9.1f}")
    if len(rows) > 1:
        params = [r["params"] for r in rows]
        widths = [r["d_model"] for r in rows]
        print("\nexponent k of time ~ x^k (least squares on log-log, over the sizes that ran):")
        print(f"{'stage':<11}{'vs params':>10}{'vs d_model':>11}{'sizes':>6}")
        for name in names:
            got = [(p, w, r["stages"][name]["seconds"]) for p, w, r in zip(params, widths, rows)
                   if name in r["stages"]]
            if len(got) > 1:
                ps, ws, ts = zip(*got)
                print(f"{name:<11}{slope(ps, ts):>10.2f}{slope(ws, ts):>11.2f}{len(got):>6}")
        tot = [sum(s["seconds"] for k, s in r["stages"].items() if k != "bpb") for r in rows]
        print(f"{'total*':<11}{slope(params, tot):>10.2f}{slope(widths, tot):>11.2f}"
              f"{len(rows):>6}   (*without bpb)")
    b = BYTES[args.dtype]
    print(f"\nstore size ({args.dtype}: {b} bytes per value), A's file:")
    print(f"{'d_model':>8}{'MB per 1M tok per hook':>24}{'tokens':>8}{'hooks':>6}{'file MB':>9}"
          f"{'acts MB':>9}{'acts: MB per 1M tok per hook':>30}{'file: same':>12}")
    for r in rows:
        per_m = r["d_model"] * b
        scale = 1 / r["n_tokens"] / r["n_hooks_stored"]
        print(f"{r['d_model']:>8}{per_m:>24.0f}{r['n_tokens']:>8}{r['n_hooks_stored']:>6}"
              f"{r['file_bytes'] / 1e6:>9.2f}{r['acts_bytes'] / 1e6:>9.2f}"
              f"{r['acts_bytes'] * scale:>30.0f}{r['file_bytes'] * scale:>12.0f}")
    print("(MB per 1M tokens per hook = d_model x bytes per value; measured: the acts/<hook> "
          "datasets' storage and the whole file (labels, token columns and texts included: a "
          "fixed part that small budgets inflate), divided by tokens x hooks)")
    extra = rows[-1]
    if "concepts" in extra:
        print(f"probe rows at the largest size: {extra['probe_rows']} "
              f"({len(extra['concepts'])} concepts x {len(extra['hooks']) - 1} hooks), "
              f"{extra['probe_skipped']} concepts skipped (too few classes or test tokens)")


def memory_check(args, root: Path) -> None:
    d, layers = parse_sizes(args.memory_size)[0]
    counts = [int(s) for s in args.memory_tokens.split(",")]
    budgets = [float(s) for s in args.probe_batch_mib.split(",") if s.strip()]
    print(f"\nbounded-batch check: d_model {d} x {layers} layers; caches of "
          f"{', '.join(map(str, counts))} tokens; the probe and geometry stages each in a fresh "
          f"subprocess (peak RSS growth over the RSS at the stage's start); concepts: "
          f"{','.join(args.concepts) if args.concepts else 'all'}; {_load_line()}", flush=True)
    folder = root / f"mem-d{d}-l{layers}"
    build_checkpoint(d, layers, folder)
    got = []
    for n in counts:
        work = root / f"mem-{n}"
        work.mkdir()
        job = {"kind": "size", "folder": str(folder), "work": str(work), "stages": [],
               "device": args.device, "hooks": args.hooks, "tokens": n, "dtype": args.dtype,
               "concepts": args.concepts, "sae_tokens": args.sae_tokens,
               "calib_seqs": args.calib_seqs, "calib_len": args.calib_len, "bpb_max_params": 0}
        made = _child(job, args.threads)
        if made is None:
            break
        out = {"n_tokens": made["n_tokens"], "cache_s": made["stages"]["cache"]["seconds"],
               "file": made["file_bytes"]}
        for stage in ("probes", "geometry"):
            r = _child({"kind": "memory", "work": str(work), "stage": stage,
                        "device": args.device, "concepts": args.concepts}, args.threads)
            out[stage] = r
        for mib in budgets:                  # the probes again at smaller read budgets
            out[f"probes@{mib}"] = _child({"kind": "memory", "work": str(work),
                                           "stage": "probes", "device": args.device,
                                           "concepts": args.concepts,
                                           "batch_bytes": int(mib * MIB)}, args.threads)
        got.append(out)
        (work / "model-b").exists() and shutil.rmtree(work / "model-b", ignore_errors=True)
    print(f"\n{'tokens':>8}{'A file MB':>10}{'acts f32 MB':>12}{'probes s':>9}{'RSS start':>10}"
          f"{'probes +MiB':>12}{'gathered rows':>14}{'geometry s':>11}{'RSS start':>10}"
          f"{'geometry +MiB':>14}")
    for g in got:
        p, q = g["probes"] or {}, g["geometry"] or {}
        acts = g["n_tokens"] * d * 4 * len(chosen_hooks(layers, args.hooks)) / MIB
        print(f"{g['n_tokens']:>8}{g['file'] / 1e6:>10.1f}{acts:>12.0f}"
              f"{p.get('seconds', float('nan')):>9.1f}{p.get('rss_before', 0) / MIB:>10.0f}"
              f"{p.get('growth', 0) / MIB:>12.0f}{p.get('gathered') or 0:>14}"
              f"{q.get('seconds', float('nan')):>11.1f}"
              f"{q.get('rss_before', 0) / MIB:>10.0f}{q.get('growth', 0) / MIB:>14.0f}")
    for mib in budgets:
        print(f"probes with batch_bytes = {mib:g} MiB (ProbeConfig.batch_bytes; default "
              f"{_default_batch() / MIB:g} MiB above):")
        for g in got:
            p = g.get(f"probes@{mib}") or {}
            print(f"{g['n_tokens']:>8} tokens: {p.get('seconds', float('nan')):.1f} s, "
                  f"peak +{p.get('growth', 0) / MIB:.0f} MiB over "
                  f"{p.get('rss_before', 0) / MIB:.0f}")
    print("(acts f32 MB: every chosen hook of one model loaded whole, float32; gathered rows: "
          "the rows ProbePair.fit reads per hook from each store, its `needed`, from the same "
          "selection functions: each concept's max_train + max_test cap plus max_train "
          "alignment rows)")
    shutil.rmtree(folder, ignore_errors=True)


def _default_batch() -> int:
    from lensbias.probes.pair import ProbeConfig

    return ProbeConfig().batch_bytes


def match_cost(widths: list[int], expansion: int = 8) -> None:
    """Time and peak memory of the SAE stage's one-to-one feature matching, as
    ``FeatureSurvival.compare`` runs it twice (A vs A's second seed, A vs B):
    ``decoder_cosines`` (a d_sae x d_sae float64 matrix) and its ``linear_sum_assignment``,
    on random unit decoder rows (what the ladder's briefly trained SAEs are close to)."""
    from types import SimpleNamespace

    from lensbias.saes.survival import _assign, decoder_cosines

    print(f"\nSAE feature matching (decoder_cosines + _assign, once; the SAE stage runs it "
          f"twice), random decoders, d_sae = {expansion} x d; {_load_line()}")
    print(f"{'d':>6}{'d_sae':>7}{'cosines s':>10}{'assign s':>9}{'peak +MiB':>10}"
          f"{'d_sae^2 f64 MiB':>16}")
    got = []
    meter = Meter()
    for d in widths:
        g = torch.Generator().manual_seed(d)
        a, b = (SimpleNamespace(W_dec=torch.randn(expansion * d, d, generator=g))
                for _ in range(2))
        cos = meter.run(f"cosines d={d}", lambda a=a, b=b: decoder_cosines(a, b))
        meter.run(f"assign d={d}", lambda cos=cos: _assign(cos, 0.7))
        first, second = meter.rows[f"cosines d={d}"], meter.rows[f"assign d={d}"]
        grow = max(first["peak"], second["peak"]) - first["rss_before"]
        got.append((expansion * d, first["seconds"], second["seconds"]))
        print(f"{d:>6}{expansion * d:>7}{first['seconds']:>10.2f}{second['seconds']:>9.2f}"
              f"{grow / MIB:>10.0f}{cos.nbytes / MIB:>16.0f}", flush=True)
        a = b = cos = None
        gc.collect()
    if len(got) > 1:
        n = [x[0] for x in got]
        print(f"exponent k (time ~ d_sae^k): cosines {slope(n, [x[1] for x in got]):.2f}, "
              f"assignment {slope(n, [x[2] for x in got]):.2f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=DEFAULT_SIZES, help="d_model x layers, comma-separated")
    parser.add_argument("--max-params", type=float, default=1.2e9,
                        help="leave out sizes with more parameters")
    parser.add_argument("--tokens", type=int, default=2000, help="tokens cached per model")
    parser.add_argument("--hooks", type=int, default=4, help="residual streams cached and probed")
    parser.add_argument("--dtype", default="bfloat16", choices=sorted(BYTES))
    parser.add_argument("--concepts", default=",".join(CONCEPTS),
                        help="comma-separated label sets to probe, or 'all' (every token-level "
                             "label set, as lensbias diff)")
    parser.add_argument("--sae-tokens", type=int, default=2048,
                        help="training tokens of each of the 3 SAEs")
    parser.add_argument("--calib-seqs", type=int, default=8)
    parser.add_argument("--calib-len", type=int, default=128)
    parser.add_argument("--bpb-max-params", type=float, default=5e7,
                        help="time bits per byte (held-out slice, A and B) up to this size")
    parser.add_argument("--time-budget", type=float, default=None,
                        help="wall seconds for the ladder: a size whose predicted time (the "
                             "previous size's x the parameter ratio) would pass it is not run")
    parser.add_argument("--skip", default="", help="stages to leave out, comma-separated")
    parser.add_argument("--no-ladder", action="store_true",
                        help="skip the ladder (run only --memory-tokens / --match-widths)")
    parser.add_argument("--memory-tokens", default="",
                        help="token counts of the bounded-batch check, e.g. 4000,16000,40000")
    parser.add_argument("--memory-size", default="512x8")
    parser.add_argument("--probe-batch-mib", default="",
                        help="with --memory-tokens: also run the probes at these read budgets "
                             "(MiB, comma-separated; ProbeConfig.batch_bytes)")
    parser.add_argument("--match-widths", default="",
                        help="d_model values for the SAE feature-matching cost, e.g. 512,1024")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    if argv is None:  # `python -m benchmarks bench_scale` leaves the bench names in argv
        argv = [a for a in sys.argv[1:] if not a.startswith("bench_")]
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.child:
        job = json.loads(args.child)
        import transformer_lens  # noqa: F401 (import time is not load time)
        from transformers import LlamaForCausalLM  # noqa: F401
        row = size_child(job) if job["kind"] == "size" else memory_child(job)
        print(json.dumps(row), flush=True)
        return
    args.concepts = None if args.concepts == "all" else tuple(args.concepts.split(","))
    args.skip = tuple(s for s in args.skip.split(",") if s)
    print("command: python benchmarks/bench_scale.py " + " ".join(argv))
    print(_device_line(args.device))
    print(_load_line() + " (before)")
    root = Path(tempfile.mkdtemp(prefix="bench_scale-"))
    try:
        if not args.no_ladder:
            ladder(args, root)
        if args.memory_tokens:
            memory_check(args, root)
        if args.match_widths:
            match_cost([int(w) for w in args.match_widths.split(",")])
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(_load_line() + " (after)")


if __name__ == "__main__":
    main()
