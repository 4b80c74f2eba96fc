"""Fit a :class:`~sktt_flow.TTDistribution` to a log-density.

The driver of :meth:`TTDistribution.from_log_density
<sktt_flow.TTDistribution.from_log_density>`, the base of variational
inference (Khoo, Lindsey and Zhao, "Tensorizing flows: a tool for variational
inference", arXiv:2305.02460, 2023). Given an unnormalised
log-density ``log h`` on a box, TT-cross (:func:`~sktt_flow.tt.cross.tt_cross`;
Oseledets and Tyrtyshnikov, "TT-cross approximation of multidimensional
arrays", Linear Algebra Appl. 432, 2010) interpolates ``sqrt(h)`` on the
product grid of ``n_basis`` Gauss–Legendre nodes per coordinate. The nodal
values map exactly to Legendre coefficients
(:func:`~sktt_flow.tt.algebra.nodal_to_coefficients`), and the train is rounded
to ``tt_rank`` and normalised, so that ``p_TT`` is proportional to the square
of the polynomial interpolant of ``sqrt(h)``.

Every half-sweep's train is built into the distribution it would give and
checked on exact draws of itself (the *self-check* of
:mod:`sktt_flow.tt.cross`); the train with the largest ELBO is returned.
``n_basis="auto"`` repeats cross at growing ``n_basis`` while the resolution
check fails and the self-check improves. A returned train that fails its
self-check raises a :class:`~sklearn.exceptions.ConvergenceWarning` naming the
remedies.
"""

from __future__ import annotations

import math
import numbers
import sys
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning

from sktt_flow.tt import distribution as _distribution_module
from sktt_flow.tt.algebra import nodal_to_coefficients, round_tt, scale_to_unit_max
from sktt_flow.tt.basis import gauss_legendre
from sktt_flow.tt.cross import CrossReport, SelfCheck, tt_cross
from sktt_flow.tt.distribution import TTDistribution
from sktt_flow.utils.random import torch_generator
from sktt_flow.utils.validation import check_domain, check_positive_int

__all__ = ["fit_log_density"]

#: First size and growth factor of ``n_basis="auto"``.
AUTO_N_BASIS_START = 16
AUTO_N_BASIS_GROWTH = 1.5

#: Self-check ESS under which ``n_basis="auto"`` tries the next size even
#: when the resolution check passes: mass in a narrow region (a funnel's
#: neck) holds too little of the coefficients' energy to show in their
#: decay (NealsFunnel(10) on [-9, 9] x [-100, 100]^9: resolved at 24 with
#: ESS 0.002, ELBO -1.2 at 64).
POOR_BASE_ESS = 0.1

#: Reverse KL (nats) of the best size so far beyond what the spread of its
#: weights explains, above which ``n_basis="auto"`` tries the next size even
#: when the resolution check passes (with one size of patience, as for
#: :data:`POOR_BASE_ESS`; see :func:`_leaks`). The resolution check reads the
#: energy in the top quarter of the Legendre degrees, and the ELBO's gain is
#: judged against its noise, which a leak makes large: five exponentials in
#: log coordinates, whose log-density falls like ``-e^u`` above the mode, on
#: a box of 18 of their standard deviations, stopped at 24 (1.1e-3 of the
#: energy in the top quarter, a gain of 0.11 over 16 within the noise of
#: 16's ELBO, standard error 0.09) with ESS 0.997 and a reverse KL of 0.061,
#: nearly all from the few draws the train put where the target is below
#: ``e^-100`` of them; 36 gives 2e-5.
RESOLVED_GROWTH_KL = 0.01

#: Files of the entry points of this driver, whose frames its warnings skip.
_ENTRY_POINT_FILES = frozenset({__file__, _distribution_module.__file__})


