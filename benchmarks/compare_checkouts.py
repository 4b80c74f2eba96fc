"""The TT distribution's speed in two checkouts of sktt_flow, timed in turn on one machine.

Ratios of times measured on different machines, or hours apart on a shared
one, mix the code's speed with the machine's: the old sampler ran 1.3 times
faster on one of this project's machines than on another. This script times
the same calls of two checkouts (``--baseline``, for example the code an
issue was filed against, and ``--candidate``, by default this repository)
on one machine, alternating between them: each round runs one worker
process per checkout and configuration, in turn, so both see the same drift
of the machine. A worker imports ``sktt_flow`` from its checkout only, builds
the train of ``bench_tt_distribution.py`` (standard normal cores from a fixed
seed, canonicalised in float64, then cast), warms up once and times
``--repeats`` calls of ``sample`` (or of ``log_prob`` under ``no_grad``).

The result per configuration is the median over rounds of the baseline's
median time over the candidate's, with the range over rounds.

Usage (from the repository root; one thread per worker)::

    git worktree add /tmp/sktt_flow_filed e877d86    # the code issue 15 found
    python benchmarks/compare_checkouts.py --baseline /tmp/sktt_flow_filed
    python benchmarks/compare_checkouts.py --baseline /tmp/old --operation log_prob --rounds 3

Writes ``compare_checkouts_<operation>.json`` and ``.md`` into ``--output``
(default ``benchmarks/results/``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: Configurations ``(d, tt_rank, n_basis, n_points, dtype)`` timed by default:
#: issue 15's range of dimensions at 10,000 draws, and the reference point
#: of ``bench_tt_distribution.py`` at 100,000, in float32 and float64.
CONFIGURATIONS = (
    (16, 8, 16, 10_000, "float32"),
    (32, 8, 16, 10_000, "float32"),
    (64, 8, 16, 10_000, "float32"),
    (32, 8, 16, 100_000, "float32"),
    (32, 8, 16, 10_000, "float64"),
    (32, 8, 16, 100_000, "float64"),
)
BOX = 3.0
SEED = 0
REPOSITORY = Path(__file__).resolve().parent.parent


def worker(source: Path, configuration: Sequence, operation: str, repeats: int) -> list[float]:
    """Times of ``repeats`` calls with ``sktt_flow`` imported from ``source``."""
    sys.path.insert(0, str(source))
    import torch

    import sktt_flow

    if Path(sktt_flow.__file__).resolve().parent.parent != source.resolve():
        raise SystemExit(f"imported sktt_flow from {sktt_flow.__file__}, not from {source}")
    from sktt_flow.tt.distribution import TTDistribution

    torch.set_num_threads(1)
    d, tt_rank, n_basis, n_points, dtype = configuration
    dtype = getattr(torch, dtype)
    generator = torch.Generator().manual_seed(SEED)
    ranks = [1] + [tt_rank] * (d - 1) + [1]
    cores = [
        torch.randn(ranks[k], n_basis, ranks[k + 1], generator=generator, dtype=torch.float64)
        for k in range(d)
    ]
    distribution = TTDistribution(cores, [[-BOX, BOX]] * d, tail_weight=1e-3)
    distribution.canonicalize_()
    distribution = distribution.to(dtype=dtype)
    if operation == "sample":

        def call():
            return distribution.sample(n_points, generator=torch.Generator().manual_seed(SEED))

    else:
        points_generator = torch.Generator().manual_seed(SEED + 1)
        points = (2.0 * torch.rand(n_points, d, generator=points_generator) - 1.0) * BOX
        points = points.to(dtype)

        def call():
            with torch.no_grad():
                return distribution.log_prob(points)

    call()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return times


def run_worker(source: Path, configuration: Sequence, operation: str, repeats: int) -> list[float]:
    """:func:`worker` in a fresh process, with one thread for every library."""
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    environment.pop("PYTHONPATH", None)
    command = [
        sys.executable,
        __file__,
        "--worker",
        str(source),
        json.dumps(list(configuration)),
        "--operation",
        operation,
        "--repeats",
        str(repeats),
    ]
    output = subprocess.run(
        command, capture_output=True, text=True, check=True, env=environment, cwd="/"
    )
    return json.loads(output.stdout.strip().splitlines()[-1])


def git_commit(source: Path) -> str | None:
    try:
        return subprocess.run(
            ["git", "-C", str(source), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def markdown_report(payload: dict[str, Any]) -> str:
    meta = payload["metadata"]
    lines = [
        f"# `{meta['operation']}`: baseline time over candidate time, timed in turn",
        "",
        "Generated by `benchmarks/compare_checkouts.py`; see its docstring.",
        "",
        f"- date {meta['date']}, {meta['cpu']}, one thread per worker, {meta['rounds']} rounds "
        f"of {meta['repeats']} calls per checkout",
        f"- baseline `{meta['baseline']}` (commit {meta['baseline_commit']})",
        f"- candidate `{meta['candidate']}` (commit {meta['candidate_commit']})",
        "",
        "| d | tt_rank | n_basis | points | dtype | baseline s | candidate s | speed-up "
        "(median) | range over rounds |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in payload["results"]:
        d, rank, n_basis, n_points, dtype = row["configuration"]
        lines.append(
            f"| {d} | {rank} | {n_basis} | {n_points:,} | {dtype} | "
            f"{row['baseline_seconds']:.4f} | {row['candidate_seconds']:.4f} | "
            f"{row['speed_up']:.2f} | {min(row['round_ratios']):.2f}-"
            f"{max(row['round_ratios']):.2f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", nargs=2, metavar=("SOURCE", "CONFIGURATION"))
    parser.add_argument("--baseline", type=Path)
    parser.add_argument("--candidate", type=Path, default=REPOSITORY)
    parser.add_argument("--operation", choices=("sample", "log_prob"), default="sample")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", type=Path, default=REPOSITORY / "benchmarks" / "results")
    args = parser.parse_args(argv)
    if args.worker:
        source, configuration = args.worker
        times = worker(Path(source), json.loads(configuration), args.operation, args.repeats)
        print(json.dumps(times))
        return 0
    if args.baseline is None:
        parser.error("--baseline is required")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import cpu_name, run_metadata, write_results

    run = run_metadata("configurations", [str(c) for c in CONFIGURATIONS])
    results = []
    for configuration in CONFIGURATIONS:
        medians: dict[str, list[float]] = {"baseline": [], "candidate": []}
        for _ in range(args.rounds):
            for name, source in (("baseline", args.baseline), ("candidate", args.candidate)):
                times = run_worker(source, configuration, args.operation, args.repeats)
                medians[name].append(statistics.median(times))
        ratios = [b / c for b, c in zip(medians["baseline"], medians["candidate"], strict=True)]
        row = {
            "configuration": list(configuration),
            "baseline_seconds": statistics.median(medians["baseline"]),
            "candidate_seconds": statistics.median(medians["candidate"]),
            "speed_up": statistics.median(ratios),
            "round_ratios": ratios,
            "round_medians": medians,
        }
        print(json.dumps(row), flush=True)
        results.append(row)
    payload = {
        "metadata": {
            **run,
            "operation": args.operation,
            "rounds": args.rounds,
            "repeats": args.repeats,
            "baseline": str(args.baseline),
            "baseline_commit": git_commit(args.baseline),
            "candidate": str(args.candidate),
            "candidate_commit": git_commit(args.candidate),
            "cpu": cpu_name(),
            "settings": {"operation": args.operation},
            "runs": [],
        },
        "results": results,
    }
    write_results(
        payload,
        args.output,
        f"compare_checkouts_{args.operation}",
        markdown_report,
        merge=False,
        order=[],
        methods=[],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
