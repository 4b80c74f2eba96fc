"""Fit time of the defaults at the size of issue 14's goal: 10,000 rows, 30 features.

The goal: ``TensorizingFlowDensity()`` fits in at most 30 s on one core for
up to 10,000 rows and 30 features. Earlier sessions timed it on throwaway
"tanh-squashed two-cluster" sets, a different one each time; this script
fixes one, with its exact log-density, and says where the time goes.

Dataset ``tanh30``: ``x = tanh(A z)`` with ``z`` from two Gaussian clusters
in 30 dimensions (equal weights, means ``-1.5`` and ``+1.5`` in every
coordinate, unit covariance) and ``A`` a fixed random matrix (standard normal
entries over ``sqrt(30)``, from seed 12345): correlated, bounded, non-Gaussian
features. Its log-density is exact: ``log p_z(A^{-1} atanh x) - log |det A|
- sum_i log(1 - x_i^2)``. Seed ``s``: 10,000 training rows from seed ``2 s``,
5,000 test rows from seed ``2 s + 1``.

``tanh30`` is hard for the TT (its columns pile up against +-1, and the
automatic resolution grows to 128 Legendre functions). Two plain data sets
of the same size show what the defaults cost where nothing is extreme
(``--datasets``; same seeds, same ``A``):

``gauss30``
    ``x = A z``, ``z`` standard normal: one correlated Gaussian, the case a
    full-covariance Gaussian (the companion's base) holds exactly.
``student30``
    ``x = A t``, the coordinates of ``t`` independent Student t with 5
    degrees of freedom: correlated, heavy-tailed, unimodal. Exact
    log-density ``sum_i log t_5((A^{-1} x)_i) - log |det A|``.

Methods, per seed (``random_state`` and the ``KFold`` seed are ``s``):

``tf-default``
    :class:`~sktt_flow.TensorizingFlowDensity` with its defaults, timed as a
    whole and by stage: the TT fits (the automatic choices on a subsample
    and the final fits, ``sktt_flow.tt.fit_samples.fit_samples``), the search
    for the companion's Gaussian mixture, and the flows' training
    (``fit_forward_kl``); the rest is "other". The stages are timed by
    wrapping those functions, which costs nothing measurable.
``tf-bounds``
    The defaults with ``feature_bounds=(-1, 1)``: the model maps the
    columns off their bounds itself (the logistic map, with its exact
    log-Jacobian), as the user guide recommends for columns piled up against
    a bound (``"The input"``), timed and staged in the same way.
``tf-arctanh``
    The same defaults fitted to ``arctanh(x)`` by hand, with the
    log-Jacobian ``-sum_i log(1 - x_i^2)`` added to the scores: what
    ``tf-bounds`` does, done outside the estimator (the two maps differ by a
    factor 2, which the standardisation absorbs).
``tf-fixed``, ``tf-bounds-fixed``
    ``tf-default`` and ``tf-bounds`` with the TT's settings fixed
    (:data:`FIXED_SETTINGS`: ``tt_rank=8``, ``n_basis=16``,
    ``smoothness=30.0``, the search's first penalty) instead of ``"auto"``:
    what skipping the TT's automatic choices, the user guide's first remedy
    for a slow fit, costs and saves at this size.
``gmm``
    ``GaussianMixture`` tuned as in ``bench_density.py`` (3-fold
    ``GridSearchCV`` over 1-64 components and the four covariance types),
    the strongest peer at this size (a KDE in 30 dimensions is far behind:
    breast cancer, ``bench_density.py``).

Metrics: fit seconds, the stages, the mean test log-likelihood with its
standard error next to the truth's, the model minus the truth (paired over
the test rows) and the tensorizing flow minus the GMM (paired, where both
ran in one invocation). ``--peer-settings FILE ...`` (earlier
``fit_time_cpu.json`` files) refits ``gmm`` with the settings its grid search
chose there, the same model without the search (minutes per seed); its fit time
is then the refit's, and the report says so.

Usage (from the repository root; one thread)::

    python benchmarks/bench_fit_time.py                 # 3 seeds: about 20 min
    python benchmarks/bench_fit_time.py --seeds 0 --methods tf-default
    python benchmarks/bench_fit_time.py --methods tf-bounds --merge    # add one method's rows
    python benchmarks/bench_fit_time.py --methods tf-default tf-bounds tf-fixed tf-bounds-fixed \\
        --output benchmarks/results/fit_time_fixed
    python benchmarks/bench_fit_time.py --datasets gauss30 student30 --methods tf-default gmm \\
        --output benchmarks/results/fit_time_plain
    python benchmarks/bench_fit_time.py --datasets gauss30 student30 tanh30 \\
        --methods tf-default gmm --output benchmarks/results/fit_time_whitening \\
        --peer-settings benchmarks/results/fit_time_plain/fit_time_cpu.json \\
        benchmarks/results/fit_time_cpu.json

Writes ``fit_time_cpu.json`` and ``fit_time_cpu.md`` into ``--output``
(default ``benchmarks/results/``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import format_value, load_average, run_metadata, write_results
from bench_density import _mean_se, make_method, peer_with_settings
from sklearn.exceptions import ConvergenceWarning

import sktt_flow.estimator._density as density_module
import sktt_flow.tt.fit_samples as fit_samples_module
from sktt_flow import TensorizingFlowDensity

N_FEATURES = 30
N_TRAIN = 10_000
N_TEST = 5_000
MIXING_SEED = 12345
CLUSTER_OFFSET = 1.5
GOAL_SECONDS = 30.0
METHODS = ("tf-default", "tf-bounds", "tf-arctanh", "tf-fixed", "tf-bounds-fixed", "gmm")
DATASETS = ("tanh30", "gauss30", "student30")

#: Methods that map the columns of ``tanh30`` off their bounds: for it alone.
BOUNDED_METHODS = ("tf-bounds", "tf-arctanh", "tf-bounds-fixed")

#: Degrees of freedom of ``student30``'s coordinates.
STUDENT_DOF = 5

#: The TT's settings of the ``*-fixed`` methods, in place of ``"auto"``.
FIXED_SETTINGS = {"tt_rank": 8, "n_basis": 16, "smoothness": 30.0}

#: The stages timed inside a tensorizing flow's fit: (name, owner, attribute).
STAGES = (
    ("TT fits", fit_samples_module, "fit_samples"),
    ("mixture search", TensorizingFlowDensity, "_gaussian_mixture_candidate"),
    ("flows", density_module, "fit_forward_kl"),
)


def mixing_matrix() -> np.ndarray:
    """The fixed matrix ``A`` of ``x = tanh(A z)``."""
    generator = np.random.default_rng(MIXING_SEED)
    return generator.normal(size=(N_FEATURES, N_FEATURES)) / math.sqrt(N_FEATURES)


def tanh30(n: int, seed: int) -> np.ndarray:
    """``n`` rows of the dataset from ``seed``."""
    generator = np.random.default_rng(seed)
    labels = generator.integers(2, size=n)
    z = generator.normal(size=(n, N_FEATURES))
    z += np.where(labels[:, None] == 1, CLUSTER_OFFSET, -CLUSTER_OFFSET)
    return np.tanh(z @ mixing_matrix().T)


def tanh30_log_density(x: np.ndarray) -> np.ndarray:
    """The exact log-density of :func:`tanh30`'s rows."""
    matrix = mixing_matrix()
    z = np.linalg.solve(matrix, np.arctanh(x).T).T
    log_normal = -0.5 * N_FEATURES * math.log(2 * math.pi)
    components = [
        log_normal - 0.5 * ((z - sign * CLUSTER_OFFSET) ** 2).sum(axis=1) for sign in (-1, 1)
    ]
    log_z = np.logaddexp(*components) - math.log(2.0)
    _, log_det = np.linalg.slogdet(matrix)
    return log_z - log_det - np.log1p(-(x**2)).sum(axis=1)


