"""Figures of the benchmark reports for the documentation's benchmarks page.

Reads the JSON reports in ``benchmarks/results/`` (written by the ``bench_*.py``
scripts through ``_common.write_results``) and draws, into
``docs/_static/benchmarks/`` by default:

- ``vi_auto.png`` and ``vi_tuned.png``: reverse KL and the share of modes found
  per variational target and method (``vi_auto_partial/vi_cpu_auto.json``, every
  setting on ``"auto"``; ``vi_full_partial/vi_cpu.json``, boxes and resolutions
  chosen by hand);
- ``density.png``: held-out log-likelihood per dataset, as the difference to the
  best tuned classical peer (GaussianMixture or KernelDensity) with its standard
  error paired over the splits (``density_auto_toys`` and ``density_auto``);
- ``speed.png``: points per second against the dimension, of the estimator on
  both bases (``speed_cpu.json``) and of the TT base alone
  (``tt_distribution_cpu.json``).

Nothing is measured here: the figures only redraw the recorded numbers. Run
from the repository root::

    python benchmarks/plot_results.py                # writes docs/_static/benchmarks/*.png
    python benchmarks/plot_results.py --output DIR   # somewhere else
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display is needed or wanted

import matplotlib.pyplot as plt
from _common import as_float
from bench_density import paired_difference
from matplotlib.axes import Axes
from PIL import Image

__all__ = ["main", "plot_density", "plot_speed", "plot_vi"]

BENCHMARKS = Path(__file__).resolve().parent
RESULTS = BENCHMARKS / "results"
DEFAULT_OUTPUT = BENCHMARKS.parent / "docs" / "_static" / "benchmarks"
#: Resolution of every figure: readable on the page and well under 100 KB each.
DPI = 100

#: Colour and legend label of every method of both quality suites, one colour per
#: idea across all figures (the tensorizing flow is always blue, its Gaussian-base
#: twin always orange).
METHOD_STYLE = {
    "tt-flow": ("#1f77b4", "tensorizing flow"),
    "tf-default": ("#1f77b4", "tensorizing flow (defaults)"),
    "gaussian-flow": ("#ff7f0e", "same flow, Gaussian base"),
    "tt-alone": ("#2ca02c", "TT base alone"),
    "laplace": ("#7f7f7f", "Laplace approximation"),
    "tempered-flow": ("#17becf", "same flow, tempered TT layers"),
    "gmm": ("#9467bd", "GaussianMixture (tuned)"),
    "kde": ("#8c564b", "KernelDensity (tuned)"),
}

#: Short display names of the variational targets (the reports' names are long).
VI_LABELS = {
    "gl1d-16": "Ginzburg-Landau 1-D, d=16",
    "gl1d-32": "Ginzburg-Landau 1-D, d=32",
    "gl1d-50": "Ginzburg-Landau 1-D, d=50",
    "gl2d-8x8": "Ginzburg-Landau 8x8, d=64 *",
    "mog30d-5": "5-mode mixture, d=30",
    "double-rosenbrock": "double Rosenbrock, d=11",
    "mog2d-40": "40-mode mixture, d=2",
    "manywell-32": "ManyWell, d=32 (wells)",
    "funnel-10": "Neal's funnel, d=10",
    "logreg-breast_cancer": "logistic regr., breast cancer, d=31",
    "logreg-wine": "logistic regr., wine, d=14",
    "eight-schools": "eight schools, centred, d=10",
    "eight-schools-noncentered": "eight schools, non-centred, d=10",
}

#: Short display names of the density datasets.
DENSITY_LABELS = {
    "moons": "moons (2-D)",
    "8gaussians": "8 Gaussians (2-D)",
    "checkerboard": "checkerboard (2-D)",
    "2spirals": "two spirals (2-D)",
    "mog8d": "8-mode mixture (8-D)",
    "wine": "wine (13-D)",
    "breast_cancer": "breast cancer (30-D)",
    "diabetes": "diabetes (10-D)",
    "digits10": "digits, PCA 10",
    "digits": "digits, PCA 15",
    "digits20": "digits, PCA 20",
}

#: Reverse KL axis of the VI figures: values below the floor (exact up to the
#: sampling noise of 10,000 draws) and above the ceiling are drawn at the edge
#: and labelled with their value.
KL_FLOOR = 1e-4
KL_CEILING = 100.0


def read_report(path: Path) -> dict[str, Any]:
    """The JSON report at ``path``.

    Raises
    ------
    SystemExit
        If the file is missing: the figures are drawn from recorded runs only.
    """
    if not path.is_file():
        raise SystemExit(f"{path}: no such report; run the benchmark that writes it first.")
    return json.loads(path.read_text(encoding="utf-8"))


def _save(figure: plt.Figure, path: Path) -> Path:
    """Write ``figure`` as a palette PNG (a few dozen KB instead of a hundred or more)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, facecolor="white")
    plt.close(figure)
    buffer.seek(0)
    # Flat colours and anti-aliased text fit in a 128-colour palette without
    # visible loss, and the repository keeps these files.
    with Image.open(buffer) as image:
        image.convert("RGB").quantize(colors=128).save(path, optimize=True)
    return path


