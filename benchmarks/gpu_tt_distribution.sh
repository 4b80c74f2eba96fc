#!/usr/bin/env bash
# Speed benchmark of the TT base distribution on a CUDA GPU.
#
# Run from anywhere; results go to $OUT (default: benchmarks/results/):
#
#     OUT=/path/to/results bash benchmarks/gpu_tt_distribution.sh
#
# which runs exactly
#
#     python benchmarks/bench_tt_distribution.py --device cuda --output $OUT
#
# It takes well under 3 minutes on an H200 (log_prob and sample up to N = 1e6).
# The checkout is put on PYTHONPATH, so sktt_flow need not be installed there;
# torch with CUDA and normflows must be.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/results}"
PYTHON="${PYTHON:-$(command -v python3 || command -v python)}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
"$PYTHON" benchmarks/bench_tt_distribution.py --device cuda --output "$OUT"
