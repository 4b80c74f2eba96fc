"""Modes of an unnormalised log-density and the Laplace approximation at each.

:func:`find_modes` climbs ``log h`` from many starting points at once (one call
of ``log h`` per step for all of them), polishes every climb with damped Newton
steps, merges the climbs that reached the same mode, and returns each distinct
mode with its Hessian and Laplace covariance. It is what an automatic box and
an affine preconditioner for the TT base are built from (:mod:`.box`).

The search has two phases, both batched over the starts:

1. **Sign-based ascent** (Rprop, Riedmiller and Braun 1993): every coordinate of
   every start has its own step length, which grows by 1.2 while the sign of
   that coordinate's gradient stays the same and halves when it flips. The
   step therefore adapts to the scale of each coordinate separately, whatever
   the magnitude of the gradient: coordinates with standard deviations
   ``1e-3`` and ``1e3`` in one target both converge in a few tens of steps,
   where one learning rate (plain gradient ascent, Adam) would have to be
   tuned to the smallest. A step that lowers ``log h`` or leaves its support
   is refused and that start's step lengths halve (a per-start trust region).
   A climb that runs off to infinity (an improper target such as
   ``log h = sum(x)``, whose steps keep growing) is seen within about a
   hundred steps and stopped there. A start leaves this phase once it gains
   less than 0.05 nats in 5 steps: it costs one gradient per step, so it is
   the cheap way to travel, and Newton's steps are the fast way to finish.
2. **Levenberg–Marquardt polishing**: steps ``(P + lambda D) s = g`` with
   ``P = -Hessian`` (autograd, one backward pass per coordinate for all
   starts at once; differences of gradients where double backward is
   unavailable or not finite), ``D = diag|P|`` (Marquardt's scaling, so that
   the damping too respects each coordinate's scale) and a per-start
   ``lambda`` adjusted by the ratio of actual to predicted increase. Within
   0.01 nats of the quadratic model's maximum the step is Newton's, undamped,
   and converges quadratically. A start has converged when its Newton
   decrement ``g^T P^{-1} g / 2``, the increase of ``log h`` that the
   quadratic model still promises (a quantity in nats, invariant under affine
   changes of coordinates), is below ``tol`` and one more Newton step has been
   tried from there.

Measured on one thread of a shared CPU (32 starts, defaults): a correlated
20-D Gaussian 2.4k evaluations, 0.3 s; the 31-D logistic-regression posterior
of the breast-cancer data 2.2k evaluations, 0.3-0.6 s (the Hessians dominate
the time); Neal's funnel (d = 10) 2.4k, 0.3 s; the double Rosenbrock
(d = 11) 11k (its ``logaddexp`` has NaN second derivatives, so most Hessians
come from differences of gradients), 0.8 s.

The Laplace covariance is the inverse of ``P``, computed after scaling ``P`` to
unit diagonal so that widely different coordinate scales do not cost accuracy.
When ``P`` is not positive definite (a saddle, a flat or a nearly singular
direction), its scaled eigenvalues are replaced by their absolute values and
floored at ``eigenvalue_floor`` times the largest one, and the mode is flagged
``repaired``.

Every mode also gets a cheap check of the Laplace approximation: draws
``x = m + L y`` with ``y ~ N(0, I)`` and ``L L^T`` the covariance give
log-weights ``log h(x) - log N(x; m, Sigma)``, whose mean falls short of the
Laplace log-mass by 0 for a Gaussian target and by many nats where the Gaussian
is a poor local model (the mean, not the effective sample size: from a few
tens of draws the effective sample size is biased upwards and did not separate
a mildly skewed posterior from a funnel in our measurements, the mean did).
Neal's funnel is the standard example: its joint density has its only maximum
at ``v = -s^2 (d - 1) / 2`` (``v = -40.5`` for ``d = 10, s = 3``), far down the
neck, where the mass is negligible and the local covariance (``exp(v)`` in the
``x_i``) says nothing about the bulk. The search finds that maximum correctly;
the check is what flags it (``non_gaussian``: gaps of 40-190 nats from 32
draws, depending on the seed).

References
----------
.. [1] Riedmiller and Braun, "A direct adaptive method for faster
   backpropagation learning: the RPROP algorithm", IEEE ICNN 1993.
.. [2] Marquardt, "An algorithm for least-squares estimation of nonlinear
   parameters", J. SIAM 11(2), 1963.
.. [3] Nocedal and Wright, "Numerical Optimization", 2nd ed., Springer 2006,
   sections 4 (trust regions) and 9 (the Newton decrement's role).
"""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from sktt_flow.utils.random import torch_generator
from sktt_flow.utils.validation import check_positive_float, check_positive_int

__all__ = ["FATES", "ModeSearch", "find_modes", "laplace_covariance"]

#: What became of a start (the values of :attr:`ModeSearch.fates`).
FATES = ("converged", "diverged", "infeasible", "not_converged", "stalled")

