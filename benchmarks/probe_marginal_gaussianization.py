"""Probe: the defaults with and without ``marginal_gaussianization``.

Issue 14 says the base "knows only its coordinates": the TT is fitted to
standardised (or whitened) features, and a feature that is skewed, heavy-
tailed or piled up near a bound costs it Legendre functions, rank and fit
time. ``feature_bounds`` fixes the last case when the user knows the
bounds. ``marginal_gaussianization`` maps each feature from the data alone:
through :class:`~sktt_flow.flows.FixedMarginalNormalMap`, fitted to the rows
that ``fit`` trains on (not those it holds out), a monotone spline through
1,024 points of ``z_j = Phi^{-1}(F_j(x_j))``, with ``F_j`` the distribution
of an equal-weight mixture of 128 normals at the column's quantiles, each as
wide as the local spacing of the quantiles and at least a floor
(:class:`~sktt_flow.flows.QuantileNormalMixture`). The model is fitted to
``z`` and carries the map as its last layer, with its exact log-Jacobian.
This probe measures the option against the defaults without it, and how
well the estimator's own held-out rows would choose between them (the
estimator does not choose: the option is the user's).

Modes, per dataset and split (``random_state`` = split):

``raw``
    The defaults (``marginal_gaussianization="none"``).
``sharp``
    ``marginal_gaussianization="sharp"``: widths at least ``1e-3`` of the
    column's standard deviation; where many rows share a value (rounded or
    discrete columns) the quantiles coincide and the map puts a narrow
    spike there.
``smooth``
    ``marginal_gaussianization="smooth"``: widths at least a quarter of
    Silverman's bandwidth of the column (``0.9 min(std, IQR / 1.349)
    n^(-1/5)``): smoother, no spikes.
``best-held-out``
    Not a fit: the mode whose model scores best on the estimator's own
    held-out rows (the ``validation_fraction`` of the training rows that
    ``fit`` sets aside with the same ``random_state``, reproduced here).
``confirmed``
    Not a fit: ``raw`` unless a Gaussianized mode beats it on those rows by
    ``CONFIRMATION_STANDARD_ERRORS`` standard errors of the paired
    differences (then the best such mode), the rule by which the estimator
    keeps its first candidate base against the others.
``confirmed-smooth``
    The same between ``raw`` and ``smooth`` only (no spikes).
``gmm-raw``, ``gmm-sharp``, ``gmm-smooth``
    The tuned Gaussian mixture of ``bench_density.py`` on the features and
    behind the same maps (fitted to the same rows), with the maps'
    log-Jacobians: what the map does for a peer.

Datasets: ``tanh30`` of ``bench_fit_time.py`` (seed ``s``: 10,000 training
rows from seed ``2 s``, 5,000 test rows from ``2 s + 1``) and the datasets of
``bench_density.py`` by key (its sizes: 5,000 training and test rows of the
toys, 70/30 splits of the real tables).

Usage (from the repository root; one thread per process)::

    python benchmarks/probe_marginal_gaussianization.py --datasets tanh30 --splits 0 1 2
    python benchmarks/probe_marginal_gaussianization.py \\
        --datasets wine breast_cancer diabetes digits10 digits digits20 --merge

Writes ``marginal_gaussianization.json`` and ``.md`` into ``--output``
(default ``benchmarks/results/marginal_gaussianization``).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import format_value, run_probe
from bench_density import make_datasets, make_method
from bench_density import parse_args as parse_density_args
from bench_fit_time import tanh30, tanh30_log_density
from sklearn.exceptions import ConvergenceWarning

from sktt_flow import TensorizingFlowDensity
from sktt_flow.diagnostics import clearly_better
from sktt_flow.flows import FixedMarginalNormalMap
from sktt_flow.training.reverse_kl import CONFIRMATION_STANDARD_ERRORS

MODES = ("raw", "sharp", "smooth")
CHOICES = ("best-held-out", "confirmed", "confirmed-smooth")
PEER_MODES = ("gmm-raw", "gmm-sharp", "gmm-smooth")


def load(key: str, split: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Training rows, test rows and the test rows' true log-density (or None)."""
    if key == "tanh30":
        test = tanh30(5000, 2 * split + 1)
        return tanh30(10000, 2 * split), test, tanh30_log_density(test)
    dataset = {d.key: d for d in make_datasets()}[key]
    train, test, truth = dataset.load(5000, 5000, split)
    return train, test, None if truth is None else truth(test)


