#!/usr/bin/env bash
# benchmarks/gpu.sh: the default `lensbias diff` and the caching benchmark on a CUDA GPU,
# end to end, with each stage's time (issue 16 item 6). Meant to finish in under 10 minutes.
#
#   bash benchmarks/gpu.sh                  # venv in build/gpu-venv (made, or reused)
#   LENSBIAS_GPU_VENV=/path/venv bash benchmarks/gpu.sh   # reuse a venv of your own
#   LENSBIAS_GPU_OUT=/tmp/gpu-run bash benchmarks/gpu.sh  # where outputs go [default: mktemp]
#   LENSBIAS_GPU_INSTALL=0 ...              # skip `pip install -e .` (venv already has it)
#
# Steps: (1) refuse, at once and with one line, a machine without a CUDA device;
# (2) make or reuse the venv and `pip install -e .` (PyPI's torch wheel on a CUDA Linux
# machine is the CUDA build); (3) print nvidia-smi and torch.cuda's view of the device;
# (4) `lensbias diff --device cuda` into a fresh folder (cold: nothing reused) and print
# summary.json's provenance.timings_seconds, one line per stage; (5) the caching benchmark
# `benchmarks/bench_cache.py --device cuda`. Everything printed is also kept in
# $OUT/gpu-run.txt.
set -euo pipefail

cd "$(dirname "$0")/.."
start=$SECONDS

# (1) a CUDA device, checked before anything is installed or written
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "gpu.sh: no CUDA GPU here (nvidia-smi is missing or lists no device); nothing was run" >&2
    exit 3
fi

PY=${PYTHON:-python3}
VENV=${LENSBIAS_GPU_VENV:-build/gpu-venv}
OUT=${LENSBIAS_GPU_OUT:-$(mktemp -d -t lensbias-gpu.XXXXXX)}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu-run.txt") 2>&1

step() { echo; echo "== $1 ($((SECONDS - start)) s so far)"; }

# (2) venv and install
step "venv $VENV"
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
if [ "${LENSBIAS_GPU_INSTALL:-1}" != 0 ]; then
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q -e .
fi
VPY="$VENV/bin/python"

# (3) the device
step "device"
nvidia-smi
"$VPY" - <<'EOF'
import sys

import torch

print(f"torch {torch.__version__}, built for CUDA {torch.version.cuda}, "
      f"cuda available: {torch.cuda.is_available()}")
if not torch.cuda.is_available():
    sys.exit("gpu.sh: this torch sees no CUDA device (a CPU-only build?); install a CUDA "
             "build of torch into the venv and rerun")
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"cuda:{i}: {p.name}, {p.total_memory / 2**30:.1f} GiB, "
          f"compute capability {p.major}.{p.minor}")
EOF

# (4) the default diff on the GPU, cold
step "lensbias diff --device cuda (default pair: tiny-mixed vs wanda:0.5)"
diff_start=$SECONDS
timeout 360 "$VENV/bin/lensbias" diff --device cuda --out "$OUT/diff" -q
echo "diff wall time: $((SECONDS - diff_start)) s"
"$VPY" - "$OUT/diff/summary.json" <<'EOF'
import json
import sys

summary = json.load(open(sys.argv[1]))
timings = summary["provenance"]["timings_seconds"]
print(f"{'stage':<16} {'seconds':>8}")
for stage, seconds in timings.items():
    print(f"{stage:<16} {seconds:>8.2f}")
if "wait" in timings:  # SAE, geometry, behaviour ran beside the probes (DiffConfig.overlap)
    serial = ("load+compress", "cache", "probes", "wait")
    print(f"{'total (overlapped)':<16} {sum(timings.get(k, 0.0) for k in serial):>8.2f}")
else:
    print(f"{'total':<16} {sum(timings.values()):>8.2f}")
print("device recorded:", summary["provenance"]["config"]["device"])
print("headline:", (summary.get("headline") or {}).get("sentence", ""))
EOF

# (5) the caching benchmark on the GPU
step "benchmarks/bench_cache.py --device cuda"
timeout 200 "$VPY" benchmarks/bench_cache.py --device cuda

step "done in $((SECONDS - start)) s; log: $OUT/gpu-run.txt"
