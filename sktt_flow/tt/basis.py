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

import numpy as np
import torch

__all__ = [
    "coefficient_to_nodal_matrix",
    "gauss_legendre",
    "legendre_polynomials",
    "legendre_polynomials_and_derivatives",
    "nodal_to_coefficient_matrix",
    "orthonormal_legendre",
    "orthonormal_legendre_derivatives",
]


def legendre_polynomials(t: torch.Tensor, n: int) -> torch.Tensor:
    """Legendre polynomials ``P_0, ..., P_{n-1}`` at ``t`` (any shape), stacked last.

    Uses the three-term recurrence, which is stable on ``[-1, 1]``. Outside that
    interval the values grow like ``|t|^i``; callers clamp first.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}.")
    values = [torch.ones_like(t)]
    if n > 1:
        values.append(t)
    for i in range(1, n - 1):
        # P_{i+1} = ((2i + 1) t P_i - i P_{i-1}) / (i + 1), in two fused kernels
        values.append(
            torch.addcmul(
                values[i - 1] * (-i / (i + 1)), t, values[i], value=(2 * i + 1) / (i + 1)
            )
        )
    return torch.stack(values, dim=-1)


def legendre_polynomials_and_derivatives(
    t: torch.Tensor, n: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Values and first derivatives of ``P_0, ..., P_{n-1}`` at ``t``, stacked last.

    The derivatives follow ``P'_{i+1} = P'_{i-1} + (2i + 1) P_i``.
    """
    values = legendre_polynomials(t, n)
    derivatives = [torch.zeros_like(t)]
    if n > 1:
        derivatives.append(torch.ones_like(t))
    for i in range(1, n - 1):
        derivatives.append(derivatives[i - 1] + (2 * i + 1) * values[..., i])
    return values, torch.stack(derivatives, dim=-1)


def _to_reference(
    x: torch.Tensor, low: torch.Tensor, high: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    width = high - low
    return (2.0 * x - low - high) / width, width


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
    t, width = _to_reference(x, low, high)
    scale = torch.sqrt(
        (2.0 * torch.arange(n, dtype=x.dtype, device=x.device) + 1.0) / width.unsqueeze(-1)
    )
    return legendre_polynomials(t, n) * scale


def orthonormal_legendre_derivatives(
    x: torch.Tensor, low: torch.Tensor, high: torch.Tensor, n: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Values and ``x``-derivatives of the orthonormal functions, each (N, d, n)."""
    t, width = _to_reference(x, low, high)
    scale = torch.sqrt(
        (2.0 * torch.arange(n, dtype=x.dtype, device=x.device) + 1.0) / width.unsqueeze(-1)
    )
    values, derivatives = legendre_polynomials_and_derivatives(t, n)
    return values * scale, derivatives * scale * (2.0 / width).unsqueeze(-1)


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
