"""Probe: the companion's one Gaussian against its Gaussian mixture.

In data mode the model mixes the flow on the TT with a companion, a flow on
the best Gaussian or, where the held-out rows clearly prefer one, on a
Gaussian mixture. A mixture is the better base, not always the better base
for a flow: on the 5-D log-normal of ``bench_density.py --out-of-suite`` the
same flow on a Gaussian base was ahead of the defaults by 0.2 nats per test
row. Since then a flow on the one Gaussian is trained first for a few passes
(the *probe*, :meth:`~sktt_flow.TensorizingFlowDensity._probed_companion`)
and replaces the mixture where it becomes clearly better. This script
measures that choice against its two alternatives on data made to test it
and on the log-normal.

Modes, per dataset and split (``random_state`` = split):

``probe``
    The defaults (with the probe).
``mixture``
    The defaults with the probe switched off: the companion's base is the
    mixture wherever the search keeps one (the code before the probe).
``gaussian-flow``
    The same flow on a fixed Gaussian base (``base="gaussian"``), the peer
    whose lead on the log-normal the probe was made for.

Datasets (exact log-densities; seed ``s``: 5,000 training rows from seed
``2 s``, 5,000 test rows from ``2 s + 1``):

``banana4``
    ``z`` standard normal in 4-D, ``x2 = z2 + (z1^2 - 1) / 2`` and ``x4 =
    z4 + (z3^2 - 1) / 2``: two curved ridges, a volume-preserving map.
``sinh_arcsinh4``
    ``y = L z`` with a fixed lower-triangular ``L`` (correlated), ``x =
    sinh((asinh(y) + 0.5) / 0.6)``: skewed, heavy-tailed features.
``lognormal5``
    ``bench_density.py``'s log-normal (its seeds and sizes).

Usage (from the repository root; one thread)::

    python benchmarks/probe_companion.py --datasets banana4 sinh_arcsinh4 --splits 0
    python benchmarks/probe_companion.py --datasets lognormal5 --splits 0 --merge

Writes ``companion_probe.json`` and ``.md`` into ``--output`` (default
``benchmarks/results/companion_probe``).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from _common import run_probe
from bench_density import make_datasets
from scipy import stats

from sktt_flow import TensorizingFlowDensity

MODES = ("probe", "mixture", "gaussian-flow")

#: The fixed mixing matrix of ``sinh_arcsinh4``.
_SINH_ARCSINH_MATRIX = np.array(
    [[1.0, 0.0, 0.0, 0.0], [0.6, 0.8, 0.0, 0.0], [0.3, -0.4, 0.87, 0.0], [0.2, 0.5, 0.1, 0.83]]
)


def banana4(n: int, seed: int) -> np.ndarray:
    z = np.random.default_rng(seed).standard_normal((n, 4))
    x = z.copy()
    x[:, 1] += 0.5 * (z[:, 0] ** 2 - 1.0)
    x[:, 3] += 0.5 * (z[:, 2] ** 2 - 1.0)
    return x


def banana4_log_density(x: np.ndarray) -> np.ndarray:
    z = x.copy()
    z[:, 1] -= 0.5 * (x[:, 0] ** 2 - 1.0)
    z[:, 3] -= 0.5 * (x[:, 2] ** 2 - 1.0)
    return stats.norm.logpdf(z).sum(axis=1)


def sinh_arcsinh4(n: int, seed: int) -> np.ndarray:
    y = np.random.default_rng(seed).standard_normal((n, 4)) @ _SINH_ARCSINH_MATRIX.T
    return np.sinh((np.arcsinh(y) + 0.5) / 0.6)


def sinh_arcsinh4_log_density(x: np.ndarray) -> np.ndarray:
    stretched = 0.6 * np.arcsinh(x) - 0.5
    covariance = _SINH_ARCSINH_MATRIX @ _SINH_ARCSINH_MATRIX.T
    log_jacobian = np.log(np.cosh(stretched) * 0.6 / np.sqrt(1.0 + x**2)).sum(axis=1)
    gaussian = stats.multivariate_normal(np.zeros(4), covariance)
    return gaussian.logpdf(np.sinh(stretched)) + log_jacobian


DATASETS = ("banana4", "sinh_arcsinh4", "lognormal5")


def load(key: str, split: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Training rows, test rows and the test rows' true log-density."""
    if key == "lognormal5":
        dataset = {d.key: d for d in make_datasets()}[key]
        train, test, truth = dataset.load(5000, 5000, split)
        return train, test, truth(test)
    sample, log_density = {
        "banana4": (banana4, banana4_log_density),
        "sinh_arcsinh4": (sinh_arcsinh4, sinh_arcsinh4_log_density),
    }[key]
    test = sample(5000, 2 * split + 1)
    return sample(5000, 2 * split), test, log_density(test)


