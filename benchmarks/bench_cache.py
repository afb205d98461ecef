"""Activation caching throughput (tokens/s) of tiny-mixed, side by side in one process, and the
peak memory of caching growing datasets (each size in a fresh subprocess).

Rows, on the same model and the same real tokens (tokens = stored, non-special tokens):

  (L)  bare forward pass, no hooks, ``return_type=None``, over the real tokens packed into
       full rows of ``window`` tokens, 16 rows per pass (no padding, context crossing
       examples): the physical limit, pre-built tensors
  (a)  bare forward over the old writer's batches (16 windows in dataset order, padded)
  (a2) bare forward over lensbias' batches (windows sorted by length within pools)
  (b)  lensbias ``cache_activations``, default hooks (resid_post of every block), float16,
       end to end (tokenization, fingerprint, labels, HDF5 writes, atomic rename)
  (b1) the same with one hook (``blocks.3.hook_resid_post``)
  (c)  TransformerLens ``run_with_cache`` without ``names_filter`` + every tensor of the
       cache saved to HDF5 with h5py (float32, as the cache holds it)
  (d)  sae-lens ``CacheActivationsRunner`` (one hook, float16, HF-datasets arrow shards) on
       the same token stream packed into 128-token rows; its ratio is also given against
       (a-packed), the bare forward pass on those packed rows (no padding)

Each row is timed ``--repeats`` times, interleaved with the others; the best is reported.
``--threads N`` sets torch's intra-op threads; ``--threads-compare`` times (L) and (b) at 1
and at 2 threads, interleaved.

    python -m benchmarks bench_cache                       # 20k tokens, 10k/100k RSS points
    python benchmarks/bench_cache.py --tokens 50000 --big  # adds the 1M-token RSS point
    python benchmarks/bench_cache.py --no-rss --repeats 5
    python benchmarks/bench_cache.py --no-rss --no-sae --threads-compare
    python benchmarks/bench_cache.py --tokens 5000 --threads-only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

LAST_HOOK = "blocks.3.hook_resid_post"
RSS_HOOK = "blocks.0.hook_resid_post"
"""The RSS runs cache one hook; block 0 lets the forward pass stop after one block (fast),
and memory does not depend on which hook is kept."""
SAE_CTX = 128


def repeated_dataset(lm, name: str, n_tokens: int, base_examples: int = 2000):
    """``name``'s first ``base_examples`` examples, cycled (ids made distinct) until they hold
    at least ``n_tokens`` real tokens under ``lm``'s tokenizer."""
    from lensbias.concepts.registry import load_dataset
    from lensbias.concepts.schema import ConceptDataset

    base = load_dataset(name, max_examples=base_examples)
    counts = [sum(not s for s in lm.tokenizer.encode(ex.text).special) for ex in base.examples]
    examples, total, k = [], 0, 0
    while total < n_tokens:
        for ex, c in zip(base.examples, counts):
            if total >= n_tokens:
                break
            examples.append(replace(ex, id=f"{ex.id}~{k}") if k else ex)
            total += c
        k += 1
    return ConceptDataset(f"{name}x{n_tokens}", tuple(examples), base.source)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _load_line() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} cores"


def _device_line(device: str) -> str:
    what = (torch.cuda.get_device_name(0) if device.startswith("cuda")
            else platform.processor() or platform.machine())
    return f"device {device}, {torch.get_num_threads()} threads, {what}; torch {torch.__version__}"


# ---------------------------------------------------------------- throughput rows

def _bare(model, batches, device):
    def run(_tmp: Path) -> None:
        with torch.inference_mode():
            for tokens in batches:
                model(tokens.to(device), return_type=None)
        _sync(device)
    return run


def _lensbias(lm, dataset, hooks, device):
    from lensbias.store import CacheConfig, cache_activations

    def run(tmp: Path) -> None:
        cache_activations(lm, dataset, tmp / "lensbias.h5",
                          CacheConfig(hooks=hooks, dtype="float16", batch_size=16, device=device))
        _sync(device)
    return run


def _tl_full_cache(model, batches, device):
    import h5py

    def run(tmp: Path) -> None:
        with h5py.File(tmp / "tl.h5", "w") as f, torch.inference_mode():
            for i, tokens in enumerate(batches):
                _, cache = model.run_with_cache(tokens.to(device), return_type=None)
                for name, value in cache.items():
                    f.create_dataset(f"batch{i}/{name}", data=value.cpu().numpy())
    return run