class StageTimer:
    """Seconds and calls of the :data:`STAGES` while it is entered."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._originals: list[tuple[Any, str, Any]] = []

    def _wrap(self, name: str, function):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - start
                self.calls[name] += 1

        return timed

    def __enter__(self) -> StageTimer:
        for name, owner, attribute in STAGES:
            original = getattr(owner, attribute)
            self._originals.append((owner, attribute, original))
            setattr(owner, attribute, self._wrap(name, original))
        return self

    def __exit__(self, *exc_info) -> None:
        for owner, attribute, original in reversed(self._originals):
            setattr(owner, attribute, original)
        self._originals.clear()


def linear_mixture(n: int, seed: int, kind: str) -> np.ndarray:
    """``n`` rows of ``gauss30`` (``kind="gauss"``) or ``student30``
    (``kind="student"``) from ``seed``: ``A`` times independent coordinates."""
    generator = np.random.default_rng(seed)
    if kind == "gauss":
        coordinates = generator.normal(size=(n, N_FEATURES))
    else:
        coordinates = generator.standard_t(STUDENT_DOF, size=(n, N_FEATURES))
    return coordinates @ mixing_matrix().T


def linear_mixture_log_density(x: np.ndarray, kind: str) -> np.ndarray:
    """The exact log-density of :func:`linear_mixture`'s rows."""
    matrix = mixing_matrix()
    coordinates = np.linalg.solve(matrix, x.T).T
    if kind == "gauss":
        log_coordinates = -0.5 * (coordinates**2 + math.log(2 * math.pi))
    else:
        nu = STUDENT_DOF
        log_coordinates = (
            math.lgamma((nu + 1) / 2)
            - math.lgamma(nu / 2)
            - 0.5 * math.log(nu * math.pi)
            - (nu + 1) / 2 * np.log1p(coordinates**2 / nu)
        )
    _, log_det = np.linalg.slogdet(matrix)
    return log_coordinates.sum(axis=1) - log_det


