"""Speed benchmark of the tensor-train base distribution.

Measures points per second of :meth:`TTDistribution.log_prob` and
:meth:`TTDistribution.sample` on random, canonicalised trains:

* at the reference point ``d=32, tt_rank=8, n_basis=16, N=100000`` (float32 and
  float64), next to normflows' ``DiagGaussian(d)`` in the same run;
* in sweeps that vary one of ``N``, ``d``, ``tt_rank``, ``n_basis`` at a time
  from the reference point (float32).

Every result also gives the time per point per dimension, and its ratio to a
baseline measurement that differs only in the swept parameter: for the ``N``
and ``d`` sweeps a ratio near 1 means the cost is linear in that parameter.

Usage (from the repository root)::

    python benchmarks/bench_tt_distribution.py [--device cpu|cuda] [--quick] [--output DIR]

On a GPU machine (must finish in under 3 minutes on an H200)::

    python benchmarks/bench_tt_distribution.py --device cuda --output $OUT

Writes ``tt_distribution_<device>.json`` (raw numbers and metadata) and
``tt_distribution_<device>.md`` (Markdown tables) into the output directory;
with ``--quick`` the names end in ``_quick`` so a smoke test does not overwrite
the full results.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import normflows as nf
import numpy as np
import torch
from _common import (
    cpu_name,
    load_average,
    repeat_timed,
    source_digest,
    synchronize,
    write_atomically,
)

import sktt_flow
from sktt_flow.tt.distribution import TTDistribution

#: The reference configuration every sweep starts from.
REFERENCE_D = 32
REFERENCE_RANK = 8
REFERENCE_BASIS = 16
REFERENCE_N = 100_000
#: Half-width of the box ``[-3, 3]^d`` of every benchmarked train.
BOX = 3.0
SEED = 0


@dataclass(frozen=True)
class Plan:
    """Sizes and timing rules of one benchmark run.

    Attributes
    ----------
    reference_n : dict
        ``N`` at the reference point, per operation (``"log_prob"``, ``"sample"``).
    n_values : dict
        ``N`` of the ``N`` sweep, per operation.
    sweep_n : dict
        ``N`` used in the ``d``, ``tt_rank`` and ``n_basis`` sweeps, per operation.
    d_values, rank_values, basis_values : tuple of int
        Values of the other sweeps.
    min_time : float
        Keep repeating a timed call until this many seconds were spent ...
    min_repeats : int
        ... and at least this many repeats were made ...
    max_time : float
        ... unless this many seconds were already spent (at least one repeat).
    max_repeats : int
        Hard cap on the repeats of very fast calls.
    warmup_points : int or None
        Size of the untimed warm-up call (``None``: the timed size).
    """

    reference_n: dict[str, int]
    n_values: dict[str, tuple[int, ...]]
    sweep_n: dict[str, int]
    d_values: tuple[int, ...]
    rank_values: tuple[int, ...]
    basis_values: tuple[int, ...]
    min_time: float = 0.5
    min_repeats: int = 3
    max_time: float = 5.0
    max_repeats: int = 50
    warmup_points: int | None = None


def make_plan(device: torch.device, quick: bool) -> Plan:
    """Sizes for a device: full sweeps on CUDA, capped sampling sizes on CPU.

    On CPU, sampling runs at a few thousand points per second, so the ``N``
    sweep of ``sample`` stops at 2e5 and its other sweeps use ``N=1e4``; calls
    slower than 10 s are timed once (``max_time``), after a warm-up on at most
    16384 points. ``quick`` shrinks everything to a smoke test of under a minute on
    two cores.
    """
    if quick:
        return Plan(
            reference_n={"log_prob": 10_000, "sample": 2_000},
            n_values={"log_prob": (1_000, 10_000, 100_000), "sample": (500, 2_000)},
            sweep_n={"log_prob": 10_000, "sample": 2_000},
            d_values=(8, 32),
            rank_values=(2, 8),
            basis_values=(8, 16),
            min_time=0.2,
            min_repeats=2,
            max_time=1.0,
            warmup_points=2_000,
        )
    if device.type == "cuda":
        return Plan(
            reference_n={"log_prob": REFERENCE_N, "sample": REFERENCE_N},
            n_values={
                "log_prob": (10_000, 100_000, 1_000_000),
                "sample": (10_000, 100_000, 1_000_000),
            },
            sweep_n={"log_prob": REFERENCE_N, "sample": REFERENCE_N},
            d_values=(8, 16, 32, 64),
            rank_values=(2, 4, 8, 16),
            basis_values=(8, 16, 24, 32),
            max_time=3.0,
        )
    return Plan(
        reference_n={"log_prob": REFERENCE_N, "sample": REFERENCE_N},
        n_values={
            "log_prob": (10_000, 100_000, 1_000_000),
            "sample": (10_000, 100_000, 200_000),
        },
        sweep_n={"log_prob": REFERENCE_N, "sample": 10_000},
        d_values=(8, 16, 32, 64),
        rank_values=(2, 4, 8, 16),
        basis_values=(8, 16, 24, 32),
        max_time=10.0,
        warmup_points=16_384,
    )


# ------------------------------------------------------------------ building
def random_tt(
    d: int,
    tt_rank: int,
    n_basis: int,
    device: torch.device,
    dtype: torch.dtype,
    seed: int = SEED,
) -> TTDistribution:
    """A random canonicalised train on ``[-3, 3]^d``, moved to ``device``/``dtype``.

    Cores are standard normal, of shape ``(r_left, n_basis, r_right)`` with
    ranks 1 at both ends and ``tt_rank`` elsewhere; they are drawn and
    canonicalised in float64 on the CPU, then cast.
    """
    generator = torch.Generator().manual_seed(seed)
    ranks = [1] + [tt_rank] * (d - 1) + [1]
    cores = [
        torch.randn(ranks[k], n_basis, ranks[k + 1], generator=generator, dtype=torch.float64)
        for k in range(d)
    ]
    distribution = TTDistribution(cores, [[-BOX, BOX]] * d, tail_weight=1e-3)
    distribution.canonicalize_()
    return distribution.to(device=device, dtype=dtype)


def gaussian(
    d: int, device: torch.device, dtype: torch.dtype
) -> nf.distributions.BaseDistribution:
    """normflows' standard diagonal Gaussian base of dimension ``d``."""
    return nf.distributions.DiagGaussian(d).to(device=device, dtype=dtype)