def _sae_lens_setup(lm, rows, device):
    """A runner factory for sae-lens' CacheActivationsRunner on our in-memory model and rows.

    sae-lens loads its model by name (``sae_lens.load_model``); we hand it ours instead with a
    one-line patch of that lookup. The dataset is an in-memory, pre-tokenized HF Dataset.
    """
    import datasets
    import sae_lens.cache_activations_runner as car
    from sae_lens import CacheActivationsRunner, CacheActivationsRunnerConfig

    car.load_model = lambda **_: lm.model
    car.tqdm = lambda iterable, **_: iterable  # keep the table readable
    datasets.disable_progress_bars()
    data = datasets.Dataset.from_dict({"tokens": rows.tolist()})
    n_tok = rows.numel()
    d = lm.model.cfg.d_model

    def run(tmp: Path) -> None:
        cfg = CacheActivationsRunnerConfig(
            dataset_path="in-memory", model_name=lm.name, model_batch_size=16,
            hook_name=LAST_HOOK, d_in=d, training_tokens=n_tok, context_size=SAE_CTX,
            new_cached_activations_path=str(tmp / "sae"), shuffle=False, dtype="float16",
            device=device, prepend_bos=False, streaming=False,
            buffer_size_gb=n_tok * d * 2 / 1e9 + 1e-6)  # one buffer = the whole run
        CacheActivationsRunner(cfg, override_dataset=data).run()
        _sync(device)
    return run


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _inputs(lm, dataset, window: int):
    """Windows; the old writer's batches; lensbias' length-sorted batches (as the writer
    makes them, pool by pool); and the stored tokens packed into full rows of ``window``,
    16 rows per pass."""
    from lensbias.store import writer
    from lensbias.store.writer import _batches, _pools, iter_windows, length_batches, pad_windows

    budget = 16 * window
    hooks = tuple(writer.adapter.default_hooks(lm.model))
    pool = writer.pool_size(lm, hooks, "float16", budget)
    windows, sorted_batches = [], []
    for chunk in _pools(iter_windows(lm, dataset, window), pool):
        ws = [w for w, _ in chunk]
        windows += ws
        sorted_batches += [pad_windows([ws[i] for i in b], ws[b[0]].ids[0])[0]
                           for b in length_batches(ws, budget)]
    batches = [pad_windows(b, b[0].ids[0])[0] for b in _batches(windows, 16)]
    real = torch.tensor([w.ids[p] for w in windows for p in w.keep])
    rows = list(real.split(window))
    last = [rows.pop()] if len(rows[-1]) < window else []
    full = [torch.stack(rows[i:i + 16]) for i in range(0, len(rows), 16)]
    full += [r.view(1, -1) for r in last]  # the one partial row, alone
    return windows, batches, sorted_batches, full


def threads_compare(lm, dataset, device: str, repeats: int) -> None:
    """(L) and (b) at 1 and 2 intra-op threads, interleaved."""
    model = lm.model
    window = min(lm.n_ctx, 256)
    windows, _, _, full = _inputs(lm, dataset, window)
    n_tokens = sum(len(w.keep) for w in windows)
    runs = [(t, key, run) for t in (1, 2)
            for key, run in (("L", _bare(model, full, device)),
                             ("b", _lensbias(lm, dataset, None, device)))]
    best: dict = {}
    root = Path(tempfile.mkdtemp(prefix="bench_threads-"))
    try:
        for _ in range(repeats):
            for t, key, run in runs:
                torch.set_num_threads(t)
                tmp = root / f"{key}{t}"
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir()
                start = time.perf_counter()
                run(tmp)
                best[t, key] = min(best.get((t, key), float("inf")), time.perf_counter() - start)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"\nthreads, best of {repeats} interleaved, {n_tokens} tokens; {_load_line()}")
    print(f"{'threads':>8}{'(L) s':>9}{'(b) s':>9}{'(b) tok/s':>11}{'(b)/(L)':>9}")
    for t in (1, 2):
        print(f"{t:>8}{best[t, 'L']:>9.2f}{best[t, 'b']:>9.2f}{n_tokens / best[t, 'b']:>11.0f}"
              f"{best[t, 'L'] / best[t, 'b']:>9.2f}")
    print(f"2 threads / 1 thread, caching time: {best[2, 'b'] / best[1, 'b']:.2f}x")


