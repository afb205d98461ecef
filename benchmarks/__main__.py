"""Run benchmarks in one process: ``python -m benchmarks [bench_NAME ...] [--options]``.

With no names, every ``bench_*`` module runs. Options (``--big``, ...) go to the benchmarks
that read them from ``sys.argv``; the others ignore them.
"""

import importlib
import pkgutil
import sys
from pathlib import Path

names = [a for a in sys.argv[1:] if not a.startswith("-")]
names = names or sorted(m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)])
                        if m.name.startswith("bench_"))
for name in names:
    print(f"\n== {name} ==", flush=True)
    importlib.import_module(f"benchmarks.{name}").main()
