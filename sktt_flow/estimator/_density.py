"""TensorizingFlowDensity: a scikit-learn density estimator and variational sampler."""

from __future__ import annotations

import copy
import functools
import itertools
import math
import re
import time
import warnings
from dataclasses import dataclass
from numbers import Integral, Real
from types import SimpleNamespace
from typing import ClassVar

import numpy as np
import torch
from joblib import effective_n_jobs
from sklearn.base import BaseEstimator, DensityMixin, _fit_context, clone
from sklearn.covariance import LedoitWolf, empirical_covariance
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import (
    Interval,
    StrOptions,
    validate_parameter_constraints,
)
from sklearn.utils.validation import check_is_fitted, validate_data

from sktt_flow.diagnostics import clearly_better, importance_diagnostics
from sktt_flow.estimator._persistence import cores_disagree_with_params
from sktt_flow.flows import (
    FIXED_LAYERS,
    FLOW_NAMES,
    SPLINE_MARGIN,
    FixedAffine,
    FixedBoundsMap,
    FixedLinearAffine,
    FixedMarginalNormalMap,
    GaussianBase,
    GaussianMixtureBase,
    SymmetrizedBase,
    TemperedTTBase,
    TensorizingFlow,
    build_flow_layers,
    coordinate_layers,
    fit_tempered_base,
    pull_back,
    sign_flip_group,
    spline_tail_bound,
    split_bounds_map,
    split_feature_map,
)
from sktt_flow.flows.marginal import FLOOR_KINDS
from sktt_flow.flows.symmetric import images_bounding_box
from sktt_flow.geometry import (
    AFFINE_KINDS,
    adjust_box,
    affine_from_laplace,
    box_from_modes,
    box_of_weighted_draws,
    explore_mass,
    find_modes,
    mass_beyond_sides,
    widen_box_at_edges,
)
from sktt_flow.training import (
    ClearGainWatch,
    check_differentiable,
    fit_defensive_weight,
    fit_forward_kl,
    fit_mass_covering,
    fit_mixture,
    fit_reverse_kl,
    fit_variational_mixture_weight,
    passes_of_patience,
)
from sktt_flow.training.mass_covering import IMPORTANCE_BATCH_SIZE
from sktt_flow.training.reverse_kl import CONFIRMATION_STANDARD_ERRORS
from sktt_flow.tt.cross import LogDensityEvaluator, NoTrainFoundError
from sktt_flow.tt.distribution import TTDistribution
from sktt_flow.utils.device import resolve_device
from sktt_flow.utils.random import torch_generator
from sktt_flow.utils.standardize import standardization, standardize
from sktt_flow.utils.threads import cpu_threads_within_limits, torch_threads_within_limits
from sktt_flow.utils.validation import check_domain, check_domain_resolution

__all__ = ["TensorizingFlowDensity"]

#: Rows scored or sampled at once, per device type: memory stays bounded by
#: the output arrays whatever ``n``. On a CPU, small chunks keep the flow's
#: activations in cache and out of the allocator's mmap path (65536 rows
#: measured three times slower than 4096 for an 8-layer RealNVP).
CHUNK_SIZE = {"cpu": 4096, "cuda": 1 << 20}

#: Draws are made in chunks of this many ``CHUNK_SIZE`` rows: the exact TT
#: sampler does a fixed amount of work per call and coordinate, so on a CPU
#: 16384 rows at once drew 20,000 rows 14% and 65,536 rows 26% faster than
#: 4096 (d = 16, tt_rank = 8, float32 flow), and the flow's cost per row
#: barely grows at that size.
SAMPLE_CHUNK_FACTOR = {"cpu": 4, "cuda": 1}

#: Rows are scored and drawn in multiples of this (the last chunk is padded,
#: and every ``CHUNK_SIZE`` is one): torch's CPU kernels compute the tail of
#: a vector that does not fill their SIMD blocks with scalar code, and the
#: BLAS picks its kernels by size, so in float32 a row's log-density moved by
#: an ulp (4e-6 nats on a 16-D model) with the number of rows evaluated
#: alongside it; in multiples of 64 it is the same bit for bit from one row
#: to any number (float64 differs by 1e-14: see the user guide's precision
#: section). scikit-learn's checks compare scores of batches and subsets to
#: 1e-7 relative. Padding one row costs 63 more, a fraction of a millisecond.
ROW_MULTIPLE = 64

#: Log-densities that a model evaluated in float32 gives below this (or NaN)
#: are computed again by the float64 model. Far enough from the training
#: rows, float32 runs out of range: a point a few 1e18 standard deviations
#: out is scored at the cap of the TT base's Gaussian tail
#: (:func:`~sktt_flow.tt.tails.gaussian_log_prob`, ``-finfo.max / (4 d)``
#: per coordinate) instead of its log-density, one beyond about 1e38 is
#: infinite in float32 and the coupling networks turn it into NaN. No row
#: within 1e15 standard deviations of the data comes near the bound, so on
#: data the check costs one comparison per row.
FLOAT32_TRUSTED_LOG_DENSITY = -float(torch.finfo(torch.float32).max) / 2**24

#: Legendre functions per coordinate of a base fitted to data with
#: ``n_basis="auto"`` and no held-out rows to choose it on.
DATA_N_BASIS = 16

#: ``tt_rank`` that ``"auto"`` means in variational mode (the cap of
#: TT-cross's ranks) and in data mode without held-out rows.
VARIATIONAL_TT_RANK = 8

#: Per-coordinate quantile of the training rows at which the box of a base
#: fitted to data starts (before its margin): the rows beyond it are the
#: Gaussian tail component's, so a far outlier does not stretch the interval
#: that the Legendre functions must resolve.
DATA_BOX_QUANTILE = 0.001

#: Patience of the TT base's maximum likelihood in data mode, as a fraction
#: of ``n_iter_no_change``.
DATA_BASE_PATIENCE = 0.25

#: Smallest weight of the defensive component of a model fitted to data:
#: the base through the fixed layers alone, next to the flow (see
#: :class:`~sktt_flow.flows.TensorizingFlow`), and the weight without
#: held-out rows. It costs at most 0.001 nats per point and bounds what the
#: flow does to rows unlike the training ones (a held-out breast-cancer
#: row: -1.5e7 with the flow alone).
DATA_DEFENSIVE_WEIGHT = 1e-3

#: Largest weight of the defensive component, which is otherwise fitted by
#: maximum likelihood on the held-out rows
#: (:func:`~sktt_flow.training.fit_defensive_weight`): the flow keeps at
#: least half the mass whatever a few dozen held-out rows say. On the real
#: datasets of the benchmark the held-out likelihood of the test rows peaked
#: at weights of 0.1-0.3.
MAX_DATA_DEFENSIVE_WEIGHT = 0.5

#: Fewest held-out rows on which a data fit with ``base="auto"`` makes its
#: automatic choices. With fewer (a fit to fewer than 45 rows with the
#: default ``validation_fraction``) what is chosen on them is noise: on 2-D
#: samples of 10 to 30 rows (1 to 3 held out) the defaults picked TTs of 8
#: to 32 Legendre functions and flows that scored 1.7 to 4.2 nats per test
#: row below one full-covariance Gaussian on Gaussian data in five fits of
#: six (10-20 rows), and on 30 rows of the moons and of two skewed clusters
#: 0.6 to 2.5 below it in four fits of six (0.02-0.12 above in two), while
#: on 60 to 90 rows of the same (6 to 9 held out) they were ahead of it in
#: 10 fits of 12, by up to 0.9 nats (behind by 0.4-0.5 in two). Below it
#: the model is that Gaussian: the Ledoit–Wolf covariance of
#: the training rows (shrunk, so well conditioned on a few rows), with no
#: flow, no mixture and no TT. Every table of the density benchmark has more.
MIN_CHOICE_ROWS = 5

#: Held-out rows from which a data model's trained flow is kept only where
#: it is confirmed on them (``_confirmed_flow``): its mixture beats the
#: start, the identity map on the base, by ``CONFIRMATION_STANDARD_ERRORS``
#: standard errors of the paired differences, else the flow goes back to the
#: identity. Where a flow cannot do better than its base, the epoch that
#: early stopping keeps is the best of the held-out rows' noise: on the
#: 5,000-row toys of the density benchmark (500 held-out rows) the kept
#: epochs were the first or second, a few thousandths of a nat ahead there
#: and 0.002 to 0.008 nats per test row behind the base. Below this many rows
#: the standard error itself is too rough to reject a flow: on wine (12 to
#: 18 held-out rows) the rule reset flows worth 0.4 to 0.7 nats per test row.
MIN_FLOW_CONFIRMATION_ROWS = 200

#: Factor of ``learning_rate`` at which the flow on a TT base (data mode)
#: trains again from its start where its training kept the start (no epoch
#: beat it on the held-out rows). A TT with many Legendre functions varies
#: on a short scale, and Adam's first steps move every weight of the
#: coupling layers by about the learning rate whatever its gradient: on
#: ``tanh30`` of ``benchmarks/bench_fit_time.py`` (128 functions) the first
#: pass at 1e-3 took the flow's held-out log-likelihood from -2.9 to -28 per
#: row on seeds 0 and 2, it never came back within its patience, and the
#: flow added nothing; at 1e-4 it trained 35 and 42 passes and the model
#: gained 0.47 and 0.51 nats per test row. At 1e-4 throughout, the flows of
#: the real tables stopped at ``max_iter`` short of their gains (digits in
#: 10 dimensions -0.09, -0.04, -0.005 nats per test row), so the smaller
#: rate is the second try, not the first.
FLOW_RETRY_LEARNING_RATE_FACTOR = 0.1

#: Most passes over the training rows of the flow on the one Gaussian that
#: decide whether the companion's base is that Gaussian instead of the
#: Gaussian mixture chosen over it
#: (:meth:`TensorizingFlowDensity._probed_companion`). On a 5-D log-normal of
#: 4,500 training rows the flow on the one Gaussian was clearly ahead of the
#: mixture after 12 to 14 passes.
COMPANION_PROBE_MAX_PASSES = 30

#: Passes before the probe may stop for want of progress (:func:`_probe_stop`),
#: the last passes whose largest gain of the best score is its rate, and the
#: least rate (nats per held-out row and pass) at which it goes on: where the
#: TT's model outweighs both companions, the two differ by a few 1e-4 nats
#: per row, and a crawl towards such a target (on the checkerboard, 12
#: passes) buys nothing.
COMPANION_PROBE_MIN_PASSES = 5
COMPANION_PROBE_RATE_PASSES = 3
COMPANION_PROBE_MIN_RATE = 1e-3

#: Bounds of the weight of the companion model in data mode (the flow on the
#: Gaussian next to the flow on the TT; see ``_companion_of``): below the
#: lower one there is no companion.
MIN_COMPANION_WEIGHT = 1e-3
MAX_COMPANION_WEIGHT = 0.999

#: Covariances whose Cholesky factor whitens the standardised features in data
#: mode (``preconditioner`` "auto" or "full"; :func:`_whitening`), each a
#: candidate coordinate system chosen on held-out rows (``_base_from_data``).
WHITENING_COVARIANCES = ("ledoit-wolf", "empirical")

#: Smallest ratio of the whitening's Cholesky diagonal (each standardised
#: feature's standard deviation given the features before it) to its largest
#: with which a covariance whitens: below it a feature is a linear function of
#: the others up to rounding, and the covariance is treated as singular.
MIN_WHITENING_SCALE_RATIO = 1e-6

#: Most components of the Gaussian mixture under the companion model in data
#: mode (``_gaussian_mixture_candidate``: 2, 4, 8, ... up to this many, each
#: with every one of :data:`COMPANION_COVARIANCE_TYPES`).
MAX_COMPANION_COMPONENTS = 64

#: Covariance types of the companion's candidate mixtures
#: (:class:`sklearn.mixture.GaussianMixture`'s ``covariance_type``).
COMPANION_COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")

#: EM's stopping thresholds for the companion's Gaussian mixtures (``tol`` of
#: :class:`sklearn.mixture.GaussianMixture`: the average gain of the lower
#: bound per row below which EM stops): the candidates' during the search,
#: then the kept mixture's, whose EM goes on from where it stopped
#: (scikit-learn's default threshold). The candidates are compared on
#: held-out rows whose standard error is a tenth of a nat or more, so EM's
#: last iterations, below a hundredth of a nat each, hardly change the
#: choice. On 10,000 rows of 30 features (``tanh30`` of
#: ``benchmarks/bench_fit_time.py``) the search took 36.6 s to the default
#: threshold and 14.1 s to 1e-2; the held-out scores of the full-covariance
#: candidates moved by at most 0.08 nats per row (32 components: -11.05 and
#: -11.03). Without the kept mixture's last iterations the fitted models
#: scored 0.025 to 0.032 nats per test row lower on the three seeds.
COMPANION_EM_TOL = 1e-2

#: ``reg_covar`` of a second fit of the companion's kept Gaussian mixture
#: (from the first's parameters), kept where clearly better on the held-out
#: rows. EM adds ``reg_covar`` to every component's diagonal in the
#: standardised (or whitened) coordinates where it runs, and scikit-learn's
#: default, 1e-6, is absolute: in the data's own units it is negligible, but
#: a feature whose clusters are narrow next to its spread (two modes at
#: -1000 and +1000 of unit width: 0.001 standard deviations each once
#: standardised) had its clusters' variance doubled, 0.10 nats per test row
#: behind a ``GaussianMixture(2)`` in the raw units. Not for every
#: candidate: the default also regularises, and with 1e-9 throughout the
#: search breast cancer's split 1 (30 correlated features, 40 held-out rows)
#: lost 0.25 ± 0.08 nats per test row.
COMPANION_NARROW_REG_COVAR = 1e-9
COMPANION_EM_FINAL_TOL = 1e-3

#: Whether a data fit ends by fitting its companion's Gaussian mixture
#: again to all its rows, the held-out ones too, once every choice is made,
#: where no trained flow sits on it (:func:`_refitted_mixture_base`; not the
#: model's own base where a Gaussian mixture beats the TT: a warm start
#: trains its flow again, early stopped on the held-out rows). Against the
#: same fits without it (2026-12-07, ``benchmarks/results/refit_mixture/``):
#: 20-D clusters of very different spreads +0.010, +0.011 and 0.000 nats per
#: test row on three splits, the eight Gaussians and the 8-D mixture within
#: 0.001, the real tables unchanged (their companions' flows are trained);
#: on generated sets checked by hand (1,400-2,100 training rows), Gaussian
#: mixtures in 15-20 D that the model trailed a tuned GaussianMixture on by
#: 0.02-0.04: +0.017 +- 0.005 and +0.029 +- 0.008 (+0.007 +- 0.013 on a
#: second draw), clusters near a subspace (make_classification) +0.011 and
#: +0.014, a discretised column +0.016, log-normal incomes +0.024, no loss
#: on the 14 sets.
REFIT_MIXTURE_TO_ALL_ROWS = True

#: Fresh samples behind ``elbo_``, ``ess_`` and ``log_normalizer_`` after a
#: variational fit.
N_DIAGNOSTIC_SAMPLES = 10_000

#: Effective draws (``ess_`` times :data:`N_DIAGNOSTIC_SAMPLES`) under which a
#: variational fit warns that ``log_normalizer_`` and its standard error are
#: not to be trusted. That standard error, ``sqrt((1 / ess - 1) / (N - 1))``,
#: comes from the same weights and cannot exceed about one nat: a
#: Gaussian-base flow on a ring far from the origin reported a log Z 159
#: nats off "+- 1.0" (ESS 1e-4), without a warning.
MIN_EFFECTIVE_DIAGNOSTIC_DRAWS = 100

#: Share of a variational model's diagnostic draws beyond an explicit
#: ``domain`` by more than its width (in some coordinate) above which the fit
#: warns (:func:`_share_far_outside`). A target that is not integrable (a
#: constant beyond the box) makes the flow spread its draws without bound
#: (10^5 box widths, with an estimated log Z of 25.2 for a box of log area
#: 2.77); a box that misses a Gaussian's mass, [-1, 1]^2 for a standard
#: normal, had 0.4% of a fully trained model's draws there (0.5% of the
#: normal's own mass).
FAR_OUTSIDE_DOMAIN_SHARE = 0.05

#: Exact draws of each candidate base in the self-check that chooses the
#: coordinates of a variational fit: the ELBO's standard error is the spread
#: of the log-weights over 64, small next to the gaps between candidates
#: that matter (tenths of a nat and more).
N_SELF_CHECK_SAMPLES = 4096

#: The coarsest resolution in ``x`` that float64's rounding of the rows'
#: distances to the bounds of ``feature_bounds`` may leave, relative to the
#: feature's standard deviation, that data mode accepts
#: (:func:`_check_bounds_resolve_the_data`): a bound 1e12 standard deviations
#: away (1.2e-4 of one) is fitted exactly, one at 1e14 (0.016) cost 0.014
#: nats per row.
MAX_BOUND_ROUNDING_TO_SPREAD = 1e-3

#: Share of the target's mass just outside the sides of the kept variational
#: base's box (in strips of 5% of its width, all sides together, measured by
#: :func:`~sktt_flow.geometry.mass_beyond_sides`) above which
#: :func:`_warn_if_box_cuts_mass` warns: the model then misses at least as
#: much, and ``log_normalizer_`` runs low by at least about as much (1e-3
#: nats), more than the standard error of a good fit's. Five exponentials in
#: log coordinates under the automatic box of six Laplace standard deviations
#: lose 1.24%, 0.56% of it in those strips; a Gaussian cut at six standard
#: deviations, 2e-9 per coordinate.
BOX_CUT_MASS = 1e-3

#: How many strips' worth of the mass just beyond a side the fitted model
#: must see outside the box, at least half of, where the target does not
#: fall across the strip (:func:`_warn_if_box_cuts_mass`).
BOX_CUT_FLAT_STRIPS = 4.0

#: Random starts of the mode search at each scale: standard normal, and
#: ``WIDE_START_SCALES`` times wider.
N_WIDE_STARTS = 32
WIDE_START_SCALES = (10.0, 100.0)

#: Self-check ESS below which the weighted draws of a base are too few to
#: say where the mass is (4096 draws: about 40 effective ones).
MIN_ESS_TO_REFINE_BOX = 0.01

#: Times an automatic box may be adjusted to the self-check's weighted draws
#: (:func:`~sktt_flow.geometry.adjust_box`; a side moves out by half the
#: width each time, so up to 3.4 times the width on one side).
MAX_BOX_ADJUSTMENTS = 3

#: Steps of each Langevin chain that looks for the mass when no mode is
#: described by its Laplace Gaussian (half to tune the step, half kept; the
#: 32 chains cost about 32,000 evaluations with gradient).
N_EXPLORATION_STEPS = 1000

#: Geometric mean of the ratios of new to old box widths above which a base
#: that already reaches ``GOOD_ENOUGH_BASE_ESS`` is not rebuilt on the
#: narrower box.
MIN_NARROWING_OF_GOOD_BASE = 0.7

#: Self-check ESS of a variational base (after its box is adjusted) at which
#: the remaining candidate coordinates are not tried.
GOOD_ENOUGH_BASE_ESS = 0.95

#: Self-check ESS of the Laplace Gaussian from which ``base="auto"`` with an
#: automatic box trains no TT base where the mode search found one mode
#: (its reverse KL is then about ``-log(ESS) / 2``, 0.005 nats or less, and
#: the flow on it can gain the rest). The TT-cross was spent for nothing
#: there: correlated Gaussians of 30 and 50 dimensions took 42 and 92 s
#: (11 and 27 million evaluations) for the Gaussian model kept in the end.
LAPLACE_EXACT_ESS = 0.99

#: Self-check ESS under which an automatic box built from a poor Laplace
#: approximation is worth a warning.
MIN_GOOD_BASE_ESS = 0.5

#: Fitted attributes of the self-check of a variational base.
_BASE_CHECK_ATTRIBUTES = ("base_elbo_", "base_ess_", "base_kl_", "preconditioner_")

#: Points at which ``log_target`` is checked to be invariant under each map
#: given as ``symmetry`` (at most; fewer per map for many maps, see
#: ``TensorizingFlowDensity._symmetry``).
N_SYMMETRY_CHECK_POINTS = 256

#: Tolerance of that check, in float64: ``|h(g x) - h(x)| <= SYMMETRY_TOLERANCE
#: (1 + |h(x)|)``. A float64 target moves by 1e-13 of its value when its
#: terms are summed in another order (a permutation of a lattice); a real
#: asymmetry (an external field of 1e-4 on a 64-site lattice) moves it by
#: far more.
SYMMETRY_TOLERANCE = 1e-6

#: With ``symmetry`` and an automatic box, coordinates around one mode of each
#: orbit of the group (the symmetrised base supplies the images) are tried
#: after those around every image when the best of those has a self-check ESS
#: below this (:data:`MIN_GOOD_BASE_ESS`): a box around all the symmetric
#: modes spends the train's resolution on the space between them when they
#: are far apart for their widths. DoubleRosenbrock(11), two thin curved modes
#: at x_d = +-50: TT alone on the orbit's box ESS 0.18 at best, on one mode's
#: box symmetrised ESS 0.95 (reverse KL 0.05). A good orbit base (ESS 0.75 on
#: GinzburgLandau2D(8)) is not worth the extra crosses.
MAX_ESS_FOR_ONE_ORBIT = 0.5

#: ``base="tempered"``: the outer Gaussian of the tempered layers is the
#: target's covariance (estimated from the single train's weighted draws)
#: times this squared. The layers' densities are bounded, so the base's tails
#: can be no heavier than the outer Gaussian's (``sktt_flow.flows.tempered``);
#: the bench's outer maps, two to three times the target's covariance factor,
#: gave its results.
TEMPERED_OUTER_WIDENING = 3.0

#: ``base="tempered"``: below this self-check ESS of the single train, its
#: draws weighted by the target say too little about the target's covariance,
#: and the outer Gaussian takes the draws' own moments instead.
MIN_ESS_FOR_TEMPERED_MOMENTS = 0.05

#: Modes closer than this many local standard deviations (per coordinate) to
#: an image of an earlier mode under the group are that mode's images.
SAME_MODE_STANDARD_DEVIATIONS = 0.1

_DTYPES = {"float32": torch.float32, "float64": torch.float64}

#: Arguments of TTDistribution.from_log_density that the estimator sets itself.
_CROSS_RESERVED = frozenset(
    {
        "log_density",
        "domain",
        "n_features",
        "tt_rank",
        "n_basis",
        "random_state",
        "device",
        "dtype",
        "verbose",
        "callable_name",
        "known_seeds",
    }
)

#: Fitted attributes that only one of the two modes sets.
_MODE_ATTRIBUTES = frozenset(
    {
        "elbo_",
        "ess_",
        "log_normalizer_",
        "log_normalizer_std_error_",
        "n_target_evaluations_",
        "mass_covering_scores_",
        "feature_names_in_",
        "marginal_gaussianization_",
        *_BASE_CHECK_ATTRIBUTES,
    }
)


class _DeviceOption(StrOptions):
    """``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"`` (the syntax only:
    whether CUDA is there is checked when fitting).

    A ``StrOptions`` so that scikit-learn's parameter validation accepts it,
    with a pattern for the device index.
    """

    _pattern = re.compile(r"^(cpu|cuda|auto|cuda:\d+)$")

    def __init__(self):
        super().__init__({"cpu", "cuda", "auto"})

    def is_satisfied_by(self, value) -> bool:
        return isinstance(value, str) and bool(self._pattern.match(value))

    def __str__(self) -> str:
        return "a str among {'cpu', 'cuda', 'cuda:N', 'auto'}"


def _whitening(train: np.ndarray, scored: np.ndarray, covariance: str):
    """Whitened coordinates of standardised rows: ``z = L w``, ``L`` the
    Cholesky factor of a covariance of ``train`` (centred), one of
    :data:`WHITENING_COVARIANCES`: ``"ledoit-wolf"``, shrunk towards a
    multiple of the identity (well conditioned even with fewer rows than
    features), or ``"empirical"``, the maximum-likelihood one.

    Returns the fixed layer ``w -> z`` (float64, CPU), ``(train, scored)`` in
    ``w`` and ``log |det L|``, which log-densities in ``w`` lose in ``z``; or
    None where the covariance is singular (as an empirical one is with
    fewer rows than features or collinear columns).
    """
    if covariance == "ledoit-wolf":
        matrix = LedoitWolf(assume_centered=True).fit(train).covariance_
    elif covariance == "empirical":
        matrix = empirical_covariance(train, assume_centered=True)
    else:
        raise ValueError(f"covariance must be one of {WHITENING_COVARIANCES}, got {covariance!r}")
    try:
        factor = np.linalg.cholesky(matrix)
    except np.linalg.LinAlgError:
        return None
    # The diagonal holds each feature's standard deviation given the ones
    # before it: a column that is a linear function of the others up to
    # rounding (a duplicated column) leaves only rounding there, and the
    # whitened density would be a density of rounding errors.
    diagonal = np.diag(factor)
    if diagonal.min() < MIN_WHITENING_SCALE_RATIO * diagonal.max():
        return None
    to_whitened = [
        np.linalg.solve(factor, rows.T).T  # triangular, but numpy has no solver for it
        for rows in (train, scored)
    ]
    layer = FixedLinearAffine(
        torch.zeros(train.shape[1], dtype=torch.float64), torch.as_tensor(factor)
    )
    return layer, to_whitened, float(np.log(diagonal).sum())


def _with_base(log_flow: torch.Tensor, log_fixed: torch.Tensor) -> tuple[float, torch.Tensor]:
    """The weight of a data model's defensive component (its base through
    the fixed layers, ``log_fixed``) next to its flow (``log_flow``), fitted
    to held-out rows within ``[DATA_DEFENSIVE_WEIGHT,
    MAX_DATA_DEFENSIVE_WEIGHT]``, and the mixture's log-density of each row:
    how a flow on the TT is judged, in training
    (:meth:`TensorizingFlowDensity._defended_rows`) and after it
    (:meth:`TensorizingFlowDensity._held_out_mixture`)."""
    return fit_mixture(
        log_flow,
        log_fixed,
        min_weight=DATA_DEFENSIVE_WEIGHT,
        max_weight=MAX_DATA_DEFENSIVE_WEIGHT,
    )


