"""The heavy-tailed defensive component that gives the TT base full support.

A squared tensor train lives on a box; data, and points pushed by a flow, can
leave it. :class:`~sktt_flow.tt.distribution.TTDistribution` therefore uses the
defensive mixture (Hesterberg, "Weighted average importance sampling and
defensive mixture distributions", Technometrics 37, 1995)

.. math::

    q_0(z) = (1 - \\varepsilon)\\, p_{TT}(z) + \\varepsilon\\, g(z),

where ``g`` is a product of Cauchy densities centred on the box with scale
equal to its half-widths. Cauchy rather than Gaussian tails, because

- ``log g`` decays only logarithmically, so ``log q_0`` is finite for every
  finite input, in float32 as well (a Gaussian's ``-z^2/2`` overflows to
  ``-inf`` beyond about ``1e19``), and a point far outside the box costs a
  bounded number of nats rather than a catastrophe;
- a defensive component with heavier tails than the target keeps importance
  weights bounded (Owen and Zhou, JASA 95, 2000);
- its density, CDF, inverse CDF and marginals are all closed forms.

The functions below take ``center`` and ``scale`` of shape (d,).
"""

from __future__ import annotations

import math

import torch

__all__ = ["cauchy_cdf", "cauchy_icdf", "cauchy_log_prob"]


def cauchy_log_prob(z: torch.Tensor, center: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Log-density of independent Cauchy coordinates, summed over the last axis.

    ``log(1 + u^2)`` is evaluated as ``2 log hypot(1, u)``, which cannot
    overflow for any finite ``u``.
    """
    u = (z - center) / scale
    per_coordinate = (
        -math.log(math.pi) - torch.log(scale) - 2.0 * torch.log(torch.hypot(torch.ones_like(u), u))
    )
    return per_coordinate.sum(-1)


def cauchy_cdf(z: torch.Tensor, center: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Coordinate-wise Cauchy CDF (same shape as ``z``)."""
    return 0.5 + torch.atan((z - center) / scale) / math.pi


def cauchy_icdf(u: torch.Tensor, center: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Coordinate-wise inverse CDF for ``u`` in the open interval (0, 1)."""
    return center + scale * torch.tan(math.pi * (u - 0.5))