def dataset(name: str, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Training rows, test rows and the test rows' true log-density."""
    if name == "tanh30":
        test = tanh30(N_TEST, 2 * seed + 1)
        return tanh30(N_TRAIN, 2 * seed), test, tanh30_log_density(test)
    kind = name.removesuffix("30")
    test = linear_mixture(N_TEST, 2 * seed + 1, kind)
    return linear_mixture(N_TRAIN, 2 * seed, kind), test, linear_mixture_log_density(test, kind)


def run_seed(
    method: str, seed: int, args: argparse.Namespace, name: str = "tanh30"
) -> tuple[dict, np.ndarray]:
    """Fit and score one method on one seed's split of the dataset ``name``."""
    train, test, truth = dataset(name, seed)
    row: dict[str, Any] = {"method": method, "seed": seed, "key": f"{name}/{seed}"}
    log_jacobian = np.zeros(len(test))
    if method == "tf-arctanh":
        # densities of arctanh(x), turned into densities of x by the Jacobian
        model = make_method("tf-default", train, seed, args)
        log_jacobian = -np.log1p(-(test**2)).sum(axis=1)
        train, test = np.arctanh(train), np.arctanh(test)
    elif method.startswith("tf-"):
        model = make_method("tf-default", train, seed, args)
        if "bounds" in method:
            model.set_params(feature_bounds=(-1, 1))
        if method.endswith("-fixed"):
            model.set_params(**FIXED_SETTINGS)
    elif row["key"] in args.peer_rows:
        # the settings the grid search chose in an earlier run: the same model
        earlier = args.peer_rows[row["key"]]
        model = peer_with_settings("gmm", seed, earlier["best_params"], args)
        row["best_params"] = earlier["best_params"]
        row["settings_from"] = f"{earlier['file']} ({earlier['date']})"
    else:
        model = make_method(method, train, seed, args)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        with StageTimer() as stages:
            start = time.perf_counter()
            model.fit(train)
            row["fit_seconds"] = time.perf_counter() - start
    if method != "gmm":
        row["stages"] = {
            name: {"seconds": stages.seconds[name], "calls": stages.calls[name]}
            for name, *_ in STAGES
        }
        row["stages"]["other"] = {
            "seconds": row["fit_seconds"] - sum(stages.seconds.values()),
            "calls": None,
        }
        row["base"] = model.base_
        row["companion_weight"] = model.companion_weight_
        row["n_iter"] = model.n_iter_
        if model.tt_ is not None:
            row["tt"] = {
                "tt_rank": max(model.tt_.tt_ranks),
                "n_basis": model.tt_.n_basis,
                "smoothness": model.tt_.selection["smoothness"],
            }
        fitted = model
    elif "settings_from" in row:
        fitted = model
    else:
        row["best_params"] = dict(model.best_params_)
        fitted = model.best_estimator_
    scores = np.asarray(fitted.score_samples(test), dtype=float) + log_jacobian
    row["test_log_likelihood"], row["test_log_likelihood_se"] = _mean_se(scores)
    row["true_test_log_likelihood"] = float(truth.mean())
    row["minus_truth"] = paired(scores, truth)
    return row, scores


def load_peer_rows(path: Path) -> dict[str, dict]:
    """The ``gmm`` rows of the report ``path``, by dataset and seed, with the
    date of their run: the settings their grid search chose."""
    payload = json.loads(path.read_text(encoding="utf-8"))
    dates = [run["date"] for run in payload["metadata"]["runs"]]
    return {
        row.get("key", f"tanh30/{row['seed']}"): {
            **row,
            "date": dates[row["run"]],
            "file": f"{path.parent.name}/{path.name}",
        }
        for row in payload["results"]
        if row["method"] == "gmm" and row.get("best_params")
    }


def _dataset_of(row: dict) -> str:
    """The dataset of a result row (reports before ``--datasets``: ``tanh30``)."""
    return row.get("key", "tanh30/").split("/")[0]


def paired(scores: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """Mean of ``scores - reference`` over the test rows, with its standard error."""
    mean, se = _mean_se(scores - reference)
    return {"mean": mean, "se": se}


def markdown_report(payload: dict[str, Any]) -> str:
    """The report: one row per method and seed, then the means."""
    rows = payload["results"]
    lines = [
        "# Fit time at 10,000 rows of 30 features (issue 14's goal: 30 s)",
        "",
        "Generated by `benchmarks/bench_fit_time.py`; see its docstring for the datasets.",
        "",
    ]
    for index, run in enumerate(payload["metadata"]["runs"]):
        lines.append(
            f"- run {index}: {run['date']}, `{run['command']}`, {run['cpu']}, "
            f"{run['torch_num_threads']} torch thread(s), load average "
            f"{run['load_average_start']} -> {run.get('load_average_end')}"
        )
    lines += [
        "",
        "| dataset | method | seed | fit s | TT fits s | mixture search s | flows s | other s | "
        "test log-lik | truth | minus truth (paired) | minus GMM (paired) | settings |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        stages = row.get("stages", {})

        def stage(name: str, stages=stages) -> str:
            if name not in stages:
                return ""
            calls = stages[name]["calls"]
            seconds = format_value(stages[name]["seconds"], ".1f")
            return seconds if calls is None else f"{seconds} ({calls})"

        versus, from_truth = (
            f"{row[name]['mean']:+.3f} ± {row[name]['se']:.3f}" if row.get(name) else ""
            for name in ("minus_gmm", "minus_truth")
        )
        settings = (
            f"base {row['base']}, companion weight {row['companion_weight']:.3g}, "
            f"{row['n_iter']} passes"
            + (
                ", TT rank {tt_rank}, n_basis {n_basis}, smoothness {smoothness:g}".format(
                    **row["tt"]
                )
                if "tt" in row
                else ""
            )
            if "base" in row
            else ", ".join(f"{k}={v}" for k, v in row.get("best_params", {}).items())
        )
        if "settings_from" in row:
            settings += f" (refitted with the settings of {row['settings_from']})"
        lines.append(
            f"| {_dataset_of(row)} | {row['method']} | {row['seed']} | "
            f"{row['fit_seconds']:.1f} | {stage('TT fits')} | "
            f"{stage('mixture search')} | {stage('flows')} | {stage('other')} | "
            f"{row['test_log_likelihood']:.3f} ± {row['test_log_likelihood_se']:.3f} | "
            f"{row['true_test_log_likelihood']:.3f} | {from_truth} | {versus} | {settings} |"
        )
    lines += ["", "Stages: seconds (calls). Means over the seeds run:", ""]
    for name in DATASETS:
        for method in METHODS:
            mine = [row for row in rows if row["method"] == method and _dataset_of(row) == name]
            if not mine:
                continue
            fit = np.mean([row["fit_seconds"] for row in mine])
            test = np.mean([row["test_log_likelihood"] for row in mine])
            goal = ""
            if method != "gmm":
                met = all(row["fit_seconds"] <= GOAL_SECONDS for row in mine)
                goal = f"; goal of {GOAL_SECONDS:.0f} s: {'met' if met else 'missed'}"
            lines.append(f"- {name}, {method}: fit {fit:.1f} s, test {test:.3f}{goal}")
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", choices=DATASETS, default=["tanh30"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument(
        "--merge",
        action="store_true",
        help="replace the rows of the methods and seeds run in an existing report, keeping "
        "the others",
    )
    parser.add_argument("--output", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument(
        "--peer-settings",
        type=Path,
        nargs="+",
        default=[],
        help="fit_time_cpu.json files whose gmm rows give the settings to refit (no grid search)",
    )
    args = parser.parse_args(argv)
    args.peer_rows = {
        key: row for path in args.peer_settings for key, row in load_peer_rows(path).items()
    }
    args.methods = [method for method in METHODS if method in args.methods]
    # what bench_density.make_method reads for the methods run here
    args.max_iter = None
    args.cv = 3
    args.gmm_components = [1, 2, 4, 8, 16, 32, 64]
    # one EM start, as in the recorded results (bench_density's default is 4)
    args.gmm_n_init = 1
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    run = run_metadata("seeds", [str(seed) for seed in args.seeds])
    print(f"Fit time on {run['cpu']}, {run['torch_num_threads']} thread(s)", flush=True)
    start = time.perf_counter()
    results = []
    for name in args.datasets:
        methods = [
            method for method in args.methods if name == "tanh30" or method not in BOUNDED_METHODS
        ]
        for seed in args.seeds:
            scores = {}
            for method in methods:
                row, scores[method] = run_seed(method, seed, args, name)
                print(
                    f"[{name}, seed {seed}] {method}: fit {row['fit_seconds']:.1f} s, test "
                    f"{row['test_log_likelihood']:.3f} (truth "
                    f"{row['true_test_log_likelihood']:.3f})",
                    flush=True,
                )
                results.append(row)
            if "gmm" in scores:
                for row in results[-len(methods) :]:
                    if row["method"] != "gmm":
                        row["minus_gmm"] = paired(scores[row["method"]], scores["gmm"])
    run["wall_time_s"] = time.perf_counter() - start
    run["load_average_end"] = load_average()
    payload = {
        "metadata": {
            "settings": {"n_train": N_TRAIN, "n_test": N_TEST, "n_features": N_FEATURES},
            "runs": [run],
        },
        "results": [{**row, "run": 0} for row in results],
    }
    write_results(
        payload,
        args.output,
        "fit_time_cpu",
        markdown_report,
        merge=args.merge,
        order=[
            f"{name}/{seed}" for name in DATASETS for seed in sorted({*args.seeds, *range(10)})
        ],
        methods=METHODS,
    )
    print(f"Wrote {args.output / 'fit_time_cpu'}.json and .md", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
