"""Density estimation: the tensorizing flow next to a Gaussian-base flow, GMM and KDE.

Datasets, each over ``--splits`` train/test splits (default 3: splits
``s = 0, 1, 2``; with ``--quick`` only split 0):

- four 2-D toys, generated in this file with ``numpy.random.default_rng``:
  ``moons`` (two noisy half circles), ``8gaussians`` (eight Gaussians on a
  circle, FFJORD's), ``checkerboard`` (uniform on 8 of the 16 squares of
  ``[-4, 4]^2``, FFJORD's) and ``2spirals`` (FFJORD's); the true density is
  known for ``8gaussians`` and ``checkerboard``. Split ``s`` draws fresh
  training points with seed ``2 s`` and fresh test points with seed
  ``2 s + 1`` (split 0: seeds 0 and 1, as in earlier versions);
- ``mog8d``: ``MixtureOfGaussians.random_modes(8, 8, low=-4, high=4, std=0.5,
  seed=0)`` from :mod:`sktt_flow.targets`, sampled exactly with the same
  seeds; true density known;
- three real data sets bundled with scikit-learn (nothing is downloaded):
  ``wine`` (``load_wine``: 178 rows, 13 features), ``breast_cancer``
  (``load_breast_cancer``: 569 rows, 30 strongly correlated features) and
  ``diabetes`` (``load_diabetes``, X only: 442 rows, 10 features; its binary
  ``sex`` column gets uniform noise one level wide, with seed ``s``, since a
  continuous density of a two-valued feature is unbounded). Split ``s`` is
  ``train_test_split(X, test_size=0.3, random_state=s)``; every feature is
  then standardised with the mean and standard deviation of the *training*
  split (applied to both splits): the log-likelihoods are those of the
  standardised features;
- ``digits10``, ``digits`` and ``digits20``: scikit-learn's ``load_digits``
  (1,797 images of 8 x 8 pixels in 0..16), dequantised with uniform noise on
  [0, 1) (seed ``s``), divided by 17, split 70/30 (``random_state=s``), then
  PCA to 10, 15 or 20 whitened components fitted on the training split: the
  log-likelihoods are those of the PCA coordinates (``digits`` is the 15-D
  one of earlier versions).

Datasets outside the suite (``--out-of-suite``, or named in ``--only``; not
in the default run): data the defaults were never tuned or measured on, a
check that what the suite says carries over. Fresh draws per split as for
the toys (seeds ``2 s`` and ``2 s + 1``), unless said otherwise:

- ``s_curve`` and ``swiss_roll``: scikit-learn's ``make_s_curve`` (noise
  0.05) and ``make_swiss_roll`` (noise 0.3), 3-D points on noisy curved
  surfaces (mass on a bent sheet, not in clusters);
- ``lognormal5``: ``exp(z B)`` for standard normal ``z`` (5-D) and a fixed
  matrix ``B`` (seed 5, entries of standard deviation 0.5): skewed,
  heavy-tailed on the right, correlated, positive; true density known;
- ``aniso_blobs6``: five Gaussian blobs of unit covariance (fixed centres,
  as ``make_blobs`` draws them with seed 6) in 6-D, mapped by a fixed random
  matrix (seed 6): elongated, tilted clusters; true density known;
- ``spread_blobs20``: four equally likely isotropic Gaussian clusters in
  20-D of standard deviations 0.1, 1, 4 and 10 (fixed centres, as
  ``make_blobs`` draws them with seed 20), 1,400 training and 600 test rows
  whatever ``--n-train``: clusters of very different spreads along the
  features' axes, in a sample small for 20-D; true density known;
- ``iris``: ``load_iris`` (150 rows, 4 features measured to 0.1 cm, each
  dequantised by uniform noise one level wide with seed ``s``), split and
  standardised as the real datasets above.

Methods (``random_state`` and the ``KFold`` seed of the grids are the split's
``s``, so the spread over splits includes the seed's):

``tf-default``
    :class:`~sktt_flow.TensorizingFlowDensity` with its default parameters
    (only ``random_state`` is passed).
``tf-grid``
    The same inside ``GridSearchCV`` over ``tt_rank`` (default scoring: the
    estimator's mean log-likelihood), refitted on the whole training split.
``gaussian-flow``
    The same flow on a fixed standard Gaussian base (``base="gaussian"``): an
    ordinary RealNVP.
``gmm``
    ``GaussianMixture`` with ``GridSearchCV`` over ``n_components`` (at most
    n_train / 10) and ``covariance_type`` in {full, diag, tied, spherical},
    each EM from ``--gmm-n-init`` k-means starts (default 4; scikit-learn's
    default, one start, stuck on clusters of different sizes and cost the
    GMM up to 1.8 nats per test row on generated data; results before
    2026-12-07 used one).
``kde``
    ``KernelDensity`` (Gaussian kernel, exact: scikit-learn's default
    tolerances) with ``GridSearchCV`` over ``bandwidth`` (a log grid times
    the mean standard deviation of the training features).
``tt-alone``
    The TT base alone (``base="tt", flow="none"``), fitted by maximum
    likelihood.
``tf-marginal`` (only when ``--methods`` names it)
    The defaults with ``marginal_gaussianization="auto"``: the fit without
    and with a map of each feature to normal marginals, the second kept where
    the held-out rows clearly prefer it.

Metrics, per split: the mean log-likelihood of the test split with its
standard error over the test points, next to the true density's where it is
known; fit seconds (grid searches included); hyper-parameters chosen by the
grids; the base the fitted flow uses (``base_``), the weight of that base
next to the flow (``defensive_weight_``) and the weight of the flow on the
Gaussian mixed in (``companion_weight_``, 0 without it); warnings; seconds of
``score_samples`` per 10^4 rows (timed on up to 10^4 test rows, after the
untimed scoring of the test split as warm-up); and, in the ``tf-default`` and
``tf-grid`` rows, the mean difference to every other method paired over the
test points, with its standard error. The report gives per method the mean
over splits and its standard error over the splits, and per dataset "which
method wins": ``tf-default - best of (gmm, kde)``, ``tf-default -
tt-alone`` (what the flow adds over its base), ``tf-default -
gaussian-flow`` and ``tf-grid - best of (gmm, kde)``, each the mean of the
per-split differences with its standard error paired over the splits (with
one split: paired over the test points), and a verdict in units of that
standard error. A method that raises is recorded as failed with its message,
and the suite goes on.

Large-sample regime (``--large``, off by default): the four toys and
``mog8d`` with 50,000 training rows (``--n-large``) and 10,000 test rows,
one split unless ``--splits`` says otherwise, every method but ``tf-grid``
unless ``--methods`` says otherwise; the report adds the scoring time per
10^4 rows of each method and its ratio to KDE's. It writes its own files.

``--peer-settings FILE`` (a result JSON of the same settings) fits ``gmm``
and ``kde`` with the hyper-parameters their grid searches chose in ``FILE``
for the same dataset and split, instead of searching again: the data are
the same (fixed seeds), and so is the search, so the refitted peer is the
one the search would give. Its row keeps the search's choice, cross-validated
scores and fit seconds from ``FILE`` (the seconds a user pays), with the
refit's own seconds in its notes. KDE's bandwidth search on 50,000 rows takes
about 14 min per dataset, while the tensorizing flow changes from one commit
to the next: this is how the large-sample report is rerun with every method
in one invocation, which the paired standard errors need.

Usage (from the repository root; times on one shared core)::

    python benchmarks/bench_density.py --quick          # smoke test: ~1.5 min
    python benchmarks/bench_density.py                  # 11 datasets x 3 splits: ~1.5-2 h
    python benchmarks/bench_density.py --only moons digits
    python benchmarks/bench_density.py --only mog8d --merge
    python benchmarks/bench_density.py --out-of-suite    # 6 datasets x 3 splits: ~25 min
    python benchmarks/bench_density.py --large          # 5 datasets at 50,000 rows: ~2-3 h
    python benchmarks/bench_density.py --large --only moons --merge   # ~25 min
    python benchmarks/bench_density.py --large \
        --peer-settings benchmarks/results/density_large_partial/density_cpu_large.json

The full-size times are estimates: the default one from the earlier
one-split runs (about 25 min per split, most of it tf-grid's search), the
large one from ``--large --only moons --n-large 5000`` (about 1.5 min; KDE's
bandwidth search grows about quadratically with the rows, the flows about
linearly).

Writes ``density_cpu.json`` and ``density_cpu.md`` into ``--output`` (default
``benchmarks/results/``), ``density_cpu_large.*`` with ``--large``; with
``--quick`` the names end in ``_quick``. With ``--merge`` the rows of the
datasets and methods run replace those of the same datasets and methods in an
existing result file of the same settings (``--methods tf-default`` reruns one
method and keeps the others).
"""

