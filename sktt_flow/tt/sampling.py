"""Exact sampling from a squared tensor train by the conditional distribution method.

For a right-orthogonal train (see
:func:`~sktt_flow.tt.algebra.right_orthogonalize`) the cores right of any bond
contract to the identity, so after drawing ``z_1, ..., z_{k-1}`` with prefix row
vector ``l`` the conditional density of ``z_k`` is

.. math::

    p(z_k \\mid z_{<k}) \\propto \\lVert \\phi(z_k)^\\top P \\rVert^2,
    \\qquad P = l\\, G_k \\in \\mathbb{R}^{n \\times r_k},

a non-negative polynomial of degree ``2n - 2``. Its values at ``2n - 1``
Gauss–Legendre nodes are the quadratic forms ``l H(x_q) l^T`` with
``H(x) = G_k(x) G_k(x)^T``, and they determine its Legendre coefficients
exactly; the antiderivative of a Legendre series is again one, so the
conditional CDF ``F`` is an exact polynomial of degree ``2n - 1``. All of this
is linear in the outer product ``l^T l``: one matrix product per coordinate
maps the outer products of all samples to the Chebyshev coefficients of their
``F`` and to ``F`` on a fixed grid of Chebyshev points (see
:class:`ConditionalCDFOperators`).

Each ``z_k`` solves ``F(z_k) = u F(b)`` for a uniform ``u``: the grid brackets
the root in one cell, linear interpolation in the cell is the first iterate,
then Newton's method, with ``F`` and ``F'`` evaluated together by Clenshaw's
recurrence (on a GPU, from a table of the Chebyshev polynomials), runs until
the error left after the last step is below rounding (see
:func:`_newton_has_converged`), to a few ulps: its first steps kept in
the cell by a clamp, the steps of the few samples not done by the first check
safeguarded by bisection.
Everything is vectorised over samples; the only loops are over coordinates and
solver iterations. Because the map from uniforms to samples is deterministic
and monotone in every ``u_k``, this is the inverse Rosenblatt transport of the
train (Cui and Dolgov, FoCM 22, 2022, section 3).

:func:`inverse_rosenblatt_right_orthogonal` and its inverse
:func:`rosenblatt_right_orthogonal` (points to uniforms: the conditional CDFs
evaluated, no solve) add a defensive uniform part of weight ``tau`` to the
train's density and return the exact log-density at the points; with
``tau > 0`` the density is positive on the whole box, so the two maps are
bijections with finite Jacobians, the building blocks of composed transports
(:mod:`sktt_flow.flows.tempered`).
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence

import numpy as np
import torch

from sktt_flow.tt.algebra import (
    BROADCAST_MAX_POINTS,
    advance_running_product,
    basis_core_matrices,
)
from sktt_flow.tt.basis import (
    gauss_legendre,
    legendre_polynomials,
    orthonormal_legendre_scale,
    scaled_legendre_polynomials,
    scaled_legendre_polynomials_into,
    to_reference_interval,
)

__all__ = [
    "ConditionalCDFOperators",
    "conditional_cdf_operators",
    "inverse_rosenblatt_right_orthogonal",
    "rosenblatt_right_orthogonal",
    "sample_right_orthogonal",
]

#: Newton iterations that every sample takes before the first convergence
#: check. From the linear interpolation in a cell of the grid most samples of
#: a train with an irregular conditional need three or four (see
#: :func:`_newton_has_converged`); iterations without bookkeeping cost the
#: least, and checking earlier would stop next to no sample in float64 and
#: about half in float32, whose stragglers then cost more than the iteration
#: saved. At least two: the check compares the last two iterates.
UNCHECKED_ITERATIONS = 3

#: Device types on which the solver evaluates the CDF and its density from a
#: table of the Chebyshev polynomials at the iterates (one kernel per degree,
#: :func:`_cdf_and_density_by_table`) instead of Clenshaw's recurrence (three
#: per degree): on a GPU the host's kernel launches, not the arithmetic, set
#: the sampler's time. On a CPU the recurrence, which keeps four rows in
#: cache, is the faster.
TABLE_DEVICES = ("cuda",)

#: Largest ``2 n_basis x N`` table of the solver (``N`` the samples of a
#: call); above it the recurrence, whose memory does not grow with the degree.
TABLE_MAX_ELEMENTS = 1 << 26

#: Points per column block in which the prefix of a call's points goes
#: through a core (:meth:`_PrefixSweep.advance`), per device type; a block
#: takes the remainder of a division, so none has fewer points (nor more than
#: twice as many). The ``r_{k-1} r_k x N`` core values of all the points of a
#: call (134 MB at rank 16 and 65,536 points) are written by one GEMM and read
#: back by the contraction from main memory; a block's stay in cache. On one
#: CPU thread (float32, 32,768 draws with their log-densities, 2026-12-06,
#: Intel Xeon) blocks of 4,096 made the whole draw 19% faster at d = 64, rank
#: 16, 54 basis functions (2.24 s against 2.75 s), 16% at d = 30, rank 16, 81
#: functions (1.34 against 1.60 s) and 7-9% at d = 16-32, rank 8; blocks of
#: 8,192 and 16,384 gained less, and the values were the same to the bit. On
#: a GPU the blocks would only add kernel launches: one block.
ADVANCE_BLOCK_POINTS = {"cpu": 4096}


class ConditionalCDFOperators:
    """Fixed matrices that turn nodal values of a conditional into its CDF.

    Everything lives on the reference interval ``[-1, 1]``: the scaling of the
    basis to ``[a, b]`` only multiplies the conditional density by a constant,
    which the normalisation by ``F(1)`` removes.

    The conditional is built in Legendre polynomials, where the Gauss rule
    and the antiderivative are exact and simple; the solver evaluates it in
    Chebyshev polynomials, the same polynomial (the change of basis is well
    conditioned, done once here), because Clenshaw's recurrence for a
    Chebyshev series gives its derivative at the same time.

    Attributes
    ----------
    node_basis : tensor (2n - 1, n)
        ``sqrt(2j + 1) P_j`` at the ``2n - 1`` Gauss–Legendre nodes.
    cdf_coefficients : tensor (2n, 2n - 1)
        Maps the nodal values of the density (a column per sample) to the
        Chebyshev coefficients of ``F(t) = int_{-1}^t q``.
    grid : tensor (grid_size + 1,)
        Bracketing grid: the Chebyshev points ``-cos(pi i / grid_size)``,
        increasing, which resolve a polynomial equally well all over
        ``[-1, 1]``.
    cdf_operator : tensor (2n + grid_size + 1, 2n - 1)
        ``cdf_coefficients`` above the map to ``F`` on the grid: both from the
        nodal values in one product. The row of ``F(-1)`` is exactly zero and
        the last row gives ``F(1)``.
    value_and_derivative : tensor (4n, 2n)
        Maps the Chebyshev coefficients of ``F`` (a column per sample) to
        those of ``F`` and of ``F' / 2`` (the last row zero), each times the
        signs of :func:`_cdf_and_density_by_table`.
    """

    def __init__(self, n: int, *, grid_size: int = 32, dtype=torch.float64, device=None):
        self.n = n
        n_nodes = 2 * n - 1
        nodes, weights = gauss_legendre(n_nodes, dtype=torch.float64)
        degrees = torch.arange(2 * n, dtype=torch.float64)
        self.node_basis = legendre_polynomials(nodes, n) * torch.sqrt(2 * degrees[:n] + 1)
        # a_j = (2j + 1)/2 sum_q w_q P_j(t_q) q(t_q), exact for degree 2n - 2.
        node_legendre = legendre_polynomials(nodes, n_nodes)  # (2n-1, 2n-1)
        density = ((2 * degrees[:n_nodes] + 1) / 2)[:, None] * (node_legendre.T * weights)
        # int_{-1}^t P_0 = P_0 + P_1 ; int_{-1}^t P_j = (P_{j+1} - P_{j-1}) / (2j + 1)
        antiderivative = torch.zeros(2 * n, n_nodes, dtype=torch.float64)
        antiderivative[0, 0] = 1.0
        antiderivative[1, 0] = 1.0
        for j in range(1, n_nodes):
            antiderivative[j + 1, j] = 1.0 / (2 * j + 1)
            antiderivative[j - 1, j] = -1.0 / (2 * j + 1)
        cdf_chebyshev = _legendre_to_chebyshev(2 * n) @ antiderivative @ density
        grid = -np.cos(np.pi * np.arange(grid_size + 1) / grid_size)
        on_grid = torch.from_numpy(np.polynomial.chebyshev.chebvander(grid, 2 * n - 1))
        cdf_on_grid = on_grid @ cdf_chebyshev
        cdf_on_grid[0] = 0.0  # F(-1) = 0 exactly, not to rounding
        # Signs (+, +, -, -, ...) turn the recurrence T_{j+1} = 2t T_j - T_{j-1}
        # into one multiply-add per degree (see _cdf_and_density_by_table);
        # the rows below give a series' coefficients with those signs and
        # those of half its derivative, from its Chebyshev coefficients.
        signs = np.where(np.arange(2 * n) // 2 % 2 == 0, 1.0, -1.0)
        half_derivative = np.polynomial.chebyshev.chebder(np.eye(2 * n), axis=0) / 2.0
        value_and_derivative = np.zeros((4 * n, 2 * n))
        value_and_derivative[: 2 * n] = np.diag(signs)
        value_and_derivative[2 * n : 4 * n - 1] = signs[: 2 * n - 1, None] * half_derivative
        self.value_and_derivative = torch.from_numpy(value_and_derivative).to(
            dtype=dtype, device=device
        )
        self.cdf_coefficients = cdf_chebyshev.to(dtype=dtype, device=device)
        self.cdf_operator = torch.cat([cdf_chebyshev, cdf_on_grid]).to(dtype=dtype, device=device)
        self.node_basis = self.node_basis.to(dtype=dtype, device=device)
        self.grid = torch.from_numpy(grid).to(dtype=dtype, device=device)

    @property
    def grid_size(self) -> int:
        """Number of cells of the bracketing grid."""
        return self.grid.shape[0] - 1


@functools.lru_cache(maxsize=32)
def conditional_cdf_operators(
    n: int, dtype: torch.dtype = torch.float64, device: torch.device | None = None
) -> ConditionalCDFOperators:
    """The :class:`ConditionalCDFOperators` of ``n``, built once per dtype and device.

    Building them takes milliseconds, as long as sampling a few hundred
    points of a small train, and variational training samples at every step.
    The cached tensors are shared: treat them as read-only.
    """
    return ConditionalCDFOperators(n, dtype=dtype, device=device)


def _legendre_to_chebyshev(m: int) -> torch.Tensor:
    """Matrix (m, m) from Legendre to Chebyshev coefficients of degree < m.

    Both series interpolate the same values at the ``m`` Chebyshev points,
    where the Chebyshev Vandermonde matrix has condition number about
    ``sqrt(2)``; the conversion through monomials would lose half the digits
    at ``m = 32``.
    """
    points = np.cos(np.pi * (np.arange(m) + 0.5) / m)
    chebyshev = np.polynomial.chebyshev.chebvander(points, m - 1)
    legendre = np.polynomial.legendre.legvander(points, m - 1)
    return torch.from_numpy(np.linalg.solve(chebyshev, legendre))


def _packed_gram(nodal_core: torch.Tensor) -> torch.Tensor:
    """``H(x_q) = G(x_q) G(x_q)^T`` (Q, r, r) packed to its upper triangle (Q, r (r + 1) / 2).

    Off-diagonal entries are doubled, so that a packed row times the packed
    outer product of :func:`_packed_outer` is the whole quadratic form
    ``l H(x_q) l^T`` with about half the terms.
    """
    gram = nodal_core @ nodal_core.transpose(1, 2)
    rank = gram.shape[1]
    rows, columns = torch.triu_indices(rank, rank, device=gram.device)
    multiplicity = torch.where(rows == columns, 1.0, 2.0).to(gram.dtype)
    return gram[:, rows, columns] * multiplicity


def _packed_outer(prefix: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Upper triangle of the outer product of each column of ``prefix`` (r, N) with itself.

    Written into ``out`` (r (r + 1) / 2, N) row ``a`` of the prefix at a time,
    in the order of :func:`_packed_gram`: one kernel per row.
    """
    rank = prefix.shape[0]
    offset = 0
    for a in range(rank):
        torch.mul(prefix[a], prefix[a:], out=out[offset : offset + rank - a])
        offset += rank - a
    return out


