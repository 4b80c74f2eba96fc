"""Orthonormal Legendre polynomials on an interval.

The tensor-train densities of this package expand every coordinate in the
Legendre polynomials :math:`P_0, \\dots, P_{n-1}`, rescaled so that they are
orthonormal on the interval :math:`[a, b]` of that coordinate:

.. math::

    \\phi_i(x) = \\sqrt{\\frac{2 i + 1}{b - a}}\\, P_i\\!\\left(\\frac{2x - a - b}{b - a}\\right),
    \\qquad \\int_a^b \\phi_i \\phi_j \\, dx = \\delta_{ij}.

Orthonormality is what makes the normaliser of a squared tensor train a single
contraction of its cores, with no quadrature (Khoo, Lindsey and Zhao, 2023).

All functions work on batches and on any device; the intervals are given per
coordinate as tensors ``low`` and ``high`` of shape ``(d,)``.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.autograd.function import once_differentiable

__all__ = [
    "coefficient_to_nodal_matrix",
    "gauss_legendre",
    "legendre_polynomials",
    "legendre_polynomials_and_derivatives",
    "nodal_to_coefficient_matrix",
    "orthonormal_legendre",
    "orthonormal_legendre_derivatives",
    "orthonormal_legendre_scale",
    "scaled_legendre_polynomials",
    "scaled_legendre_polynomials_into",
    "to_reference_interval",
]


@functools.lru_cache(maxsize=64)
def _recurrence_constants(n: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(gamma, beta)``: ``Q_i = gamma_i P_i`` obeys ``Q_{i+1} = beta_i t Q_i + Q_{i-1}``.

    From ``(i + 1) P_{i+1} = (2i + 1) t P_i - i P_{i-1}``, the scaling
    ``gamma_{i+1} = -gamma_{i-1} (i + 1) / i`` turns the coefficient of
    ``Q_{i-1}`` into one, so that each degree is a single fused multiply-add
    kernel. ``|gamma_i|`` grows like ``sqrt(i)``: no loss of range.
    """
    gamma = [1.0] * n
    beta = [0.0] * n
    for i in range(1, n - 1):
        gamma[i + 1] = -gamma[i - 1] * (i + 1) / i
        beta[i] = gamma[i + 1] * (2 * i + 1) / ((i + 1) * gamma[i])
    return tuple(gamma), tuple(beta)


@functools.lru_cache(maxsize=64)
def _recurrence_scaling(n: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``gamma`` of :func:`_recurrence_constants` as a tensor, built once per
    dtype and device: a host list copied to a GPU at every ``log_prob`` call
    would synchronise the device. Shared: treat it as read-only. Built
    outside inference mode, so that autograd may save it for backward."""
    gamma, _ = _recurrence_constants(n)
    with torch.inference_mode(False):
        return torch.tensor(gamma, dtype=dtype, device=device)


class _ScaledLegendreTable(torch.autograd.Function):
    """The scaled recurrence written into one preallocated table.

    Filling a preallocated table avoids the ``n`` temporaries and the final
    copy of stacking them, and the scaling of :func:`_recurrence_constants`
    makes each degree one kernel instead of two: on a CPU the table is a
    fifth of the cost of a tensor-train log-density. In-place writes are not
    differentiable by autograd, so the backward pass is written out: the
    derivative of ``sum_i g_i Q_i(t)`` is ``sum_i g_i gamma_i P'_i(t)``, with
    ``P'_i`` from its own recurrence. It is differentiable once (no Hessians).
    """

    @staticmethod
    def forward(ctx, t: torch.Tensor, n: int, dim: int) -> torch.Tensor:
        shape = list(t.shape)
        shape.insert(dim, n)
        table = t.new_empty(shape)
        _fill_scaled_rows(table.unbind(dim), t)
        ctx.dim = dim
        ctx.save_for_backward(table)
        return table

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        (table,) = ctx.saved_tensors
        gamma, _ = _recurrence_constants(table.shape[ctx.dim])
        grads = grad.unbind(ctx.dim)
        grad_t = torch.zeros_like(grads[0])
        for i, derivative in enumerate(_derivative_rows(table.unbind(ctx.dim), gamma)):
            if i > 0:
                grad_t.addcmul_(grads[i], derivative, value=gamma[i])
        return grad_t, None, None


def _fill_scaled_rows(rows: Sequence[torch.Tensor], t: torch.Tensor) -> None:
    """Write ``gamma_i P_i(t)`` into ``rows[i]``: one kernel per degree."""
    n = len(rows)
    rows[0].fill_(1.0)
    if n > 1:
        rows[1].copy_(t)
    _, beta = _recurrence_constants(n)
    for i in range(1, n - 1):
        torch.addcmul(rows[i - 1], t, rows[i], value=beta[i], out=rows[i + 1])


def _derivative_rows(
    rows: Sequence[torch.Tensor], gamma: Sequence[float] | None = None
) -> Iterator[torch.Tensor]:
    """``P'_0, ..., P'_{n-1}`` from the rows ``gamma_i P_i`` (``gamma = 1`` by default).

    ``P'_{i+1} = P'_{i-1} + (2i + 1) P_i``.
    """
    previous, current = torch.zeros_like(rows[0]), torch.ones_like(rows[0])
    yield previous
    for i in range(1, len(rows)):
        yield current
        if i + 1 < len(rows):
            scale = 2 * i + 1 if gamma is None else (2 * i + 1) / gamma[i]
            previous, current = current, torch.add(previous, rows[i], alpha=scale)


def _table_axis(t: torch.Tensor, n: int, dim: int) -> int:
    """The position of the new axis of a table of ``n`` polynomials, checked."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}.")
    if dim < 0:
        dim += t.ndim + 1
    if not 0 <= dim <= t.ndim:
        raise ValueError(f"dim must be in [{-t.ndim - 1}, {t.ndim}], got {dim}.")
    return dim


