"""Probe token caps and their effect: accuracy, train accuracy and the floors by ``max_train``.

    python -m benchmarks bench_probe_caps [--model tiny-mixed|all-MiniLM-L6-v2]

Caches the default diff's dataset (ud-ewt + python-stdlib, 60,000 characters each) on one
model, then for each training cap fits the diff's probes (C chosen on the training split)
on A alone (B = A) and prints, per concept at the middle block, the test accuracy, the
training accuracy and the three floors. The test tokens are the same for every cap.
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
import time
from pathlib import Path

CAPS = (2000, 4000, 8000, 16000)


def main() -> None:
    import torch

    from lensbias.models import adapter, load_model
    from lensbias.model_pair import merged_dataset
    from lensbias.probes.floors import EMBED_HOOK
    from lensbias.probes.pair import ProbeConfig, ProbePair
    from lensbias.store import ActivationStore, CacheConfig, cache_activations

    torch.set_num_threads(1)
    model = sys.argv[sys.argv.index("--model") + 1] if "--model" in sys.argv else "tiny-mixed"
    lm = load_model(model)
    hooks = adapter.default_hooks(lm.model)
    middle = hooks[len(hooks) // 2]
    data = merged_dataset(["ud-ewt", "python-stdlib"], None, 60_000)
    with tempfile.TemporaryDirectory() as tmp:
        path = cache_activations(lm, data, Path(tmp) / "a.h5",
                                 CacheConfig(hooks=(middle, EMBED_HOOK), dtype="float16"))
        print(f"{model}, hook {middle}; columns: max_train, concept, n_train, acc_a, "
              "train_acc_a, majority, token_id, embed, context_gain, kind, C, seconds")
        with ActivationStore(path) as store:
            for cap in CAPS:
                cfg = dataclasses.replace(ProbeConfig(hooks=(middle,), control=False,
                                                      ceiling=False, n_bootstrap=100),
                                          max_train=cap)
                start = time.perf_counter()
                report = ProbePair(cfg).fit(store, store)
                seconds = time.perf_counter() - start
                for r in report.rows:
                    print(f"{cap:>6} {r.concept:<16} {r.n_train:>6} {r.acc_a:.3f} "
                          f"{r.train_acc_a:.3f} {r.majority:.3f} {r.token_id:.3f} "
                          f"{r.embed:.3f} {r.context_gain:+.3f} {r.kind:<14} {r.C_a:g} "
                          f"{seconds:.0f}", flush=True)


if __name__ == "__main__":
    main()
