"""TT-cross: a tensor train of ``sqrt(h)`` from evaluations of ``log h``.

The tensor is ``A[i_1, ..., i_d] = exp((log h(x_{i_1}, ..., x_{i_d}) - c) / 2)``
on the product grid of ``n`` Gauss–Legendre nodes per coordinate. It is never
formed. Cross interpolation (Oseledets and Tyrtyshnikov, "TT-cross
approximation of multidimensional arrays", Linear Algebra Appl. 432, 2010)
keeps left index sets ``I_{<k}`` and right index sets ``J_{>k}`` and sweeps
left to right and back:

- one-site (the default): at core ``k`` it evaluates the fiber
  ``A[I_{<k}, i_k, J_{>k}]`` (``r n r`` points, one batched call), enriched by
  ``kick_rank`` more columns (the "kick" of Dolgov and Savostyanov's AMEn,
  SIAM J. Sci. Comput. 36, 2014): multi-indices of the last self-check's
  draws with the largest importance weights, where the train falls shortest
  of ``h``, and of the seeds. It truncates the fiber's SVD to its numerical
  rank and to ``max_rank``, picks the new index set by
  :func:`~sktt_flow.tt.maxvol.maxvol` on the kept singular vectors ``U`` and
  keeps the interpolating core ``U U[I]^{-1}``. Every rank adapts: the kick
  lets it grow by up to ``kick_rank`` per half-sweep, the SVD lets it shrink.
  Index sets are nested (each new one extends rows of the previous one).
  ``kick_rank=0`` only shrinks the ranks of the initial index sets;
- two-site (DMRG-cross, Savostyanov and Oseledets, nDS 2011): at bond ``k`` it
  evaluates the superblock ``A[I_{<k}, i_k, i_{k+1}, J_{>k+1}]`` (``r n n r``
  points) and truncates its SVD to the tolerance, at about ``n`` times the
  evaluations.

**No overflow, whatever the scale.** Each evaluated block is scaled by its own
largest value, ``exp((log h - m) / 2)`` with ``m`` the block's largest
``log h``: the interpolating cores do not depend on the scale, and the one core
that holds values (the last one a half-sweep updates) carries the shift ``c =
m`` of its block. A maximum found late, thousands of nats above the seeds,
therefore changes nothing but ``c``. Errors are computed in log space.

**The self-check.** Grid-node errors cannot see mass between the nodes. When
``build_candidate`` is given (:meth:`TTDistribution.from_log_density
<sktt_flow.tt.distribution.TTDistribution.from_log_density>` passes it), every
half-sweep's train is turned into the distribution it would return and scored
on ``n_check_samples`` exact draws ``x ~ q`` of itself: importance weights
``log w = log h(x) - log q(x)`` give the ESS, the ELBO ``mean(log w)``, the
estimate of ``log Z`` and the reverse-KL estimate ``log mean(w) - mean(log w)``
(:func:`~sktt_flow.diagnostics.importance.importance_diagnostics`); an
off-grid held-out set gives the relative error of ``|s|`` against
``sqrt(h)``; the Legendre spectrum of every core gives the resolution check
(:func:`~sktt_flow.tt.algebra.mode_energy_shares`). The callback keeps this
module free of an import of the distribution, which imports it. The returned
train is the half-sweep with the largest ELBO, and cross stops when that best
has not improved for ``patience`` half-sweeps.

Cross only sees what its index sets reach. To find modes that random indices
never meet, the initial index sets come from *seeds*: points found by short
gradient ascents of ``log h`` from many random starts, chosen far apart from
each other so that every basin the ascents reached is represented; seeds also
enter the kick of every one-site step, on both sides.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from sktt_flow.diagnostics.importance import importance_diagnostics
from sktt_flow.tt.algebra import log_norm_squared, mode_energy_shares
from sktt_flow.tt.maxvol import maxvol
from sktt_flow.utils.validation import check_positive_int

if TYPE_CHECKING:  # the distribution imports this module
    from sktt_flow.tt.distribution import TTDistribution

__all__ = [
    "CrossReport",
    "LogDensityEvaluator",
    "NoTrainFoundError",
    "SelfCheck",
    "find_seeds",
    "resolution_shares",
    "tt_cross",
]


class NoTrainFoundError(ValueError):
    """TT-cross saw no mass on its grid: the target was ``-inf`` at every
    point it evaluated, or no fiber gave a finite, non-zero train.

    A property of the domain (and resolution) as much as of the target: a
    caller that tries several boxes can go on to the next.
    ``n_evaluations`` holds the target evaluations the failed run spent.
    """

    def __init__(self, message: str, n_evaluations: int = 0):
        super().__init__(message)
        self.n_evaluations = n_evaluations


#: Fraction of the highest Legendre degrees whose energy share is the
#: resolution check of a coordinate.
RESOLUTION_TOP_FRACTION = 0.25

#: Self-check reverse-KL estimate at which cross stops: no later half-sweep
#: could improve the ELBO by more than this.
KL_FLOOR = 1e-4

#: Relative SVD truncation of one-site fibers: drops only directions that are
#: numerically zero (see ``_Cross.__init__``).
ONE_SITE_RANK_TOL = 1e-10

#: Width of the band along each face of the box, as a fraction of the box's
#: width, in which the self-check measures the target's mass (``edge_mass``).
EDGE_BAND = 0.02

#: A seed counts as having reached a point of ``known_seeds`` when it lies
#: within ``KNOWN_SEED_NODES`` grid nodes of it in at least
#: ``KNOWN_SEED_SHARE`` of the coordinates (see :meth:`_Cross._unreached`):
#: the ascents of :func:`find_seeds` are short, and in high dimension never
#: near a mode in every coordinate (GinzburgLandau2D(8): the seeds nearest to
#: each of the 64 to 96 modes of the search were within two nodes of it in 67%
#: to 91% of the coordinates, never all, and at most 6 of 16 nodes away in
#: any), while a seed in another basin is far in most coordinates (the
#: narrow mode of the tests: near in one of four) or very far in one (more
#: than half the grid: then it is not counted either).
KNOWN_SEED_NODES = 2
KNOWN_SEED_SHARE = 0.5


@dataclass(frozen=True)
class SelfCheck:
    """A candidate train scored on exact draws of itself.

    Attributes
    ----------
    ess : float
        Normalised effective sample size ``(sum w)^2 / (N sum w^2)``.
    kl : float
        The candidate's own reverse-KL estimate ``log mean(w) - mean(log w)``.
        Too small when the candidate misses mass its draws never visit;
        compare candidates by ``elbo``.
    elbo : float
        ``mean(log w)``; ``log Z - elbo`` is the reverse KL, so a larger ELBO
        is a better train whatever ``Z`` is (unbiased, even at a low ESS).
        ``-inf`` when some draws fall where ``h = 0``.
    elbo_std_error : float
    log_normalizer : float
        ``log mean(w)``, the estimate of ``log Z``.
    log_normalizer_std_error : float
    zero_weight_fraction : float
        Share of the draws where ``h = 0``.
    nonzero_elbo : float
        ``mean(log w)`` over the draws where ``h > 0`` (ranks candidates whose
        ELBO is ``-inf``).
    off_grid_error : float
        Relative ``L2`` error of ``|s|`` against ``sqrt(h)`` on held-out
        random points of the box (half uniform, half near the seeds), after
        the best constant scaling (the density ignores the scale).
    resolution : tuple of float
        Per coordinate, the share of the train's energy in its top quarter
        of Legendre degrees (:func:`resolution_shares`): about 1e-3 or less
        when the coordinate is resolved.
    edge_mass : tuple of float
        Per coordinate, the self-normalised importance-weighted share of the
        draws within ``EDGE_BAND`` of the box width of either face: the
        target's mass at the box edge, which a box that cuts the target
        leaves large.
    n_samples : int
        Draws used (inside the box).
    n_evaluations : int
        Evaluations of ``log h`` this check spent.
    """

    ess: float
    kl: float
    elbo: float
    elbo_std_error: float
    log_normalizer: float
    log_normalizer_std_error: float
    zero_weight_fraction: float
    nonzero_elbo: float
    off_grid_error: float
    resolution: tuple[float, ...]
    edge_mass: tuple[float, ...]
    n_samples: int
    n_evaluations: int

    def score(self) -> tuple[float, float, float]:
        """Sort key, larger is better: the ELBO, then (for ELBOs of ``-inf``)
        less mass where ``h = 0``, then the ELBO over the other draws."""
        if math.isfinite(self.elbo):
            return (1.0, 0.0, self.elbo)
        return (0.0, -self.zero_weight_fraction, self.nonzero_elbo)

    def improves_on(self, other: SelfCheck | None) -> bool:
        """Whether this check beats ``other`` by more than the noise of two ELBO
        estimates (twice their combined standard error, at least 1e-3 nats)."""
        if other is None:
            return True
        score, other_score = self.score(), other.score()
        if score[:2] != other_score[:2]:
            return score[:2] > other_score[:2]
        return score[2] > other_score[2] + self.noise(other)

    def noise(self, other: SelfCheck | None = None) -> float:
        """The smallest ELBO difference from ``other`` (or from a second check
        as noisy as this one) taken for an improvement: twice the combined
        standard error, at least 1e-3 nats."""
        other_error = self.elbo_std_error if other is None else other.elbo_std_error
        noise = math.hypot(self.elbo_std_error, other_error)
        return max(1e-3, 2.0 * noise) if math.isfinite(noise) else 1e-2


@dataclass
class CrossReport:
    """What TT-cross did and how good the result is.

    Attributes
    ----------
    n_calls : int
        Calls of the user's callable.
    n_evaluations : int
        Points evaluated (the budget counts these), self-check included.
    n_sweeps : int
        Half-sweeps (one direction each) completed.
    method : str
        ``"one-site"`` or ``"two-site"``.
    n_basis : int
        Grid nodes (and Legendre functions) per coordinate.
    error_history : list of float
        Relative error of ``sqrt(h)`` on the held-out grid points (half
        uniform, half near the seeds) after each half-sweep.
    rank_history : list of tuple
        Bond ranks after each half-sweep.
    check_history : list of SelfCheck or None
        The self-check of each half-sweep's train (None without
        ``build_candidate``, or for a train that was not finite and non-zero).
    log_shift : float
        The constant ``c`` of the returned train: it holds
        ``exp((log h - c) / 2)``.
    best_error : float
        Held-out grid error of the returned train.
    best_sweep : int
        The half-sweep (1-based) whose train is returned.
    ess, kl, elbo, log_normalizer, off_grid_error : float
        The self-check of the returned train (NaN without one).
    resolution : tuple of float
        Per coordinate, the returned train's energy share in its top quarter
        of Legendre degrees (empty without a self-check).
    resolution_tol : float
        The share above which a coordinate counts as unresolved.
    n_check_evaluations : int
        Evaluations spent by the self-checks (included in ``n_evaluations``).
    tol_reached : bool
        Whether the grid error fell below ``tol``.
    rank_capped : bool
        Whether the last half-sweep wanted a rank above ``max_rank`` somewhere.
    converged : bool
        With a self-check: whether the returned train passed it (ESS at least
        ``min_ess``); without: ``tol_reached``.
    stop_reason : str
    advice : list of str
        What to change when the result is poor (empty otherwise).
    n_basis_trials : list of dict
        With ``n_basis="auto"``: each size tried and its self-check.
    seeds : tensor or None
        The seed points (reusable by another run on the same box).
    """

    n_calls: int = 0
    n_evaluations: int = 0
    n_sweeps: int = 0
    method: str = "one-site"
    n_basis: int = 0
    error_history: list[float] = field(default_factory=list)
    rank_history: list[tuple[int, ...]] = field(default_factory=list)
    check_history: list[SelfCheck | None] = field(default_factory=list)
    log_shift: float = -math.inf
    best_error: float = math.inf
    best_sweep: int = 0
    ess: float = math.nan
    kl: float = math.nan
    elbo: float = math.nan
    log_normalizer: float = math.nan
    off_grid_error: float = math.nan
    resolution: tuple[float, ...] = ()
    resolution_tol: float = 1e-3
    n_check_evaluations: int = 0
    tol_reached: bool = False
    rank_capped: bool = False
    converged: bool = False
    stop_reason: str = ""
    advice: list[str] = field(default_factory=list)
    n_basis_trials: list[dict] = field(default_factory=list)
    seeds: torch.Tensor | None = field(default=None, repr=False)

    @property
    def unresolved(self) -> list[int]:
        """Coordinates whose top-degree share exceeds ``resolution_tol``."""
        return [k for k, share in enumerate(self.resolution) if share > self.resolution_tol]


class LogDensityEvaluator:
    """Calls the user's ``log h`` in batches, checks what it returns and counts.

    Parameters
    ----------
    log_density : callable
        ``log_density(x)`` with ``x`` a tensor (m, d) returns m values (a
        tensor or array-like). ``-inf`` (zero density) is allowed.
    n_features : int
    batch_size : int
        At most this many points per call.
    dtype, device
        Of the tensors passed to ``log_density``.
    report : CrossReport
        Receives the counts (any object with ``n_calls`` and ``n_evaluations``).
    name : str, default="log_density"
        What error messages call the callable.
    """

    def __init__(
        self, log_density, n_features, batch_size, dtype, device, report, name="log_density"
    ):
        if not callable(log_density):
            raise TypeError(f"{name} must be callable, got {type(log_density).__name__}.")
        self.name = name
        self.log_density = log_density
        self.n_features = n_features
        self.batch_size = batch_size
        self.dtype = dtype
        self.device = device
        self.report = report

    def __call__(self, points: torch.Tensor, *, grad: bool = False) -> torch.Tensor:
        """``log h`` at ``points`` (m, d), as a float64 tensor (m,)."""
        results = []
        for start in range(0, points.shape[0], self.batch_size):
            batch = points[start : start + self.batch_size].to(self.dtype)
            results.append(self._call(batch, grad=grad))
        if not results:
            return torch.empty(0, dtype=torch.float64, device=self.device)
        return torch.cat(results)

    def _call(self, batch: torch.Tensor, grad: bool) -> torch.Tensor:
        self.report.n_calls += 1
        self.report.n_evaluations += batch.shape[0]
        try:
            with torch.set_grad_enabled(grad):
                values = self.log_density(batch)
        except Exception as error:
            raise ValueError(
                f"{self.name} raised {type(error).__name__} on a batch of "
                f"{batch.shape[0]} {str(batch.dtype).removeprefix('torch.')} points "
                f"(first point {_format(batch[0])}): {error}"
            ) from error
        if not isinstance(values, torch.Tensor):
            try:
                values = torch.as_tensor(np.asarray(values, dtype=np.float64))
            except (TypeError, ValueError) as error:
                raise ValueError(
                    f"{self.name} must return m real numbers for m points; could not "
                    f"convert {type(values).__name__}: {error}"
                ) from error
        if values.is_complex():
            raise ValueError(f"{self.name} returned complex values; it must return real ones.")
        values = values.to(device=self.device)
        if values.shape not in ((batch.shape[0],), (batch.shape[0], 1)):
            raise ValueError(
                f"{self.name} must return {batch.shape[0]} values for a batch of "
                f"{batch.shape[0]} points, got shape {tuple(values.shape)}."
            )
        values = values.reshape(-1)
        values = values.double() if grad else values.detach().double()
        bad = torch.isnan(values) | (values == math.inf)
        if bool(bad.any()):
            index = int(torch.nonzero(bad)[0])
            raise ValueError(
                f"{self.name} returned NaN or +inf at {int(bad.sum())} of "
                f"{batch.shape[0]} points, e.g. {float(values[index].detach())} at "
                f"{_format(batch[index])}. Return -inf for zero density."
            )
        return values


def _format(point: torch.Tensor) -> str:
    return np.array2string(point.detach().cpu().double().numpy(), precision=4, threshold=8)


def find_seeds(
    evaluator: LogDensityEvaluator,
    low: torch.Tensor,
    high: torch.Tensor,
    n_starts: int,
    n_steps: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """High-density points: gradient ascents of ``log h`` from uniform random starts.

    Projected Adam steps in the coordinates of the box mapped to the unit
    cube, so that every coordinate moves by about a fiftieth of *its own*
    width per step (a single step for all coordinates is useless on a box
    whose widths differ by orders of magnitude). When the callable gives no
    gradient (or fails on inputs that require one) the random starts
    themselves are returned. Returns the final points (n_starts, d).
    """
    shape = (n_starts, low.shape[0])
    width = high - low
    unit = torch.rand(shape, generator=generator, dtype=torch.float64, device=low.device)
    unit.requires_grad_()
    optimizer = torch.optim.Adam([unit], lr=1.0 / 50)
    for _ in range(n_steps):
        optimizer.zero_grad()
        try:
            values = evaluator(low + unit * width, grad=True)
        except ValueError:
            # Not differentiable in torch (a numpy function, say): keep the
            # random starts. A callable that is broken outright fails again,
            # with its own message, when the seeds are evaluated.
            break
        if not values.requires_grad:
            break
        finite = torch.isfinite(values)
        (-values[finite].sum()).backward()
        if unit.grad is None:
            break
        unit.grad = torch.nan_to_num(unit.grad, nan=0.0, posinf=0.0, neginf=0.0)
        optimizer.step()
        with torch.no_grad():
            unit.clamp_(0.0, 1.0)
    return (low + unit.detach() * width).detach()


def resolution_shares(cores: list[torch.Tensor]) -> torch.Tensor:
    """Per coordinate, the share of a coefficient train's energy in its top
    quarter of Legendre degrees (at least one degree), shape (d,).

    In an orthonormal basis the coefficients of a smooth, resolved function
    decay fast, so this share is tiny (below about 1e-3: measured, a 2-D
    Gaussian of standard deviation 0.1 on ``[-3, 3]^2`` has 1.4e-3 at
    ``n = 64``, where its self-check ESS is 1.00, and 4e-2 at ``n = 16``,
    ESS 0.24). A large share says the grid does not resolve the coordinate:
    raise ``n_basis``.
    """
    shares = mode_energy_shares(cores)
    n = shares.shape[1]
    top = max(1, round(RESOLUTION_TOP_FRACTION * n))
    return shares[:, n - top :].sum(dim=1)


def _nearest_node(points: torch.Tensor, nodes: torch.Tensor) -> torch.Tensor:
    """Index of the nearest grid node per coordinate, (m, d) int64."""
    return (points.unsqueeze(2) - nodes.unsqueeze(0)).abs().argmin(dim=2)


def _block_points(
    left: torch.Tensor, right: torch.Tensor, n: int, width: int, device
) -> torch.Tensor:
    """Multi-indices ``left x [n]^width x right`` as (r_l n^width r_r, d), row-major."""
    r_left, r_right = left.shape[0], right.shape[0]
    shape = (r_left, *([n] * width), r_right)
    parts = [left.reshape(r_left, *([1] * width), 1, -1).expand(*shape, left.shape[1])]
    for position in range(width):
        view = [1] * (width + 2)
        view[position + 1] = n
        parts.append(torch.arange(n, device=device).reshape(*view, 1).expand(*shape, 1))
    parts.append(right.reshape(1, *([1] * width), r_right, -1).expand(*shape, right.shape[1]))
    return torch.cat(parts, dim=-1).reshape(-1, left.shape[1] + right.shape[1] + width)


def _log_abs_tt_at_indices(
    cores: list[torch.Tensor], indices: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Entries of a train at integer multi-indices (m, d), as ``(sign, log|value|)``.

    The running row vectors are rescaled at every core, so that nothing
    overflows or underflows whatever the cores' scale.
    """
    running = torch.ones(indices.shape[0], 1, dtype=cores[0].dtype, device=cores[0].device)
    log_scale = torch.zeros(indices.shape[0], dtype=cores[0].dtype, device=cores[0].device)
    tiny = torch.finfo(cores[0].dtype).tiny
    for k, core in enumerate(cores):
        running = torch.einsum("ma,amb->mb", running, core[:, indices[:, k], :])
        scale = running.abs().amax(dim=1).clamp_min(tiny)
        running = running / scale[:, None]
        log_scale = log_scale + torch.log(scale)
    value = running.squeeze(1)
    return torch.sign(value), log_scale + torch.log(value.abs())