def fit_log_density(
    log_density,
    domain,
    *,
    n_features: int | None = None,
    tt_rank: int = 8,
    n_basis: int | str = 16,
    tol: float = 1e-4,
    max_evals: int | None = None,
    max_sweeps: int = 20,
    batch_size: int = 100_000,
    n_seeds: int = 128,
    n_seed_steps: int = 25,
    known_seeds=None,
    cross_method: str = "one-site",
    kick_rank: int = 2,
    patience: int = 3,
    n_check_samples: int = 2000,
    min_ess: float = 0.5,
    resolution_tol: float = 1e-3,
    max_n_basis: int = 128,
    tail_weight: float = 1e-9,
    random_state=None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float64,
    verbose: int = 0,
    callable_name: str = "log_density",
) -> TTDistribution:
    """Build the train from an unnormalised log-density by TT-cross.

    TT-cross (:mod:`sktt_flow.tt.cross`) interpolates ``sqrt(h)`` on the
    product grid of ``n_basis`` Gauss–Legendre nodes per coordinate; the
    nodal values map exactly to Legendre coefficients, and the train is
    rounded to ``tt_rank`` and normalised, so that ``p_TT`` is proportional
    to the square of the polynomial interpolant of ``sqrt(h)``.

    Every half-sweep's train is built into the distribution it would give
    and checked on ``n_check_samples`` exact draws of itself (the
    *self-check*: ESS, ELBO, reverse-KL and ``log Z`` estimates, the
    relative error on off-grid held-out points, and the resolution check
    of the Legendre spectrum; see :func:`~sktt_flow.tt.cross.tt_cross`).
    The train with the largest ELBO is returned; cross stops when it has
    not improved for ``patience`` half-sweeps.

    Parameters
    ----------
    log_density : callable
        ``log_density(x)``: a tensor (m, d) of points (in ``dtype``, on
        ``device``) to m values of ``log h`` (tensor or array-like).
        ``-inf`` means zero density; NaN and ``+inf`` are errors.
    domain : array-like (d, 2), or a pair (low, high) with ``n_features``
        The box; ``h`` outside it is ignored (the tail component covers it).
    n_features : int, optional
        Needed only when ``domain`` is a single pair.
    tt_rank : int, default=8
        Maximum bond rank, during cross and after rounding.
    n_basis : int or "auto", default=16
        Grid nodes and Legendre functions per coordinate. It sets the
        resolution: a bump of width ``w`` needs ``n_basis`` well above
        ``(high - low) / w``. ``"auto"`` starts at 16 and multiplies it
        by 1.5 while the resolution check fails (some coordinate keeps
        more than ``resolution_tol`` of its energy in its top quarter of
        degrees) and the self-check ELBO improves, up to ``max_n_basis``
        and within ``max_evals``; ``cross_report.n_basis_trials`` records
        every size tried.
    tol : float, default=1e-4
        Relative error target on held-out grid points (cross stops when it
        is reached; two-site cross also truncates to it).
    max_evals : int, optional
        Budget of ``log_density`` evaluations (points), self-checks and
        every size tried by ``n_basis="auto"`` included.
    max_sweeps : int, default=20
        Maximum half-sweeps of cross (per size with ``n_basis="auto"``);
        cross usually stops earlier, by ``patience`` or ``tol``.
    batch_size : int, default=100000
        Maximum points per call of ``log_density``.
    n_seeds, n_seed_steps : int
        Random starts and gradient-ascent steps that seed the index sets
        with high-density points (see :func:`~sktt_flow.tt.cross.find_seeds`).
    known_seeds : array-like of shape (m, d), default=None
        Points known to carry mass (the modes a search found), added to
        those seeds where none came near them (see
        :func:`~sktt_flow.tt.cross.tt_cross`).
    cross_method : {"one-site", "two-site"}, default="one-site"
        One-site cross costs ``r n (r + kick_rank)`` evaluations per core
        and half-sweep; two-site costs ``r n n r`` per bond. Both adapt
        the ranks by SVD truncation (see :func:`~sktt_flow.tt.cross.tt_cross`).
    kick_rank : int, default=2
        One-site: extra multi-indices per fiber (where the last self-check
        found the train shortest of ``h``, and seeds), which let the ranks
        grow; 0: no enrichment.
    patience : int, default=3
        Half-sweeps without improvement of the self-check before stopping.
    n_check_samples : int, default=2000
        Exact draws per self-check; 0 disables it (the held-out grid error
        then chooses the train and the stop, and ``n_basis="auto"`` uses
        the resolution check alone).
    min_ess : float, default=0.5
        Self-check ESS below which the result warns.
    resolution_tol : float, default=1e-3
        Top-quarter energy share above which a coordinate is unresolved.
    max_n_basis : int, default=128
        Cap of ``n_basis="auto"``.
    tail_weight : float, default=1e-9
        Weight of the full-support component; tiny by default so that its
        reverse KL cost is negligible (see
        :class:`~sktt_flow.TTDistribution`).
    random_state : int, RandomState, Generator or None
    device, dtype
        Where and in what precision the callable is evaluated and the
        distribution lives; cross itself runs in float64.
    verbose : int, default=0
    callable_name : str, default="log_density"
        What error messages call ``log_density``.

    Returns
    -------
    TTDistribution
        With ``cross_report`` (:class:`~sktt_flow.tt.cross.CrossReport`):
        calls, evaluations, sweeps, error, rank and self-check histories,
        the returned train's self-check and resolution, advice.

    Raises
    ------
    ValueError
        For bad arguments, a misbehaving callable, a budget too small for
        one half-sweep, or when no finite, non-zero train came out (e.g.
        ``log_density`` was ``-inf`` at every evaluated point).

    Warns
    -----
    ConvergenceWarning
        When the returned train fails its self-check (ESS below
        ``min_ess``), naming the remedies the diagnostics point to
        (``n_basis``, ``tt_rank``, the domain, two-site cross, the
        budget); without a self-check, when the grid error stays above
        ``tol``.

    See Also
    --------
    sktt_flow.TTDistribution.from_log_density : The same, as a classmethod.
    """
    if n_features is None and np.shape(domain) == (2,):
        raise ValueError("A single (low, high) domain needs n_features.")
    auto = isinstance(n_basis, str)
    if auto and n_basis != "auto":
        raise ValueError(f'n_basis must be an integer >= 2 or "auto", got {n_basis!r}.')
    for name, value, minimum in (
        ("tt_rank", tt_rank, 1),
        ("n_basis", AUTO_N_BASIS_START if auto else n_basis, 2),
        ("max_n_basis", max_n_basis, 2),
        ("max_sweeps", max_sweeps, 1),
        ("batch_size", batch_size, 1),
        ("n_seeds", n_seeds, 1),
        ("n_seed_steps", n_seed_steps, 0),
        ("kick_rank", kick_rank, 0),
        ("patience", patience, 1),
        ("n_check_samples", n_check_samples, 0),
    ):
        check_positive_int(value, name, minimum)
    if max_evals is not None:
        if not (isinstance(max_evals, numbers.Real) and max_evals >= 1):
            raise ValueError(f"max_evals must be a number >= 1 or None, got {max_evals!r}.")
        max_evals = int(max_evals)
    # tt_cross checks that log_density is callable.
    low, high = check_domain(domain, n_features)
    device = torch.device("cpu" if device is None else device)
    low = torch.as_tensor(low, dtype=torch.float64, device=device)
    high = torch.as_tensor(high, dtype=torch.float64, device=device)
    box = torch.stack([low, high], dim=1)
    if known_seeds is not None:
        known_seeds = torch.as_tensor(known_seeds, dtype=torch.float64, device=device)
        if known_seeds.ndim != 2 or known_seeds.shape[1] != low.shape[0]:
            raise ValueError(
                f"known_seeds must have shape (m, {low.shape[0]}), got {tuple(known_seeds.shape)}."
            )
        if not bool(torch.isfinite(known_seeds).all()):
            raise ValueError("known_seeds must be finite.")
    generator = torch_generator(random_state, device)

    def build(nodal_cores: list[torch.Tensor]) -> TTDistribution:
        return _distribution_from_nodal_cores(
            nodal_cores, box, tt_rank=tt_rank, tail_weight=tail_weight, dtype=dtype
        )

    def run(size: int, budget: int | None, seeds: torch.Tensor | None, abandon: bool = False):
        nodes, _ = gauss_legendre(size, low, high, device=device)
        return tt_cross(
            log_density,
            nodes,
            max_rank=tt_rank,
            tol=tol,
            max_evals=budget,
            max_sweeps=max_sweeps,
            batch_size=batch_size,
            n_seeds=n_seeds,
            n_seed_steps=n_seed_steps,
            generator=generator,
            dtype=dtype,
            method=cross_method,
            kick_rank=kick_rank,
            patience=patience,
            domain=box,
            seeds=seeds,
            known_seeds=known_seeds,
            build_candidate=build,
            n_check_samples=n_check_samples,
            min_ess=min_ess,
            resolution_tol=resolution_tol,
            abandon_unresolved=abandon,
            verbose=verbose,
            callable_name=callable_name,
        )

    if auto:
        nodal_cores, report = _cross_auto_n_basis(run, max_evals, max_n_basis)
    else:
        nodal_cores, report = run(n_basis, max_evals, None)
    distribution = build(nodal_cores)
    distribution.cross_report = report
    _warn_if_poor(report, tol, auto, max_n_basis)
    return distribution