def _with_partner(partner_scores: torch.Tensor, log_density: torch.Tensor) -> torch.Tensor:
    """The held-out log-densities of a companion's model (``log_density``)
    mixed with the TT's model's (``partner_scores``) at the weight that
    maximises their likelihood within the companion's bounds
    (``MIN_COMPANION_WEIGHT``, ``MAX_COMPANION_WEIGHT``): how a companion is
    judged (:meth:`TensorizingFlowDensity._confirmed_flow`, the probe of
    :meth:`TensorizingFlowDensity._probed_companion`)."""
    return fit_mixture(
        partner_scores,
        log_density,
        min_weight=MIN_COMPANION_WEIGHT,
        max_weight=MAX_COMPANION_WEIGHT,
    )[1]


def _probe_stop(scores: list[float], target: float, max_passes: int) -> bool:
    """Whether the probe of :meth:`TensorizingFlowDensity._probed_companion`
    stops for want of progress: after :data:`COMPANION_PROBE_MIN_PASSES`
    passes, where its best held-out score (``scores``: the start's, then one
    per pass), gaining until ``max_passes`` at its rate, would stay below
    ``target``, or where that rate is below :data:`COMPANION_PROBE_MIN_RATE`
    (never once the best score is above ``target``: the probe then goes on
    until clearly better, which is noisier). The rate is the largest gain of
    the best score in one of the last :data:`COMPANION_PROBE_RATE_PASSES`
    passes.

    Why the largest gain of the best score: the probe's score is its mixture
    with the TT's model, which moves little until the flow on the Gaussian
    nears that model and then faster, and a pass's score can fall by more
    than a pass gains. On a 5-D log-normal of 3,000 rows the score went
    -1.796, -1.796, -1.796, -1.796, -1.790, -1.781 in the first five passes
    and was clearly ahead of the mixture's -1.648 after 22 (the model then
    scored 0.29 nats per test row above the one with the mixture); the mean
    gain of the last three passes, 0.005, would have stopped it after five,
    and the flat best of passes 19 to 21 (-1.608, above the mixture but not
    clearly) after 21. On the toys of the benchmark, where the TT's model
    outweighs either companion, the best score gained 1e-4 nats per row or
    less a pass, and the probe stops after five passes.
    """
    n_passes = len(scores) - 1
    if n_passes < COMPANION_PROBE_MIN_PASSES:
        return False
    best = list(itertools.accumulate(scores, max))
    rate = max(
        later - earlier
        for earlier, later in zip(
            best[-COMPANION_PROBE_RATE_PASSES - 1 : -1],
            best[-COMPANION_PROBE_RATE_PASSES:],
            strict=True,
        )
    )
    if best[-1] >= target:
        return False  # on course: it goes on until clearly better, or to the end
    return rate < COMPANION_PROBE_MIN_RATE or best[-1] + rate * (max_passes - n_passes) < target


def _gaussian_mixture_base(mixture: GaussianMixture) -> GaussianMixtureBase:
    """A fitted :class:`~sklearn.mixture.GaussianMixture` of any covariance
    type as a float64 :class:`~sktt_flow.flows.GaussianMixtureBase`."""
    n_components, n_features = mixture.means_.shape
    covariances = {
        "full": lambda c: c,
        "tied": lambda c: np.broadcast_to(c, (n_components, n_features, n_features)),
        "diag": lambda c: c[:, :, None] * np.eye(n_features),
        "spherical": lambda c: c[:, None, None] * np.eye(n_features),
    }[mixture.covariance_type](mixture.covariances_)
    base = GaussianMixtureBase(
        torch.as_tensor(mixture.weights_, dtype=torch.float64),
        torch.as_tensor(mixture.means_, dtype=torch.float64),
        torch.as_tensor(np.linalg.cholesky(covariances), dtype=torch.float64),
    )
    # What a refit to more rows needs (_refitted_mixture_base): the family
    # and regularisation its EM ran in. Fit-time only: a saved model keeps
    # the mixture, not how it was fitted.
    base.em_settings = {
        "covariance_type": mixture.covariance_type,
        "reg_covar": mixture.reg_covar,
    }
    return base


