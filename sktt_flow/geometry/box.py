"""A box and affine coordinates for the TT base, from modes and Laplace covariances.

The TT base lives on a box ``[a_1, b_1] x ... x [a_d, b_d]`` in coordinates
``y``, related to the target's ``x`` by a fixed affine map ``x = shift + L y``
(the identity when no preconditioner is used). Given the modes ``m_i`` and
Laplace covariances ``Sigma_i`` of :func:`~sktt_flow.geometry.find_modes`:

- :func:`affine_from_laplace` chooses ``(shift, L)`` so that ``y`` is
  standardised under the Laplace approximation: ``L`` is the identity, the
  diagonal of standard deviations, or the Cholesky factor of the covariance;
- :func:`box_from_modes` takes, per coordinate of ``y``, the union over modes
  of ``mode +- n_std`` local standard deviations, where the modes and
  covariances are first mapped to ``y``: ``L^{-1} (m_i - shift)`` and
  ``L^{-1} Sigma_i L^{-T}``.

**Choice of n_std.** Under a Gaussian with any covariance, coordinate ``j`` is
Gaussian with the standard deviation ``sigma_j`` used for the box, so it falls
outside ``m_j +- n sigma_j`` with probability ``2 Phi(-n) = erfc(n / sqrt 2)``,
and by the union bound the mass outside the box is at most
``d erfc(n / sqrt 2)`` whatever the correlations
(:func:`gaussian_tail_mass`). For a mixture of the modes' Gaussians the same
bound holds, since every mode's box is inside the union. ``n = 6`` gives
``1.97e-9`` per coordinate: ``6.1e-8`` at ``d = 31``, ``2e-7`` at ``d = 100``
and ``2e-6`` at ``d = 1000``, well below the errors of a TT base; ``n = 5``
would give ``5.7e-7`` per coordinate (``5.7e-5`` at ``d = 100``), ``n = 7``
``2.6e-12``. A wider box costs resolution (the Legendre basis must resolve a
feature of width ``sigma`` on a box of width ``2 n sigma``), so the default
stops at 6; real targets have heavier tails than their Laplace Gaussian, and
the TT's self-check (importance weights) is what confirms a box.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from sktt_flow.utils.validation import check_positive_float

__all__ = [
    "AFFINE_KINDS",
    "DEFAULT_N_STD",
    "adjust_box",
    "affine_from_laplace",
    "box_from_modes",
    "box_of_weighted_draws",
    "gaussian_tail_mass",
    "mass_beyond_sides",
    "widen_box_at_edges",
]

#: Default half-width of the box in local standard deviations (see the module's notes).
DEFAULT_N_STD = 6.0

#: The kinds of affine coordinates :func:`affine_from_laplace` builds.
AFFINE_KINDS = ("none", "diagonal", "full")


def gaussian_tail_mass(n_std: float, n_features: int = 1) -> float:
    """Union bound on the Gaussian mass outside ``mean +- n_std`` standard deviations.

    Parameters
    ----------
    n_std : float
        Half-width of the box per coordinate, in standard deviations.
    n_features : int, default=1
        Number of coordinates.

    Returns
    -------
    float
        ``min(1, n_features * 2 Phi(-n_std))``, with ``2 Phi(-n) = erfc(n / sqrt 2)``.
        Exact for one coordinate; for several it bounds the mass outside the
        box under any covariance with those marginal standard deviations
        (and is nearly exact when the bound is small and the coordinates
        are independent).
    """
    n_std = check_positive_float(n_std, "n_std")
    if int(n_features) < 1:
        raise ValueError(f"n_features must be >= 1, got {n_features!r}.")
    return min(1.0, int(n_features) * math.erfc(n_std / math.sqrt(2.0)))


def _as_tensor(value, name: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        tensor = value.detach()
        device = tensor.device
    else:
        try:
            tensor = torch.as_tensor(np.asarray(value, dtype=np.float64))
        except (TypeError, ValueError) as error:
            raise ValueError(f"{name} must be numeric: {error}") from error
        device = torch.device("cpu")
    if tensor.is_complex():
        raise ValueError(f"{name} must be real.")
    tensor = tensor.to(device=device, dtype=torch.float64)
    if not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"{name} must be finite.")
    return tensor


def _check_modes(modes, covariances) -> tuple[torch.Tensor, torch.Tensor]:
    """Modes (k, d) and covariances (k, d, d), float64, with symmetric positive diagonals."""
    modes = _as_tensor(modes, "modes")
    covariances = _as_tensor(covariances, "covariances").to(modes.device)
    if modes.ndim == 1:
        modes = modes[None, :]
    if covariances.ndim == 2:
        covariances = covariances[None, :, :]
    if modes.ndim != 2 or modes.shape[0] == 0 or modes.shape[1] == 0:
        raise ValueError(f"modes must have shape (k, d) with k, d >= 1, got {tuple(modes.shape)}.")
    k, d = modes.shape
    if covariances.shape != (k, d, d):
        raise ValueError(
            f"covariances must have shape ({k}, {d}, {d}) for {k} modes in {d} "
            f"dimensions, got {tuple(covariances.shape)}."
        )
    asymmetry = (covariances - covariances.transpose(1, 2)).abs().amax()
    if float(asymmetry) > 1e-8 * float(covariances.abs().amax()):
        raise ValueError("covariances must be symmetric.")
    if not bool((torch.diagonal(covariances, dim1=1, dim2=2) > 0).all()):
        raise ValueError("covariances must have positive diagonals (variances).")
    return modes, 0.5 * (covariances + covariances.transpose(1, 2))


def box_from_modes(
    modes, covariances, *, n_std: float = DEFAULT_N_STD, coordinates=None
) -> np.ndarray:
    """The union over modes of ``mode +- n_std`` local standard deviations, per coordinate.

    Parameters
    ----------
    modes : array-like or tensor (k, d) or (d,)
    covariances : array-like or tensor (k, d, d) or (d, d)
        Laplace covariances of the modes (in the target's coordinates ``x``).
    n_std : float, default=DEFAULT_N_STD (6)
        Half-width in local standard deviations; see the module's notes for
        the tail mass it leaves out (:func:`gaussian_tail_mass`).
    coordinates : tuple (shift, matrix), optional
        The affine map ``x = shift + matrix y`` of the coordinates ``y`` the
        box is for (as returned by :func:`affine_from_laplace`); the modes
        become ``matrix^{-1} (m - shift)`` and the covariances
        ``matrix^{-1} Sigma matrix^{-T}``. ``None``: the box is in ``x``.

    Returns
    -------
    ndarray (d, 2), float64
        Rows ``(low, high)``, the format of the estimator's ``domain``.

    Raises
    ------
    ValueError
        On shapes that do not match, non-finite values, covariances that are
        not symmetric or have non-positive variances, or a singular
        ``matrix``.
    """
    modes, covariances = _check_modes(modes, covariances)
    n_std = check_positive_float(n_std, "n_std")
    if coordinates is not None:
        shift, matrix = _check_coordinates(coordinates, modes.shape[1], modes.device)
        # Solves, not an explicit inverse: triangular and general matrices alike.
        modes = torch.linalg.solve(matrix, (modes - shift).T).T
        left = torch.linalg.solve(matrix, covariances)  # M^{-1} Sigma
        # M^{-1} (M^{-1} Sigma)^T = M^{-1} Sigma M^{-T}, Sigma being symmetric.
        covariances = torch.linalg.solve(matrix, left.transpose(1, 2))
    deviations = torch.diagonal(covariances, dim1=1, dim2=2).clamp_min(0.0).sqrt()
    low = (modes - n_std * deviations).amin(0)
    high = (modes + n_std * deviations).amax(0)
    return torch.stack([low, high], dim=1).cpu().numpy()


def _check_coordinates(coordinates, n_features: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        shift, matrix = coordinates
    except (TypeError, ValueError) as error:
        raise ValueError(
            "coordinates must be a pair (shift, matrix) with x = shift + matrix y."
        ) from error
    shift = _as_tensor(shift, "shift").to(device)
    matrix = _as_tensor(matrix, "matrix").to(device)
    if shift.shape != (n_features,) or matrix.shape != (n_features, n_features):
        raise ValueError(
            f"coordinates need shift of shape ({n_features},) and matrix of shape "
            f"({n_features}, {n_features}), got {tuple(shift.shape)} and {tuple(matrix.shape)}."
        )
    condition = torch.linalg.cond(matrix)
    if not bool(torch.isfinite(condition)) or float(condition) > 1e14:
        raise ValueError(
            f"the coordinates' matrix is singular or nearly so (condition number "
            f"{float(condition):.3g})."
        )
    return shift, matrix


def affine_from_laplace(modes, covariances, kind: str, *, weights=None):
    """Affine coordinates ``x = shift + matrix y`` that standardise the Laplace approximation.

    With one mode ``m`` and covariance ``Sigma``, ``y = matrix^{-1} (x - m)``
    has mean 0 and, depending on ``kind``:

    - ``"none"``: ``shift = 0``, ``matrix = I``: ``y = x``, the raw coordinates;
    - ``"diagonal"``: ``shift = m``, ``matrix = diag(sqrt(diag Sigma))``: unit
      variances, correlations kept (the chain structure of the target, and its
      low TT rank, survive);
    - ``"full"``: ``shift = m``, ``matrix`` the lower Cholesky factor of
      ``Sigma``: identity covariance (a linear correlation no longer costs TT
      rank, but a chain's local coupling becomes global).

    **Several modes.** The Gaussians of the modes form a mixture
    ``sum_i w_i N(m_i, Sigma_i)``; its mean ``mu = sum_i w_i m_i`` and
    covariance ``sum_i w_i (Sigma_i + (m_i - mu)(m_i - mu)^T)`` (the mean of the
    covariances plus the spread of the modes) replace ``m`` and ``Sigma``. So
    the modes land at distances of order one in ``y`` and each keeps a local
    width at most one. The weights are equal by default rather than the
    Laplace masses: a mode whose Laplace approximation is poor (a funnel's
    neck) can have a mass estimate wrong by many orders of magnitude, while
    equal weights only make the coordinates somewhat wider than needed.

    Parameters
    ----------
    modes : array-like or tensor (k, d) or (d,)
    covariances : array-like or tensor (k, d, d) or (d, d)
        Positive definite.
    kind : {"none", "diagonal", "full"}
    weights : array-like (k,), optional
        Non-negative mixture weights (normalised here); equal by default.
        ``exp(log_masses - max)`` of a :class:`~sktt_flow.geometry.ModeSearch`
        weighs by the Laplace masses.

    Returns
    -------
    shift : tensor (d,), float64
    matrix : tensor (d, d), float64, lower triangular
        On the device of ``modes`` (the CPU for arrays).

    Raises
    ------
    ValueError
        On an unknown ``kind``, malformed inputs, bad weights, or a pooled
        covariance that is not positive definite (``"full"``).
    """
    if kind not in AFFINE_KINDS:
        raise ValueError(f"kind must be one of {AFFINE_KINDS}, got {kind!r}.")
    modes, covariances = _check_modes(modes, covariances)
    k, d = modes.shape
    if weights is None:
        weights = torch.full((k,), 1.0 / k, dtype=torch.float64, device=modes.device)
    else:
        weights = _as_tensor(weights, "weights").to(modes.device).reshape(-1)
        if weights.shape != (k,):
            raise ValueError(f"weights must have shape ({k},), got {tuple(weights.shape)}.")
        if bool((weights < 0).any()) or float(weights.sum()) <= 0:
            raise ValueError("weights must be non-negative with a positive sum.")
        weights = weights / weights.sum()
    if kind == "none":
        return (
            torch.zeros(d, dtype=torch.float64, device=modes.device),
            torch.eye(d, dtype=torch.float64, device=modes.device),
        )
    mean = weights @ modes
    spread = modes - mean
    pooled = torch.einsum("k,kij->ij", weights, covariances) + torch.einsum(
        "k,ki,kj->ij", weights, spread, spread
    )
    pooled = 0.5 * (pooled + pooled.T)
    if kind == "diagonal":
        return mean, torch.diag(torch.diagonal(pooled).sqrt())
    factor, info = torch.linalg.cholesky_ex(pooled)
    if int(info) != 0:
        raise ValueError(
            "the pooled covariance is not positive definite, so it has no Cholesky "
            "factor; repair the covariances first (find_modes returns repaired ones)."
        )
    return mean, factor


def _weighted_quantile_box(
    y: torch.Tensor, log_weights: torch.Tensor, tail: float, margin: float
) -> np.ndarray | None:
    """Per coordinate, the ``tail`` and ``1 - tail`` quantiles of the draws
    weighted by ``exp(log_weights)``, widened by ``margin`` of their distance;
    None for degenerate weights."""
    weights = torch.softmax(log_weights, dim=0)
    if not bool(torch.isfinite(weights).all()):
        return None
    order = torch.sort(y, dim=0)
    # per coordinate (rows): the cumulative weight of the sorted draws
    cumulative = torch.cumsum(weights[order.indices], dim=0).T.contiguous()
    levels = torch.tensor([[tail, 1.0 - tail]], dtype=cumulative.dtype, device=y.device)
    positions = torch.searchsorted(cumulative, levels.expand(y.shape[1], 2).contiguous())
    positions = positions.clamp_max(y.shape[0] - 1)
    columns = torch.arange(y.shape[1], device=y.device)
    low, high = order.values[positions[:, 0], columns], order.values[positions[:, 1], columns]
    width = (high - low).clamp_min(1e-12)
    return torch.stack([low - margin * width, high + margin * width], dim=1).cpu().numpy()


def box_of_weighted_draws(
    y: torch.Tensor,
    log_weights: torch.Tensor,
    box: np.ndarray,
    *,
    tail: float = 1e-3,
    margin: float = 0.25,
) -> np.ndarray | None:
    """Where the weighted draws lie: a box from their quantiles, or None.

    Per coordinate the ``tail`` and ``1 - tail`` quantiles of the draws
    weighted by ``h / q``, widened by ``margin`` of their distance on each
    side, and never beyond ``box``: draws of a base cannot show mass that
    the base lacks. None when it would not be at least a fifth narrower than
    ``box`` in some coordinate (nothing to gain), or when the weights are
    degenerate.

    Parameters
    ----------
    y : tensor (N, d)
        Exact draws of a base on ``box``.
    log_weights : tensor (N,)
        Their importance log-weights ``log h - log q`` against the target.
    box : ndarray (d, 2)
        The box of the base.
    tail, margin : float
        Quantile level on each side, and the widening as a fraction of the
        distance between the two quantiles.

    Returns
    -------
    ndarray (d, 2) or None
    """
    refined = _weighted_quantile_box(y, log_weights, tail, margin)
    if refined is None:
        return None
    # never beyond the Laplace box: the draws cannot see mass the base lacks
    refined[:, 0] = np.maximum(refined[:, 0], box[:, 0])
    refined[:, 1] = np.minimum(refined[:, 1], box[:, 1])
    if not np.all(refined[:, 0] < refined[:, 1]):
        return None
    if not np.any(np.ptp(refined, axis=1) < 0.8 * np.ptp(box, axis=1)):
        return None
    return refined


def widen_box_at_edges(
    y: torch.Tensor,
    log_weights: torch.Tensor,
    box: np.ndarray,
    *,
    edge: float = 0.05,
    threshold: float = 1e-3,
    factor: float = 0.5,
) -> np.ndarray | None:
    """A wider box where the weighted draws say the mass goes on past an edge, or None.

    A base on a box that cuts the target's mass approximates the target
    restricted to the box, so its draws, weighted by ``h / q``, pile up
    against the cut: the share of weight within ``edge`` of the box's width
    from a side (or beyond it, where the base's Gaussian tail component put
    draws) is about the target's density there times that strip. Under the
    box of :func:`box_from_modes` on a Gaussian target that share is below
    ``1e-7`` (the strip lies beyond 5.4 standard deviations); a side whose
    share exceeds ``threshold`` is moved out by ``factor`` of the width.
    Where the mass ends before the edge, nothing changes; the caller compares
    the bases on both boxes, since a wider box spends resolution.

    Parameters
    ----------
    y : tensor (N, d)
        Exact draws of a base on ``box``.
    log_weights : tensor (N,)
        Their importance log-weights ``log h - log q`` against the target.
    box : ndarray (d, 2)
        The box of the base.
    edge, threshold, factor : float
        Width of the strip at each side as a fraction of the box's width, the
        weighted share in it that calls for a wider box, and how far a side
        moves, as a fraction of the width.

    Returns
    -------
    ndarray (d, 2) or None
        None when no side carries more than ``threshold``, or the weights
        are degenerate.

    Notes
    -----
    The threshold is about four draws' worth at the self-check's 4096 equal
    weights: a handful of draws at an edge is noise only when their weights
    are large, and then the base is poor enough for its whole box to be in
    doubt.
    """
    weights = torch.softmax(log_weights, dim=0)
    if not bool(torch.isfinite(weights).all()):
        return None
    box = np.asarray(box, dtype=np.float64)
    low = torch.as_tensor(box[:, 0], dtype=y.dtype, device=y.device)
    high = torch.as_tensor(box[:, 1], dtype=y.dtype, device=y.device)
    strip = edge * (high - low)
    below = (weights[:, None] * (y <= low + strip)).sum(dim=0).cpu().numpy()
    above = (weights[:, None] * (y >= high - strip)).sum(dim=0).cpu().numpy()
    if not (np.any(below > threshold) or np.any(above > threshold)):
        return None
    width = np.ptp(box, axis=1)
    wider = box.copy()
    wider[:, 0] -= np.where(below > threshold, factor * width, 0.0)
    wider[:, 1] += np.where(above > threshold, factor * width, 0.0)
    return wider


def mass_beyond_sides(
    y: torch.Tensor,
    log_weights: torch.Tensor,
    box: np.ndarray,
    log_target,
    *,
    edge: float = 0.05,
) -> tuple[np.ndarray, np.ndarray]:
    """Estimated shares of the target's mass beyond each side of ``box``:
    in the strip just outside it, and in all of the space beyond.

    A base on a box approximates the target restricted to it, so its
    importance weights cannot see what lies beyond: the self-check's ESS and
    ``log Z`` are those of the restricted target. The target itself can say.
    The draws of the box within ``edge`` of its width from a side, with
    self-normalised weights (over all draws), carry the target's share ``inner`` of that
    strip; moved out across the side by the strip's width and reweighted by
    ``h(moved) / h(draw)``, they estimate its share ``outer`` of the next
    strip out. A tail that keeps falling by the same factor from strip to
    strip holds ``outer / (1 - outer / inner)`` beyond the side: exact for an
    exponential tail (the log-density of ``log x`` for ``x`` exponential,
    cut at six of its standard deviations: 0.25% per side, which a test of
    the share near the side alone took for noise), an overestimate for a
    Gaussian one (by 9% on a box of three standard deviations each side, 18%
    on one of two), and infinite where the target does not fall across the
    side. The extrapolation is only as good as that assumption: where the
    target falls little across the strip and fast further out (a curved
    ridge that leaves the box) it can be many times the truth, and where it
    falls like a power (a Student t of 2 degrees of freedom) two thirds of
    it; the strip outside is measured. A side whose strip holds no weighted
    draws, or beyond which the target is zero, gives 0.

    Parameters
    ----------
    y : tensor (N, d)
        Exact draws of a base on ``box``.
    log_weights : tensor (N,)
        Their importance log-weights ``log h - log q`` against the target.
    box : ndarray (d, 2)
        The box of the base.
    log_target : callable
        ``log h`` (up to a constant) of points like ``y``, shape (m,).
    edge : float, default=0.05
        Width of the strip at each side as a fraction of the box's width.

    Returns
    -------
    next_strip, beyond : ndarray (d, 2)
        Per coordinate and side (low, high), the estimated share of the
        target's mass (relative to its mass in the box) in the strip of
        ``edge`` of the box's width just outside the side, a measurement,
        and beyond the side, an extrapolation (at least ``next_strip``); all
        0 when the weights are degenerate.
    """
    box = np.asarray(box, dtype=np.float64)
    next_strip, beyond = np.zeros_like(box), np.zeros_like(box)
    weights = torch.softmax(log_weights, dim=0)
    if not bool(torch.isfinite(weights).all()):
        return next_strip, beyond
    strip = edge * np.ptp(box, axis=1)
    sides, originals, moved, row_weights = [], [], [], []
    for k in range(box.shape[0]):
        for side, inward in ((0, 1.0), (1, -1.0)):
            limit = box[k, side] + inward * strip[k]
            # draws of the box only: a base's tail component puts a few beyond
            # it, which moved further out would read the mass further out
            if side == 0:
                near = (y[:, k] >= box[k, 0]) & (y[:, k] <= limit)
            else:
                near = (y[:, k] <= box[k, 1]) & (y[:, k] >= limit)
            rows = torch.nonzero(near & (weights > 0)).squeeze(1)
            if rows.numel() == 0:
                continue
            points = y[rows]
            out = points.clone()
            out[:, k] -= inward * strip[k]
            sides.append((k, side, rows.numel()))
            originals.append(points)
            moved.append(out)
            row_weights.append(weights[rows])
    if not sides:
        return next_strip, beyond
    with torch.no_grad():
        values = torch.as_tensor(log_target(torch.cat(originals + moved)))
    values = values.to(device=y.device, dtype=weights.dtype)
    n_rows = sum(count for *_, count in sides)
    log_ratio = values[n_rows:] - values[:n_rows]
    # a draw where h = 0 (or NaN) carries no mass to move; h = 0 beyond, none
    log_ratio = torch.where(torch.isfinite(values[:n_rows]), log_ratio, -math.inf)
    ratio = log_ratio.nan_to_num(nan=-math.inf).exp()
    start = 0
    for (k, side, count), strip_weights in zip(sides, row_weights, strict=True):
        inner = float(strip_weights.sum())
        outer = float((strip_weights * ratio[start : start + count]).sum())
        start += count
        next_strip[k, side] = outer
        if outer > 0.0:
            beyond[k, side] = outer / (1.0 - outer / inner) if outer < inner else math.inf
    return next_strip, beyond


def adjust_box(
    y: torch.Tensor,
    log_weights: torch.Tensor,
    box: np.ndarray,
) -> np.ndarray | None:
    """The next box to try for a base on ``box``, from its weighted draws, or None.

    Sides against which the weighted draws pile up move out
    (:func:`widen_box_at_edges`); the others move in to the weighted
    quantiles when that narrows some coordinate by a fifth
    (:func:`box_of_weighted_draws`). An asymmetric target needs both at
    once: a box of six Laplace standard deviations around the mode of a
    log-gamma density cuts its long side and reaches far into its steep one,
    where ``log h`` falls like ``-e^u`` and the base's tiny leaks cost the
    ELBO more than the resolution gained elsewhere. None when no side moves.

    Parameters
    ----------
    y : tensor (N, d)
        Exact draws of a base on ``box``.
    log_weights : tensor (N,)
        Their importance log-weights ``log h - log q`` against the target.
    box : ndarray (d, 2)
        The box of the base.

    Returns
    -------
    ndarray (d, 2) or None
    """
    box = np.asarray(box, dtype=np.float64)
    refined = box_of_weighted_draws(y, log_weights, box)
    wider = widen_box_at_edges(y, log_weights, box)
    if refined is None and wider is None:
        return None
    adjusted = box.copy() if refined is None else refined.copy()
    if wider is not None:
        out_low, out_high = wider[:, 0] < box[:, 0], wider[:, 1] > box[:, 1]
        adjusted[out_low, 0] = wider[out_low, 0]
        adjusted[out_high, 1] = wider[out_high, 1]
    return adjusted