def _truncation(singular_values: torch.Tensor, max_rank: int, rtol: float) -> tuple[int, int]:
    """``(rank, wanted)``: ``wanted`` singular values keep the discarded tail's
    relative Frobenius norm at most ``rtol``; ``rank`` caps it at ``max_rank``."""
    energy = singular_values.square()
    tail = energy.flip(0).cumsum(0).flip(0)
    wanted = max(1, int((tail > (rtol**2) * energy.sum()).sum()))
    return min(wanted, max_rank), wanted


def _interpolating_core(basis: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows chosen by maxvol in an orthonormal ``basis`` (m, r) and the
    interpolation matrix ``basis basis[rows]^{-1}`` (m, r)."""
    rows = maxvol(basis)
    return rows, torch.linalg.solve(basis[rows].T, basis.T).T


def _to_values(log_values: torch.Tensor) -> tuple[torch.Tensor, float]:
    """``(exp((log h - m) / 2), m)`` with ``m`` the largest finite ``log h``
    (zeros and ``-inf`` when there is none): at most 1, never overflowing."""
    finite = log_values[torch.isfinite(log_values)]
    if finite.numel() == 0:
        return torch.zeros_like(log_values), -math.inf
    shift = float(finite.max())
    return torch.exp((log_values - shift) / 2), shift


def _relative_error(
    sign: torch.Tensor, log_abs: torch.Tensor, log_exact: torch.Tensor, *, fit_scale: bool
) -> float:
    """``||a - e|| / ||e||`` from ``a = sign exp(log_abs)`` and ``e = exp(log_exact)``,
    in log space; with ``fit_scale``, ``a`` is first multiplied by the best
    constant. ``inf`` when ``e`` vanishes but ``a`` does not, 0 when both do."""
    finite = torch.isfinite(log_exact)
    if not bool(finite.any()):
        return 0.0 if bool((log_abs == -math.inf).all()) else math.inf
    reference = log_exact[finite].max()
    exact = torch.exp(log_exact - reference)
    if fit_scale:
        top = log_abs.max()
        if not bool(torch.isfinite(top)):
            return 1.0 if top == -math.inf else math.inf
        approximation = sign * torch.exp(log_abs - top)
        fitted = (approximation @ exact) / (approximation @ approximation)
        approximation = fitted * approximation
    else:
        approximation = sign * torch.exp(log_abs - reference)
    error = float((approximation - exact).norm() / exact.norm())
    return error if math.isfinite(error) else math.inf


def _unique_rows_in_order(rows: torch.Tensor) -> torch.Tensor:
    """Distinct rows, in order of first appearance."""
    if rows.shape[1] == 0:
        return rows[:1]
    unique, inverse = torch.unique(rows, dim=0, return_inverse=True)
    first = torch.full((unique.shape[0],), rows.shape[0], dtype=torch.long, device=rows.device)
    first = first.scatter_reduce(
        0, inverse, torch.arange(rows.shape[0], device=rows.device), reduce="amin"
    )
    return rows[torch.sort(first).values]


def _spread_out(points: torch.Tensor, log_values: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of ``count`` points chosen greedily far apart (farthest-point
    selection), starting from the one with the largest ``log_values``; points
    with ``log_values == -inf`` come last."""
    finite = torch.isfinite(log_values)
    candidates = torch.nonzero(finite).squeeze(1)
    if candidates.numel() == 0:
        return torch.arange(min(count, points.shape[0]), device=points.device)
    scale = points[candidates].std(dim=0).nan_to_num(0.0).clamp_min(1e-12)
    normalised = points[candidates] / scale
    chosen = [int(torch.argmax(log_values[candidates]))]
    distance = (normalised - normalised[chosen[0]]).norm(dim=1)
    for _ in range(1, min(count, candidates.numel())):
        best = int(torch.argmax(distance))
        if float(distance[best]) == 0.0:
            break
        chosen.append(best)
        distance = torch.minimum(distance, (normalised - normalised[best]).norm(dim=1))
    return candidates[torch.tensor(chosen, device=points.device)]


class _Cross:
    """The state of one TT-cross run: index sets, cores, held-out data, the
    best train so far. See :func:`tt_cross` for the parameters."""

    def __init__(
        self,
        log_density: Callable,
        nodes: torch.Tensor,
        *,
        domain: torch.Tensor | None,
        max_rank: int,
        tol: float,
        max_evals: int | None,
        batch_size: int,
        n_test: int,
        generator: torch.Generator,
        dtype: torch.dtype,
        method: str,
        kick_rank: int,
        build_candidate: Callable[[list[torch.Tensor]], TTDistribution] | None,
        n_check_samples: int,
        min_ess: float,
        resolution_tol: float,
        abandon_unresolved: bool,
        patience: int,
        verbose: int,
        callable_name: str,
    ):
        self.nodes = nodes
        self.d, self.n = nodes.shape
        self.device = nodes.device
        self.report = CrossReport(method=method, n_basis=self.n, resolution_tol=resolution_tol)
        self.evaluator = LogDensityEvaluator(
            log_density, self.d, batch_size, dtype, self.device, self.report, name=callable_name
        )
        self.name = callable_name
        self.max_rank = max_rank
        self.tol = tol
        self.max_evals = max_evals
        self.budget = math.inf if max_evals is None else int(max_evals)
        self.n_test = n_test
        self.generator = generator
        self.method = method
        self.kick_rank = kick_rank
        self.build_candidate = build_candidate
        self.checking = build_candidate is not None and n_check_samples > 0
        self.n_check_samples = n_check_samples
        self.min_ess = min_ess
        self.patience = patience
        self.resolution_tol = resolution_tol
        self.abandon_unresolved = abandon_unresolved
        self.verbose = verbose
        if domain is None:
            self.low, self.high = nodes.min(dim=1).values, nodes.max(dim=1).values
        else:
            self.low, self.high = domain[:, 0].double(), domain[:, 1].double()
        # Two-site cross truncates to the tolerance. One-site cross only drops
        # numerically dead directions (ONE_SITE_RANK_TOL): fibers are scaled by
        # their largest value, and in d dimensions the typical set lies e^-O(d)
        # below it, so a relative truncation at tol would cut exactly the
        # values that carry the mass (measured on GinzburgLandau1D(50): ranks
        # collapse to 4-6 and the self-check ESS to 0.01-0.1).
        self.per_bond_tol = tol / math.sqrt(max(self.d - 1, 1))
        if method == "one-site":
            self.per_bond_tol = min(self.per_bond_tol, ONE_SITE_RANK_TOL)
        self.left: list[torch.Tensor | None] = [None] * (self.d + 1)
        self.right: list[torch.Tensor | None] = [None] * (self.d + 1)
        self.cores: list[torch.Tensor | None] = [None] * self.d
        # The shift of the one core that holds values (the last one updated).
        self.value_shift = -math.inf
        self.any_finite = False
        self.rank_capped = False
        self.kick_counter = 0
        self.kick_pool: torch.Tensor | None = None
        self.off_grid_points: torch.Tensor | None = None
        self.off_grid_log_values: torch.Tensor | None = None

    # ------------------------------------------------------------ evaluation
    def evaluate_points(self, points: torch.Tensor) -> torch.Tensor:
        log_values = self.evaluator(points)
        if not self.any_finite and bool(torch.isfinite(log_values).any()):
            self.any_finite = True
        return log_values

    def evaluate(self, indices: torch.Tensor) -> torch.Tensor:
        return self.evaluate_points(torch.gather(self.nodes, 1, indices.T).T)

    def check_cost(self) -> int:
        """Evaluations the next self-check needs (kept in reserve by the sweeps)."""
        if not self.checking:
            return 0
        return self.n_check_samples + (self.n_test if self.off_grid_log_values is None else 0)

    def block(
        self, left: torch.Tensor, right: torch.Tensor, width: int
    ) -> tuple[torch.Tensor, float] | None:
        """Scaled values on ``left x [n]^width x right`` as (r_l n, n^(width-1) r_r)
        and their shift, or None when they (and the next self-check) would
        exceed the budget."""
        indices = _block_points(left, right, self.n, width, self.device)
        if self.report.n_evaluations + indices.shape[0] + self.check_cost() > self.budget:
            return None
        values, shift = _to_values(self.evaluate(indices))
        return values.reshape(left.shape[0] * self.n, -1), shift

    # ---------------------------------------------------------------- setup
    def start(
        self,
        seeds: torch.Tensor | None,
        n_seeds: int,
        n_seed_steps: int,
        known_seeds: torch.Tensor | None = None,
    ) -> None:
        """Seeds, held-out grid points and the initial right index sets."""
        d, n, device, generator = self.d, self.n, self.device, self.generator
        if seeds is None:
            seeds = find_seeds(
                self.evaluator, self.low, self.high, n_seeds, n_seed_steps, generator
            ).to(device=device, dtype=torch.float64)
            # Given seeds (a previous run's, on a coarser grid) hold the known
            # points they needed already; on a finer grid, "two nodes" would
            # call reached points unreached.
            if known_seeds is not None and known_seeds.shape[0] > 0:
                seeds = torch.cat([seeds, self._unreached(known_seeds, seeds)])
        seeds = seeds.to(device=device, dtype=torch.float64)
        self.seeds = seeds
        self.report.seeds = self.seeds
        seed_indices = _nearest_node(self.seeds, self.nodes)
        seed_log_values = self.evaluate(seed_indices)
        # Held-out points: half uniform on the grid, half near the seeds (random
        # offsets of up to two nodes per coordinate). Uniform points alone would
        # almost all fall where a peaked h is negligible and would measure nothing.
        n_test = self.n_test
        uniform = torch.randint(n, (n_test - n_test // 2, d), generator=generator, device=device)
        picks = torch.randint(
            seed_indices.shape[0], (n_test // 2,), generator=generator, device=device
        )
        near = seed_indices[picks]
        offsets = torch.randint(-2, 3, near.shape, generator=generator, device=device)
        self.test_indices = torch.cat([uniform, (near + offsets).clamp(0, n - 1)])
        self.test_log_values = self.evaluate(self.test_indices)
        # Seeds far apart, so that every basin the ascents reached is
        # represented (one per mode when there are at most max_rank modes); they
        # start the right index sets and feed the kicks on both sides.
        chosen = _spread_out(self.seeds, seed_log_values, self.max_rank)
        self.spread_seeds = seed_indices[chosen]
        self.right[d] = torch.zeros(1, 0, dtype=torch.long, device=device)
        self.left[0] = torch.zeros(1, 0, dtype=torch.long, device=device)
        for b in range(1, d):
            # Seeds first, then random rows up to the rank the bond can have.
            # Suffixes of the same rows at every bond, in order of first
            # appearance, make the sets nested.
            target = min(self.max_rank, n ** min(d - b, 8))
            # Draw more than needed: random rows repeat when n^(d-b) is small.
            extra = torch.randint(n, (4 * target, d - b), generator=generator, device=device)
            candidates = torch.cat([self.spread_seeds[:, b:], extra])
            self.right[b] = _unique_rows_in_order(candidates)[:target]

    def _unreached(self, known: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
        """The rows of ``known`` (points of the box the caller knows to carry
        mass: the modes a search found) that no seed reached: none within
        :data:`KNOWN_SEED_NODES` nodes of it in :data:`KNOWN_SEED_SHARE` of
        the coordinates and within half the grid in all of them.
        The ascents of :func:`find_seeds` start at random points of the box
        and miss a narrow mode's small basin (10% of the mass in a Gaussian
        of width 0.4 next to one of width 1.5, d = 4: cross never saw it and
        the self-check, on draws of the train, could not either); a mode that
        some seed reached is left out, so that the seeds, and the run, are
        those without ``known`` wherever the ascents found every mode."""
        known = known.to(device=seeds.device, dtype=torch.float64)
        known = torch.minimum(torch.maximum(known, self.low), self.high)
        known_nodes = _nearest_node(known, self.nodes)
        seed_nodes = _nearest_node(seeds, self.nodes)
        apart = (known_nodes[:, None, :] - seed_nodes[None, :, :]).abs()
        near = (apart <= KNOWN_SEED_NODES).double().mean(dim=2) >= KNOWN_SEED_SHARE
        # and nowhere half the grid away: a basin apart along one axis
        reached = (near & (apart.amax(dim=2) <= self.n // 2)).any(dim=1)
        return known[~reached]

    def kick(self, existing: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """``existing`` multi-indices of coordinates ``start..stop-1`` plus up to
        ``kick_rank`` more, distinct, in order.

        Half of the kick comes from the pool of the last self-check's draws with
        the largest importance weights (where the current train falls shortest
        of ``h``: error-maximising indices, at no extra cost), the rest from the
        spread-out seeds in turn (so that every mode the seeds found stays in
        the fibers, on both sides). Without a pool (no self-check yet, or none
        at all) existing rows with one coordinate moved to a random node take
        the pool's place: exploration next to what the index set holds, where
        a peaked ``h`` is not negligible.
        """
        if self.kick_rank == 0 or stop <= start:
            return existing
        generator, device = self.generator, self.device
        parts = [existing]
        n_first = (self.kick_rank + 1) // 2
        pool = self.kick_pool
        if pool is not None and pool.shape[0] > 0:
            pick = torch.randint(pool.shape[0], (n_first,), generator=generator, device=device)
            parts.append(pool[pick][:, start:stop])
        else:
            moved = existing[
                torch.randint(existing.shape[0], (n_first,), generator=generator, device=device)
            ].clone()
            coordinate = torch.randint(
                stop - start, (n_first,), generator=generator, device=device
            )
            moved[torch.arange(n_first, device=device), coordinate] = torch.randint(
                self.n, (n_first,), generator=generator, device=device
            )
            parts.append(moved)
        n_seeds = min(self.kick_rank - n_first, self.spread_seeds.shape[0])
        order = (self.kick_counter + torch.arange(n_seeds, device=device)) % max(
            self.spread_seeds.shape[0], 1
        )
        self.kick_counter += n_seeds
        parts.append(self.spread_seeds[order][:, start:stop])
        return _unique_rows_in_order(torch.cat(parts))

    # ---------------------------------------------------------------- steps
    def truncated_basis(self, values: torch.Tensor) -> torch.Tensor:
        """Leading left singular vectors of ``values``, kept by the tolerance
        and the rank cap."""
        u, s, _ = torch.linalg.svd(values, full_matrices=False)
        rank, wanted = _truncation(s, self.max_rank, self.per_bond_tol)
        self.rank_capped |= wanted >= self.max_rank
        return u[:, :rank]

    def one_site_step(self, k: int, forward: bool) -> bool:
        """Update core k from its (kicked) fiber; False when over budget."""
        d, n, left, right = self.d, self.n, self.left, self.right
        if (forward and k == d - 1) or (not forward and k == 0):
            # The last core of a half-sweep holds the values themselves.
            block = self.block(left[k], right[k + 1], 1)
            if block is None:
                return False
            values, self.value_shift = block
            self.cores[k] = values.reshape(left[k].shape[0], n, right[k + 1].shape[0])
            return True
        if forward:
            block = self.block(left[k], self.kick(right[k + 1], k + 1, d), 1)
            if block is None:
                return False
            basis = self.truncated_basis(block[0])
            rows, interpolation = _interpolating_core(basis)
            a, i = rows // n, rows % n
            left[k + 1] = torch.cat([left[k][a], i[:, None]], dim=1)
            self.cores[k] = interpolation.reshape(left[k].shape[0], n, basis.shape[1])
        else:
            rows = self.kick(left[k], 0, k)
            block = self.block(rows, right[k + 1], 1)
            if block is None:
                return False
            r_right = right[k + 1].shape[0]
            basis = self.truncated_basis(block[0].reshape(rows.shape[0], n * r_right).T)
            columns, interpolation = _interpolating_core(basis)
            j, c = columns // r_right, columns % r_right
            right[k] = torch.cat([j[:, None], right[k + 1][c]], dim=1)
            self.cores[k] = interpolation.T.reshape(basis.shape[1], n, r_right)
        return True

    def two_site_step(self, b: int, forward: bool) -> bool:
        """Update bond b (between variables b-1 and b); False when over budget."""
        n, left, right = self.n, self.left, self.right
        block = self.block(left[b - 1], right[b + 1], 2)
        if block is None:
            return False
        values, shift = block
        r_left, r_right = left[b - 1].shape[0], right[b + 1].shape[0]
        u, s, vh = torch.linalg.svd(values, full_matrices=False)
        rank, wanted = _truncation(s, self.max_rank, self.per_bond_tol)
        self.rank_capped |= wanted >= self.max_rank
        if forward:
            rows, interpolation = _interpolating_core(u[:, :rank])
            a, i = rows // n, rows % n
            left[b] = torch.cat([left[b - 1][a], i[:, None]], dim=1)
            self.cores[b - 1] = interpolation.reshape(r_left, n, rank)
            self.cores[b] = values[rows].reshape(rank, n, r_right)
        else:
            columns, interpolation = _interpolating_core(vh[:rank].T)
            j, c = columns // r_right, columns % r_right
            right[b] = torch.cat([j[:, None], right[b + 1][c]], dim=1)
            self.cores[b] = interpolation.T.reshape(rank, n, r_right)
            self.cores[b - 1] = values[:, columns].reshape(r_left, n, rank)
        self.value_shift = shift
        return True

    # ------------------------------------------------------------- checking
    def grid_error(self, cores: list[torch.Tensor], shift: float) -> float:
        """Relative error of the train (times ``exp(shift / 2)``) against
        ``sqrt(h)`` on the held-out grid points."""
        sign, log_abs = _log_abs_tt_at_indices(cores, self.test_indices)
        return _relative_error(
            sign, log_abs + shift / 2, self.test_log_values / 2, fit_scale=False
        )

    def off_grid_set(self) -> torch.Tensor:
        """Held-out random points of the box: half uniform, half within two
        node spacings of a seed (continuous offsets)."""
        generator, device = self.generator, self.device
        width = self.high - self.low
        n_near = self.n_test // 2
        uniform = self.low + width * torch.rand(
            self.n_test - n_near, self.d, generator=generator, dtype=torch.float64, device=device
        )
        near = self.seeds[
            torch.randint(self.seeds.shape[0], (n_near,), generator=generator, device=device)
        ]
        offsets = torch.rand(near.shape, generator=generator, dtype=torch.float64, device=device)
        near = near + (2.0 * offsets - 1.0) * 2.0 * width / self.n
        return torch.cat([uniform, torch.minimum(torch.maximum(near, self.low), self.high)])

    def self_check(self, cores: list[torch.Tensor]) -> SelfCheck | None:
        """Score the train on exact draws of the distribution it would give
        (None when that distribution cannot be built)."""
        try:
            candidate = self.build_candidate(cores)
        except (ValueError, torch.linalg.LinAlgError):
            return None
        start = self.report.n_evaluations
        if self.off_grid_log_values is None:
            self.off_grid_points = self.off_grid_set()
            self.off_grid_log_values = self.evaluate_points(self.off_grid_points)
        dtype = candidate.low.dtype
        with torch.no_grad():
            draws = candidate.sample(self.n_check_samples, generator=self.generator)
            # The tail component's rare draws outside the box are left out: the
            # check is of q on the box (a change of at most tail_weight), and
            # h need not be defined outside it.
            inside = ((draws >= candidate.low) & (draws <= candidate.high)).all(dim=1)
            draws = draws[inside]
            log_q = candidate.log_prob(draws).double()
            log_abs = candidate.log_abs_tt(self.off_grid_points.to(dtype)).double()
        log_h = self.evaluate_points(draws.double())
        spent = self.report.n_evaluations - start
        self.report.n_check_evaluations += spent
        off_grid_error = _relative_error(
            torch.ones_like(log_abs), log_abs, self.off_grid_log_values / 2, fit_scale=True
        )
        resolution = tuple(resolution_shares(list(candidate.cores)).tolist())
        log_weights = log_h - log_q
        # The draws where q falls shortest of h (largest weights) feed the kicks:
        # error-maximising indices, found at no extra cost.
        order = torch.argsort(log_weights, descending=True)[: max(4 * self.kick_rank, 16)]
        self.kick_pool = _nearest_node(draws[order].double(), self.nodes)
        zero = log_h == -math.inf
        n_draws = int(draws.shape[0])
        if n_draws < 2 or bool(zero.all()):
            return SelfCheck(
                ess=0.0,
                kl=math.inf,
                elbo=-math.inf,
                elbo_std_error=math.inf,
                log_normalizer=-math.inf,
                log_normalizer_std_error=math.inf,
                zero_weight_fraction=1.0,
                nonzero_elbo=-math.inf,
                off_grid_error=off_grid_error,
                resolution=resolution,
                edge_mass=(math.nan,) * self.d,
                n_samples=n_draws,
                n_evaluations=spent,
            )
        diagnostics = importance_diagnostics(log_h, log_q)
        weights = torch.softmax(log_weights, 0)
        band = EDGE_BAND * (candidate.high - candidate.low).double()
        low, high = candidate.low.double(), candidate.high.double()
        near_edge = ((draws.double() - low) < band) | ((high - draws.double()) < band)
        edge_mass = tuple((weights[:, None] * near_edge).sum(0).tolist())
        return SelfCheck(
            ess=diagnostics.ess,
            kl=diagnostics.log_normalizer - diagnostics.elbo,
            elbo=diagnostics.elbo,
            elbo_std_error=diagnostics.elbo_std_error,
            log_normalizer=diagnostics.log_normalizer,
            log_normalizer_std_error=diagnostics.log_normalizer_std_error,
            zero_weight_fraction=float(zero.double().mean()),
            nonzero_elbo=float(log_weights[~zero].mean()),
            off_grid_error=off_grid_error,
            resolution=resolution,
            edge_mass=edge_mass,
            n_samples=n_draws,
            n_evaluations=spent,
        )

    # ------------------------------------------------------------------ run
    def run(self, max_sweeps: int) -> list[torch.Tensor]:
        d, report = self.d, self.report
        if self.method == "two-site" and d > 1:
            step, positions = self.two_site_step, list(range(1, d))
        else:
            step, positions = self.one_site_step, list(range(d))
        checking = self.checking
        best: tuple[list[torch.Tensor], float] | None = None
        best_check: SelfCheck | None = None
        # The best at the last improvement beyond the noise: small gains that
        # add up to one beyond the noise count, however slowly they come.
        reference_check: SelfCheck | None = None
        reference_error = math.inf
        best_error = math.inf
        since_improvement = unresolved_run = 0
        forward = True
        over_budget = False
        stop_reason = f"max_sweeps={max_sweeps} reached"
        for sweep in range(max_sweeps):
            self.rank_capped = False
            order = positions if forward else positions[::-1]
            if not all(step(position, forward) for position in order):
                # A half-sweep cut short leaves a train whose centre is stale.
                over_budget = True
                stop_reason = f"max_evals={self.max_evals} reached"
                break
            report.n_sweeps = sweep + 1
            cores, shift = list(self.cores), self.value_shift
            valid = math.isfinite(shift) and all(bool(torch.isfinite(c).all()) for c in cores)
            valid = valid and bool(torch.isfinite(log_norm_squared(cores)))
            error = self.grid_error(cores, shift) if valid else math.inf
            check = self.self_check(cores) if valid and checking else None
            report.error_history.append(error)
            report.rank_history.append((1, *(core.shape[2] for core in cores)))
            report.check_history.append(check)
            if checking:
                improved = check is not None and check.improves_on(reference_check)
                if improved:
                    reference_check = check
                if check is not None and (
                    best_check is None or check.score() > best_check.score()
                ):
                    best, best_check, best_error = (cores, shift), check, error
                    report.best_sweep = sweep + 1
            else:
                improved = valid and error < 0.95 * reference_error
                if improved:
                    reference_error = error
                if valid and error < best_error:
                    best, best_error = (cores, shift), error
                    report.best_sweep = sweep + 1
            since_improvement = 0 if improved else since_improvement + 1
            report.rank_capped = self.rank_capped
            if self.verbose:
                message = (
                    f"TT-cross half-sweep {sweep + 1}: ranks {report.rank_history[-1]}, "
                    f"held-out grid error {error:.3e}"
                )
                if check is not None:
                    message += (
                        f", self-check ESS {check.ess:.3f}, KL {check.kl:.3g}, "
                        f"ELBO {check.elbo:.4g}"
                    )
                print(f"{message}, {report.n_evaluations} evaluations")
            if d == 1:
                stop_reason = "one dimension: the whole fiber was evaluated"
                break
            if error <= self.tol:
                stop_reason = "held-out grid error below tol"
                break
            if check is not None and check is best_check and check.kl <= KL_FLOOR:
                # Nothing left that the draws can see: the ELBO cannot improve
                # by more than this (unless a later train finds mass that these
                # draws never visit).
                stop_reason = f"self-check reverse-KL estimate below {KL_FLOOR:g}"
                break
            unresolved = check is not None and max(check.resolution) > self.resolution_tol
            unresolved_run = unresolved_run + 1 if unresolved else 0
            if self.abandon_unresolved and unresolved_run >= 2:
                stop_reason = "resolution check failed in two half-sweeps in a row"
                break
            if since_improvement >= self.patience:
                measure = "the self-check ELBO" if checking else "the held-out grid error"
                stop_reason = f"no improvement of {measure} in {self.patience} half-sweeps"
                break
            forward = not forward
        report.stop_reason = stop_reason
        if best is None:
            self.fail(over_budget)
        cores, shift = best
        report.log_shift = shift
        report.best_error = best_error
        report.tol_reached = best_error <= self.tol
        if best_check is not None:
            report.ess, report.kl, report.elbo = best_check.ess, best_check.kl, best_check.elbo
            report.log_normalizer = best_check.log_normalizer
            report.off_grid_error = best_check.off_grid_error
            report.resolution = best_check.resolution
            report.converged = best_check.ess >= self.min_ess
        else:
            report.converged = report.tol_reached
            if self.build_candidate is not None:
                # No draws, but the resolution check needs only the train.
                try:
                    candidate = self.build_candidate(cores)
                    report.resolution = tuple(resolution_shares(list(candidate.cores)).tolist())
                except (ValueError, torch.linalg.LinAlgError):
                    pass
        if not report.converged:
            report.advice = self.advice(best_check, over_budget)
        return cores

    def fail(self, over_budget: bool) -> None:
        """Raise the error that says why no train can be returned."""
        report = self.report
        if not self.any_finite:
            raise NoTrainFoundError(
                f"{self.name} was -inf at every evaluated point ({report.n_evaluations} "
                "points): the density is zero on the domain as far as cross can see. "
                "Check the domain: it must hold the mass.",
                report.n_evaluations,
            )
        if over_budget and report.n_sweeps == 0:
            raise ValueError(
                f"max_evals={self.max_evals} is too small for one sweep of TT-cross "
                f"({report.n_evaluations} evaluations spent); raise it."
            )
        raise NoTrainFoundError(
            f"TT-cross found no finite, non-zero train of sqrt({self.name}) in "
            f"{report.n_sweeps} half-sweeps: every fiber it evaluated was zero (or the "
            f"interpolation broke down). {self.name} is -inf or negligible almost "
            "everywhere on the grid; tighten the domain around the mass, raise n_basis "
            "so that the grid sees it, or raise n_seeds.",
            report.n_evaluations,
        )

    def advice(self, check: SelfCheck | None, over_budget: bool) -> list[str]:
        """What to change, from the returned train's diagnostics."""
        advice = []
        report = self.report
        unresolved = report.unresolved
        if unresolved:
            largest = max(report.resolution)
            advice.append(
                f"raise n_basis (or pass n_basis='auto'): coordinate(s) {_short_list(unresolved)} "
                f"keep up to {largest:.1e} of their energy in the top quarter of the "
                f"Legendre degrees (resolved: below {report.resolution_tol:g})"
            )
        if report.rank_capped:
            advice.append(f"raise tt_rank: the ranks reached the cap {self.max_rank}")
        if check is not None:
            edges = [k for k, mass in enumerate(check.edge_mass) if mass > 0.01]
            if edges:
                share = max(check.edge_mass[k] for k in edges)
                advice.append(
                    "move or widen the domain (or let the estimator choose it): up to "
                    f"{share:.0%} of the mass lies within {EDGE_BAND:.0%} of the box edge "
                    f"in coordinate(s) {_short_list(edges)}"
                )
        if self.method == "one-site":
            advice.append("try cross_method='two-site' (about n_basis times the evaluations)")
        if over_budget:
            advice.append("raise max_evals")
        elif report.stop_reason.startswith("max_sweeps"):
            advice.append("raise max_sweeps")
        return advice


def _short_list(values: list[int], limit: int = 8) -> str:
    shown = ", ".join(str(value) for value in values[:limit])
    return shown + (f", ... ({len(values)} in all)" if len(values) > limit else "")


def tt_cross(
    log_density: Callable,
    nodes: torch.Tensor,
    *,
    max_rank: int,
    tol: float = 1e-6,
    max_evals: int | None = None,
    max_sweeps: int = 20,
    batch_size: int = 100_000,
    n_test: int = 1000,
    n_seeds: int = 128,
    n_seed_steps: int = 25,
    generator: torch.Generator,
    dtype: torch.dtype = torch.float64,
    method: str = "one-site",
    kick_rank: int = 2,
    patience: int = 3,
    domain: torch.Tensor | None = None,
    seeds: torch.Tensor | None = None,
    known_seeds: torch.Tensor | None = None,
    build_candidate: Callable[[list[torch.Tensor]], TTDistribution] | None = None,
    n_check_samples: int = 2000,
    min_ess: float = 0.5,
    resolution_tol: float = 1e-3,
    abandon_unresolved: bool = False,
    verbose: int = 0,
    callable_name: str = "log_density",
) -> tuple[list[torch.Tensor], CrossReport]:
    """Nodal cores of ``exp((log h - c) / 2)`` on a Gauss–Legendre grid.

    Parameters
    ----------
    log_density : callable
        See :class:`LogDensityEvaluator`.
    nodes : tensor (d, n)
        The grid: ``n`` nodes per coordinate, inside the box.
    max_rank : int
        Maximum bond rank.
    tol : float
        Target relative error on ``n_test`` held-out grid points: cross stops
        when it is reached.
    max_evals : int, optional
        Budget of evaluations (points), self-checks included; cross stops
        before exceeding it.
    max_sweeps : int
        Maximum number of half-sweeps.
    batch_size : int
        Maximum number of points per call of ``log_density``.
    n_test : int
        Held-out random grid points for the error estimate: half uniform on
        the grid, half within two nodes of a seed. As many off-grid points
        for the self-check.
    n_seeds, n_seed_steps : int
        Random starts and gradient-ascent steps of :func:`find_seeds`
        (``n_seed_steps=0``: random starts only). Ignored with ``seeds``.
    known_seeds : tensor (m, d) or None
        Points known to carry mass (the modes of a search), added to the
        seeds of the ascents where none came within :data:`KNOWN_SEED_NODES`
        grid nodes of them in :data:`KNOWN_SEED_SHARE` of the coordinates: a
        narrow mode whose basin the
        random ascents miss then enters the index sets. Ignored with
        ``seeds``.
    generator : torch.Generator
    dtype : torch.dtype
        Of the points passed to ``log_density``.
    method : {"one-site", "two-site"}
        ``"one-site"`` evaluates ``r n (r + kick_rank)`` points per core and
        half-sweep and truncates each fiber's SVD at its numerical rank
        (relative ``min(1e-10, tol / sqrt(d - 1))``); ``"two-site"`` evaluates
        ``r n n r`` points per bond and truncates at ``tol / sqrt(d - 1)``.
        Both cap the ranks at ``max_rank`` (see the module docstring).
    kick_rank : int, default=2
        One-site only: multi-indices added to every fiber (half from the last
        self-check's largest weights, or random moves of the index set's rows
        before there is one; half seeds); 0: no enrichment.
    patience : int, default=3
        Stop when the best train (by the self-check ELBO, or by the held-out
        grid error without a self-check) has not improved for this many
        half-sweeps.
    domain : tensor (d, 2), optional
        The box (default: the span of the nodes); the seeds and the off-grid
        held-out points are drawn in it.
    seeds : tensor (m, d), optional
        Seed points (e.g. ``report.seeds`` of an earlier run on the same
        box); skips :func:`find_seeds`.
    build_candidate : callable, optional
        ``build_candidate(nodal_cores)`` returns the
        :class:`~sktt_flow.tt.distribution.TTDistribution` that these nodal
        cores would give (or raises ValueError). With it every half-sweep's
        train gets a :class:`SelfCheck`, which chooses the returned train
        (largest ELBO) and the stop; without it, the held-out grid error does.
    n_check_samples : int, default=2000
        Exact draws per self-check (0 disables the self-check).
    min_ess : float, default=0.5
        The self-check ESS below which the result counts as not converged
        (``report.converged``, ``report.advice``).
    resolution_tol : float, default=1e-3
        Top-quarter energy share above which a coordinate counts as
        unresolved (:func:`resolution_shares`).
    abandon_unresolved : bool, default=False
        Stop as soon as two half-sweeps in a row fail the resolution check:
        more sweeps on this grid cannot fix that (``n_basis="auto"`` then
        tries a finer one).
    verbose : int, default=0
    callable_name : str, default="log_density"
        What error messages call ``log_density`` (the estimator says
        ``log_target``).

    Returns
    -------
    cores : list of tensors (r_{k-1}, n, r_k), float64
        Values, not coefficients: ``cores`` interpolate the tensor ``A``
        with ``c = report.log_shift``. Of all complete half-sweeps, the train
        with the largest self-check ELBO (without a self-check: the lowest
        held-out grid error). Always finite and non-zero.
    report : CrossReport

    Raises
    ------
    ValueError
        When the callable misbehaves (see :class:`LogDensityEvaluator`), when
        ``max_evals`` does not cover one half-sweep, and when no half-sweep
        gave a finite, non-zero train (e.g. ``log_density`` was ``-inf`` at
        every evaluated point); the message names ``callable_name``.
    """
    if method not in ("one-site", "two-site"):
        raise ValueError(f'method must be "one-site" or "two-site", got {method!r}.')
    for name, value, minimum in (
        ("max_rank", max_rank, 1),
        ("max_sweeps", max_sweeps, 1),
        ("n_test", n_test, 2),
        ("kick_rank", kick_rank, 0),
        ("patience", patience, 1),
        ("n_check_samples", n_check_samples, 0),
    ):
        check_positive_int(value, name, minimum)
    if not 0.0 <= min_ess <= 1.0:
        raise ValueError(f"min_ess must be in [0, 1], got {min_ess!r}.")
    if not resolution_tol > 0:
        raise ValueError(f"resolution_tol must be positive, got {resolution_tol!r}.")
    cross = _Cross(
        log_density,
        nodes,
        domain=domain,
        max_rank=max_rank,
        tol=tol,
        max_evals=max_evals,
        batch_size=batch_size,
        n_test=n_test,
        generator=generator,
        dtype=dtype,
        method=method,
        kick_rank=kick_rank,
        build_candidate=build_candidate,
        n_check_samples=n_check_samples,
        min_ess=min_ess,
        resolution_tol=resolution_tol,
        abandon_unresolved=abandon_unresolved,
        patience=patience,
        verbose=verbose,
        callable_name=callable_name,
    )
    cross.start(seeds, n_seeds, n_seed_steps, known_seeds)
    cores = cross.run(max_sweeps)
    return cores, cross.report
