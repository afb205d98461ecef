"""The study's cluster bootstrap: time per resample, one thread and the RNG seeds in threads.

    python benchmarks/bench_study_stats.py                    # MiniLM Wanda 50%, 240 rows
    python benchmarks/bench_study_stats.py --resamples 512000 --analyse docs/study/tiny-results.jsonl.gz

The design is the committed MiniLM study's (``docs/study/minilm-results.jsonl.gz``):
contextual concepts at ``blocks.1.hook_resid_post``, Wanda 50%, the readout, 240 rows (3
seeds × 8 corpora × 10 concepts, 64 document replicates each). It prints microseconds of
wall clock per resample for ``bootstrap_replicates`` in one thread and for one round of
``stable_bootstrap`` (10 RNG seeds, in as many threads as there are cores) where the
installed lensbias has its ``workers`` option. The first only uses
``bootstrap_replicates(design, n, rng_seed)``, so it also times older versions
(``PYTHONPATH=../old/src``). ``--analyse`` times ``analyse`` on a committed rows file.
"""

from __future__ import annotations

import argparse
import gzip
import inspect
import json
import os
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def design(rows_file: Path, method: str = "wanda", reading: str = "readout"):
    from lensbias.sweep import stats

    rows = [json.loads(line) for line in gzip.open(rows_file, "rt")]
    kinds = stats.study_kinds(rows)
    groups = defaultdict(list)
    for r in stats.entering(rows, "contextual", kinds):
        groups[(stats.method_label(r), r["level"])].append(r)
    return stats.Design(groups[(method, 0.5)], reading)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=Path, default=ROOT / "docs/study/minilm-results.jsonl.gz")
    parser.add_argument("--resamples", type=int, default=256_000, help="per RNG seed")
    parser.add_argument("--analyse", type=Path, help="a rows file (.jsonl.gz) to analyse")
    args, _ = parser.parse_known_args()  # python -m benchmarks passes other options on

    from threadpoolctl import threadpool_limits

    from lensbias.sweep import stats

    d = design(args.rows)
    n = args.resamples
    print(f"design: {len(d.rows)} rows, {len(d.seeds)} seeds, {len(d.corpora)} corpora, "
          f"{len(d.concepts)} concepts, {d.n_rep} document replicates; {n:,} resamples; "
          f"load average {os.getloadavg()[0]:.1f}")
    with threadpool_limits(1):
        stats.bootstrap_replicates(d, 4096, 0)  # warm up
        start = time.perf_counter()
        stats.bootstrap_replicates(d, n, 0)
        one = (time.perf_counter() - start) / n * 1e6
    print(f"  bootstrap_replicates, one thread:        {one:.2f} us per resample")
    if "workers" in inspect.signature(stats.stable_bootstrap).parameters:
        start = time.perf_counter()
        stats.stable_bootstrap(d, n_boot=n, max_boot=n, n_rng=10, tolerance=1e-12)
        many = (time.perf_counter() - start) / (10 * n) * 1e6
        print(f"  stable_bootstrap, 10 RNG seeds, threads: {many:.2f} us per resample "
              f"(wall clock, {os.cpu_count()} cores)")
    if args.analyse:
        from lensbias.sweep import analyse

        rows = [json.loads(line) for line in gzip.open(args.analyse, "rt")]
        start = time.perf_counter()
        analyse(rows)
        print(f"  analyse({args.analyse.name}): {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