def _short_number(value: float) -> str:
    """``value`` in at most about four characters, for labels on the plots."""
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 1e4 or magnitude < 1e-3:
        mantissa, exponent = f"{value:.1e}".split("e")
        return f"{mantissa}e{int(exponent)}"
    if magnitude >= 10:
        return f"{value:.0f}"
    return f"{value:.2g}"


# ------------------------------------------------------------ variational
def _vi_rows(report: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str], dict]:
    """Cases in suite order, methods in settings order, rows by (key, method)."""
    cases = report["cases"]
    methods = list(report["metadata"]["settings"]["methods"])
    rows = {(r["key"], r["method"]): r for r in report["results"]}
    ran = {m for _, m in rows}
    return cases, [m for m in methods if m in ran], rows


def _kl_or_elbo_gap(
    case: dict[str, Any], method: str, rows: dict[tuple[str, str], dict[str, Any]]
) -> float | None:
    """Reverse KL of a row; where log Z is unknown, its ELBO below the best ELBO.

    Reverse KL = log Z - ELBO, so the ELBO below the best method's ELBO is that
    method's reverse KL minus the best one's: the same comparison without log Z.
    """
    row = rows.get((case["key"], method))
    if row is None or row["status"] != "ok":
        return None
    kl = as_float(row["reverse_kl"])
    if kl is not None:
        return kl
    elbos = [
        as_float(r["elbo"])
        for (key, _), r in rows.items()
        if key == case["key"] and r["status"] == "ok" and r["elbo"] is not None
    ]
    elbo = as_float(row["elbo"])
    if elbo is None or not elbos:
        return None
    return max(elbos) - elbo