def throughput(lm, dataset, device: str, repeats: int, with_sae: bool) -> None:
    import warnings

    from lensbias.models import adapter

    model = adapter.to_device(lm.model, device)
    window = min(lm.n_ctx, 256)
    windows, batches, sorted_batches, full = _inputs(lm, dataset, window)
    n_tokens = sum(len(w.keep) for w in windows)
    padded = sum(b.numel() for b in batches)
    padded_sorted = sum(b.numel() for b in sorted_batches)
    stream = torch.tensor([t for w in windows for t in w.ids])
    n_rows = len(stream) // SAE_CTX // 16 * 16
    packed = stream[:n_rows * SAE_CTX].view(n_rows, SAE_CTX)
    print(f"{dataset.name}: {len(dataset.examples)} examples, {n_tokens} stored tokens; "
          f"(L) {sum(len(r) for r in full)} rows of <= {window}; (a) {len(batches)} batches "
          f"of 16 windows in dataset order, {padded} positions, {1 - n_tokens / padded:.1%} "
          f"padding; (a2) lensbias' {len(sorted_batches)} length-sorted batches, "
          f"{padded_sorted} positions, {1 - sum(len(w.ids) for w in windows) / padded_sorted:.1%} "
          f"padding (specials count as real); sae-lens rows: {n_rows} x {SAE_CTX} = "
          f"{packed.numel()} tokens")
    rows = [("L", "bare forward, real tokens in full rows", n_tokens,
             _bare(model, full, device), None),
            ("a", "bare forward, old dataset-order batches", n_tokens,
             _bare(model, batches, device), None),
            ("a2", "bare forward, lensbias' sorted batches", n_tokens,
             _bare(model, sorted_batches, device), None),
            ("b", "lensbias cache_activations, 4 hooks f16", n_tokens,
             _lensbias(lm, dataset, None, device), "lensbias.h5"),
            ("b1", "lensbias cache_activations, 1 hook f16", n_tokens,
             _lensbias(lm, dataset, (LAST_HOOK,), device), "lensbias.h5"),
            ("c", "TL run_with_cache (all) + h5py f32", n_tokens,
             _tl_full_cache(model, batches, device), "tl.h5")]
    sae_note = None
    if with_sae:
        try:
            rows.append(("a-packed", "bare forward on sae-lens' packed rows", packed.numel(),
                         _bare(model, list(packed.split(16)), device), None))
            rows.append(("d", "sae-lens CacheActivationsRunner, 1 hook", packed.numel(),
                         _sae_lens_setup(lm, packed, device), "sae"))
        except Exception as err:  # noqa: BLE001 (report why it cannot run)
            sae_note = f"sae-lens caching could not run here: {type(err).__name__}: {err}"
    best = {key: float("inf") for key, *_ in rows}
    disk = {}
    root = Path(tempfile.mkdtemp(prefix="bench_cache-"))
    rows[0][3](root)  # warm-up: the first forward pass pays one-off allocations
    try:
        for _ in range(repeats):
            for key, _label, _n, run, out in rows:
                tmp = root / key
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    start = time.perf_counter()
                    try:
                        run(tmp)
                    except Exception as err:  # noqa: BLE001
                        if key != "d":
                            raise
                        sae_note = f"sae-lens caching failed: {type(err).__name__}: {err}"
                        rows = [r for r in rows if r[0] != "d"]
                        continue
                    best[key] = min(best[key], time.perf_counter() - start)
                if out:
                    disk[key] = _dir_bytes(tmp) if (tmp / out).is_dir() else (tmp / out).stat().st_size
    finally:
        shutil.rmtree(root, ignore_errors=True)
    rate = {key: n / best[key] for key, _l, n, *_ in rows}
    print(f"best of {repeats}, interleaved; {_load_line()} (after the runs)")
    print(f"{'':<11}{'method':<41}{'tokens':>8}{'seconds':>9}{'tok/s':>9}{'x (L)':>7}"
          f"{'MB on disk':>11}")
    for key, label, n, *_ in rows:
        mb = f"{disk[key] / 1e6:.1f}" if key in disk else "-"
        print(f"{'(' + key + ')':<11}{label:<41}{n:>8}{best[key]:>9.2f}{rate[key]:>9.0f}"
              f"{rate[key] / rate['L']:>7.2f}{mb:>11}")
    if "d" in rate:
        print(f"sae-lens vs the bare forward on its own packed rows: "
              f"{rate['d'] / rate['a-packed']:.2f}x")
    print(f"lensbias (b) / (L) = {rate['b'] / rate['L']:.2f} (goal >= 0.85); "
          f"(b) / (a2) = {rate['b'] / rate['a2']:.2f}")
    if sae_note:
        print(sae_note)


# ---------------------------------------------------------------- memory

