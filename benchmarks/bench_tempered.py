"""Tempered TT layers (deep inverse Rosenblatt transport) against the single-layer TT base.

For each target, two bases alone (no flow), scored on exact draws of themselves:

``tempered``
    :func:`sktt_flow.flows.fit_tempered_base`: the outer Gaussian is the mean
    and the (widened) Cholesky factor of the covariance of ``--n-moment-draws``
    exact samples of the target (or its diagonal, for chains whose locality a
    full factor would spread over every coordinate), then TT layers on tempered
    bridges ``h^beta g^(1 - beta)`` with the adaptive schedule, and refinements
    at ``beta = 1``.
``single``
    The base the estimator builds today:
    ``TensorizingFlowDensity(log_target=..., tt_rank=..., n_basis=...,
    domain="auto", flow="none")``, its ``base_ess_``, ``base_kl_`` and
    ``base_elbo_``, and ``log Z`` from its own draws.

Metrics: reverse-KL estimate ``log Z_hat - ELBO`` (``log Z - ELBO`` with the
exact ``log Z`` too), ESS, ``|log Z_hat - log Z|`` and its standard error, the
number of layers and exponents, target evaluations and wall time, on
``--n-check`` draws (the tempered base's own self-check).

Usage (from the repository root, one thread)::

    python benchmarks/bench_tempered.py --only banana funnel-10
    python benchmarks/bench_tempered.py               # every target, tens of minutes
    python benchmarks/bench_tempered.py --methods tempered --output /tmp

Writes ``tempered_cpu.json`` and ``tempered_cpu.md`` into ``--output``
(default ``benchmarks/results/``).
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from _common import (
    count_warnings,
    format_value,
    header_rule,
    load_average,
    run_metadata,
    write_results,
)

from sktt_flow import TensorizingFlowDensity
from sktt_flow.flows import fit_tempered_base
from sktt_flow.targets import Banana, DoubleRosenbrock, GinzburgLandau1D, NealsFunnel

METHODS = ("tempered", "single")


@dataclass
class Case:
    """One target and the settings both bases use."""

    key: str
    label: str
    make: Callable[[], Any]
    tt_rank: int
    n_basis: int
    widen: float = 2.0
    diagonal: bool = False
    options: dict = field(default_factory=dict)


def make_cases() -> list[Case]:
    """The targets of issue 16's goals; ``options`` override the CLI defaults."""
    return [
        Case(
            "banana",
            "Banana(2, curvature 0.1)",
            lambda: Banana(2, curvature=0.1),
            8,
            32,
            3.0,
            options={"min_ess": 0.8},
        ),
        # rank 16: x_i | v is a product over i for every v, so a bond carries
        # about as many v-scales as the layer resolves (rank 8 stalled at beta 0.68)
        Case("funnel-10", "NealsFunnel(10)", NealsFunnel, 16, 24, 2.0, options={"min_ess": 0.6}),
        Case("double-rosenbrock", "DoubleRosenbrock(11)", DoubleRosenbrock, 8, 24, 2.0),
        Case(
            "gl1d-50",
            "GinzburgLandau1D(50)",
            lambda: GinzburgLandau1D(50),
            8,
            24,
            1.5,
            diagonal=True,
            # beta = 1 from the start: one layer through the Gaussian map, the
            # rest refinements (tempering from small beta costs minutes per layer
            # at d = 50 on one core)
            options={"min_beta": 1.0, "max_layers": 3, "n_basis": [24, 16]},
        ),
    ]