class _WithoutProbe(TensorizingFlowDensity):
    """The defaults with the companion's probe switched off (the mixture kept)."""

    def _probed_companion(self, mixture, mixture_model, *args):
        return mixture, mixture_model


def run(key: str, split: int, modes: Sequence[str]) -> list[dict[str, Any]]:
    train, test, truth = load(key, split)
    scores, rows = {}, []
    for mode in modes:
        estimator = {
            "probe": TensorizingFlowDensity(random_state=split),
            "mixture": _WithoutProbe(random_state=split),
            "gaussian-flow": TensorizingFlowDensity(base="gaussian", random_state=split),
        }[mode]
        start = time.perf_counter()
        estimator.fit(train)
        seconds = time.perf_counter() - start
        scores[mode] = estimator.score_samples(test)
        companion = estimator.flow_.companion
        rows.append(
            {
                "dataset": key,
                "split": split,
                "mode": mode,
                "test_log_likelihood": float(scores[mode].mean()),
                "test_se": float(scores[mode].std() / math.sqrt(len(test))),
                "truth": float(truth.mean()),
                "fit_seconds": seconds,
                "companion_base": None if companion is None else type(companion.q0).__name__,
                "companion_weight": float(estimator.companion_weight_),
            }
        )
        score = rows[-1]["test_log_likelihood"]
        print(f"[{key}, split {split}] {mode}: {score:.4f}, {seconds:.1f} s")
    for row in rows:
        for reference in ("mixture", "gaussian-flow"):
            if row["mode"] != reference and reference in scores:
                difference = scores[row["mode"]] - scores[reference]
                row[f"minus_{reference}"] = float(difference.mean())
                row[f"minus_{reference}_se"] = float(difference.std() / math.sqrt(len(test)))
    return rows


def markdown_report(payload: dict[str, Any]) -> str:
    lines = [
        "# The companion's probe: one Gaussian or the Gaussian mixture",
        "",
        "Generated by `benchmarks/probe_companion.py`; see its docstring. Differences are "
        "paired over the test rows (± their standard error).",
        "",
    ]
    for index, run_ in enumerate(payload["runs"]):
        lines.append(
            f"- run {index}: {run_['date']}, `{run_['command']}`, {run_['cpu']}, "
            f"{run_['torch_num_threads']} torch thread(s)"
        )
    lines += [
        "",
        "| dataset | split | mode | test | truth | minus mixture | minus gaussian-flow | fit s "
        "| companion | weight |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]

    def difference(row: dict[str, Any], reference: str) -> str:
        value = row.get(f"minus_{reference}")
        return "" if value is None else f"{value:+.4f} ± {row[f'minus_{reference}_se']:.4f}"

    for row in payload["rows"]:
        cells = [
            row["dataset"],
            row["split"],
            row["mode"],
            f"{row['test_log_likelihood']:.4f} ± {row['test_se']:.4f}",
            f"{row['truth']:.4f}",
            difference(row, "mixture"),
            difference(row, "gaussian-flow"),
            f"{row['fit_seconds']:.1f}",
            row["companion_base"] or "none",
            f"{row['companion_weight']:.3g}",
        ]
        lines.append("| " + " | ".join(str(cell) for cell in cells) + " |")
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", choices=DATASETS, required=True, metavar="KEY")
    parser.add_argument("--splits", nargs="+", type=int, default=[0])
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/companion_probe"))
    parser.add_argument("--merge", action="store_true", help="keep other datasets' rows")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    path = run_probe(run, args, "companion_probe", markdown_report)
    print(f"Wrote {path} and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
