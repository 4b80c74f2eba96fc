"""The defensive component that gives the TT base full support.

A squared tensor train lives on a box; data, and points pushed by a flow, can
leave it. :class:`~sktt_flow.tt.distribution.TTDistribution` therefore uses the
defensive mixture (Hesterberg, "Weighted average importance sampling and
defensive mixture distributions", Technometrics 37, 1995)

.. math::

    q_0(z) = (1 - \\varepsilon)\\, p_{TT}(z) + \\varepsilon\\, g(z),

where ``g`` is a product of Gaussians centred on the box with standard
deviations equal to its half-widths, and :math:`\\varepsilon` is
``tail_weight``.

Why Gaussian tails. In variational inference the base is judged by the reverse
KL divergence, to which the component contributes about
:math:`\\varepsilon\\, E_g[\\log g - \\log h]`. For a target with light tails
(the quartic Ginzburg–Landau potential, say) that expectation is infinite for a
Cauchy ``g`` and finite for a Gaussian one, so only a light-tailed component
keeps the ELBO usable; a small :math:`\\varepsilon` then makes the cost
negligible. Density, CDF, inverse CDF and marginals stay closed forms.

Finite everywhere. The exponent ``-u^2 / 2`` would overflow to ``-inf`` for
``|u|`` beyond about ``1e19`` in float32 (``1e154`` in float64); it is capped
at ``finfo.max / (4 d)`` per coordinate, so ``log q_0`` is finite for every
finite input. The cap changes the density only where it is below
``exp(-1e37)``, which no floating-point number can tell from zero.
"""

from __future__ import annotations

import math

import torch

__all__ = ["gaussian_cdf", "gaussian_icdf", "gaussian_log_prob"]


def gaussian_log_prob(
    z: torch.Tensor, center: torch.Tensor, scale: torch.Tensor, *, dim: int = -1
) -> torch.Tensor:
    """Log-density of independent Gaussian coordinates, summed over ``dim``.

    ``center`` and ``scale`` broadcast against ``z``: shape (d,) for points
    along the rows, (d, 1) for points along the last axis with ``dim=0``.
    """
    u = (z - center) / scale
    cap = torch.finfo(z.dtype).max / (2 * z.shape[dim])
    # One pass per operation over the points; the constants are added to the sums.
    quadratic = u.square().clamp_max(cap).sum(dim)
    constant = torch.log(scale).sum() + 0.5 * z.shape[dim] * math.log(2 * math.pi)
    return -0.5 * quadratic - constant


def gaussian_cdf(z: torch.Tensor, center: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Coordinate-wise Gaussian CDF (same shape as ``z``)."""
    return torch.special.ndtr((z - center) / scale)


def gaussian_icdf(u: torch.Tensor, center: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Coordinate-wise inverse CDF for ``u`` in the open interval (0, 1)."""
    return center + scale * torch.special.ndtri(u)
