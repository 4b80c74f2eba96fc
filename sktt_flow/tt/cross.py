"""TT-cross: a tensor train of ``sqrt(h)`` from evaluations of ``log h``.

The tensor is ``A[i_1, ..., i_d] = exp((log h(x_{i_1}, ..., x_{i_d}) - c) / 2)``
on the product grid of ``n`` Gauss–Legendre nodes per coordinate, with ``c`` a
running maximum of the evaluated ``log h`` so that nothing overflows. It is
never formed: the two-site cross (DMRG-cross) of Savostyanov and Oseledets
("Fast adaptive interpolation of multi-dimensional arrays in tensor train
format", nDS 2011) evaluates it on ``r n n r`` points per bond only,

- at bond ``k`` it evaluates the superblock
  ``A[I_{<k}, i_k, i_{k+1}, J_{>k+1}]`` (one batched call),
- truncates its SVD to the tolerance and the maximum rank (so the rank
  adapts, bond by bond),
- picks new left (or right) index sets by :func:`~sktt_flow.tt.maxvol.maxvol`
  on the singular vectors, and keeps the interpolating core ``U U[I]^{-1}``,

sweeping left to right and back until the relative error on held-out random
grid points is below ``tol`` or the evaluation budget is spent.

Cross only sees what its index sets reach. To find modes that random indices
never meet, the initial index sets come from *seeds*: points found by short
gradient ascents of ``log h`` from many random starts (Khoo, Lindsey and Zhao,
2023, use the same idea in spirit through their initial guesses).
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
        Receives the counts.
    """

    def __init__(self, log_density, n_features, batch_size, dtype, device, report):
        if not callable(log_density):
            raise TypeError(f"log_density must be callable, got {type(log_density).__name__}.")
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
                f"log_density raised {type(error).__name__} on a batch of "
                f"{batch.shape[0]} points (first point {_format(batch[0])}): {error}"
            ) from error
        if not isinstance(values, torch.Tensor):
            try:
                values = torch.as_tensor(np.asarray(values, dtype=np.float64))
            except (TypeError, ValueError) as error:
                raise ValueError(
                    "log_density must return m real numbers for m points; could not "
                    f"convert {type(values).__name__}: {error}"
                ) from error
        if values.is_complex():
            raise ValueError("log_density returned complex values; it must return real ones.")
        values = values.to(device=self.device)
        if values.shape not in ((batch.shape[0],), (batch.shape[0], 1)):
            raise ValueError(
                f"log_density must return {batch.shape[0]} values for a batch of "
                f"{batch.shape[0]} points, got shape {tuple(values.shape)}."
            )
        values = values.reshape(-1)
        values = values.double() if grad else values.detach().double()
        bad = torch.isnan(values) | (values == math.inf)
        if bool(bad.any()):
            index = int(torch.nonzero(bad)[0])
            raise ValueError(
                f"log_density returned NaN or +inf at {int(bad.sum())} of "
                f"{batch.shape[0]} points, e.g. {float(values[index])} at "
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


def _superblock_points(left: torch.Tensor, right: torch.Tensor, n: int, device) -> torch.Tensor:
    """Multi-indices ``left x [n] x [n] x right`` as (r_l n n r_r, d), row-major."""
    r_left, r_right = left.shape[0], right.shape[0]
    grid = torch.arange(n, device=device)
    parts = [
        left[:, None, None, None, :].expand(r_left, n, n, r_right, left.shape[1]),
        grid[None, :, None, None, None].expand(r_left, n, n, r_right, 1),
        grid[None, None, :, None, None].expand(r_left, n, n, r_right, 1),
        right[None, None, None, :, :].expand(r_left, n, n, r_right, right.shape[1]),
    ]
    return torch.cat(parts, dim=-1).reshape(-1, left.shape[1] + right.shape[1] + 2)


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
    n_seeds: int = 256,
    n_seed_steps: int = 50,
    generator: torch.Generator,
    dtype: torch.dtype = torch.float64,
    verbose: int = 0,
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

    Returns
    -------
    cores : list of tensors (r_{k-1}, n, r_k), float64
        Values, not coefficients: ``cores`` interpolate the tensor ``A``.
    report : CrossReport
    """
    d, n = nodes.shape
    device = nodes.device
    report = CrossReport()
    evaluator = LogDensityEvaluator(log_density, d, batch_size, dtype, device, report)
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
        right[b] = _unique_rows_in_order(ranked[:, b:])
    cores: list[torch.Tensor] = [None] * d
    per_bond_tol = tol / math.sqrt(max(d - 1, 1))

    def superblock(b: int) -> torch.Tensor | None:
        """Values on left[b-1] x n x n x right[b+1], as (r n, n r), or None if over budget."""
        indices = _superblock_points(left[b - 1], right[b + 1], n, device)
        if report.n_evaluations + indices.shape[0] > budget:
            return None
        values = to_values(evaluate(indices))
        return values.reshape(left[b - 1].shape[0] * n, n * right[b + 1].shape[0])

    def error() -> float:
        approximation = _tt_at_indices(cores, test_indices)
        exact = to_values(test_log_values)
        norm = float(exact.norm())
        return float((approximation - exact).norm()) / norm if norm > 0 else 0.0

    direction = "right"
    stop_reason = f"max_sweeps={max_sweeps} reached"
    for sweep in range(max_sweeps):
        bonds = range(1, d) if direction == "right" else range(d - 1, 0, -1)
        over_budget = False
        for b in bonds:
            block = superblock(b)
            if block is None:
                over_budget = True
                break
            r_left, r_right = left[b - 1].shape[0], right[b + 1].shape[0]
            u, vh = _truncated_svd(block, max_rank, per_bond_tol)
            rank = u.shape[1]
            if direction == "right":
                rows = maxvol(u)
                a, i = rows // n, rows % n
                left[b] = torch.cat([left[b - 1][a], i[:, None]], dim=1)
                interpolation = torch.linalg.solve(u[rows].T, u.T).T
                cores[b - 1] = interpolation.reshape(r_left, n, rank)
                cores[b] = block[rows].reshape(rank, n, r_right)
            else:
                v = vh.T
                columns = maxvol(v)
                j, c = columns // r_right, columns % r_right
                right[b] = torch.cat([j[:, None], right[b + 1][c]], dim=1)
                interpolation = torch.linalg.solve(v[columns].T, v.T).T
                cores[b] = interpolation.T.reshape(rank, n, r_right)
                cores[b - 1] = block[:, columns].reshape(r_left, n, rank)
        if any(core is None for core in cores):
            stop_reason = "max_evals reached before the first sweep finished"
            raise ValueError(
                f"max_evals={max_evals} is too small for one sweep of TT-cross "
                f"({report.n_evaluations} evaluations spent); raise it."
            )
        report.n_sweeps = sweep + 1
        report.error_history.append(error())
        report.rank_history.append((1, *(core.shape[2] for core in cores)))
        if verbose:
            print(
                f"TT-cross sweep {sweep + 1}: ranks {report.rank_history[-1]}, "
                f"held-out relative error {report.error_history[-1]:.3e}, "
                f"{report.n_evaluations} evaluations"
            )
        if over_budget:
            stop_reason = f"max_evals={max_evals} reached"
            break
        if report.error_history[-1] <= tol:
            report.converged = True
            stop_reason = "held-out error below tol"
            break
        direction = "left" if direction == "right" else "right"
    report.stop_reason = stop_reason
    report.log_shift = shift
    return cores, report


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
