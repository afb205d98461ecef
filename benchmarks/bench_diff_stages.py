"""The default diff with its stages one after another and side by side (issue 16).

    python benchmarks/bench_diff_stages.py --out DIR                 # both schedules, cold
    python benchmarks/bench_diff_stages.py --token-losses DIR/overlap/cache/a.h5 \\
        --old-loss OLD.py                                              # token losses only

The first runs ``run_diff`` as ``lensbias diff`` does (tiny-mixed against Wanda 50% on
code, one torch thread) into DIR/sequential with ``DiffConfig(overlap=False)`` and into
DIR/overlap with ``overlap=True``, prints each wall time and ``timings_seconds``, and checks
that the two summaries agree in every section but the provenance. The second times
``behaviour.token_losses`` on a cache of the default dataset, twice, against an older
``behaviour/loss.py`` given as a file (e.g. ``git show 2c37583:src/lensbias/behaviour/loss.py
> OLD.py``, the version that batched 8 windows in dataset order), and prints the padded
positions of both batchings and the largest difference per token.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch


def schedules(out: Path) -> None:
    from lensbias.compress import CalibConfig
    from lensbias.diff import DiffConfig, run_diff
    from lensbias.model_pair import parse_compress_spec

    summaries = {}
    for name, overlap in (("sequential", False), ("overlap", True)):
        recipe = parse_compress_spec("wanda:0.5", CalibConfig("code", seed=0))
        start = time.perf_counter()
        result = run_diff("tiny-mixed", None, recipe, DiffConfig(overlap=overlap), out / name)
        print(f"{name}: {time.perf_counter() - start:.1f} s",
              result.provenance["timings_seconds"], flush=True)
        summaries[name] = json.loads((out / name / "summary.json").read_text())
    for section in summaries["overlap"]:
        if section != "provenance":
            same = (json.dumps(summaries["overlap"][section], sort_keys=True)
                    .replace(str(out / "overlap"), "OUT")
                    == json.dumps(summaries["sequential"][section], sort_keys=True)
                    .replace(str(out / "sequential"), "OUT"))
            print(f"summary {section}: {'same' if same else 'DIFFERENT'}")


def token_losses(cache: Path, old_path: Path) -> None:
    from lensbias.behaviour.loss import token_losses as current
    from lensbias.diff import DiffConfig
    from lensbias.model_pair import merged_dataset, resolve_model
    from lensbias.store.reader import ActivationStore
    from lensbias.store.writer import length_batches, plan_windows

    spec = importlib.util.spec_from_file_location("loss_old", old_path)
    old = importlib.util.module_from_spec(spec)
    sys.modules["loss_old"] = old
    spec.loader.exec_module(old)
    config = DiffConfig()
    data = merged_dataset(list(config.datasets), config.max_examples, config.max_chars, "user")
    lm = resolve_model("tiny-mixed", "cpu")
    with ActivationStore(cache) as store:
        ref = None
        for name, fn in (("old", old.token_losses), ("current", current)) * 2:
            start = time.perf_counter()
            losses = fn(lm, data, store)
            print(f"token_losses {name}: {time.perf_counter() - start:.2f} s", flush=True)
            if name == "old":
                ref = losses
            else:
                print(f"  largest difference: {np.nanmax(np.abs(losses - ref)):.2e} nats")
        windows, _ = plan_windows(lm, data, int(store.fingerprint["window"]))
    lens = [len(w.ids) for w in windows]
    grouped = sum(len(b) * max(lens[i] for i in b)
                  for b in length_batches(windows, 8 * max(lens)))
    in_order = sum(len(lens[i:i + 8]) * max(lens[i:i + 8]) for i in range(0, len(lens), 8))
    print(f"windows {len(lens)}, real tokens {sum(lens)}, padded positions: batches of 8 in "
          f"dataset order {in_order}, length-grouped {grouped}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, help="folder for the two diff runs (must not exist)")
    parser.add_argument("--token-losses", type=Path, help="a.h5 of a default diff's cache")
    parser.add_argument("--old-loss", type=Path, help="an older behaviour/loss.py")
    args = parser.parse_args()
    torch.set_num_threads(1)  # what lensbias diff uses on 2 cores
    if args.token_losses is not None:
        if args.old_loss is None:
            parser.error("--token-losses needs --old-loss")
        token_losses(args.token_losses, args.old_loss)
    elif args.out is not None:
        if args.out.exists():
            parser.error(f"{args.out} exists; choose a new folder")
        schedules(args.out)
    else:
        parser.error("give --out or --token-losses")


if __name__ == "__main__":
    main()