def held_out_rows(model: TensorizingFlowDensity, n_rows: int) -> np.ndarray:
    """The rows that ``model.fit`` set aside (the first draw of its generator)."""
    generator, _, _ = model._generators(torch.device("cpu"))
    n_validation = max(1, round(model.validation_fraction * n_rows))
    return torch.randperm(n_rows, generator=generator).numpy()[:n_validation]


def run_mode(mode: str, train: np.ndarray, test: np.ndarray, split: int) -> dict[str, Any]:
    start = time.perf_counter()
    gaussianization = mode.removeprefix("gmm-")
    if mode.startswith("gmm-"):
        # the tuned peer of bench_density.py, behind the map the estimator
        # would fit: to the rows it trains on, not those it holds out
        test_log_det = np.zeros(len(test))
        if gaussianization != "raw":
            fitted_rows = np.ones(len(train), dtype=bool)
            fitted_rows[held_out_rows(TensorizingFlowDensity(random_state=split), len(train))] = (
                False
            )
            feature_map = FixedMarginalNormalMap.from_data(
                train[fitted_rows], floor=gaussianization
            )
            train = feature_map.inverse(torch.as_tensor(train))[0].numpy()
            test, test_log_det = (t.numpy() for t in feature_map.inverse(torch.as_tensor(test)))
        # one EM start, as in the recorded results (bench_density's default is 4)
        search = make_method("gmm", train, split, parse_density_args(["--gmm-n-init", "1"]))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            search.fit(train)
        scores = search.score_samples(test) + test_log_det
        return {
            "scores": scores,
            "held_out": float("nan"),
            "fit_seconds": time.perf_counter() - start,
            "companion_weight": float("nan"),
            "preconditioner": str(search.best_params_),
            "n_basis": None,
            "tt_rank": None,
        }
    model = TensorizingFlowDensity(
        random_state=split,
        marginal_gaussianization="none" if gaussianization == "raw" else gaussianization,
    ).fit(train)
    seconds = time.perf_counter() - start
    rows = held_out_rows(model, len(train))
    held_out = model.score_samples(train[rows])
    scores = model.score_samples(test)
    selection = getattr(model, "tt_", None)
    selection = getattr(selection, "selection", None) or {}
    return {
        "scores": scores,
        "held_out_scores": held_out,
        "held_out": float(held_out.mean()),
        "fit_seconds": seconds,
        "companion_weight": float(model.companion_weight_),
        "preconditioner": model.preconditioner_,
        "n_basis": selection.get("n_basis"),
        "tt_rank": selection.get("tt_rank"),
    }


def summary(scores: np.ndarray) -> tuple[float, float]:
    return float(scores.mean()), float(scores.std(ddof=1) / math.sqrt(len(scores)))


def run(key: str, split: int, modes: Sequence[str]) -> list[dict[str, Any]]:
    train, test, truth = load(key, split)
    fitted = {mode: run_mode(mode, train, test, split) for mode in modes}
    if set(MODES) <= set(fitted):
        choose(fitted)
    rows = []
    for mode, result in fitted.items():
        reference = fitted.get("gmm-raw" if mode.startswith("gmm-") else "raw")
        mean, se = summary(result["scores"])
        difference = None
        if reference is not None and reference is not result:
            difference = summary(result["scores"] - reference["scores"])
        rows.append(
            {
                "dataset": key,
                "split": split,
                "mode": mode,
                "test_log_likelihood": mean,
                "test_se": se,
                "minus_raw": None if difference is None else difference[0],
                "minus_raw_se": None if difference is None else difference[1],
                "truth": None if truth is None else float(truth.mean()),
                **{
                    name: value
                    for name, value in result.items()
                    if name not in ("scores", "held_out_scores")
                },
            }
        )
        print(
            f"[{key} split {split}] {mode}: test {mean:.4f} ± {se:.4f}, held-out "
            f"{result['held_out']:.4f}"
            + (f", fit {result['fit_seconds']:.1f} s" if result["fit_seconds"] else "")
            + (f", minus raw {difference[0]:+.4f}" if difference is not None else ""),
            flush=True,
        )
    return rows