def outer_map(target, case: Case, n_draws: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and widened Cholesky (or diagonal) factor of the target's covariance."""
    draws = target.sample(n_draws, random_state=0)
    covariance = torch.cov(draws.T)
    if case.diagonal:
        factor = torch.diag(covariance.diagonal().sqrt())
    else:
        factor = torch.linalg.cholesky(covariance)
    return draws.mean(0), case.widen * factor


def run_tempered(target, case: Case, args) -> dict[str, Any]:
    shift, matrix = outer_map(target, case, args.n_moment_draws)
    started = time.perf_counter()
    settings = {
        "tt_rank": case.tt_rank,
        "n_basis": case.n_basis,
        "min_ess": args.min_ess,
        "max_layers": args.max_layers,
        "defensive_weight": args.defensive_weight,
        "n_check_samples": args.n_check,
        "random_state": 0,
        "verbose": args.verbose,
    }
    settings.update(case.options)
    base = fit_tempered_base(target.log_prob, shift, matrix, **settings)
    seconds = time.perf_counter() - started
    report = base.report
    return {
        "kl_estimate": report.kl,
        "elbo": report.elbo,
        "ess": report.ess,
        "log_z_estimate": report.log_normalizer,
        "log_z_std_error": report.log_normalizer_std_error,
        "n_layers": base.n_layers,
        "betas": list(report.betas),
        "layer_ess": [layer.ess for layer in report.layers],
        "max_ranks": [max(layer.tt_ranks) for layer in report.layers],
        "n_evaluations": report.n_evaluations,
        "seconds": seconds,
        "stop_reason": report.stop_reason,
    }


def run_single(target, case: Case, args) -> dict[str, Any]:
    estimator = TensorizingFlowDensity(
        log_target=target.log_prob,
        n_features=target.n_features,
        tt_rank=case.tt_rank,
        n_basis=case.n_basis,
        domain="auto",
        flow="none",
        random_state=0,
    )
    started = time.perf_counter()
    estimator.fit()
    seconds = time.perf_counter() - started
    # flow="none": the model is the base, scored by the estimator on its own draws
    return {
        "kl_estimate": float(estimator.log_normalizer_ - estimator.elbo_),
        "elbo": float(estimator.elbo_),
        "ess": float(estimator.ess_),
        "log_z_estimate": float(estimator.log_normalizer_),
        "log_z_std_error": float(estimator.log_normalizer_std_error_),
        "base_ess": float(estimator.base_ess_),
        "n_layers": 1,
        "n_evaluations": int(estimator.n_target_evaluations_),
        "seconds": seconds,
    }


RUNNERS = {"tempered": run_tempered, "single": run_single}


def run_case(case: Case, method: str, args) -> dict[str, Any]:
    torch.manual_seed(0)
    target = case.make()
    log_z = target.log_normalizer
    row: dict[str, Any] = {"key": case.key, "target": case.label, "method": method, "run": 0}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            row.update(RUNNERS[method](target, case, args))
        except Exception as error:  # a failed method is a result, not a crash
            row["error"] = f"{type(error).__name__}: {error}"
            if args.verbose:
                traceback.print_exc()
    row["warnings"] = count_warnings(caught)
    if log_z is not None and "elbo" in row:
        row["log_z"] = log_z
        row["kl"] = log_z - row["elbo"]
        row["log_z_error"] = abs(row["log_z_estimate"] - log_z)
    return row


def render(payload: dict[str, Any]) -> str:
    header = (
        "| target | method | KL (exact log Z) | KL estimate | ESS | abs log Z error | "
        "layers | evaluations | time (s) | run |"
    )
    lines = ["# Tempered TT layers against the single-layer TT base (base alone)", ""]
    settings = payload["metadata"]["settings"]
    lines.append(
        "- settings: "
        + ", ".join(f"{name} {value}" for name, value in settings.items())
        + "; metrics on the tempered base's own exact draws"
    )
    for index, run in enumerate(payload["metadata"]["runs"]):
        versions = ", ".join(f"{k} {v}" for k, v in run["versions"].items())
        lines += [
            f"- run {index}: date {run['date']}; command: `{run['command']}`; targets "
            f"{', '.join(run['targets'])}",
            f"  - CPU: {run['cpu']} ({run['cpu_count']} CPUs), torch threads "
            f"{run['torch_num_threads']}; load average at start {run['load_average_start']}, "
            f"at end {run.get('load_average_end')}",
            f"  - versions: {versions}; sktt_flow {run['sktt_flow_version']} (git {run['git']})",
        ]
    lines += ["", header, header_rule(header)]
    for row in payload["results"]:
        if "error" in row:
            lines.append(f"| {row['target']} | {row['method']} | failed: {row['error']} |")
            continue
        lines.append(
            "| "
            + " | ".join(
                [
                    row["target"],
                    row["method"],
                    format_value(row.get("kl"), ".4f"),
                    format_value(row.get("kl_estimate"), ".4f"),
                    format_value(row.get("ess"), ".3f"),
                    format_value(row.get("log_z_error"), ".4f"),
                    str(row.get("n_layers")),
                    str(row.get("n_evaluations")),
                    format_value(row.get("seconds"), ".1f"),
                    str(row.get("run", 0)),
                ]
            )
            + " |"
        )
    lines += ["", "Exponents of the tempered layers:", ""]
    for row in payload["results"]:
        if row["method"] == "tempered" and "betas" in row:
            betas = ", ".join(f"{beta:.3g}" for beta in row["betas"])
            lines.append(f"- {row['target']}: {betas} ({row['stop_reason']})")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    cases = {case.key: case for case in make_cases()}
    parser.add_argument("--only", nargs="+", choices=list(cases), default=list(cases))
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--min-ess", type=float, default=0.5)
    parser.add_argument("--max-layers", type=int, default=12)
    parser.add_argument("--defensive-weight", type=float, default=1e-9)
    parser.add_argument("--n-check", type=int, default=20_000)
    parser.add_argument("--n-moment-draws", type=int, default=50_000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--verbose", type=int, default=1)
    parser.add_argument(
        "--merge",
        action="store_true",
        help="replace the rows of the targets and methods run in an existing result file "
        "of the same settings, keep the others",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for key in args.only:
        for method in args.methods:
            row = run_case(cases[key], method, args)
            rows.append(row)
            print({k: v for k, v in row.items() if k not in ("layer_ess",)}, flush=True)
    run = run_metadata("targets", args.only)
    run["load_average_end"] = load_average()
    settings = {
        name: getattr(args, name)
        for name in ("min_ess", "max_layers", "defensive_weight", "n_check", "n_moment_draws")
    }
    settings["methods"] = list(args.methods)
    payload = {"metadata": {"settings": settings, "runs": [run]}, "results": rows}
    write_results(
        payload,
        args.output,
        "tempered_cpu",
        render,
        merge=args.merge,
        order=list(cases),
        methods=list(METHODS),
    )
    print((args.output / "tempered_cpu.md").read_text())


if __name__ == "__main__":
    sys.exit(main())