def _cross_auto_n_basis(run, max_evals: int | None, max_n_basis: int):
    """TT-cross at growing ``n_basis`` (``n_basis="auto"``).

    Sizes 16, 24, 36, ... (x1.5), capped at ``max_n_basis``: the next size
    is tried while the resolution check of the last one fails and it
    improved the self-check ELBO on the best size so far by more than
    the noise, or while the best self-check so far leaks (:func:`_leaks`,
    resolved or not) or has an ESS below :data:`POOR_BASE_ESS`, and one of
    the last two sizes is the best;
    the evaluation budget is shared, and so are the seeds.
    Returns the nodal cores and report of the size with the largest ELBO
    (without a self-check: the last size), the report's counts covering
    every size tried.
    """
    best = None
    trials: list[dict] = []
    seeds = None
    n_calls = n_evaluations = n_check_evaluations = 0
    n_since_best = 0
    size = min(AUTO_N_BASIS_START, max_n_basis)
    while True:
        budget = None if max_evals is None else max_evals - n_evaluations
        try:
            # A size below the cap is abandoned as soon as its resolution
            # check fails twice: the next size is where the budget goes.
            nodal_cores, report = run(size, budget, seeds, size < max_n_basis)
        except ValueError as error:
            # A larger size that the budget cannot afford ends the search.
            if best is None or "too small for one sweep" not in str(error):
                raise
            break
        seeds = report.seeds
        n_calls += report.n_calls
        n_evaluations += report.n_evaluations
        n_check_evaluations += report.n_check_evaluations
        trials.append(
            {
                "n_basis": size,
                "ess": report.ess,
                "kl": report.kl,
                "elbo": report.elbo,
                "max_resolution_share": max(report.resolution, default=math.nan),
                "n_evaluations": report.n_evaluations,
            }
        )
        previous = None if best is None else best[1]
        improved = _self_check_improves(report, previous)
        if previous is None or _self_check_score(report) >= _self_check_score(previous):
            best = (nodal_cores, report)
            n_since_best = 0
        else:
            n_since_best += 1
        unresolved = bool(report.unresolved) or not report.resolution
        best_check = _returned_check(best[1])
        # A poor base's ELBO is too noisy for "improved beyond the noise"
        # (ESS 0.002: a gain of 3,000 nats is within it); the best score
        # decides, with one size of patience.
        poor = best_check is not None and best_check.ess < POOR_BASE_ESS
        coarse = best_check is not None and _leaks(best_check)
        if size >= max_n_basis or not (
            (unresolved and improved) or ((coarse or poor) and n_since_best < 2)
        ):
            break
        size = min(max_n_basis, math.ceil(AUTO_N_BASIS_GROWTH * size))
    nodal_cores, report = best
    report.n_calls, report.n_evaluations = n_calls, n_evaluations
    report.n_check_evaluations = n_check_evaluations
    report.n_basis_trials = trials
    return nodal_cores, report