#: Rprop's step growth and shrink factors (Riedmiller and Braun's values).
_GROW, _SHRINK = 1.2, 0.5
#: Initial Rprop step, as a fraction of ``scale``.
_INITIAL_STEP = 0.1
#: A start leaves the ascent phase when it has gained less than this many nats
#: over the last ``_STALL_WINDOW`` steps: Newton polishing finishes faster.
_STALL_GAIN, _STALL_WINDOW = 0.05, 5
#: Levenberg–Marquardt: starting damping, the largest one before a start is
#: declared stalled, and the acceptance threshold on actual / predicted gain.
_LM_START, _LM_GIVE_UP, _LM_ACCEPT = 1e-3, 1e12, 1e-4
#: Newton decrement (nats) below which the quadratic model is trusted and the
#: undamped Newton step is tried first.
_NEWTON_REGION = 1e-2
#: A start whose Newton decrement is below this when no improving step is left
#: is at a maximum up to the round-off of ``log h`` (float32 targets, say).
_ROUNDOFF_DECREMENT = 1e-4
#: Divergence: a start is declared diverged when it gets this many times
#: ``max(scale, |start|, 1)`` away from the origin.
_DIVERGENCE_FACTOR = 1e6


@dataclass
class ModeSearch:
    """The result of :func:`find_modes`.

    Modes are sorted by decreasing log value. ``k`` is the number of distinct
    modes, ``n`` the number of starts and ``d`` the dimension; all tensors are
    float64 (bool or int64 where said) on the search's device.

    Attributes
    ----------
    modes : tensor (k, d)
    log_values : tensor (k,)
        ``log h`` at the modes.
    hessians : tensor (k, d, d)
        Symmetrised Hessians of ``log h`` at the modes (autograd).
    covariances : tensor (k, d, d)
        Laplace covariances: the inverse of ``-hessians``, repaired where
        ``repaired`` is set (see the module's notes).
    log_masses : tensor (k,)
        Laplace estimate of the log of the mass of each mode,
        ``log h(m) + d/2 log(2 pi) + 1/2 log det Sigma``; comparing them
        between modes (and with the self-check of a TT) is meaningful only
        where ``laplace_gaps`` is small.
    laplace_gaps : tensor (k,)
        ``log_masses`` minus the ELBO of the mode's Laplace Gaussian
        ``N(m, Sigma)``, estimated from ``n_check_draws`` draws:
        ``-mean(log h(x) - log h(m) + |y|^2 / 2)`` with ``x = m + L y``. It is
        0 for a Gaussian target and about ``KL(N(m, Sigma) || h / Z)`` when
        the Laplace mass is right. Draws where ``log h = -inf`` are left out
        of the mean (a Gaussian leaking over the edge of the support still
        describes the mass inside); the gap is ``+inf`` when more than half
        of them are outside.
        Measured (2048 draws): 1.4 nats for the 31-D logistic-regression
        posterior of the breast-cancer data, 12-15 for the 2-D banana, 15-70
        for Neal's funnel in 2-D and hundreds in 10-D.
    repaired : tensor (k,) of bool
        The negative Hessian was not (numerically) positive definite and its
        eigenvalues were repaired.
    non_gaussian : tensor (k,) of bool
        ``laplace_gaps > max_laplace_gap``: the Laplace Gaussian does not
        describe the mass around this mode (Neal's funnel's neck, a banana),
        so neither does a box built from its covariance.
    n_starts_per_mode : tensor (k,) of int64
        Starts that converged to each mode.
    starts : tensor (n, d)
        The starting points: the user's ``starts`` first, then the random ones.
    end_points : tensor (n, d)
        Where each start ended.
    end_log_values : tensor (n,)
        ``log h`` there.
    fates : tuple of str, length n
        One of :data:`FATES` per start: ``converged`` (reached a mode),
        ``diverged`` (ran away to infinity while ``log h`` kept increasing,
        or stopped where the local standard deviation exceeds the divergence
        radius: an improper target or a supremum at infinity), ``infeasible``
        (``log h`` or its gradient was not finite at the start),
        ``not_converged`` (steps ran out), ``stalled`` (no step improves
        ``log h`` although the gradient is not small: a maximum on the
        boundary of the support, or a non-smooth target).
    mode_of_start : tensor (n,) of int64
        Index of the mode each converged start reached, -1 for the others.
    n_evaluations : int
        Points at which ``log h`` was evaluated (every call counted).
    n_calls : int
        Calls of ``log h``.
    """

    modes: torch.Tensor
    log_values: torch.Tensor
    hessians: torch.Tensor
    covariances: torch.Tensor
    log_masses: torch.Tensor
    laplace_gaps: torch.Tensor
    repaired: torch.Tensor
    non_gaussian: torch.Tensor
    n_starts_per_mode: torch.Tensor
    starts: torch.Tensor
    end_points: torch.Tensor
    end_log_values: torch.Tensor
    fates: tuple[str, ...]
    mode_of_start: torch.Tensor
    n_evaluations: int
    n_calls: int

    @property
    def n_modes(self) -> int:
        """Number of distinct modes found."""
        return int(self.modes.shape[0])

    @property
    def diverged(self) -> torch.Tensor:
        """Bool tensor (n,): the starts whose climb ran off to infinity."""
        return torch.tensor(
            [fate == "diverged" for fate in self.fates],
            dtype=torch.bool,
            device=self.starts.device,
        )

    @property
    def any_diverged(self) -> bool:
        """Whether some start diverged: the target may be improper."""
        return "diverged" in self.fates


