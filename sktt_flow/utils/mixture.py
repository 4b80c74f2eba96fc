"""The log-density of a two-component mixture, with a gradient free of subnormal numbers.

Every mixture in the package goes through :func:`log_mixture`: the TT base's
Gaussian tail component (:class:`~sktt_flow.tt.distribution.TTDistribution`),
and a model's defensive component and companion
(:func:`~sktt_flow.flows.defensive_mixture_log_prob`).

Why the gradient needs care. The gradient of ``logaddexp(a, b)`` with respect
to ``a`` is the share of the first component at the point, which torch
computes as ``1 / (1 + exp(b - a))``: zero where ``exp`` overflows, but a
subnormal number where the share lies just below the smallest normal number
(between about ``3e-39`` and ``1.2e-38`` in float32), and then so is much of
what the backward pass computes from it, through the whole model below the
mixture, at a hundred times the cost on x86 CPUs
(:mod:`sktt_flow.utils.subnormal`). Such shares are set to zero, as torch
does for a share a few times smaller: the component's contribution to the
gradient at those points, which float32 carries with a few bits at most, is
dropped.
"""

from __future__ import annotations

import math

import torch

from sktt_flow.utils.subnormal import without_subnormal_gradient

__all__ = ["log_mixture"]


def log_mixture(log_first: torch.Tensor, log_second: torch.Tensor, weight: float) -> torch.Tensor:
    """``log((1 - weight) exp(log_first) + weight exp(log_second))``, elementwise.

    Parameters
    ----------
    log_first, log_second : tensors of the same shape
        The log-densities of the two components.
    weight : float
        The second component's weight, in (0, 1).

    Returns
    -------
    tensor
        The mixture's log-density. Its gradient is that of
        :func:`torch.logaddexp` with the subnormal entries of each
        component's share set to zero
        (:func:`~sktt_flow.utils.subnormal.without_subnormal_gradient`).
    """
    return torch.logaddexp(
        without_subnormal_gradient(log_first) + math.log1p(-weight),
        without_subnormal_gradient(log_second) + math.log(weight),
    )