def _distribution_from_nodal_cores(
    nodal_cores: Sequence[torch.Tensor],
    box: torch.Tensor,
    *,
    tt_rank: int,
    tail_weight: float,
    dtype: torch.dtype,
) -> TTDistribution:
    """The canonical distribution of a train of values of ``sqrt(h)`` at
    the Gauss–Legendre nodes of ``box``: exact map to coefficients, rounding
    to ``tt_rank``, normalisation. Raises ValueError when the train is not
    finite or is zero."""
    # Every core at unit largest entry first: the density ignores the scale,
    # and SVDs and norms of cores of unknown scale could overflow.
    nodal_cores, _ = scale_to_unit_max(list(nodal_cores))
    low, high = box[:, 0], box[:, 1]
    # Rounding at a tolerance far below the cross error only drops the
    # redundant ranks that cross may keep.
    cores = round_tt(nodal_to_coefficients(nodal_cores, low, high), max_rank=tt_rank, rtol=1e-12)
    distribution = TTDistribution(cores, box, tail_weight=tail_weight).to(
        device=box.device, dtype=dtype
    )
    return distribution.canonicalize_()


def _leaks(check: SelfCheck) -> bool:
    """Whether most of a self-check's reverse-KL estimate, and more than
    :data:`RESOLVED_GROWTH_KL`, comes from a few draws where the target is
    far below the train: a leak across a feature the grid does not resolve.

    Log-normal weights of variance ``s^2`` have ``ESS = exp(-s^2)`` and a
    reverse KL of ``s^2 / 2``, so the spread of the bulk of the weights
    explains ``-log(ESS) / 2`` of the KL; draws of nearly zero weight move
    the KL alone. A train whose KL is the bulk's (a funnel's neck missed,
    ESS 0.16 and KL 0.96; a Student t's tails, ESS 0.97 and KL 0.014) is
    held back by something else than the grid.
    """
    if not check.ess > 0.0 or not math.isfinite(check.kl):
        return False
    excess = check.kl + 0.5 * math.log(check.ess)
    return excess > RESOLVED_GROWTH_KL and excess > 0.5 * check.kl