def plot_vi(report_path: Path, output: Path, title: str) -> Path:
    """Reverse KL and share of modes found per target and method, side by side.

    Parameters
    ----------
    report_path : Path
        A ``vi_cpu*.json`` report of ``bench_vi.py``.
    output : Path
        The PNG to write.
    title : str
        The figure's title (which suite, which settings).

    Returns
    -------
    Path
        ``output``.
    """
    report = read_report(report_path)
    cases, methods, rows = _vi_rows(report)
    n_methods = len(methods)
    bar_height = 0.8 / n_methods
    # Fixed inches per bar and for the title, legend and axis labels, so that
    # both suites' figures have the same bar size and nothing overlaps.
    top_inches, bottom_inches = 0.95, 0.75
    height = top_inches + bottom_inches + len(cases) * (0.19 * n_methods + 0.12)
    figure, (kl_axes, modes_axes) = plt.subplots(
        1,
        2,
        figsize=(11, height),
        sharey=True,
        gridspec_kw={"width_ratios": [1.6, 1.0], "wspace": 0.08},
    )
    for index, case in enumerate(cases):
        for position, method in enumerate(methods):
            y = index + (position - (n_methods - 1) / 2) * bar_height
            colour = METHOD_STYLE[method][0]
            row = rows.get((case["key"], method))
            failed = row is None or row["status"] != "ok"
            value = None if failed else _kl_or_elbo_gap(case, method, rows)
            if failed or value is None:
                # a method run on some targets only (tempered-flow) has no row
                # for the others
                status = "not run" if row is None else "failed"
                kl_axes.text(KL_FLOOR * 1.3, y, status, va="center", fontsize=7, color=colour)
                modes_axes.text(0.02, y, status, va="center", fontsize=7, color=colour)
                continue
            shown = min(max(value, KL_FLOOR), KL_CEILING)
            kl_axes.barh(
                y, shown - KL_FLOOR * 0.999, left=KL_FLOOR * 0.999, height=bar_height, color=colour
            )
            if value < KL_FLOOR:
                kl_axes.text(KL_FLOOR * 1.3, y, f"< {KL_FLOOR:g}", va="center", fontsize=6.5)
            elif value > KL_CEILING:
                kl_axes.text(
                    KL_CEILING * 0.8,
                    y,
                    f"{_short_number(value)} >",
                    va="center",
                    ha="right",
                    fontsize=6.5,
                    color="white",
                    fontweight="bold",
                )
            else:
                kl_axes.text(shown * 1.15, y, _short_number(value), va="center", fontsize=6.5)
            found, groups = row["modes_found"], row["n_mode_groups"]
            if found is None or not groups:
                continue
            modes_axes.barh(y, found / groups, height=bar_height, color=colour)
            modes_axes.text(
                min(found / groups, 1.0) + 0.02, y, f"{found}/{groups}", va="center", fontsize=6.5
            )
    labels = [VI_LABELS.get(case["key"], case["name"]) for case in cases]
    kl_axes.set_yticks(range(len(cases)), labels, fontsize=8)
    kl_axes.set_ylim(len(cases) - 0.5, -0.5)
    kl_axes.set_xscale("log")
    kl_axes.set_xlim(KL_FLOOR * 0.999, KL_CEILING)
    kl_axes.set_xlabel("reverse KL = log Z - ELBO (nats, lower is better)", fontsize=8.5)
    kl_axes.grid(axis="x", color="#dddddd", linewidth=0.6)
    kl_axes.set_axisbelow(True)
    modes_axes.set_xlim(0, 1.18)
    modes_axes.set_xticks([0.25, 0.5, 0.75, 1.0])
    modes_axes.axvline(1.0, color="#999999", linewidth=0.6)
    modes_axes.set_xlabel("share of modes found (higher is better)", fontsize=8.5)
    for axes in (kl_axes, modes_axes):
        axes.tick_params(labelsize=8)
        for boundary in range(1, len(cases)):
            axes.axhline(boundary - 0.5, color="#eeeeee", linewidth=0.6)
    handles = [
        plt.Rectangle((0, 0), 1, 1, color=METHOD_STYLE[m][0], label=METHOD_STYLE[m][1])
        for m in methods
    ]
    figure.suptitle(title, fontsize=10, y=1 - 0.12 / height)
    figure.legend(
        handles=handles,
        loc="upper center",
        ncol=len(methods),
        fontsize=8.5,
        frameon=False,
        bbox_to_anchor=(0.5, 1 - 0.38 / height),
    )
    if any(as_float(case["log_normalizer"]) is None for case in cases):
        figure.text(
            0.01,
            0.06 / height,
            "* log Z unknown: reverse KL minus the best method's (ELBO below the best ELBO).",
            fontsize=7.5,
        )
    figure.subplots_adjust(
        left=0.25, right=0.985, top=1 - top_inches / height, bottom=bottom_inches / height
    )
    return _save(figure, output)


# ------------------------------------------------------------ density
def _density_panel(
    axes: Axes, report: dict[str, Any], methods: Sequence[str], limits: tuple[float, float]
) -> None:
    """Differences to the best tuned peer per dataset, with paired SEs, on ``axes``.

    The axis is linear within ``limits``; a point outside is drawn at the edge
    as an arrowhead with its value written next to it.
    """
    results = report["results"]
    keys: list[str] = []
    for row in results:
        if row["key"] not in keys:
            keys.append(row["key"])
    means: dict[tuple[str, str], float] = {}
    for key in keys:
        for peer in ("gmm", "kde"):
            values = [
                as_float(r["test_log_likelihood"])
                for r in results
                if r["key"] == key and r["method"] == peer and r["status"] == "ok"
            ]
            if values:
                means[(key, peer)] = sum(values) / len(values)
    offsets = {m: (i - (len(methods) - 1) / 2) * 0.17 for i, m in enumerate(methods)}
    labels = []
    for index, key in enumerate(keys):
        peers = [p for p in ("gmm", "kde") if (key, p) in means]
        best = max(peers, key=lambda p: means[(key, p)])
        other = [p for p in peers if p != best]
        labels.append(f"{DENSITY_LABELS.get(key, key)}\nvs {METHOD_STYLE[best][1].split()[0]}")
        for method in methods:
            compared = other[0] if method == "other-peer" and other else method
            if compared == "other-peer":
                continue
            difference = paired_difference(results, key, compared, best)
            if difference is None:
                continue
            colour, _ = METHOD_STYLE[compared]
            y = index + offsets[method]
            mean, se = difference["mean"], difference["se"] or 0.0
            low, high = limits
            if low <= mean <= high:
                axes.errorbar(
                    mean,
                    y,
                    xerr=se,
                    fmt="o",
                    color=colour,
                    markersize=4,
                    elinewidth=1.2,
                    capsize=2,
                )
                continue
            edge = low if mean < low else high
            inward = 1 if mean < low else -1
            axes.plot(
                edge,
                y,
                marker="<" if mean < low else ">",
                color=colour,
                markersize=6,
                clip_on=False,
            )
            axes.text(
                edge + inward * 0.02 * (high - low),
                y,
                f"{mean:+.2f}",
                color=colour,
                va="center",
                ha="left" if inward > 0 else "right",
                fontsize=7,
            )
    axes.set_yticks(range(len(keys)), labels, fontsize=7.5)
    axes.set_ylim(len(keys) - 0.5, -0.5)
    axes.axvline(0.0, color="black", linewidth=0.8)
    axes.set_xlim(*limits)
    axes.grid(axis="x", color="#dddddd", linewidth=0.6)
    axes.set_axisbelow(True)
    axes.tick_params(axis="x", labelsize=7.5)
    for boundary in range(1, len(keys)):
        axes.axhline(boundary - 0.5, color="#eeeeee", linewidth=0.6)


