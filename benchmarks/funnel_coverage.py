"""Where a fitted model of Neal's funnel misses the target's mass.

The variational suite (``bench_vi.py``) reports one number for the funnel,
the error of the importance-sampling estimate of ``log Z``. With ``log Z = 0``
exactly, that estimate is the log of the share of the target's mass that the
model's draws reach, so its error says *how much* mass the model misses. This
script says *where*: the funnel's ``v`` has the closed-form marginal
``N(0, scale^2)``, so the mass of each band of ``v`` is known, and the
importance weights ``w = h / q`` of the model's own draws estimate how much of
it the model reaches, band by band:

    reached(band) = mean_i w_i 1[v_i in band]      (an unbiased estimate)

A band with ``reached / mass`` below 1 beyond its standard error is mass the
model leaves out; a band the draws never enter reads 0, whatever its mass.
For each band the table also gives the model's own share of draws and the
spread of the ``x_i`` in it against the target's ``exp(v / 2)`` (the
geometric mean over the band): a model that cannot narrow the ``x_i`` as
fast as the neck does puts its draws there where the target is small, and
their weights vanish. The ``x_i`` are reported in two groups, the odd and
the even coordinates (1-based ``i`` of ``x_i``: feature ``i``), since the
coupling layers of ``flow="realnvp"`` split the features by parity: ``v``
(feature 0) conditions the layers that move the odd ones and is in the same
half as the even ones, which only see it through the odd ones.

The model is the suite's tensorizing flow on ``NealsFunnel(10)``, with the
settings of ``bench_vi.py --only funnel-10`` (its box, ``tt_rank`` 8,
``n_basis`` 64, ``base="auto"``, RealNVP, 300 iterations), and optionally the
mass-covering stage and another flow.

Usage (from the repository root; one thread, about 1 minute per fit without
the stage and 6 with it)::

    python benchmarks/funnel_coverage.py --mass-covering-iter 100
    python benchmarks/funnel_coverage.py --mass-covering-iter 100 --flow maf --random-state 0 1

Writes ``funnel_coverage.json`` and ``funnel_coverage.md`` into ``--output``
(default ``benchmarks/results/funnel_coverage/``; with ``--stem`` another name).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import bench_vi
import numpy as np
import torch
from _common import json_safe, run_metadata, write_atomically
from scipy.stats import norm
from sklearn.exceptions import ConvergenceWarning

from sktt_flow import TensorizingFlowDensity
from sktt_flow.diagnostics import importance_diagnostics
from sktt_flow.targets import NealsFunnel

#: Edges of the bands of ``v``, in units of its standard deviation ``scale``:
#: the neck below -5/3 (v < -5 for scale 3), the bulk, the wide end.
BAND_EDGES_IN_SCALES = (
    -math.inf,
    -3.0,
    -7 / 3,
    -5 / 3,
    -1.0,
    0.0,
    1.0,
    5 / 3,
    7 / 3,
    3.0,
    math.inf,
)


def band_rows(target: NealsFunnel, x: np.ndarray, log_w: np.ndarray) -> list[dict[str, Any]]:
    """One row per band of ``v``: its true mass, the model's share of the
    draws, the estimate of the mass reached (with its standard error) and the
    spread of the ``x_i`` there."""
    n_draws = len(log_w)
    weights = np.exp(log_w)
    v = x[:, 0]
    rows = []
    for low_scales, high_scales in itertools.pairwise(BAND_EDGES_IN_SCALES):
        low, high = low_scales * target.scale, high_scales * target.scale
        inside = (v >= low) & (v < high)
        mass = float(norm.cdf(high_scales) - norm.cdf(low_scales))
        in_band = np.where(inside, weights, 0.0)
        reached = float(in_band.mean())
        row = {
            "low": low,
            "high": high,
            "mass": mass,
            "model_share": float(inside.mean()),
            "reached": reached,
            "reached_std_error": float(in_band.std(ddof=1) / math.sqrt(n_draws)),
            "reached_over_mass": reached / mass,
            "n_draws": int(inside.sum()),
        }
        if inside.sum() >= 10 and math.isfinite(low) and math.isfinite(high):
            features = x[inside, 1:]
            row["x_std_odd"] = float(features[:, 0::2].std())
            row["x_std_even"] = float(features[:, 1::2].std())
            row["target_x_std"] = math.exp((low + high) / 4)
        rows.append(row)
    return rows


def run(random_state: int, args: argparse.Namespace) -> dict[str, Any]:
    """Fit the suite's model with ``random_state`` and tabulate its coverage."""
    case = next(case for case in bench_vi.make_cases() if case.key == "funnel-10")
    target = case.factory()
    suite = bench_vi.parse_args(["--only", "funnel-10"])
    suite.mass_covering_iter = args.mass_covering_iter
    suite.mass_covering_batch_size = args.mass_covering_batch_size
    model = bench_vi.estimator(case, target, "tt-flow", suite).set_params(
        flow=args.flow, random_state=random_state
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        start = time.perf_counter()
        model.fit()
        fit_seconds = time.perf_counter() - start
    x, log_h, log_q = bench_vi.fresh_draws(model, target, args.n_draws, random_state + 3)
    diagnostics = importance_diagnostics(log_h, log_q)
    return {
        "random_state": random_state,
        "flow": args.flow,
        "mass_covering_iter": args.mass_covering_iter,
        "mass_covering_batch_size": args.mass_covering_batch_size,
        "fit_seconds": fit_seconds,
        "elbo": model.elbo_,
        "log_z": diagnostics.log_normalizer,
        "log_z_std_error": diagnostics.log_normalizer_std_error,
        "ess": diagnostics.ess,
        "bands": band_rows(target, x, (log_h - log_q).numpy()),
    }


def markdown(payload: dict[str, Any]) -> str:
    meta = payload["metadata"]
    lines = [
        "# Where the funnel's mass is missed",
        "",
        f"`{meta['command']}` on {meta['date']}; {meta['cpu']}, "
        f"{meta['torch_num_threads']} torch thread(s).",
        "",
        "Per band of `v`: its true mass, the model's share of the draws, the share of the "
        "target's mass that the draws reach (importance-sampling estimate, standard error "
        "in brackets) over the band's mass, and the standard deviation of the `x_i` there "
        "(odd and even features) against the target's `exp(v / 2)` at the band's middle.",
    ]
    for run_ in payload["runs"]:
        lines += [
            "",
            f"## flow={run_['flow']}, mass_covering_iter={run_['mass_covering_iter']}, "
            f"mass_covering_batch_size={run_.get('mass_covering_batch_size', 4096)}, "
            f"random_state={run_['random_state']}",
            "",
            f"Fit {run_['fit_seconds']:.0f} s; reverse KL {-run_['elbo']:.3f}; on "
            f"{payload['n_draws']:,} fresh draws log Z error {run_['log_z']:+.4f} (standard "
            f"error {run_['log_z_std_error']:.4f}), ESS {run_['ess']:.3f}.",
            "",
            "| v | mass | model share | reached / mass | x std odd / even | target x std |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for band in run_["bands"]:
            spread = (
                f"{band['x_std_odd']:.4f} / {band['x_std_even']:.4f} | {band['target_x_std']:.4f}"
                if "x_std_odd" in band
                else " | "
            )
            ratio = band["reached_over_mass"]
            error = band["reached_std_error"] / band["mass"]
            lines.append(
                f"| [{band['low']:g}, {band['high']:g}) | {band['mass']:.5f} | "
                f"{band['model_share']:.5f} | {ratio:.3f} ({error:.3f}) | {spread} |"
            )
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--random-state", type=int, nargs="+", default=[0])
    parser.add_argument("--mass-covering-iter", type=int, default=0)
    parser.add_argument(
        "--mass-covering-batch-size",
        type=int,
        default=TensorizingFlowDensity().mass_covering_batch_size,
    )
    parser.add_argument("--flow", choices=("realnvp", "maf", "nsf"), default="realnvp")
    parser.add_argument("--n-draws", type=int, default=200_000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--output",
        type=Path,
        default=Path(__file__).resolve().parent / "results" / "funnel_coverage",
    )
    parser.add_argument("--stem", default="funnel_coverage")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    payload = {
        "metadata": run_metadata("random_states", [str(seed) for seed in args.random_state]),
        "n_draws": args.n_draws,
        "runs": [],
    }
    for random_state in args.random_state:
        payload["runs"].append(run(random_state, args))
        last = payload["runs"][-1]
        print(
            f"random_state {random_state}: log Z error {last['log_z']:+.4f} "
            f"({last['log_z_std_error']:.4f}), fit {last['fit_seconds']:.0f} s",
            flush=True,
        )
    args.output.mkdir(parents=True, exist_ok=True)
    text = json.dumps(json_safe(payload), indent=2, allow_nan=False) + "\n"
    write_atomically(args.output / f"{args.stem}.json", text)
    write_atomically(args.output / f"{args.stem}.md", markdown(payload))
    print(f"Wrote {args.output / args.stem}.json and .md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
