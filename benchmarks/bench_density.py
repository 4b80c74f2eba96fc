"""Density estimation: the tensorizing flow next to a Gaussian-base flow, GMM and KDE.

Datasets (train/test splits fixed by seed):

- four 2-D toys, generated in this file with ``numpy.random.default_rng``:
  ``moons`` (two noisy half circles), ``8gaussians`` (eight Gaussians on a
  circle, FFJORD's), ``checkerboard`` (uniform on 8 of the 16 squares of
  ``[-4, 4]^2``, FFJORD's) and ``2spirals`` (FFJORD's); the true density is
  known for ``8gaussians`` and ``checkerboard``;
- ``mog8d``: ``MixtureOfGaussians.random_modes(8, 8, low=-4, high=4, std=0.5,
  seed=0)`` from :mod:`sktt_flow.targets`, sampled exactly; true density known;
- ``digits``: scikit-learn's ``load_digits`` (1,797 images of 8 x 8 pixels in
  0..16), dequantised with uniform noise on [0, 1), divided by 17, split 70/30,
  then PCA to 15 whitened components fitted on the training split: the
  log-likelihoods are those of the 15 PCA coordinates.

Methods:

``tf-default``
    :class:`~sktt_flow.TensorizingFlowDensity` with its default parameters
    (``random_state=0``).
``tf-grid``
    The same inside ``GridSearchCV`` over ``tt_rank`` (default scoring: the
    estimator's mean log-likelihood), refitted on the whole training split.
``gaussian-flow``
    The same flow, training and defaults on a fixed standard Gaussian base
    (``base="gaussian"``): an ordinary RealNVP.
``gmm``
    ``GaussianMixture(covariance_type="full")`` with ``GridSearchCV`` over
    ``n_components``.
``kde``
    ``KernelDensity`` (Gaussian kernel) with ``GridSearchCV`` over
    ``bandwidth`` (a log grid times the mean standard deviation of the
    training features).
``tt-alone``
    The TT base alone (``flow="none"``), fitted by maximum likelihood.

Metric: the mean log-likelihood of the test split (with its standard error),
next to the true density's where it is known; fit seconds (grid searches
included), chosen hyper-parameters and warnings per row. A method that raises
is recorded as failed with its message, and the suite goes on.

Usage (from the repository root)::

    python benchmarks/bench_density.py --quick          # smoke test, a few minutes
    python benchmarks/bench_density.py                  # full suite, about 1.5 h on one core
    python benchmarks/bench_density.py --only moons digits
    python benchmarks/bench_density.py --only mog8d --merge

Writes ``density_cpu.json`` and ``density_cpu.md`` into ``--output`` (default
``benchmarks/results/``); with ``--quick`` the names end in ``_quick``. With
``--merge`` the rows of the datasets run replace those of the same datasets in
an existing result file of the same settings.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import (
    as_float,
    count_warnings,
    format_value,
    header_rule,
    load_average,
    run_metadata,
    write_results,
)
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA
from sklearn.mixture import GaussianMixture
from sklearn.model_selection import GridSearchCV, KFold, train_test_split
from sklearn.neighbors import KernelDensity

from sktt_flow import TensorizingFlowDensity
from sktt_flow.targets import MixtureOfGaussians

SEED = 0
METHODS = ("tf-default", "tf-grid", "gaussian-flow", "gmm", "kde", "tt-alone")

#: Array of points -> true log-density per point, or None.
LogDensity = Callable[[np.ndarray], np.ndarray]


# ------------------------------------------------------------------ datasets
def moons(n: int, rng: np.random.Generator) -> np.ndarray:
    """Two interleaved half circles (as scikit-learn's ``make_moons``), noise 0.1."""
    upper = rng.random(n) < 0.5
    t = np.pi * rng.random(n)
    x = np.where(upper, np.cos(t), 1.0 - np.cos(t))
    y = np.where(upper, np.sin(t), 0.5 - np.sin(t))
    return np.stack([x, y], axis=1) + 0.1 * rng.standard_normal((n, 2))


#: FFJORD's 8 Gaussians: centres 4 (cos, sin)(k pi / 4), std 0.5, all / sqrt(2).
_EIGHT_CENTRES = (
    4.0
    * np.stack([np.cos(np.arange(8) * np.pi / 4), np.sin(np.arange(8) * np.pi / 4)], 1)
    / math.sqrt(2.0)
)
_EIGHT_STD = 0.5 / math.sqrt(2.0)


def eight_gaussians(n: int, rng: np.random.Generator) -> np.ndarray:
    """FFJORD's 8 Gaussians (equal weights)."""
    centres = _EIGHT_CENTRES[rng.integers(0, 8, n)]
    return centres + _EIGHT_STD * rng.standard_normal((n, 2))


def eight_gaussians_log_density(x: np.ndarray) -> np.ndarray:
    """The true log-density of :func:`eight_gaussians`."""
    squared = ((x[:, None, :] - _EIGHT_CENTRES[None]) ** 2).sum(-1)
    log_components = -0.5 * squared / _EIGHT_STD**2 - math.log(2 * math.pi * _EIGHT_STD**2)
    top = log_components.max(1)
    return top + np.log(np.exp(log_components - top[:, None]).mean(1))


def checkerboard(n: int, rng: np.random.Generator) -> np.ndarray:
    """FFJORD's checkerboard: uniform on 8 of the 16 unit-2 squares of [-4, 4]^2."""
    x1 = 4.0 * rng.random(n) - 2.0
    x2 = rng.random(n) - 2.0 * rng.integers(0, 2, n) + np.floor(x1) % 2
    return 2.0 * np.stack([x1, x2], axis=1)


def checkerboard_log_density(x: np.ndarray) -> np.ndarray:
    """log(1/32) on the black squares, -inf elsewhere."""
    inside = (np.abs(x) < 4).all(1)
    cell = (np.floor(x[:, 0] / 2) + np.floor(x[:, 1] / 2)) % 2 == 0
    return np.where(inside & cell, -math.log(32.0), -np.inf)


def two_spirals(n: int, rng: np.random.Generator) -> np.ndarray:
    """FFJORD's two spirals."""
    half = n // 2
    angle = np.sqrt(rng.random(n - half)) * 540.0 * (2 * np.pi) / 360.0
    points = np.stack(
        [
            -np.cos(angle) * angle + 0.5 * rng.random(n - half),
            np.sin(angle) * angle + 0.5 * rng.random(n - half),
        ],
        axis=1,
    )
    points = np.concatenate([points, -points[:half]]) / 3.0
    return points + 0.1 * rng.standard_normal((n, 2))


@dataclass(frozen=True)
class Dataset:
    """A dataset: train and test arrays, and the true log-density if known."""

    key: str
    name: str
    load: Callable[[int, int], tuple[np.ndarray, np.ndarray, LogDensity | None]]
    note: str = ""


def _toy(
    generator: Callable[[int, np.random.Generator], np.ndarray], truth: LogDensity | None
) -> Callable[[int, int], tuple[np.ndarray, np.ndarray, LogDensity | None]]:
    def load(n_train: int, n_test: int):
        train = generator(n_train, np.random.default_rng(SEED))
        test = generator(n_test, np.random.default_rng(SEED + 1))
        return train, test, truth

    return load


def _mog8d(n_train: int, n_test: int):
    target = MixtureOfGaussians.random_modes(8, 8, low=-4, high=4, std=0.5, seed=0)
    train = target.sample(n_train, random_state=SEED).numpy()
    test = target.sample(n_test, random_state=SEED + 1).numpy()
    log_z = target.log_normalizer

    def truth(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return (target.log_prob(torch.as_tensor(x)) - log_z).numpy()

    return train, test, truth


def _digits(n_train: int, n_test: int):
    """Dequantised, scaled, PCA-whitened digits; the sizes are the dataset's own."""
    del n_train, n_test
    rng = np.random.default_rng(SEED)
    pixels = load_digits().data
    pixels = (pixels + rng.random(pixels.shape)) / 17.0
    train, test = train_test_split(pixels, test_size=0.3, random_state=SEED)
    pca = PCA(n_components=15, whiten=True, random_state=SEED).fit(train)
    return pca.transform(train), pca.transform(test), None


def make_datasets() -> list[Dataset]:
    """Every dataset of the suite, in report order."""
    return [
        Dataset("moons", "moons (2-D)", _toy(moons, None)),
        Dataset(
            "8gaussians", "8 Gaussians (2-D)", _toy(eight_gaussians, eight_gaussians_log_density)
        ),
        Dataset(
            "checkerboard",
            "checkerboard (2-D)",
            _toy(checkerboard, checkerboard_log_density),
            "uniform on squares: the true density is discontinuous",
        ),
        Dataset("2spirals", "two spirals (2-D)", _toy(two_spirals, None)),
        Dataset("mog8d", "MoG random_modes(8, 8) (8-D)", _mog8d, "8 modes of std 0.5"),
        Dataset(
            "digits",
            "digits, PCA 15 whitened",
            _digits,
            "1,257 train / 540 test rows; log-likelihood of the 15 PCA coordinates",
        ),
    ]


QUICK_KEYS = ("moons", "mog8d", "digits")


# ----------------------------------------------------------------- results
@dataclass
class Result:
    """Everything measured for one (dataset, method)."""

    key: str
    dataset: str
    method: str
    n_train: int | None = None
    n_test: int | None = None
    n_features: int | None = None
    status: str = "ok"
    error: str | None = None
    test_log_likelihood: float | None = None
    test_log_likelihood_se: float | None = None
    n_test_nonfinite: int | None = None
    true_test_log_likelihood: float | None = None
    fit_seconds: float | None = None
    best_params: dict[str, Any] | None = None
    cv_scores: dict[str, float] | None = None
    n_iter: int | None = None
    warnings: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    run: int = 0


# ----------------------------------------------------------------- methods
def tf_estimator(args: argparse.Namespace, **parameters: Any) -> TensorizingFlowDensity:
    """The tensorizing flow with its defaults (``--max-iter`` aside)."""
    if args.max_iter is not None:
        parameters["max_iter"] = args.max_iter
    return TensorizingFlowDensity(random_state=SEED, **parameters)


def make_method(method: str, train: np.ndarray, args: argparse.Namespace) -> Any:
    """An unfitted estimator (or grid search) for one method."""
    cv = KFold(args.cv, shuffle=True, random_state=SEED)
    if method == "tf-default":
        return tf_estimator(args)
    if method == "tf-grid":
        return GridSearchCV(tf_estimator(args), {"tt_rank": args.tt_ranks}, cv=cv)
    if method == "gaussian-flow":
        return tf_estimator(args, base="gaussian")
    if method == "tt-alone":
        return tf_estimator(args, flow="none")
    if method == "gmm":
        components = [k for k in args.gmm_components if k <= len(train) // 10] or [1]
        return GridSearchCV(
            GaussianMixture(covariance_type="full", random_state=SEED),
            {"n_components": components},
            cv=cv,
        )
    if method == "kde":
        scale = float(train.std(0).mean())
        bandwidths = scale * np.logspace(-2.0, 0.3, args.n_bandwidths)
        return GridSearchCV(KernelDensity(), {"bandwidth": bandwidths.tolist()}, cv=cv)
    raise ValueError(f"unknown method {method!r}")


def run_method(
    dataset: Dataset,
    method: str,
    train: np.ndarray,
    test: np.ndarray,
    truth_mean: float | None,
    args: argparse.Namespace,
) -> Result:
    """Fit one method on one dataset and score it; failures become rows."""
    result = Result(
        dataset.key,
        dataset.name,
        method,
        n_train=len(train),
        n_test=len(test),
        n_features=train.shape[1],
        true_test_log_likelihood=truth_mean,
    )
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = make_method(method, train, args)
            start = time.perf_counter()
            model.fit(train)
            result.fit_seconds = time.perf_counter() - start
            if isinstance(model, GridSearchCV):
                result.best_params = {k: _plain(v) for k, v in model.best_params_.items()}
                result.cv_scores = {
                    _param_text(p): float(s)
                    for p, s in zip(
                        model.cv_results_["params"],
                        model.cv_results_["mean_test_score"],
                        strict=True,
                    )
                }
                fitted = model.best_estimator_
            else:
                fitted = model
            if isinstance(fitted, TensorizingFlowDensity):
                result.n_iter = fitted.n_iter_
            scores = fitted.score_samples(test)
            finite = np.isfinite(scores)
            result.n_test_nonfinite = int((~finite).sum())
            result.test_log_likelihood = float(scores.mean())
            if finite.all():
                result.test_log_likelihood_se = float(scores.std(ddof=1) / math.sqrt(len(scores)))
    except Exception as error:  # a failing method is a result, not a crash
        result.status = "failed"
        result.error = f"{type(error).__name__}: {error}"
        result.notes.append(traceback.format_exc(limit=4).strip().splitlines()[-1])
    result.warnings = count_warnings(caught)
    return result


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _param_text(params: dict[str, Any]) -> str:
    return ", ".join(
        f"{k}={_plain(v):.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()
    )


def summary_line(result: Result) -> str:
    """One line of progress output."""
    if result.status == "failed":
        return f"FAILED {result.error}"
    return (
        f"test log-lik {result.test_log_likelihood:.4f}, {result.fit_seconds:.1f} s, "
        f"best {result.best_params}, warnings {sum(result.warnings.values())}"
    )


def warm_up() -> None:
    """An untimed tiny fit of each kind of model, so one-time costs miss the first row."""
    data = np.random.default_rng(SEED).standard_normal((64, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for parameters in ({}, {"base": "gaussian"}, {"flow": "none"}):
            TensorizingFlowDensity(max_iter=1, random_state=SEED, **parameters).fit(data)
        GaussianMixture(2, random_state=SEED).fit(data)
        KernelDensity().fit(data).score_samples(data)


# ----------------------------------------------------------------- metadata
def settings(args: argparse.Namespace) -> dict[str, Any]:
    """What must agree between runs merged into one file."""
    defaults = TensorizingFlowDensity().get_params()
    tf_defaults = {
        k: defaults[k]
        for k in (
            "tt_rank",
            "n_basis",
            "flow",
            "n_flow_layers",
            "hidden_units",
            "max_iter",
            "batch_size",
            "learning_rate",
            "validation_fraction",
            "n_iter_no_change",
            "dtype",
        )
    }
    if args.max_iter is not None:
        tf_defaults["max_iter"] = args.max_iter
    return {
        "quick": args.quick,
        "n_train": args.n_train,
        "n_test": args.n_test,
        "cv_folds": args.cv,
        "tt_rank_grid": list(args.tt_ranks),
        "gmm_components_grid": list(args.gmm_components),
        "kde_bandwidth_grid": f"mean train std x logspace(-2, 0.3, {args.n_bandwidths})",
        "tensorizing_flow_parameters": tf_defaults,
        "random_state": SEED,
        "methods": list(args.methods),
    }


# ----------------------------------------------------------------- reports
def markdown_table(results: Sequence[dict[str, Any]]) -> list[str]:
    """The main table, one row per (dataset, method)."""
    header = (
        "| dataset | d | n train / test | method | test log-lik (se) | true density | "
        "gap to best | chosen | fit s | iters | warnings | status |"
    )
    lines = [header, header_rule(header)]
    best: dict[str, float] = {}
    for r in results:
        value = as_float(r["test_log_likelihood"])
        if r["status"] == "ok" and value is not None and math.isfinite(value):
            best[r["key"]] = max(best.get(r["key"], -math.inf), value)
    for r in results:
        value = as_float(r["test_log_likelihood"])
        gap = (
            "n/a"
            if value is None or r["key"] not in best
            else format_value(value - best[r["key"]], "+.3f")
        )
        if gap == "+0.000" and value == best.get(r["key"]):
            gap = "**best**"
        chosen = (
            ", ".join(
                f"{k}={format_value(v, '.3g') if isinstance(v, float) else v}"
                for k, v in r["best_params"].items()
            )
            if r["best_params"]
            else ""
        )
        status = "ok" if r["status"] == "ok" else f"**FAILED**: {(r['error'] or '')[:150]}"
        if r["n_test_nonfinite"]:
            status += f" ({r['n_test_nonfinite']} test points scored -inf/nan)"
        lines.append(
            f"| {r['dataset']} | {r['n_features']} | {r['n_train']} / {r['n_test']} | "
            f"{r['method']} | {format_value(r['test_log_likelihood'], '.3f')} "
            f"({format_value(r['test_log_likelihood_se'], '.3f')}) | "
            f"{format_value(r['true_test_log_likelihood'], '.3f')} | {gap} | {chosen} | "
            f"{format_value(r['fit_seconds'], '.3g')} | "
            f"{'' if r['n_iter'] is None else r['n_iter']} | "
            f"{sum(r['warnings'].values())} | {status} |"
        )
    return lines


def comparison(results: Sequence[dict[str, Any]], keys: Sequence[str]) -> list[str]:
    """Per dataset: ranking of the methods and the tensorizing flow's margins."""
    lines = [
        "| dataset | ranking (best first) | tf-default - gaussian-flow | "
        "tf-grid - best of gmm/kde | tf-default - tt-alone |",
        "|---|---|---|---|---|",
    ]
    for key in keys:
        rows = {
            r["method"]: as_float(r["test_log_likelihood"])
            for r in results
            if r["key"] == key and r["status"] == "ok"
        }
        rows = {m: v for m, v in rows.items() if v is not None and math.isfinite(v)}
        if not rows:
            continue
        name = next(r["dataset"] for r in results if r["key"] == key)
        ranking = " > ".join(sorted(rows, key=rows.get, reverse=True))

        def diff(a: str, b: str, rows=rows) -> str:
            return "n/a" if a not in rows or b not in rows else f"{rows[a] - rows[b]:+.3f}"

        classical = [m for m in ("gmm", "kde") if m in rows]
        if "tf-grid" in rows and classical:
            top = max(classical, key=rows.get)
            versus = f"{rows['tf-grid'] - rows[top]:+.3f} (vs {top})"
        else:
            versus = "n/a"
        lines.append(
            f"| {name} | {ranking} | {diff('tf-default', 'gaussian-flow')} | {versus} | "
            f"{diff('tf-default', 'tt-alone')} |"
        )
    return lines


def markdown_report(payload: dict[str, Any]) -> str:
    """Metadata, the tables, per-row notes and how to read the columns."""
    meta, results = payload["metadata"], payload["results"]
    s = meta["settings"]
    keys = list(dict.fromkeys(r["key"] for r in results))
    missing = [d.key for d in make_datasets() if d.key not in keys]
    lines = ["# Density estimation: tensorizing flow, Gaussian-base flow, GMM, KDE, CPU", ""]
    if s["quick"]:
        lines += [
            "**Quick run** (smoke test): small samples, short training, small grids; not "
            "representative of converged fits.",
            "",
        ]
    if missing:
        lines += [f"**Partial run**: datasets not run: {', '.join(missing)}.", ""]
    for index, run in enumerate(meta["runs"]):
        versions = ", ".join(f"{k} {v}" for k, v in run["versions"].items())
        lines += [
            f"- run {index}: date {run['date']}; command: `{run['command']}`; datasets "
            f"{', '.join(run['datasets'])}",
            f"  - CPU: {run['cpu']} ({run['cpu_count']} CPUs), torch threads "
            f"{run['torch_num_threads']}, OMP_NUM_THREADS={run['omp_num_threads']}; load "
            f"average at start {run['load_average_start']}, at end "
            f"{run.get('load_average_end')}; wall time {run.get('wall_time_s', 0):.0f} s",
            f"  - versions: {versions}; sktt_flow {run['sktt_flow_version']} (git "
            f"{run['git']}, sources sha256 {run['sktt_flow_source_sha256'][:12]})",
        ]
    tf = ", ".join(f"{k}={v}" for k, v in s["tensorizing_flow_parameters"].items())
    lines += [
        f"- toys and mog8d: {s['n_train']:,} train / {s['n_test']:,} test points (seeds "
        f"{SEED} and {SEED + 1}); digits: its own 70/30 split",
        f"- tensorizing flow (tf-*, gaussian-flow, tt-alone): {tf}, random_state "
        f"{s['random_state']}",
        f"- grids ({s['cv_folds']}-fold shuffled KFold, default scoring = the "
        "estimator's `score`: mean log-likelihood for the flows and GMM, total for "
        f"KernelDensity): tt_rank {s['tt_rank_grid']}; GMM n_components "
        f"{s['gmm_components_grid']} (at most n_train / 10), full covariances; KDE "
        f"bandwidth {s['kde_bandwidth_grid']}",
        "",
        *markdown_table(results),
        "",
        "## Ranking per dataset",
        "",
        "Held-out mean log-likelihood, higher is better; the standard errors in the "
        "table tell which gaps are noise. Positive margins favour the tensorizing flow.",
        "",
        *comparison(results, keys),
        "",
        "## Columns",
        "",
        "- **test log-lik (se)**: mean log-density of the test split under the fitted "
        "model, and the standard error of that mean.",
        "- **true density**: the same mean under the data-generating density, where "
        "known (an upper bound in expectation for any model).",
        "- **gap to best**: difference to the best method on the dataset.",
        "- **chosen**: hyper-parameters picked by the grid search.",
        "- **fit s**: wall time of `fit` (the whole grid search and refit for tf-grid, "
        "gmm and kde), one torch thread; **iters**: epochs of the last training stage "
        "of the tensorizing flow (the refitted one for tf-grid).",
        "- **warnings**: warnings raised while fitting (texts in the notes).",
        "",
        "## Notes per row",
        "",
    ]
    notes_by_key = {d.key: d.note for d in make_datasets()}
    for key in keys:
        if notes_by_key.get(key):
            name = next(r["dataset"] for r in results if r["key"] == key)
            lines.append(f"- {name}: {notes_by_key[key]}")
    for r in results:
        notes = list(r["notes"])
        if r["cv_scores"]:
            scores = ", ".join(f"{k}: {format_value(v, '.3f')}" for k, v in r["cv_scores"].items())
            kind = " (total log-likelihood of a fold)" if r["method"] == "kde" else ""
            notes.append(f"CV mean scores{kind} {scores}")
        for text, count in r["warnings"].items():
            notes.append(f"{count} x {text}")
        if r["error"]:
            notes.append(f"error: {r['error']}")
        if notes:
            lines.append(f"- {r['dataset']} / {r['method']}: " + "; ".join(notes))
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------- main
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    keys = [dataset.key for dataset in make_datasets()]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"datasets {', '.join(QUICK_KEYS)}, 1,000 points, max_iter 20, 2-fold CV, "
        "small grids: a smoke test",
    )
    parser.add_argument(
        "--only", nargs="+", choices=keys, metavar="NAME", help=f"datasets: {', '.join(keys)}"
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=Path(__file__).resolve().parent / "results",
        help="directory for density_cpu.json and .md (default: benchmarks/results/)",
    )
    parser.add_argument(
        "--merge",
        action="store_true",
        help="replace the rows of the datasets run in an existing result file of the "
        "same settings, keeping the others",
    )
    parser.add_argument(
        "--methods", nargs="+", choices=METHODS, default=list(METHODS), help="methods to run"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--n-train", type=int, default=None, help="default 5000, quick 1000")
    parser.add_argument("--n-test", type=int, default=None, help="default 5000, quick 1000")
    parser.add_argument(
        "--max-iter",
        type=int,
        default=None,
        help="max_iter of the tensorizing flows (default: the estimator's, quick 20)",
    )
    args = parser.parse_args(argv)
    args.n_train = args.n_train or (1000 if args.quick else 5000)
    args.n_test = args.n_test or (1000 if args.quick else 5000)
    if args.max_iter is None and args.quick:
        args.max_iter = 20
    args.cv = 2 if args.quick else 3
    args.tt_ranks = [2, 8] if args.quick else [2, 4, 8, 16]
    args.gmm_components = [1, 4, 16] if args.quick else [1, 2, 4, 8, 16, 32, 64]
    args.n_bandwidths = 6 if args.quick else 12
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the suite and write the results; returns the exit status."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    datasets = make_datasets()
    keys = args.only or (QUICK_KEYS if args.quick else [d.key for d in datasets])
    datasets = [d for d in datasets if d.key in keys]
    run = run_metadata("datasets", [item.key for item in datasets])
    print(
        f"Density benchmark on {run['cpu']}, {run['torch_num_threads']} threads, "
        f"quick={args.quick}, datasets {', '.join(run['datasets'])}",
        flush=True,
    )
    warm_up()
    start = time.perf_counter()
    results: list[Result] = []
    for dataset in datasets:
        train, test, truth = dataset.load(args.n_train, args.n_test)
        truth_mean = float(truth(test).mean()) if truth is not None else None
        for method in args.methods:
            print(f"[{dataset.name}] {method} ...", flush=True)
            result = run_method(dataset, method, train, test, truth_mean, args)
            print(f"    {summary_line(result)}", flush=True)
            results.append(result)
    run["wall_time_s"] = time.perf_counter() - start
    run["load_average_end"] = load_average()
    payload: dict[str, Any] = {
        "metadata": {"settings": settings(args), "runs": [run]},
        "results": [asdict(result) for result in results],
    }
    stem = "density_cpu" + ("_quick" if args.quick else "")
    write_results(
        payload,
        args.output,
        stem,
        markdown_report,
        merge=args.merge,
        order=[d.key for d in make_datasets()],
        methods=METHODS,
    )
    print(f"Wrote {args.output / stem}.json and .md in {run['wall_time_s']:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