def plot_density(toys_path: Path, real_path: Path, output: Path) -> Path:
    """Held-out score per dataset as the difference to the best tuned peer.

    Each point is the mean over the splits of ``method - best of (gmm, kde)``
    (the peer with the higher mean held-out log-likelihood), with its standard
    error paired over the splits (``bench_density.paired_difference``, the
    numbers of the reports' "which method wins" tables). The other tuned peer
    is drawn too, in its own colour.

    Parameters
    ----------
    toys_path, real_path : Path
        ``density_cpu.json`` reports of the toys and of the real datasets.
    output : Path
        The PNG to write.

    Returns
    -------
    Path
        ``output``.
    """
    toys, real = read_report(toys_path), read_report(real_path)
    methods = ["tf-default", "tt-alone", "gaussian-flow", "other-peer"]
    figure, (toy_axes, real_axes) = plt.subplots(
        1, 2, figsize=(11, 5.4), gridspec_kw={"wspace": 0.42}
    )
    # Limits that show the tensorizing flow's margins; larger gaps are labelled.
    _density_panel(toy_axes, toys, methods, (-0.1, 0.03))
    _density_panel(real_axes, real, methods, (-2.5, 2.5))
    toy_axes.set_title(
        "2-D toys and an 8-D mixture: 5,000 train / 5,000 test, 3 draws", fontsize=8.5
    )
    real_axes.set_title("real tables, standardised: three 70/30 splits", fontsize=8.5)
    for axes in (toy_axes, real_axes):
        axes.set_xlabel(
            "held-out log-likelihood minus the best tuned peer's\n"
            "(nats per point; > 0: ahead of it)",
            fontsize=8,
        )
    handles = [
        plt.Line2D(
            [], [], marker="o", linestyle="", color=METHOD_STYLE[m][0], label=METHOD_STYLE[m][1]
        )
        for m in ("tf-default", "tt-alone", "gaussian-flow", "gmm", "kde")
    ]
    figure.legend(
        handles=handles,
        loc="upper center",
        ncol=5,
        fontsize=8,
        frameon=False,
        bbox_to_anchor=(0.5, 0.995),
    )
    figure.text(
        0.5,
        0.005,
        "bars: standard error of the difference, paired over the three "
        "splits; the best tuned peer of each dataset is the vertical line at 0",
        ha="center",
        fontsize=7.5,
    )
    figure.subplots_adjust(left=0.13, right=0.985, top=0.88, bottom=0.16)
    return _save(figure, output)


