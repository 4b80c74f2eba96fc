"""Exact sampling from a squared tensor train by the conditional distribution method.

For a right-orthogonal train (see
:func:`~sktt_flow.tt.algebra.right_orthogonalize`) the cores right of any bond
contract to the identity, so after drawing ``z_1, ..., z_{k-1}`` with prefix row
vector ``l`` the conditional density of ``z_k`` is

.. math::

    p(z_k \\mid z_{<k}) \\propto \\lVert \\phi(z_k)^\\top P \\rVert^2,
    \\qquad P = l\\, G_k \\in \\mathbb{R}^{n \\times r_k},

a non-negative polynomial of degree ``2n - 2``. Its values at ``2n - 1``
Gauss–Legendre nodes (computed as the quadratic forms ``l H(x_q) l^T`` with
``H(x) = G_k(x) G_k(x)^T``, one GEMM per coordinate on the outer products of
the prefixes) determine its Legendre coefficients exactly, and the
antiderivative of a Legendre series is again one, so the conditional CDF is an
exact polynomial of degree ``2n - 1``. Each ``z_k`` solves ``F(z_k) = u F(b)``
for a uniform ``u``: a bracket from the CDF on a fixed grid (one matrix
product), then Newton's method safeguarded by bisection, to a few ulps; the
solver evaluates the CDF in Chebyshev polynomials, whose table at all degrees
costs two kernels (see :class:`ConditionalCDFOperators`).
Everything is vectorised over samples; the only loops are over coordinates and
solver iterations. Because the map from uniforms to samples is deterministic
and monotone in every ``u_k``, this is the inverse Rosenblatt transport of the
train (Cui and Dolgov, FoCM 22, 2022, section 3).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from sktt_flow.tt.algebra import advance_running_product, basis_core_matrices
from sktt_flow.tt.basis import (
    gauss_legendre,
    legendre_polynomials,
    orthonormal_legendre_scale,
    scaled_legendre_polynomials,
)

__all__ = [
    "ConditionalCDFOperators",
    "chebyshev_polynomials",
    "conditional_cdf_operators",
    "sample_right_orthogonal",
]


class ConditionalCDFOperators:
    """Fixed matrices that turn nodal values of a conditional into its CDF.

    Everything lives on the reference interval ``[-1, 1]``: the scaling of the
    basis to ``[a, b]`` only multiplies the conditional density by a constant,
    which the normalisation by ``F(1)`` removes.

    The conditional is built in Legendre polynomials, where the Gauss rule
    and the antiderivative are exact and simple; the solver evaluates it in
    Chebyshev polynomials, the same polynomial (the change of basis is well
    conditioned, done once here), because ``T_j(t) = cos(j arccos t)`` gives
    the whole table in two kernels, where a recurrence needs two per degree.

    Attributes
    ----------
    node_basis : tensor (2n - 1, n)
        ``sqrt(2j + 1) P_j`` at the ``2n - 1`` Gauss–Legendre nodes.
    density_coefficients : tensor (2n - 1, 2n - 1)
        Maps the nodal values of the density (a column per sample) to its
        Chebyshev coefficients.
    cdf_coefficients : tensor (2n, 2n - 1)
        Maps the nodal values of the density to the Chebyshev coefficients of
        ``F(t) = int_{-1}^t q``.
    grid : tensor (grid_size + 1,)
        Bracketing grid on ``[-1, 1]``.
    grid_basis : tensor (grid_size + 1, 2n)
        ``T_j`` on the grid, for the CDF on the grid in one product.
    series_coefficients : tensor (4n, 2n - 1)
        ``cdf_coefficients`` above ``density_coefficients`` padded to ``2n``
        rows: both series from the nodal values in one product.
    """

    def __init__(self, n: int, *, grid_size: int = 64, dtype=torch.float64, device=None):
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
        density_chebyshev = _legendre_to_chebyshev(n_nodes) @ density
        cdf_chebyshev = _legendre_to_chebyshev(2 * n) @ antiderivative @ density
        grid = torch.linspace(-1.0, 1.0, grid_size + 1, dtype=torch.float64)
        self.density_coefficients = density_chebyshev.to(dtype=dtype, device=device)
        self.cdf_coefficients = cdf_chebyshev.to(dtype=dtype, device=device)
        self.node_basis = self.node_basis.to(dtype=dtype, device=device)
        self.grid = grid.to(dtype=dtype, device=device)
        self.grid_basis = chebyshev_polynomials(grid, 2 * n).T.to(dtype=dtype, device=device)
        # Both series in one operator (the density's padded with a zero
        # coefficient): one GEMM gives both, and the solver evaluates both with
        # one product and one sum per iteration.
        self.series_coefficients = torch.cat(
            [self.cdf_coefficients, F.pad(self.density_coefficients, (0, 0, 0, 1))]
        )


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


#: On a CPU, below this many points :func:`chebyshev_polynomials` uses the
#: cosine formula (two kernels, launch-bound sizes); above, the recurrence,
#: whose kernels cost less per element (measured at 2n = 32: the cosine is 6
#: times faster at 256 points, 1.3 times slower at 10,000). On a GPU, where
#: a cosine costs little and every kernel launch counts, always the cosine.
COSINE_MAX_POINTS = 4096


def chebyshev_polynomials(t: torch.Tensor, m: int) -> torch.Tensor:
    """Chebyshev polynomials ``T_0, ..., T_{m-1}`` at ``t`` (N,) in [-1, 1], shape (m, N).

    Both ways of computing them are accurate to a few ulps on [-1, 1]; not
    differentiable.
    """
    degrees = torch.arange(m, dtype=t.dtype, device=t.device).unsqueeze(1)
    if t.device.type != "cpu" or t.shape[0] <= COSINE_MAX_POINTS:
        return torch.cos(degrees * torch.arccos(t.clamp(-1.0, 1.0)))
    table = t.new_empty(m, t.shape[0])
    table[0].fill_(1.0)
    if m > 1:
        table[1].copy_(t)
    twice = 2.0 * t
    for j in range(1, m - 1):
        torch.mul(twice, table[j], out=table[j + 1])
        table[j + 1].sub_(table[j - 1])
    return table


def _invert_cdf(
    series: torch.Tensor,
    uniforms: torch.Tensor,
    operators: ConditionalCDFOperators,
    max_iter: int = 60,
) -> torch.Tensor:
    """Solve ``F_i(t_i) = u_i F_i(1)`` on ``[-1, 1]`` for every sample ``i``.

    ``series`` (2, 2n, N) holds the Chebyshev coefficients of the CDF and of
    the density (padded), one column per sample.
    """
    n_terms = series.shape[1]
    cdf_on_grid = operators.grid_basis @ series[0]  # (G + 1, N)
    total = cdf_on_grid[-1]
    target = uniforms * total
    # F is non-decreasing: the number of interior grid values <= target is the
    # index of the bracketing interval (round-off can only shift it by one,
    # which the bisection safeguard below absorbs).
    index = (cdf_on_grid[1:-1] <= target).sum(dim=0)
    low = operators.grid[index]
    high = operators.grid[index + 1]
    f_low = cdf_on_grid.gather(0, index.unsqueeze(0)).squeeze(0)
    f_high = cdf_on_grid.gather(0, index.unsqueeze(0) + 1).squeeze(0)
    gap = f_high - f_low
    fraction = torch.where(gap > 0, (target - f_low) / gap, torch.full_like(gap, 0.5))
    t = low + fraction.clamp(0.0, 1.0) * (high - low)
    eps = torch.finfo(t.dtype).eps
    tolerance = 8 * eps * total.abs()
    # Most samples converge in 3 or 4 iterations and a few take twice as many:
    # once at most half of the working set is left, the rest is gathered into
    # a smaller one (``rows`` maps it to the samples), so that the stragglers
    # do not cost full-size iterations. At the few hundred samples of a
    # variational step every kernel launch counts, hence the fused forms.
    solution = None  # every sample's t, once the working set has shrunk
    rows = None
    for iteration in range(max_iter):
        polynomials = chebyshev_polynomials(t, n_terms)  # (2n, N)
        values = (polynomials * series).sum(1)  # F(t) and q(t), (2, N)
        residual = values[0] - target
        below = residual < 0
        low = torch.where(below, t, low)
        high = torch.where(below, high, t)
        newton = t - residual / values[1]
        # Newton's step where it stays in the bracket (NaN and inf do not
        # survive the comparison with their clamped value), else bisection.
        accept = newton.clamp(low, high) == newton
        previous, t = t, torch.where(accept, newton, (low + high) * 0.5)
        # Checked every other iteration: each check synchronises the device.
        if iteration % 2 == 1:
            converged = (
                (residual.abs() <= tolerance)
                | ((t - previous).abs() <= 4 * eps)
                | (high - low <= 4 * eps)
            )
            active = torch.nonzero(~converged).squeeze(1)
            if active.numel() == 0:
                break
            if 2 * active.numel() <= t.numel():
                if rows is None:
                    solution, rows = t.clone(), active
                else:
                    solution[rows] = t
                    rows = rows[active]
                t, low, high, target, tolerance = (
                    x[active] for x in (t, low, high, target, tolerance)
                )
                series = series[:, :, active]
    if rows is not None:
        solution[rows] = t
        t = solution
    return t.clamp(-1.0, 1.0)


def sample_right_orthogonal(
    cores: Sequence[torch.Tensor],
    low: torch.Tensor,
    high: torch.Tensor,
    uniforms: torch.Tensor,
    operators: ConditionalCDFOperators | None = None,
) -> torch.Tensor:
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

    Returns
    -------
    tensor (N, d)

    Notes
    -----
    The work runs with the samples along the last axis (the prefix is
    ``(r_k, N)``), so that every elementwise kernel is a contiguous sweep and
    every contraction one GEMM, as in
    :meth:`~sktt_flow.tt.distribution.TTDistribution.log_abs_tt`.
    """
    n = cores[0].shape[1]
    if operators is None:
        operators = conditional_cdf_operators(n, uniforms.dtype, uniforms.device)
    n_samples = uniforms.shape[0]
    basis_scale = orthonormal_legendre_scale(low, high, n, scaled_table=True)
    core_matrices = basis_core_matrices(list(cores), basis_scale)
    prefix = None
    samples = torch.empty_like(uniforms)
    tiny = torch.finfo(uniforms.dtype).tiny
    for k, core in enumerate(cores):
        r_left = core.shape[0]
        # The conditional density at the 2n - 1 nodes is the quadratic form
        # sum_b (prefix . G(node)[:, b])^2 = prefix^T H(node) prefix, with
        # H(node) = G(node) G(node)^T built once per coordinate: one GEMM on
        # the prefix's outer products (r_{k-1}^2 rows), a sixth of the memory
        # traffic of squaring the (2n - 1) r_k rows of prefix . G(node).
        nodal_core = torch.einsum("qi,aib->qab", operators.node_basis, core)
        gram = (nodal_core @ nodal_core.transpose(1, 2)).reshape(-1, r_left * r_left)
        if prefix is None:
            nodal_density = gram.expand(-1, n_samples)  # (2n - 1, N)
        else:
            outer = (prefix[:, None, :] * prefix[None, :, :]).reshape(r_left * r_left, -1)
            nodal_density = gram @ outer
        series = (operators.series_coefficients @ nodal_density).view(2, 2 * n, -1)
        t = _invert_cdf(series, uniforms[:, k], operators)
        samples[:, k] = low[k] + (t + 1.0) * (high[k] - low[k]) / 2.0
        table = scaled_legendre_polynomials(t, n, dim=0)  # (n, N)
        prefix = advance_running_product(prefix, core_matrices[k], table)
        # Rescale so that long trains neither underflow nor overflow. Any scale
        # will do: the largest entry is 30 times cheaper than the 2-norm.
        prefix = prefix * prefix.abs().amax(dim=0).clamp_min(tiny).reciprocal()
    return samples
