#!/usr/bin/env bash
# The GPU evidence of issue 6 in one run (under 5 minutes on one H200):
#
#   1. the speed suite on CUDA (tensorizing flow against the same flow on a
#      Gaussian base; the TT base's log_prob against an 8-layer RealNVP's at
#      d = 64, N = 1e6, float32):
#          python benchmarks/bench_speed.py --device cuda --output $OUT
#   2. one VI benchmark, GinzburgLandau1D(16), fitted on the GPU with the TT
#      base and with a Gaussian base (same flow, same steps):
#          python benchmarks/gpu_vi_check.py --output $OUT
#   3. the CUDA tests of the package (they skip without a GPU elsewhere):
#          python -m pytest -m "not slow" -k cuda -q
#
# Run from anywhere; results go to $OUT (default: benchmarks/results/). The
# checkout is put on PYTHONPATH; torch with CUDA, scikit-learn, normflows,
# scipy and pytest must be installed.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/results}"
PYTHON="${PYTHON:-$(command -v python3 || command -v python)}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
"$PYTHON" benchmarks/bench_speed.py --device cuda --output "$OUT"
"$PYTHON" benchmarks/gpu_vi_check.py --output "$OUT"
"$PYTHON" -m pytest -q -p no:cacheprovider -k cuda tests 2>&1 | tee "$OUT/cuda_tests.txt"