def _cdf_and_density(
    coefficients: Sequence[torch.Tensor], t: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``F(t)`` and ``F'(t) / 2`` of every sample by Clenshaw's recurrence, each (N,).

    ``F = sum_j c_j T_j`` with the Chebyshev coefficients ``coefficients[j]``
    (N,), one entry per sample. The recurrence
    ``b_j = c_j + 2t b_{j+1} - b_{j+2}`` gives ``F = b_0 - t b_1``;
    differentiated, ``e_j = b_j' / 2`` obeys
    ``e_j = b_{j+1} + 2t e_{j+1} - e_{j+2}``, and
    ``F' / 2 = e_0 - t e_1 - b_1 / 2``. The pair costs three kernels a degree
    and reads each coefficient once: the derivative needs no series of its
    own. Stable on ``[-1, 1]``, where it replaces the ``(2n, N)`` table of all
    the polynomials at ``t``.
    """
    m = len(coefficients)
    twice = 2.0 * t
    # Rows (b, e) of degree j + 1 (current) and j + 2 (following), from
    # j = m - 3 down; the views are taken once, as each indexing is a call.
    current, following = t.new_empty(2, 2, t.shape[0])
    b_current, e_current = current.unbind(0)
    b_following, e_following = following.unbind(0)
    b_following.copy_(coefficients[m - 1])
    e_following.zero_()
    torch.addcmul(coefficients[m - 2], twice, b_following, out=b_current)
    e_current.copy_(coefficients[m - 1])
    for j in range(m - 3, -1, -1):
        # (b_j, e_j) into the rows of degree j + 2, which are no longer needed.
        torch.sub(coefficients[j], b_following, out=b_following)
        torch.sub(b_current, e_following, out=e_following)
        following.addcmul_(twice, current)
        current, following = following, current
        b_current, b_following = b_following, b_current
        e_current, e_following = e_following, e_current
    cdf = b_current.addcmul_(t, b_following, value=-1.0)
    half_density = e_current.addcmul_(t, e_following, value=-1.0)
    return cdf, half_density.sub_(b_following, alpha=0.5)


def _cdf_and_density_by_table(
    signed: torch.Tensor, t: torch.Tensor, table: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``F(t)`` and ``F'(t) / 2`` of every sample, each (N,), as sums over a table.

    ``signed`` (2, m, N) holds each sample's Chebyshev coefficients of ``F``
    and of ``F' / 2`` (the last zero) times the signs ``s_j = (+, +, -, -,
    ...)`` (``ConditionalCDFOperators.value_and_derivative``), and ``table``
    (m, N) is written with ``Y_j = s_j T_j(t)``, which obey
    ``Y_{j+1} = Y_{j-1} + 2t (-1)^j Y_j``: one multiply-add a degree
    instead of the three of the recurrence of :func:`_cdf_and_density`, then
    one product and one sum for both series. The same values to rounding
    (``|T_j| <= 1`` on ``[-1, 1]``, where the recurrence is stable).
    """
    m = table.shape[0]
    table[0].fill_(1.0)
    table[1].copy_(t)
    twice = 2.0 * t
    factors = (twice, twice.neg())
    for j in range(1, m - 1):
        torch.addcmul(table[j - 1], factors[j % 2], table[j], out=table[j + 1])
    cdf, half_density = (signed * table).sum(dim=1)
    return cdf, half_density


def _newton_has_converged(
    step: torch.Tensor,
    previous_step: torch.Tensor,
    density: torch.Tensor,
    previous_density: torch.Tensor,
) -> torch.Tensor:
    """Whether the iterate after a Newton step of length ``step`` is exact to rounding.

    After a step ``s`` from ``t`` the error of the new iterate is ``K s^2`` to
    leading order, with ``K = q'(t) / (2 q(t))``; ``q'`` is the difference
    quotient of the densities ``q`` at the last two iterates, a distance
    ``previous_step`` apart (``density`` may be ``q`` times any constant).
    The estimate is trusted where that quotient is local (the previous step
    at most ``eps^(1/4) / 8``) and the neglected cubic term is below rounding
    (``s`` at most ``sqrt(eps)``); a step of a few ulps is final in any case.
    Accepting the step whose error is predicted below rounding, instead of
    waiting for the next step to be that small, saves one of the three or four
    iterations most samples need. A negative or NaN density fails the test.
    """
    eps = torch.finfo(step.dtype).eps
    curvature = (density - previous_density).abs_().mul_(step).mul_(step)
    predicted_small = curvature <= previous_step * density * (eps / 2)
    predicted_small &= step <= eps**0.5
    predicted_small &= previous_step <= eps**0.25 / 8
    return predicted_small.logical_or_(step <= 4 * eps)


def _invert_cdf(
    cdf_values: torch.Tensor,
    uniforms: torch.Tensor,
    operators: ConditionalCDFOperators,
    max_iter: int = 60,
) -> torch.Tensor:
    """Solve ``F_i(t_i) = u_i F_i(1)`` on ``[-1, 1]`` for every sample ``i``.

    ``cdf_values`` (2n + grid_size + 1, N) holds, one column per sample, the
    Chebyshev coefficients of ``F`` and ``F`` on the grid (the rows of
    ``operators.cdf_operator``); its first row is overwritten.
    """
    m = 2 * operators.n
    series = cdf_values[:m]
    cdf_on_grid = cdf_values[m:]
    grid_size = operators.grid_size
    target = uniforms * cdf_on_grid[grid_size]
    t, low, high = _first_iterate(cdf_on_grid, operators.grid, target)
    # From here on the series is that of F - target: the recurrence returns
    # the residual.
    series[0] -= target
    # The first iterations are plain Newton steps kept in the cell by a clamp
    # (a NaN or infinite step from a zero density lands on a cell end), with
    # no bookkeeping: the safeguard below costs a comparison and three
    # selections per iteration, each several times a step of the recurrence
    # on a CPU. The last of them is checked: a sample is done if its Newton
    # step stayed in the cell and passes the test of _newton_has_converged,
    # the same test and the same step as in the safeguarded iterations.
    # The coefficients each sample's evaluation reads: the series, or on a
    # device of TABLE_DEVICES its signed value and derivative series; the
    # last axis is the samples' in both.
    n_samples = series.shape[1]
    if series.device.type in TABLE_DEVICES and m * n_samples <= TABLE_MAX_ELEMENTS:
        coefficients = (operators.value_and_derivative @ series).view(2, m, n_samples)
        table = series.new_empty(m, n_samples)

        def evaluator(coefficients):
            return lambda t: _cdf_and_density_by_table(coefficients, t, table[:, : t.shape[0]])
    else:
        coefficients = series

        def evaluator(coefficients):
            rows = coefficients.unbind(0)  # the views once per working set
            return lambda t: _cdf_and_density(rows, t)

    evaluate = evaluator(coefficients)
    step = density = converged = None
    for iteration in range(UNCHECKED_ITERATIONS):
        previous_step, previous_density = step, density
        residual, density = evaluate(t)
        newton = torch.addcdiv(t, residual, density, value=-0.5)
        following = newton.nan_to_num(0.0).clamp_(low, high)
        if iteration + 2 >= UNCHECKED_ITERATIONS:
            step = (following - t).abs_()
        if iteration + 1 == UNCHECKED_ITERATIONS:
            converged = _newton_has_converged(step, previous_step, density, previous_density)
            converged &= following == newton
        t = following
    solution = t
    rows = torch.nonzero(~converged).squeeze(1)
    if rows.numel() == 0:
        return solution.clamp(-1.0, 1.0)
    # The few samples left (a conditional density near zero, a root near a
    # cell end) go on with Newton's method safeguarded by bisection in the
    # cell, which holds the root. ``rows`` maps the working set to the samples.
    t, low, high, step, density = (x[rows] for x in (t, low, high, step, density))
    # gather: a few times faster than indexing the columns of a matrix
    coefficients = coefficients.gather(-1, rows.expand(*coefficients.shape[:-1], -1))
    for _ in range(max_iter - UNCHECKED_ITERATIONS):
        previous_step, previous_density = step, density
        residual, density = evaluator(coefficients)(t)
        below = residual < 0
        low = torch.where(below, t, low)
        high = torch.where(below, high, t)
        newton = torch.addcdiv(t, residual, density, value=-0.5)
        # Newton's step where it stays in the bracket (NaN and inf do not
        # survive the comparison with their clamped value), else bisection.
        accept = newton.clamp(low, high) == newton
        following = torch.where(accept, newton, torch.lerp(low, high, 0.5))
        step = (following - t).abs_()
        t = following
        solution[rows] = t
        converged = _newton_has_converged(step, previous_step, density, previous_density)
        active = torch.nonzero(~converged).squeeze(1)
        if active.numel() == 0:
            break
        rows = rows[active]
        t, low, high, step, density = (x[active] for x in (t, low, high, step, density))
        coefficients = coefficients.gather(-1, active.expand(*coefficients.shape[:-1], -1))
    return solution.clamp(-1.0, 1.0)


def _first_iterate(
    cdf_on_grid: torch.Tensor, grid: torch.Tensor, target: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The cell of the grid that holds each root, ``(t, low, high)``, with the
    first iterate ``t`` on the straight line through the cell's ends.

    ``cdf_on_grid`` (grid_size + 1, N) is ``F`` at the points of ``grid``.
    (An inverse cubic through four grid values was tried: on random trains
    of degree 31 on the 32 cells its error was still 1e-3, and the samples it
    let stop one iteration earlier did not pay for the stragglers.)
    """
    grid_size = grid.shape[0] - 1
    index = _bracketing_cell(cdf_on_grid[1:grid_size], target)
    ends = torch.stack([index, index + 1])
    f_low, f_high = cdf_on_grid.gather(0, ends)
    low, high = grid[ends]
    # 0/0 where the cell carries no mass: its middle.
    fraction = ((target - f_low) / (f_high - f_low)).nan_to_num_(0.5).clamp_(0.0, 1.0)
    return torch.lerp(low, high, fraction), low, high


def _bracketing_cell(interior: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Index of the grid cell that holds each sample's root, (N,) int64.

    ``interior`` (grid_size - 1, N) is ``F`` at the interior grid points,
    non-decreasing down each column, and the index is the number of them at
    most ``target``. Counted through the signs of the differences, as
    ``(grid_size - 1 + sum sign) / 2`` rounded down (a value equal to the
    target counts half and is rounded away, which puts the root on the cell's
    upper end): on a CPU, 2.5 times faster than summing the booleans of the
    comparison, which goes through a conversion of the whole table. A NaN
    (a NaN target) gives the first cell, as the count of no values would.
    ``F`` on the grid comes from another product than the solver's series,
    so round-off can misplace only a root that lies within rounding of a
    grid point, in the neighbouring cell, whose end is then the root to
    rounding.
    """
    signs = torch.sub(target, interior).sign_().sum(dim=0)
    return signs.add_(interior.shape[0]).div_(2.0).floor_().nan_to_num_(0.0).long()


def _cdf_factors(
    cores: Sequence[torch.Tensor], operators: ConditionalCDFOperators
) -> list[tuple[torch.Tensor, ...]]:
    """Per coordinate, the matrices that map the packed outer products of the
    prefixes to ``cdf_operator @ nodal densities``, in the order they are
    applied (one folded matrix where that is the cheaper order)."""
    cdf_operator = operators.cdf_operator
    n_values, n_nodes = cdf_operator.shape
    factors = []
    for core in cores:
        nodal_core = torch.einsum("qi,aib->qab", operators.node_basis, core)
        gram = _packed_gram(nodal_core)  # (2n - 1, r (r + 1) / 2)
        packed = gram.shape[1]
        if n_values * packed <= n_nodes * (packed + n_values):
            factors.append((cdf_operator @ gram,))
        else:
            factors.append((gram, cdf_operator))
    return factors


class _PrefixSweep:
    """The per-coordinate machinery that sampling and the Rosenblatt maps share.

    It holds the running prefix of ``N`` points (``(r_k, N)``, starting at
    ones), the matrices that map its packed outer product to ``cdf_operator @
    nodal densities`` (:func:`_cdf_factors`) and the buffers those products
    and the prefix's updates are written into, reused at every coordinate:
    above :data:`~sktt_flow.tt.algebra.BROADCAST_MAX_POINTS` points the
    running product goes into buffers too (sampling 1.1-1.2 times faster at
    8,192 points, 1.2-1.5 times at 65,536; d = 16-50, rank 8-16), one block
    of :data:`ADVANCE_BLOCK_POINTS` points at a time.
    """

    def __init__(
        self,
        cores: Sequence[torch.Tensor],
        low: torch.Tensor,
        high: torch.Tensor,
        like: torch.Tensor,
        operators: ConditionalCDFOperators,
    ):
        n, n_points = cores[0].shape[1], like.shape[0]
        self.n = n
        basis_scale = orthonormal_legendre_scale(low, high, n, scaled_table=True)
        self.core_matrices = basis_core_matrices(list(cores), basis_scale)
        self.factors = _cdf_factors(cores, operators)
        self.prefix = like.new_ones(1, n_points)
        self.cdf_values = like.new_empty(operators.cdf_operator.shape[0], n_points)
        largest = max(factor[0].shape[1] for factor in self.factors)
        self._outer = like.new_empty(largest, n_points)
        # the nodal densities, where they are computed on the way (two factors)
        self._nodal = like.new_empty(operators.node_basis.shape[0], n_points)
        # the Legendre table at the drawn points, refilled at every coordinate
        # (without gradient: scaled_legendre_polynomials_into)
        self._table = like.new_empty(n, n_points)
        self._buffers = None
        self._blocks = [slice(0, n_points)]
        if n_points > BROADCAST_MAX_POINTS:
            block_points = ADVANCE_BLOCK_POINTS.get(like.device.type)
            if block_points is not None:
                block_points = max(block_points, BROADCAST_MAX_POINTS + 1)
            self._blocks = _column_blocks(n_points, block_points)
            largest_block = max(block.stop - block.start for block in self._blocks)
            core_values = like.new_empty(
                max(c.shape[0] for c in self.core_matrices), largest_block
            )
            # two prefixes, used in turn: the next one is computed from the last
            prefixes = like.new_empty(2, max(core.shape[2] for core in cores), n_points)
            self._buffers = (core_values, prefixes)

    def conditional_cdf(self, k: int) -> torch.Tensor:
        """``cdf_operator @ nodal densities`` of coordinate ``k`` given the
        prefix, one column per point, into :attr:`cdf_values`."""
        factors = self.factors[k]
        product = _packed_outer(self.prefix, self._outer[: factors[0].shape[1]])
        for factor in factors[:-1]:
            product = torch.mm(factor, product, out=self._nodal[: factor.shape[0]])
        return torch.mm(factors[-1], product, out=self.cdf_values)

    def advance(self, k: int, t: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """The prefix times ``scale`` (in place: the sweep's own, needed no
        more) through core ``k`` at the points ``t`` of ``[-1, 1]``."""
        if torch.is_grad_enabled():
            # a graph may keep the table: a fresh one per coordinate
            table = scaled_legendre_polynomials(t, self.n, dim=0)  # (n, N)
        else:
            table = scaled_legendre_polynomials_into(t, self._table)
        self.prefix.mul_(scale)
        if self._buffers is None:
            self.prefix = advance_running_product(self.prefix, self.core_matrices[k], table)
            return self.prefix
        # block by block (ADVANCE_BLOCK_POINTS), each above BROADCAST_MAX_POINTS
        # points, so that advance_running_product writes into the buffers
        core_values, prefixes = self._buffers
        matrix = self.core_matrices[k]
        result = prefixes[k % 2][: matrix.shape[0] // self.prefix.shape[0]]
        for block in self._blocks:
            advance_running_product(
                self.prefix[:, block],
                matrix,
                table[:, block],
                buffers=(core_values[:, : block.stop - block.start], result[:, block]),
            )
        self.prefix = result
        return self.prefix


def _column_blocks(n_points: int, block_points: int | None) -> list[slice]:
    """``n_points`` columns in blocks of ``block_points`` (all of them in one
    where None), the remainder of the division shared out, so that every
    block has at least ``block_points`` columns (or all of them)."""
    n_blocks = 1 if block_points is None else max(1, n_points // block_points)
    bounds = [n_points * i // n_blocks for i in range(n_blocks + 1)]
    return [slice(start, stop) for start, stop in itertools.pairwise(bounds)]


def sample_right_orthogonal(
    cores: Sequence[torch.Tensor],
    low: torch.Tensor,
    high: torch.Tensor,
    uniforms: torch.Tensor,
    operators: ConditionalCDFOperators | None = None,
    *,
    defensive_weight: float = 0.0,
    return_log_density: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Map uniforms (N, d) to exact samples of ``s(z)^2 / ||C||^2`` on the box.

    Parameters
    ----------
    cores : sequence of tensors
        A right-orthogonal train (cores 2 to d right-orthogonal), in the dtype
        the computation should use (float64 is recommended).
    low, high : tensors (d,)
        The box.
    uniforms : tensor (N, d)
        Independent uniforms on [0, 1); sample ``i`` is a deterministic,
        coordinate-wise monotone function of row ``i``.
    operators : ConditionalCDFOperators, optional
        Precomputed for ``n`` and the dtype and device of ``cores``.
    defensive_weight : float, default=0.0
        Weight ``tau`` in [0, 1) of a uniform component on the box: the
        samples are those of ``(1 - tau) s^2 / ||C||^2 + tau / vol(B)`` (see
        :func:`inverse_rosenblatt_right_orthogonal`, which also returns their
        log-density). 0 is the plain train, computed exactly as before.
    return_log_density : bool, default=False
        Also return the exact log-density of the draws (that of the defensive
        mixture where ``defensive_weight > 0``).

    Returns
    -------
    samples : tensor (N, d)
    log_density : tensor (N,)
        Only with ``return_log_density``: ``log p`` at the samples, read off
        the prefixes the sweep computes anyway (see
        :func:`_log_density_step`), for 1% to 6% more time than the draws
        alone (8,192 draws, float32, d = 11-64, one thread), where
        evaluating the train again at the samples costs 15% to 30% of the
        draw (d = 64, rank 16, 54 basis functions: 0.34 s against 1.19 s).

    Notes
    -----
    The work runs with the samples along the last axis (the prefix is
    ``(r_k, N)``), so that every elementwise kernel is a contiguous sweep and
    every contraction one GEMM, as in
    :meth:`~sktt_flow.tt.distribution.TTDistribution.log_abs_tt`. The
    quadratic forms ``l H(x_q) l^T`` take the upper triangle of the symmetric
    outer product ``l^T l`` (``r (r + 1) / 2`` rows), and the map from them to
    the coefficients and grid values of ``F`` is folded into one matrix per
    coordinate where that is the cheaper order of the two products.
    """
    if defensive_weight != 0.0:
        samples, log_density = inverse_rosenblatt_right_orthogonal(
            cores, low, high, uniforms, operators, defensive_weight=defensive_weight
        )
        return (samples, log_density) if return_log_density else samples
    n = cores[0].shape[1]
    if operators is None:
        operators = conditional_cdf_operators(n, uniforms.dtype, uniforms.device)
    n_samples = uniforms.shape[0]
    samples = torch.empty_like(uniforms)
    if n_samples == 0:
        return (samples, uniforms.new_empty(0)) if return_log_density else samples
    sweep = _PrefixSweep(cores, low, high, uniforms, operators)
    half_width = (high - low) / 2.0
    tiny = torch.finfo(uniforms.dtype).tiny
    log_density = uniforms.new_zeros(n_samples) if return_log_density else None
    for k in range(len(cores)):
        cdf_values = sweep.conditional_cdf(k)
        if log_density is not None and k > 0:
            _log_density_step(log_density, cdf_values[-1], half_width[k - 1])
        t = _invert_cdf(cdf_values, uniforms[:, k], operators)
        samples[:, k] = low[k] + (t + 1.0) * half_width[k]
        if k + 1 == len(cores) and log_density is None:
            break
        # F(1) is |l|^2 up to a constant (the cores right of k contract to the
        # identity), and any positive scale of a prefix will do: dividing by
        # its square root keeps long trains from underflowing or overflowing.
        prefix = sweep.advance(k, t, cdf_values[-1].clamp_min(tiny).rsqrt_())
    if log_density is None:
        return samples
    _log_density_step(log_density, _final_total(prefix), half_width[-1])
    return samples, log_density - torch.log(half_width).sum()


def _final_total(prefix: torch.Tensor) -> torch.Tensor:
    """``F(1)`` of a conditional after the last core, where the prefix is 1 x N:
    one more step of :func:`_log_density_step` for the last coordinate."""
    return 2.0 * prefix[0].square()


def _log_density_step(
    log_density: torch.Tensor, total: torch.Tensor, half_width: torch.Tensor
) -> None:
    """Add the log conditional density of the coordinate just drawn, in place,
    in the reference coordinate ``t`` in ``[-1, 1]``.

    With the prefix rescaled by ``F(1)^(-1/2)`` after every coordinate, the
    total ``F(1)`` of the next conditional (``total``), times the half-width
    of the box along the coordinate just drawn, is that coordinate's
    conditional density at its value (right orthogonality: the cores right of
    it contract to the identity, so the total is the squared norm of the
    prefix, up to the basis's constants). Summed over the coordinates and
    less the log half-widths, this is ``log s(z)^2 / ||C||^2`` in the units
    of ``z``: exact to rounding and normalised whatever the scale of the
    train.
    """
    log_density += torch.log(total * half_width)


def _check_defensive_weight(defensive_weight: float) -> float:
    """``defensive_weight`` as a float in [0, 1), or a ValueError."""
    if isinstance(defensive_weight, bool) or not isinstance(defensive_weight, (int, float)):
        raise TypeError(
            f"defensive_weight must be a float in [0, 1), got {type(defensive_weight).__name__}."
        )
    if not 0.0 <= defensive_weight < 1.0:
        raise ValueError(f"defensive_weight must be in [0, 1), got {defensive_weight!r}.")
    return float(defensive_weight)


def _rosenblatt_sweep(
    cores: Sequence[torch.Tensor],
    low: torch.Tensor,
    high: torch.Tensor,
    values: torch.Tensor,
    operators: ConditionalCDFOperators | None,
    defensive_weight: float,
    inverse: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The Rosenblatt map of the defensive mixture, or its inverse, and the log-density.

    Works in the reference coordinates ``t_k`` in ``[-1, 1]`` of the box, where
    the mixture is ``(1 - tau) p_TT(t) + tau 2^-d``. At coordinate ``k`` the
    prefix of every point gives the Chebyshev coefficients of the TT part's
    conditional CDF ``F`` (up to its total ``F(1)``, as in
    :func:`sample_right_orthogonal`); the mixture's conditional CDF is

        G(t) = w F(t) / F(1) + (1 - w) (t + 1) / 2,
        w = (1 - tau) m_TT / ((1 - tau) m_TT + tau 2^-k),

    with ``m_TT`` the TT part's marginal density of ``t_<k``: each marginal
    carries its share of the conditional. ``G`` is again a Chebyshev series
    (the linear term adds to ``T_0`` and ``T_1``), so the solver and the
    Clenshaw evaluator of the plain train serve unchanged.

    ``m_TT`` comes for free: with the prefix rescaled by ``F(1)^(-1/2)`` at
    every step, the next ``F(1)`` equals ``2 / width_k`` times the TT part's
    conditional density of ``t_k`` at the point (right orthogonality: the
    cores right of ``k`` contract to the identity). Its logarithm is summed,
    and one more step after the last coordinate gives ``log p_TT(t)``; the
    log-density is then ``log((1 - tau) p_TT(t) + tau 2^-d)`` minus the log
    half-widths, exact and finite wherever ``tau > 0``.
    """
    n = cores[0].shape[1]
    if operators is None:
        operators = conditional_cdf_operators(n, values.dtype, values.device)
    n_points, n_features = values.shape
    output = torch.empty_like(values)
    if n_points == 0:
        return output, values.new_empty(0)
    sweep = _PrefixSweep(cores, low, high, values, operators)
    m = 2 * n
    grid_shift = ((operators.grid + 1.0) / 2.0)[:, None]
    half_width = (high - low) / 2.0
    tiny = torch.finfo(values.dtype).tiny
    log_tt_weight = math.log1p(-defensive_weight)
    log_uniform_weight = math.log(defensive_weight) if defensive_weight > 0 else -math.inf
    log_marginal = values.new_zeros(n_points)  # log of the TT part's marginal of t_<k
    for k in range(n_features):
        cdf_values = sweep.conditional_cdf(k)
        total = cdf_values[-1].clone()
        if k > 0:
            _log_density_step(log_marginal, total, half_width[k - 1])
        # w = sigmoid(log of the TT part's share over the uniform's), exactly
        # 0 where the train's prefix vanishes and 1 where tau = 0.
        if defensive_weight > 0.0:
            share = log_tt_weight + log_marginal - (log_uniform_weight - k * math.log(2.0))
            weight = torch.sigmoid(share)
        else:
            weight = torch.ones_like(total)
        cdf_values *= weight / total.clamp_min(tiny)
        uniform_part = 1.0 - weight
        cdf_values[0] += uniform_part / 2.0
        cdf_values[1] += uniform_part / 2.0
        cdf_values[m:] += grid_shift * uniform_part
        if inverse:
            t = _invert_cdf(cdf_values, values[:, k], operators)
            output[:, k] = low[k] + (t + 1.0) * half_width[k]
        else:
            t = to_reference_interval(values[:, k], low[k], high[k]).clamp(-1.0, 1.0)
            cdf, _ = _cdf_and_density(cdf_values[:m].unbind(0), t)
            output[:, k] = cdf.clamp_(0.0, 1.0)
        prefix = sweep.advance(k, t, total.clamp_min(tiny).rsqrt_())
    _log_density_step(log_marginal, _final_total(prefix), half_width[-1])
    log_density = torch.logaddexp(
        log_tt_weight + log_marginal,
        log_marginal.new_full((), log_uniform_weight - n_features * math.log(2.0)),
    )
    return output, log_density - torch.log(half_width).sum()


def inverse_rosenblatt_right_orthogonal(
    cores: Sequence[torch.Tensor],
    low: torch.Tensor,
    high: torch.Tensor,
    uniforms: torch.Tensor,
    operators: ConditionalCDFOperators | None = None,
    *,
    defensive_weight: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Inverse Rosenblatt transport of a squared train with a defensive uniform part.

    The distribution on the box :math:`B` is

    .. math::

        p(z) = (1 - \tau)\, \frac{s(z)^2}{\lVert C \rVert^2}
        + \frac{\tau}{\operatorname{vol}(B)},

    positive everywhere on ``B`` when :math:`\tau > 0`, so that the transport
    and its inverse are bijections with finite Jacobians. Coordinate ``k`` of
    sample ``i`` solves ``G_k(z_k | z_<k) = u_ik`` for the mixture's exact
    conditional CDF ``G_k``, a polynomial (see :func:`_rosenblatt_sweep`), by
    the solver of :func:`sample_right_orthogonal`.

    Parameters
    ----------
    cores : sequence of tensors
        A right-orthogonal train (cores 2 to d right-orthogonal), in the
        dtype of the computation (float64 is recommended).
    low, high : tensors (d,)
        The box.
    uniforms : tensor (N, d)
        Points of ``[0, 1]^d``.
    operators : ConditionalCDFOperators, optional
        Precomputed for ``n`` and the dtype and device of ``cores``.
    defensive_weight : float, default=0.0
        :math:`\tau` in [0, 1). With 0 the map is that of
        :func:`sample_right_orthogonal` and the log-density is ``-inf`` where
        ``s = 0``.

    Returns
    -------
    samples : tensor (N, d)
        The transported points, in ``B``.
    log_density : tensor (N,)
        ``log p`` at the samples, exact (not a by-product of the solver:
        the product of the conditional densities read off the prefixes).

    Raises
    ------
    ValueError, TypeError
        For a ``defensive_weight`` outside [0, 1) or not a number.

    References
    ----------
    .. [1] T. Cui and S. Dolgov, "Deep composition of tensor-trains using
       squared inverse Rosenblatt transports", Found. Comput. Math. 22 (2022)
       1863-1922.
    """
    defensive_weight = _check_defensive_weight(defensive_weight)
    return _rosenblatt_sweep(cores, low, high, uniforms, operators, defensive_weight, True)


def rosenblatt_right_orthogonal(
    cores: Sequence[torch.Tensor],
    low: torch.Tensor,
    high: torch.Tensor,
    points: torch.Tensor,
    operators: ConditionalCDFOperators | None = None,
    *,
    defensive_weight: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rosenblatt transport (points to uniforms), the inverse of
    :func:`inverse_rosenblatt_right_orthogonal`.

    Coordinate ``k`` of the result is the exact conditional CDF
    ``G_k(z_k | z_<k)`` of the defensive mixture at the point, evaluated by
    Clenshaw's recurrence on its Chebyshev series: no solve, one pass over the
    coordinates. Where the density is positive (everywhere on the box when
    ``defensive_weight > 0``) the two maps are inverse to each other to a few
    ulps times the density's dynamic range.

    Parameters
    ----------
    cores : sequence of tensors
        A right-orthogonal train (cores 2 to d right-orthogonal).
    low, high : tensors (d,)
        The box.
    points : tensor (N, d)
        Points of the box; coordinates outside it are clamped onto it.
    operators : ConditionalCDFOperators, optional
    defensive_weight : float, default=0.0
        The weight of the uniform component, in [0, 1).

    Returns
    -------
    uniforms : tensor (N, d)
        In ``[0, 1]^d``.
    log_density : tensor (N,)
        ``log p`` at the (clamped) points.

    Raises
    ------
    ValueError, TypeError
        For a ``defensive_weight`` outside [0, 1) or not a number.

    References
    ----------
    .. [1] T. Cui and S. Dolgov, "Deep composition of tensor-trains using
       squared inverse Rosenblatt transports", Found. Comput. Math. 22 (2022)
       1863-1922.
    """
    defensive_weight = _check_defensive_weight(defensive_weight)
    return _rosenblatt_sweep(cores, low, high, points, operators, defensive_weight, False)