# ------------------------------------------------------------ speed
def plot_speed(speed_path: Path, tt_path: Path, output: Path) -> Path:
    """Points per second against the dimension, estimator and TT base alone.

    Parameters
    ----------
    speed_path : Path
        ``speed_cpu.json`` of ``bench_speed.py`` (its ``reference`` and ``d`` rows).
    tt_path : Path
        ``tt_distribution_cpu.json`` of ``bench_tt_distribution.py`` (its ``d``
        sweeps and the DiagGaussian reference point).
    output : Path
        The PNG to write.

    Returns
    -------
    Path
        ``output``.
    """
    speed, tt = read_report(speed_path), read_report(tt_path)
    figure, (estimator_axes, base_axes) = plt.subplots(1, 2, figsize=(11, 4.3), sharey=True)

    rows = sorted(
        (r for r in speed["rows"] if r["sweep"] in ("reference", "d")), key=lambda r: r["d"]
    )
    dims = [r["d"] for r in rows]
    lines = [
        ("score_samples, TT base", "score_tt_s", "n_score", "tt-flow", "-"),
        ("score_samples, Gaussian base", "score_gaussian_s", "n_score", "gaussian-flow", "-"),
        ("sample, TT base", "sample_tt_s", "n_sample", "tt-flow", "--"),
        ("sample, Gaussian base", "sample_gaussian_s", "n_sample", "gaussian-flow", "--"),
    ]
    for label, seconds, count, method, style in lines:
        rates = [r[count] / r[seconds] for r in rows]
        estimator_axes.plot(
            dims,
            rates,
            style,
            marker="o",
            markersize=4,
            color=METHOD_STYLE[method][0],
            label=label,
        )
    meta = speed["metadata"]
    estimator_axes.set_title(
        f"TensorizingFlowDensity, RealNVP 8 x 64, tt_rank 8, float32\n"
        f"{meta['device_name']}, {meta['threads']} thread, {meta['date'][:10]}",
        fontsize=8.5,
    )

    results = tt["results"]
    for operation, style in (("log_prob", "-"), ("sample", "--")):
        points = sorted(
            (r["d"], r["points_per_s"])
            for r in results
            if r["model"] == "tt" and r["sweep"] == "d" and r["operation"] == operation
        )
        base_axes.plot(
            [p[0] for p in points],
            [p[1] for p in points],
            style,
            marker="o",
            markersize=4,
            color=METHOD_STYLE["tt-alone"][0],
            label=f"TT base {operation}",
        )
        gaussian = [
            r
            for r in results
            if r["model"] == "diag_gaussian"
            and r["operation"] == operation
            and r["dtype"] == "float32"
        ]
        for row in gaussian:
            base_axes.plot(
                row["d"],
                row["points_per_s"],
                marker="s" if operation == "log_prob" else "D",
                linestyle="",
                color=METHOD_STYLE["gaussian-flow"][0],
                label=f"DiagGaussian {operation}",
            )
    tt_meta = tt["metadata"]
    reference = tt_meta["reference"]
    base_axes.set_title(
        f"TTDistribution alone, tt_rank {reference['tt_rank']}, n_basis "
        f"{reference['n_basis']}, float32\n{tt_meta['device_name']}, "
        f"{tt_meta['torch_num_threads']} thread, {tt_meta['date'][:10]}",
        fontsize=8.5,
    )
    for axes in (estimator_axes, base_axes):
        axes.set_xscale("log", base=2)
        axes.set_yscale("log")
        axes.set_xlabel("dimension d", fontsize=8.5)
        axes.grid(which="both", color="#e5e5e5", linewidth=0.5)
        axes.tick_params(labelsize=8)
        axes.legend(fontsize=7.5, frameon=False, loc="lower left")
        axes.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    estimator_axes.set_xticks([2, 8, 32, 64])
    base_axes.set_xticks([8, 16, 32, 64])
    estimator_axes.set_ylabel("points per second (higher is better)", fontsize=8.5)
    figure.tight_layout()
    return _save(figure, output)


def main(argv: Sequence[str] | None = None) -> int:
    """Draw every figure; print the paths written."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--output",
        type=Path,
        default=DEFAULT_OUTPUT,
        help="folder of the PNG files (default: docs/_static/benchmarks)",
    )
    parser.add_argument(
        "--results",
        type=Path,
        default=RESULTS,
        help="folder of the JSON reports (default: benchmarks/results)",
    )
    args = parser.parse_args(argv)
    results, output = args.results, args.output
    written = [
        plot_vi(
            results / "vi_auto_partial" / "vi_cpu_auto.json",
            output / "vi_auto.png",
            'Variational inference, every setting on "auto" (no box given), '
            "100 training iterations",
        ),
        plot_vi(
            results / "vi_full_partial" / "vi_cpu.json",
            output / "vi_tuned.png",
            "Variational inference on each target's own box, tt_rank and n_basis "
            "chosen by hand, 300 training iterations",
        ),
        plot_density(
            results / "density_auto_toys" / "density_cpu.json",
            results / "density_auto" / "density_cpu.json",
            output / "density.png",
        ),
        plot_speed(
            results / "speed_cpu.json", results / "tt_distribution_cpu.json", output / "speed.png"
        ),
    ]
    for path in written:
        print(f"{path} ({math.ceil(path.stat().st_size / 1024)} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