def _vm(field: str) -> int:
    """A /proc/self/status memory field in bytes (0 where unavailable)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def rss_child(n_tokens: int, dataset_name: str, device: str) -> None:
    """Cache ~n_tokens with one hook and print a JSON line of memory figures."""
    import gc

    from lensbias.models import load_model
    from lensbias.store import CacheConfig, cache_activations

    lm = load_model("tiny-mixed", device=device)
    dataset = repeated_dataset(lm, dataset_name, n_tokens)
    gc.collect()
    before = _vm("VmRSS")
    try:  # reset the peak (VmHWM) so it covers caching only
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    tmp = Path(tempfile.mkdtemp(prefix="bench_cache_rss-"))
    try:
        start = time.perf_counter()
        out = cache_activations(lm, dataset, tmp / "c.h5",
                                CacheConfig(hooks=(RSS_HOOK,), batch_size=16, device=device))
        seconds = time.perf_counter() - start
        peak = _vm("VmHWM")
        from lensbias.store import ActivationStore
        with ActivationStore(out) as store:
            stored, d = store.n_tokens, store.d(RSS_HOOK)
        size = out.stat().st_size
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps({"tokens": stored, "examples": len(dataset.examples), "before": before,
                      "peak_caching": peak, "act_bytes": stored * d * 2, "file_bytes": size,
                      "seconds": seconds,
                      "ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))


def memory(sizes: list[int], dataset_name: str, device: str) -> None:
    print(f"\npeak RSS of caching one hook ({RSS_HOOK}, float16, batch 16 x 256), each size "
          f"in a fresh subprocess; {_load_line()}")
    print(f"{'tokens':>9}{'examples':>9}{'RSS before':>11}{'peak caching':>13}{'growth':>8}"
          f"{'acts f16':>9}{'file':>8}{'maxrss':>8}{'seconds':>8}   (MiB)")
    for n in sizes:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--rss-child", str(n),
               "--dataset", dataset_name, "--device", device]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        usage = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
        lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
        if done.returncode or not lines:
            print(f"{n:>9}  failed: {done.stderr.strip().splitlines()[-1:]}")
            continue
        r = json.loads(lines[-1])
        mib = 1 << 20
        print(f"{r['tokens']:>9}{r['examples']:>9}{r['before'] / mib:>11.0f}"
              f"{r['peak_caching'] / mib:>13.0f}{(r['peak_caching'] - r['before']) / mib:>8.0f}"
              f"{r['act_bytes'] / mib:>9.0f}{r['file_bytes'] / mib:>8.0f}"
              f"{r['ru_maxrss'] / mib:>8.0f}{r['seconds']:>8.1f}", flush=True)
    print(f"(RUSAGE_CHILDREN ru_maxrss over all children: {usage / (1 << 20):.0f} MiB)")


# ---------------------------------------------------------------- entry point

def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=20000, help="tokens for the throughput rows")
    parser.add_argument("--dataset", default="ud-ewt", help="ud-ewt or python-stdlib")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-sae", action="store_true", help="skip the sae-lens row")
    parser.add_argument("--no-rss", action="store_true", help="skip the memory table")
    parser.add_argument("--rss-sizes", default="10000,100000")
    parser.add_argument("--big", action="store_true", help="add the 1M-token memory point")
    parser.add_argument("--rss-only", action="store_true", help="only the memory table")
    parser.add_argument("--rss-child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--threads-compare", action="store_true",
                        help="also time (L) and (b) at 1 and 2 threads")
    parser.add_argument("--threads-only", action="store_true",
                        help="only the 1-vs-2-threads table")
    if argv is None:  # `python -m benchmarks bench_cache` leaves the bench names in argv
        argv = [a for a in sys.argv[1:] if not a.startswith("bench_")]
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.rss_child:
        rss_child(args.rss_child, args.dataset, args.device)
        return
    import transformer_lens  # noqa: F401 (import time is not caching time)

    from lensbias.models import load_model

    print(_device_line(args.device))
    print(_load_line() + " (before)")
    lm = load_model("tiny-mixed", device=args.device)
    dataset = repeated_dataset(lm, args.dataset, args.tokens)
    if args.threads_only:
        threads_compare(lm, dataset, args.device, args.repeats)
        return
    if not args.rss_only:
        throughput(lm, dataset, args.device, args.repeats, with_sae=not args.no_sae)
    if args.threads_compare:
        threads_compare(lm, dataset, args.device, args.repeats)
    if not args.no_rss:
        sizes = [int(s) for s in args.rss_sizes.split(",") if s]
        memory(sizes + ([1_000_000] if args.big else []), args.dataset, args.device)


if __name__ == "__main__":
    main()