from __future__ import annotations

import argparse
import json
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
from sklearn.datasets import (
    load_breast_cancer,
    load_diabetes,
    load_digits,
    load_iris,
    load_wine,
    make_blobs,
    make_s_curve,
    make_swiss_roll,
)
from sklearn.decomposition import PCA
from sklearn.mixture import GaussianMixture
from sklearn.model_selection import GridSearchCV, KFold, train_test_split
from sklearn.neighbors import KernelDensity

from sktt_flow import TensorizingFlowDensity
from sktt_flow.targets import MixtureOfGaussians

SEED = 0
METHODS = ("tf-default", "tf-grid", "gaussian-flow", "gmm", "kde", "tt-alone", "tf-marginal")
#: Methods run only when ``--methods`` names them.
OPT_IN_METHODS = ("tf-marginal",)
COVARIANCE_TYPES = ("full", "diag", "tied", "spherical")
#: Rows timed for the scoring time (reported per 10^4 rows).
N_TIMED = 10_000
#: Test rows of the large-sample regime.
N_LARGE_TEST = 10_000

#: Array of points -> true log-density per point, or None.
LogDensity = Callable[[np.ndarray], np.ndarray]
#: (n_train, n_test, split) -> train, test, true log-density or None.
Loader = Callable[[int, int, int], tuple[np.ndarray, np.ndarray, LogDensity | None]]


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
    """A dataset: train and test arrays per split, and the true log-density if known."""

    key: str
    name: str
    load: Loader
    note: str = ""
    #: Whether the large-sample regime (``--large``) runs it.
    large: bool = False
    #: Outside the suite (``--out-of-suite``): not in the default run.
    out_of_suite: bool = False


def _toy(generator: Callable[[int, np.random.Generator], np.ndarray], truth: LogDensity | None):
    def load(n_train: int, n_test: int, split: int):
        train = generator(n_train, np.random.default_rng(2 * split))
        test = generator(n_test, np.random.default_rng(2 * split + 1))
        return train, test, truth

    return load


