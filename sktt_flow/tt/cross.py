"""TT-cross: a tensor train of ``sqrt(h)`` from evaluations of ``log h``.

The tensor is ``A[i_1, ..., i_d] = exp((log h(x_{i_1}, ..., x_{i_d}) - c) / 2)``
on the product grid of ``n`` Gauss–Legendre nodes per coordinate, with ``c`` a
fixed shift (the largest ``log h`` seen before the sweeps) so that nothing
overflows. It is never formed. Cross interpolation (Oseledets and
Tyrtyshnikov, "TT-cross approximation of multidimensional arrays", Linear
Algebra Appl. 432, 2010) keeps left index sets ``I_{<k}`` and right index sets
``J_{>k}`` and sweeps left to right and back:

- one-site (the default): at core ``k`` it evaluates the fiber
  ``A[I_{<k}, i_k, J_{>k}]`` (``r n r`` points, one batched call), takes a QR
  factorisation, picks the new index set by :func:`~sktt_flow.tt.maxvol.maxvol`
  on ``Q`` and keeps the interpolating core ``Q Q[I]^{-1}``; the ranks are
  those of the index sets, up to ``max_rank``;
- two-site (DMRG-cross, Savostyanov and Oseledets, nDS 2011): at bond ``k`` it
  evaluates the superblock ``A[I_{<k}, i_k, i_{k+1}, J_{>k+1}]`` (``r n n r``
  points) and truncates its SVD, so that every rank adapts to the tolerance,
  at about ``n`` times the evaluations.

Both stop when the relative error on held-out grid points is below ``tol``,
when it stagnates, or when the evaluation budget is spent.

Cross only sees what its index sets reach. To find modes that random indices
never meet, the initial index sets come from *seeds*: points found by short
gradient ascents of ``log h`` from many random starts, chosen far apart from
each other so that every basin the ascents reached is represented.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from sktt_flow.tt.maxvol import maxvol

__all__ = ["CrossReport", "LogDensityEvaluator", "find_seeds", "tt_cross"]


@dataclass
class CrossReport:
    """What TT-cross did and how good the result is.

    Attributes
    ----------
    n_calls : int
        Calls of the user's callable.
    n_evaluations : int
        Points evaluated (the budget counts these).
    n_sweeps : int
        Half-sweeps (one direction each) completed.
    error_history : list of float
        Relative error of ``sqrt(h)`` on the held-out grid points (half
        uniform, half near the seeds) after each half-sweep.
    rank_history : list of tuple
        Bond ranks after each half-sweep.
    log_shift : float
        The constant ``c``: the train holds ``exp((log h - c) / 2)``. It is
        the largest ``log h`` among the seeds and test points, fixed before
        the sweeps so that all cores share one scale.
    best_error : float
        Held-out error of the returned train: the best of all half-sweeps.
    converged : bool
        Whether the error fell below the tolerance.
    stop_reason : str
    """

    n_calls: int = 0
    n_evaluations: int = 0
    n_sweeps: int = 0
    error_history: list[float] = field(default_factory=list)
    rank_history: list[tuple[int, ...]] = field(default_factory=list)
    log_shift: float = -math.inf
    best_error: float = math.inf
    converged: bool = False
    stop_reason: str = ""


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
                f"{batch.shape[0]} points (first point {_format(batch[0])}): {error}"
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

    Projected Adam steps of a fixed fraction of the box width; when the
    callable gives no gradient (or fails on inputs that require one) the
    random starts themselves are returned.
    Returns the final points (n_starts, d).
    """
    shape = (n_starts, low.shape[0])
    start = torch.rand(shape, generator=generator, dtype=torch.float64, device=low.device)
    points = (low + start * (high - low)).requires_grad_()
    optimizer = torch.optim.Adam([points], lr=float((high - low).min()) / 50)
    for _ in range(n_steps):
        optimizer.zero_grad()
        try:
            values = evaluator(points, grad=True)
        except ValueError:
            # Not differentiable in torch (a numpy function, say): keep the
            # random starts. A callable that is broken outright fails again,
            # with its own message, when the seeds are evaluated.
            break
        if not values.requires_grad:
            break
        finite = torch.isfinite(values)
        (-values[finite].sum()).backward()
        if points.grad is None:
            break
        points.grad = torch.nan_to_num(points.grad, nan=0.0, posinf=0.0, neginf=0.0)
        optimizer.step()
        with torch.no_grad():
            points.copy_(torch.maximum(torch.minimum(points, high), low))
    return points.detach()


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