def _returned_check(report: CrossReport) -> SelfCheck | None:
    """The self-check of the train a cross report returned (None without one)."""
    if not report.check_history or report.best_sweep == 0:
        return None
    return report.check_history[report.best_sweep - 1]


def _self_check_score(report: CrossReport) -> tuple:
    """Sort key of a cross run's returned train (larger is better); without a
    self-check every run ties, so that the later, larger size wins."""
    check = _returned_check(report)
    return () if check is None else check.score()


def _self_check_improves(report: CrossReport, previous: CrossReport | None) -> bool:
    """Whether a run's returned train beats the previous best by more than the
    noise of the two ELBO estimates (always, without a self-check)."""
    check = _returned_check(report)
    if previous is None or check is None:
        return True
    return check.improves_on(_returned_check(previous))


def _warn_if_poor(report: CrossReport, tol: float, auto: bool, max_n_basis: int) -> None:
    """The ConvergenceWarning of :func:`fit_log_density`, at its caller's line."""
    if report.converged:
        return
    advice = list(report.advice)
    if auto:
        advice = [
            f"raise max_n_basis (n_basis='auto' stopped at {report.n_basis})"
            if line.startswith("raise n_basis")
            else line
            for line in advice
        ]
    remedies = "; ".join(advice) if advice else "check the target and the domain"
    if math.isfinite(report.ess):
        message = (
            f"The TT-cross base is poor: self-check ESS {report.ess:.3f} (reverse KL "
            f"estimate {report.kl:.3g}) on exact draws, after {report.n_evaluations} "
            f"evaluations ({report.stop_reason}). Remedies: {remedies}."
        )
    else:
        message = (
            f"TT-cross stopped without reaching tol={tol}: {report.stop_reason}; held-out "
            f"relative error {report.best_error:.2e} after {report.n_evaluations} "
            f"evaluations. The base may miss mass; check its effective sample size. "
            f"Remedies: {remedies}."
        )
    warnings.warn(message, ConvergenceWarning, stacklevel=_caller_stacklevel())


def _caller_stacklevel() -> int:
    """The ``stacklevel`` that attributes a warning, issued by the function
    that calls this one, to the first frame outside :data:`_ENTRY_POINT_FILES`:
    the user's line, whether it called :func:`fit_log_density` or
    :meth:`TTDistribution.from_log_density` (Python 3.12's
    ``skip_file_prefixes``, which Python 3.10 lacks)."""
    frame = sys._getframe(1)  # the function that warns: stacklevel 1
    level = 1
    while frame is not None and frame.f_code.co_filename in _ENTRY_POINT_FILES:
        frame = frame.f_back
        level += 1
    return level