def _mog8d(n_train: int, n_test: int, split: int):
    target = MixtureOfGaussians.random_modes(8, 8, low=-4, high=4, std=0.5, seed=0)
    train = target.sample(n_train, random_state=2 * split).numpy()
    test = target.sample(n_test, random_state=2 * split + 1).numpy()
    log_z = target.log_normalizer

    def truth(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return (target.log_prob(torch.as_tensor(x)) - log_z).numpy()

    return train, test, truth


def s_curve(n: int, rng: np.random.Generator) -> np.ndarray:
    """scikit-learn's ``make_s_curve`` with noise 0.05 (3-D)."""
    return make_s_curve(n, noise=0.05, random_state=int(rng.integers(2**31)))[0]


def swiss_roll(n: int, rng: np.random.Generator) -> np.ndarray:
    """scikit-learn's ``make_swiss_roll`` with noise 0.3 (3-D)."""
    return make_swiss_roll(n, noise=0.3, random_state=int(rng.integers(2**31)))[0]


#: The fixed matrix of :func:`lognormal5`, ``x = exp(z B)``.
_LOGNORMAL_MATRIX = 0.5 * np.random.default_rng(5).standard_normal((5, 5))


def lognormal5(n: int, rng: np.random.Generator) -> np.ndarray:
    """``exp(z B)`` with ``z`` standard normal in 5-D (:data:`_LOGNORMAL_MATRIX`)."""
    return np.exp(rng.standard_normal((n, 5)) @ _LOGNORMAL_MATRIX)


def lognormal5_log_density(x: np.ndarray) -> np.ndarray:
    """The exact log-density of :func:`lognormal5`: ``log x`` is Gaussian with
    covariance ``B^T B``, and the map costs ``-sum log x``."""
    logs = np.log(x)
    covariance = _LOGNORMAL_MATRIX.T @ _LOGNORMAL_MATRIX
    _, log_det = np.linalg.slogdet(covariance)
    quadratic = (logs * np.linalg.solve(covariance, logs.T).T).sum(1)
    return -0.5 * (quadratic + log_det + 5 * math.log(2 * math.pi)) - logs.sum(1)


#: Centres and map of :func:`aniso_blobs6`: ``make_blobs``' five centres in
#: 6-D (seed 6) and a fixed random matrix (seed 6) applied to the points.
_BLOB_CENTRES = make_blobs(5, 6, centers=5, random_state=6, return_centers=True)[2]
_BLOB_MATRIX = np.random.default_rng(6).standard_normal((6, 6))


def aniso_blobs6(n: int, rng: np.random.Generator) -> np.ndarray:
    """Five equally likely unit Gaussian blobs in 6-D, mapped by :data:`_BLOB_MATRIX`."""
    centres = _BLOB_CENTRES[rng.integers(0, 5, n)]
    return (centres + rng.standard_normal((n, 6))) @ _BLOB_MATRIX


def aniso_blobs6_log_density(x: np.ndarray) -> np.ndarray:
    """The exact log-density of :func:`aniso_blobs6`."""
    inverse = np.linalg.inv(_BLOB_MATRIX)
    _, log_det = np.linalg.slogdet(_BLOB_MATRIX)
    z = x @ inverse
    squared = ((z[:, None, :] - _BLOB_CENTRES[None]) ** 2).sum(-1)
    log_components = -0.5 * squared - 3 * math.log(2 * math.pi)
    top = log_components.max(1)
    return top + np.log(np.exp(log_components - top[:, None]).mean(1)) - log_det


#: Centres and spreads of :func:`spread_blobs20`.
_SPREAD_CENTRES = make_blobs(4, 20, centers=4, random_state=20, return_centers=True)[2]
_SPREADS = np.array([0.1, 1.0, 4.0, 10.0])


def spread_blobs20(n: int, rng: np.random.Generator) -> np.ndarray:
    """Four equally likely isotropic Gaussians in 20-D of standard deviations
    :data:`_SPREADS` around :data:`_SPREAD_CENTRES`."""
    labels = rng.integers(0, 4, n)
    return _SPREAD_CENTRES[labels] + _SPREADS[labels, None] * rng.standard_normal((n, 20))


def spread_blobs20_log_density(x: np.ndarray) -> np.ndarray:
    """The exact log-density of :func:`spread_blobs20`."""
    squared = ((x[:, None, :] - _SPREAD_CENTRES[None]) ** 2).sum(-1) / _SPREADS**2
    log_components = -0.5 * squared - 20 * np.log(_SPREADS) - 10 * math.log(2 * math.pi)
    top = log_components.max(1)
    return top + np.log(np.exp(log_components - top[:, None]).mean(1))


def _spread_blobs20(n_train: int, n_test: int, split: int):
    del n_train, n_test  # a small sample is the point: 1,400 and 600 rows
    return _toy(spread_blobs20, spread_blobs20_log_density)(1_400, 600, split)


def _real(loader: Callable[[], Any], *, dequantize_all: bool = False) -> Loader:
    """A bundled real dataset: 70/30 split, standardised with the training split's
    mean and std; two-valued columns (every column with ``dequantize_all``)
    dequantised by uniform noise one level (the smallest gap between values) wide."""

    def load(n_train: int, n_test: int, split: int):
        del n_train, n_test  # the sizes are the dataset's own
        data = np.asarray(loader().data, dtype=float).copy()
        rng = np.random.default_rng(split)
        for column in range(data.shape[1]):
            levels = np.unique(data[:, column])
            if len(levels) == 2 or dequantize_all:
                data[:, column] += np.diff(levels).min() * rng.random(len(data))
        train, test = train_test_split(data, test_size=0.3, random_state=split)
        mean, std = train.mean(0), train.std(0)
        return (train - mean) / std, (test - mean) / std, None

    return load


def _digits(n_components: int) -> Loader:
    """Dequantised, scaled, PCA-whitened digits; the sizes are the dataset's own."""

    def load(n_train: int, n_test: int, split: int):
        del n_train, n_test
        rng = np.random.default_rng(split)
        pixels = load_digits().data
        pixels = (pixels + rng.random(pixels.shape)) / 17.0
        train, test = train_test_split(pixels, test_size=0.3, random_state=split)
        pca = PCA(n_components=n_components, whiten=True, random_state=split).fit(train)
        return pca.transform(train), pca.transform(test), None

    return load


_DIGITS_NOTE = (
    "1,257 train / 540 test rows; log-likelihood of the {} whitened PCA coordinates "
    "(PCA fitted on the training split)"
)
_REAL_NOTE = (
    "{} train / {} test rows (70/30); features standardised with the training split's "
    "mean and std; log-likelihood of the standardised features. Splits resample one "
    "data set, so the SE over splits understates the uncertainty (Nadeau and Bengio's "
    "correction would multiply it by about 1.5 for 3 splits at 70/30)"
)


def make_datasets() -> list[Dataset]:
    """Every dataset of the suite, in report order."""
    return [
        Dataset("moons", "moons (2-D)", _toy(moons, None), large=True),
        Dataset(
            "8gaussians",
            "8 Gaussians (2-D)",
            _toy(eight_gaussians, eight_gaussians_log_density),
            large=True,
        ),
        Dataset(
            "checkerboard",
            "checkerboard (2-D)",
            _toy(checkerboard, checkerboard_log_density),
            "uniform on squares: the true density is discontinuous",
            large=True,
        ),
        Dataset("2spirals", "two spirals (2-D)", _toy(two_spirals, None), large=True),
        Dataset("mog8d", "MoG random_modes(8, 8) (8-D)", _mog8d, "8 modes of std 0.5", large=True),
        Dataset("wine", "wine (13-D)", _real(load_wine), _REAL_NOTE.format(124, 54)),
        Dataset(
            "breast_cancer",
            "breast cancer (30-D)",
            _real(load_breast_cancer),
            _REAL_NOTE.format(398, 171) + "; many features are strongly correlated",
        ),
        Dataset(
            "diabetes",
            "diabetes X (10-D)",
            _real(load_diabetes),
            _REAL_NOTE.format(309, 133)
            + "; the binary sex column gets uniform noise one level wide (seed = split). "
            "Not a dequantised column: s4 (total / HDL cholesterol) is rounded to 3, 4 or 5 "
            "in 69% of the rows, and s1, s2 and s3 are near-linear functions of the other "
            "columns (R^2 0.93-0.98), which favours full or tied covariances",
        ),
        Dataset("digits10", "digits, PCA 10 whitened", _digits(10), _DIGITS_NOTE.format(10)),
        Dataset("digits", "digits, PCA 15 whitened", _digits(15), _DIGITS_NOTE.format(15)),
        Dataset("digits20", "digits, PCA 20 whitened", _digits(20), _DIGITS_NOTE.format(20)),
        Dataset(
            "s_curve",
            "S curve (3-D)",
            _toy(s_curve, None),
            "make_s_curve, noise 0.05; outside the suite",
            out_of_suite=True,
        ),
        Dataset(
            "swiss_roll",
            "swiss roll (3-D)",
            _toy(swiss_roll, None),
            "make_swiss_roll, noise 0.3; outside the suite",
            out_of_suite=True,
        ),
        Dataset(
            "lognormal5",
            "log-normal (5-D)",
            _toy(lognormal5, lognormal5_log_density),
            "exp(z B), skewed and correlated; outside the suite",
            out_of_suite=True,
        ),
        Dataset(
            "aniso_blobs6",
            "tilted blobs (6-D)",
            _toy(aniso_blobs6, aniso_blobs6_log_density),
            "five unit blobs mapped by a random matrix; outside the suite",
            out_of_suite=True,
        ),
        Dataset(
            "spread_blobs20",
            "blobs of spreads 0.1-10 (20-D)",
            _spread_blobs20,
            "four isotropic clusters of standard deviations 0.1, 1, 4, 10; 1,400 / 600 rows; "
            "outside the suite",
            out_of_suite=True,
        ),
        Dataset(
            "iris",
            "iris (4-D)",
            _real(load_iris, dequantize_all=True),
            _REAL_NOTE.format(105, 45)
            + "; every column dequantised (measured to 0.1 cm); outside the suite",
            out_of_suite=True,
        ),
    ]


QUICK_KEYS = ("moons", "mog8d", "wine", "digits")
LARGE_KEYS = tuple(d.key for d in make_datasets() if d.large)
OUT_OF_SUITE_KEYS = tuple(d.key for d in make_datasets() if d.out_of_suite)
QUICK_LARGE_KEYS = ("moons", "mog8d")


# ----------------------------------------------------------------- results
@dataclass
class Result:
    """Everything measured for one (dataset, method, split)."""

    key: str
    dataset: str
    method: str
    split: int = 0
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
    score_seconds_per_1e4: float | None = None
    n_timed: int | None = None
    best_params: dict[str, Any] | None = None
    cv_scores: dict[str, float] | None = None
    fitted_base: str | None = None
    defensive_weight: float | None = None
    companion_weight: float | None = None
    n_iter: int | None = None
    #: Other method -> mean of (this - other) over the test points, its SE, n.
    paired_test_differences: dict[str, dict[str, float]] | None = None
    warnings: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    run: int = 0


# ----------------------------------------------------------------- methods
def tf_estimator(
    args: argparse.Namespace, split: int, **parameters: Any
) -> TensorizingFlowDensity:
    """The tensorizing flow with its defaults (``--max-iter`` aside)."""
    if args.max_iter is not None:
        parameters["max_iter"] = args.max_iter
    return TensorizingFlowDensity(random_state=split, **parameters)


def make_method(method: str, train: np.ndarray, split: int, args: argparse.Namespace) -> Any:
    """An unfitted estimator (or grid search) for one method."""
    cv = KFold(args.cv, shuffle=True, random_state=split)
    if method == "tf-default":
        return tf_estimator(args, split)
    if method == "tf-grid":
        return GridSearchCV(tf_estimator(args, split), {"tt_rank": args.tt_ranks}, cv=cv)
    if method == "gaussian-flow":
        return tf_estimator(args, split, base="gaussian")
    if method == "tt-alone":
        return tf_estimator(args, split, base="tt", flow="none")
    if method == "tf-marginal":
        return tf_estimator(args, split, marginal_gaussianization="auto")
    if method == "gmm":
        components = [k for k in args.gmm_components if k <= len(train) // 10] or [1]
        return GridSearchCV(
            GaussianMixture(random_state=split, n_init=args.gmm_n_init),
            {"n_components": components, "covariance_type": list(COVARIANCE_TYPES)},
            cv=cv,
        )
    if method == "kde":
        scale = float(train.std(0).mean())
        bandwidths = scale * np.logspace(-2.0, 0.3, args.n_bandwidths)
        return GridSearchCV(KernelDensity(), {"bandwidth": bandwidths.tolist()}, cv=cv)
    raise ValueError(f"unknown method {method!r}")


#: Methods whose grid-searched settings ``--peer-settings`` can reuse.
PEER_METHODS = ("gmm", "kde")


def peer_with_settings(
    method: str, split: int, params: dict[str, Any], args: argparse.Namespace
) -> Any:
    """The estimator of ``gmm`` or ``kde`` with the settings its grid search chose."""
    if method == "gmm":
        return GaussianMixture(random_state=split, n_init=args.gmm_n_init, **params)
    if method == "kde":
        return KernelDensity(**params)
    raise ValueError(f"--peer-settings refits only {PEER_METHODS}, not {method!r}")


def load_peer_rows(path: Path, args: argparse.Namespace) -> dict[tuple[str, int, str], dict]:
    """The ``gmm`` and ``kde`` rows of the result file ``path``, by (dataset,
    split, method), with the date of their run; the file must have the same
    sizes and grids as this invocation (a dataset or split it lacks is
    searched as usual)."""
    payload = json.loads(path.read_text(encoding="utf-8"))
    earlier, now = payload["metadata"]["settings"], settings(args)
    compared = (
        "n_train",
        "n_test",
        "cv_folds",
        "gmm_components_grid",
        "gmm_n_init",
        "kde_bandwidth_grid",
    )
    # files before --gmm-n-init ran one EM start
    differing = [
        name
        for name in compared
        if earlier.get(name, 1 if name == "gmm_n_init" else None) != now.get(name)
    ]
    if differing:
        raise SystemExit(f"--peer-settings {path}: other settings ({', '.join(differing)})")
    dates = [run["date"] for run in payload["metadata"]["runs"]]
    return {
        (row["key"], row["split"], row["method"]): {**row, "date": dates[row["run"]]}
        for row in payload["results"]
        if row["method"] in PEER_METHODS and row["status"] == "ok" and row["best_params"]
    }


def run_method(
    dataset: Dataset,
    method: str,
    split: int,
    train: np.ndarray,
    test: np.ndarray,
    truth_mean: float | None,
    args: argparse.Namespace,
) -> tuple[Result, np.ndarray | None]:
    """Fit one method on one split and score it; failures become rows.

    Returns the row and the per-point test log-likelihoods (None on failure).
    """
    result = Result(
        dataset.key,
        dataset.name,
        method,
        split=split,
        n_train=len(train),
        n_test=len(test),
        n_features=train.shape[1],
        true_test_log_likelihood=truth_mean,
    )
    scores = None
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            earlier = args.peer_rows.get((dataset.key, split, method))
            model = (
                make_method(method, train, split, args)
                if earlier is None
                else peer_with_settings(method, split, earlier["best_params"], args)
            )
            start = time.perf_counter()
            model.fit(train)
            result.fit_seconds = time.perf_counter() - start
            if earlier is not None:
                result.notes.append(
                    f"settings of the grid search in {args.peer_settings.name} (run "
                    f"{earlier['date']}), refitted here in {result.fit_seconds:.3g} s; "
                    "fit s: that search's"
                )
                result.fit_seconds = earlier["fit_seconds"]
                result.best_params = earlier["best_params"]
                result.cv_scores = earlier["cv_scores"]
                fitted = model
            elif isinstance(model, GridSearchCV):
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
                result.fitted_base = getattr(fitted, "base_", None)
                result.defensive_weight = getattr(fitted, "defensive_weight_", None)
                result.companion_weight = getattr(fitted, "companion_weight_", None)
            # The scoring of the whole test split is also the timing's warm-up.
            scores = np.asarray(fitted.score_samples(test), dtype=float)
            timed = test[:N_TIMED]
            start = time.perf_counter()
            fitted.score_samples(timed)
            result.score_seconds_per_1e4 = (time.perf_counter() - start) * 1e4 / len(timed)
            result.n_timed = len(timed)
            finite = np.isfinite(scores)
            result.n_test_nonfinite = int((~finite).sum())
            result.test_log_likelihood = float(scores.mean())
            if finite.all():
                result.test_log_likelihood_se = float(scores.std(ddof=1) / math.sqrt(len(scores)))
    except Exception as error:  # a failing method is a result, not a crash
        result.status = "failed"
        result.error = f"{type(error).__name__}: {error}"
        result.notes.append(traceback.format_exc(limit=4).strip().splitlines()[-1])
        scores = None
    result.warnings = count_warnings(caught)
    return result, scores


def add_paired_differences(rows: Sequence[Result], scores: dict[str, np.ndarray]) -> None:
    """In the tf-default, tf-grid and tf-marginal rows of one split: the mean
    difference to every other method paired over the test points, with its
    standard error."""
    for row in rows:
        if row.method not in ("tf-default", "tf-grid", "tf-marginal") or row.method not in scores:
            continue
        differences = {}
        for other, other_scores in scores.items():
            if other == row.method:
                continue
            diff = scores[row.method] - other_scores
            if np.isfinite(diff).all() and len(diff) > 1:
                differences[other] = {
                    "mean": float(diff.mean()),
                    "se": float(diff.std(ddof=1) / math.sqrt(len(diff))),
                    "n": len(diff),
                }
        row.paired_test_differences = differences


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
    base = f", base {result.fitted_base}" if result.fitted_base else ""
    return (
        f"test log-lik {result.test_log_likelihood:.4f}, fit {result.fit_seconds:.1f} s, "
        f"score {result.score_seconds_per_1e4:.3g} s / 1e4 rows, best {result.best_params}"
        f"{base}, warnings {sum(result.warnings.values())}"
    )


def warm_up() -> None:
    """An untimed tiny fit of each kind of model, so one-time costs miss the first row."""
    data = np.random.default_rng(SEED).standard_normal((64, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for parameters in ({}, {"base": "gaussian"}, {"base": "tt", "flow": "none"}):
            model = TensorizingFlowDensity(max_iter=1, random_state=SEED, **parameters)
            model.fit(data).score_samples(data)
        GaussianMixture(2, random_state=SEED).fit(data).score_samples(data)
        KernelDensity().fit(data).score_samples(data)


# ----------------------------------------------------------------- metadata
def _json_value(value: Any) -> Any:
    return value if isinstance(value, (str, int, float, bool, type(None))) else repr(value)


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """What must agree between runs merged into one file."""
    defaults = TensorizingFlowDensity().get_params()
    names = (
        "base",
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
        "train_base",
        "dtype",
    )
    tf_defaults = {k: _json_value(defaults[k]) for k in names if k in defaults}
    if args.max_iter is not None:
        tf_defaults["max_iter"] = args.max_iter
    return {
        "regime": "large" if args.large else "default",
        "quick": args.quick,
        "splits": list(args.splits),
        "n_train": args.n_train,
        "n_test": args.n_test,
        "cv_folds": args.cv,
        "tt_rank_grid": list(args.tt_ranks),
        "gmm_components_grid": list(args.gmm_components),
        "gmm_covariance_types": list(COVARIANCE_TYPES),
        "gmm_n_init": args.gmm_n_init,
        "kde_bandwidth_grid": f"mean train std x logspace(-2, 0.3, {args.n_bandwidths})",
        "n_timed": N_TIMED,
        "tensorizing_flow_parameters": tf_defaults,
        "random_state": "the split index s (estimators and KFold)",
        "methods": list(args.methods),
    }


# ----------------------------------------------------------------- summaries
def _finite(value: Any) -> float | None:
    value = as_float(value)
    return value if value is not None and math.isfinite(value) else None


def _mean_se(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and standard error of the mean (None for a single value)."""
    array = np.asarray(values, dtype=float)
    if len(array) < 2:
        return float(array.mean()), None
    return float(array.mean()), float(array.std(ddof=1) / math.sqrt(len(array)))


def _same_or_range(values: Sequence[Any]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    return str(values[0]) if min(values) == max(values) else f"{min(values)}-{max(values)}"


def summarise(results: Sequence[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """Per (dataset, method): the splits' numbers, their mean and its SE."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault((r["key"], r["method"]), []).append(r)
    summary = {}
    for (key, method), rows in groups.items():
        rows = sorted(rows, key=lambda r: r.get("split", 0))
        ok = [r for r in rows if r["status"] == "ok"]
        values = [as_float(r["test_log_likelihood"]) for r in ok]
        mean = se = None
        se_kind = None
        if values and all(v is not None for v in values):
            if all(math.isfinite(v) for v in values):
                mean, se = _mean_se(values)
                se_kind = "splits" if se is not None else None
                if se is None and ok[0]["test_log_likelihood_se"] is not None:
                    se, se_kind = as_float(ok[0]["test_log_likelihood_se"]), "test points"
            else:
                mean = float(np.mean(values))  # -inf or nan: shown as is
        truths = [_finite(r["true_test_log_likelihood"]) for r in rows]
        truths = [t for t in truths if t is not None]
        summary[(key, method)] = {
            "key": key,
            "method": method,
            "dataset": rows[0]["dataset"],
            "d": rows[0]["n_features"],
            "n_train": _same_or_range([r["n_train"] for r in rows]),
            "n_test": _same_or_range([r["n_test"] for r in rows]),
            "splits": [r.get("split", 0) for r in rows],
            "per_split": [
                as_float(r["test_log_likelihood"]) if r["status"] == "ok" else None for r in rows
            ],
            "n_ok": len(ok),
            "mean": mean,
            "se": se,
            "se_kind": se_kind,
            "truth": float(np.mean(truths)) if truths else None,
            "fit_seconds": _mean_or_none([r["fit_seconds"] for r in ok]),
            "score_seconds": _mean_or_none([r.get("score_seconds_per_1e4") for r in ok]),
            "n_timed": _same_or_range([r.get("n_timed") for r in ok]),
            "iters": [r["n_iter"] for r in ok if r["n_iter"] is not None],
            "warnings": sum(sum(r["warnings"].values()) for r in rows),
            "best_params": [r["best_params"] for r in rows],
            "bases": [r.get("fitted_base") for r in rows],
            "defensive_weights": [r.get("defensive_weight") for r in rows],
            "companion_weights": [r.get("companion_weight") for r in rows],
            "errors": [(r.get("split", 0), r["error"]) for r in rows if r["status"] != "ok"],
            "nonfinite": sum(r["n_test_nonfinite"] or 0 for r in ok),
        }
    return summary


def _mean_or_none(values: Sequence[Any]) -> float | None:
    values = [as_float(v) for v in values if v is not None]
    return float(np.mean(values)) if values else None


def paired_difference(
    results: Sequence[dict[str, Any]], key: str, a: str, b: str
) -> dict[str, Any] | None:
    """Mean of ``a - b`` over the splits where both ran, with its paired SE.

    Over the splits when there are two or more; with one split, over the test
    points (stored in the rows of ``a``, a tf-* method).
    """
    rows = {
        (r["method"], r.get("split", 0)): r
        for r in results
        if r["key"] == key and r["status"] == "ok" and r["method"] in (a, b)
    }
    splits = sorted({s for m, s in rows if m == a} & {s for m, s in rows if m == b})
    pairs = [
        (
            s,
            _finite(rows[(a, s)]["test_log_likelihood"]),
            _finite(rows[(b, s)]["test_log_likelihood"]),
        )
        for s in splits
    ]
    pairs = [(s, va, vb) for s, va, vb in pairs if va is not None and vb is not None]
    if not pairs:
        return None
    mean, se = _mean_se([va - vb for _, va, vb in pairs])
    if se is not None:
        return {"mean": mean, "se": se, "kind": "splits", "n": len(pairs)}
    stored = (rows[(a, pairs[0][0])].get("paired_test_differences") or {}).get(b)
    if stored is None:
        return {"mean": mean, "se": None, "kind": None, "n": 1}
    return {"mean": stored["mean"], "se": stored["se"], "kind": "test points", "n": 1}


def verdict(difference: dict[str, Any] | None) -> str:
    """The difference in units of its standard error, in words."""
    if difference is None:
        return "n/a"
    mean, se = difference["mean"], difference["se"]
    if se is None or not math.isfinite(se):
        return "no SE"
    if se == 0:
        return "ahead (SE 0)" if mean > 0 else ("behind (SE 0)" if mean < 0 else "equal")
    z = mean / se
    if z > 2:
        return "ahead by > 2 SE"
    if z > 1:
        return "ahead by 1-2 SE"
    if z >= -1:
        return "within 1 SE"
    if z >= -2:
        return "behind by 1-2 SE"
    return "behind by > 2 SE"


def _difference_text(difference: dict[str, Any] | None, n_splits: int, versus: str = "") -> str:
    if difference is None:
        return "n/a"
    text = f"{difference['mean']:+.3f}"
    if difference["se"] is not None:
        text += f" ± {difference['se']:.3f}"
    if difference["kind"] == "test points":
        text += " †"
    if 1 < difference["n"] < n_splits or (difference["n"] == 1 and n_splits > 1):
        text += f" ({difference['n']} of {n_splits} splits)"
    return text + (f" (vs {versus})" if versus else "")


# ----------------------------------------------------------------- reports
def _value_se(mean: float | None, se: float | None, kind: str | None) -> str:
    if mean is None:
        return "n/a"
    text = format_value(mean, ".3f")
    if se is not None:
        text += f" ± {se:.3f}"
    return text + (" †" if kind == "test points" else "")


def markdown_table(summary: dict[tuple[str, str], dict[str, Any]], large: bool) -> list[str]:
    """The main table, one row per (dataset, method), over the splits."""
    header = (
        "| dataset | d | n train / test | method | test log-lik, mean ± SE | per split | "
        "true density | gap to best | fit s | "
        + ("score s / 1e4 rows | ÷ KDE's | " if large else "")
        + "iters | warnings | status |"
    )
    lines = [header, header_rule(header)]
    best: dict[str, float] = {}
    kde_time: dict[str, float] = {}
    for (key, method), row in summary.items():
        if row["mean"] is not None and math.isfinite(row["mean"]):
            best[key] = max(best.get(key, -math.inf), row["mean"])
        if method == "kde" and row["score_seconds"]:
            kde_time[key] = row["score_seconds"]
    for (key, method), row in summary.items():
        mean = row["mean"]
        gap = "n/a" if mean is None or key not in best else format_value(mean - best[key], "+.3f")
        if mean is not None and mean == best.get(key):
            gap = "**best**"
        per_split = " / ".join(
            "FAILED" if v is None else format_value(v, ".3f") for v in row["per_split"]
        )
        n_runs = len(row["splits"])
        if row["errors"]:
            first = (row["errors"][0][1] or "")[:150]
            status = f"**FAILED** in {len(row['errors'])} of {n_runs} splits: {first}"
        else:
            status = "ok"
        if row["nonfinite"]:
            status += f" ({row['nonfinite']} test points scored -inf/nan)"
        iters = "/".join(str(i) for i in row["iters"])
        timing = ""
        if large:
            ratio = (
                format_value(row["score_seconds"] / kde_time[key], ".3g")
                if row["score_seconds"] and key in kde_time
                else "n/a"
            )
            timing = f"{format_value(row['score_seconds'], '.3g')} | {ratio} | "
        lines.append(
            f"| {row['dataset']} | {row['d']} | {row['n_train']} / {row['n_test']} | "
            f"{method} | {_value_se(mean, row['se'], row['se_kind'])} | {per_split} | "
            f"{format_value(row['truth'], '.3f')} | {gap} | "
            f"{format_value(row['fit_seconds'], '.3g')} | {timing}{iters} | "
            f"{row['warnings']} | {status} |"
        )
    return lines


def _per_split(values: Sequence[str]) -> str:
    values = list(values)
    return "n/a" if not values else (values[0] if len(set(values)) == 1 else " / ".join(values))


def chosen_settings(
    summary: dict[tuple[str, str], dict[str, Any]], keys: Sequence[str]
) -> list[str]:
    """Per dataset: what the grid searches chose and which base the default flow used."""
    header = (
        "| dataset | gmm: n_components, covariance | kde: bandwidth | tf-grid: tt_rank | "
        "base_ of tf-default | defensive_weight_ of tf-default | "
        "companion_weight_ of tf-default |"
    )
    lines = [header, header_rule(header)]
    covariance_counts: dict[str, int] = {}
    for key in keys:
        cells = []
        for method, render in (
            ("gmm", lambda p: f"{p['n_components']} {p['covariance_type']}"),
            ("kde", lambda p: format_value(p["bandwidth"], ".3g")),
            ("tf-grid", lambda p: str(p["tt_rank"])),
        ):
            row = summary.get((key, method))
            chosen = [p for p in (row["best_params"] if row else []) if p]
            if method == "gmm":
                for p in chosen:
                    kind = p.get("covariance_type", "full")
                    covariance_counts[kind] = covariance_counts.get(kind, 0) + 1
            cells.append(_per_split([render(p) for p in chosen]) if chosen else "n/a")
        row = summary.get((key, "tf-default"))
        bases = [b for b in (row["bases"] if row else []) if b]
        cells.append(_per_split(bases) if bases else "n/a")
        for weight_kind in ("defensive_weights", "companion_weights"):
            weights = [w for w in (row.get(weight_kind, []) if row else []) if w is not None]
            cells.append(
                _per_split([format_value(w, ".2g") for w in weights]) if weights else "n/a"
            )
        name = next(r["dataset"] for (k, _), r in summary.items() if k == key)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    counts = ", ".join(
        f"{k} {v}" for k, v in sorted(covariance_counts.items(), key=lambda x: -x[1])
    )
    lines += ["", f"GMM covariance types chosen, over all datasets and splits: {counts or 'n/a'}."]
    return lines


def comparison(
    results: Sequence[dict[str, Any]],
    summary: dict[tuple[str, str], dict[str, Any]],
    keys: Sequence[str],
) -> list[str]:
    """Per dataset: ranking of the methods and the tensorizing flow's margins."""
    header = (
        "| dataset | ranking (best first) | tf-default - best of gmm/kde | verdict | "
        "tf-default - tt-alone | verdict | tf-default - gaussian-flow | "
        "tf-grid - best of gmm/kde |"
    )
    lines = [header, header_rule(header)]
    for key in keys:
        means = {
            m: row["mean"]
            for (k, m), row in summary.items()
            if k == key and row["mean"] is not None and math.isfinite(row["mean"])
        }
        if not means:
            continue
        name = next(r["dataset"] for (k, _), r in summary.items() if k == key)
        n_splits = max(len(r["splits"]) for (k, _), r in summary.items() if k == key)
        ranking = " > ".join(sorted(means, key=means.get, reverse=True))
        classical = [m for m in ("gmm", "kde") if m in means]
        top = max(classical, key=means.get) if classical else None

        ran = {m for (k, m) in summary if k == key}
        context = (results, key, ran, n_splits)
        cells = [
            *_comparison_cell(context, "tf-default", top, True, top or ""),
            *_comparison_cell(context, "tf-default", "tt-alone", True),
            *_comparison_cell(context, "tf-default", "gaussian-flow", False),
            *_comparison_cell(context, "tf-grid", top, False, top or ""),
        ]
        lines.append(f"| {name} | {ranking} | " + " | ".join(cells) + " |")
    return lines


def _comparison_cell(
    context: tuple[Sequence[dict[str, Any]], str, set[str], int],
    a: str,
    b: str | None,
    with_verdict: bool,
    versus: str = "",
) -> list[str]:
    """``a - b`` (and its verdict, in its own cell or appended) for one dataset."""
    results, key, ran, n_splits = context
    if b is None or a not in ran or b not in ran:
        absent = [m for m in (a, b) if m is not None and m not in ran]
        text = f"not run: {', '.join(absent)}" if absent else "n/a"
        return [text, "n/a"] if with_verdict else [text]
    difference = paired_difference(results, key, a, b)
    text = _difference_text(difference, n_splits, versus)
    if with_verdict:
        return [text, verdict(difference)]
    return [text + ("" if difference is None else f": {verdict(difference)}")]


def _notes(results: Sequence[dict[str, Any]]) -> list[str]:
    lines = []
    for r in results:
        notes = list(r["notes"])
        if r["cv_scores"]:
            scores = sorted(
                r["cv_scores"].items(), key=lambda item: -(_finite(item[1]) or -math.inf)
            )
            shown = scores if len(scores) <= 6 else scores[:3]
            text = ", ".join(f"{k}: {format_value(v, '.3f')}" for k, v in shown)
            kind = " (total log-likelihood of a fold)" if r["method"] == "kde" else ""
            more = f" (best 3 of {len(scores)}; all in the JSON)" if len(scores) > 6 else ""
            notes.append(f"CV mean scores{kind}{more}, best first: {text}")
        for text, count in r["warnings"].items():
            notes.append(f"{count} x {text}")
        if r["error"]:
            notes.append(f"error: {r['error']}")
        if notes:
            lines.append(
                f"- {r['dataset']} / {r['method']} / split {r.get('split', 0)}: "
                + "; ".join(notes)
            )
    return lines


def markdown_report(payload: dict[str, Any]) -> str:
    """Metadata, the tables, per-row notes and how to read the columns."""
    meta, results = payload["metadata"], payload["results"]
    s = meta["settings"]
    large = s.get("regime") == "large"
    keys = list(dict.fromkeys(r["key"] for r in results))
    # A run of the datasets outside the suite is complete with those alone.
    outside = all(key in OUT_OF_SUITE_KEYS for key in keys)
    suite = [
        d.key for d in make_datasets() if (d.large or not large) and d.out_of_suite == outside
    ]
    missing = [key for key in suite if key not in keys]
    summary = summarise(results)
    title = "Density estimation: tensorizing flow, Gaussian-base flow, GMM, KDE, CPU"
    lines = [f"# {title}" + (", large-sample regime" if large else ""), ""]
    if s["quick"]:
        lines += [
            "**Quick run** (smoke test): small samples, one split, short training, small "
            "grids; not representative of converged fits.",
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
    splits = s["splits"]
    sizes = (
        f"- splits {splits}; toys and mog8d: {s['n_train']:,} train / {s['n_test']:,} test "
        "points, freshly drawn per split (seeds 2s and 2s + 1)"
    )
    if not large:
        sizes += (
            "; real datasets and digits: 70/30 splits with `random_state=s` (real datasets "
            "standardised with the training split's mean and std, digits dequantised with "
            "seed s and PCA-whitened on the training split)"
        )
    lines += [
        sizes,
        f"- tensorizing flow (tf-*, gaussian-flow, tt-alone; estimator defaults): {tf}; "
        f"random_state: {s['random_state']}",
        f"- grids ({s['cv_folds']}-fold shuffled KFold, default scoring = the "
        "estimator's `score`: mean log-likelihood for the flows and GMM, total for "
        f"KernelDensity): tt_rank {s['tt_rank_grid']}; GMM n_components "
        f"{s['gmm_components_grid']} (at most n_train / 10) x covariance_type "
        f"{s['gmm_covariance_types']}, {s.get('gmm_n_init', 1)} EM start(s) each; KDE "
        f"bandwidth {s['kde_bandwidth_grid']}",
        f"- SE: {'over the splits (std / sqrt(n splits))' if len(splits) > 1 else ''}"
        f"{'; ' if len(splits) > 1 else ''}values marked † have one split and their SE is "
        "over the test points",
        "",
        *markdown_table(summary, large),
        "",
        "## Which method wins",
        "",
        "Held-out mean log-likelihood (nats per point), higher is better; positive "
        "differences favour the tensorizing flow. Each difference is the mean over the "
        "splits of the per-split difference, ± its standard error paired over the splits "
        '(†: one split, paired over the test points). "best of gmm/kde" is the one of the '
        "two with the higher mean over splits. Verdicts: the difference in units of its SE "
        + (
            f"(with {len(splits)} splits the SE has {len(splits) - 1} degrees of freedom: a "
            "rough guide)."
            if len(splits) > 1
            else "(over the test points: training randomness is not in it)."
        ),
        "",
        *comparison(results, summary, keys),
        "",
        "## Chosen settings",
        "",
        "Per split (one value when all splits agree).",
        "",
        *chosen_settings(summary, keys),
        "",
        "## Columns",
        "",
        "- **test log-lik, mean ± SE**: mean log-density of the test split under the "
        "fitted model, averaged over the splits, ± the standard error over the splits "
        "(†: one split, SE over its test points); **per split**: the value of each split.",
        "- **true density**: the same mean under the data-generating density, where "
        "known (an upper bound in expectation for any model).",
        "- **gap to best**: difference of the means to the best method on the dataset.",
        "- **fit s**: wall time of `fit` (the whole grid search and refit for tf-grid, "
        "gmm and kde), mean over splits, one torch thread; **iters**: epochs of the last "
        "training stage of the tensorizing flow (the refitted one for tf-grid), per split.",
    ]
    if large:
        lines.append(
            f"- **score s / 1e4 rows**: seconds of `score_samples` on {N_TIMED:,} held-out "
            "rows, timed once after the untimed scoring of the test split (the warm-up), "
            "mean over splits; **÷ KDE's**: its ratio to KDE's (exact tree KDE, "
            "scikit-learn's default tolerances, on all training rows)."
        )
    lines += [
        "- **warnings**: warnings raised while fitting, all splits (texts in the notes).",
        "",
        "## Notes",
        "",
    ]
    notes_by_key = {d.key: d.note for d in make_datasets()}
    for key in keys:
        if notes_by_key.get(key):
            name = next(r["dataset"] for r in results if r["key"] == key)
            lines.append(f"- {name}: {notes_by_key[key]}")
    lines += _notes(results)
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------- main
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    keys = [dataset.key for dataset in make_datasets()]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"datasets {', '.join(QUICK_KEYS)}, one split, 1,000 points, max_iter 20, "
        "2-fold CV, small grids: a smoke test",
    )
    parser.add_argument(
        "--large",
        action="store_true",
        help=f"the large-sample regime: {', '.join(LARGE_KEYS)} with --n-large training "
        f"rows and {N_LARGE_TEST:,} test rows, scoring times; writes density_cpu_large.*",
    )
    parser.add_argument(
        "--only", nargs="+", choices=keys, metavar="NAME", help=f"datasets: {', '.join(keys)}"
    )
    parser.add_argument(
        "--out-of-suite",
        action="store_true",
        help=f"run the datasets outside the suite: {', '.join(OUT_OF_SUITE_KEYS)}",
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
        "--methods",
        nargs="+",
        choices=METHODS,
        default=None,
        help="methods to run (default: all but tf-marginal; with --large also not tf-grid)",
    )
    parser.add_argument(
        "--splits",
        type=int,
        default=None,
        help="number of train/test splits, 0..n-1 (default 3; 1 with --quick or --large)",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--n-train", type=int, default=None, help="default 5000, quick 1000")
    parser.add_argument("--n-test", type=int, default=None, help="default 5000, quick 1000")
    parser.add_argument(
        "--n-large",
        type=int,
        default=None,
        help="training rows of the --large regime (default 50000, quick 5000)",
    )
    parser.add_argument(
        "--max-iter",
        type=int,
        default=None,
        help="max_iter of the tensorizing flows (default: the estimator's, quick 20)",
    )
    parser.add_argument(
        "--gmm-n-init",
        type=int,
        default=4,
        help="k-means starts of each GaussianMixture's EM (n_init; default 4)",
    )
    parser.add_argument(
        "--peer-settings",
        type=Path,
        default=None,
        metavar="FILE",
        help="fit gmm and kde with the settings their grid searches chose in this result "
        "JSON (same data and settings) instead of searching again",
    )
    args = parser.parse_args(argv)
    if args.large and args.out_of_suite:
        parser.error("--large runs the suite's toys; not with --out-of-suite")
    if args.large:
        outside = [key for key in args.only or () if key not in LARGE_KEYS]
        if outside:
            parser.error(f"--large runs only {', '.join(LARGE_KEYS)}; not {', '.join(outside)}")
        args.n_train = args.n_large or (5000 if args.quick else 50_000)
        args.n_test = args.n_test or (2000 if args.quick else N_LARGE_TEST)
    else:
        args.n_train = args.n_train or (1000 if args.quick else 5000)
        args.n_test = args.n_test or (1000 if args.quick else 5000)
    if args.methods is None:
        args.methods = [
            m for m in METHODS if not (args.large and m == "tf-grid") and m not in OPT_IN_METHODS
        ]
    args.methods = [m for m in METHODS if m in args.methods]
    n_splits = args.splits or (1 if args.quick or args.large else 3)
    args.splits = list(range(n_splits))
    if args.max_iter is None and args.quick:
        args.max_iter = 20
    args.cv = 2 if args.quick else 3
    args.tt_ranks = [2, 8] if args.quick else [2, 4, 8, 16]
    args.gmm_components = [1, 4, 16] if args.quick else [1, 2, 4, 8, 16, 32, 64]
    args.n_bandwidths = 6 if args.quick else 12
    args.peer_rows = {} if args.peer_settings is None else load_peer_rows(args.peer_settings, args)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the suite and write the results; returns the exit status."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    datasets = make_datasets()
    if args.large:
        default_keys = QUICK_LARGE_KEYS if args.quick else LARGE_KEYS
    else:
        default_keys = [d.key for d in datasets if not d.out_of_suite]
        if args.quick:
            default_keys = QUICK_KEYS
        if args.out_of_suite:
            default_keys = OUT_OF_SUITE_KEYS
    keys = args.only or default_keys
    datasets = [d for d in datasets if d.key in keys]
    run = run_metadata("datasets", [item.key for item in datasets])
    print(
        f"Density benchmark on {run['cpu']}, {run['torch_num_threads']} threads, "
        f"quick={args.quick}, large={args.large}, splits {args.splits}, datasets "
        f"{', '.join(run['datasets'])}",
        flush=True,
    )
    warm_up()
    start = time.perf_counter()
    results: list[Result] = []
    for dataset in datasets:
        for split in args.splits:
            train, test, truth = dataset.load(args.n_train, args.n_test, split)
            truth_mean = float(truth(test).mean()) if truth is not None else None
            rows: list[Result] = []
            scores: dict[str, np.ndarray] = {}
            for method in args.methods:
                print(f"[{dataset.name}, split {split}] {method} ...", flush=True)
                result, method_scores = run_method(
                    dataset, method, split, train, test, truth_mean, args
                )
                print(f"    {summary_line(result)}", flush=True)
                rows.append(result)
                if method_scores is not None:
                    scores[method] = method_scores
            add_paired_differences(rows, scores)
            results.extend(rows)
    run["wall_time_s"] = time.perf_counter() - start
    run["load_average_end"] = load_average()
    payload: dict[str, Any] = {
        "metadata": {"settings": settings(args), "runs": [run]},
        "results": [asdict(result) for result in results],
    }
    stem = "density_cpu" + ("_large" if args.large else "") + ("_quick" if args.quick else "")
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