def points(n: int, d: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``n`` uniform points of the box ``[-3, 3]^d`` (log_prob's cost ignores their values)."""
    generator = torch.Generator().manual_seed(SEED + 1)
    z = (2.0 * torch.rand(n, d, generator=generator, dtype=dtype) - 1.0) * BOX
    return z.to(device)


# ------------------------------------------------------------------- timing
def time_call(call: Callable[[int], Any], n: int, device: torch.device, plan: Plan) -> list[float]:
    """Wall-clock seconds of ``call(n)``, repeated under the plan's rules.

    One untimed warm-up call (on ``min(n, plan.warmup_points)`` points), then
    timed repeats (:func:`_common.repeat_timed`) until ``min_time`` seconds and
    ``min_repeats`` repeats are reached, or ``max_time`` seconds are spent, or
    ``max_repeats`` are done.
    """
    warmup = n if plan.warmup_points is None else min(n, plan.warmup_points)
    call(warmup)
    synchronize(device)
    return repeat_timed(
        lambda: call(n),
        device,
        min_time=plan.min_time,
        min_repeats=plan.min_repeats,
        max_time=plan.max_time,
        max_repeats=plan.max_repeats,
    )


@dataclass
class Result:
    """One timed measurement (all times in seconds)."""

    model: str  # "tt" or "diag_gaussian"
    operation: str  # "log_prob" or "sample"
    sweep: str  # "reference", "N", "d", "tt_rank" or "n_basis"
    dtype: str
    d: int
    tt_rank: int | None
    n_basis: int | None
    n_points: int
    times: list[float]
    median_s: float = 0.0
    points_per_s: float = 0.0
    ns_per_point_per_dim: float = 0.0
    ratio_to_baseline: float | None = None
    baseline: str | None = None

    def __post_init__(self) -> None:
        self.median_s = statistics.median(self.times)
        self.points_per_s = self.n_points / self.median_s
        self.ns_per_point_per_dim = 1e9 * self.median_s / (self.n_points * self.d)

    def key(self) -> tuple:
        """What identifies a configuration, whichever sweep measured it."""
        return (
            self.model,
            self.operation,
            self.dtype,
            self.d,
            self.tt_rank,
            self.n_basis,
            self.n_points,
        )


class Runner:
    """Times configurations, caching them so that sweeps share the reference point."""

    def __init__(self, device: torch.device, plan: Plan) -> None:
        self.device = device
        self.plan = plan
        self.cache: dict[tuple, list[float]] = {}

    def _tt_call(
        self, operation: str, d: int, rank: int, n_basis: int, dtype: torch.dtype, n: int
    ) -> Callable[[int], Any]:
        distribution = random_tt(d, rank, n_basis, self.device, dtype)
        if operation == "log_prob":
            z = points(n, d, self.device, dtype)

            def call(size: int) -> torch.Tensor:
                with torch.no_grad():
                    return distribution.log_prob(z[:size])

            return call
        generator = torch.Generator(device=self.device).manual_seed(SEED + 2)

        def call(size: int) -> torch.Tensor:
            return distribution.sample(size, generator=generator)

        return call

    def _gaussian_call(
        self, operation: str, d: int, dtype: torch.dtype, n: int
    ) -> Callable[[int], Any]:
        distribution = gaussian(d, self.device, dtype)
        if operation == "log_prob":
            z = points(n, d, self.device, dtype)

            def call(size: int) -> torch.Tensor:
                with torch.no_grad():
                    return distribution.log_prob(z[:size])

            return call

        def call(size: int) -> torch.Tensor:
            with torch.no_grad():
                return distribution.sample(size)

        return call

    def measure(
        self,
        model: str,
        operation: str,
        sweep: str,
        *,
        d: int = REFERENCE_D,
        tt_rank: int = REFERENCE_RANK,
        n_basis: int = REFERENCE_BASIS,
        n_points: int = REFERENCE_N,
        dtype: torch.dtype = torch.float32,
    ) -> Result:
        """Time one configuration (or reuse an earlier timing of it) and print it."""
        dtype_name = str(dtype).removeprefix("torch.")
        is_tt = model == "tt"
        key = (
            model,
            operation,
            dtype_name,
            d,
            tt_rank if is_tt else None,
            n_basis if is_tt else None,
            n_points,
        )
        if key not in self.cache:
            if is_tt:
                call = self._tt_call(operation, d, tt_rank, n_basis, dtype, n_points)
            else:
                call = self._gaussian_call(operation, d, dtype, n_points)
            self.cache[key] = time_call(call, n_points, self.device, self.plan)
            del call
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
        result = Result(
            model=model,
            operation=operation,
            sweep=sweep,
            dtype=dtype_name,
            d=d,
            tt_rank=tt_rank if is_tt else None,
            n_basis=n_basis if is_tt else None,
            n_points=n_points,
            times=list(self.cache[key]),
        )
        print(
            f"  {model:>13} {operation:>8} {sweep:>9} {dtype_name:>7} d={d:<3} "
            f"r={result.tt_rank!s:<4} n={result.n_basis!s:<4} N={n_points:<8} "
            f"{result.median_s:9.4f} s x{len(result.times):<3} "
            f"{result.points_per_s:12.4g} pts/s",
            flush=True,
        )
        return result


def attach_baselines(results: Sequence[Result], plan: Plan) -> None:
    """Set each sweep result's cost ratio to its baseline.

    The baseline has the same operation and dtype, the reference ``d``,
    ``tt_rank`` and ``n_basis``, and the row's ``N`` (for the ``N`` sweep, the
    plan's reference ``N``); every sweep measures it. The ratio compares time
    per point per dimension.
    """
    by_key = {result.key(): result for result in results}
    for result in results:
        if result.model != "tt" or result.sweep == "reference":
            continue
        baseline_n = plan.reference_n[result.operation] if result.sweep == "N" else result.n_points
        baseline = by_key.get(
            (
                "tt",
                result.operation,
                result.dtype,
                REFERENCE_D,
                REFERENCE_RANK,
                REFERENCE_BASIS,
                baseline_n,
            )
        )
        if baseline is None:
            continue
        result.ratio_to_baseline = result.ns_per_point_per_dim / baseline.ns_per_point_per_dim
        result.baseline = (
            f"d={baseline.d}, r={baseline.tt_rank}, n={baseline.n_basis}, N={baseline.n_points}"
        )


def run_benchmark(device: torch.device, plan: Plan) -> list[Result]:
    """All measurements: the reference point with the Gaussian, then the sweeps."""
    runner = Runner(device, plan)
    results: list[Result] = []
    print("Reference point", flush=True)
    for operation in ("log_prob", "sample"):
        n = plan.reference_n[operation]
        for dtype in (torch.float32, torch.float64):
            for model in ("tt", "diag_gaussian"):
                results.append(
                    runner.measure(model, operation, "reference", n_points=n, dtype=dtype)
                )
    for operation in ("log_prob", "sample"):
        print(f"Sweeps of {operation} (float32)", flush=True)
        for n in plan.n_values[operation]:
            results.append(runner.measure("tt", operation, "N", n_points=n))
        n = plan.sweep_n[operation]
        for d in plan.d_values:
            results.append(runner.measure("tt", operation, "d", d=d, n_points=n))
        for rank in plan.rank_values:
            results.append(runner.measure("tt", operation, "tt_rank", tt_rank=rank, n_points=n))
        for n_basis in plan.basis_values:
            results.append(runner.measure("tt", operation, "n_basis", n_basis=n_basis, n_points=n))
    attach_baselines(results, plan)
    return results


# ----------------------------------------------------------------- reporting
def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU model (``/proc/cpuinfo``, else ``platform``)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_name()


def metadata(device: torch.device, plan: Plan, quick: bool) -> dict[str, Any]:
    """Where and how the numbers were taken."""
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join([sys.executable, *sys.argv]),
        "device": str(device),
        "device_name": device_name(device),
        "torch_version": torch.__version__,
        "torch_cuda_version": torch.version.cuda,
        "normflows_version": getattr(nf, "__version__", "unknown"),
        "sktt_flow_version": sktt_flow.__version__,
        "sktt_flow_source_sha256": source_digest(),
        "numpy_version": np.__version__,
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "torch_num_threads": torch.get_num_threads(),
        "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
        "cpu_count": os.cpu_count(),
        "load_average_start": load_average(),
        "quick": quick,
        "reference": {
            "d": REFERENCE_D,
            "tt_rank": REFERENCE_RANK,
            "n_basis": REFERENCE_BASIS,
            "n_points": REFERENCE_N,
            "domain": [-BOX, BOX],
            "tail_weight": 1e-3,
        },
        "plan": asdict(plan),
    }


def _format_rate(value: float) -> str:
    """Points per second: whole numbers with thousands separators, else 3 digits."""
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def _format_ratio(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def reference_table(results: Sequence[Result]) -> list[str]:
    """TT against DiagGaussian at the reference point, per operation and dtype."""
    lines = [
        "| operation | dtype | N | TT pts/s | DiagGaussian pts/s | TT time / Gaussian time |",
        "|---|---|---:|---:|---:|---:|",
    ]
    reference = [r for r in results if r.sweep == "reference"]
    for tt in (r for r in reference if r.model == "tt"):
        gauss = next(
            r
            for r in reference
            if r.model == "diag_gaussian" and r.operation == tt.operation and r.dtype == tt.dtype
        )
        lines.append(
            f"| {tt.operation} | {tt.dtype} | {tt.n_points:,} | {_format_rate(tt.points_per_s)} "
            f"| {_format_rate(gauss.points_per_s)} | {tt.median_s / gauss.median_s:,.1f} |"
        )
    return lines


def sweep_table(results: Sequence[Result], operation: str) -> list[str]:
    """One row per sweep point of ``operation``, with the cost ratio to its baseline."""
    lines = [
        "| sweep | d | tt_rank | n_basis | N | median s | repeats | pts/s | ns / pt / dim "
        "| ratio to baseline |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        if r.model != "tt" or r.operation != operation or r.sweep == "reference":
            continue
        lines.append(
            f"| {r.sweep} | {r.d} | {r.tt_rank} | {r.n_basis} | {r.n_points:,} "
            f"| {r.median_s:.4g} | {len(r.times)} | {_format_rate(r.points_per_s)} "
            f"| {r.ns_per_point_per_dim:.4g} | {_format_ratio(r.ratio_to_baseline)} |"
        )
    return lines


def linearity_checks(results: Sequence[Result], plan: Plan) -> list[dict[str, Any]]:
    """Cost per point per dimension at the ends of the ``N`` and ``d`` sweeps.

    For each sweep, the largest and the smallest value (where they differ from
    the baseline) against the baseline: 1.0 means exactly linear; the table
    flags ratios outside [0.67, 1.5].
    """
    checks = []
    for operation in ("log_prob", "sample"):
        for sweep, attribute, reference in (
            ("N", "n_points", plan.reference_n[operation]),
            ("d", "d", REFERENCE_D),
        ):
            rows = [
                r
                for r in results
                if r.model == "tt"
                and r.operation == operation
                and r.sweep == sweep
                and r.ratio_to_baseline is not None
                and getattr(r, attribute) != reference
            ]
            if not rows:
                continue
            largest = max(rows, key=lambda r: getattr(r, attribute))
            smallest = min(rows, key=lambda r: getattr(r, attribute))
            ends = [("largest", largest)]
            if smallest is not largest:
                ends.append(("smallest", smallest))
            for end, row in ends:
                ratio = row.ratio_to_baseline
                checks.append(
                    {
                        "operation": operation,
                        "sweep": sweep,
                        "end": end,
                        "value": getattr(row, attribute),
                        "baseline": row.baseline,
                        "ratio": ratio,
                        "linear": bool(ratio is not None and 0.67 <= ratio <= 1.5),
                    }
                )
    return checks


def contention_note(meta: dict[str, Any]) -> list[str]:
    """A warning line when other work loaded the CPUs during a CPU run."""
    loads = [meta.get("load_average_start"), meta.get("load_average_end")]
    busiest = max((load[0] for load in loads if load), default=0.0)
    if meta["device"] != "cpu" or busiest < 1.0:
        return []
    return [
        f"- **warning**: 1-minute load average up to {busiest:.2f} on {meta['cpu_count']} "
        "CPUs: other processes competed for the CPUs, so these timings are noisy and "
        "pessimistic (with all CPUs in use, torch's intra-op threads slow down sharply; "
        "`--threads 1` is the most robust setting then)"
    ]


def markdown_report(
    meta: dict[str, Any], results: Sequence[Result], checks: Sequence[dict[str, Any]]
) -> str:
    """The Markdown summary: metadata, reference table, linearity checks, sweeps."""
    lines = [
        f"# TTDistribution speed on {meta['device']} ({meta['device_name']})",
        "",
        f"- date: {meta['date']}",
        f"- command: `{meta['command']}`",
        f"- torch {meta['torch_version']} (CUDA {meta['torch_cuda_version']}), normflows "
        f"{meta['normflows_version']}, sktt_flow {meta['sktt_flow_version']}, "
        f"Python {meta['python_version']}",
        f"- torch threads: {meta['torch_num_threads']} of {meta['cpu_count']} CPUs; load "
        f"average (1, 5, 15 min) at start {meta['load_average_start']}, at end "
        f"{meta['load_average_end']}",
        f"- total wall time: {meta['wall_time_s']:.0f} s",
        *contention_note(meta),
        "- reference point: d=32, tt_rank=8, n_basis=16, box [-3, 3]^d, tail_weight=1e-3;"
        " random standard normal cores, canonicalised",
        "- timing: one warm-up call, then the median of repeats (at least "
        f"{meta['plan']['min_repeats']} and {meta['plan']['min_time']} s, but stop after "
        f"{meta['plan']['max_time']} s); `torch.no_grad()` for log_prob",
        "",
        "## Reference point: TT base against normflows' DiagGaussian",
        "",
        *reference_table(results),
        "",
        "`sample` solves the conditional CDFs in the distribution's dtype (uniforms drawn "
        "in float64 in both).",
        "",
        "## Linearity checks",
        "",
        "Cost per point per dimension at each end of the sweep over that at the "
        "baseline (1.0 = exactly linear in that parameter).",
        "",
        "| operation | sweep | end | value | baseline | ratio | linear (0.67..1.5) |",
        "|---|---|---|---:|---|---:|---|",
    ]
    for check in checks:
        lines.append(
            f"| {check['operation']} | {check['sweep']} | {check['end']} | {check['value']:,} "
            f"| {check['baseline']} | {_format_ratio(check['ratio'])} "
            f"| {'yes' if check['linear'] else 'NO'} |"
        )
    for operation in ("log_prob", "sample"):
        lines += [
            "",
            f"## Sweeps of `{operation}` (float32)",
            "",
            "Each row varies one parameter from the reference; the baseline is the "
            "reference configuration at the row's N (at the reference N for the N "
            "sweep). For the N and d sweeps a ratio near 1 means linear cost; for "
            "tt_rank and n_basis it is the growth of the per-point cost.",
            "",
            *sweep_table(results, operation),
        ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------- main
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--device", choices=("cpu", "cuda"), default="cpu", help="where to run (default: cpu)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="small sweeps, a smoke test of under a minute"
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=Path(__file__).resolve().parent / "results",
        help="directory for the JSON and Markdown results (default: benchmarks/results/)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads (default: torch's choice)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and write the results; returns the exit status."""
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch sees no CUDA device", file=sys.stderr)
        return 2
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    plan = make_plan(device, args.quick)
    meta = metadata(device, plan, args.quick)
    print(
        f"TTDistribution benchmark on {device} ({meta['device_name']}), "
        f"{meta['torch_num_threads']} threads, quick={args.quick}",
        flush=True,
    )
    start = time.perf_counter()
    results = run_benchmark(device, plan)
    meta["wall_time_s"] = time.perf_counter() - start
    meta["load_average_end"] = load_average()
    checks = linearity_checks(results, plan)
    stem = f"tt_distribution_{device.type}" + ("_quick" if args.quick else "")
    args.output.mkdir(parents=True, exist_ok=True)
    payload = {
        "metadata": meta,
        "linearity_checks": checks,
        "results": [asdict(result) for result in results],
    }
    write_atomically(args.output / f"{stem}.json", json.dumps(payload, indent=2) + "\n")
    write_atomically(args.output / f"{stem}.md", markdown_report(meta, results, checks))
    print(f"Wrote {args.output / stem}.json and .md in {meta['wall_time_s']:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