def choose(fitted: dict[str, dict[str, Any]]) -> None:
    """Adds the :data:`CHOICES` to ``fitted``, the fits of the :data:`MODES`."""

    def confirmed(candidates: Sequence[str]) -> str:
        return max(
            (
                mode
                for mode in candidates
                if mode == "raw"
                or clearly_better(
                    torch.as_tensor(fitted[mode]["held_out_scores"]),
                    torch.as_tensor(fitted["raw"]["held_out_scores"]),
                    CONFIRMATION_STANDARD_ERRORS,
                )
            ),
            key=lambda mode: fitted[mode]["held_out"],
        )

    choices = {
        "best-held-out": max(MODES, key=lambda mode: fitted[mode]["held_out"]),
        "confirmed": confirmed(MODES),
        "confirmed-smooth": confirmed(("raw", "smooth")),
    }
    for name, chosen in choices.items():
        fitted[name] = {**fitted[chosen], "fit_seconds": None, "chose": chosen}


def markdown_report(payload: dict[str, Any]) -> str:
    lines = [
        "# The defaults with and without `marginal_gaussianization` (probe)",
        "",
        "Generated by `benchmarks/probe_marginal_gaussianization.py`; see its docstring.",
        "",
    ]
    for index, run_entry in enumerate(payload["runs"]):
        lines.append(
            f"- run {index}: {run_entry['date']}, `{run_entry['command']}`, {run_entry['cpu']}, "
            f"{run_entry['torch_num_threads']} torch thread(s)"
        )
    lines += [
        "",
        "Per split: test mean log-likelihood ± its standard error, the model minus `raw` "
        "paired over the test rows, the held-out score (the estimator's own held-out rows), "
        "fit seconds (with the map), the companion's weight, the TT's `n_basis` and rank.",
        "",
        "| dataset | split | mode | test | minus raw | held-out | fit s | companion | n_basis "
        "| rank |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in payload["rows"]:
        mode = row["mode"] + (f" ({row['chose']})" if row.get("chose") else "")
        minus = (
            f"{row['minus_raw']:+.3f} ± {row['minus_raw_se']:.3f}"
            if row["minus_raw"] is not None
            else ""
        )
        cells = [
            row["dataset"],
            row["split"],
            mode,
            f"{row['test_log_likelihood']:.3f} ± {row['test_se']:.3f}",
            minus,
            format_value(row["held_out"], ".3f"),
            format_value(row["fit_seconds"], ".1f"),
            # a GMM row: its chosen settings instead of the weight and the TT's
            row["preconditioner"]
            if row["mode"] in PEER_MODES
            else format_value(row["companion_weight"], ".3g"),
            format_value(row["n_basis"], ".0f"),
            format_value(row["tt_rank"], ".0f"),
        ]
        lines.append("| " + " | ".join(str(cell) for cell in cells) + " |")
    lines += ["", "Means over the splits run (test; minus raw):", ""]
    for key in dict.fromkeys(row["dataset"] for row in payload["rows"]):
        for mode in (*MODES, *CHOICES, *PEER_MODES):
            selected = [r for r in payload["rows"] if r["dataset"] == key and r["mode"] == mode]
            if not selected:
                continue
            test = np.mean([r["test_log_likelihood"] for r in selected])
            text = f"- {key}, {mode}: {test:.3f}"
            differences = [r["minus_raw"] for r in selected if r["minus_raw"] is not None]
            if differences:
                text += f" ({np.mean(differences):+.3f})"
            seconds = [r["fit_seconds"] for r in selected if r["fit_seconds"] is not None]
            if seconds:
                text += f", fit {np.mean(seconds):.1f} s"
            if mode in CHOICES:
                text += ", chose " + ", ".join(r["chose"] for r in selected)
            lines.append(text)
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    keys = ["tanh30", *(d.key for d in make_datasets())]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", choices=keys, required=True, metavar="KEY")
    parser.add_argument("--splits", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument(
        "--output", type=Path, default=Path("benchmarks/results/marginal_gaussianization")
    )
    parser.add_argument("--merge", action="store_true", help="keep other datasets' rows")
    parser.add_argument(
        "--modes", nargs="+", choices=[*MODES, *PEER_MODES], default=list(MODES), metavar="MODE"
    )
    parser.add_argument("--stem", default="marginal_gaussianization")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    path = run_probe(run, args, args.stem, markdown_report)
    print(f"Wrote {path} and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