# ------------------------------------------------------------------ the target
def _accepts_grad_keyword(function: Callable) -> bool:
    """Whether ``function(points, grad=...)`` is a valid call."""
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):  # builtins and some C extensions
        return False
    # Only a parameter named ``grad``: ``**kwargs`` does not count, since
    # wrappers such as ``torch.autograd.Function.apply`` take anything and
    # pass it on to a function that does not expect it.
    return any(
        p.name == "grad" and p.kind is not inspect.Parameter.POSITIONAL_ONLY for p in parameters
    )


class _Target:
    """``log h`` for the search: one signature, float64 values, counted calls.

    Accepts both the estimator's evaluator (``log_target(points, grad=True)``,
    which checks and counts on its own) and a plain ``log_target(points)``.
    NaN and ``+inf`` values count as ``-inf``: the point is refused like a
    point outside the support, so a target that overflows far out does not
    stop the search.
    """

    def __init__(self, log_target: Callable, n_features: int, dtype: torch.dtype):
        if not callable(log_target):
            raise TypeError(f"log_target must be callable, got {type(log_target).__name__}.")
        self.log_target = log_target
        self.takes_grad = _accepts_grad_keyword(log_target)
        self.n_features = n_features
        self.dtype = dtype
        self.n_calls = 0
        self.n_evaluations = 0

    def __call__(self, points: torch.Tensor, *, grad: bool) -> torch.Tensor:
        self.n_calls += 1
        self.n_evaluations += points.shape[0]
        with torch.set_grad_enabled(grad):
            if self.takes_grad:
                values = self.log_target(points, grad=grad)
            else:
                values = self.log_target(points)
        if not isinstance(values, torch.Tensor):
            values = torch.as_tensor(np.asarray(values, dtype=np.float64), device=points.device)
        if values.is_complex():
            raise ValueError("log_target returned complex values; it must return real ones.")
        if values.shape not in ((points.shape[0],), (points.shape[0], 1)):
            raise ValueError(
                f"log_target must return {points.shape[0]} values for a batch of "
                f"{points.shape[0]} points, got shape {tuple(values.shape)}."
            )
        values = values.reshape(-1).to(device=points.device, dtype=torch.float64)
        bad = torch.isnan(values) | (values == math.inf)
        if bool(bad.any()):
            values = torch.where(bad, torch.full_like(values, -math.inf), values)
        return values

    def values(self, points: torch.Tensor) -> torch.Tensor:
        """``log h`` at ``points`` (m, d), without gradient."""
        with torch.no_grad():
            return self(points.to(self.dtype), grad=False)

    def derivatives(self, points: torch.Tensor, *, hessian: bool):
        """Values (m,), gradients (m, d) and, if asked, Hessians (m, d, d), float64.

        Rows are independent points, so the gradient of the sum of the
        values holds every row's own gradient, and the Hessian needs one
        backward pass per coordinate for all rows together. Rows whose value
        is ``-inf`` get NaN derivatives.
        """
        leaf = points.detach().to(self.dtype).requires_grad_(True)
        values = self(leaf, grad=True)
        m, d = points.shape
        finite = torch.isfinite(values)
        gradients = torch.full((m, d), math.nan, dtype=torch.float64, device=points.device)
        hessians = (
            torch.full((m, d, d), math.nan, dtype=torch.float64, device=points.device)
            if hessian
            else None
        )
        if not bool(finite.any()):
            return values.detach(), gradients, hessians
        if not values.requires_grad:
            raise ValueError(
                "find_modes needs the gradient of log_target: it returned values that "
                "carry no gradient with respect to its input (numpy inside, .item(), "
                ".detach() or torch.no_grad(), or values that do not depend on the "
                "input, which have no mode to find). Write it with torch operations, or "
                "give the domain yourself."
            )
        total = values[finite].sum()
        (gradient,) = torch.autograd.grad(total, leaf, create_graph=hessian)
        gradients[finite] = gradient[finite].detach().double()
        if hessian:
            hessians[finite] = self._hessian_rows(leaf, gradient)[finite]
            # Double backward can fail where the first one did not: torch's
            # logaddexp gives NaN second derivatives once its arguments differ
            # by more than ~745 (an underflow times an infinity). Such rows get
            # differences of gradients instead.
            broken = finite & torch.isfinite(gradients).all(-1)
            broken &= ~torch.isfinite(hessians).flatten(1).all(-1)
            if bool(broken.any()):
                hessians[broken] = self._finite_difference_hessian(
                    points[broken].detach().double()
                )
            hessians = 0.5 * (hessians + hessians.transpose(1, 2))
        return values.detach(), gradients, hessians

    def _hessian_rows(self, leaf: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
        m, d = leaf.shape
        out = torch.zeros(m, d, d, dtype=torch.float64, device=leaf.device)
        if not gradient.requires_grad:
            # Either log h is linear (the Hessian is zero) or its backward is
            # not differentiable (a once_differentiable autograd Function):
            # the differences of gradients below serve both.
            return self._finite_difference_hessian(leaf.detach().double())
        try:
            for j in range(d):
                (row,) = torch.autograd.grad(
                    gradient[:, j].sum(), leaf, retain_graph=j < d - 1, allow_unused=True
                )
                if row is not None:
                    out[:, j, :] = row.double()
        except RuntimeError:
            # No double backward (a custom autograd Function, say): central
            # differences of the gradient, one call for all rows.
            return self._finite_difference_hessian(leaf.detach().double())
        return out

    def _finite_difference_hessian(self, points: torch.Tensor) -> torch.Tensor:
        m, d = points.shape
        # eps^(1/3) relative steps balance truncation and round-off for
        # central differences of a gradient.
        step = torch.finfo(self.dtype).eps ** (1.0 / 3.0) * points.abs().clamp_min(1.0)
        offsets = torch.diag_embed(step)  # (m, d, d): row j moves coordinate j
        shifted = torch.cat(
            [
                (points[:, None, :] + offsets).reshape(-1, d),
                (points[:, None, :] - offsets).reshape(-1, d),
            ]
        )
        _, gradients, _ = self.derivatives(shifted, hessian=False)
        plus, minus = gradients.reshape(2, m, d, d)
        return (plus - minus) / (2.0 * step[:, :, None])


# ------------------------------------------------------------------- helpers
def _check_scale(scale, n_features: int, device) -> torch.Tensor:
    if isinstance(scale, numbers.Real) and not isinstance(scale, bool):
        value = check_positive_float(scale, "scale")
        return torch.full((n_features,), value, dtype=torch.float64, device=device)
    if isinstance(scale, torch.Tensor):
        scale = scale.detach().cpu()
    try:
        array = np.asarray(scale, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"scale must be a positive number or (d,) array: {error}") from error
    if array.shape != (n_features,):
        raise ValueError(
            f"scale must be a number or have shape ({n_features},), got shape {array.shape}."
        )
    if not np.all(np.isfinite(array) & (array > 0)):
        raise ValueError("scale must be positive and finite in every coordinate.")
    return torch.as_tensor(array, device=device)


def _check_starts(starts, n_features: int, device) -> torch.Tensor:
    if starts is None:
        return torch.empty(0, n_features, dtype=torch.float64, device=device)
    if isinstance(starts, torch.Tensor):
        tensor = starts.detach().to(device=device, dtype=torch.float64)
    else:
        try:
            tensor = torch.as_tensor(np.asarray(starts, dtype=np.float64), device=device)
        except (TypeError, ValueError) as error:
            raise ValueError(f"starts must be a numeric (m, d) array: {error}") from error
    if tensor.ndim == 1 and tensor.shape[0] == n_features:
        tensor = tensor[None, :]
    if tensor.ndim != 2 or tensor.shape[1] != n_features:
        raise ValueError(
            f"starts must have shape (m, {n_features}), got shape {tuple(tensor.shape)}."
        )
    if not bool(torch.isfinite(tensor).all()):
        raise ValueError("starts must be finite.")
    return tensor.clone()


def laplace_covariance(
    hessians: torch.Tensor, eigenvalue_floor: float = 1e-10
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Laplace covariances ``(-H)^{-1}``, with a repair where ``-H`` is not positive definite.

    ``P = -H`` is first scaled to unit diagonal, ``C = S^{-1} P S^{-1}`` with
    ``S = diag(sqrt(P_jj))``, so that coordinates of very different scales
    (standard deviations ``1e-3`` and ``1e3``) cost no accuracy: the
    eigenvalues of ``C`` reflect correlations only. Eigenvalues of ``C`` that
    are negative or below ``eigenvalue_floor`` times the largest are replaced
    by ``max(|mu|, floor)``: a direction of negative curvature keeps the
    length scale of its curvature (as in saddle-free Newton), a flat one gets
    the longest length scale the floor allows. Coordinates with ``P_jj <= 0``
    are scaled by the largest positive ``sqrt(P_jj)`` of the same matrix.

    Parameters
    ----------
    hessians : tensor (k, d, d)
        Symmetric Hessians of ``log h``.
    eigenvalue_floor : float
        Relative floor on the eigenvalues of the scaled precision.

    Returns
    -------
    covariances, precisions : tensors (k, d, d)
        The (repaired) covariance and its inverse.
    repaired : tensor (k,) of bool
    """
    precision = -0.5 * (hessians + hessians.transpose(-1, -2))
    diagonal = torch.diagonal(precision, dim1=-2, dim2=-1)
    positive = diagonal > 0
    largest = torch.where(positive, diagonal, torch.zeros_like(diagonal)).amax(-1, keepdim=True)
    # A matrix without any positive curvature (log h linear or flat) gets unit
    # scaling: its covariance is then only the floor's, and it is flagged.
    largest = torch.where(largest > 0, largest, torch.ones_like(largest))
    scale = torch.sqrt(torch.where(positive, diagonal, largest))
    scaled = precision / (scale[..., :, None] * scale[..., None, :])
    eigenvalues, vectors = torch.linalg.eigh(scaled)
    top = eigenvalues.abs().amax(-1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)
    floor = eigenvalue_floor * top
    repaired_values = torch.maximum(eigenvalues.abs(), floor)
    repaired = ((eigenvalues < floor).any(-1)) | ~positive.all(-1)
    inverse_scaled = (vectors / repaired_values[..., None, :]) @ vectors.transpose(-1, -2)
    covariances = inverse_scaled / (scale[..., :, None] * scale[..., None, :])
    precisions = ((vectors * repaired_values[..., None, :]) @ vectors.transpose(-1, -2)) * (
        scale[..., :, None] * scale[..., None, :]
    )
    covariances = 0.5 * (covariances + covariances.transpose(-1, -2))
    precisions = 0.5 * (precisions + precisions.transpose(-1, -2))
    return covariances, precisions, repaired


def _newton_decrement(gradients: torch.Tensor, hessians: torch.Tensor) -> torch.Tensor:
    """``g^T P^{-1} g / 2`` with ``P = -H``; ``+inf`` where ``P`` is not positive definite."""
    factor, info = torch.linalg.cholesky_ex(-hessians)
    decrement = torch.full(
        gradients.shape[:1], math.inf, dtype=torch.float64, device=gradients.device
    )
    ok = (info == 0) & torch.isfinite(gradients).all(-1)
    if bool(ok.any()):
        solved = torch.linalg.solve_triangular(
            factor[ok], gradients[ok, :, None], upper=False
        ).squeeze(-1)
        decrement[ok] = 0.5 * solved.square().sum(-1)
    return decrement


def _damped_newton_steps(gradients, hessians, damping, fallback_scale):
    """Levenberg–Marquardt steps ``(P + lambda D) s = g`` and their predicted gains.

    ``D = diag|P|`` floored at ``1e-10 max|P_jj|`` (or ``1 / scale^2`` where
    ``P`` has no diagonal at all); ``lambda`` grows tenfold, per start, until
    the system is positive definite.
    """
    precision = -hessians
    diagonal = torch.diagonal(precision, dim1=-2, dim2=-1).abs()
    top = diagonal.amax(-1, keepdim=True)
    floor = torch.where(top > 0, 1e-10 * top, 1.0 / fallback_scale.square())
    weights = torch.maximum(diagonal, floor)
    damping = damping.clone()
    for _ in range(40):
        system = precision + torch.diag_embed(damping[:, None] * weights)
        factor, info = torch.linalg.cholesky_ex(system)
        failed = info != 0
        if not bool(failed.any()):
            break
        damping = torch.where(failed, (damping * 10.0).clamp_min(_LM_START), damping)
    steps = torch.cholesky_solve(gradients[..., None], factor).squeeze(-1)
    predicted = (steps * gradients).sum(-1) - 0.5 * torch.einsum(
        "ki,kij,kj->k", steps, precision, steps
    )
    return steps, predicted, damping


# ---------------------------------------------------------------- the search
def find_modes(
    log_target: Callable,
    n_features: int,
    *,
    starts=None,
    n_starts: int = 32,
    scale=1.0,
    max_steps: int = 200,
    max_newton_steps: int = 50,
    tol: float = 1e-10,
    merge_distance: float = 0.5,
    eigenvalue_floor: float = 1e-10,
    n_check_draws: int = 32,
    max_laplace_gap: float = 5.0,
    divergence_radius: float | None = None,
    generator=None,
    dtype: torch.dtype = torch.float64,
    device=None,
) -> ModeSearch:
    """Local maxima of ``log h`` by multi-start ascent, with Laplace covariances.

    See the module's notes for the method.

    Parameters
    ----------
    log_target : callable
        ``log_target(points, grad=True)`` or ``log_target(points)`` with
        ``points`` a tensor (m, d) of ``dtype``; returns m values (a tensor,
        differentiable in torch; array-likes only where no gradient is
        needed, which is never here). ``-inf`` means zero density; NaN and
        ``+inf`` are treated as ``-inf``.
    n_features : int
        The dimension ``d``.
    starts : array-like (m, d), optional
        Starting points of the user (a guess of the mode, say); they come
        first in :attr:`ModeSearch.starts`.
    n_starts : int, default=32
        Random starts drawn from ``N(0, diag(scale^2))``, in addition to
        ``starts``. May be 0 when ``starts`` is given.
    scale : float or array-like (d,), default=1.0
        Spread of the random starts and the initial step length (a tenth of
        it). The ascent adapts its steps to the target, so this only needs
        the right order of magnitude where the target's scale is far from 1
        (it also sets the divergence radius).
    max_steps : int, default=200
        Ascent steps at most (phase 1).
    max_newton_steps : int, default=50
        Levenberg–Marquardt steps at most (phase 2).
    tol : float, default=1e-10
        Convergence: Newton decrement below ``tol`` nats, followed by one
        more undamped Newton step. A decrement ``delta`` means a distance of
        about ``sqrt(2 delta)`` local standard deviations from the mode; the
        last step lowers it by orders of magnitude (measured: to about 1e-16
        on the logistic-regression posterior, i.e. 2e-8 standard deviations,
        and to round-off on Gaussians).
    merge_distance : float, default=0.5
        Two converged starts are one mode when their Mahalanobis distance
        (under the precision of either, whichever gives the larger distance)
        is below this many local standard deviations and their log values
        differ by less than 1 nat. Two distinct local maxima of a smooth
        density closer than half a standard deviation are not resolved by a
        Laplace approximation anyway.
    eigenvalue_floor : float, default=1e-10
        Relative floor of the repair of the covariance
        (see :func:`laplace_covariance`).
    n_check_draws : int, default=32
        Draws per mode for :attr:`ModeSearch.laplace_gaps` (0 skips the
        check: the gaps are then NaN and nothing is flagged ``non_gaussian``).
    max_laplace_gap : float, default=5.0
        Modes whose Laplace gap exceeds this many nats are flagged
        ``non_gaussian``. The default lies between the gaps measured for a
        31-D logistic-regression posterior (about 1.4, whose Laplace box
        works) and those of bananas and funnels (above 10).
    divergence_radius : float, optional
        A start is diverged once ``max_j |x_j|``, or a local standard
        deviation at the point where it converged, exceeds this; by default
        ``1e6 * max(1, max scale, max |start|)``.
    generator : None, int, numpy or torch generator
        Seed of the random starts and of the check's draws (see
        :func:`sktt_flow.utils.random.torch_generator`).
    dtype : torch.dtype, default=torch.float64
        Of the points passed to ``log_target``; the search itself runs in
        float64.
    device : torch.device or str, optional
        Where the points live; that of ``starts``, or the CPU, by default.

    Returns
    -------
    ModeSearch
        Distinct modes sorted by log value (possibly none, when no start
        converged), with the fate of every start.

    Raises
    ------
    ValueError
        On malformed arguments; when ``log_target`` returns values of the
        wrong shape or without gradient; when it is ``-inf`` (or has a
        non-finite gradient) at every start.
    TypeError
        When ``log_target`` is not callable.
    """
    n_features = check_positive_int(n_features, "n_features")
    n_starts = check_positive_int(n_starts, "n_starts", minimum=0)
    max_steps = check_positive_int(max_steps, "max_steps", minimum=0)
    max_newton_steps = check_positive_int(max_newton_steps, "max_newton_steps", minimum=0)
    n_check_draws = check_positive_int(n_check_draws, "n_check_draws", minimum=0)
    tol = check_positive_float(tol, "tol")
    merge_distance = check_positive_float(merge_distance, "merge_distance")
    eigenvalue_floor = check_positive_float(eigenvalue_floor, "eigenvalue_floor")
    max_laplace_gap = check_positive_float(max_laplace_gap, "max_laplace_gap")
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}.")
    if device is None:
        device = starts.device if isinstance(starts, torch.Tensor) else torch.device("cpu")
    device = torch.device(device)
    scales = _check_scale(scale, n_features, device)
    user_starts = _check_starts(starts, n_features, device)
    if user_starts.shape[0] + n_starts == 0:
        raise ValueError("No starts: give n_starts >= 1 or some starts.")
    target = _Target(log_target, n_features, dtype)
    random_generator = torch_generator(generator, device)
    random_starts = scales * torch.randn(
        n_starts, n_features, generator=random_generator, dtype=torch.float64, device=device
    )
    all_starts = torch.cat([user_starts, random_starts])
    if divergence_radius is None:
        reach = max(1.0, float(scales.max()), float(all_starts.abs().max()))
        divergence_radius = _DIVERGENCE_FACTOR * reach
    else:
        divergence_radius = check_positive_float(divergence_radius, "divergence_radius")

    n = all_starts.shape[0]
    fates = ["not_converged"] * n
    points = all_starts.clone()
    values, gradients, _ = target.derivatives(points, hessian=False)
    feasible = torch.isfinite(values) & torch.isfinite(gradients).all(-1)
    for i in torch.nonzero(~feasible).flatten().tolist():
        fates[i] = "infeasible"
    if not bool(feasible.any()):
        raise ValueError(
            f"log_target is -inf (or its gradient is not finite) at all {n} starts, so "
            "the search has nowhere to begin. Give starts inside the support of the "
            "target (starts=...), or a scale that reaches it."
        )

    # -- phase 1: batched Rprop with a per-start trust region -------------------
    steps = (_INITIAL_STEP * scales).expand(n, n_features).clone()
    active = feasible.clone()
    history = [values.clone()]
    for _ in range(max_steps):
        rows = torch.nonzero(active).flatten()
        if rows.numel() == 0:
            break
        direction = torch.sign(gradients[rows])
        trial = points[rows] + steps[rows] * direction
        trial_values, trial_gradients, _ = target.derivatives(trial, hessian=False)
        accepted = (
            torch.isfinite(trial_values)
            & torch.isfinite(trial_gradients).all(-1)
            & (trial_values >= values[rows])
        )
        flipped = torch.sign(trial_gradients) * direction < 0
        shrink = torch.full_like(trial, _SHRINK)
        factor = torch.where(accepted[:, None] & ~flipped, torch.full_like(trial, _GROW), shrink)
        # Bounded by the divergence radius: a coordinate whose gradient stays
        # zero would otherwise grow its step without limit.
        steps[rows] = (steps[rows] * factor).clamp_max(divergence_radius)
        keep = rows[accepted]
        points[keep] = trial[accepted]
        values[keep] = trial_values[accepted]
        gradients[keep] = trial_gradients[accepted]
        history.append(values.clone())
        if len(history) > _STALL_WINDOW + 1:
            history.pop(0)
        far = points.abs().amax(-1) > divergence_radius
        for i in torch.nonzero(active & far).flatten().tolist():
            fates[i] = "diverged"
        active &= ~far
        if len(history) > _STALL_WINDOW:
            gain = values - history[0]
            # Tiny steps (relative to the position) also mean stalled.
            tiny = (steps <= 1e-14 * points.abs().clamp_min(1e-300)).all(-1)
            active &= ~((gain < _STALL_GAIN) | tiny)

    # -- phase 2: batched Levenberg–Marquardt ---------------------------------
    candidates = torch.nonzero(
        feasible & torch.tensor([f != "diverged" for f in fates], device=device)
    ).flatten()
    hessians = torch.full(
        (n, n_features, n_features), math.nan, dtype=torch.float64, device=device
    )
    if candidates.numel():
        values_c, gradients_c, hessians_c = target.derivatives(points[candidates], hessian=True)
        values[candidates], gradients[candidates] = values_c, gradients_c
        hessians[candidates] = hessians_c
    decrement = torch.full((n,), math.inf, dtype=torch.float64, device=device)
    damping = torch.full((n,), _LM_START, dtype=torch.float64, device=device)
    rejected_last = torch.zeros(n, dtype=torch.bool, device=device)
    # Whether an undamped Newton step was last tried from a point whose
    # decrement was already below tol.
    polished = torch.zeros(n, dtype=torch.bool, device=device)
    running = torch.zeros(n, dtype=torch.bool, device=device)
    running[candidates] = True
    # Starts whose last value was finite but derivatives not: nothing to polish.
    running &= torch.isfinite(hessians).flatten(1).all(-1)
    for newton_step in range(max_newton_steps + 1):
        rows = torch.nonzero(running).flatten()
        if rows.numel() == 0:
            break
        decrement[rows] = _newton_decrement(gradients[rows], hessians[rows])
        # Converged: once below tolerance, one more undamped Newton step was
        # tried (taken, or refused at the round-off floor of log h): Newton
        # squares the error, so the mode is far closer than sqrt(2 tol)
        # standard deviations.
        done = polished[rows]
        for i in rows[done].tolist():
            fates[i] = "converged"
        running[rows[done]] = False
        rows = rows[~done]
        if rows.numel() == 0 or newton_step == max_newton_steps:
            break
        # Inside the quadratic region (and unless the last step there failed)
        # take the pure Newton step: it converges quadratically, where any
        # damping would only shorten the step by the damping's factor.
        newton = (decrement[rows] < _NEWTON_REGION) & ~rejected_last[rows]
        trial_damping = torch.where(newton, torch.zeros_like(damping[rows]), damping[rows])
        steps_c, predicted, used_damping = _damped_newton_steps(
            gradients[rows], hessians[rows], trial_damping, scales
        )
        damping[rows] = torch.where(newton, damping[rows], used_damping)
        trial = points[rows] + steps_c
        trial_values, trial_gradients, trial_hessians = target.derivatives(trial, hessian=True)
        gain = trial_values - values[rows]
        ratio = gain / predicted.clamp_min(torch.finfo(torch.float64).tiny)
        accepted = (
            torch.isfinite(trial_values)
            & torch.isfinite(trial_hessians).flatten(1).all(-1)
            & torch.isfinite(trial_gradients).all(-1)
            & (ratio > _LM_ACCEPT)
        )
        keep = rows[accepted]
        points[keep] = trial[accepted]
        values[keep] = trial_values[accepted]
        gradients[keep] = trial_gradients[accepted]
        hessians[keep] = trial_hessians[accepted]
        rejected_last[rows] = ~accepted
        polished[rows] = newton & (decrement[rows] < tol)
        # Moré's update of the damping from the ratio of actual to predicted gain.
        current = damping[rows]
        current = torch.where(accepted & (ratio > 0.75), current / 3.0, current)
        current = torch.where(accepted & (ratio < 0.25), current * 2.0, current)
        current = torch.where(accepted, current, (current * 10.0).clamp_min(_LM_START))
        damping[rows] = current
        far = points.abs().amax(-1) > divergence_radius
        for i in torch.nonzero(running & far).flatten().tolist():
            fates[i] = "diverged"
        running &= ~far
        given_up = running & (damping > _LM_GIVE_UP)
        for i in torch.nonzero(given_up).flatten().tolist():
            # No improving step is left: a maximum up to round-off, or the
            # climb is stuck against the boundary of the support.
            fates[i] = "converged" if decrement[i] < _ROUNDOFF_DECREMENT else "stalled"
        running &= ~given_up

    return _collect(
        target,
        fates,
        all_starts,
        points,
        values,
        hessians,
        merge_distance=merge_distance,
        eigenvalue_floor=eigenvalue_floor,
        n_check_draws=n_check_draws,
        max_laplace_gap=max_laplace_gap,
        divergence_radius=divergence_radius,
        generator=random_generator,
    )


def _collect(
    target: _Target,
    fates: list[str],
    starts: torch.Tensor,
    points: torch.Tensor,
    values: torch.Tensor,
    hessians: torch.Tensor,
    *,
    merge_distance: float,
    eigenvalue_floor: float,
    n_check_draws: int,
    max_laplace_gap: float,
    divergence_radius: float,
    generator: torch.Generator,
) -> ModeSearch:
    """Merge the converged starts into distinct modes and check their Laplace Gaussians."""
    n, d = points.shape
    device = points.device
    converged = torch.tensor([fate == "converged" for fate in fates], device=device)
    rows = torch.nonzero(converged).flatten()
    rows = rows[torch.argsort(values[rows], descending=True, stable=True)]
    mode_of_start = torch.full((n,), -1, dtype=torch.int64, device=device)
    kept: list[int] = []
    if rows.numel():
        covariances, precisions, repaired = laplace_covariance(hessians[rows], eigenvalue_floor)
        # A "maximum" whose local standard deviation exceeds the divergence
        # radius is a plateau on the way to a supremum at infinity (log h =
        # -softplus(-x) reaches a vanishing gradient near x = 40): diverged.
        spread = torch.diagonal(covariances, dim1=-2, dim2=-1).sqrt().amax(-1)
        unbounded = ~(spread <= divergence_radius)
        for i in rows[unbounded].tolist():
            fates[i] = "diverged"
        rows, covariances = rows[~unbounded], covariances[~unbounded]
        precisions, repaired = precisions[~unbounded], repaired[~unbounded]
        for position, i in enumerate(rows.tolist()):
            for mode_index, kept_position in enumerate(kept):
                difference = points[i] - points[rows[kept_position]]
                distance = torch.maximum(
                    difference @ precisions[kept_position] @ difference,
                    difference @ precisions[position] @ difference,
                )
                close_values = abs(float(values[i] - values[rows[kept_position]])) < 1.0
                if float(distance) < merge_distance**2 and close_values:
                    mode_of_start[i] = mode_index
                    break
            else:
                mode_of_start[i] = len(kept)
                kept.append(position)
    k = len(kept)
    index = torch.tensor(kept, dtype=torch.int64, device=device)
    if k:
        mode_rows = rows[index]
        covariances, repaired = covariances[index], repaired[index]
        modes, log_values, mode_hessians = (
            points[mode_rows],
            values[mode_rows],
            hessians[mode_rows],
        )
        log_det = torch.linalg.slogdet(covariances).logabsdet
        log_masses = log_values + 0.5 * d * math.log(2.0 * math.pi) + 0.5 * log_det
        laplace_gaps = _laplace_gaps(
            target, modes, log_values, covariances, n_check_draws, generator
        )
    else:
        modes = torch.empty(0, d, dtype=torch.float64, device=device)
        log_values = log_masses = laplace_gaps = torch.empty(0, dtype=torch.float64, device=device)
        mode_hessians = covariances = torch.empty(0, d, d, dtype=torch.float64, device=device)
        repaired = torch.empty(0, dtype=torch.bool, device=device)
    counts = torch.bincount(mode_of_start[mode_of_start >= 0], minlength=k)[:k]
    return ModeSearch(
        modes=modes,
        log_values=log_values,
        hessians=mode_hessians,
        covariances=covariances,
        log_masses=log_masses,
        laplace_gaps=laplace_gaps,
        repaired=repaired,
        non_gaussian=laplace_gaps > max_laplace_gap,
        n_starts_per_mode=counts,
        starts=starts,
        end_points=points,
        end_log_values=values,
        fates=tuple(fates),
        mode_of_start=mode_of_start,
        n_evaluations=target.n_evaluations,
        n_calls=target.n_calls,
    )


def _laplace_gaps(target, modes, log_values, covariances, n_draws, generator) -> torch.Tensor:
    """Laplace log-mass minus the Laplace Gaussian's ELBO, per mode, one call for all."""
    k, d = modes.shape
    if n_draws == 0:
        return torch.full((k,), math.nan, dtype=torch.float64, device=modes.device)
    factor, info = torch.linalg.cholesky_ex(covariances)
    standard = torch.randn(
        k, n_draws, d, generator=generator, dtype=torch.float64, device=modes.device
    )
    draws = modes[:, None, :] + standard @ factor.transpose(-1, -2)
    log_h = target.values(draws.reshape(-1, d)).reshape(k, n_draws)
    # log h(x) - log N(x; m, Sigma) - log_mass = log h(x) - log h(m) + |y|^2 / 2.
    log_weights = log_h - log_values[:, None] + 0.5 * standard.square().sum(-1)
    # Draws outside the support are left out: a Gaussian that leaks over the
    # edge of the support still describes the mass inside it (and the box
    # then only reaches past the edge). Most of them outside: +inf.
    inside = torch.isfinite(log_weights)
    count = inside.sum(-1)
    gaps = -torch.where(inside, log_weights, torch.zeros_like(log_weights)).sum(-1) / count
    usable = (info == 0) & (2 * count > n_draws)
    return torch.where(usable, gaps, torch.full_like(gaps, math.inf))
