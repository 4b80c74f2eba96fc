"""Peak memory of TensorizingFlowDensity's scoring, sampling and fitting.

Each measurement runs in a fresh subprocess, so that the peak resident set
size (``ru_maxrss``) belongs to that one operation: the child loads a fitted
model, builds its input, records the peak so far, runs the operation and
records the peak again. The difference is the operation's extra memory, given
here in units of the size of its output (scoring, sampling) or of its input
(fitting): chunking works when the first two stay a small constant whatever n.

    python benchmarks/bench_memory.py                 # n = 1e6, a few minutes on 2 cores
    python benchmarks/bench_memory.py --quick         # n = 1e5
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import joblib
import numpy as np
import torch
from _common import load_average, source_digest, write_atomically

import sktt_flow
from sktt_flow import TensorizingFlowDensity

N_FEATURES = 8

CHILD = r"""
import resource, sys, time
import joblib, numpy as np, torch
torch.set_num_threads(1)
operation, model_path, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
model = joblib.load(model_path)
rng = np.random.default_rng(0)
X = rng.normal(size=(n, model.n_features_in_))
model.score_samples(X[:1000]); model.sample(1000, random_state=0)  # warm up allocators
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
started = time.perf_counter()
if operation == "score_samples":
    output = model.score_samples(X)
elif operation == "sample":
    output = model.sample(n, random_state=0)
elif operation == "fit":
    model.set_params(max_iter=1, n_iter_no_change=1, warm_start=False).fit(X)
    output = None
seconds = time.perf_counter() - started
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(before, after, seconds, 0 if output is None else output.nbytes, X.nbytes)
"""


def measure(operation: str, model_path: Path, n: int) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", CHILD, operation, str(model_path), str(n)],
        capture_output=True,
        text=True,
        check=True,
    )
    before, after, seconds, output_bytes, input_bytes = result.stdout.split()
    kilobyte = 1024  # ru_maxrss is in kilobytes on Linux
    extra = (int(after) - int(before)) * kilobyte
    reference = int(output_bytes) if operation != "fit" else int(input_bytes)
    return {
        "operation": operation,
        "n": n,
        "seconds": float(seconds),
        "extra_peak_bytes": extra,
        "reference_bytes": reference,
        "reference": "input X" if operation == "fit" else "output array",
        "ratio": extra / reference,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="n = 1e5 instead of 1e6")
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results")
    arguments = parser.parse_args()
    n = 100_000 if arguments.quick else 1_000_000
    rng = np.random.default_rng(0)
    X = rng.normal(size=(5000, N_FEATURES))
    model = TensorizingFlowDensity(max_iter=5, random_state=0).fit(X)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.joblib"
        joblib.dump(model, path)
        for operation in ("score_samples", "sample", "fit"):
            rows.append(measure(operation, path, n))
            print(rows[-1], flush=True)
    metadata = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "machine": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "sktt_flow": sktt_flow.__version__,
        "source_sha256": source_digest(),
        "load_average": load_average(),
        "n_features": N_FEATURES,
        "model": "TensorizingFlowDensity() defaults (RealNVP, 8 layers, 64 units), 1 thread",
        "peak_rss_of_parent_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }
    suffix = "_quick" if arguments.quick else ""
    arguments.output.mkdir(parents=True, exist_ok=True)
    write_atomically(
        arguments.output / f"memory_cpu{suffix}.json",
        json.dumps({"metadata": metadata, "results": rows}, indent=2),
    )
    lines = [
        "# Peak memory of TensorizingFlowDensity (CPU)",
        "",
        f"`{metadata['command']}` on {metadata['date']}, torch {metadata['torch']}, "
        f"load average {metadata['load_average']}.",
        "",
        "| operation | n | seconds | extra peak (MB) | reference | reference (MB) | ratio |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        lines.append(
            f"| {row['operation']} | {row['n']:,} | {row['seconds']:.1f} | "
            f"{row['extra_peak_bytes'] / 2**20:.1f} | {row['reference']} | "
            f"{row['reference_bytes'] / 2**20:.1f} | {row['ratio']:.2f} |"
        )
    lines += [
        "",
        "Extra peak: growth of the child process's peak resident set size during",
        "the operation (input and model already loaded). Ratio: extra peak over",
        "the output array (scoring, sampling) or the input X (fit, one epoch).",
    ]
    write_atomically(arguments.output / f"memory_cpu{suffix}.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