def scaled_legendre_polynomials(t: torch.Tensor, n: int, *, dim: int = -1) -> torch.Tensor:
    """Legendre polynomials up to a constant per degree, the fast way.

    The table holds ``gamma_i P_i(t)`` along a new axis of length ``n``
    inserted at position ``dim``; each degree costs one kernel instead of two.
    For callers that contract the table with coefficients: dividing the
    coefficients by ``gamma`` once (``orthonormal_legendre_scale(...,
    scaled_table=True)``) is cheaper than a pass over the table. Stable on
    ``[-1, 1]``, like the three-term recurrence it rescales; callers clamp
    first. Differentiable once in ``t``.
    """
    return _ScaledLegendreTable.apply(t, n, _table_axis(t, n, dim))


def scaled_legendre_polynomials_into(t: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """:func:`scaled_legendre_polynomials` of a vector ``t`` (N,), written into
    ``out`` (n, N) and returned; not differentiable.

    For loops that build a table of the same size again and again, as the
    exact sampler does at every coordinate: a fresh table of more than 32 MB
    (``n_basis`` 256 at 32,768 points in float32) is a fresh memory mapping
    whose first writes fault in every page, which took 17 ms against 3.9 ms
    for refilling one table on a CPU.
    """
    if torch.is_grad_enabled() and t.requires_grad:
        raise ValueError("scaled_legendre_polynomials_into does not record gradients.")
    _fill_scaled_rows(out.unbind(0), t)
    return out


def legendre_polynomials(t: torch.Tensor, n: int, *, dim: int = -1) -> torch.Tensor:
    """Legendre polynomials ``P_0, ..., P_{n-1}`` at ``t`` (any shape).

    The new axis of length ``n`` is inserted at position ``dim`` of the result
    (by default last). Uses the three-term recurrence, which is stable on
    ``[-1, 1]``. Outside that interval the values grow like ``|t|^i``; callers
    clamp first. Differentiable once in ``t``.
    """
    axis = _table_axis(t, n, dim)
    table = scaled_legendre_polynomials(t, n, dim=axis)
    gamma = _recurrence_scaling(n, t.dtype, t.device)
    return table / gamma.view([n] + [1] * (table.ndim - 1 - axis))


def legendre_polynomials_and_derivatives(
    t: torch.Tensor, n: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Values and first derivatives of ``P_0, ..., P_{n-1}`` at ``t``, stacked last."""
    values = legendre_polynomials(t, n)
    derivatives = list(_derivative_rows(values.unbind(-1)))
    return values, torch.stack(derivatives, dim=-1)


def to_reference_interval(x: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Affine map of ``[low, high]`` (per column of ``x``) onto ``[-1, 1]``."""
    return (2.0 * x - low - high) / (high - low)


def orthonormal_legendre_scale(
    low: torch.Tensor, high: torch.Tensor, n: int, *, scaled_table: bool = False
) -> torch.Tensor:
    """``sqrt((2i + 1) / (high - low))``, shape (d, n): ``phi_i = scale_i P_i(t)``.

    With ``scaled_table=True``, divided by the constants of
    :func:`scaled_legendre_polynomials`, so that ``phi_i = scale_i Q_i(t)`` for
    its table ``Q``.
    """
    degrees = torch.arange(n, dtype=low.dtype, device=low.device)
    scale = torch.sqrt((2.0 * degrees + 1.0) / (high - low).unsqueeze(-1))
    if scaled_table:
        scale = scale / _recurrence_scaling(n, low.dtype, low.device)
    return scale


def orthonormal_legendre(
    x: torch.Tensor, low: torch.Tensor, high: torch.Tensor, n: int
) -> torch.Tensor:
    """Orthonormal Legendre functions ``phi_0, ..., phi_{n-1}`` on ``[low, high]``.

    Parameters
    ----------
    x : tensor of shape (N, d)
        Points; column ``k`` lives on ``[low[k], high[k]]``. Points outside the
        interval are evaluated on the polynomial continuation, which grows fast:
        clamp them first when that matters.
    low, high : tensors of shape (d,)
        Interval of each column.
    n : int
        Number of basis functions (polynomial degree ``n - 1``).

    Returns
    -------
    tensor of shape (N, d, n)
    """
    t = to_reference_interval(x, low, high)
    return legendre_polynomials(t, n) * orthonormal_legendre_scale(low, high, n)


def orthonormal_legendre_derivatives(
    x: torch.Tensor, low: torch.Tensor, high: torch.Tensor, n: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Values and ``x``-derivatives of the orthonormal functions, each (N, d, n)."""
    t = to_reference_interval(x, low, high)
    scale = orthonormal_legendre_scale(low, high, n)
    values, derivatives = legendre_polynomials_and_derivatives(t, n)
    return values * scale, derivatives * scale * (2.0 / (high - low)).unsqueeze(-1)


def gauss_legendre(
    n: int,
    low: float | torch.Tensor = -1.0,
    high: float | torch.Tensor = 1.0,
    *,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gauss–Legendre nodes and weights with ``n`` points on ``[low, high]``.

    Exact for polynomials of degree up to ``2n - 1``. With tensors ``low`` and
    ``high`` of shape (d,) the result has shape (d, n): one rule per interval.
    The rule is computed in float64 by numpy and then cast.
    """
    nodes, weights = np.polynomial.legendre.leggauss(n)
    nodes = torch.as_tensor(nodes, dtype=torch.float64, device=device)
    weights = torch.as_tensor(weights, dtype=torch.float64, device=device)
    low = torch.as_tensor(low, dtype=torch.float64, device=device)
    high = torch.as_tensor(high, dtype=torch.float64, device=device)
    half_width = ((high - low) / 2.0).unsqueeze(-1)
    nodes = low.unsqueeze(-1) + half_width * (nodes + 1.0)
    weights = half_width * weights
    return nodes.to(dtype), weights.to(dtype)


def coefficient_to_nodal_matrix(n: int, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Matrix ``V`` (d, n, n) with ``V[k, q, i] = phi_i(node_q)`` on interval ``k``.

    ``V @ c`` maps Legendre coefficients ``c`` of a polynomial of degree < n to
    its values at the ``n`` Gauss–Legendre nodes of the interval.
    """
    nodes, _ = gauss_legendre(n, low, high, dtype=low.dtype, device=low.device)
    return orthonormal_legendre(nodes.T, low, high, n).permute(1, 0, 2)


def nodal_to_coefficient_matrix(n: int, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`coefficient_to_nodal_matrix`, shape (d, n, n).

    ``W @ f`` maps values at the ``n`` Gauss–Legendre nodes to the Legendre
    coefficients of the interpolating polynomial of degree ``n - 1``. It is
    exact: ``c_i = sum_q w_q phi_i(x_q) f(x_q)`` integrates a polynomial of
    degree at most ``2n - 2`` with an ``n``-point Gauss rule.
    """
    _, weights = gauss_legendre(n, low, high, dtype=low.dtype, device=low.device)
    values = coefficient_to_nodal_matrix(n, low, high)
    return values.transpose(1, 2) * weights.reshape(-1, 1, n)