def _tt_at_indices(cores: list[torch.Tensor], indices: torch.Tensor) -> torch.Tensor:
    """Entries of a train at integer multi-indices (m, d)."""
    running = torch.ones(indices.shape[0], 1, dtype=cores[0].dtype, device=cores[0].device)
    for k, core in enumerate(cores):
        running = torch.einsum("ma,amb->mb", running, core[:, indices[:, k], :])
    return running.squeeze(1)


def _truncated_svd(matrix: torch.Tensor, max_rank: int, rtol: float):
    """Left and right singular vectors kept by the tolerance and the rank cap."""
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    energy = s.square()
    tail = energy.flip(0).cumsum(0).flip(0)
    keep = int((tail > (rtol**2) * energy.sum()).sum())
    rank = max(1, min(keep, max_rank))
    return u[:, :rank], vh[:rank]


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
        Target relative error on ``n_test`` held-out grid points; also the
        SVD truncation tolerance of each superblock.
    max_evals : int, optional
        Budget of evaluations (points); cross stops before exceeding it.
    max_sweeps : int
        Maximum number of half-sweeps.
    batch_size : int
        Maximum number of points per call of ``log_density``.
    n_test : int
        Held-out random grid points for the error estimate: half uniform on
        the grid, half within two nodes of a seed.
    n_seeds, n_seed_steps : int
        Random starts and gradient-ascent steps of :func:`find_seeds`
        (``n_seed_steps=0``: random starts only).
    generator : torch.Generator
    dtype : torch.dtype
        Of the points passed to ``log_density``.
    method : {"one-site", "two-site"}
        ``"one-site"`` evaluates ``r n r`` points per core and sweep, with the
        ranks set by the index sets (seeds, then random rows, up to
        ``max_rank``); ``"two-site"`` evaluates ``r n n r`` points per bond
        and chooses every rank by a truncated SVD (rank-adaptive, about ``n``
        times the evaluations).

    callable_name : str, default="log_density"
        What error messages call ``log_density`` (the estimator says
        ``log_target``).

    Returns
    -------
    cores : list of tensors (r_{k-1}, n, r_k), float64
        Values, not coefficients: ``cores`` interpolate the tensor ``A``.
        Of all complete half-sweeps, the train with the lowest held-out error.
    report : CrossReport
    """
    if method not in ("one-site", "two-site"):
        raise ValueError(f'method must be "one-site" or "two-site", got {method!r}.')
    d, n = nodes.shape
    device = nodes.device
    report = CrossReport()
    evaluator = LogDensityEvaluator(
        log_density, d, batch_size, dtype, device, report, name=callable_name
    )
    budget = math.inf if max_evals is None else int(max_evals)
    shift = -math.inf

    def evaluate(indices: torch.Tensor) -> torch.Tensor:
        points = torch.gather(nodes, 1, indices.T).T
        return evaluator(points)

    def to_values(log_values: torch.Tensor) -> torch.Tensor:
        # The shift is fixed by the first finite values (the seeds and test
        # points, near the modes), so that every core shares one scale.
        nonlocal shift
        if shift == -math.inf:
            finite = log_values[torch.isfinite(log_values)]
            if finite.numel() == 0:
                return torch.zeros_like(log_values)
            shift = float(finite.max())
        return torch.exp((log_values - shift) / 2)

    low, high = nodes.min(dim=1).values, nodes.max(dim=1).values
    seeds = find_seeds(evaluator, low, high, n_seeds, n_seed_steps, generator)
    seed_indices = _nearest_node(seeds, nodes)
    seed_log_values = evaluate(seed_indices)
    # Held-out points: half uniform on the grid, half near the seeds (random
    # offsets of up to two nodes per coordinate). Uniform points alone would
    # almost all fall where a peaked h is negligible and would measure nothing.
    uniform = torch.randint(n, (n_test - n_test // 2, d), generator=generator, device=device)
    near = seed_indices[
        torch.randint(seed_indices.shape[0], (n_test // 2,), generator=generator, device=device)
    ]
    offsets = torch.randint(-2, 3, near.shape, generator=generator, device=device)
    test_indices = torch.cat([uniform, (near + offsets).clamp(0, n - 1)])
    test_log_values = evaluate(test_indices)
    to_values(torch.cat([seed_log_values, test_log_values]))

    if d == 1:
        log_values = evaluate(torch.arange(n, device=device)[:, None])
        values = to_values(log_values)
        report.log_shift = shift
        report.n_sweeps = 1
        report.converged = True
        report.stop_reason = "one dimension: the whole fiber was evaluated"
        report.error_history.append(0.0)
        report.best_error = 0.0
        report.rank_history.append((1, 1))
        return [values.reshape(1, n, 1)], report

    # Initial right index sets from seeds that are far apart, so that every
    # basin the ascents reached is represented (one per mode when there are
    # at most max_rank modes).
    chosen = _spread_out(seeds, seed_log_values, max_rank)
    ranked = seed_indices[chosen]
    right: list[torch.Tensor] = [None] * (d + 1)  # right[b]: (r_b, d - b)
    left: list[torch.Tensor] = [None] * (d + 1)  # left[b]: (r_b, b)
    right[d] = torch.zeros(1, 0, dtype=torch.long, device=device)
    left[0] = torch.zeros(1, 0, dtype=torch.long, device=device)
    for b in range(1, d):
        # Seeds first, then random rows up to the rank the bond can have:
        # one-site cross cannot grow a rank beyond its index sets.
        target = min(max_rank, n ** min(d - b, 8))
        # Draw more than needed: random rows repeat when n^(d-b) is small.
        extra = torch.randint(n, (4 * target, d - b), generator=generator, device=device)
        candidates = torch.cat([ranked[:, b:], extra])
        right[b] = _unique_rows_in_order(candidates)[:target]
    cores: list[torch.Tensor] = [None] * d
    per_bond_tol = tol / math.sqrt(max(d - 1, 1))

    def block(k: int, width: int) -> torch.Tensor | None:
        """Values on left[k] x [n]^width x right[k + width], as (r_l n, n^(width-1) r_r),
        or None when they would exceed the budget."""
        indices = _block_points(left[k], right[k + width], n, width, device)
        if report.n_evaluations + indices.shape[0] > budget:
            return None
        values = to_values(evaluate(indices))
        return values.reshape(left[k].shape[0] * n, -1)

    def error() -> float:
        approximation = _tt_at_indices(cores, test_indices)
        exact = to_values(test_log_values)
        norm = float(exact.norm())
        return float((approximation - exact).norm()) / norm if norm > 0 else 0.0

    def two_site_step(b: int, forward: bool) -> bool:
        """Update bond b (between variables b-1 and b); False when over budget."""
        values = block(b - 1, 2)
        if values is None:
            return False
        r_left, r_right = left[b - 1].shape[0], right[b + 1].shape[0]
        u, vh = _truncated_svd(values, max_rank, per_bond_tol)
        rank = u.shape[1]
        if forward:
            rows = maxvol(u)
            a, i = rows // n, rows % n
            left[b] = torch.cat([left[b - 1][a], i[:, None]], dim=1)
            cores[b - 1] = torch.linalg.solve(u[rows].T, u.T).T.reshape(r_left, n, rank)
            cores[b] = values[rows].reshape(rank, n, r_right)
        else:
            v = vh.T
            columns = maxvol(v)
            j, c = columns // r_right, columns % r_right
            right[b] = torch.cat([j[:, None], right[b + 1][c]], dim=1)
            interpolation = torch.linalg.solve(v[columns].T, v.T).T
            cores[b] = interpolation.T.reshape(rank, n, r_right)
            cores[b - 1] = values[:, columns].reshape(r_left, n, rank)
        return True

    def one_site_step(k: int, forward: bool) -> bool:
        """Update core k from its fiber; False when over budget."""
        values = block(k, 1)
        if values is None:
            return False
        r_left, r_right = left[k].shape[0], right[k + 1].shape[0]
        if forward and k == d - 1:
            cores[k] = values.reshape(r_left, n, 1)
        elif forward:
            q, _ = torch.linalg.qr(values)
            rows = maxvol(q)
            a, i = rows // n, rows % n
            left[k + 1] = torch.cat([left[k][a], i[:, None]], dim=1)
            cores[k] = torch.linalg.solve(q[rows].T, q.T).T.reshape(r_left, n, q.shape[1])
        elif k == 0:
            cores[0] = values.reshape(1, n, r_right)
        else:
            q, _ = torch.linalg.qr(values.reshape(r_left, n * r_right).T)
            columns = maxvol(q)
            j, c = columns // r_right, columns % r_right
            right[k] = torch.cat([j[:, None], right[k + 1][c]], dim=1)
            interpolation = torch.linalg.solve(q[columns].T, q.T).T
            cores[k] = interpolation.T.reshape(q.shape[1], n, r_right)
        return True

    if method == "two-site":
        step, positions = two_site_step, list(range(1, d))
    else:
        step, positions = one_site_step, list(range(d))
    # The train with the lowest held-out error so far: errors need not
    # decrease from one half-sweep to the next, so a stop returns this one.
    best: list[torch.Tensor] | None = None
    best_error = math.inf
    forward = True
    stop_reason = f"max_sweeps={max_sweeps} reached"
    for sweep in range(max_sweeps):
        order = positions if forward else positions[::-1]
        over_budget = not all(step(position, forward) for position in order)
        if over_budget:
            # A half-sweep cut short leaves a train whose centre is stale.
            stop_reason = f"max_evals={max_evals} reached"
            if best is None:
                raise ValueError(
                    f"max_evals={max_evals} is too small for one sweep of TT-cross "
                    f"({report.n_evaluations} evaluations spent); raise it."
                )
            break
        report.n_sweeps = sweep + 1
        report.error_history.append(error())
        if report.error_history[-1] < best_error:
            best, best_error = list(cores), report.error_history[-1]
        report.rank_history.append((1, *(core.shape[2] for core in cores)))
        if verbose:
            print(
                f"TT-cross sweep {sweep + 1}: ranks {report.rank_history[-1]}, "
                f"held-out relative error {report.error_history[-1]:.3e}, "
                f"{report.n_evaluations} evaluations"
            )
        if report.error_history[-1] <= tol:
            report.converged = True
            stop_reason = "held-out error below tol"
            break
        # Stagnation: a full sweep (two half-sweeps) gained less than 5%;
        # more sweeps would spend evaluations for nothing at these ranks.
        history = report.error_history
        if len(history) >= 3 and history[-1] >= 0.95 * history[-3]:
            stop_reason = "held-out error stagnated above tol (raise tt_rank or n_basis)"
            break
        forward = not forward
    report.stop_reason = stop_reason
    report.log_shift = shift
    report.best_error = best_error
    return best, report


def _spread_out(points: torch.Tensor, log_values: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of ``count`` points chosen greedily far apart (farthest-point
    selection), starting from the one with the largest ``log_values``; points
    with ``log_values == -inf`` come last."""
    finite = torch.isfinite(log_values)
    candidates = torch.nonzero(finite).squeeze(1)
    if candidates.numel() == 0:
        return torch.arange(min(count, points.shape[0]), device=points.device)
    scale = points[candidates].std(dim=0).clamp_min(1e-12)
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