def _refitted_mixture_base(model: TensorizingFlow, rows: np.ndarray) -> GaussianMixtureBase | None:
    """``model``'s Gaussian-mixture base fitted again by EM to ``rows`` (the
    model's inputs, float64) in its latent coordinates, from its own
    parameters, in its own covariance family and regularisation, to
    :data:`COMPANION_EM_FINAL_TOL`; None where the base is not such a
    mixture, where the model's trainable layers move the rows (a trained
    flow), or where EM fails (a component collapsed).

    The search fits the mixture to the training rows only, and the held-out
    rows choose it (its number of components and covariance type), whether
    a flow on it is kept and the mixture weights. Once those choices are
    made the held-out rows have nothing left to judge, and this refit lets
    the mixture see them too, as ``GridSearchCV(refit=True)`` refits the
    chosen settings on all the rows. Not under a trained flow: the flow and
    the base were fitted to the training rows together, and the base alone
    fitted again to the rows in the flow's latent coordinates lost 0.18 +-
    0.06 nats per test row on a split of digits in 20 PCA coordinates (and
    gained 1.0 on a split of breast cancer: no rule that held). See
    :data:`REFIT_MIXTURE_TO_ALL_ROWS` for what it gains.
    """
    base = model.q0
    settings = getattr(base, "em_settings", None)
    if not isinstance(base, GaussianMixtureBase) or settings is None:
        return None
    points = torch.as_tensor(rows, dtype=torch.float64, device=base.means.device)
    with torch.no_grad():
        latent, _ = model.inverse_and_log_det(points)
        if not torch.equal(latent, model._fixed_inverse(points)[0]):
            return None  # a trained flow: see above
    latent = latent.double().cpu().numpy()
    if not np.isfinite(latent).all():
        return None
    # L^-T L^-1 (L^-1 as the base itself computes it), made exactly
    # symmetric: an inverse of L L^T is not, beyond scikit-learn's check, for
    # the narrow covariances of reg_covar 1e-9 (on 86 of 200 covariances of
    # eigenvalues 1e-9 to 10)
    inverse = base._whitening_maps()[0].double().cpu()
    precisions = (inverse.mT @ inverse).numpy()
    precisions = 0.5 * (precisions + np.swapaxes(precisions, 1, 2))
    variances = np.diagonal(base.cholesky.double().cpu().numpy(), axis1=1, axis2=2) ** 2
    covariance_type = settings["covariance_type"]
    # The base trained in float32 (a companion is cast with its flow): its
    # weights sum to 1 within 1e-7, beyond scikit-learn's check.
    weights = torch.exp(base.log_weights).double().cpu().numpy()
    precisions_init = {
        "full": precisions,
        "tied": precisions[0],
        "diag": 1.0 / variances,
        "spherical": 1.0 / variances[:, 0],
    }[covariance_type]
    mixture = GaussianMixture(
        base.n_components,
        covariance_type=covariance_type,
        reg_covar=settings["reg_covar"],
        tol=COMPANION_EM_FINAL_TOL,
        weights_init=weights / weights.sum(),
        means_init=base.means.double().cpu().numpy(),
        precisions_init=precisions_init,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        try:
            mixture.fit(latent)
        except (ValueError, np.linalg.LinAlgError):
            return None
    return _gaussian_mixture_base(mixture).to(device=base.means.device, dtype=base.means.dtype)


def _share_far_outside(x: np.ndarray, low: np.ndarray, high: np.ndarray) -> float:
    """The share of the rows of ``x`` beyond the box ``[low, high]`` by more
    than its width in at least one coordinate."""
    width = high - low
    far = (x < low - width) | (x > high + width)
    return float(far.any(axis=1).mean())


@dataclass(frozen=True)
class _BoxCut:
    """What the kept variational TT base's draws say of the target's mass
    beyond the sides of its box (:func:`_box_cut`)."""

    box: np.ndarray  # (d, 2), in the base's coordinates
    next_strip: np.ndarray  # (d,): measured share just beyond each coordinate's sides
    beyond: float  # extrapolated share beyond all sides


def _box_cut(draws: tuple[torch.Tensor, torch.Tensor], box, log_target) -> _BoxCut | None:
    """The target's mass beyond the sides of the kept variational base's
    ``box``, where it may be cut (None where it is not).

    The base, and a model whose flow starts from it, may then miss that
    mass, and the base's self-check cannot see it (its ESS is that of the
    target cut to the box): an automatic box ends so when a wider one built
    a worse base. The test: the share of the target's mass in the strips
    just outside the sides that the base's exact draws ``(y, log w)`` and
    ``log_target`` (of points ``y``) measure
    (:func:`~sktt_flow.geometry.mass_beyond_sides`) exceeds
    :data:`BOX_CUT_MASS`. A density whose support ends at a side (an
    exponential on ``[0, 40]``, ``-inf`` below 0) puts none beyond it.
    """
    try:
        next_strip, beyond = mass_beyond_sides(*draws, box, log_target)
    except ValueError:
        # log_target raised or gave NaN beyond the box: a target written for
        # its support only (a gamma's log x), which an explicit box within
        # it never handed such points; nothing is measured
        return None
    per_coordinate = next_strip.sum(axis=1)
    if not float(per_coordinate.sum()) > BOX_CUT_MASS:
        return None
    return _BoxCut(np.asarray(box, dtype=np.float64), per_coordinate, float(beyond.sum()))


def _warn_if_box_cuts_mass(
    cut: _BoxCut, y: torch.Tensor, log_weights: torch.Tensor, automatic: bool
) -> None:
    """Warn about the mass that the kept TT base's box cuts (``cut``) unless
    the fitted model puts it back: ``y`` (N, d), the model's own draws in the
    base's coordinates, and ``log_weights`` their importance log-weights
    against the target say what share of the target's mass the model sees
    beyond the box. A flow on the base, a companion model or the Gaussian
    tail can carry mass out (a Student t of 3 degrees of freedom in 10
    dimensions: 0.5% just beyond the TT's box, log Z right to 7e-4); a model
    that sees less than half of what lies beyond the sides, as measured just
    beyond them or extrapolated (capped at the mass inside), misses it (five
    exponentials in log coordinates: 0.56% just beyond, 1.24% in all, and
    none of it seen by the model).
    """
    measured = float(cut.next_strip.sum())
    low = torch.as_tensor(cut.box[:, 0], dtype=y.dtype, device=y.device)
    high = torch.as_tensor(cut.box[:, 1], dtype=y.dtype, device=y.device)
    outside = ((y < low) | (y > high)).any(dim=1)
    seen = float(torch.softmax(log_weights, dim=0)[outside].sum())
    # Both relative to the mass inside the box. The extrapolation counts
    # too, capped at as much as inside (it can overshoot on a ridge that
    # leaves the box): a flow that carried a little mass just across the
    # sides of a box of +-1 around a standard normal saw 0.105 of its weight
    # outside, near the 0.131 just beyond, and missed the half of the mass
    # that lies further (log Z 0.66 short). Where the target does not fall
    # across the strip, nothing says how far it goes on: the strip's share
    # counts BOX_CUT_FLAT_STRIPS times (the twisted banana: 6% just beyond,
    # its model with the flow sees 24% outside and is 0.034 nats short).
    extrapolated = cut.beyond if math.isfinite(cut.beyond) else BOX_CUT_FLAT_STRIPS * measured
    expected = max(measured, min(extrapolated, 1.0))
    if not seen < 1.0 or seen / (1.0 - seen) >= 0.5 * expected:
        return
    # the coordinates that hold most of it, largest first
    order = np.argsort(-cut.next_strip, kind="stable")
    coordinates = [int(k) for k in order if cut.next_strip[k] >= 0.1 * measured]
    shown = ", ".join(str(k) for k in coordinates[:8]) + (", ..." if len(coordinates) > 8 else "")
    # shares of the mass inside the box
    amount = f"{measured:.2%} of its mass just beyond them" + (
        f" (about {cut.beyond:.2%} in all if it keeps falling as it does across them)"
        if cut.beyond < 1.0
        else " (and it does not fall off fast across them)"
    )
    if automatic:
        remedy = (
            "domain='auto' kept this box because a wider one built a worse base: give a "
            "wider domain (with n_basis high enough to resolve it), or mode_starts where "
            "the mass lies"
        )
    else:
        remedy = "widen the domain there, or use domain='auto'"
    warnings.warn(
        f"log_target goes on beyond the TT base's box in coordinate(s) {shown} of its "
        f"coordinates: its exact draws, weighted by log_target near the sides, put {amount}, "
        f"where the fitted model's draws see {seen:.2%}: the model misses mass there "
        "(log_normalizer_ runs low by about as much, however good ess_ looks). "
        f"{remedy.capitalize()}.",
        ConvergenceWarning if automatic else UserWarning,
        stacklevel=5,
    )


def _is_single_pair(domain) -> bool:
    """Whether ``domain`` is one ``(low, high)`` pair (a ragged list is not:
    :func:`~sktt_flow.utils.validation.check_domain` then says what is wrong)."""
    try:
        return np.shape(domain) == (2,)
    except ValueError:
        return False


def _is_auto(domain) -> bool:
    """Whether the variational box is to be found automatically."""
    return domain is None or (isinstance(domain, str) and domain == "auto")


def _is_poor_cross(base) -> bool:
    """Whether the TT-cross of a variational base on a given box (``base``: its
    TT, or the :class:`~sktt_flow.flows.SymmetrizedBase` around it) scored a
    self-check ESS below :data:`MIN_GOOD_BASE_ESS`; then ``base="auto"``
    trains the flow on a Gaussian base too."""
    train = _tt_of(base)
    report = None if train is None else train.cross_report
    return report is not None and math.isfinite(report.ess) and report.ess < MIN_GOOD_BASE_ESS


def _self_check(base, shift, matrix, evaluate, seed, device):
    """Importance diagnostics of a base in the target's coordinates, on exact draws.

    ``y ~ base``, ``x = shift + matrix y``, ``log q(x) = log q_y(y) -
    log |det matrix|``, weights ``h(x) / q(x)``. Returns the diagnostics and
    ``(y, log w)`` for :func:`~sktt_flow.geometry.box_of_weighted_draws`.

    The draws and their log-densities come from a float64 copy of the base,
    whatever its training dtype: the self-check's warnings and the box
    adjustments it drives should not move with the sampler's float32
    rounding, and the model's final diagnostics are float64 too.
    """
    base = copy.deepcopy(base).to(torch.float64)
    with torch.no_grad():
        y, log_q = base(N_SELF_CHECK_SAMPLES, generator=torch_generator(seed + 2, device))
        log_q = log_q - torch.linalg.slogdet(matrix).logabsdet.item()
        x = shift.to(device) + y @ matrix.T.to(device)
        log_h = evaluate(x)
        return importance_diagnostics(log_h, log_q), (y, log_h - log_q)


def _mean_width_ratio(new_box, box) -> float:
    """Geometric mean over coordinates of the width of ``new_box`` over that of
    ``box`` (1 when there is no new box)."""
    if new_box is None:
        return 1.0
    return float(np.exp(np.mean(np.log(np.ptp(new_box, axis=1) / np.ptp(box, axis=1)))))


def _symmetry_group(symmetry, n_features: int):
    """The elements given by ``symmetry`` and the group they generate.

    Returns ``(given, names, group)``: ``given`` the (k, d, d) float64 maps
    the user named (checked against ``log_target``), ``names`` how errors
    call them, and ``group`` the finite group, float64 on the CPU, identity
    first and without repeats (as :class:`~sktt_flow.flows.SymmetrizedBase`
    keeps it). None for ``symmetry=None``.
    """
    if symmetry is None:
        return None
    if isinstance(symmetry, str):  # "sign_flip", the only string the constraints allow
        group = sign_flip_group(n_features)
        return group[1:], ["the sign flip x -> -x"], group
    try:
        shape = np.shape(symmetry)
    except ValueError:  # ragged: SymmetrizedBase names the element
        shape = None
    if shape is not None and len(shape) == 2:
        raise ValueError(
            f"symmetry must be an array of shape (m, {n_features}, {n_features}) or a list of "
            f"({n_features}, {n_features}) matrices, got one array of shape {shape}: wrap a "
            "single matrix in a list."
        )
    if shape is not None and len(shape) not in (0, 3):
        raise ValueError(
            f"symmetry must be an array of shape (m, {n_features}, {n_features}) or a list of "
            f"({n_features}, {n_features}) matrices, got shape {shape}."
        )
    ones = torch.ones(n_features, dtype=torch.float64)
    try:
        closed = SymmetrizedBase(GaussianBase(torch.zeros_like(ones), ones), symmetry)
    except (TypeError, ValueError) as error:
        message = str(error).replace("group element", "symmetry element")
        raise ValueError(
            f"symmetry must be a finite group of ({n_features}, {n_features}) matrices with "
            f"|det| = 1 acting on the coordinates of log_target: {message}"
        ) from error
    given = torch.stack(
        [
            torch.as_tensor(
                np.asarray(
                    element.detach().cpu() if isinstance(element, torch.Tensor) else element,
                    dtype=np.float64,
                )
            )
            for element in symmetry
        ]
    )
    names = [f"symmetry[{index}]" for index in range(given.shape[0])]
    return given, names, closed.matrices.detach().clone()


def _symmetry_in_base_coordinates(group: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """The group acting on the base's coordinates ``y`` (``x = shift + matrix y``,
    the shift fixed by the group): ``matrix^{-1} g matrix``, float64.

    Maps whose entries come out within rounding of integers (the identity,
    ``-I``, signed permutations) are rounded to them, so that the sign flip
    stays exact whatever ``matrix``. The order is that of ``group``.
    """
    conjugated = torch.linalg.solve(matrix, group @ matrix)
    rounded = conjugated.round()
    scale = max(1.0, float(conjugated.abs().max()))
    exact = (conjugated - rounded).abs().flatten(1).amax(dim=1) <= 1e-12 * scale
    conjugated[exact] = rounded[exact]
    return conjugated


def _symmetric_box(box, group: torch.Tensor, center: torch.Tensor | None = None) -> np.ndarray:
    """The bounding box of the union of the images ``c + g (B - c)`` of ``box``
    over the group (in the base's coordinates, about ``center`` c, the
    origin by default): the box itself when it is already invariant (a box
    symmetric about 0 under the sign flip)."""
    box = torch.as_tensor(np.asarray(box, dtype=np.float64))
    fixed = torch.zeros(box.shape[0], dtype=box.dtype) if center is None else center
    low, high = images_bounding_box(box[:, 0], box[:, 1], group, fixed)
    # the box itself exactly, whatever the rounding of its image under the identity
    low, high = torch.minimum(low, box[:, 0]), torch.maximum(high, box[:, 1])
    return torch.stack([low, high], dim=1).numpy()


def _group_center(group: torch.Tensor, shift: torch.Tensor, matrix: torch.Tensor):
    """The point of the base's coordinates ``y`` that the group fixes, for
    ``x = shift + matrix y`` and a group of linear maps of ``x``: ``y = -matrix^{-1}
    shift``, the origin of ``x``. None when every element fixes the origin of
    ``y`` too (to rounding), as when the shift is fixed by the group: the
    group is then linear in ``y`` and needs no centre."""
    center = -torch.linalg.solve(matrix, shift)
    moved = center - group @ center  # (|G|, d): (I - g) c
    if float(moved.abs().max()) <= 1e-12 * max(1.0, float(center.abs().max())):
        return None
    return center


def _one_per_orbit(modes: torch.Tensor, covariances: torch.Tensor, group: torch.Tensor):
    """Indices of the modes that are not images under ``group`` of earlier ones
    (within :data:`SAME_MODE_STANDARD_DEVIATIONS` of their local standard
    deviations): one mode of each orbit."""
    scales = torch.diagonal(covariances, dim1=1, dim2=2).sqrt()
    kept: list[int] = []
    for index in range(modes.shape[0]):
        images = modes[index] @ group.transpose(1, 2)  # (|G|, d)
        if any(
            float(((images - modes[k]).abs() / scales[k]).amax(dim=1).min())
            <= SAME_MODE_STANDARD_DEVIATIONS
            for k in kept
        ):
            continue
        kept.append(index)
    return torch.tensor(kept, dtype=torch.long)


def _fold(y: torch.Tensor, base: SymmetrizedBase) -> torch.Tensor:
    """Each row of ``y`` replaced by the image under the group of ``base`` where
    its train is largest: draws of the symmetrised base brought back to the
    region of the one orbit that the train holds (their importance weights,
    invariant, stay as they are)."""
    center = base.center.to(y.dtype)
    images = center + (y - center) @ base.matrices.to(y.dtype).transpose(1, 2)
    with torch.no_grad():
        log_train = base.base.log_prob(images.reshape(-1, y.shape[1]).to(base.center.dtype))
    best = log_train.reshape(base.order, y.shape[0]).argmax(dim=0)
    return images[best, torch.arange(y.shape[0], device=y.device)]


def _tt_of(q0) -> TTDistribution | None:
    """The tensor train of a model's base: the base itself, the train inside a
    symmetrised base (``symmetry``), or None for a Gaussian."""
    if isinstance(q0, SymmetrizedBase):
        q0 = q0.base
    return q0 if isinstance(q0, TTDistribution) else None


def _in_precision(model: TensorizingFlow, dtype: torch.dtype) -> TensorizingFlow:
    """A copy of a fitted float64 model that evaluates in ``dtype``.

    The TT base and the layers up to the last trained one are cast to
    ``dtype``; the fixed layers after it (the standardisation and whitening
    into the features, or the map into the target's coordinates) stay in
    float64, as does a Gaussian base. The fixed maps carry offsets such as a
    feature's mean or a posterior's mode, whose digits float32 would lose, at
    a cost of ``d`` or ``d^2`` per point; a Gaussian base costs ``d`` per
    point, and in float64 it draws the same normals as the float64 model
    (torch draws another stream in float32). A companion model is copied the
    same way.
    """
    copied = copy.deepcopy(model)
    if copied.companion is not None:
        copied.companion = _in_precision(copied.companion, dtype)
    layers = list(copied.flows)
    n_cast = max(
        (k + 1 for k, layer in enumerate(layers) if not isinstance(layer, FIXED_LAYERS)),
        default=0,
    )
    for layer in layers[:n_cast]:
        layer.to(dtype=dtype)
    if isinstance(copied.q0, (TTDistribution, SymmetrizedBase, TemperedTTBase)):
        # a symmetrised base wraps a TT (symmetry=...): its group goes too
        copied.q0.to(dtype=dtype)
    return copied


def _padded_size(n_rows: int) -> int:
    """``n_rows`` rounded up to a multiple of :data:`ROW_MULTIPLE`."""
    return n_rows + (-n_rows % ROW_MULTIPLE)


def _split_standardization(
    model: TensorizingFlow,
) -> tuple[TensorizingFlow, FixedAffine, FixedBoundsMap | FixedMarginalNormalMap | None]:
    """A fitted data-mode model as the model in standardised coordinates, the
    fixed map back to the (unbounded) features and the elementwise map onto
    the features (``feature_bounds`` or ``marginal_gaussianization``; None
    without)."""
    layers, feature_map = split_feature_map(model.flows)
    *layers, last = layers
    if not isinstance(last, FixedAffine):
        raise TypeError("A model of the data ends with its FixedAffine standardisation.")
    return TensorizingFlow(model.q0, layers), last, feature_map


def _check_same_bounds(bounds_map: FixedBoundsMap | None, fitted: FixedBoundsMap | None):
    """A warm start keeps the map onto the bounds of the fitted model."""
    same = (bounds_map is None) == (fitted is None)
    if same and bounds_map is not None:
        same = torch.equal(bounds_map.low, fitted.low.cpu().double()) and torch.equal(
            bounds_map.high, fitted.high.cpu().double()
        )
    if not same:
        raise ValueError(
            "warm_start=True continues the fitted model, which was fitted with other "
            "feature_bounds: set them back, or set warm_start=False to start over."
        )


def _off_bounds(points: np.ndarray, bounds_map: FixedBoundsMap, name: str):
    """``points`` (float64, (n, d)) mapped off their bounds onto the real line
    (the inverse of ``bounds_map``) and ``log |dz/dx|`` per row; a
    ``ValueError`` naming ``name`` when a value is not strictly inside."""
    z, log_det = bounds_map.inverse(torch.from_numpy(points))
    outside = ~torch.isfinite(log_det)
    if bool(outside.any()):
        low, high = bounds_map.low.numpy(), bounds_map.high.numpy()
        columns = np.flatnonzero(((points <= low) | (points >= high)).any(axis=0))
        raise ValueError(
            f"{name} has {int(outside.sum())} row(s) with values on or outside "
            f"feature_bounds (in feature(s) {columns[:10].tolist()}): the bounds are those "
            "of an open support, so every value must lie strictly inside them."
        )
    return z.numpy(), log_det.numpy()


def _check_bounds_resolve_the_data(X: np.ndarray, bounds_map: FixedBoundsMap) -> None:
    """Refuse ``feature_bounds`` so far from the rows ``X`` (float64, (n, d),
    strictly inside the bounds) that float64 cannot resolve the rows on the
    way onto the real line: the map takes ``log(x - low)`` (and ``log(high -
    x)``), whose arguments are rounded to float64's spacing at the distances
    to the bounds. Where the resolution in ``x`` that leaves exceeds
    :data:`MAX_BOUND_ROUNDING_TO_SPREAD` of a feature's standard deviation,
    rows a few spacings apart merge, the base fits spikes at the rounded
    values and the model in ``x`` is not normalised (500 standard normal
    rows with bounds at +-1e15: the density integrated to 10.1, the test
    rows scored +0.70 nats against -1.40; at +-1e14, -1.414; at +-1e12,
    exact). With two bounds the nearer one sets the resolution (the logit's
    slope is ``1 / (x - low) + 1 / (high - x)``): exponential rows with bounds
    ``(0, 1e16)`` are resolved."""
    low, high = bounds_map.low.numpy(), bounds_map.high.numpy()
    has_low, has_high = np.isfinite(low), np.isfinite(high)
    to_low = np.abs(X - np.where(has_low, low, 0.0))
    to_high = np.abs(np.where(has_high, high, 0.0) - X)
    with np.errstate(divide="ignore", invalid="ignore"):
        # the rounding of each logarithm's argument, relative, over the slope
        two_sided = (np.spacing(to_low) / to_low + np.spacing(to_high) / to_high) / (
            1.0 / to_low + 1.0 / to_high
        )
    resolution = np.where(
        has_low & has_high,
        two_sided,
        np.where(has_low, np.spacing(to_low), np.where(has_high, np.spacing(to_high), 0.0)),
    ).max(axis=0)
    spread = X.std(axis=0)
    # a constant column has nothing to resolve (and a spread of zero)
    coarse = np.flatnonzero((spread > 0) & (resolution > MAX_BOUND_ROUNDING_TO_SPREAD * spread))
    if coarse.size:
        k = int(coarse[0])
        raise ValueError(
            f"feature_bounds of feature {k} ({low[k]:g}, {high[k]:g}) are so far from the "
            f"data (standard deviation {spread[k]:.3g}) that float64 resolves the rows "
            f"only to {resolution[k]:.3g} on the way onto the real line: distinct rows would "
            "merge, and the model would not be normalised. Give bounds near the support's "
            "real ends, or -inf/inf for a side without one."
        )


def _box_off_bounds(low: np.ndarray, high: np.ndarray, bounds_map: FixedBoundsMap):
    """A ``domain`` given in the features' units, ``[low, high]`` per
    feature, mapped off ``bounds_map``: the box the base lives on."""
    ends, _ = _off_bounds(np.stack([low, high]), bounds_map, "domain")
    # a feature with only an upper bound reverses its order
    return ends.min(axis=0), ends.max(axis=0)


class TensorizingFlowDensity(DensityMixin, BaseEstimator):
    r"""Tensorizing flow: a normalizing flow on a tensor-train base distribution.

    The model is

    .. math::

        \log q(x) = \log q_0(z) + \log \left| \det \frac{\partial z}{\partial x} \right|,
        \qquad z = f^{-1}(T(x)),

    with :math:`q_0` a squared functional tensor train
    (:class:`~sktt_flow.TTDistribution`) that already carries the multimodal
    shape of the distribution, :math:`f` a normalizing flow that starts at
    the identity and refines it, and :math:`T` a fixed standardisation of the
    features (data mode) or the identity (variational mode). Log-densities
    are exact and normalised, samples are exact, and every returned
    log-density is that of the original features.

    Two ways to fit:

    - **Density estimation** (``log_target=None``): ``fit(X)`` builds the TT
      base from the standardised samples by maximum likelihood, then trains
      the flow by maximum likelihood, with early stopping on a held-out
      fraction and restoration of the best state, kept where at least
      ``MIN_FLOW_CONFIRMATION_ROWS`` held-out rows confirm it against the
      base alone (else the flow is the identity).
    - **Variational inference** (``log_target`` set): ``fit()`` builds the
      base by TT-cross on the unnormalised log-density over ``domain``, then
      trains the flow by reverse KL with the base frozen, and reports the
      ELBO, the effective sample size and an estimate of :math:`\log Z`.

    Parameters
    ----------
    base : {"auto", "tt", "gaussian", "tempered"}, default="auto"
        The base distribution: the tensor train, or a fixed diagonal Gaussian
        (:class:`~sktt_flow.flows.GaussianBase`; standard in standardised
        coordinates from data; in variational mode the Laplace approximation
        with ``domain="auto"``, else centred on ``domain`` with a quarter of
        its width as standard deviation) to compare with an ordinary flow of
        the same architecture and training. ``"auto"``: in variational mode
        with ``domain="auto"``, and with an explicit box where TT-cross's
        self-check is poor (ESS below 0.5), both bases get the flow and the
        model is the mixture of the two trained models whose weight
        maximises the ELBO on 4096 fresh exact draws of each
        (:func:`~sktt_flow.training.fit_variational_mixture_weight`; kept
        only where it beats the better model alone by two paired standard
        errors, otherwise that model alone, ``base_`` says which;
        ``companion_weight_`` is the Gaussian's weight; with ``symmetry``
        the better model alone), so the fit is never worse than the same
        flow on the Gaussian beyond the noise of that comparison, at the
        cost of training two; with an explicit box and a good TT, the TT
        alone. In data mode the Gaussian is a candidate in each of the
        candidate coordinates (see ``preconditioner``; in whitened ones it is
        the full-covariance Gaussian of the whitening's covariance), the TT
        in the coordinates whose optimisation-free start scores best on the
        held-out rows; the TT is kept unless a Gaussian is ahead on the
        held-out rows by two standard errors, and the flow is trained on the
        kept base. Where a Gaussian is kept, it becomes a Gaussian mixture
        in its coordinates where the held-out rows clearly prefer one (2, 4,
        8, ... up to 64 components of each covariance type, fitted by EM and
        chosen on the held-out rows;
        :class:`~sktt_flow.flows.GaussianMixtureBase`). Where the TT is kept,
        the flow is also trained on the best Gaussian, or on such a mixture,
        for about a quarter
        more fit time, and the model is the mixture of the two, the
        Gaussian's as the TT's companion
        (:class:`~sktt_flow.flows.TensorizingFlow`), with the weight that
        maximises the held-out likelihood (``companion_weight_``; no
        companion when the smallest weight, 0.001, is best): the two flows
        miss different held-out rows. On the real tables of the density
        benchmark the mixture scored 0.07 to 1.2 nats per test row above the
        better of the two at the best weight, and the Gaussian mixture under
        the companion added 0.4 to 1.5 more on digits, breast cancer and
        diabetes. A mixture is not always the better base for a flow: with
        at least 200 held-out rows, a flow on the one Gaussian is trained for
        a few passes first (up to 30; five where it makes no progress), and
        where it is clearly ahead of the untrained mixture, the one Gaussian
        is the companion's base (on a 5-D log-normal, +0.22 to +0.30 nats
        per test row). Scoring and sampling then cost both models. With held-out
        rows, but fewer than ``MIN_CHOICE_ROWS`` (5; fewer than 45 rows at the
        default ``validation_fraction``), nothing chosen on them is more than
        noise, and the model is one Gaussian: the Ledoit–Wolf covariance of
        the training rows, no TT, no mixture and no flow (``base_`` is
        ``"gaussian"``). The ``tt_rank``,
        ``n_basis`` and ``train_base`` parameters only concern the TT base.
        ``"tempered"`` (variational mode only): a composition of TT layers on
        tempered bridges
        :math:`h^{\beta} g^{1-\beta}` (:class:`~sktt_flow.flows.TemperedTTBase`,
        Cui and Dolgov's deep inverse Rosenblatt transport, built by
        :func:`~sktt_flow.flows.fit_tempered_base` with ``tt_rank`` and
        ``n_basis`` per layer), exact in log-density and sampling. It lives in
        the single train's coordinates (the one train is built first, as for
        ``"tt"``), with the outer Gaussian ``g`` the target's mean and three
        times its covariance factor as estimated from that train's draws
        weighted by the target; the flow trains on top as on a TT. For curved
        mass that one train resolves poorly (measured, base alone: a sharp
        parabolic ridge, reverse KL 0.15 against 0.48; the twisted banana 0.14
        against 0.26; with the flow, ``domain="auto"``: the banana 0.032
        against 0.042, Neal's funnel 0.198 against 0.386), at the cost of
        the single train plus one cross per layer; it lost on the wine
        posterior (0.123 against 0.072) and on the double Rosenbrock (see
        :mod:`sktt_flow.flows.tempered` and the benchmarks). Not with
        ``symmetry`` or ``train_base``; ``tt_`` is None.
    tt_rank : int or "auto", default="auto"
        Maximum bond rank of the tensor train. Higher ranks carry more
        structure (more modes, stronger dependence) at a cost linear in the
        dimension and cubic in the rank. ``"auto"``: in data mode chosen on
        the held-out rows among
        :data:`~sktt_flow.tt.fit_samples.TT_RANK_CANDIDATES` (with
        ``n_basis="auto"``, jointly with it: the cheapest pair whose
        optimisation-free start scores within a standard error of the best;
        after the fit, the train rounded to a smaller candidate rank where
        that scores higher on the held-out rows;
        :func:`~sktt_flow.tt.fit_samples.fit_samples`), 8 without a held-out
        split; in variational mode it is 8, the cap of TT-cross's ranks. An
        int is used as it is, so ``GridSearchCV`` over ``tt_rank`` does what
        it says.
    n_basis : int or "auto", default="auto"
        Legendre polynomials per coordinate (degree ``n_basis - 1``); sets
        the resolution of the base along each coordinate: features of width
        ``w`` on a box of width ``L`` need ``n_basis`` well above ``L / w``.
        ``"auto"``: in variational mode TT-cross starts at 16 and grows the
        basis while the energy in the highest Legendre degrees says a
        coordinate is not resolved and the self-check on exact draws improves
        (:meth:`TTDistribution.from_log_density
        <sktt_flow.TTDistribution.from_log_density>`); in data mode it is
        chosen on the held-out rows among
        :data:`~sktt_flow.tt.fit_samples.N_BASIS_CANDIDATES` (see
        ``tt_rank``) and grown while the fitted base is not resolved (on
        more than :data:`~sktt_flow.tt.fit_samples.SEARCH_MAX_ROWS` training
        rows up to :data:`~sktt_flow.tt.fit_samples.MAX_N_BASIS_ALL_ROWS`),
        16 without a held-out split. An int is used as it is.
    smoothness : float >= 0 or "auto", default="auto"
        Data mode only: weight of the roughness penalty of the TT base's
        maximum likelihood (Good and Gaskins' penalty on the square root of
        the density, which grows as the square of the Legendre degree and so
        damps the high degrees that follow the noise of a small sample; see
        :func:`~sktt_flow.tt.fit_samples.fit_samples`). ``"auto"`` starts
        at :data:`~sktt_flow.tt.fit_samples.SMOOTHNESS_START` and moves along
        :data:`~sktt_flow.tt.fit_samples.SMOOTHNESS_CANDIDATES` while the
        held-out score rises, one way (on a subsample, below, up and then
        down), keeping the best (0 without a held-out split).
        On more than :data:`~sktt_flow.tt.fit_samples.SEARCH_MAX_ROWS`
        training rows, the ``"auto"`` choices of the base (and the
        preconditioner's) are made on a random subsample of that many rows
        and held-out rows, and the chosen train is then fitted to all rows,
        from the subsample's fit (or the chosen setting's start on all rows,
        if better on the held-out rows). Ignored in variational mode.
    domain : array-like of shape (n_features, 2), "auto" or None, default=None
        The box ``[low, high]`` per feature on which the TT base lives. In data
        mode it is given in the original feature units, and by default
        (``None`` or ``"auto"``) it runs from the 0.1% to the 99.9% quantile
        of the training data per feature, widened by 10% of that distance on
        each side (rows beyond it are scored by the base's Gaussian tail
        component). In variational mode ``None`` or
        ``"auto"`` finds the box (with ``n_features``): multi-start gradient
        ascent of ``log_target`` from standard-normal points (and
        ``mode_starts``), the Laplace covariance at every mode found, and the
        box that holds each mode to 6 local standard deviations in the
        coordinates chosen by ``preconditioner``. Where no mode is found (a
        density unbounded down a funnel's neck) or none is described by its
        Laplace Gaussian (a funnel's mode lies in its neck), short Langevin
        chains from the standard-normal points give a first box from their
        quantiles instead. The sides of the box then move out where exact
        draws of the base, weighted by the target, pile up against them, and
        in where they never reach, while that improves the base's ELBO. An
        explicit box is used as it is. The base has full support anyway (a
        small Gaussian component covers the outside), but mass is only
        modelled finely inside.
    feature_bounds : array-like of shape (n_features, 2) or (2,), default=None
        The open support ``(low, high)`` of each feature, known in
        advance (a proportion in (0, 1), a positive quantity in (0, inf));
        ``-inf`` and ``inf`` mark a missing bound, and one pair applies to
        every feature. The model is then fitted to the features mapped onto
        the real line (:class:`~sktt_flow.flows.FixedBoundsMap`: the
        logistic map for two bounds, the logarithm for one) and its
        log-density carries the exact log-Jacobian of that map, so it is
        zero outside the bounds (``score_samples`` gives ``-inf`` there and
        on them) and its samples stay inside. Where the data pile up against
        a bound the gain is large: 10,000 rows of ``tanh`` of a 30-D Gaussian
        mixture score 22-24 nats per row better with ``feature_bounds=(-1,
        1)`` (``benchmarks/bench_fit_time.py``). Every training value must
        lie strictly inside; an explicit ``domain`` is in the original units
        and inside the bounds too. In variational mode it is the support of
        ``log_target`` (a positive scale, a probability): the fit works on
        ``z -> log_target(x(z)) + log |dx/dz|``, so ``log_target`` is only
        evaluated inside the bounds, and the model ends with the same map;
        ``domain`` and ``mode_starts`` are given in the target's coordinates.
        Not with ``symmetry``. ``None``: no bounds.
    preconditioner : {"auto", "none", "diagonal", "full"}, default="auto"
        Variational mode with an automatic box: the coordinates ``y`` of the
        TT base, ``x = shift + matrix y``. ``"none"``: the target's own;
        ``"diagonal"``: centred on the modes and scaled by their Laplace
        standard deviations (correlations, and a chain's low TT rank, kept);
        ``"full"``: whitened by the Cholesky factor of the (pooled) Laplace
        covariance, so that a linear correlation no longer costs TT rank;
        ``"auto"``: all three are built, and the one whose base scores the
        best ELBO on exact draws of itself (the self-check) is kept. With an
        explicit ``domain`` only ``"none"`` (or ``"auto"``, which means it)
        applies. The map is a fixed layer of the model with an exact
        log-determinant; ``preconditioner_`` says which was kept. In data
        mode the features are always standardised (``"none"`` and
        ``"diagonal"`` mean that alone); ``"full"`` also whitens them by the
        Cholesky factor of a covariance, the Ledoit–Wolf one or, where the
        held-out rows clearly prefer it, the empirical one (without held-out
        rows the Ledoit–Wolf one); ``"auto"`` considers both ways, and whitens
        only where that base's held-out log-likelihood is ahead by two
        standard errors of the paired differences (not with an explicit
        ``domain``, a box in the features; the data-mode part of ``base``
        says how the candidates are compared).
    marginal_gaussianization : {"none", "auto", "smooth", "sharp"}, default="none"
        Data mode: map each feature first through a smooth estimate of its
        own distribution function ``F`` and the standard normal quantile,
        ``g = Phi^{-1}(F(x))`` (the marginal step of Chen and Gopinath's
        Gaussianization [3]_), fit the model to ``g``, and add the map's
        exact log-Jacobian to its log-density. The map
        (:class:`~sktt_flow.flows.FixedMarginalNormalMap`, the last layer of
        ``flow_``) is fitted to the training rows without the held-out ones:
        a monotone spline through the distribution of 128 normals at the
        column's quantiles (:class:`~sktt_flow.flows.QuantileNormalMixture`),
        linear beyond six standard deviations. It spares the base the
        Legendre functions and rank that a skewed feature, a heavy tail or a
        pile of rows near a bound cost it, and it bends what the base and the
        companion Gaussian mixture hold well in the original coordinates (a
        mixture of Gaussians, a linear correlation). Measured
        (``benchmarks/probe_marginal_gaussianization.py``): 13.6 nats per
        row better on 10,000 rows of 30 features piled up near +-1
        (``"sharp"``), 3.6 better on ``load_breast_cancer`` (``"smooth"``);
        0.02 to 0.4 worse on the 2-D toys and the 8-D mixture, 0.15 to 1.1 on
        the digits, 1.6 on wine (``"smooth"``). ``"smooth"``: each normal at
        least a quarter of Silverman's bandwidth wide; ``"sharp"``: at least
        a thousandth of the column's standard deviation, closer to rows piled
        up near a bound, but where many rows share a value (rounded or
        discrete columns) it puts a narrow spike there. ``"auto"``: fits
        the model without the map and with ``"smooth"``, on the same rows,
        and keeps the map only where its held-out log-likelihood is ahead by
        two standard errors of the paired differences
        (``marginal_gaussianization_`` says which; the time of both fits; on
        the benchmark's 36 splits it kept the better of the two on 35, the
        miss costing 0.15 nats per row). ``"none"``: no map. Not with
        ``feature_bounds`` (which maps a known support), an explicit
        ``domain`` or ``log_target``. The map costs about 2 microseconds
        per row of 16 features each way on one core (a third of the
        scoring time of a model of that size), once more for a companion.
    mode_starts : array-like of shape (n_starts, n_features), default=None
        Variational mode with an automatic box: points where the mode search
        starts besides the standard-normal ones (a guess of the mode, the
        modes you know of a multimodal target); also gives the dimension
        when ``n_features`` is not set. A fit to data refuses it.
    flow : {"realnvp", "nsf", "maf", "none"} or callable, default="realnvp"
        The flow on top of the base: affine couplings (RealNVP), rational-
        quadratic neural spline couplings (NSF), masked autoregressive affine
        layers (MAF: density in one pass, sampling in ``n_features`` passes),
        no flow (the TT base alone), or a callable ``n_features -> list`` of
        normflows flow layers. Built-in flows start at the identity, their
        weights drawn in float32 from ``random_state`` whatever torch's
        default dtype (then cast to ``dtype``); a callable's layers are built
        under the caller's default dtype, with torch's global generator
        seeded from ``random_state``.
    n_flow_layers : int, default=8
        Coupling or autoregressive layers.
    hidden_units : int, default=64
        Width of the conditioner networks.
    log_target : callable, default=None
        Unnormalised log-density for variational inference: takes a tensor
        ``(m, n_features)`` on the estimator's device and dtype (float64 while
        an automatic box searches for the modes, in the check of
        ``symmetry`` and with ``feature_bounds``: write it for the dtype of
        its input) and returns
        ``m`` values, differentiable in torch (reverse KL uses its gradient;
        with ``flow="none"`` no gradient is needed). ``-inf`` means zero
        density; NaN and ``+inf`` are errors. Its integral over the real line
        in every coordinate (over ``feature_bounds`` where given) must be
        finite: an explicit ``domain`` places the base but does not truncate
        the target, so a density that stays flat beyond the box (a uniform
        prior written as a constant) needs ``feature_bounds``, or ``-inf``
        outside; otherwise the flow spreads its mass far outside the box (the
        fit warns when more than 5% of its draws end beyond an explicit
        ``domain`` by more than its width).
    cross_options : dict, default=None
        Variational mode: further keyword arguments of
        :meth:`TTDistribution.from_log_density <sktt_flow.TTDistribution.from_log_density>`
        that build the base by TT-cross, e.g. ``{"cross_method": "two-site",
        "max_evals": 10**7, "tol": 1e-5}`` for long chains where the one-site
        default stagnates. A fit to data refuses it.
    symmetry : {"sign_flip"}, array-like of shape (m, n_features, n_features) or None, default=None
        Variational mode: a finite group of linear maps ``x -> g x`` of the
        coordinates of ``log_target`` under which it is invariant,
        ``log_target(g x) == log_target(x)``: ``"sign_flip"`` for ``x -> -x``
        (lattice fields with an even energy, such as Ginzburg-Landau and
        phi^4 without external field, or a symmetric double well), or the
        matrices themselves (a list of ``(d, d)`` matrices or an array of
        shape ``(m, d, d)``, with ``|det g| = 1``; the identity is added and
        the set must be closed under composition). The TT base built by
        TT-cross is then replaced by its average over the group,
        ``q0(y) = mean_g q_TT(g y)`` (:class:`~sktt_flow.flows.SymmetrizedBase`):
        its log-density and its draws stay exact, and modes that the group
        maps onto each other get exactly equal mass in the base, even where
        the cross found only one of them. The base's coordinates ``x = shift
        + matrix y`` (``preconditioner``) are made compatible with the group:
        the modes found are completed by their images, the shift is their
        group average (a point the group fixes) and the box is the bounding
        box of its images (symmetric about 0 for the sign flip; an explicit
        ``domain`` is widened the same way); the group acts on ``y`` as
        ``matrix^{-1} g matrix``. With an automatic box, when the best base on
        such coordinates has a self-check ESS below 0.5, coordinates and a
        box around one mode of each orbit are tried too: the train then holds
        one of the symmetric modes and the group supplies the others (acting
        about the origin of ``x``, the centre of
        :class:`~sktt_flow.flows.SymmetrizedBase`), which suits modes far
        apart for their widths (DoubleRosenbrock's mirror in ``x_d``: ESS 0.95
        against 0.18 on the box around both). The self-check and
        ``base_ess_`` are those of the symmetrised base. Before TT-cross (at the modes found, or at
        uniform points of an explicit box) and on 256 exact draws of the
        first base built, ``log_target`` is checked to be invariant under
        each given map (within ``1e-6 (1 + |log_target|)`` in float64); a
        ValueError names the map otherwise. The flow trained on top is not
        equivariant, so the model is not invariant: the balance of the modes
        is exact for the base (``flow_.q0``), and training the flow can
        unbalance it again, usually little since the flow starts at the
        identity and the reverse KL favours balance on a symmetric target.
        Suits targets with a known exact symmetry whose symmetric modes are
        far apart (a cross on a lattice field finds one sign at a time); it
        costs ``m`` evaluations of the TT per log-density. Not with
        ``base="gaussian"``, nor in data mode; with ``base="auto"`` the
        Gaussian candidate is not symmetrised.
    n_features : int, default=None
        Dimension for variational inference when ``domain`` is automatic or
        a single ``(low, high)`` pair shared by all coordinates. A fit to
        data refuses it (the data give the dimension).
    max_iter : int, default=300
        Maximum number of iterations of each training stage: epochs of the
        base's and of the flow's maximum likelihood in data mode; in
        variational mode, rounds of
        :data:`~sktt_flow.training.STEPS_PER_ITERATION` reverse-KL steps.
    batch_size : int, default=256
        Samples per gradient step (data rows, or draws from the model).
    learning_rate : float, default=1e-3
        Adam's initial step size; halved whenever the validation score stalls
        for half of ``n_iter_no_change`` units of patience. In data mode, the
        TT base's fits to all rows after a search on a subsample start at
        :data:`~sktt_flow.tt.fit_samples.ALL_ROWS_LEARNING_RATE_FACTOR` times
        it (they go on from a fitted train), and a flow on the TT whose
        training kept its start trains again at
        :data:`FLOW_RETRY_LEARNING_RATE_FACTOR` times it.
    validation_fraction : float, default=0.1
        Fraction of the data held out for early stopping, in [0, 1); 0
        scores the training data instead. In data mode the held-out rows
        also make the automatic choices (base, coordinates, ``"auto"``
        settings) and fit the weight of the base next to the flow
        (``defensive_weight_``; 0.001 with no rows held out). Variational
        mode scores on fixed draws from the model instead.
    n_iter_no_change : int, default=20
        Units of patience without improvement of the validation score before
        a training stage stops (the TT base's in data mode: a quarter of
        them). For the flow in data mode a unit is 10 optimiser steps,
        counted in whole epochs: with 300 training rows a unit is 5 epochs
        of 2 steps; with 9,000 rows in batches of 256, 20 units are 6 epochs
        of 36 steps. For the TT base a unit is an epoch, or enough epochs to
        make 10 steps (in steps too during a search on a subsample). In
        variational mode a unit is an iteration.
    mass_covering_iter : int, default=0
        Variational mode only: iterations (of
        :data:`~sktt_flow.training.STEPS_PER_ITERATION` steps of
        ``mass_covering_batch_size`` draws) of a second training stage
        after reverse KL, which minimises the forward KL ``KL(p || q)``
        estimated by self-normalised importance sampling on the model's own
        draws
        (:func:`~sktt_flow.training.fit_mass_covering`). Reverse KL charges
        a model little for target mass it leaves out, and that share is what
        ``log_normalizer_`` then misses; this stage charges it and moves the
        model's mass there (on Neal's funnel the neck and the wide end: the
        error in ``log Z`` from 0.12 to 0.008). It trains what reverse KL
        trained, the model next to a companion included, with the same
        learning rate and patience, and keeps its best state by a lower
        confidence bound on ``log Z`` from fixed draws. ``elbo_`` may rise
        (mass that reverse KL had left out, put back) or fall a lot: the
        forward KL does not charge mass put where the target has none (on
        the breast-cancer posterior the reverse KL went from 0.23 to 3.0).
        For ``log Z`` and importance weights, not for draws used unweighted.
        Each step of 4,096 draws costs about 16 reverse-KL steps of 256
        draws. 0 (default) skips it. Not with ``base="tempered"``, whose
        log-density has no gradient in its points. See :ref:`vi-mass-covering`.
    mass_covering_batch_size : int, default=4096
        Draws of the model per step of the ``mass_covering_iter`` stage. The
        importance weights are normalised within a step, and a region that
        the model reaches with a small share of its draws gets only that
        share of each step: on Neal's funnel the deepest neck (``v`` in
        [-9, -7), 0.85% of the mass) had 0.1% of the draws, four per step of
        4,096, and stayed two-thirds uncovered; steps of 16,384 covered three
        quarters of it and halved the error of ``log Z`` (0.0083 to 0.0040,
        random state 0), the fit taking 712 s instead of 358. On the
        breast-cancer posterior the same change kept the ELBO (reverse KL
        0.32, against 3.0 with steps of 4,096); on the centred eight schools
        it lowered the error of ``log Z`` further (0.035 to 0.025) and the
        ELBO too (reverse KL 2.5 to 3.3). The cost of a step grows in
        proportion.
    train_base : bool, default=False
        Also train the cores of the base jointly with the flow (in
        variational mode with a score-function gradient, as base samples do
        not depend differentiably on the cores). By default the base is
        frozen once built, as in the paper.
    device : {"cpu", "cuda", "cuda:N", "auto"}, default="cpu"
        Where the base and the flow are trained and evaluated. ``"auto"``
        picks CUDA when it is available.
    dtype : {"float32", "float64"}, default="float32"
        Precision of training.
    inference_dtype : {"float32", "float64"} or None, default=None
        Precision of ``score_samples``, ``sample`` and ``sample_and_score``:
        that of the TT base and of the flow's layers. None means ``dtype``.
        The fitted model ``flow_`` is kept in float64, and a float32 copy of
        it serves float32; the fixed maps into the original features (the
        standardisation and whitening of data, the map into the coordinates
        of ``log_target``) and a Gaussian base stay in float64 in both, so
        that data far from zero keep their digits, and results are float64
        arrays either way. float32 scores about twice as fast on a CPU, and
        its log-densities differ from the float64 ones by about ``1e-6``
        times their magnitude (the user guide's "Precision" section), more
        where the model has near-zero-width spikes (integer-valued columns,
        ``marginal_gaussianization="sharp"`` on rounded data: up to 1e-2,
        measured), which amplify rounding: use float64 there. Read
        at each call, so ``set_params`` switches a fitted model without
        refitting. The variational diagnostics (``elbo_``, ``ess_``,
        ``log_normalizer_``) are computed in float64 whatever this is.
    random_state : int, RandomState instance or None, default=None
        Fixes the split, the base, the initialisation of the flow, the
        mini-batches and the draws; an int gives identical models from
        identical data on CPU.
    n_jobs : int or None, default=None
        Threads of torch's CPU operations in ``fit``, ``score_samples`` and
        ``sample``, and in ``fit`` of the BLAS and OpenMP libraries that numpy
        and scikit-learn call (the Gaussian mixtures of the companion's
        search), so that a fit uses that many cores. None means 1 unless in a
        :func:`joblib.parallel_backend` context; -1 means all processors
        (scikit-learn's convention). Never more than torch's own setting,
        ``OMP_NUM_THREADS`` or a threadpoolctl limit. Mini-batches of a few
        hundred rows gain nothing from more threads and lose much when the
        cores are shared: a default fit to 2,000 rows took 3.3 times longer
        with two threads than with one on two cores while one other process
        ran. More threads can pay for scoring or sampling large arrays.
    verbose : int, default=0
        0: silent; 1: progress bars with the current loss and validation
        score.
    warm_start : bool, default=False
        Refit by continuing to train the current flow (and base, with
        ``train_base``) instead of starting over; the base and the
        standardisation are kept, whatever ``base``, ``tt_rank`` or
        ``n_basis`` now say. A ``ValueError`` (the model unchanged) where the
        parameters no longer describe the fitted model: other flow layers
        (``flow``, ``n_flow_layers``, ``hidden_units``), an integer
        ``n_basis`` other than the TT's, an integer ``tt_rank`` below its
        rank, another mode, another ``marginal_gaussianization``.

    Attributes
    ----------
    n_features_in_ : int
        Number of features.
    feature_names_in_ : ndarray of shape (`n_features_in_`,)
        Names of the features, when ``X`` has string column names.
    tt_ : TTDistribution or None
        The fitted TT base (in standardised coordinates in data mode); None
        when the base is a Gaussian. With ``symmetry`` it is the train inside
        the symmetrised base ``flow_.q0`` (whose ``base`` it is). In data mode
        ``tt_.selection`` holds what was chosen (``tt_rank``, ``n_basis``,
        ``smoothness``) and the held-out scores behind the choice; ``save``
        keeps it.
    base_ : str
        The base of the fitted model, ``"tt"``, ``"gaussian"`` or
        ``"tempered"`` (with ``base="auto"``: in variational mode, the TT
        unless the Gaussian's model alone scored the best ELBO; in data
        mode, the base kept on the held-out rows, ``"gaussian"`` for a
        Gaussian mixture too; in both, the model may have the Gaussian's as
        companion, see ``companion_weight_``).
    flow_ : TensorizingFlow
        The fitted model, a :class:`normflows.NormalizingFlow` with ``q0 = tt_``
        whose ``log_prob`` and ``sample`` act on the original features, in
        float64 (``inference_dtype="float32"`` evaluates a float32 copy); with
        a companion model (``companion_weight_``), the mixture of the two.
    loss_curve_ : list of float
        Mean training loss per iteration of the last training stage (the
        flow's; the base's when there is no flow to train).
    validation_scores_ : list of float
        Validation score (mean held-out log-likelihood, or the ELBO on fixed
        draws in variational mode) before training and after each iteration
        of the last training stage. In data mode with a frozen base, the
        flow's held-out log-likelihood is that of its mixture with the base
        at the best defensive weight, the model it ends in. Where the
        held-out rows do not confirm the trained flow, the model is its start
        (the first score; see the user guide's data mode).
    n_iter_ : int
        Iterations run by the last training stage.
    fit_time_ : float
        Seconds spent in ``fit``.
    device_ : torch.device
        Where the model lives.
    elbo_ : float
        Variational mode: the ELBO, ``E_q[log h - log q]``, on fresh samples.
    ess_ : float
        Variational mode: normalised effective sample size of the importance
        weights ``h / q``, in (0, 1].
    log_normalizer_ : float
        Variational mode: importance-sampling estimate of ``log Z``.
    log_normalizer_std_error_ : float
        Variational mode: its standard error, from the same weights: where
        they rest on fewer than 100 effective draws (``ess_`` below 0.01) it
        is not to be trusted, and fit warns.
    mass_covering_scores_ : list of float
        Variational mode: the validation scores of the ``mass_covering_iter``
        stage, before and after each iteration: the estimate of ``log Z`` on
        fixed draws less two of its standard errors (empty when the stage did
        not run).
    n_target_evaluations_ : int
        Variational mode: points at which ``log_target`` was evaluated in
        ``fit`` (mode search, TT-cross, self-checks, training and
        diagnostics).
    defensive_weight_ : float
        Weight of the base, through the fixed layers alone, next to the flow
        in the fitted mixture (see :class:`~sktt_flow.flows.TensorizingFlow`).
        Data mode: fitted by maximum likelihood on the held-out rows within
        [0.001, 0.5], 0.001 without held-out rows; variational mode: 0.
    companion_weight_ : float
        With ``base="auto"``: the weight of the model on the Gaussian or
        Gaussian mixture (``flow_.companion``, its base
        ``flow_.companion.q0``) next to the model on the TT; in data mode
        fitted by maximum likelihood on the held-out rows within [0.001,
        0.999], in variational mode by the ELBO on fresh draws (see
        ``base``). 0 when there is no companion (one model alone was best,
        no held-out rows, no flow in data mode, another ``base``, or in
        variational mode a good TT on an explicit box, or ``symmetry``).
    marginal_gaussianization_ : str
        Data mode: the marginal Gaussianization the model carries,
        ``"none"``, ``"smooth"`` or ``"sharp"`` (``marginal_gaussianization``,
        or with ``"auto"`` the one it kept).
    preconditioner_ : str
        The coordinates of the base that were kept (``"none"``,
        ``"diagonal"`` or ``"full"``; in data mode ``"diagonal"``, the
        standardisation, or ``"full"``, whitened). In data mode, the
        coordinates of the model on the kept base; a companion model
        (``companion_weight_``) has its own, a diagonal or spherical Gaussian
        mixture the standardised ones.
    base_elbo_, base_ess_, base_kl_ : float
        Variational mode with an automatic box: the self-check of the kept
        base alone (the TT, the tempered layers, or the Laplace Gaussian),
        before the flow, on 4096 exact draws: its ELBO, the effective sample size of its
        importance weights and its
        reverse-KL estimate (``log Z`` estimate minus the ELBO). A low
        ``base_ess_`` says the base misses mass, whatever the flow then does.

    See Also
    --------
    sklearn.mixture.GaussianMixture : Gaussian mixture density estimator.
    sklearn.neighbors.KernelDensity : Kernel density estimator.
    sktt_flow.TTDistribution : The tensor-train base on its own.

    References
    ----------
    .. [1] Khoo, Lindsey and Zhao, "Tensorizing flows: a tool for variational
       inference", arXiv:2305.02460, 2023.
    .. [2] Ren, Zhao, Khoo and Ying, "High-dimensional density estimation with
       tensorizing flow", Res. Math. Sci. 10:30, 2023.
    .. [3] Chen and Gopinath, "Gaussianization", Advances in Neural
       Information Processing Systems 13, 2000 (``marginal_gaussianization``).

    Examples
    --------
    >>> from sklearn.datasets import make_moons
    >>> from sktt_flow import TensorizingFlowDensity
    >>> X, _ = make_moons(500, noise=0.05, random_state=0)
    >>> model = TensorizingFlowDensity(tt_rank=4, max_iter=20, random_state=0).fit(X)
    >>> model.score_samples(X[:3]).shape
    (3,)
    >>> model.sample(2, random_state=0).shape
    (2, 2)
    """

    _parameter_constraints: ClassVar[dict] = {
        "base": [StrOptions({"auto", "tt", "gaussian", "tempered"})],
        "tt_rank": [Interval(Integral, 1, None, closed="left"), StrOptions({"auto"})],
        "n_basis": [Interval(Integral, 2, None, closed="left"), StrOptions({"auto"})],
        "smoothness": [Interval(Real, 0, None, closed="left"), StrOptions({"auto"})],
        "domain": ["array-like", StrOptions({"auto"}), None],
        "feature_bounds": ["array-like", None],
        "preconditioner": [StrOptions({"auto", "none", "diagonal", "full"})],
        "marginal_gaussianization": [StrOptions({"none", "auto", *FLOOR_KINDS})],
        "mode_starts": ["array-like", None],
        "flow": [StrOptions(set(FLOW_NAMES)), callable],
        "n_flow_layers": [Interval(Integral, 1, None, closed="left")],
        "hidden_units": [Interval(Integral, 1, None, closed="left")],
        "log_target": [callable, None],
        "cross_options": [dict, None],
        "symmetry": [StrOptions({"sign_flip"}), "array-like", None],
        "n_features": [Interval(Integral, 1, None, closed="left"), None],
        "max_iter": [Interval(Integral, 0, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "learning_rate": [Interval(Real, 0, None, closed="neither")],
        "validation_fraction": [Interval(Real, 0, 1, closed="left")],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left")],
        "mass_covering_iter": [Interval(Integral, 0, None, closed="left")],
        "mass_covering_batch_size": [Interval(Integral, 1, None, closed="left")],
        "train_base": ["boolean"],
        "device": [_DeviceOption(), torch.device],
        "dtype": [StrOptions(set(_DTYPES))],
        "inference_dtype": [StrOptions(set(_DTYPES)), None],
        "random_state": ["random_state"],
        "n_jobs": [
            Interval(Integral, None, -1, closed="right"),
            Interval(Integral, 1, None, closed="left"),
            None,
        ],
        "verbose": ["verbose"],
        "warm_start": ["boolean"],
    }

    def __init__(
        self,
        *,
        base="auto",
        tt_rank="auto",
        n_basis="auto",
        smoothness="auto",
        domain=None,
        feature_bounds=None,
        preconditioner="auto",
        marginal_gaussianization="none",
        mode_starts=None,
        flow="realnvp",
        n_flow_layers=8,
        hidden_units=64,
        log_target=None,
        cross_options=None,
        symmetry=None,
        n_features=None,
        max_iter=300,
        batch_size=256,
        learning_rate=1e-3,
        validation_fraction=0.1,
        n_iter_no_change=20,
        mass_covering_iter=0,
        mass_covering_batch_size=IMPORTANCE_BATCH_SIZE,
        train_base=False,
        device="cpu",
        dtype="float32",
        inference_dtype=None,
        random_state=None,
        n_jobs=None,
        verbose=0,
        warm_start=False,
    ):
        self.base = base
        self.tt_rank = tt_rank
        self.n_basis = n_basis
        self.smoothness = smoothness
        self.domain = domain
        self.feature_bounds = feature_bounds
        self.preconditioner = preconditioner
        self.marginal_gaussianization = marginal_gaussianization
        self.mode_starts = mode_starts
        self.flow = flow
        self.n_flow_layers = n_flow_layers
        self.hidden_units = hidden_units
        self.log_target = log_target
        self.cross_options = cross_options
        self.symmetry = symmetry
        self.n_features = n_features
        self.max_iter = max_iter
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.mass_covering_iter = mass_covering_iter
        self.mass_covering_batch_size = mass_covering_batch_size
        self.train_base = train_base
        self.device = device
        self.dtype = dtype
        self.inference_dtype = inference_dtype
        self.random_state = random_state
        self.n_jobs = n_jobs
        self.verbose = verbose
        self.warm_start = warm_start

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        tags.input_tags.sparse = False
        tags.target_tags.required = False
        return tags

    def _n_threads(self) -> int:
        """Torch threads for ``n_jobs`` (joblib's reading: None is 1, -1 all)."""
        return effective_n_jobs(self.n_jobs)

    # -------------------------------------------------------------------- fit
    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X=None, y=None):
        """Fit the base and the flow.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), or None
            Training data (data mode): dense, finite, real, at least 2
            training rows after the held-out ones (``validation_fraction``;
            3 rows with the default, 2 with ``validation_fraction=0``;
            sparse matrices are not supported: densify them first). Must be
            None in variational mode (``log_target`` set).
        y : None
            Ignored; present for API consistency.

        Returns
        -------
        self : TensorizingFlowDensity
            The fitted estimator.
        """
        # A failed fit must leave a previously fitted model as it was:
        # validate_data and warm starts modify the estimator, so snapshot it.
        snapshot = dict(self.__dict__)
        started = time.perf_counter()
        try:
            # Training needs autograd even when the caller's code runs under
            # torch.no_grad() or torch.inference_mode() (whole scripts often do).
            with (
                cpu_threads_within_limits(self._n_threads()),
                torch.inference_mode(False),
                torch.enable_grad(),
            ):
                if self.log_target is None and self.symmetry is not None:
                    raise ValueError(
                        "symmetry is for variational inference (a log_target invariant "
                        "under the group), not for fitting to data: set symmetry=None, or "
                        "set log_target."
                    )
                if self.log_target is None and self.mass_covering_iter > 0:
                    raise ValueError(
                        "mass_covering_iter trains a variational model towards the mass of "
                        "log_target; a fit to data already minimises the forward KL (maximum "
                        "likelihood). Set mass_covering_iter=0, or set log_target."
                    )
                if self.log_target is not None and self.marginal_gaussianization != "none":
                    raise ValueError(
                        "marginal_gaussianization maps each feature by its distribution in "
                        "the training data (fit(X)); a variational fit has no data: set "
                        "marginal_gaussianization='none' (feature_bounds maps a known "
                        "support)."
                    )
                variational_only = [
                    name
                    for name in ("n_features", "mode_starts", "cross_options")
                    if getattr(self, name) is not None
                ]
                if self.log_target is None and variational_only:
                    pronoun = "them" if len(variational_only) > 1 else "it"
                    raise ValueError(
                        f"{', '.join(variational_only)} set for variational inference (the "
                        "dimension, the mode search and the TT-cross of log_target), which a "
                        f"fit to data does not run and would ignore. Set {pronoun} to None, "
                        "or set log_target."
                    )
                if self.log_target is None and self.base == "tempered":
                    raise ValueError(
                        'base="tempered" builds its layers from log_target (variational '
                        'inference), not from data: use base="tt", "gaussian" or "auto", '
                        "or set log_target."
                    )
                if self.log_target is None and self.marginal_gaussianization == "auto":
                    fitted = self._fit_data_choosing_map(X)
                elif self.log_target is None:
                    fitted = self._fit_data(X)
                else:
                    fitted = self._fit_variational(X)
        except BaseException:
            self.__dict__.clear()
            self.__dict__.update(snapshot)
            raise
        self.__dict__.pop("_fit_bounds", None)
        fitted["fit_time_"] = time.perf_counter() - started
        # Attributes of an earlier fit in the other mode must not survive
        # (elbo_ after a refit on data, feature_names_in_ after a VI refit).
        for name in _MODE_ATTRIBUTES - fitted.keys():
            self.__dict__.pop(name, None)
        for name, value in fitted.items():
            setattr(self, name, value)
        return self

    def _is_warm(self, mode: str) -> bool:
        """Whether this fit continues the fitted model (``mode``: the fit's).

        A warm start continues a model of the same mode only: a variational
        model has no standardisation to continue on data, and a model of the
        data has no box for a target; and only with the parameters that
        describe its layers and its TT (:meth:`_check_same_flow_layers`,
        :meth:`_check_same_base`).
        """
        if not (self.warm_start and hasattr(self, "flow_")):
            return False
        fitted_mode = "variational" if hasattr(self, "elbo_") else "data"
        if fitted_mode != mode:
            raise ValueError(
                f"warm_start=True continues the fitted model, which was fitted in "
                f"{fitted_mode} mode, but this fit is in {mode} mode "
                f"({'log_target is set' if mode == 'variational' else 'log_target is None'}). "
                "Set warm_start=False to start over."
            )
        self._check_same_flow_layers()
        self._check_same_base()
        return True

    def _check_same_flow_layers(self) -> None:
        """A warm start continues the fitted flow's layers: refuse one whose
        ``flow``, ``n_flow_layers`` or ``hidden_units`` now describe other
        layers (changed with ``set_params`` after ``fit``), which the fit
        would ignore and ``save`` then refuse. A model without trainable
        layers (``flow="none"``, or too few held-out rows to train one) has
        no flow to continue, and keeps none."""
        fitted = [layer for layer in self.flow_.flows if not isinstance(layer, FIXED_LAYERS)]
        if not fitted:
            return
        fresh = self._flow_layers(self.n_features_in_, tail_bound=1.0, seed=0)

        def shapes(layers) -> list:
            return [
                (type(layer), [tuple(p.shape) for p in layer.parameters()]) for layer in layers
            ]

        if shapes(fitted) != shapes(fresh):
            raise ValueError(
                f"warm_start=True continues the fitted flow ({len(fitted)} layers of "
                f"{type(fitted[0]).__name__}), but flow={self.flow!r}, "
                f"n_flow_layers={self.n_flow_layers} and hidden_units={self.hidden_units} "
                "describe other layers (changed with set_params after fit?): set them back, "
                "or set warm_start=False to start over."
            )

    def _check_same_base(self) -> None:
        """A warm start keeps the fitted base: refuse an integer ``n_basis``
        or ``tt_rank`` that no longer describes the fitted TT (changed with
        ``set_params`` after ``fit``), which the fit would ignore and
        ``save`` then refuse (the rule of
        :func:`~sktt_flow.estimator._persistence.cores_disagree_with_params`).
        ``base`` and the others that choose a base are not checked: a warm
        start keeps the base whatever they say (the few rows of
        ``MIN_CHOICE_ROWS`` give a Gaussian base to ``base="tt"``)."""
        if self.tt_ is None or self.base_ == "tempered":
            return
        shapes = [tuple(core.shape) for core in self.tt_.cores]
        disagreement = cores_disagree_with_params(self, shapes)
        if disagreement is not None:
            raise ValueError(
                "warm_start=True keeps the fitted TT base, which the parameters no longer "
                f"describe: {disagreement} (changed with set_params after fit?). Set them "
                "back, or set warm_start=False to fit a new base."
            )

    def _bounds_map(self, n_features: int) -> FixedBoundsMap | None:
        """``feature_bounds`` as the fixed map onto the bounded features
        (float64, on the CPU), or None without bounds."""
        if self.feature_bounds is None:
            return None
        try:
            # strings too: a model file stores infinities as "inf"
            bounds = np.asarray(self.feature_bounds, dtype=np.float64)
        except (TypeError, ValueError) as error:
            raise ValueError(
                f"feature_bounds must be numbers (-inf and inf for no bound); got "
                f"{self.feature_bounds!r}."
            ) from error
        if bounds.shape == (2,):
            bounds = np.tile(bounds, (n_features, 1))
        if bounds.shape != (n_features, 2):
            raise ValueError(
                f"feature_bounds must have shape ({n_features}, 2) or (2,) for "
                f"{n_features} features, got {bounds.shape}."
            )
        try:
            return FixedBoundsMap(
                torch.from_numpy(bounds[:, 0].copy()), torch.from_numpy(bounds[:, 1].copy())
            )
        except ValueError as error:
            raise ValueError(f"feature_bounds: {error}") from error

    def _generators(self, device: torch.device, seed: int | None = None):
        """The fit's torch generator and two seeds, from ``random_state`` or,
        where given, from ``seed`` instead."""
        rng = check_random_state(self.random_state if seed is None else seed)
        generator = torch_generator(rng, device)
        layer_seed = int(rng.randint(np.iinfo(np.int32).max))
        diagnostic_seed = int(rng.randint(np.iinfo(np.int32).max))
        return generator, layer_seed, diagnostic_seed

    def _flow_layers(
        self, n_features: int, tail_bound: float, seed: int, flow: str | None = None
    ) -> list:
        # normflows initialises its layers from torch's global generator: fork
        # it so that random_state alone decides, and the caller's state is kept.
        # Built-in flows are initialised in float32 whatever torch's default
        # dtype (the layers are cast to the training dtype later): the same
        # seed draws other numbers in float64, and a fit would depend on the
        # caller's setting. Only where the caller changed it: the default is
        # process-wide, and threads fitting at once would see each other's.
        # A callable's layers are the caller's to initialise.
        flow = self.flow if flow is None else flow
        caller_dtype = torch.get_default_dtype()
        pinned = isinstance(flow, str) and caller_dtype != torch.float32
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if pinned:
                torch.set_default_dtype(torch.float32)
            try:
                return build_flow_layers(
                    flow,
                    n_features,
                    n_layers=self.n_flow_layers,
                    hidden_units=self.hidden_units,
                    tail_bound=tail_bound,
                )
            finally:
                if pinned:
                    torch.set_default_dtype(caller_dtype)

    def _stage_options(self) -> dict:
        """The settings every training stage shares (the base's and the flow's)."""
        return {
            "max_iter": self.max_iter,
            "batch_size": self.batch_size,
            "learning_rate": self.learning_rate,
            "n_iter_no_change": self.n_iter_no_change,
        }

    def _data_base_options(self) -> dict:
        """The stage options of a TT base fitted to data: its patience is
        ``DATA_BASE_PATIENCE`` of the flow's, since it is fitted once per
        automatic choice and its held-out score settles sooner."""
        options = self._stage_options()
        options["n_iter_no_change"] = max(1, math.ceil(DATA_BASE_PATIENCE * self.n_iter_no_change))
        return options

    def _trained_parameters(self, model: TensorizingFlow) -> list[torch.nn.Parameter]:
        """The flows' parameters, and with ``train_base`` the bases' (the
        model's and its companion's)."""
        model.requires_grad_(True)  # a warm start's model was frozen by _finalize
        for part in (model, model.companion):
            if part is not None:
                part.q0.requires_grad_(bool(self.train_base))
        return [p for p in model.parameters() if p.requires_grad]

    def _fit_data(
        self,
        X,
        marginal_gaussianization: str | None = None,
        seed: int | None = None,
        score_held_out: bool = False,
    ) -> dict:
        """The fitted attributes of a fit to ``X`` with ``marginal_gaussianization``
        (the parameter's, unless given) and the random state ``seed`` (the
        parameter's, unless given); with ``score_held_out``, also
        ``"_held_out_log_density"``, the fitted model's log-densities of the
        held-out rows as ``score_samples`` gives them (for :meth:`_fit_data_choosing_map`,
        which takes the entry out)."""
        if X is None:
            raise ValueError(
                "fit() needs the training data X in data mode (log_target is None): call "
                "fit(X). To refit a variational model loaded from a file, pass its "
                "log_target back: TensorizingFlowDensity.load(path, log_target=...) or "
                "set_params(log_target=...)."
            )
        warm = self._is_warm("data")
        # C order: torch cannot take an array of negative strides (X[::-1])
        X = validate_data(
            self, X, reset=not warm, dtype=np.float64, order="C", ensure_min_samples=2
        )
        features = X
        device = resolve_device(self.device)
        train_dtype = _DTYPES[self.dtype]
        n_samples, n_features = X.shape
        bounds_map = self._bounds_map(n_features)
        option = marginal_gaussianization or self.marginal_gaussianization
        gaussianized = option != "none"
        if gaussianized and bounds_map is not None:
            raise ValueError(
                "marginal_gaussianization and feature_bounds are two maps of each feature onto "
                "the real line: use one (feature_bounds where the support is known)."
            )
        if gaussianized and not _is_auto(self.domain):
            raise ValueError(
                "marginal_gaussianization needs domain='auto': an explicit domain is a box in "
                "the features, which the map would move."
            )
        fitted_feature_map = None
        if warm:
            # A warm start keeps the fitted model's map onto the features:
            # the same feature_bounds, and the marginal Gaussianization that
            # was fitted (its knots, the first fit's training rows' own).
            fitted_feature_map = _split_standardization(self.flow_)[2]
            fitted_option = getattr(self, "marginal_gaussianization_", "none")
            if option != fitted_option:
                raise ValueError(
                    "warm_start=True continues the fitted model, which was fitted with "
                    f"marginal_gaussianization={fitted_option!r}, but this fit asks for "
                    f"{option!r}: set it back (or to 'auto', which continues what was "
                    "kept), or set warm_start=False to start over."
                )
            _check_same_bounds(
                bounds_map,
                fitted_feature_map if isinstance(fitted_feature_map, FixedBoundsMap) else None,
            )
        # The model is fitted to the features mapped off their bounds (or
        # Gaussianized, below); its log-density gains log |dz/dx| per row (in
        # the scores reported below).
        feature_map = bounds_map
        feature_log_det = np.zeros(n_samples)
        if bounds_map is not None:
            bounded, (X, feature_log_det) = X, _off_bounds(X, bounds_map, "X")
            _check_bounds_resolve_the_data(bounded, bounds_map)
        generator, layer_seed, _ = self._generators(device, seed)
        n_validation = (
            max(1, round(self.validation_fraction * n_samples)) if self.validation_fraction else 0
        )
        if n_samples - n_validation < 2:
            raise ValueError(
                f"validation_fraction={self.validation_fraction} leaves "
                f"{n_samples - n_validation} training sample(s) out of {n_samples}; at least "
                "2 are needed."
            )
        order = torch.randperm(n_samples, generator=generator, device=device).cpu().numpy()
        train_rows, validation_rows = order[n_validation:], order[:n_validation]
        if gaussianized:
            # Fitted to the training rows only: the held-out rows that choose
            # the base, the flow's stopping point and the mixture weights
            # must be new to it as to the rest of the model.
            feature_map = fitted_feature_map
            if not warm:
                feature_map = FixedMarginalNormalMap.from_data(X[train_rows], floor=option)
            mapped, log_det = feature_map.inverse(torch.from_numpy(X))
            X, feature_log_det = mapped.numpy(), log_det.numpy()

        # The standardisation is computed and applied in float64, and only the
        # standardised values meet the training dtype: data far from zero
        # relative to their spread (timestamps, coordinates) would collapse
        # onto a few float32 values otherwise. The model trains in
        # standardised coordinates; the fixed map back to the features is
        # added in float64 when it is finalised.
        if warm:
            model, standardization_layer, _ = _split_standardization(self.flow_)
            model = copy.deepcopy(model).to(device=device, dtype=train_dtype)
            mean = standardization_layer.shift.cpu().numpy()
            scale = standardization_layer.scale.cpu().numpy()
        else:
            mean, scale = standardization(X[train_rows], bulk_quantile=DATA_BOX_QUANTILE)
        standardized64 = standardize(X, mean, scale)
        standardized = torch.tensor(standardized64, dtype=train_dtype, device=device)
        if not bool(torch.isfinite(standardized).all()):
            raise ValueError(
                f"X has values that overflow {self.dtype} once standardised (beyond "
                f"{torch.finfo(train_dtype).max:.3g} standard deviations from the mean of the "
                'training rows); use dtype="float64" or remove the outliers.'
            )
        train = standardized[torch.as_tensor(train_rows, device=device)]
        validation = (
            standardized[torch.as_tensor(validation_rows, device=device)]
            if n_validation
            else train
        )
        # Scores in standardised coordinates, minus this, are log-densities of
        # the original features.
        log_jacobian = float(np.log(scale).sum())

        fitted: dict = {}
        whitening = None
        if warm:
            base_history = None
            if hasattr(self, "preconditioner_"):
                fitted["preconditioner_"] = self.preconditioner_
        else:
            kept, alternative, one_gaussian = self._base_from_data(
                standardized64[train_rows],
                standardized64[validation_rows] if n_validation else None,
                mean,
                scale,
                generator,
                device,
                train_dtype,
                seed=layer_seed,
                bounds_map=bounds_map,
            )
        held_out = validation if n_validation else None

        def to_features() -> list:
            """The fixed layers from standardised coordinates to the features."""
            layers = [
                FixedAffine(
                    torch.as_tensor(mean, dtype=torch.float64, device=device),
                    torch.as_tensor(scale, dtype=torch.float64, device=device),
                )
            ]
            if feature_map is not None:
                layers.append(copy.deepcopy(feature_map).to(device))
            return layers

        companion, companion_weight = None, 0.0
        if warm:
            model, history, whitening = self._train_data_flow(
                model,
                None,
                base_history,
                train,
                validation,
                generator,
                held_out_rows=self._defended_rows(model, held_out),
            )
            defensive_weight, _ = self._held_out_mixture(model, held_out)
            # the companion is kept as it was, with its weight
            if self.flow_.companion is not None:
                companion = copy.deepcopy(self.flow_.companion)
                companion_weight = self.flow_.companion_weight
        else:
            candidates = [kept]
            if alternative is not None and n_validation:
                candidates.append(alternative)
            trained = []
            # The flows on the TT and on the Gaussian miss different held-out
            # rows, so with base="auto" and held-out rows the flow is trained
            # on both and the model is their mixture, with the weight that
            # the held-out rows give it (_companion_of). The TT's model is
            # trained first, so that it is the same as without the companion.
            # too few held-out rows to tell whether a flow helps: none
            flow = "none" if self._too_few_to_choose(held_out) else None
            for candidate in candidates:
                model = self._data_model(
                    candidate, n_features, layer_seed, device, train_dtype, flow
                )
                if trained and not self._trained_parameters(model):
                    break  # no flow: the bases alone were compared already
                # Each flow is trained for its part in the final model, a
                # mixture: it stops, and keeps its state, where the mixture is
                # best on the held-out rows, not where the flow is best alone.
                # The flow on the TT is mixed with its base through the fixed
                # layers (constant while the base is frozen), the flow on the
                # Gaussian with the TT's finished model.
                if trained:
                    held_out_rows = functools.partial(_with_partner, trained[0][0])
                    if one_gaussian is not None:
                        candidate, model = self._probed_companion(
                            candidate,
                            model,
                            one_gaussian,
                            trained[0][0],
                            train,
                            validation,
                            layer_seed,
                            device,
                            train_dtype,
                        )
                else:
                    held_out_rows = self._defended_rows(model, held_out)
                base, whitening, base_history, kind, _ = candidate
                # the flow's start and its held-out scores, kept unless the
                # held-out rows confirm the trained flow (_confirmed_flow); a
                # probe's flow starts from its state, clearly ahead already
                start = [
                    parameter.detach().clone() for parameter in self._trained_parameters(model)
                ]
                start_scores = self._held_out_mixture(model, held_out)[1]
                model, history, whitening = self._train_data_flow(
                    model,
                    whitening,
                    base_history,
                    train,
                    validation,
                    generator,
                    held_out_rows=held_out_rows,
                    confirmed=self._confirms_flows(held_out),
                    retry_slower=_tt_of(base) is not None and not self.train_base,
                )
                weight, scores = self._held_out_mixture(model, held_out)
                if not self._confirmed_flow(
                    model, start, scores, start_scores, trained[0][0] if trained else None
                ):
                    weight, scores = self._held_out_mixture(model, held_out)
                if self.verbose and scores is not None:
                    print(
                        f"model on the {'Gaussian' if trained else 'TT'} base: "
                        f"held-out {float(scores.mean()):.4f} with defensive weight "
                        f"{weight:.3g}"
                    )
                trained.append((scores, model, history, whitening, kind, weight))
            _, model, history, whitening, kind, defensive_weight = trained[0]
            fitted["preconditioner_"] = kind
            if len(trained) == 2:
                companion, companion_weight = self._companion_of(trained, to_features)
        model = TensorizingFlow(
            model.q0,
            [*model.flows, *to_features()],
            defensive_weight=defensive_weight,
            companion=companion,
            companion_weight=companion_weight,
        )
        fitted.update(self._finalize(model, device))
        fitted["marginal_gaussianization_"] = option
        if score_held_out and n_validation:
            fitted["_held_out_log_density"] = self._log_density_in_chunks(
                features[validation_rows], device, fitted
            )
        if REFIT_MIXTURE_TO_ALL_ROWS and n_validation and not warm:
            # After the held-out scores above, which judge the fit as chosen
            # (marginal_gaussianization="auto" compares two fits by them).
            # The companion only: a warm start keeps it as it is, while it
            # trains the model's own flow again, early stopped on held-out
            # rows that a refitted base of its own would have seen.
            new_base = (
                None
                if model.companion is None
                else _refitted_mixture_base(model.companion, features)
            )
            if new_base is not None:
                model.companion.q0 = new_base
                fitted.update(self._finalize(model, device))
        if history is not None:
            # Report the scores as log-densities of the original features.
            train_offset = log_jacobian - float(feature_log_det[train_rows].mean())
            validation_offset = log_jacobian - float(
                feature_log_det[validation_rows if n_validation else train_rows].mean()
            )
            fitted.update(
                loss_curve_=[value + train_offset for value in history.loss_curve],
                validation_scores_=[
                    value - validation_offset for value in history.validation_scores
                ],
                n_iter_=history.n_iter,
            )
        elif warm:
            fitted.update(loss_curve_=[], validation_scores_=[], n_iter_=0)
        if hasattr(self, "feature_names_in_"):  # set by validate_data
            fitted["feature_names_in_"] = self.feature_names_in_
        return fitted

    def _fit_data_choosing_map(self, X) -> dict:
        """``marginal_gaussianization="auto"``: the fit without the map and the
        fit with ``"smooth"``, on the same training and held-out rows (one
        random state for both: ``random_state`` itself when it is an int, so
        that each is the fit with that option), the second kept only where
        its held-out log-likelihood beats the first's by
        ``CONFIRMATION_STANDARD_ERRORS`` standard errors of the paired
        differences, the rule by which the base's candidates are kept. On
        the 36 splits of ``benchmarks/probe_marginal_gaussianization.py``
        it kept the better of the two on 35 (the miss cost 0.15 nats per
        row). A warm start continues what was kept."""
        if X is None or self._is_warm("data"):
            return self._fit_data(X, getattr(self, "marginal_gaussianization_", "none"))
        if not self.validation_fraction:
            raise ValueError(
                "marginal_gaussianization='auto' chooses on the held-out rows: set "
                "validation_fraction > 0, or choose 'none', 'smooth' or 'sharp'."
            )
        seed = self.random_state
        if not isinstance(seed, Integral):
            seed = int(check_random_state(seed).randint(np.iinfo(np.int32).max))
        without = self._fit_data(X, "none", seed, score_held_out=True)
        with_map = self._fit_data(X, "smooth", seed, score_held_out=True)
        plain, mapped = (
            torch.as_tensor(fitted.pop("_held_out_log_density")) for fitted in (without, with_map)
        )
        keep = clearly_better(mapped, plain, CONFIRMATION_STANDARD_ERRORS)
        if self.verbose:
            print(
                f"marginal_gaussianization: held-out {float(plain.mean()):.4f} without the "
                f"map, {float(mapped.mean()):.4f} with 'smooth'; kept "
                f"{'smooth' if keep else 'none'}"
            )
        return with_map if keep else without

    def _data_model(
        self, candidate, n_features, layer_seed, device, dtype, flow=None
    ) -> TensorizingFlow:
        """The untrained flow on a candidate base of :meth:`_base_from_data`
        (with its whitening layer, if any, last), in ``dtype``; ``flow``
        replaces the parameter's (``"none"``: the base alone)."""
        base, whitening, _, _, tail_bound = candidate
        layers = self._flow_layers(n_features, tail_bound, layer_seed, flow)
        if whitening is not None:
            # .to(dtype) below rounds the model's copy in place; the fitted
            # model gets the float64 one back after training.
            layers.append(copy.deepcopy(whitening))
        return TensorizingFlow(base, layers).to(device=device, dtype=dtype)

    def _probed_companion(
        self,
        mixture,
        mixture_model,
        one_gaussian,
        partner_scores,
        train,
        validation,
        layer_seed,
        device,
        dtype,
    ):
        """The companion's base and model: the Gaussian mixture ``mixture``
        (``mixture_model``, its untrained model), or the one Gaussian it was
        chosen over, ``one_gaussian``, where a flow on that Gaussian becomes
        clearly better than the mixture's untrained model within
        :data:`COMPANION_PROBE_MAX_PASSES` passes; then the probe's model,
        whose training the companion's continues. Both are judged as the
        companion is, by their mixtures with the TT's model on the held-out
        rows (``partner_scores``: its log-densities there).

        Why: a mixture is the better base, not always the better base for a
        flow. On a 5-D log-normal (``bench_density.py --out-of-suite``) the
        search kept 32 full Gaussians (held-out -1.47 per row against -6.25
        for the one Gaussian); the flow on them gained 0.03 nats and was not
        confirmed, while a flow on the one Gaussian reached -0.83, and the
        same flow on a Gaussian base was ahead of the defaults by 0.2 nats
        per test row. The probe stops early (:func:`_probe_stop`) where it is
        not on course to overtake the mixture: on the toys of the benchmark,
        whose companions are mixtures the TT's model outweighs, after
        :data:`COMPANION_PROBE_MIN_PASSES` passes. It draws from its own
        generator, so that where the mixture is kept the fit is the one
        without the probe. Not with ``train_base``, nor with fewer than
        :data:`MIN_FLOW_CONFIRMATION_ROWS` held-out rows (on breast cancer's
        40, the one Gaussian's companion lost 1.1 nats per test row).
        """
        if not self._confirms_flows(validation):
            return mixture, mixture_model
        probe = self._data_model(one_gaussian, validation.shape[1], layer_seed, device, dtype)
        parameters = self._trained_parameters(probe)
        if not parameters:
            return mixture, mixture_model

        def mixed(log_density: torch.Tensor) -> torch.Tensor:
            return _with_partner(partner_scores, log_density.double())

        with torch.no_grad():
            target = mixed(mixture_model.log_prob(validation))
        latest: list[torch.Tensor] = []

        def held_out_score(log_density: torch.Tensor) -> float:
            latest[:] = [mixed(log_density)]
            return float(latest[0].mean())

        def stop(scores: list[float]) -> bool:
            return clearly_better(latest[0], target, CONFIRMATION_STANDARD_ERRORS) or _probe_stop(
                scores, float(target.mean()), COMPANION_PROBE_MAX_PASSES
            )

        options = self._stage_options()
        options["max_iter"] = min(options["max_iter"], COMPANION_PROBE_MAX_PASSES)
        # A patience of as many units of ten steps as passes (fit_forward_kl):
        # on a few thousand rows it never ends the probe first; on the 45,000
        # of the large-sample moons (176 steps a pass) two flat passes do.
        options["n_iter_no_change"] = options["max_iter"]
        history = fit_forward_kl(
            probe,
            train,
            validation,
            parameters=parameters,
            **options,
            generator=torch_generator(layer_seed + 1, device),
            held_out_score=held_out_score,
            stop=stop,
            verbose=self.verbose,
        )
        with torch.no_grad():  # the best state's, which training restored
            probe_scores = mixed(probe.log_prob(validation))
        chosen = clearly_better(probe_scores, target, CONFIRMATION_STANDARD_ERRORS)
        if self.verbose:
            print(
                f"companion: the flow on one Gaussian after {history.n_iter} passes "
                f"{float(probe_scores.mean()):.4f} with the TT's model, the Gaussian mixture "
                f"untrained {float(target.mean()):.4f}: "
                f"{'the one Gaussian' if chosen else 'the mixture'} kept"
            )
        if not chosen:
            return mixture, mixture_model
        return one_gaussian, probe

    def _train_data_flow(
        self,
        model,
        whitening,
        base_history,
        train,
        validation,
        generator,
        held_out_rows=None,
        confirmed=False,
        retry_slower=False,
    ):
        """Maximum-likelihood training of a data model's trainable parameters;
        the model (its whitening layer, rounded to the training dtype, put
        back in float64), its history (the base's when nothing is trained)
        and the whitening layer.

        ``held_out_rows`` maps the model's log-density of each held-out row
        to the per-row scores that judge it (None: the log-densities
        themselves); a pass scores their mean. With ``confirmed`` (the
        trained flow is kept only where the held-out rows confirm it,
        :meth:`_confirmed_flow`), training also stops once a patience has
        gone by without a pass clearly ahead of the start
        (:class:`~sktt_flow.training.ClearGainWatch`): on the toys of the
        density benchmark no flow that trained on was kept in the end. With
        ``retry_slower`` (the flow on a frozen TT base), a training that
        keeps the start is run again from it at
        :data:`FLOW_RETRY_LEARNING_RATE_FACTOR` times the learning rate, and
        the history is the second run's."""
        parameters = self._trained_parameters(model)
        history = base_history
        if parameters:
            options = self._stage_options()
            horizon = None
            if confirmed:
                horizon = passes_of_patience(
                    options["n_iter_no_change"], train.shape[0], options["batch_size"]
                )

            def train_flow():
                watch = None
                if held_out_rows is not None:
                    watch = ClearGainWatch(held_out_rows, horizon, CONFIRMATION_STANDARD_ERRORS)
                return fit_forward_kl(
                    model,
                    train,
                    validation,
                    parameters=parameters,
                    **options,
                    generator=generator,
                    held_out_score=None if watch is None else watch.score,
                    stop=None if watch is None else watch.stop,
                    verbose=self.verbose,
                )

            history = train_flow()
            if retry_slower and history.n_iter > 0 and history.best_epoch == 0:
                options["learning_rate"] *= FLOW_RETRY_LEARNING_RATE_FACTOR
                if self.verbose:
                    print(
                        "flow on the TT: no pass beat its start; trained again at learning "
                        f"rate {options['learning_rate']:g}"
                    )
                history = train_flow()
        if whitening is not None:
            model.flows[-1] = whitening
        return model, history, whitening

    @staticmethod
    def _companion_of(trained: list, to_features) -> tuple[TensorizingFlow | None, float]:
        """The model on the Gaussian as the companion of the model on the TT,
        and its weight, fitted on the held-out rows.

        ``trained`` holds, for the TT's model and then the Gaussian's, the
        held-out log-densities of the model, the model in standardised
        coordinates, its history, whitening layer, coordinates and defensive
        weight; ``to_features`` makes the fixed maps back to the features. The
        weight maximises the held-out likelihood of the mixture of the two
        models within ``[MIN_COMPANION_WEIGHT, MAX_COMPANION_WEIGHT]``: on the
        real tables of the density benchmark the two flows missed different
        test rows, and their mixture scored 0.07 to 1.2 nats per row above
        the better of them at the best weight (0.05 to 0.76). No companion
        when the lower end is best.
        """
        (tt_scores, *_), (gaussian_scores, model, *_, defensive_weight) = trained
        weight = fit_defensive_weight(
            tt_scores,
            gaussian_scores,
            min_weight=MIN_COMPANION_WEIGHT,
            max_weight=MAX_COMPANION_WEIGHT,
        )
        if weight <= MIN_COMPANION_WEIGHT:
            return None, 0.0
        companion = TensorizingFlow(
            model.q0, [*model.flows, *to_features()], defensive_weight=defensive_weight
        )
        return companion, weight

    def _confirmed_flow(
        self,
        model: TensorizingFlow,
        start: list[torch.Tensor],
        scores: torch.Tensor | None,
        start_scores: torch.Tensor | None,
        partner_scores: torch.Tensor | None,
    ) -> bool:
        """Whether a data model's trained flow is kept; if not, its trainable
        parameters go back to ``start``, their values before training (the
        identity map for the flows of :func:`~sktt_flow.flows.build_flow_layers`:
        the model is its base through the fixed layers).

        With at least :data:`MIN_FLOW_CONFIRMATION_ROWS` held-out rows (and a
        frozen base), the flow is kept where the held-out rows confirm it:
        the model's log-densities there, ``scores`` (its mixture with its base
        at the fitted defensive weight, :meth:`_held_out_mixture`), beat those
        of the start, ``start_scores``, by ``CONFIRMATION_STANDARD_ERRORS``
        standard errors of the paired differences; for the companion's flow
        (``partner_scores``: the TT model's held-out log-densities), the two
        models' mixture at its fitted weight, with the trained flow and with
        the start. The rows that chose the kept epoch judge it, which favours
        the flow; the margin is the variational fit's confirmation
        (:func:`~sktt_flow.training.fit_reverse_kl`).
        """
        if not start or scores is None or not self._confirms_flows(scores):
            return True
        trained, untrained = scores, start_scores
        if partner_scores is not None:
            trained, untrained = (
                _with_partner(partner_scores, log_density) for log_density in (trained, untrained)
            )
        if clearly_better(trained, untrained, CONFIRMATION_STANDARD_ERRORS):
            return True
        with torch.no_grad():
            for parameter, value in zip(self._trained_parameters(model), start, strict=True):
                parameter.copy_(value)
        if self.verbose:
            print(
                f"flow on the {type(model.q0).__name__}: held-out {float(trained.mean()):.4f} "
                f"against {float(untrained.mean()):.4f} at its start, not clearly better: "
                "the start kept"
            )
        return False

    def _defended_rows(self, model: TensorizingFlow, held_out: torch.Tensor | None):
        """What judges a data model's flow in training (``held_out_rows`` of
        :meth:`_train_data_flow`): the held-out log-densities of the model
        mixed with its base through the fixed layers at the best defensive
        weight (:func:`~sktt_flow.training.fit_mixture`), the mixture that
        :meth:`_held_out_mixture` makes after training. None (the flow's
        log-densities) without held-out rows or with ``train_base``, where
        the base, and so that component, moves."""
        if held_out is None or self.train_base:
            return None
        with torch.no_grad():
            _, log_fixed = model.component_log_probs(held_out)

        def mixed(log_flow: torch.Tensor) -> torch.Tensor:
            return _with_base(log_flow, log_fixed)[1]

        return mixed

    def _too_few_to_choose(self, held_out) -> bool:
        """Whether a data fit with ``base="auto"`` has held-out rows, but
        fewer than :data:`MIN_CHOICE_ROWS`: its model is then one Gaussian,
        with no flow."""
        return self.base == "auto" and held_out is not None and held_out.shape[0] < MIN_CHOICE_ROWS

    def _confirms_flows(self, held_out: torch.Tensor | None) -> bool:
        """Whether a data model's trained flows are kept only where the
        held-out rows confirm them (:meth:`_confirmed_flow`): with at least
        :data:`MIN_FLOW_CONFIRMATION_ROWS` of them and a frozen base."""
        return (
            held_out is not None
            and held_out.shape[0] >= MIN_FLOW_CONFIRMATION_ROWS
            and not self.train_base
        )

    @staticmethod
    def _held_out_mixture(model: TensorizingFlow, held_out: torch.Tensor | None):
        """The weight of a trained data model's defensive component and the
        mixture's log-densities of the held-out rows (None without them).

        The weight maximises the held-out likelihood of the mixture of the
        flow and its base through the fixed layers, within
        ``[DATA_DEFENSIVE_WEIGHT, MAX_DATA_DEFENSIVE_WEIGHT]``: a flow
        trained on a few hundred or thousand rows fits them more closely
        than their density, and its base, smoother, takes the held-out rows
        it misses (the test log-likelihood of the real datasets of the
        benchmark rose by 0.1-0.8 nats per row at weights of 0.1-0.3). The
        same rows stopped the flow's training, which favours the flow: the
        weight fitted on them errs towards the flow. Without held-out rows
        the weight is ``DATA_DEFENSIVE_WEIGHT``.
        """
        if held_out is None:
            return DATA_DEFENSIVE_WEIGHT, None
        with torch.no_grad():
            return _with_base(*model.component_log_probs(held_out))

    def _data_tt_settings(self, held_out: bool) -> dict:
        """``tt_rank``, ``n_basis`` and ``smoothness`` of a TT base fitted to
        data: the ``"auto"`` ones are chosen by the fit on the held-out rows,
        or take fixed values when there are none."""
        settings = {
            "tt_rank": self.tt_rank,
            "n_basis": self.n_basis,
            "smoothness": self.smoothness,
        }
        if not held_out:
            fixed = {"tt_rank": VARIATIONAL_TT_RANK, "n_basis": DATA_N_BASIS, "smoothness": 0.0}
            settings = {
                name: fixed[name] if value == "auto" else value for name, value in settings.items()
            }
        return settings

    def _base_from_data(
        self, train, validation, mean, scale, generator, device, dtype, *, seed, bounds_map=None
    ):
        """The base in standardised coordinates, chosen on held-out rows.

        ``train`` and ``validation`` (float64 arrays, ``validation`` None
        without a held-out split) are standardised rows; ``mean`` and
        ``scale`` are the standardisation, which maps a ``domain`` given in
        the original units into those coordinates (after ``bounds_map``, the
        map off ``feature_bounds``, when there is one). Candidate
        coordinates: the standardised ones (``"diagonal"``) and, with
        ``preconditioner`` "auto" or "full", whitened ones (``z = L w``, a
        fixed layer with an exact log-determinant) for each covariance of
        :data:`WHITENING_COVARIANCES` (with held-out rows; the Ledoit–Wolf one
        otherwise) whose Gaussian is clearly ahead of the standard one (with
        "auto"). With ``base="auto"`` a standard Gaussian in each (in
        whitened coordinates, the full-covariance Gaussian) and the TT in
        the one whose optimisation-free start scores best on the held-out
        rows (each replacing the one before only where clearly better). The
        first candidate is kept unless another beats it by
        ``CONFIRMATION_STANDARD_ERRORS`` paired standard errors on the
        validation rows (the training rows when there are none).

        Returns ``(base, whitening layer or None, base training history or
        None, preconditioner kind, tail bound of spline flows in the base's
        coordinates)`` for the kept candidate, and the same for the best
        Gaussian candidate when a TT is kept (None otherwise), a Gaussian
        mixture where the held-out rows prefer one
        (:meth:`_gaussian_mixture_candidate`, its EM seeded by ``seed``):
        the flow may do more on it (:meth:`_fit_data`); third, the same for
        the one Gaussian where the second is such a mixture (None
        otherwise), for :meth:`_probed_companion`. A kept Gaussian
        (``base="auto"``) is such a mixture where the held-out rows prefer one.
        """
        n_features = train.shape[1]
        domain = None
        if not _is_auto(self.domain):
            low, high = check_domain(self.domain, n_features)
            if bounds_map is not None:
                low, high = _box_off_bounds(low, high, bounds_map)
            domain = np.stack([(low - mean) / scale, (high - mean) / scale], axis=1)
            # The base lives in the standardised features, in the training dtype.
            check_domain_resolution(
                domain[:, 0],
                domain[:, 1],
                dtype,
                name="domain (in the standardised features)",
                remedy="give a box as wide as the data's spread",
            )
            inside = (train >= domain[:, 0]) & (train <= domain[:, 1])
            if not inside.all(axis=1).any():
                # A train fitted to no rows is zero: say which feature misses them.
                missed = np.flatnonzero(~inside.any(axis=0))
                where = (
                    f"in feature(s) {missed[:10].tolist()}"
                    if missed.size
                    else "in all features at once"
                )
                raise ValueError(
                    f"domain holds none of the training rows ({where}): in data mode it is "
                    "the box of the TT base, in the features' units, and must hold the "
                    "data's mass. Give a box around the data, or domain=None to take it from "
                    "the data's quantiles."
                )
            if self.preconditioner == "full":
                raise ValueError(
                    'preconditioner="full" cannot be used with a domain in data mode: the '
                    "domain is a box in the features, which whitening would rotate."
                )
        # The candidate coordinates: the standardised ones ("diagonal") and
        # the whitened ones of each covariance (its name), in that order.
        few = self._too_few_to_choose(validation)
        kinds = ["diagonal"]
        if domain is None and n_features > 1 and self.preconditioner in ("auto", "full"):
            kinds = [] if self.preconditioner == "full" or few else ["diagonal"]
            # Without held-out rows the training rows would always prefer the
            # empirical covariance, their maximum-likelihood one.
            kinds += (
                list(WHITENING_COVARIANCES)
                if validation is not None and not few
                else ["ledoit-wolf"]
            )
        bases = ("tt", "gaussian") if self.base == "auto" else (self.base,)
        if few:
            bases = ("gaussian",)  # MIN_CHOICE_ROWS
        scored = validation if validation is not None else train
        whitened = {kind: _whitening(train, scored, kind) for kind in kinds if kind != "diagonal"}
        kinds = [kind for kind in kinds if kind == "diagonal" or whitened[kind] is not None]
        if not kinds:  # preconditioner="full" with a singular covariance
            kinds = ["diagonal"]
        if self.preconditioner == "auto" and len(kinds) > 1 and not few:
            # A TT fit in whitened coordinates is worth it only where the
            # correlations matter: where the full-covariance Gaussian beats
            # the standard one on the held-out rows (breast cancer by about 9
            # nats per row; a ring of modes not at all).
            ones = torch.ones(n_features, dtype=torch.float64)
            standard_normal = GaussianBase(torch.zeros_like(ones), ones)
            standard = standard_normal.log_prob(torch.as_tensor(scored))
            kinds = [
                kind
                for kind in kinds
                if kind == "diagonal"
                or clearly_better(
                    standard_normal.log_prob(torch.as_tensor(whitened[kind][1][1]))
                    - whitened[kind][2],
                    standard,
                    CONFIRMATION_STANDARD_ERRORS,
                )
            ]

        def float64_rows(kind):
            """The training and scored rows in the coordinates ``kind``."""
            return (train, scored) if kind == "diagonal" else whitened[kind][1]

        def in_coordinates(kind):
            whitening, log_det = None, 0.0
            if kind != "diagonal":
                whitening, _, log_det = whitened[kind]
            fit_rows, score_rows = (
                torch.as_tensor(rows, dtype=dtype, device=device) for rows in float64_rows(kind)
            )
            return whitening, fit_rows, score_rows, log_det

        tt_kinds = kinds
        if len(kinds) > 1 and "tt" in bases and validation is not None:
            # The TT is fitted in one of the coordinates only, the one whose
            # optimisation-free starts (the same search over rank and
            # resolution, no training) score better on the held-out rows:
            # a fit, with its automatic choices, costs seconds to minutes,
            # a start milliseconds. Each coordinate system replaces the one
            # kept so far (the standardised first) only where clearly better.
            starts = {}
            for kind in kinds:
                _, fit_rows, score_rows, log_det = in_coordinates(kind)
                start = TTDistribution.from_samples(
                    fit_rows,
                    **{**self._data_tt_settings(held_out=True), "smoothness": 0.0},
                    box_quantile=DATA_BOX_QUANTILE,
                    max_iter=0,
                    validation=score_rows,
                    validation_fraction=0.0,
                    random_state=generator,
                    device=device,
                    dtype=dtype,
                )
                with torch.no_grad():
                    starts[kind] = start.log_prob(score_rows).double() - log_det
                if self.verbose:
                    print(
                        f"TT start in {kind!r} coordinates: held-out "
                        f"{float(starts[kind].mean()):.4f}"
                    )
            kept = kinds[0]
            for kind in kinds[1:]:
                if clearly_better(starts[kind], starts[kept], CONFIRMATION_STANDARD_ERRORS):
                    kept = kind
            tt_kinds = [kept]
        best = best_gaussian = None
        for kind in kinds:
            whitening, fit_rows, score_rows, log_det = in_coordinates(kind)
            for name in bases:
                if name == "tt" and kind not in tt_kinds:
                    continue
                if name == "gaussian":
                    ones = torch.ones(n_features, dtype=dtype, device=device)
                    base, history = GaussianBase(torch.zeros_like(ones), ones), None
                else:
                    base = TTDistribution.from_samples(
                        fit_rows,
                        **self._data_tt_settings(held_out=validation is not None),
                        domain=domain,
                        box_quantile=DATA_BOX_QUANTILE if domain is None else 0.0,
                        **self._data_base_options(),
                        validation=score_rows if validation is not None else None,
                        validation_fraction=0.0,
                        random_state=generator,
                        device=device,
                        dtype=dtype,
                        verbose=self.verbose,
                    )
                    history = base.training_history
                scores = self._held_out_scores(
                    base, score_rows, log_det, f"data base {name!r} in {kind!r} coordinates"
                )
                # The first candidate (the TT, or the asked base, in the
                # standardised coordinates) is kept unless another beats it
                # on the same held-out rows by CONFIRMATION_STANDARD_ERRORS
                # standard errors of the paired differences: with a few dozen
                # rows, and the TT's early stopping on the same rows, smaller
                # gains are noise (seen on wine, 12 held-out rows: whitening
                # ahead by 0.5-0.8 nats there and behind by 0.1-0.8 on test).
                candidate = (
                    scores,
                    base,
                    whitening,
                    history,
                    kind,
                    spline_tail_bound(base, fit_rows),
                )
                if best is None or clearly_better(scores, best[0], CONFIRMATION_STANDARD_ERRORS):
                    best = candidate
                # Likewise the Gaussians, in the order of the coordinates: on
                # diabetes (31 held-out rows) the empirical covariance's was
                # ahead of the Ledoit–Wolf one's by 0.14 nats there, and the
                # companion's mixture in its coordinates 0.43 nats per test
                # row behind.
                if name == "gaussian" and (
                    best_gaussian is None
                    or clearly_better(scores, best_gaussian[0], CONFIRMATION_STANDARD_ERRORS)
                ):
                    best_gaussian = candidate

        def placed(candidate):
            _, base, whitening, history, kind, tail_bound = candidate
            if whitening is not None:
                whitening = whitening.to(device=device)
            preconditioner = "diagonal" if kind == "diagonal" else "full"
            return base, whitening, history, preconditioner, tail_bound

        def with_mixture(gaussian):
            """:meth:`_gaussian_mixture_candidate` of a Gaussian candidate, in
            its coordinates (where there are held-out rows to choose it)."""
            if validation is None or few:
                return gaussian
            kind = gaussian[4]
            _, _, score_rows, log_det = in_coordinates(kind)
            standardised = None
            if kind != "diagonal":
                # The mixtures also in the standardised coordinates, the
                # features' own axes, where whitening is kept (see
                # _gaussian_mixture_candidate).
                _, fit_rows, diagonal_score_rows, _ = in_coordinates("diagonal")
                standardised = (
                    float64_rows("diagonal")[0],
                    diagonal_score_rows,
                    spline_tail_bound(None, fit_rows),
                )
            return self._gaussian_mixture_candidate(
                gaussian,
                float64_rows(kind)[0],
                score_rows,
                log_det,
                seed,
                device,
                dtype,
                standardised=standardised,
            )

        # The flow on the Gaussian is trained even where the TT is clearly
        # the better base: on diabetes (split 1) the TT base was ahead on the
        # held-out rows by more than two standard errors and its flow's model
        # behind the Gaussian's by 0.6 nats per test row; the comparison of
        # the bases does not tell what the flow will do.
        alternative = one_gaussian = None
        if best_gaussian is not None and not isinstance(best[1], GaussianBase):
            # Without a flow there is no companion to train (the kept base is
            # the model), and no mixture search for it.
            if self.flow != "none":
                companion_base = with_mixture(best_gaussian)
                alternative = placed(companion_base)
                if companion_base is not best_gaussian:
                    one_gaussian = placed(best_gaussian)
        elif self.base == "auto":
            # Where a Gaussian beats the TT (base="auto"), it is the model's
            # base, and it is a mixture where the held-out rows prefer one,
            # as the companion's would be: on 10,000 rows of a correlated
            # Student t the flow on one Gaussian scored 0.5 nats per test row
            # below the model with a companion on 64 tied Gaussians.
            best = with_mixture(best_gaussian)
        return placed(best), alternative, one_gaussian

    def _held_out_scores(self, base, score_rows, log_det: float, description: str):
        """A candidate base's float64 log-densities of the scored rows in the
        standardised coordinates (``log_det``: the whitening's, or 0), shown
        with ``description`` when verbose."""
        with torch.no_grad():
            scores = base.log_prob(score_rows).double() - log_det
        if self.verbose:
            print(f"{description}: held-out {float(scores.mean()):.4f}")
        return scores

    def _gaussian_mixture_candidate(
        self, gaussian, fit_rows, score_rows, log_det, seed, device, dtype, *, standardised=None
    ):
        """The companion's base (or the model's, where a Gaussian beats the
        TT): the standard Gaussian candidate ``gaussian``
        or, where the held-out rows clearly prefer one, a Gaussian mixture in
        the same coordinates (``fit_rows``: the float64 training rows there;
        ``score_rows`` and ``log_det`` as in :meth:`_held_out_scores`).

        Mixtures of 2, 4, 8, ... components up to
        :data:`MAX_COMPANION_COMPONENTS`, each number with the four covariance
        types of :class:`sklearn.mixture.GaussianMixture` (fitted by EM to the
        training rows in ``gaussian``'s coordinates, to
        :data:`COMPANION_EM_TOL`; the best type on the held-out rows speaks for
        its number). The best of the numbers up to where the held-out score
        stops rising is kept, unless a larger number (the search goes on to
        the end, without the full covariances) beats it by
        ``CONFIRMATION_STANDARD_ERRORS`` paired standard errors; the kept
        one's EM goes on to :data:`COMPANION_EM_FINAL_TOL`,
        and the mixture is kept if it beats the standard Gaussian by as many.
        Why the search goes on: the held-out score need not rise steadily. On
        10,000 rows of a correlated Student t (``student30`` of
        ``benchmarks/bench_fit_time.py``) the full covariances peaked at 8
        components and the search stopped at 16, while the tied ones, flat up
        to 16, gained 0.6 nats per row from 16 to 64 (0.26 above the full ones
        at 8): the model scored 0.25 to 0.29
        nats per test row below a tuned ``GaussianMixture`` (64 tied
        components), and 0.07 to 0.12 above it with the larger mixture. Why
        only where clearly better: on the digits (126 held-out rows) the best
        of the whole grid cost up to 0.35 nats per test row. Why mixtures at
        all: a tuned ``GaussianMixture`` was ahead of
        the tensorizing flow on the toys that are Gaussian mixtures (eight
        Gaussians, the 8-D mixture; by 0.01-0.02 nats per row, a gap no rank
        of the TT closed), and the flow on one Gaussian misses the clusters of
        real tables (digits) that a mixture holds: the companion on a mixture
        gained 0.4-1.5 nats per test row on digits, breast cancer and
        diabetes. The EM starts (k-means) are seeded by ``seed`` and do not
        draw from the fit's generator.

        Where ``gaussian`` is in whitened coordinates, ``standardised`` holds
        the training rows, the scored rows and the spline tail bound in the
        standardised ones, and each round also fits the four types there;
        the best of them replaces the round's best in the whitened
        coordinates only where clearly better (``CONFIRMATION_STANDARD_ERRORS``
        paired standard errors), and the kept candidate carries its
        coordinates. Taking the better mean instead cost 0.29 and 0.08 nats
        per test row on a split of diabetes (31 held-out rows) and of wine
        (12), where the rule keeps the whitened candidates; so did taking,
        of the two full (or tied) fits, the one EM took higher on the
        training rows (0.18 and 0.22 on two diabetes splits, 0.08 on wine:
        on a few hundred rows the higher optimum is the more overfitted
        one). The diagonal and
        spherical covariances depend on the coordinates: on Gaussian clusters
        of different spreads along the features' axes (make_blobs, 2,000 x
        20, spreads 0.1 to 10) the diagonal mixture of 4 scored -0.7 to 2.4
        nats per test row in the Ledoit–Wolf whitened coordinates and 0.7 to
        3.6 in the standardised ones, and the fitted model was 0.25 to 1.06
        nats per test row behind a tuned ``GaussianMixture`` (0.04 with
        them; ``spread_blobs20`` of ``benchmarks/bench_density.py``). The
        full and tied ones do not, but EM's k-means start does: whitening
        stretches the directions of little variance (noise around a subspace)
        to the others' scale, and k-means there misses the clusters. On four
        clusters near a 4-D subspace of 10 features (``make_classification``
        with 2 informative and 6 redundant features, plus noise of 0.05) the
        4 full covariances scored 0.90 nats per held-out row in the empirical
        whitened coordinates and 1.21 in the standardised ones, and the model
        was 0.24 to 0.44 nats per test row behind a tuned
        ``GaussianMixture`` on three seeds of four, 0.01 to 0.03 with them;
        on breast cancer (30 correlated features) the model gained 1.9 to
        2.8 nats per test row on the benchmark's three splits. The cost: on
        ``tanh30`` of ``benchmarks/bench_fit_time.py`` (10,000 rows of 30
        features, whitened) the search took 35.7 s against 22.2 s with the
        diagonal and spherical types alone there (side by side; the fit 120
        s against 107 s), for the same model.
        """
        scores, _, whitening, _, kind, tail_bound = gaussian
        # The coordinate systems searched: (kind, whitening, float64 training
        # rows, scored rows, log-determinant, spline tail bound).
        systems = [(kind, whitening, fit_rows, score_rows, log_det, tail_bound)]
        if standardised is not None:
            systems.append(("diagonal", None, *standardised[:2], 0.0, standardised[2]))

        def fitted(mixture: GaussianMixture, system, description: str):
            """``mixture`` fitted by EM to the training rows of ``system`` as a
            base with its held-out scores, or None where a component
            collapsed."""
            _, _, system_fit_rows, system_score_rows, system_log_det, _ = system
            with warnings.catch_warnings():
                # an EM that stops before convergence is still a candidate, judged
                # on the held-out rows like the others
                warnings.simplefilter("ignore", ConvergenceWarning)
                try:
                    base = _gaussian_mixture_base(mixture.fit(system_fit_rows))
                except (ValueError, np.linalg.LinAlgError):
                    # a component collapsed onto too few rows: no candidate
                    return None
            base = base.to(device=device, dtype=dtype)
            scores = self._held_out_scores(base, system_score_rows, system_log_det, description)
            return scores, base

        best = (scores, None, None, systems[0])
        # The best candidate of the rounds after the held-out score stopped
        # rising (None before): kept only where clearly better (below). Those
        # rounds skip the full covariances, d (d + 1) / 2 numbers per
        # component (d for the others), whose score is what stopped rising
        # where it stops (and whose fits are most of a round's time: 7 of 15 s
        # at 64 components of 10,000 rows of 30 features).
        later = None
        n_components = 2
        while n_components <= min(MAX_COMPANION_COMPONENTS, len(fit_rows) // 2):
            round_best = None
            for system in systems:
                system_best = None
                for covariance_type in COMPANION_COVARIANCE_TYPES:
                    if later is not None and covariance_type == "full":
                        continue
                    mixture = GaussianMixture(
                        n_components,
                        covariance_type=covariance_type,
                        tol=COMPANION_EM_TOL,
                        random_state=seed,
                    )
                    candidate = fitted(
                        mixture,
                        system,
                        f"Gaussian mixture: {n_components} Gaussians ({covariance_type}) in "
                        f"{system[0]!r} coordinates",
                    )
                    if candidate is not None and (
                        system_best is None or candidate[0].mean() > system_best[0].mean()
                    ):
                        system_best = (*candidate, mixture, system)
                if system_best is not None and (
                    round_best is None
                    or clearly_better(system_best[0], round_best[0], CONFIRMATION_STANDARD_ERRORS)
                ):
                    round_best = system_best
            if round_best is None:
                break  # every type collapsed: more components collapse too
            if later is None and (best[1] is None or round_best[0].mean() > best[0].mean()):
                best = round_best
            elif later is None or round_best[0].mean() > later[0].mean():
                later = round_best
            n_components *= 2
        if later is not None and clearly_better(later[0], best[0], CONFIRMATION_STANDARD_ERRORS):
            best = later
        best_scores, best_base, best_mixture, best_system = best
        if best_base is not None:
            # The kept mixture's EM goes on from where the search stopped it
            # (warm_start: the same iterations as one run) to scikit-learn's
            # default threshold, whatever its held-out score: a second choice
            # between the two on the held-out rows would be one more
            # selection on noise (on 126 rows of digits it kept the stopped
            # one, 0.05 nats ahead there and 0.06 behind on the test rows).
            # Its iterations count against EM's max_iter, as in one run.
            remaining = best_mixture.max_iter - best_mixture.n_iter_
            converged = (
                fitted(
                    best_mixture.set_params(
                        tol=COMPANION_EM_FINAL_TOL, max_iter=remaining, warm_start=True
                    ),
                    best_system,
                    "Gaussian mixture: the same, EM continued",
                )
                if remaining > 0
                else None
            )
            if converged is not None:
                best_scores, best_base = converged
            narrow = fitted(
                clone(best_mixture).set_params(
                    reg_covar=COMPANION_NARROW_REG_COVAR,
                    tol=COMPANION_EM_FINAL_TOL,
                    max_iter=GaussianMixture().max_iter,
                    warm_start=False,
                    weights_init=best_mixture.weights_,
                    means_init=best_mixture.means_,
                    precisions_init=best_mixture.precisions_,
                ),
                best_system,
                "Gaussian mixture: the same, refitted with reg_covar "
                f"{COMPANION_NARROW_REG_COVAR:g}",
            )
            if narrow is not None and clearly_better(
                narrow[0], best_scores, CONFIRMATION_STANDARD_ERRORS
            ):
                best_scores, best_base = narrow
        if best_base is None or not clearly_better(
            best_scores, scores, CONFIRMATION_STANDARD_ERRORS
        ):
            return gaussian
        best_kind, best_whitening, *_, best_tail_bound = best_system
        return (best_scores, best_base, best_whitening, None, best_kind, best_tail_bound)

    def _fit_variational(self, X) -> dict:
        if X is not None:
            raise ValueError(
                "X must be None when log_target is set: variational inference fits "
                "the model to log_target, not to data. Call fit() without X."
            )
        if not callable(self.log_target):
            raise TypeError(f"log_target must be callable, got {type(self.log_target).__name__}.")
        train_dtype = _DTYPES[self.dtype]
        automatic = _is_auto(self.domain)
        if automatic:
            n_features = self._automatic_n_features()
        else:
            if self.n_features is None and _is_single_pair(self.domain):
                raise ValueError(
                    "A single (low, high) domain needs n_features to give the dimension."
                )
            low, high = check_domain(self.domain, self.n_features)
            n_features = low.shape[0]
            # in the target's coordinates, for the check of the draws at the end
            domain_box = (low, high)
        # With feature_bounds the fit works in the coordinates off the bounds
        # (_fit_log_target); the map onto them ends the model.
        bounds_map = self._fit_bounds = self._bounds_map(n_features)
        if bounds_map is not None and self.symmetry is not None:
            raise ValueError(
                "symmetry and feature_bounds cannot be combined: the group acts on the "
                "target's coordinates, not on those off the bounds. Set one of them to None."
            )
        if not automatic:
            if bounds_map is not None:
                low, high = _box_off_bounds(low, high, bounds_map)
            check_domain_resolution(low, high, train_dtype)
            if self.preconditioner not in ("auto", "none"):
                raise ValueError(
                    f"preconditioner={self.preconditioner!r} needs domain='auto': an explicit "
                    "domain is a box in the coordinates of log_target, which a "
                    "preconditioner would change."
                )
        warm = self._is_warm("variational")
        if warm and n_features != self.n_features_in_:
            raise ValueError(
                f"warm_start: the domain has {n_features} features but the fitted model "
                f"has {self.n_features_in_}."
            )
        device = resolve_device(self.device)
        generator, layer_seed, diagnostic_seed = self._generators(device)
        counter = SimpleNamespace(n_calls=0, n_evaluations=0)
        evaluate = self._log_target_evaluator(n_features, train_dtype, device, counter)
        symmetry = self._symmetry(n_features, counter, device)
        if symmetry is not None and self.base in ("gaussian", "tempered"):
            raise ValueError(
                f'symmetry symmetrises the TT base, and base="{self.base}" has none: use '
                'base="tt" or "auto", or symmetry=None.'
            )
        if self.base == "tempered" and self.mass_covering_iter > 0:
            raise ValueError(
                "mass_covering_iter needs a base whose log-density is differentiable in its "
                'points, and base="tempered" computes its layers\' without gradient: use '
                'base="tt" or "auto" with mass_covering_iter, or set mass_covering_iter=0.'
            )
        if self.base == "tempered" and self.train_base:
            raise ValueError(
                'train_base=True trains the cores of one TT base; base="tempered" is a '
                'composition of frozen layers: set train_base=False, or use base="tt".'
            )
        fitted: dict = {}
        n_cross_evaluations = 0
        # the model on the Gaussian next to the model on the TT, and its weight
        # (_variational_mixture_weight)
        companion, companion_weight = None, 0.0
        # the mass the kept TT base's box cuts (_box_cut), for the fitted model
        box_cut = None
        # a symmetrised base's group and centre in float64, put back after training
        exact_group = exact_center = None
        # likewise a tempered base, whose layers were built in float64
        exact_base = None
        if warm:
            if isinstance(self.flow_.q0, SymmetrizedBase):
                exact_group = self.flow_.q0.matrices.detach().clone()
                exact_center = self.flow_.q0.center.detach().clone()
            model = copy.deepcopy(self.flow_)
            # the companion is kept as it was, with its weight (as in data mode)
            companion, companion_weight = model.companion, model.companion_weight
            model.companion, model.companion_weight = None, 0.0
            fitted_bounds = split_bounds_map(model.flows)[1]
            if fitted_bounds is not None:
                del model.flows[-1]
            _check_same_bounds(bounds_map, fitted_bounds)
            model = model.to(device=device, dtype=train_dtype)
            # the base and its coordinates are kept: so is what was measured of them
            kept = [name for name in _BASE_CHECK_ATTRIBUTES if hasattr(self, name)]
            fitted.update({name: getattr(self, name) for name in kept})
            history = self._train_variational(model, evaluate, generator, diagnostic_seed)
            output_layer = None
        else:
            non_gaussian, modes, n_modes = False, None, 0
            if automatic:
                coordinates, non_gaussian, modes, n_modes = self._automatic_coordinates(
                    evaluate, counter, n_features, generator, device, symmetry
                )
            else:
                coordinates = [
                    (
                        "none",
                        torch.zeros(n_features, dtype=torch.float64),
                        torch.eye(n_features, dtype=torch.float64),
                        np.stack([low, high], axis=1),
                    )
                ]
                if symmetry is not None:
                    # before TT-cross: uniform points of the box
                    uniform = torch.rand(
                        N_SYMMETRY_CHECK_POINTS,
                        n_features,
                        generator=torch_generator(diagnostic_seed + 5, device),
                        dtype=torch.float64,
                        device=device,
                    )
                    span = torch.as_tensor(high - low, device=device)
                    symmetry.check(torch.as_tensor(low, device=device) + uniform * span)
            candidates = []  # (name, (base, kind, box, shift, matrix), self-check or None)
            # issued once the model is known to keep the TT base
            tt_warnings, box_cut = [], None

            def checked_gaussian():
                """The Gaussian base, placed, and its self-check (automatic boxes)."""
                placed = self._gaussian_base(coordinates, device, train_dtype)
                checks = None
                if automatic:
                    checks, _ = _self_check(
                        placed[0], *placed[3:], evaluate, diagnostic_seed, device
                    )
                return placed, checks

            gaussian = None  # the Laplace Gaussian, placed, and its self-check
            # one mode found in all, not one described among others whose mass
            # the Laplace Gaussian's draws would never visit
            if (
                self.base == "auto"
                and automatic
                and symmetry is None
                and n_modes == 1
                and not non_gaussian
            ):
                gaussian = checked_gaussian()
            # One mode, whose Laplace Gaussian is near exact: a TT-cross could
            # gain at most what its ESS leaves, and costs millions of
            # evaluations (LAPLACE_EXACT_ESS).
            skip_tt = gaussian is not None and gaussian[1].ess >= LAPLACE_EXACT_ESS
            if skip_tt and self.verbose:
                print(
                    f"domain='auto': one mode, whose Laplace Gaussian has self-check ESS "
                    f"{gaussian[1].ess:.4f}: no TT base"
                )
            if self.base in ("tt", "auto", "tempered") and not skip_tt:
                (
                    placed,
                    checks,
                    draws,
                    n_cross_evaluations,
                    tt_warnings,
                    box_cut,
                ) = self._variational_base(
                    coordinates,
                    evaluate,
                    generator,
                    diagnostic_seed,
                    device,
                    train_dtype,
                    symmetry=symmetry,
                    modes=modes,
                )
                if self.base == "tempered":
                    placed, checks = self._tempered_base(
                        placed, checks, draws, counter, diagnostic_seed, device
                    )
                    exact_base = copy.deepcopy(placed[0])
                name = "tempered" if self.base == "tempered" else "tt"
                candidates.append((name, placed, checks))
            if gaussian is None and (
                self.base == "gaussian"
                or (self.base == "auto" and (automatic or _is_poor_cross(candidates[0][1][0])))
            ):
                gaussian = checked_gaussian()
            if gaussian is not None:
                candidates.append(("gaussian", *gaussian))
            trained = []
            for name, placed, checks in candidates:
                model, output_layer = self._variational_model(
                    placed, layer_seed, train_dtype, device
                )
                history = self._train_variational(model, evaluate, generator, diagnostic_seed)
                trained.append((name, placed, checks, model, output_layer, history))
            name, placed, checks, model, output_layer, history = trained[0]
            if len(trained) == 2:
                weight = self._variational_mixture_weight(
                    [entry[3] for entry in trained],
                    evaluate,
                    diagnostic_seed,
                    device,
                    ends_only=symmetry is not None,
                )
                if weight >= MAX_COMPANION_WEIGHT:
                    name, placed, checks, model, output_layer, history = trained[1]
                    # about a base the model does not keep, they would only confuse
                    if self.verbose and tt_warnings:
                        print(f"{len(tt_warnings)} warning(s) about the TT base left out")
                    tt_warnings, box_cut = [], None
                elif weight > MIN_COMPANION_WEIGHT:
                    *_, companion, companion_output_layer, _ = trained[1]
                    if companion_output_layer is not None:
                        companion.flows[-1] = companion_output_layer.to(device)
                    companion_weight = weight
            for caught in tt_warnings:
                # at the user's call of fit, as the fit's own warnings
                warnings.warn(caught.message, stacklevel=4)
            _, kind, _, kept_shift, kept_matrix = placed
            if isinstance(model.q0, SymmetrizedBase):
                exact_group = _symmetry_in_base_coordinates(symmetry.group, kept_matrix)
                exact_center = _group_center(exact_group, kept_shift, kept_matrix)
                if exact_center is None:
                    exact_center = torch.zeros(n_features, dtype=torch.float64)
            if (
                name == "tt"
                and non_gaussian
                and checks is not None
                and checks.ess < MIN_GOOD_BASE_ESS
            ):
                # only about the base that is kept
                warnings.warn(
                    f"domain='auto': the base's self-check ESS is {checks.ess:.3f}, and the "
                    "Laplace approximation at the modes of log_target does not describe the "
                    "mass around them (a funnel's neck, a curved ridge), so the automatic box "
                    "(from those modes and a short Langevin exploration) may miss mass: give "
                    "a domain or mode_starts near the mass, or raise n_basis.",
                    ConvergenceWarning,
                    stacklevel=4,
                )
            fitted["preconditioner_"] = kind
            if checks is not None:
                fitted.update(
                    base_elbo_=checks.elbo,
                    base_ess_=checks.ess,
                    base_kl_=checks.log_normalizer - checks.elbo,
                )
        if output_layer is not None:
            # The map into the target's coordinates was rounded to the training
            # dtype: put back its float64 values (a posterior's mode far from
            # zero keeps its digits).
            model.flows[-1] = output_layer.to(device)
        if exact_base is not None:
            # The layers and the outer map were rounded to the training dtype:
            # put back their float64 values (the training used the rounded
            # ones, the flow is unchanged by this).
            model.q0 = exact_base.to(device=device)
        if exact_group is not None:
            # The group was rounded to the training dtype with the base: put
            # back its float64 values (the same elements in the same order,
            # as SymmetrizedBase keeps a closed group), so that |det g| = 1
            # and the inverses hold to float64 in the fitted model.
            rounded = model.q0.matrices
            if rounded.shape != exact_group.shape or not torch.allclose(
                rounded.double().cpu(), exact_group.cpu(), rtol=1e-5, atol=1e-5
            ):
                raise RuntimeError("The symmetrised base's group changed during training.")
            model.q0.matrices = exact_group.to(device=device)
            model.q0.center = exact_center.to(device=device)
        if bounds_map is not None:
            model.flows.append(copy.deepcopy(bounds_map).to(device))
            if companion is not None and not warm:
                companion.flows.append(copy.deepcopy(bounds_map).to(device))
            # the mass-covering stage and the diagnostics' fallback below
            # score the model's own draws, in x
            evaluate = self._log_target_evaluator(
                n_features, train_dtype, device, counter, own=True
            )
        if companion is not None:
            model = TensorizingFlow(
                model.q0,
                list(model.flows),
                companion=companion.to(device),
                companion_weight=companion_weight,
            )
        covering = self._train_mass_covering(model, evaluate, generator, diagnostic_seed + 3)
        fitted.update(self._finalize(model, device))
        draw = torch_generator(diagnostic_seed + 1, device)
        # model is the float64 one (_finalize), whatever inference_dtype; its
        # draws are in the target's coordinates, where log_target is
        # evaluated in float64 too: in the training dtype a summed
        # log-likelihood of 1e7 nats rounds to whole nats, and in float32
        # log_normalizer_ was 0.33 off and elbo_ above the true log Z.
        x, log_q = self._sample_and_log_prob(model, N_DIAGNOSTIC_SAMPLES, draw)
        draws = torch.from_numpy(x).to(device)
        try:
            log_h = self._log_target_evaluator(
                n_features, torch.float64, device, counter, own=True
            )(draws)
        except ValueError as error:
            # Only where log_target itself raised (a float64 point met a
            # float32 constant), not on NaN or +inf values, nor out of memory.
            own_fault = error.__cause__
            if (
                train_dtype == torch.float64
                or not isinstance(own_fault, (RuntimeError, TypeError))
                or isinstance(own_fault, torch.OutOfMemoryError)
            ):
                raise
            # A target written for float32 inputs only (fixed float32
            # constants), which an explicit box never hands float64 before:
            # evaluate, its evaluator in the training dtype, in x.
            warnings.warn(
                f"log_target failed on the model's float64 draws ({error}); elbo_, ess_ "
                f"and log_normalizer_ come from its {self.dtype} values, which round "
                "log-densities far from zero (a summed log-likelihood of 1e7 nats to whole "
                "nats). Write log_target for the dtype of its input, or fit with "
                "dtype='float64'.",
                UserWarning,
                stacklevel=4,
            )
            log_h = evaluate(draws)
        diagnostics = importance_diagnostics(log_h, torch.from_numpy(log_q).to(device))
        if box_cut is not None:
            # the model's draws in the base's coordinates
            u = draws if bounds_map is None else bounds_map.to(device).inverse(draws)[0]
            y = torch.linalg.solve(kept_matrix.to(u), (u - kept_shift.to(u)).T).T
            if isinstance(model.q0, SymmetrizedBase):
                # to the image where the train lies, as the base's draws were
                y = _fold(y, model.q0)
            _warn_if_box_cuts_mass(
                box_cut, y, log_h - torch.from_numpy(log_q).to(log_h), automatic
            )
        effective_draws = diagnostics.ess * diagnostics.n_samples
        if effective_draws < MIN_EFFECTIVE_DIAGNOSTIC_DRAWS:
            warnings.warn(
                f"The fitted model's importance weights rest on {effective_draws:.1f} "
                f"effective draws of {diagnostics.n_samples} (ess_ {diagnostics.ess:.2g}): "
                "log_normalizer_ is not to be trusted, nor log_normalizer_std_error_, which "
                "comes from the same weights and cannot exceed about 1 nat. The model misses "
                "or misplaces the target's mass: see base_ess_, try base='auto', a flow, or a "
                "domain around the mass.",
                UserWarning,
                stacklevel=4,
            )
        if not automatic:
            far = _share_far_outside(x, *domain_box)
            if far > FAR_OUTSIDE_DOMAIN_SHARE:
                warnings.warn(
                    f"{far:.0%} of the fitted model's draws lie beyond the domain by more "
                    "than its width: either the domain misses much of the target's mass "
                    "(widen it, or use domain='auto'), or log_target is not integrable "
                    "(a density that stays flat or falls off too slowly outside the box; "
                    "give a bounded support as feature_bounds). Its elbo_ and "
                    "log_normalizer_ are then not to be trusted.",
                    UserWarning,
                    stacklevel=4,
                )
        fitted.update(
            n_features_in_=n_features,
            loss_curve_=list(history.loss_curve) if history else [],
            validation_scores_=list(history.validation_scores) if history else [],
            n_iter_=history.n_iter if history else 0,
            elbo_=diagnostics.elbo,
            ess_=diagnostics.ess,
            log_normalizer_=diagnostics.log_normalizer,
            log_normalizer_std_error_=diagnostics.log_normalizer_std_error,
            n_target_evaluations_=n_cross_evaluations + counter.n_evaluations,
            mass_covering_scores_=list(covering.validation_scores) if covering else [],
        )
        return fitted

    def _variational_model(self, placed, layer_seed, dtype, device):
        """The untrained model on a placed base, and a float64 copy of its map
        into the target's coordinates (None when there is none)."""
        base, _, box, shift, matrix = placed
        n_features = shift.shape[0]
        if isinstance(base, SymmetrizedBase) and bool(base.center.abs().max() > 0):
            # A train on one orbit's box, symmetrised about a centre: its mass
            # lies on the images of the box, whose bounding box the flow gets.
            box = _symmetric_box(
                box, base.matrices.detach().double().cpu(), base.center.detach().double().cpu()
            )
        # the flow acts on the base's box mapped to [-1, 1]^d
        layers = self._flow_layers(n_features, SPLINE_MARGIN, layer_seed)
        maps = coordinate_layers(shift, matrix, box, with_flow=bool(layers))
        # .to(dtype) below rounds the layers in place: keep a float64 copy
        # of the map into the target's coordinates for the fitted model.
        output_layer = copy.deepcopy(maps[-1]) if maps else None
        layers = [*maps[:-1], *layers, *maps[-1:]] if layers else maps
        model = TensorizingFlow(base, layers).to(device=device, dtype=dtype)
        return model, output_layer

    def _train_variational(self, model, evaluate, generator, validation_seed):
        """Reverse-KL training of the model's trainable parameters; its history, or
        None when nothing is trained."""
        parameters = self._trained_parameters(model)
        if not parameters:
            return None
        if list(model.flows.parameters()):
            with torch.no_grad():
                probe, _ = model.sample(2, generator=generator)
            # Through the evaluator, so that a failure names log_target
            # and keeps the callable's own exception as the cause.
            check_differentiable(lambda x: evaluate(x, grad=True), probe)
        return fit_reverse_kl(
            model,
            lambda x: evaluate(x, grad=True),
            parameters=parameters,
            **self._stage_options(),
            generator=generator,
            validation_seed=validation_seed,
            verbose=self.verbose,
        )

    def _train_mass_covering(self, model, evaluate, generator, validation_seed):
        """The forward-KL stage of ``mass_covering_iter`` after reverse KL, on
        the whole model (a companion's flow included); its history, or None
        when it does not run."""
        if self.mass_covering_iter == 0:
            return None
        parameters = self._trained_parameters(model)
        if not parameters:  # the base alone, frozen: nothing to train
            return None
        return fit_mass_covering(
            model,
            evaluate,
            parameters=parameters,
            max_iter=self.mass_covering_iter,
            learning_rate=self.learning_rate,
            batch_size=self.mass_covering_batch_size,
            n_iter_no_change=self.n_iter_no_change,
            generator=generator,
            validation_seed=validation_seed,
            verbose=self.verbose,
        )

    def _fit_log_target(self):
        """``log_target`` in the coordinates a variational fit works in: its
        own, or, with ``feature_bounds``, those of the features mapped off
        their bounds, ``z -> log_target(x(z)) + log |dx/dz|`` (computed in
        float64, so that no point rounds onto a bound)."""
        bounds_map = getattr(self, "_fit_bounds", None)
        if bounds_map is None:
            return self.log_target
        copies: dict = {}
        log_target = self.log_target

        def log_target_off_bounds(z: torch.Tensor) -> torch.Tensor:
            layer = copies.get(z.device)
            if layer is None:
                layer = copies[z.device] = copy.deepcopy(bounds_map).to(z.device)
            x, log_det = layer(z.double())
            values = torch.as_tensor(log_target(x)).to(x)
            if values.ndim == 2 and values.shape[1] == 1:  # the contract allows (m, 1)
                values = values[:, 0]
            return (values + log_det).to(z.dtype)

        return log_target_off_bounds

    def _log_target_evaluator(self, n_features: int, dtype, device, counter, *, own=False):
        """``log_target`` in ``dtype`` on ``device``, in one batch per call,
        its evaluations added to ``counter`` (shared by every evaluator of a
        fit, so that ``n_target_evaluations_`` counts them all); in the fit's
        coordinates (:meth:`_fit_log_target`), or its own with ``own``."""
        return LogDensityEvaluator(
            self.log_target if own else self._fit_log_target(),
            n_features,
            batch_size=1 << 62,
            dtype=dtype,
            device=device,
            report=counter,
            name="log_target",
        )

    def _symmetry(self, n_features: int, counter, device):
        """The group of ``symmetry`` and the check of ``log_target`` against it.

        None without ``symmetry``; else a namespace with ``group`` (the
        closed group in the target's coordinates, float64 on the CPU,
        identity first) and ``check(x)``, which evaluates ``log_target`` in
        float64 at up to :data:`N_SYMMETRY_CHECK_POINTS` rows of ``x`` and at
        their images under each given map, and raises a ValueError naming
        the first map under which it is not invariant.
        """
        found = _symmetry_group(self.symmetry, n_features)
        if found is None:
            return None
        given, names, group = found
        evaluate = self._log_target_evaluator(n_features, torch.float64, device, counter)
        # about 1000 evaluations for the sign flip, and no more than 16 per
        # map for groups of many maps
        n_points = max(16, min(N_SYMMETRY_CHECK_POINTS, 4 * N_SYMMETRY_CHECK_POINTS // len(given)))

        def check(x: torch.Tensor) -> None:
            x = x[:n_points].to(device=device, dtype=torch.float64)
            maps = given.to(device)
            with torch.no_grad():
                values = evaluate(x)
                images = evaluate(torch.matmul(x, maps.transpose(1, 2)).reshape(-1, n_features))
            images = images.reshape(len(given), x.shape[0])
            finite = torch.isfinite(values) & torch.isfinite(images)
            close = (images - values).abs() <= SYMMETRY_TOLERANCE * (1.0 + values.abs())
            invariant = (images == values) | (finite & close)
            for index, name in enumerate(names):
                failed = torch.nonzero(~invariant[index]).flatten()
                if failed.numel():
                    row = int(failed[0])
                    raise ValueError(
                        f"symmetry: log_target is not invariant under {name}: at "
                        f"{failed.numel()} of {x.shape[0]} points checked, log_target(g x) "
                        f"differs from log_target(x) by more than {SYMMETRY_TOLERANCE:g} (1 + "
                        f"|log_target(x)|), e.g. {float(values[row]):.10g} at x and "
                        f"{float(images[index, row]):.10g} at g x. Give maps that leave "
                        "log_target unchanged (in its own coordinates), or symmetry=None."
                    )

        return SimpleNamespace(group=group, check=check)

    def _automatic_n_features(self) -> int:
        """The dimension of a variational fit without a box: ``n_features``, or
        the width of ``mode_starts``."""
        starts = None
        if self.mode_starts is not None:
            starts = np.asarray(self.mode_starts, dtype=np.float64)
            if starts.ndim != 2 or starts.shape[0] < 1:
                raise ValueError(
                    "mode_starts must be a 2-D array (n_starts, n_features) of points, got "
                    f"shape {starts.shape}."
                )
        if self.n_features is None:
            if starts is None:
                raise ValueError(
                    "domain='auto' needs the dimension: give n_features (or mode_starts)."
                )
            return int(starts.shape[1])
        if starts is not None and starts.shape[1] != self.n_features:
            raise ValueError(
                f"mode_starts has {starts.shape[1]} columns but n_features={self.n_features}."
            )
        return int(self.n_features)

    def _automatic_coordinates(
        self, evaluate, counter, n_features, generator, device, symmetry=None
    ) -> list:
        """Candidate coordinates and boxes for the TT base, from the modes of log_target.

        Multi-start ascent from standard-normal points (and ``mode_starts``)
        finds the modes and their Laplace covariances
        (:func:`~sktt_flow.geometry.find_modes`); each candidate is an affine
        map ``x = shift + matrix y`` (:func:`~sktt_flow.geometry.affine_from_laplace`)
        and the box in ``y`` that holds every mode to ``DEFAULT_N_STD`` local
        standard deviations (:func:`~sktt_flow.geometry.box_from_modes`).
        Returns ``[(kind, shift, matrix, box), ...]`` (float64, CPU),
        whether the Laplace approximation failed to describe the mass at
        every mode (:attr:`~sktt_flow.geometry.ModeSearch.non_gaussian`), so
        that the box comes from covariances that do not describe the mass,
        the modes it describes (float64, CPU; None without), and how many
        modes the search found, described or not.
        """
        # The search runs in float64 (Newton steps on float32 Hessians lose
        # the mode's digits) through an evaluator that shares the counts.
        search_evaluate = self._log_target_evaluator(n_features, torch.float64, device, counter)
        # Standard-normal starts find the modes near the origin; modes tens or
        # hundreds of units away (a mixture spread over a wide region) are
        # reached only from starts out there, so a third of the starts are
        # drawn ten times and a third a hundred times wider. Ascents from far
        # starts on a target with light tails converge like the others;
        # those that run away are flagged and left out.
        starts = [
            scale * torch.randn(N_WIDE_STARTS, n_features, generator=generator, device=device)
            for scale in WIDE_START_SCALES
        ]
        if self.mode_starts is not None:
            given = np.asarray(self.mode_starts, dtype=np.float64)
            if getattr(self, "_fit_bounds", None) is not None:
                # given in the target's coordinates, searched off the bounds
                given, _ = _off_bounds(given, self._fit_bounds, "mode_starts")
            starts.insert(0, torch.as_tensor(given, device=device))
        near_starts = starts[0] if self.mode_starts is None else torch.cat(starts[:2])
        starts = torch.cat([rows.double() for rows in starts]) if starts else None
        search = find_modes(
            search_evaluate,
            n_features,
            starts=starts,
            n_starts=N_WIDE_STARTS,
            generator=generator,
            device=device,
        )
        candidates = []
        if search.n_modes == 0 or bool(search.non_gaussian.all()):
            # No mode, or none that its Laplace Gaussian describes: a funnel's
            # mode is in its neck (NealsFunnel(10): v = -40.5, where the mass
            # has v in [-9, 9]), and the centred eight schools has none (the
            # density grows without bound down the neck). Langevin chains from
            # the near starts go where the mass is instead; their box comes
            # first, since a base that fits a neck alone passes its own ESS.
            explored = explore_mass(
                search_evaluate,
                near_starts.double(),
                n_steps=N_EXPLORATION_STEPS,
                generator=generator,
            )
            if explored.draws.shape[0] > 0:
                candidates.append(
                    self._automatic_candidate(
                        "none",
                        torch.zeros(n_features, dtype=torch.float64),
                        torch.eye(n_features, dtype=torch.float64),
                        explored.box(),
                    )
                )
                if self.verbose:
                    print(
                        f"domain='auto': Langevin exploration, acceptance "
                        f"{float(explored.acceptance.mean()):.2f}, box widths "
                        f"{np.ptp(candidates[0][3], axis=1).round(3)}"
                    )
        if search.n_modes == 0:
            if candidates:
                return candidates, True, None, 0
            fates = {fate: search.fates.count(fate) for fate in set(search.fates)}
            # Starts outside the support (log_target -inf there): a target of
            # positive parameters, whose standard-normal starts are half out
            # in each coordinate (93 of 96 starts of a 5-D exponential).
            bounded = (
                " Most starts were outside log_target's support: if it is bounded "
                "(-inf beyond a bound, as for positive parameters), give the bounds as "
                "feature_bounds, e.g. feature_bounds=(0, np.inf)."
                if 2 * fates.get("infeasible", 0) > len(search.fates)
                else ""
            )
            raise ValueError(
                "domain='auto' found no mode of log_target, and every Langevin chain left "
                f"the support or ran away: the ascents from {len(search.fates)} starting "
                f"points ended as {fates}. An improper log_target has no mass to find; "
                "otherwise give a "
                f"domain, or mode_starts near the mass.{bounded}"
            )
        kinds = AFFINE_KINDS if self.preconditioner == "auto" else (self.preconditioner,)
        # Modes whose Laplace Gaussian does not describe their mass (a gap of
        # thousands of nats: a chain's kink states, whose soft direction
        # gives a standard deviation of 8.6 against 0.36 at the two ordered
        # states of GinzburgLandau1D(32)) would blow up the box and the pooled
        # coordinates; while some mode is described, they are left out, and
        # the self-check's weighted draws judge the box that results.
        described = ~search.non_gaussian
        if bool(described.any()) and not bool(described.all()):
            if self.verbose:
                print(
                    f"domain='auto': {int((~described).sum())} of {search.n_modes} modes "
                    "left out of the box: their Laplace Gaussian does not describe them"
                )
            modes, covariances = search.modes[described], search.covariances[described]
        else:
            modes, covariances = search.modes, search.covariances
        modes, covariances = modes.cpu(), covariances.cpu()
        one_orbit = None
        if symmetry is not None:
            # Before TT-cross: log_target at the modes and at their images.
            symmetry.check(search.modes)
            group = symmetry.group
            representatives = _one_per_orbit(modes, covariances, group)
            one_orbit = (modes[representatives], covariances[representatives])
            # The images of a mode are modes (of the images' covariances): the
            # coordinates and the box then do not depend on which of the
            # symmetric modes the ascents happened to reach.
            modes = torch.einsum("gij,kj->gki", group, modes).reshape(-1, n_features)
            covariances = (group[:, None] @ covariances[None] @ group[:, None].mT).reshape(
                -1, n_features, n_features
            )
            identity = torch.eye(n_features, dtype=modes.dtype)[None]
            if _one_per_orbit(modes, covariances, identity).numel() == representatives.numel():
                one_orbit = None  # the group fixes every mode: no image to leave out
        for kind, (shift, matrix) in self._laplace_coordinates(modes, covariances, kinds):
            if symmetry is not None:
                # a point the group fixes, so that it acts linearly on y
                shift = (symmetry.group @ shift).mean(dim=0)
            box = box_from_modes(modes, covariances, coordinates=(shift, matrix))
            candidates.append(self._automatic_candidate(kind, shift.cpu(), matrix.cpu(), box))
        if one_orbit is not None:
            # After the orbit's coordinates, tried only when those fail (see
            # MAX_ESS_FOR_ONE_ORBIT): around one mode of each orbit, the group
            # acting about the origin of x. The fifth entry marks them.
            for kind, (shift, matrix) in self._laplace_coordinates(*one_orbit, kinds):
                box = box_from_modes(*one_orbit, coordinates=(shift, matrix))
                candidates.append(
                    (*self._automatic_candidate(kind, shift.cpu(), matrix.cpu(), box), True)
                )
        return candidates, bool(search.non_gaussian.all()), modes, search.n_modes

    def _laplace_coordinates(self, modes, covariances, kinds) -> list[tuple]:
        """``(kind, affine_from_laplace(modes, covariances, kind))`` for each
        of ``kinds`` that has coordinates.

        ``"full"`` has none where the pooled covariance of the modes' Laplace
        Gaussians has no Cholesky factor in float64: modes whose spreads
        differ by many orders of magnitude (found on a centred hierarchical
        model of 30 groups, whose funnel's neck has directions of almost no
        spread next to the others'; the fit stopped with an error from deep
        inside). It is then left out of ``preconditioner="auto"``'s
        candidates, and ``preconditioner="full"`` is refused by name.
        """
        coordinates = []
        for kind in kinds:
            try:
                coordinates.append((kind, affine_from_laplace(modes, covariances, kind)))
            except ValueError:
                if kind != "full":
                    raise
                # well-formed inputs here: the pooled covariance has no
                # Cholesky factor
                if len(kinds) == 1:
                    raise ValueError(
                        f"preconditioner={kind!r}: the covariance pooled from the Laplace "
                        "approximations of the modes found has no Cholesky factor (modes "
                        "whose spreads differ by many orders of magnitude, as in a funnel's "
                        "neck). Use preconditioner='diagonal' or 'auto', or give a domain."
                    ) from None
                if self.verbose:
                    print(
                        f"domain='auto': no {kind!r} coordinates (the pooled Laplace "
                        "covariance has no Cholesky factor)"
                    )
        return coordinates

    def _automatic_candidate(self, kind, shift, matrix, box) -> tuple:
        """``(kind, shift, matrix, box)``, once the points of the box, in the
        target's coordinates, are known to be distinct in the training dtype
        (a mode far from zero with a tiny spread is not, in float32)."""
        box_tensor = torch.as_tensor(box)
        center = shift + matrix @ box_tensor.mean(dim=1)
        reach = matrix.abs() @ (box_tensor[:, 1] - box_tensor[:, 0]) / 2
        check_domain_resolution(
            (center - reach).numpy(),
            (center + reach).numpy(),
            _DTYPES[self.dtype],
            name="the automatic box (in the coordinates of log_target)",
        )
        return kind, shift, matrix, box

    def _tempered_base(self, placed, checks, draws, counter, seed, device):
        """The base of ``base="tempered"``, placed as ``(base, kind, box, shift,
        matrix)``, and its self-check (automatic boxes) or None.

        ``placed``, ``checks`` and ``draws`` are the TT base's, its self-check
        and the self-check's draws with their log-weights (None with an
        explicit box: they are made here). The layers live in the TT's
        coordinates ``y``, and the flow acts on its box as on a TT's. The outer
        Gaussian is the target's mean and covariance in ``y``, estimated from
        the TT's draws weighted by the target (the draws' own moments when
        their ESS is below :data:`MIN_ESS_FOR_TEMPERED_MOMENTS`), widened by
        :data:`TEMPERED_OUTER_WIDENING`; the layers are built by
        :func:`~sktt_flow.flows.fit_tempered_base` on the CPU in float64
        (``log_target`` gets its points on ``device``).
        """
        tt_base, kind, box, shift, matrix = placed
        n_features = shift.shape[0]
        evaluate = self._log_target_evaluator(n_features, torch.float64, device, counter)
        if draws is None:
            checks, draws = _self_check(tt_base, shift, matrix, evaluate, seed, device)
        y, log_weights = (tensor.double().cpu() for tensor in draws)
        # (not >=: a NaN ESS, from weights that are all zero, counts as low)
        if not float(checks.ess) >= MIN_ESS_FOR_TEMPERED_MOMENTS:
            log_weights = torch.zeros_like(log_weights)
        weights = torch.softmax(log_weights, dim=0)
        mean = weights @ y
        centred = y - mean
        covariance = (centred * weights[:, None]).T @ centred
        # A little of the box's spread keeps the factor well defined when the
        # weight sits on a few draws.
        width = torch.as_tensor(box[:, 1] - box[:, 0], dtype=torch.float64)
        covariance += torch.diag((1e-3 * width) ** 2)
        factor = TEMPERED_OUTER_WIDENING * torch.linalg.cholesky(covariance)
        in_base_coordinates = pull_back(evaluate, shift, matrix, torch.float64, device)

        def log_target_on_cpu(points: torch.Tensor) -> torch.Tensor:
            return in_base_coordinates(points.to(device)).to("cpu")

        base = fit_tempered_base(
            log_target_on_cpu,
            mean,
            factor,
            tt_rank=VARIATIONAL_TT_RANK if self.tt_rank == "auto" else self.tt_rank,
            n_basis=self.n_basis,
            cross_options=self.cross_options,
            random_state=seed + 7,
            verbose=self.verbose,
        ).to(device)
        tempered_checks = None
        if _is_auto(self.domain):
            tempered_checks, _ = _self_check(base, shift, matrix, evaluate, seed, device)
            if self.verbose:
                print(
                    f"tempered base: {base.n_layers} layers, exponents "
                    f"{[round(beta, 4) for beta in base.betas]}; self-check ELBO "
                    f"{tempered_checks.elbo:.4f}, ESS {tempered_checks.ess:.3f} (single train: "
                    f"{checks.elbo:.4f}, {checks.ess:.3f})"
                )
        return (base, kind, box, shift, matrix), tempered_checks

    def _variational_mixture_weight(self, models, evaluate, seed, device, *, ends_only):
        """The weight of the second of two trained variational models (the one
        on the Gaussian) in their mixture, by the ELBO on fresh exact draws of
        each (:func:`~sktt_flow.training.fit_variational_mixture_weight`): a
        mixture only where it beats the better model alone by
        ``CONFIRMATION_STANDARD_ERRORS`` paired standard errors (two near-exact
        models give a flat ELBO whose maximiser is noise); 0 or 1 with
        ``ends_only`` (a symmetrised base, whose exact balance between
        symmetric modes a mixture would lose): the better model alone."""
        triples = []
        with torch.no_grad():
            for index, model in enumerate(models):
                draw = torch_generator(seed + 3 + 10 * index, device)
                x, log_q = model.sample(N_SELF_CHECK_SAMPLES, generator=draw)
                log_other = models[1 - index].log_prob(x)
                log_qs = (log_q, log_other) if index == 0 else (log_other, log_q)
                triples.append((evaluate(x), *(values.double() for values in log_qs)))
        weight, elbo = fit_variational_mixture_weight(
            *triples, ends_only=ends_only, standard_errors=CONFIRMATION_STANDARD_ERRORS
        )
        if self.verbose:
            print(
                f"models on the TT and the Gaussian: ELBO {elbo:.4f} at the Gaussian's "
                f"weight {weight:.3g} on fresh draws"
            )
        return weight

    @staticmethod
    def _gaussian_base(coordinates, device, dtype):
        """The Gaussian base of a variational model, placed as ``(base, kind, box,
        shift, matrix)``: the Laplace approximation itself in Laplace
        coordinates (full ones when there are several kinds), else centred on
        the box with a quarter of its width as standard deviation (two
        standard deviations to each side)."""
        # the coordinates of every mode (not the one-orbit ones, marked by a
        # fifth entry)
        coordinates = [c for c in coordinates if len(c) == 4]
        kind, shift, matrix, box = next(
            (c for c in coordinates if c[0] == "full"), coordinates[-1]
        )
        n_features = shift.shape[0]
        if kind != "none":
            base = GaussianBase(
                torch.zeros(n_features, dtype=dtype, device=device),
                torch.ones(n_features, dtype=dtype, device=device),
            )
        else:
            low, high = box[:, 0], box[:, 1]
            base = GaussianBase(
                torch.as_tensor((low + high) / 2, dtype=dtype, device=device),
                torch.as_tensor((high - low) / 4, dtype=dtype, device=device),
            )
        return base, kind, box, shift, matrix

    def _variational_base(
        self, coordinates, evaluate, generator, seed, device, dtype, *, symmetry=None, modes=None
    ):
        """The TT base of the variational model, in the best of the candidate coordinates.

        One TT-cross per candidate on its box, each scored by
        the self-check: exact draws of the candidate (mapped into the target's
        coordinates), importance weights against ``log_target``, and the ELBO
        on them, which orders candidates as their reverse KL does (``log Z``
        is common to all). Returns ``((base, kind, box, shift, matrix),
        diagnostics of the kept one or None, its self-check draws ``(y, log
        w)`` or None, cross evaluations, the warnings of its cross, the mass
        its box cuts)``: the warnings as records, for the caller to issue
        where the model keeps this base, and the cut (:func:`_box_cut`, or
        None) for the caller to check against the fitted model.

        With ``symmetry`` (see :meth:`_symmetry`; the shifts are fixed by its
        group) each box is first widened to the bounding box of its images
        under the group acting on ``y``, each TT is wrapped in a
        :class:`~sktt_flow.flows.SymmetrizedBase` of that group before its
        self-check, and ``log_target`` is checked for invariance on exact
        draws of the first base built.

        ``modes`` (float64, (m, n_features), in the target's coordinates: the
        modes of :meth:`_automatic_coordinates`) are handed to TT-cross as
        known seeds, in each candidate's coordinates where its box holds
        them: cross's own seeds, ascents from random points of the box,
        missed a narrow mode that the search had found (10% of the mass, d =
        4: log Z short by log 0.9, ESS 1.000).
        """
        options = dict(self.cross_options or {})
        reserved = options.keys() & _CROSS_RESERVED
        if reserved:
            raise ValueError(
                f"cross_options cannot set {sorted(reserved)}: they are the estimator's "
                "own parameters."
            )
        automatic = _is_auto(self.domain)
        n_evaluations = 0
        unchecked = symmetry is not None

        def build(kind, shift, matrix, box, one_orbit=False):
            """A candidate base, its self-check (automatic boxes) and its warnings.

            ``one_orbit``: the box holds one mode of each orbit of the group,
            which supplies the others (see :meth:`_automatic_coordinates`);
            it is not widened to its images, which would undo the point.
            """
            nonlocal n_evaluations, unchecked
            center = None
            if symmetry is not None:
                group = _symmetry_in_base_coordinates(symmetry.group, matrix)
                center = _group_center(group, shift, matrix)
                if not one_orbit:
                    box = _symmetric_box(box, group, center)
            log_target = pull_back(self._fit_log_target(), shift, matrix, dtype, device)
            known = None
            if modes is not None:
                known = torch.linalg.solve(matrix, (modes - shift).T).T
                limits = torch.as_tensor(box, dtype=known.dtype)
                known = known[((known >= limits[:, 0]) & (known <= limits[:, 1])).all(dim=1)]
            # The warnings of a candidate that is not kept would only confuse:
            # only the kept one's are shown.
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    base = TTDistribution.from_log_density(
                        log_target,
                        box,
                        tt_rank=VARIATIONAL_TT_RANK if self.tt_rank == "auto" else self.tt_rank,
                        n_basis=self.n_basis,
                        random_state=generator,
                        device=device,
                        dtype=dtype,
                        verbose=self.verbose,
                        callable_name="log_target",
                        known_seeds=known,
                        **options,
                    )
                except NoTrainFoundError as error:
                    # the evaluations of the failed run count too
                    n_evaluations += error.n_evaluations
                    raise
            n_evaluations += base.cross_report.n_evaluations
            if symmetry is not None:
                base = SymmetrizedBase(base, group, center=center)
                if unchecked:
                    # where the base puts its mass, both signs (all images) alike
                    with torch.no_grad():
                        y = base.sample(
                            N_SYMMETRY_CHECK_POINTS, generator=torch_generator(seed + 6, device)
                        )
                    symmetry.check(shift.to(device) + y.double() @ matrix.T.to(device))
                    unchecked = False
            checks = draws = None
            if automatic:
                checks, draws = _self_check(base, shift, matrix, evaluate, seed, device)
                if one_orbit:
                    # The box adjustments read where the weighted draws lie:
                    # in the orbit's region that the train holds.
                    draws = (_fold(draws[0], base), draws[1])
                if self.verbose:
                    print(
                        f"coordinates {kind!r}, box widths {np.ptp(box, axis=1).round(3)}: "
                        f"base ELBO {checks.elbo:.4f}, ESS {checks.ess:.3f}"
                    )
            return (base, kind, box, shift, matrix), checks, draws, caught

        kept = no_train = None
        for candidate in coordinates:
            one_orbit = len(candidate) > 4 and candidate[4]
            if one_orbit and kept is not None and kept[1].ess >= MAX_ESS_FOR_ONE_ORBIT:
                break  # the orbit's coordinates are good enough (they come first)
            try:
                built = build(*candidate)
            except NoTrainFoundError as error:
                # A box where TT-cross sees no mass (the raw coordinates of a
                # centred hierarchical model of 30 groups, whose funnel's neck
                # the grid missed, stopped the fit while the Langevin box
                # fitted): the next candidate, unless none builds.
                if not automatic:
                    raise
                no_train = no_train or error
                if self.verbose:
                    print(f"coordinates {candidate[0]!r}: no train ({error})")
                continue
            for _ in range(MAX_BOX_ADJUSTMENTS if automatic else 0):
                # The box from the Laplace covariances is a guess (six local
                # standard deviations of a Gaussian); the base's own draws,
                # weighted by the target, say where the mass is: sides where
                # they pile up cut mass (log tau of eight schools: mode 3.4,
                # mass down to -4), sides they never reach spend resolution
                # (and, on a steep side, pay for the base's leaks there). Each
                # new box is kept only if its base wins the self-check: the
                # ELBO of a truncated base pays log P(box) for the cut. Each
                # candidate is adjusted before they are compared: a box too
                # wide for its resolution can lose to coordinates that merely
                # hold one mode well.
                if built[1].ess < MIN_ESS_TO_REFINE_BOX:
                    break
                (_, kind, box, shift, matrix), checks, draws, _ = built
                proposals = [adjust_box(*draws, box)]
                if (
                    checks.ess >= GOOD_ENOUGH_BASE_ESS
                    and widen_box_at_edges(*draws, box) is None
                    and _mean_width_ratio(proposals[0], box) > MIN_NARROWING_OF_GOOD_BASE
                ):
                    # A near-exact base that cuts no mass gains little from a
                    # slightly narrower box, and a rebuild costs a whole cross
                    # (GinzburgLandau1D(50): 1.2 million evaluations for an
                    # ELBO of -37.1745 against -37.1739, widths down by a
                    # tenth); halving them still pays (GinzburgLandau1D(16):
                    # reverse KL 6e-4 on the Laplace box, 1e-5 on half of it).
                    break
                narrower = box_of_weighted_draws(*draws, box)
                if narrower is not None and not np.array_equal(narrower, proposals[0]):
                    proposals.append(narrower)  # moving in alone may still win
                improved = False
                for proposal in proposals:
                    if proposal is None:
                        continue
                    try:
                        rebuilt = build(kind, shift, matrix, proposal, one_orbit)
                    except NoTrainFoundError:
                        continue  # a box that misses the mass does not win
                    if rebuilt[1].elbo > built[1].elbo:
                        built, improved = rebuilt, True
                        break
                if not improved:
                    break
            if kept is None or built[1].elbo > kept[1].elbo:
                kept = built
            if automatic and kept[1].ess >= GOOD_ENOUGH_BASE_ESS:
                # The candidates come in order of cost to the TT (none,
                # diagonal, full); once one is near exact the others can only
                # gain what its ESS leaves, and each costs as much again
                # (GinzburgLandau1D(50): 5.8 million evaluations for the
                # three, where the first alone reaches ESS 0.98).
                break
        if kept is None:
            raise no_train
        best, best_checks, best_draws, best_warnings = kept
        draws = best_draws
        if draws is None:
            # an explicit box: exact draws of its base, for the check below only
            _, draws = _self_check(best[0], best[3], best[4], evaluate, seed, device)
        _, _, kept_box, kept_shift, kept_matrix = best
        cut = _box_cut(
            draws, kept_box, lambda y: evaluate(kept_shift.to(y) + y @ kept_matrix.T.to(y))
        )
        return best, best_checks, best_draws, n_evaluations, best_warnings, cut

    @staticmethod
    def _finalize(model: TensorizingFlow, device: torch.device) -> dict:
        """The fitted attributes of a trained model: ``model`` cast to float64 in
        place (the caller's variational diagnostics use it, so they are
        float64 whatever ``inference_dtype``), frozen, and its float32 copy
        for ``inference_dtype="float32"``. A file is loaded through here too,
        so a loaded model's float32 copy is the fitted one's, bit for bit."""
        model = model.to(dtype=torch.float64)
        model.requires_grad_(False)
        model.eval()
        tt = _tt_of(model.q0)
        if isinstance(model.q0, TemperedTTBase):
            base = "tempered"
        else:
            base = "gaussian" if tt is None else "tt"
        return {
            "flow_": model,
            "tt_": tt,
            "base_": base,
            "defensive_weight_": model.defensive_weight,
            "companion_weight_": model.companion_weight,
            "device_": device,
            "_float32_flow": _in_precision(model, torch.float32),
        }

    # ------------------------------------------------------------- inference
    def _inference_flow(self, fitted: dict | None = None) -> TensorizingFlow:
        """The fitted model in the precision ``inference_dtype`` asks for now
        (of the attributes ``fitted`` of a fit not yet set, where given)."""
        validate_parameter_constraints(
            {name: self._parameter_constraints[name] for name in ("dtype", "inference_dtype")},
            {"dtype": self.dtype, "inference_dtype": self.inference_dtype},
            caller_name=type(self).__name__,
        )
        precision = self.dtype if self.inference_dtype is None else self.inference_dtype
        fitted = self.__dict__ if fitted is None else fitted
        return fitted["_float32_flow"] if precision == "float32" else fitted["flow_"]

    def score_samples(self, X) -> np.ndarray:
        """Log-density of the model at each sample.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        log_density : ndarray of shape (n_samples,), float64
            Exact, normalised log-density of the original features, computed
            in the precision ``inference_dtype`` sets. Points are scored in
            chunks: memory does not grow with ``n_samples`` beyond the output.
            Rows far enough from the data for float32's range to run out
            (a log-density below -2e31, some 1e16 standard deviations out)
            are scored in float64. From about 1e154 standard deviations out
            the base's Gaussian tail is capped (its square would overflow:
            :mod:`sktt_flow.tt.tails`), so rows there score about -2.2e307,
            all alike; a row beyond float64's range (about 1e308 standard
            deviations), whose density is zero in floating point, scores
            ``-inf``.
        """
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=np.float64, order="C")
        return self._log_density_in_chunks(X, self.device_)

    def _log_density_in_chunks(
        self, X: np.ndarray, device: torch.device, fitted: dict | None = None
    ) -> np.ndarray:
        """The fitted model's log-densities (float64) of the rows ``X``
        (float64), in chunks of :data:`CHUNK_SIZE` rows on ``device``, in the
        precision of :meth:`_inference_flow` (of the attributes ``fitted`` of
        a fit not yet set, where given).

        Where that is the float32 copy of the float64 model ``flow_``, the
        rows that the copy cannot score in its range
        (:data:`FLOAT32_TRUSTED_LOG_DENSITY`) are scored by ``flow_``. A row
        that overflows float64 too (NaN: its coordinates in the model's
        standardised units beyond about 1e308, where the coupling networks
        compute ``inf - inf``) has log-density ``-inf``, as in
        :meth:`sklearn.mixture.GaussianMixture.score_samples`: its density is
        below ``exp(-1e300)``, zero in floating point.
        """
        model = self._inference_flow(fitted)
        exact = (self.__dict__ if fitted is None else fitted)["flow_"]
        log_density = self._log_density_in_precision(model, X, device)
        if model is not exact:
            untrusted = np.flatnonzero(
                ~(log_density >= FLOAT32_TRUSTED_LOG_DENSITY)  # NaN included
            )
            if untrusted.size:
                log_density[untrusted] = self._log_density_in_precision(
                    exact, X[untrusted], device
                )
        log_density[np.isnan(log_density)] = -np.inf
        return log_density

    def _log_density_in_precision(
        self, model: TensorizingFlow, X: np.ndarray, device: torch.device
    ) -> np.ndarray:
        """``model``'s log-densities of the rows ``X`` in its own precision
        (see :meth:`_log_density_in_chunks`)."""
        log_density = np.empty(X.shape[0], dtype=np.float64)
        step = CHUNK_SIZE.get(device.type, CHUNK_SIZE["cpu"])
        with model.fixed_parameters(), torch_threads_within_limits(self._n_threads()):
            for start in range(0, X.shape[0], step):
                rows = torch.tensor(X[start : start + step], device=device)
                # padded with copies of a row of the data: the same values
                # whatever the batch (ROW_MULTIPLE), and no extreme points
                size = rows.shape[0]
                rows = torch.cat([rows, rows[-1:].expand(_padded_size(size) - size, -1)])
                values = model.log_prob(rows)[:size]
                log_density[start : start + step] = values.cpu().numpy()
        return log_density

    def score(self, X, y=None) -> float:
        """Mean log-likelihood of ``X`` (higher is better).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : None
            Ignored.

        Returns
        -------
        float
            As :meth:`sklearn.mixture.GaussianMixture.score`, so that
            :class:`~sklearn.model_selection.GridSearchCV` needs no ``scoring``.
        """
        return float(self.score_samples(X).mean())

    def _sample_and_log_prob(
        self, model, n_samples: int, generator: torch.Generator, *, with_log_prob: bool = True
    ):
        """Draws and their log-density (None without ``with_log_prob``: the
        same draws, for less work)."""
        n_features = model.n_features
        samples = np.empty((n_samples, n_features), dtype=np.float64)
        log_density = np.empty(n_samples, dtype=np.float64) if with_log_prob else None
        device_type = generator.device.type
        step = CHUNK_SIZE.get(device_type, CHUNK_SIZE["cpu"]) * SAMPLE_CHUNK_FACTOR.get(
            device_type, 1
        )
        with torch.no_grad(), torch_threads_within_limits(self._n_threads()):
            # drawn for every row first: the rows do not depend on the chunks
            defensive = model.defensive_draws(n_samples, generator)
            companion_generator = model.companion_generator(generator)
            for start in range(0, n_samples, step):
                size = min(step, n_samples - start)
                # The last chunk is padded (ROW_MULTIPLE) with draws made
                # after all the others, so it changes no returned row.
                padded = _padded_size(size)
                mask = None
                if defensive is not None:
                    mask = defensive[start : start + size]
                    mask = torch.cat([mask, mask.new_zeros(padded - size)])
                draws = {
                    "generator": generator,
                    "defensive": mask,
                    "companion_generator": companion_generator,
                }
                if with_log_prob:
                    x, log_q = model.sample(padded, **draws)
                    log_density[start : start + size] = log_q[:size].cpu().numpy()
                else:
                    x = model.sample_points(padded, **draws)
                samples[start : start + size] = x[:size].cpu().numpy()
        bounds_map = split_bounds_map(model.flows)[1]
        if with_log_prob and bounds_map is not None:
            # Draws that the bounds map clamped next to a bound carry the
            # log-density of the z beyond the dtype's resolution, not of the
            # returned point: up to 70 nats apart where the data pile up
            # within 1e-15 of a bound (0.05-0.25% of the draws there). They
            # are scored again at the returned point, by the same model.
            clamped = np.flatnonzero(
                bounds_map.next_to_a_bound(torch.from_numpy(samples).to(bounds_map.low)).cpu()
            )
            if clamped.size:
                log_density[clamped] = self._log_density_in_precision(
                    model, samples[clamped], generator.device
                )
        return samples, log_density

    def sample_and_score(self, n_samples: int = 1, random_state=None):
        """Samples and their log-density, computed in one pass.

        Parameters
        ----------
        n_samples : int, default=1
        random_state : int, RandomState instance or None, default=None
            Fixes the draw; ``None`` uses the estimator's ``random_state``, as
            :meth:`sklearn.mixture.GaussianMixture.sample` does.

        Returns
        -------
        X : ndarray of shape (n_samples, n_features)
            Exact samples in the original feature space, computed in the
            precision ``inference_dtype`` sets, the TT base's sampler
            included: a ``random_state`` gives the same draws in float32 and
            float64 up to float32 rounding, except a few that rounding moves
            across a region of little mass (in the speed benchmark's model,
            1 draw in 800 moved by more than 0.001 standard deviations, 1 in
            4,000 by more than 0.01).
        log_density : ndarray of shape (n_samples,)
            ``score_samples(X)`` without a second pass through the flow (the
            two agree to the rounding of that precision: the flow's forward
            and inverse maps round differently). With ``feature_bounds``,
            a draw returned as the value next to a bound (its distance to
            the bound below the dtype's resolution) is scored again at the
            returned point.
        """
        return self._sample(n_samples, random_state, with_log_prob=True)

    def _sample(self, n_samples, random_state, *, with_log_prob: bool):
        check_is_fitted(self)
        if not isinstance(n_samples, Integral) or isinstance(n_samples, bool) or n_samples < 1:
            raise ValueError(
                f"Invalid value for 'n_samples': {n_samples!r}. The sampling requires at "
                "least one sample."
            )
        model = self._inference_flow()
        seed_source = self.random_state if random_state is None else random_state
        generator = torch_generator(check_random_state(seed_source), self.device_)
        return self._sample_and_log_prob(
            model, int(n_samples), generator, with_log_prob=with_log_prob
        )

    def sample(self, n_samples: int = 1, random_state=None) -> np.ndarray:
        """Exact samples from the model.

        Parameters
        ----------
        n_samples : int, default=1
        random_state : int, RandomState instance or None, default=None
            Fixes the draw; ``None`` uses the estimator's ``random_state``.

        Returns
        -------
        X : ndarray of shape (n_samples, n_features)
            Samples in the original feature space, the draws of
            :meth:`sample_and_score` with the same ``random_state``, without
            the work of their log-density. Use :meth:`sample_and_score` to get
            it as well.
        """
        return self._sample(n_samples, random_state, with_log_prob=False)[0]

    # ------------------------------------------------------------ persistence
    def __getstate__(self):
        # object.__getstate__ returns the instance dict itself: copy it.
        state = dict(super().__getstate__())
        if "flow_" in state:
            # CPU tensors only: a model fitted on a GPU loads anywhere.
            state["flow_"] = copy.deepcopy(state["flow_"]).cpu()
            # both rebuilt from flow_ on load
            state.pop("tt_", None)
            state.pop("_float32_flow", None)
            state["device_"] = str(state["device_"])
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        if "inference_dtype" not in self.__dict__:
            # Pickled before the parameter existed, when every model was
            # evaluated in float64: it keeps its scores and samples.
            self.inference_dtype = "float64"
        if "flow_" in self.__dict__:
            device = torch.device(self.__dict__["device_"])
            if device.type == "cuda" and not torch.cuda.is_available():
                warnings.warn(
                    f"The model was fitted on {device}, which is not available here; "
                    "it is loaded on the CPU.",
                    RuntimeWarning,
                    stacklevel=2,
                )
                device = torch.device("cpu")
            self.flow_ = self.flow_.to(device)
            self.tt_ = _tt_of(self.flow_.q0)
            self.device_ = device
            self._float32_flow = _in_precision(self.flow_, torch.float32)

    def save(self, path) -> None:
        """Write the fitted model to a file that runs no code when loaded.

        The file is a zip of plain JSON (parameters, metadata, the package
        version) and a tensor-only ``torch.save`` of the model's state; see
        :meth:`load`. Callables (``log_target``, a custom ``flow``) are not
        stored. joblib and pickle work as well, but run code on load.

        Parameters
        ----------
        path : str or path-like
            Destination; an existing file is replaced.
        """
        from sktt_flow.estimator._persistence import save_estimator

        save_estimator(self, path)

    @classmethod
    def load(cls, path, *, log_target=None, flow=None):
        """Read a model written by :meth:`save`, rebuilding it without unpickling.

        Parameters
        ----------
        path : str or path-like
        log_target : callable, default=None
            A variational model's ``log_target``, which is not stored: scoring
            and sampling work without it, refitting needs it (a warning says so).
        flow : callable, default=None
            The custom flow callable of a model fitted with one (required then).

        Returns
        -------
        TensorizingFlowDensity
            The fitted estimator, with identical scores and samples.

        Raises
        ------
        ValueError
            If the file is not a model file, is truncated, corrupted or tampered
            with, holds anything but tensors, or needs ``flow``.
        """
        from sktt_flow.estimator._persistence import load_estimator

        return load_estimator(cls, path, log_target=log_target, flow=flow)
