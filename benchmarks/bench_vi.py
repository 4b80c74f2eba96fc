"""Variational inference: the tensorizing flow next to the same flow on a Gaussian base.

For every target of :mod:`sktt_flow.targets` in the suite, three variational
fits of :class:`sktt_flow.TensorizingFlowDensity` (``log_target=target.log_prob``,
``domain`` = the target's own box) and a Laplace approximation:

``tt-flow``
    The tensorizing flow with the estimator's default ``base="auto"``: a TT
    base built by TT-cross on the box (``tt_rank`` and ``n_basis`` per
    target, as in ``bench_cross.py`` where the target is there), then a
    RealNVP flow trained by reverse KL with the base frozen; where the
    cross's self-check is poor (ESS below 0.5) the same flow is also trained
    on the box's Gaussian, and the model is the mixture of the two with the
    best ELBO (the weight is in the notes; before 2026-12-05 this row was
    ``base="tt"``).
``gaussian-flow``
    The same flow, the same number of steps, batch size, optimiser, learning
    rate and early stopping, on a fixed diagonal Gaussian base
    (``base="gaussian"``: centred on the box, a quarter of its width as
    standard deviation): the ordinary normalizing flow the paper compares
    against.
``tt-alone``
    The TT base alone (``flow="none"``): TT-cross and nothing else.
``tempered-flow`` (only with ``--methods``: it costs several crosses)
    The same flow on a base of tempered TT layers (``base="tempered"``:
    the single train's coordinates, an outer Gaussian from its weighted
    draws, layers on the bridges ``h^beta g^(1 - beta)``, see
    :mod:`sktt_flow.flows.tempered`).
``laplace``
    No flow and no TT: the Gaussian ``N(mode, (-H)^{-1})`` at the highest
    mode found by L-BFGS in float64 (from the box's centre and four random
    points of its middle half) with ``H`` the autograd Hessian of
    ``log_prob`` there, scored like the others on 10,000 exact draws. It
    fails, with a message, where there is no proper mode in reach (the
    optimiser leaves the box while ``log_prob`` keeps growing, as in the
    centred eight-schools funnel, whose density is unbounded, and in Neal's
    funnel, whose mode ``v = -40.5`` lies far below its box) or where the
    Hessian is not negative definite.

Metrics per (target, method), from the estimator's own diagnostics on 10,000
fresh draws (``elbo_``, ``ess_``, ``log_normalizer_`` and its standard
error, ``n_target_evaluations_``, ``fit_time_``): reverse KL = log Z - ELBO and
|log Z estimate - log Z| where log Z is known (exactly, or for targets whose
``log_normalizer`` is None, such as the logistic-regression posteriors, the
importance-sampling reference of ``results/posterior_reference.json`` written by
``reference_log_z.py``, whose standard error is in the report), the normalised ESS, the target
evaluations and the wall time; and from ``--n-draws`` draws of
``sample(n, random_state=1)`` the mass per mode (for ``ManyWell``, whose 2^16
modes cannot be counted with a few thousand draws, the mass on each side of
each of the 16 double wells). Warnings raised while fitting (ConvergenceWarning
of TT-cross or of training, ...) are counted per row; a method that raises is
recorded as failed with its error message, and the suite goes on. With
``--mass-covering-iter`` every estimator method adds the mass-covering stage
after reverse KL; with ``--check-draws`` log Z and the ESS are also estimated
on that many fresh draws of each fitted model (the estimator's 10,000 leave a
standard error of about 0.01 at an ESS of 0.5).

Usage (from the repository root)::

    python benchmarks/bench_vi.py --quick                 # smoke test, a few minutes
    python benchmarks/bench_vi.py                         # full suite, about 13 min on one core
    python benchmarks/bench_vi.py --only gl1d-16 mog2d-40 # some targets
    python benchmarks/bench_vi.py --only funnel-10 --merge  # add rows to an earlier run
    python benchmarks/bench_vi.py --quick --only logreg-wine eight-schools --output /tmp
    python benchmarks/bench_vi.py --only funnel-10 --mass-covering-iter 60 --check-draws 200000

Writes ``vi_cpu.json`` (metadata and every number) and ``vi_cpu.md`` into
``--output`` (default ``benchmarks/results/``); with ``--quick`` the names end
in ``_quick``. With ``--merge`` the rows of the targets and methods run replace
the rows of the same targets and methods in an existing result file of the
same settings, and the metadata keeps one entry per run.
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
    lbfgs_ascent,
    load_average,
    run_metadata,
    write_results,
)

from sktt_flow import TensorizingFlowDensity
from sktt_flow.diagnostics import importance_diagnostics
from sktt_flow.targets import (
    Banana,
    DoubleRosenbrock,
    EightSchools,
    GinzburgLandau1D,
    GinzburgLandau2D,
    LogisticRegressionPosterior,
    ManyWell,
    MixtureOfGaussians,
    NealsFunnel,
    Target,
)
from sktt_flow.training import STEPS_PER_ITERATION

SEED = 0
METHODS = ("tt-flow", "gaussian-flow", "tt-alone", "laplace", "tempered-flow")
#: What runs without ``--methods``.
DEFAULT_METHODS = ("tt-flow", "gaussian-flow", "tt-alone", "laplace")
#: Estimator parameters of each method (on top of the shared ones).
METHOD_PARAMETERS: dict[str, dict[str, Any]] = {
    "tt-flow": {"base": "auto", "flow": "realnvp"},
    "gaussian-flow": {"base": "gaussian", "flow": "realnvp"},
    "tt-alone": {"base": "tt", "flow": "none"},
    "tempered-flow": {"base": "tempered", "flow": "realnvp"},
}
#: The Laplace method's settings (it is not an estimator).
LAPLACE_SETTINGS: dict[str, Any] = {
    "optimizer": "L-BFGS, strong Wolfe line search, float64",
    "n_starts": 5,
    "max_iter_per_start": 500,
    "hessian": "torch.autograd.functional.hessian",
    "n_diagnostic_draws": 10_000,
}
#: Reference log Z for targets without an exact one (written by reference_log_z.py).
REFERENCE_FILE = Path(__file__).resolve().parent / "results" / "posterior_reference.json"
#: A mode counts as found when it gets more than this fraction of its true
#: mass (1 / (4 K) for K equal modes).
FOUND_FRACTION = 0.25


# ------------------------------------------------------------------- targets
@dataclass(frozen=True)
class Case:
    """One target with its TT settings (the box is the target's ``domain``)."""

    key: str
    name: str
    factory: Callable[[], Target]
    n_basis: int
    tt_rank: int
    note: str = ""
    #: key of :data:`SYMMETRIES`: the group that leaves the target invariant,
    #: given as ``symmetry`` with ``--symmetry target``
    symmetry: str | None = None


def make_cases() -> list[Case]:
    """Every target of the suite, in report order."""
    return [
        Case(
            "gl1d-16",
            "GinzburgLandau1D(16)",
            lambda: GinzburgLandau1D(16),
            24,
            8,
            "settings of bench_cross.py",
        ),
        Case(
            "gl1d-32",
            "GinzburgLandau1D(32)",
            lambda: GinzburgLandau1D(32),
            24,
            8,
            "settings of bench_cross.py",
        ),
        Case(
            "gl1d-50",
            "GinzburgLandau1D(50)",
            lambda: GinzburgLandau1D(50),
            24,
            8,
            "settings of bench_cross.py (where TT-cross alone reaches ESS 0.01)",
        ),
        Case(
            "gl2d-8x8",
            "GinzburgLandau2D(8)",
            lambda: GinzburgLandau2D(8),
            24,
            16,
            "d = 64; log Z unknown: compare ELBOs (higher is better) and mode masses; "
            "rank 16 because at rank 8 TT-cross alone finds 1 of the 2 modes",
            symmetry="lattice-sign-flip",
        ),
        Case(
            "mog30d-5",
            "MoG paper_30d_5mode",
            MixtureOfGaussians.paper_30d_5mode,
            64,
            16,
            "settings of bench_cross.py (0.045-wide modes need the fine grid)",
        ),
        Case(
            "double-rosenbrock",
            "DoubleRosenbrock(11)",
            DoubleRosenbrock,
            256,
            8,
            "x_d has unit width on [-200, 200]: TT-cross alone gives ESS 0.002 at "
            "n_basis 64, 0.03 at 256",
            symmetry="last-sign-flip",
        ),
        Case(
            "mog2d-40",
            "MoG fab_40_modes",
            MixtureOfGaussians.fab_40_modes,
            96,
            32,
            "box of width ~92 for modes of std 1.31, so a fine grid; 40 modes need a "
            "high rank (n_basis 64, rank 16 gives ESS 0.86 alone)",
        ),
        Case("manywell-32", "ManyWell(32)", lambda: ManyWell(32), 24, 4, "product of 16 wells"),
        Case(
            "banana",
            "Banana(2, curvature 0.1)",
            lambda: Banana(2, curvature=0.1),
            64,
            8,
            "Haario's strongly twisted banana: mass along a parabola, x_1 of std 10 "
            "and x_2 of std 1 about it; log Z = 0",
        ),
        Case(
            "funnel-10",
            "NealsFunnel(10)",
            NealsFunnel,
            64,
            8,
            "x_i | v has std from 0.01 to 90 on [-100, 100]: no box grid resolves it",
        ),
        Case(
            "logreg-breast_cancer",
            "LogisticRegression(breast_cancer)",
            lambda: LogisticRegressionPosterior("breast_cancer"),
            32,
            8,
            "d = 31, posterior correlations up to 0.74 (Laplace condition number 85) in "
            "the original coordinates, box MAP +- 8 Laplace std (so its centre is the MAP); "
            "log Z by the IS reference",
        ),
        Case(
            "logreg-wine",
            "LogisticRegression(wine)",
            lambda: LogisticRegressionPosterior("wine"),
            32,
            8,
            "d = 14, a skewed posterior (mean up to 0.8 Laplace std from the MAP); box "
            "MAP +- 8 Laplace std (so its centre is the MAP); log Z by the IS reference",
        ),
        Case(
            "eight-schools",
            "EightSchools(centered)",
            EightSchools,
            64,
            8,
            "the centred funnel: theta_j within tau of mu, log tau in [-7, 4] (2e-4 of "
            "the mass outside the box); no proper mode, so no Laplace approximation",
        ),
        Case(
            "eight-schools-noncentered",
            "EightSchools(noncentered)",
            lambda: EightSchools(centered=False),
            64,
            8,
            "the same model without the funnel (eta_j = (theta_j - mu) / tau)",
        ),
    ]


QUICK_KEYS = ("gl1d-16", "mog2d-40", "funnel-10")


def _lattice_sign_flip(target: Target) -> np.ndarray:
    """``u -> -u^T`` on a square lattice (rows concatenated), shape (1, d, d):
    the sign flip alone is not a symmetry of GinzburgLandau2D, whose boundary
    values are +1 left and right and -1 top and bottom; the transpose swaps
    the sides back."""
    side = math.isqrt(target.n_features)
    index = np.arange(target.n_features).reshape(side, side)
    matrix = np.zeros((target.n_features, target.n_features))
    matrix[index.T.ravel(), index.ravel()] = -1.0
    return matrix[None]


def _last_sign_flip(target: Target) -> np.ndarray:
    """``x_d -> -x_d``, shape (1, d, d): the mirror that maps each mode of
    DoubleRosenbrock onto the other (``E_-`` is ``E_+`` with ``x_d`` mirrored)."""
    matrix = np.eye(target.n_features)
    matrix[-1, -1] = -1.0
    return matrix[None]


#: Groups of the targets that have one (``Case.symmetry``), for ``--symmetry target``.
SYMMETRIES: dict[str, Callable[[Target], Any]] = {
    "lattice-sign-flip": _lattice_sign_flip,
    "last-sign-flip": _last_sign_flip,
}


def symmetry_of(case: Case, target: Target, choice: str):
    """The ``symmetry`` of the TT methods: none, the plain sign flip, or the
    case's own group (``--symmetry``)."""
    if choice == "sign-flip":
        return "sign_flip"
    if choice == "target" and case.symmetry is not None:
        return SYMMETRIES[case.symmetry](target)
    return None


# ----------------------------------------------------------------- results
@dataclass
class Result:
    """Everything measured for one (target, method)."""

    key: str
    target: str
    method: str
    n_features: int | None = None
    tt_rank: int | None = None
    n_basis: int | None = None
    status: str = "ok"  # "ok" or "failed"
    error: str | None = None
    elbo: float | None = None
    start_elbo: float | None = None
    best_validation_elbo: float | None = None
    log_z_true: float | None = None
    log_z_true_source: str | None = None  # "exact", "reference" (IS) or None
    log_z_true_std_error: float | None = None
    reverse_kl: float | None = None
    log_z_estimate: float | None = None
    log_z_std_error: float | None = None
    log_z_abs_error: float | None = None
    ess: float | None = None
    mode_kind: str = "modes"
    n_mode_groups: int | None = None
    modes_found: int | None = None
    max_mode_deviation: float | None = None
    mode_masses: list[float] | None = None
    mode_truth: list[float] | None = None
    n_target_evaluations: int | None = None
    n_iter: int | None = None
    best_iter: int | None = None
    fit_seconds: float | None = None
    sample_seconds: float | None = None
    # --check-draws: log Z and ESS on that many fresh draws of the fitted model
    check_log_z: float | None = None
    check_log_z_std_error: float | None = None
    check_ess: float | None = None
    wall_seconds: float | None = None
    warnings: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    run: int = 0


# ------------------------------------------------------------------ modes
def _well_positive_mass() -> float:
    """Mass of ``x > 0`` under ``exp(-x^4 + 6 x^2 + x / 2)`` (one ManyWell well)."""
    x = np.linspace(-5.0, 5.0, 400_001)
    density = np.exp(-(x**4) + 6.0 * x**2 + 0.5 * x - 10.0)
    return float(density[x > 0].sum() / density.sum())


def mode_summary(target: Target, samples: torch.Tensor, result: Result) -> None:
    """Masses per mode (per well side for ManyWell) against the truth."""
    if isinstance(target, ManyWell):
        positive = (samples[:, 0::2] > 0).double().mean(0).numpy()
        truth = np.full(target.n_wells, _well_positive_mass())
        found = (positive > FOUND_FRACTION * truth) & (
            1.0 - positive > FOUND_FRACTION * (1.0 - truth)
        )
        result.mode_kind = "wells with both sides"
        result.n_mode_groups = target.n_wells
        result.modes_found = int(found.sum())
        result.mode_masses = positive.tolist()
        result.mode_truth = truth.tolist()
        result.max_mode_deviation = float(np.abs(positive - truth).max())
        return
    counts = np.bincount(target.mode_of(samples).numpy(), minlength=target.n_modes)
    masses = counts / samples.shape[0]
    if isinstance(target, MixtureOfGaussians):
        truth = target.weights / target.weights.sum()
    else:  # Ginzburg-Landau and double Rosenbrock: equal masses by symmetry
        truth = np.full(target.n_modes, 1.0 / target.n_modes)
    result.n_mode_groups = target.n_modes
    result.modes_found = int((masses > FOUND_FRACTION * truth).sum())
    result.mode_masses = masses.tolist()
    result.mode_truth = truth.tolist()
    result.max_mode_deviation = float(np.abs(masses - truth).max())


# --------------------------------------------------------------- ground truth
@dataclass(frozen=True)
class TrueLogZ:
    """The log Z a target is scored against, and where it comes from."""

    value: float | None
    source: str | None = None  # "exact" or "reference"
    std_error: float | None = None


def load_references(path: Path) -> dict[str, dict[str, Any]]:
    """The entries of ``posterior_reference.json`` by case key ({} when it is absent)."""
    if not path.exists():
        return {}
    return json.loads(path.read_text(encoding="utf-8"))["targets"]


def true_log_normalizer(
    case: Case, target: Target, references: dict[str, dict[str, Any]]
) -> TrueLogZ:
    """The target's own ``log_normalizer``, else the reference entry of the same key.

    A reference is used only if it describes this target (dimension, and the
    dataset and prior scale of a logistic regression); otherwise None, and the
    report says log Z is unknown.
    """
    if target.log_normalizer is not None:
        return TrueLogZ(target.log_normalizer, "exact", 0.0)
    entry = references.get(case.key)
    if entry is None or entry.get("n_features") != target.n_features:
        return TrueLogZ(None)
    if isinstance(target, LogisticRegressionPosterior) and (
        entry.get("dataset") != target.dataset or entry.get("prior_scale") != target.prior_scale
    ):
        return TrueLogZ(None)
    return TrueLogZ(float(entry["log_z"]), "reference", float(entry["std_error"]))


# ------------------------------------------------------------------ runner
def estimator(case: Case, target: Target, method: str, args: argparse.Namespace):
    """The estimator of one method, with the suite's shared settings."""
    parameters = dict(METHOD_PARAMETERS[method])
    n_basis = case.n_basis
    if args.domain == "auto":
        # Everything on auto, as a user without a box would leave it: the
        # resolution from the self-check (the tensorizing flow's base="auto"
        # then also trains the flow on the Laplace Gaussian and keeps the
        # ELBO-best mixture of the two models).
        n_basis = "auto"
    # the Gaussian and the tempered layers take no group
    symmetry = (
        symmetry_of(case, target, args.symmetry) if method in ("tt-flow", "tt-alone") else None
    )
    if symmetry is not None:
        parameters["symmetry"] = symmetry
    return TensorizingFlowDensity(
        **parameters,
        tt_rank=case.tt_rank,
        n_basis=n_basis,
        # "auto": no box; the estimator finds the modes, the coordinates and
        # the box itself (n_features only), as a user without a box would.
        domain=target.domain if args.domain == "target" else None,
        n_features=target.n_features,
        log_target=target.log_prob,
        max_iter=args.max_iter,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        n_iter_no_change=args.n_iter_no_change,
        mass_covering_iter=args.mass_covering_iter,
        mass_covering_batch_size=args.mass_covering_batch_size,
        random_state=SEED,
    )


def fresh_draws(
    model: TensorizingFlowDensity, target: Target, n_draws: int, random_state: int
) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    """``n_draws`` fresh draws ``x`` of the fitted model, ``log h(x)`` and
    ``log q(x)`` (float64; the target scored in chunks of 65,536 rows)."""
    x, log_q = model.sample_and_score(n_draws, random_state=random_state)
    log_h = torch.cat(
        [target.log_prob(rows) for rows in torch.as_tensor(x).split(1 << 16)]
    ).double()
    return x, log_h, torch.as_tensor(log_q)


def check_on_fresh_draws(
    model: TensorizingFlowDensity,
    target: Target,
    n_draws: int,
    log_z: float | None,
    result: Result,
) -> None:
    """log Z and the ESS on ``n_draws`` fresh draws of the fitted model (more
    than the estimator's 10,000, whose standard error hides a bias of 0.01)."""
    _, log_h, log_q = fresh_draws(model, target, n_draws, SEED + 3)
    diagnostics = importance_diagnostics(log_h, log_q)
    result.check_log_z = diagnostics.log_normalizer
    result.check_log_z_std_error = diagnostics.log_normalizer_std_error
    result.check_ess = diagnostics.ess
    error = "" if log_z is None else f", error {diagnostics.log_normalizer - log_z:+.4f}"
    result.notes.append(
        f"on {n_draws:,} fresh draws: log Z {diagnostics.log_normalizer:.4f} (standard "
        f"error {diagnostics.log_normalizer_std_error:.1e}{error}), ESS {diagnostics.ess:.3f}"
    )


def run_method(
    case: Case, target: Target, method: str, args: argparse.Namespace, truth: TrueLogZ
) -> Result:
    """Fit one method on one target and measure it; failures become rows."""
    if method == "laplace":
        return run_laplace(case, target, args, truth)
    result = Result(case.key, case.name, method, n_features=target.n_features)
    if method != "gaussian-flow":
        result.tt_rank, result.n_basis = case.tt_rank, case.n_basis
    log_z = truth.value
    result.log_z_true = log_z
    result.log_z_true_source, result.log_z_true_std_error = truth.source, truth.std_error
    start = time.perf_counter()
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = estimator(case, target, method, args).fit()
            result.fit_seconds = model.fit_time_
            result.elbo = model.elbo_
            result.ess = model.ess_
            result.log_z_estimate = model.log_normalizer_
            result.log_z_std_error = model.log_normalizer_std_error_
            result.n_target_evaluations = model.n_target_evaluations_
            result.n_iter = model.n_iter_
            if model.tt_ is not None:
                result.n_basis = model.tt_.n_basis
            order = getattr(model.flow_.q0, "order", None)
            if order is not None:
                note = f"symmetrised base (group of order {order})"
                if args.domain == "target":
                    # the base's coordinates are the target's: its own mode masses
                    with torch.no_grad():
                        base_draws = model.flow_.q0.sample(
                            args.n_draws, generator=torch.Generator().manual_seed(SEED + 2)
                        )
                    masses = np.bincount(
                        target.mode_of(base_draws.double()).numpy(), minlength=target.n_modes
                    ) / float(args.n_draws)
                    note += f": base mode masses {np.round(masses, 4).tolist()}"
                if hasattr(model, "base_ess_"):  # the self-check, with domain="auto"
                    note += (
                        f"; base self-check ELBO {model.base_elbo_:.4f}, ESS "
                        f"{model.base_ess_:.4f}, preconditioner {model.preconditioner_}"
                    )
                result.notes.append(note)
            if method == "tt-flow" and model.base_ != "tt":
                result.notes.append(
                    f"base='auto' kept the {model.base_} base: its model scored the better ELBO"
                )
            elif method == "tt-flow" and model.companion_weight_ > 0:
                result.notes.append(
                    "base='auto': the mixture of the models on the TT and on the Gaussian, "
                    f"the Gaussian's weight {model.companion_weight_:.3g} (the best ELBO)"
                )
            if model.validation_scores_:
                scores = model.validation_scores_
                result.start_elbo = scores[0]
                result.best_iter = int(np.nanargmax(scores))
                result.best_validation_elbo = float(np.nanmax(scores))
            if log_z is not None:
                result.reverse_kl = log_z - model.elbo_
                result.log_z_abs_error = abs(model.log_normalizer_ - log_z)
            sampled = time.perf_counter()
            samples = torch.as_tensor(model.sample(args.n_draws, random_state=SEED + 1))
            result.sample_seconds = time.perf_counter() - sampled
            mode_summary(target, samples, result)
            if args.check_draws:
                check_on_fresh_draws(model, target, args.check_draws, log_z, result)
    except Exception as error:  # a failing method is a result, not a crash
        result.status = "failed"
        result.error = f"{type(error).__name__}: {error}"
        result.notes.append(traceback.format_exc(limit=4).strip().splitlines()[-1])
    result.warnings = count_warnings(caught)
    result.wall_seconds = time.perf_counter() - start
    return result


class CountingTarget:
    """``target.log_prob`` that counts the points it is evaluated at."""

    def __init__(self, target: Target):
        self.target = target
        self.n_evaluations = 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.n_evaluations += x.shape[0]
        return self.target.log_prob(x)


def find_mode(
    log_prob: Callable[[torch.Tensor], torch.Tensor], domain: np.ndarray
) -> tuple[torch.Tensor, float, int, list[str]]:
    """Highest point that L-BFGS reaches from the box centre and random starts.

    Returns the point, its log-density, the L-BFGS iterations spent on it and
    notes. Raises RuntimeError where no start ends at a finite point inside
    (or near) the box, naming where the best one went.
    """
    low, high = domain[:, 0], domain[:, 1]
    rng = np.random.default_rng(SEED)
    centre, half = 0.5 * (low + high), 0.25 * (high - low)
    starts = [centre] + [
        centre + half * rng.uniform(-1.0, 1.0, size=centre.shape)
        for _ in range(LAPLACE_SETTINGS["n_starts"] - 1)
    ]
    best: tuple[torch.Tensor, float, int, int] | None = None
    escaped: list[tuple[float, np.ndarray]] = []
    for index, start in enumerate(starts):
        # overflow on the way out of the box is ignored
        point, n_iter = lbfgs_ascent(log_prob, start, LAPLACE_SETTINGS["max_iter_per_start"])
        with torch.no_grad():
            value = float(log_prob(point[None]))
        where = point.numpy()
        width = high - low
        inside = bool(np.all((where >= low - width) & (where <= high + width)))
        if not (np.all(np.isfinite(where)) and math.isfinite(value) and inside):
            escaped.append((value, where))
            continue
        # ties (starts converging to the same mode) go to the earlier start
        if best is None or value > best[1] + 1e-9 * (1.0 + abs(best[1])):
            best = (point, value, n_iter, index)
    notes = []
    if escaped:
        notes.append(
            f"{len(escaped)} of {len(starts)} L-BFGS starts left the box (more than one box "
            "width out) or reached a non-finite log-density"
        )
    if best is None:
        value, where = max(escaped, key=lambda item: item[0] if math.isfinite(item[0]) else -1)
        outside = np.flatnonzero((where < low) | (where > high))
        shown = ", ".join(f"x[{k}] = {where[k]:.3g}" for k in outside[:3])
        raise RuntimeError(
            f"no mode in reach: every L-BFGS start left the box (by more than its width) "
            f"while log_prob grew, to {value:.4g} at {shown} (box "
            f"{domain[outside[:3]].tolist()}): the density is unbounded or its mode lies far "
            "outside the box"
        )
    notes.append(
        f"best of {len(starts)} starts: "
        + ("the box centre" if best[3] == 0 else f"random start {best[3]}")
    )
    return best[0], best[1], best[2], notes


def run_laplace(case: Case, target: Target, args: argparse.Namespace, truth: TrueLogZ) -> Result:
    """The Laplace approximation at the highest mode found, scored like the fits."""
    result = Result(case.key, case.name, "laplace", n_features=target.n_features)
    result.log_z_true = truth.value
    result.log_z_true_source, result.log_z_true_std_error = truth.source, truth.std_error
    counting = CountingTarget(target)
    start = time.perf_counter()
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            mode, value, n_iter, notes = find_mode(counting, target.domain)
            result.notes.extend(notes)
            result.n_iter = n_iter
            counting.n_evaluations += 1  # the Hessian's forward pass
            hessian = torch.autograd.functional.hessian(
                lambda point: target.log_prob(point[None]).sum(), mode
            )
            try:
                factor = torch.linalg.cholesky(-0.5 * (hessian + hessian.T))
            except RuntimeError as error:
                raise RuntimeError(
                    f"the Hessian at the best point (log_prob {value:.4g}) is not negative "
                    "definite: no Gaussian there"
                ) from error
            # covariance = (-H)^{-1} = L^{-T} L^{-1}: draws mode + L^{-T} z
            d = target.n_features
            log_det_covariance = -2.0 * float(torch.log(torch.diagonal(factor)).sum())

            def draw(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
                generator = torch.Generator().manual_seed(seed)
                z = torch.randn(n, d, generator=generator, dtype=torch.float64)
                x = mode + torch.linalg.solve_triangular(factor.T, z.T, upper=True).T
                log_q = -0.5 * z.square().sum(1) - 0.5 * (
                    d * math.log(2.0 * math.pi) + log_det_covariance
                )
                return x, log_q

            draws, log_q = draw(LAPLACE_SETTINGS["n_diagnostic_draws"], SEED)
            with torch.no_grad():
                log_h = counting(draws)
            diagnostics = importance_diagnostics(log_h, log_q)
            result.fit_seconds = time.perf_counter() - start
            result.elbo = diagnostics.elbo
            result.ess = diagnostics.ess
            result.log_z_estimate = diagnostics.log_normalizer
            result.log_z_std_error = diagnostics.log_normalizer_std_error
            result.n_target_evaluations = counting.n_evaluations
            if truth.value is not None:
                result.reverse_kl = truth.value - diagnostics.elbo
                result.log_z_abs_error = abs(diagnostics.log_normalizer - truth.value)
            result.notes.append(
                f"mode log_prob {value:.6g} after {n_iter} L-BFGS iterations; Laplace "
                f"log Z (log_prob + log det(2 pi Sigma) / 2) "
                f"{value + 0.5 * (d * math.log(2 * math.pi) + log_det_covariance):.6g}"
            )
            if isinstance(target, LogisticRegressionPosterior):
                gap = np.abs(mode.numpy() - target.map_estimate).max()
                result.notes.append(f"max |mode - target.map_estimate| = {gap:.1e}")
            sampled = time.perf_counter()
            samples, _ = draw(args.n_draws, SEED + 1)
            result.sample_seconds = time.perf_counter() - sampled
            mode_summary(target, samples, result)
    except Exception as error:  # a failing method is a result, not a crash
        result.status = "failed"
        result.error = f"{type(error).__name__}: {error}"
    result.warnings = count_warnings(caught)
    result.wall_seconds = time.perf_counter() - start
    return result


def summary_line(result: Result) -> str:
    """One line of progress output."""
    if result.status == "failed":
        return f"FAILED {result.error}"
    kl = "n/a" if result.reverse_kl is None else f"{result.reverse_kl:.3g}"
    return (
        f"ELBO {result.elbo:.4g}, KL {kl}, ESS {result.ess:.3g}, "
        f"{result.mode_kind} {result.modes_found}/{result.n_mode_groups}, "
        f"{result.n_target_evaluations} evals, {result.fit_seconds:.1f} s, "
        f"{result.n_iter} iters, warnings {sum(result.warnings.values())}"
    )


def warm_up() -> None:
    """An untimed tiny fit of each method, so one-time costs miss the first row."""
    target = MixtureOfGaussians(np.zeros((1, 2)), np.ones(1))
    for parameters in METHOD_PARAMETERS.values():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                TensorizingFlowDensity(
                    **parameters,
                    tt_rank=2,
                    n_basis=8,
                    domain=target.domain,
                    log_target=target.log_prob,
                    max_iter=1,
                    random_state=SEED,
                ).fit()
            except Exception as error:  # the real run reports failures
                print(f"warm-up failed: {type(error).__name__}: {error}", flush=True)


# ----------------------------------------------------------------- metadata
def settings(args: argparse.Namespace) -> dict[str, Any]:
    """What must agree between runs merged into one file."""
    return {
        "quick": args.quick,
        "domain": args.domain,
        "max_iter": args.max_iter,
        "steps_per_iteration": STEPS_PER_ITERATION,
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "n_iter_no_change": args.n_iter_no_change,
        "mass_covering_iter": args.mass_covering_iter,
        "mass_covering_batch_size": args.mass_covering_batch_size,
        "check_draws": args.check_draws,
        "flow": "realnvp",
        "n_flow_layers": TensorizingFlowDensity().n_flow_layers,
        "hidden_units": TensorizingFlowDensity().hidden_units,
        "dtype": TensorizingFlowDensity().dtype,
        "random_state": SEED,
        "n_draws_for_modes": args.n_draws,
        "found_fraction": FOUND_FRACTION,
        "symmetry": args.symmetry,
        "methods": {name: METHOD_PARAMETERS.get(name, LAPLACE_SETTINGS) for name in args.methods},
    }


def case_metadata(case: Case, target: Target, truth: TrueLogZ) -> dict[str, Any]:
    """The target's settings as reported."""
    domain = target.domain
    return {
        "key": case.key,
        "name": case.name,
        "n_features": target.n_features,
        "n_modes": target.n_modes,
        "log_normalizer": truth.value,
        "log_normalizer_source": truth.source,
        "log_normalizer_std_error": truth.std_error,
        "tt_rank": case.tt_rank,
        "n_basis": case.n_basis,
        "domain_low_range": [float(domain[:, 0].min()), float(domain[:, 0].max())],
        "domain_high_range": [float(domain[:, 1].min()), float(domain[:, 1].max())],
        "note": case.note,
    }


# ----------------------------------------------------------------- reports
def _count(value: int | None) -> str:
    if value is None:
        return "n/a"
    return f"{value / 1e6:.2f}M" if value >= 1e6 else f"{value / 1e3:.1f}k"


def _modes(r: dict[str, Any]) -> str:
    if r["modes_found"] is None:
        return "n/a"
    text = f"{r['modes_found']}/{r['n_mode_groups']}"
    if r["modes_found"] < r["n_mode_groups"]:
        text = f"**{text}**"
    return text + (" wells" if r["mode_kind"] != "modes" else "")


def markdown_table(results: Sequence[dict[str, Any]]) -> list[str]:
    """The main table, one row per (target, method)."""
    header = (
        "| target | d | method | rank / n_basis | ELBO | reverse KL | log Z est (se) | "
        "abs dlogZ | ESS | modes found | max mode dev | evals | fit s | iters (best) | "
        "warnings | status |"
    )
    lines = [header, header_rule(header)]
    for r in results:
        settings_text = "n/a" if r["tt_rank"] is None else f"{r['tt_rank']} / {r['n_basis']}"
        if r["status"] == "failed":
            status = f"**FAILED**: {(r['error'] or '')[:150]}"
        else:
            status = "ok"
        log_z = (
            "n/a"
            if r["log_z_estimate"] is None
            else f"{format_value(r['log_z_estimate'], '.4g')} "
            f"({format_value(r['log_z_std_error'], '.1e')})"
        )
        if r["n_iter"] is None:
            iters = "n/a"
        elif r["best_iter"] is None:
            iters = str(r["n_iter"])
        else:
            iters = f"{r['n_iter']} ({r['best_iter']})"
        lines.append(
            f"| {r['target']} | {r['n_features']} | {r['method']} | {settings_text} | "
            f"{format_value(r['elbo'], '.4g')} | {format_value(r['reverse_kl'], '.3g')} | "
            f"{log_z} | {format_value(r['log_z_abs_error'], '.2g')} | "
            f"{format_value(r['ess'], '.3g')} | {_modes(r)} | "
            f"{format_value(r['max_mode_deviation'], '.3f')} | "
            f"{_count(r['n_target_evaluations'])} | {format_value(r['fit_seconds'], '.3g')} | "
            f"{iters} | {sum(r['warnings'].values())} | {status} |"
        )
    return lines


def comparison(results: Sequence[dict[str, Any]], keys: Sequence[str]) -> list[str]:
    """Per target: which method is best on each measure (ties within noise noted)."""
    lines = [
        "| target | best ELBO | best ESS | best abs dlogZ | most modes found | "
        "tt-flow vs gaussian-flow (ELBO gain) | tt-flow vs tt-alone (ELBO gain) |",
        "|---|---|---|---|---|---|---|",
    ]
    for key in keys:
        rows = {r["method"]: r for r in results if r["key"] == key and r["status"] == "ok"}
        if not rows:
            continue
        name = next(r["target"] for r in results if r["key"] == key)

        def best(field_name: str, lowest: bool = False, rows=rows) -> str:
            values = {m: as_float(r[field_name]) for m, r in rows.items()}
            values = {m: v for m, v in values.items() if v is not None and math.isfinite(v)}
            if not values:
                return "n/a"
            top = (min if lowest else max)(values.values())
            winners = [m for m, v in values.items() if abs(v - top) <= 1e-9 * max(1, abs(top))]
            return f"{' = '.join(winners)} ({top:.3g})"

        def gain(other: str, rows=rows) -> str:
            if "tt-flow" not in rows or other not in rows:
                return "n/a"
            a, b = as_float(rows["tt-flow"]["elbo"]), as_float(rows[other]["elbo"])
            if a is None or b is None or not (math.isfinite(a) and math.isfinite(b)):
                return "n/a"
            return f"{a - b:+.3g}"

        lines.append(
            f"| {name} | {best('elbo')} | {best('ess')} | "
            f"{best('log_z_abs_error', lowest=True)} | {best('modes_found')} | "
            f"{gain('gaussian-flow')} | {gain('tt-alone')} |"
        )
    return lines


def markdown_report(payload: dict[str, Any]) -> str:
    """Metadata, the tables, per-row notes and how to read the columns."""
    meta, results = payload["metadata"], payload["results"]
    s = meta["settings"]
    keys = [c["key"] for c in payload["cases"]]
    all_keys = [case.key for case in make_cases()]
    missing = [key for key in all_keys if key not in keys]
    lines = [
        "# Variational inference: tensorizing flow vs the same flow on a Gaussian base, CPU",
        "",
    ]
    if s["quick"]:
        lines += [
            f"**Quick run** (smoke test): {s['max_iter']} iterations at most, a subset "
            "of targets; not representative of converged fits.",
            "",
        ]
    if missing:
        lines += [f"**Partial run**: targets not run: {', '.join(missing)}.", ""]
    for index, run in enumerate(meta["runs"]):
        versions = ", ".join(f"{k} {v}" for k, v in run["versions"].items())
        lines += [
            f"- run {index}: date {run['date']}; command: `{run['command']}`; targets "
            f"{', '.join(run['targets'])}",
            f"  - CPU: {run['cpu']} ({run['cpu_count']} CPUs), torch threads "
            f"{run['torch_num_threads']}, OMP_NUM_THREADS={run['omp_num_threads']}; load "
            f"average at start {run['load_average_start']}, at end "
            f"{run.get('load_average_end')}; wall time {run.get('wall_time_s', 0):.0f} s",
            f"  - versions: {versions}; sktt_flow {run['sktt_flow_version']} (git "
            f"{run['git']}, sources sha256 {run['sktt_flow_source_sha256'][:12]})",
        ]
    lines += [
        f"- shared by the flows of both bases: RealNVP, {s['n_flow_layers']} layers, "
        f"{s['hidden_units']} hidden units, {s['dtype']}; Adam, learning rate "
        f"{s['learning_rate']} (halved on plateaus), batch {s['batch_size']}, at most "
        f"{s['max_iter']} iterations of {s['steps_per_iteration']} steps "
        f"(= {s['max_iter'] * s['steps_per_iteration']:,} steps), early stopping after "
        f"{s['n_iter_no_change']} iterations without a better validation ELBO; "
        f"random_state {s['random_state']}",
        f"- diagnostics on the estimator's 10,000 fresh draws; mode masses on "
        f"{s['n_draws_for_modes']:,} draws of `sample(n, random_state=1)`",
    ]
    if s.get("mass_covering_iter"):
        lines.append(
            f"- after reverse KL, the mass-covering stage (forward KL by self-normalised "
            f"importance sampling) for at most {s['mass_covering_iter']} iterations "
            f"(`mass_covering_iter`) of steps of {s.get('mass_covering_batch_size', 4096):,} "
            "draws, on every estimator method"
        )
    if s.get("check_draws"):
        lines.append(
            f"- log Z and ESS also on {s['check_draws']:,} fresh draws of each fitted model "
            "(in the notes)"
        )
    lines += [
        "",
        *markdown_table(results),
        "",
        "TT settings and boxes per target (the box is the target's own `domain`):",
        "",
    ]
    for c in payload["cases"]:
        lows, highs = c["domain_low_range"], c["domain_high_range"]
        box = (
            f"[{lows[0]:g}, {highs[0]:g}]^{c['n_features']}"
            if lows[0] == lows[1] and highs[0] == highs[1]
            else f"low in [{lows[0]:g}, {lows[1]:g}], high in [{highs[0]:g}, {highs[1]:g}]"
        )
        log_z = "unknown" if c["log_normalizer"] is None else f"{c['log_normalizer']:.6g}"
        if c.get("log_normalizer_source") == "reference":
            log_z += (
                f" (importance-sampling reference of reference_log_z.py, standard error "
                f"{c['log_normalizer_std_error']:.1e})"
            )
        lines.append(
            f"- {c['name']}: d {c['n_features']}, {c['n_modes']} mode(s), log Z {log_z}, box "
            f"{box}; tt_rank {c['tt_rank']}, n_basis {c['n_basis']}"
            + (f" ({c['note']})" if c["note"] else "")
        )
    lines += [
        "",
        "## Which method wins, per target",
        "",
        "Computed from the table above (reverse KL = log Z - ELBO, so the best ELBO is "
        "also the best reverse KL; ESS and ELBO cannot see a missed mode, abs dlogZ and "
        "modes found can). Positive ELBO gains favour the tensorizing flow.",
        "",
        *comparison(results, keys),
        "",
        "## Columns",
        "",
        "- **ELBO**: E_q[log h - log q] (estimator's `elbo_`); **reverse KL** = log Z - "
        "ELBO where log Z is known (slightly negative values are sampling noise). For "
        "targets without an exact log Z (the logistic-regression posteriors) log Z is the "
        "importance-sampling reference of `reference_log_z.py` "
        "(`results/posterior_reference.json`), whose standard error (listed with the "
        "target above) adds to the uncertainty of both columns.",
        "- **laplace**: the Gaussian at the highest mode L-BFGS finds (box centre and 4 "
        "random starts, float64) with the inverse negative autograd Hessian as covariance, "
        "scored on 10,000 exact draws like the fits; evals count the optimiser's, the "
        "Hessian's forward pass and the draws'.",
        "- **log Z est (se)**: importance-sampling estimate `log_normalizer_` and its "
        "delta-method standard error; **abs dlogZ** = |estimate - log Z|.",
        "- **ESS**: normalised effective sample size of the importance weights h / q.",
        f"- **modes found**: modes whose share of the draws exceeds {FOUND_FRACTION:g} of "
        "their true mass (1/2 each for Ginzburg-Landau and double Rosenbrock, the weights "
        "for mixtures); for ManyWell, of the 16 double wells, those where each side gets "
        "more than a quarter of its true mass (0.844 / 0.156). **max mode dev**: largest "
        "|share - true mass| over modes (ManyWell: over the wells' positive side).",
        "- **evals**: target evaluations in `fit` (`n_target_evaluations_`: TT-cross, "
        "training, validation and the 10,000 diagnostic draws).",
        "- **fit s**: `fit_time_` (one torch thread); **iters (best)**: iterations of "
        "reverse-KL training run and the one of the best validation ELBO, whose state "
        "was kept up to the 1e-4 improvement threshold (0 = the starting "
        "model, i.e. the flow at the identity on its base).",
        "- **warnings**: warnings raised while fitting (texts in the notes).",
        "",
        "## Notes per row",
        "",
    ]
    for r in results:
        notes = list(r["notes"])
        if r["start_elbo"] is not None and r["method"] != "tt-alone":
            notes.append(
                f"validation ELBO at start {format_value(r['start_elbo'], '.4g')}, best "
                f"{format_value(r['best_validation_elbo'], '.4g')}"
            )
        if r["sample_seconds"] is not None:
            notes.append(f"drawing the mode-mass samples took {r['sample_seconds']:.2f} s")
        for text, count in r["warnings"].items():
            notes.append(f"{count} x {text}")
        if r["error"]:
            notes.append(f"error: {r['error']}")
        if notes:
            lines.append(f"- {r['target']} / {r['method']}: " + "; ".join(notes))
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------- main
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    keys = [case.key for case in make_cases()]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"targets {', '.join(QUICK_KEYS)}, 10 iterations, 2,000 draws: a smoke test",
    )
    parser.add_argument(
        "--only", nargs="+", choices=keys, metavar="NAME", help=f"targets: {', '.join(keys)}"
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=Path(__file__).resolve().parent / "results",
        help="directory for vi_cpu.json and .md (default: benchmarks/results/)",
    )
    parser.add_argument(
        "--merge",
        action="store_true",
        help="replace the rows of the targets run in an existing result file of the "
        "same settings, keeping the others",
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=METHODS,
        default=list(DEFAULT_METHODS),
        help="methods to run",
    )
    parser.add_argument(
        "--reference",
        type=Path,
        default=REFERENCE_FILE,
        help="reference log Z for targets without an exact one (default "
        "benchmarks/results/posterior_reference.json, from reference_log_z.py)",
    )
    parser.add_argument(
        "--domain",
        choices=("target", "auto"),
        default="target",
        help="the box of the TT and Gaussian bases: each target's own (default), or none "
        "given (domain='auto': mode search, Laplace coordinates, self-check); results of "
        "'auto' go to vi_cpu_auto.*",
    )
    parser.add_argument(
        "--symmetry",
        choices=("none", "sign-flip", "target"),
        default="none",
        help="symmetrise the TT base of the TT methods: not (default), under x -> -x, or "
        "under the target's own group where the case has one (gl2d-8x8: u -> -u^T); "
        "results go to vi_cpu_sym-<choice>.*",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--max-iter", type=int, default=None, help="default 300, quick 10")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--n-iter-no-change", type=int, default=None, help="default 20, quick 5")
    parser.add_argument(
        "--n-draws", type=int, default=None, help="draws for mode masses (10000, quick 2000)"
    )
    parser.add_argument(
        "--mass-covering-iter",
        type=int,
        default=0,
        help="mass_covering_iter of every estimator method (default 0: none); results go "
        "to vi_cpu*_mass-covering.*",
    )
    parser.add_argument(
        "--mass-covering-batch-size",
        type=int,
        default=TensorizingFlowDensity().mass_covering_batch_size,
        help="mass_covering_batch_size of every estimator method (default: the "
        "estimator's); other values go to vi_cpu*_mass-covering-N.*",
    )
    parser.add_argument(
        "--check-draws",
        type=int,
        default=0,
        help="also estimate log Z and the ESS on this many fresh draws of each fitted model",
    )
    args = parser.parse_args(argv)
    args.max_iter = args.max_iter if args.max_iter is not None else (10 if args.quick else 300)
    if args.n_iter_no_change is None:
        args.n_iter_no_change = 5 if args.quick else 20
    args.n_draws = args.n_draws or (2000 if args.quick else 10_000)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the suite and write the results; returns the exit status."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    cases = make_cases()
    keys = args.only or (QUICK_KEYS if args.quick else [case.key for case in cases])
    cases = [case for case in cases if case.key in keys]
    run = run_metadata("targets", [item.key for item in cases])
    print(
        f"VI benchmark on {run['cpu']}, {run['torch_num_threads']} threads, "
        f"quick={args.quick}, targets {', '.join(run['targets'])}",
        flush=True,
    )
    warm_up()
    references = load_references(args.reference)
    start = time.perf_counter()
    results: list[Result] = []
    case_meta = []
    for case in cases:
        target = case.factory()
        truth = true_log_normalizer(case, target, references)
        case_meta.append(case_metadata(case, target, truth))
        for method in args.methods:
            print(f"[{case.name}] {method} ...", flush=True)
            result = run_method(case, target, method, args, truth)
            if case.note and method == "tt-flow":
                result.notes.insert(0, case.note)
            print(f"    {summary_line(result)}", flush=True)
            results.append(result)
    run["wall_time_s"] = time.perf_counter() - start
    run["load_average_end"] = load_average()
    payload: dict[str, Any] = {
        "metadata": {"settings": settings(args), "runs": [run]},
        "cases": case_meta,
        "results": [asdict(result) for result in results],
    }
    stem = "vi_cpu" + ("_auto" if args.domain == "auto" else "") + ("_quick" if args.quick else "")
    if args.symmetry != "none":
        stem += f"_sym-{args.symmetry}"
    if args.mass_covering_iter:
        stem += "_mass-covering"
        if args.mass_covering_batch_size != TensorizingFlowDensity().mass_covering_batch_size:
            stem += f"-{args.mass_covering_batch_size}"
    write_results(
        payload,
        args.output,
        stem,
        markdown_report,
        merge=args.merge,
        order=[case.key for case in make_cases()],
        methods=METHODS,
    )
    print(f"Wrote {args.output / stem}.json and .md in {run['wall_time_s']:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
