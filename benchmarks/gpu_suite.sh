#!/usr/bin/env bash
# The GPU evidence of issues 6 and 15 in one run (about 3 minutes on one H200,
# measured 2026-12-04, before the quick speed suite's variational fits grew
# from 30 to 300 steps: allow 5), most important first, so that a run cut short still
# says the most:
#
#   1. the CUDA tests of the package (they skip without a GPU elsewhere):
#          python -m pytest -k cuda tests          -> cuda_tests.txt
#   2. the TT distribution's log_prob and exact sampler on CUDA, float32 and
#      float64, against normflows' DiagGaussian:
#          python benchmarks/bench_tt_distribution.py --device cuda --output $OUT
#   3. one VI benchmark, GinzburgLandau1D(16), fitted on the GPU with the TT
#      base and with a Gaussian base (same flow, same steps):
#          python benchmarks/gpu_vi_check.py --output $OUT
#   4. the speed suite on CUDA, quick (tensorizing flow against the same flow
#      on a Gaussian base; the TT base's log_prob against an 8-layer
#      RealNVP's; the precision rows; the variational steps, 300 per fit on a
#      GPU), about 35 s before those fits grew tenfold (not timed since):
#          python benchmarks/bench_speed.py --device cuda --quick --output $OUT
#      SPEED_FULL=1 runs the full sweeps instead, which did not finish in
#      170 s: more than a 15-minute lease leaves for the rest.
#   5. the GPU's own code paths (tree contraction, table sampler, pool blocks)
#      against the CPU's on the same GPU (not run on a GPU yet; the throwaway
#      scripts it replaces took about 4 minutes in all):
#          python benchmarks/bench_gpu_paths.py --device cuda --output $OUT
#
# A failing step does not stop the later ones; the exit status is 1 if any
# failed. STEP_TIMEOUT (seconds, default none) bounds each step, for leases of
# limited time. Run from anywhere; results go to $OUT (default:
# benchmarks/results/). The checkout is put on PYTHONPATH; torch with CUDA,
# scikit-learn, normflows, scipy and pytest must be installed.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/results}"
PYTHON="${PYTHON:-$(command -v python3 || command -v python)}"
STEP_TIMEOUT="${STEP_TIMEOUT:-0}"  # 0: no limit (coreutils' timeout)
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
status=0
step() {
    echo "=== $* ($(date -u +%H:%M:%S))"
    timeout "$STEP_TIMEOUT" "$@" || { echo "=== step failed (exit $?): $*"; status=1; }
}
step "$PYTHON" -m pytest -q -p no:cacheprovider -rs -k cuda tests > "$OUT/cuda_tests.txt" 2>&1
tail -n 30 "$OUT/cuda_tests.txt"
step "$PYTHON" benchmarks/bench_tt_distribution.py --device cuda --output "$OUT"
step "$PYTHON" benchmarks/gpu_vi_check.py --output "$OUT"
if [ "${SPEED_FULL:-0}" = 1 ]; then
    step "$PYTHON" benchmarks/bench_speed.py --device cuda --output "$OUT"
else
    step "$PYTHON" benchmarks/bench_speed.py --device cuda --quick --output "$OUT"
fi
step "$PYTHON" benchmarks/bench_gpu_paths.py --device cuda --output "$OUT"
exit "$status"
