"""The weight of the defensive component, by maximum likelihood on held-out rows."""

from __future__ import annotations

import torch

from sktt_flow.flows.model import defensive_mixture_log_prob

__all__ = ["best_mixture_score", "fit_defensive_weight", "fit_mixture"]

#: Bisection steps: the bracket shrinks by 2**-60, below float64 resolution.
_BISECTION_STEPS = 60


def _score_slope(log_ratio: torch.Tensor, weight: float) -> float:
    r"""Derivative in ``w`` of the mean held-out log-likelihood of the mixture,
    ``mean_i (rho_i - 1) / (1 - w + w rho_i)`` with ``rho_i = q_fixed / q_flow``
    at row ``i``, written so that no ``rho_i`` overflows: rows where ``rho_i >
    1`` are divided through by it."""
    small = torch.exp(-log_ratio.abs())  # rho or 1 / rho, whichever is <= 1
    above = (1.0 - small) / ((1.0 - weight) * small + weight)
    below = (small - 1.0) / (1.0 - weight + weight * small)
    return float(torch.where(log_ratio > 0, above, below).mean())


def fit_defensive_weight(
    log_flow: torch.Tensor,
    log_fixed: torch.Tensor,
    *,
    min_weight: float,
    max_weight: float,
) -> float:
    r"""The weight ``w`` in ``[min_weight, max_weight]`` that maximises the mean
    held-out log-likelihood of the mixture ``(1 - w) q_flow + w q_fixed``.

    The mean of :func:`~sktt_flow.flows.defensive_mixture_log_prob` is
    concave in ``w`` (a sum of logarithms of functions linear in ``w``), so
    its maximiser on the interval is an end point or the zero of its
    derivative, found by bisection.

    Parameters
    ----------
    log_flow, log_fixed : torch.Tensor of shape (n,)
        Log-densities of the two components at held-out rows (see
        :meth:`~sktt_flow.flows.TensorizingFlow.component_log_probs`). Rows
        where both are ``-inf`` say nothing about ``w`` and are left out.
    min_weight, max_weight : float
        The interval, ``0 < min_weight <= max_weight < 1``.

    Returns
    -------
    float
        The weight.

    Raises
    ------
    ValueError
        For an interval outside ``(0, 1)``, tensors of different shapes, or a
        NaN log-density.
    """
    if not 0.0 < min_weight <= max_weight < 1.0:
        raise ValueError(
            "need 0 < min_weight <= max_weight < 1, got "
            f"min_weight={min_weight!r}, max_weight={max_weight!r}."
        )
    if log_flow.shape != log_fixed.shape or log_flow.dim() != 1:
        raise ValueError(
            "log_flow and log_fixed must be 1-D of the same shape, got "
            f"{tuple(log_flow.shape)} and {tuple(log_fixed.shape)}."
        )
    log_flow, log_fixed = log_flow.double(), log_fixed.double()
    if bool(torch.isnan(log_flow).any() | torch.isnan(log_fixed).any()):
        raise ValueError("log_flow and log_fixed must not be NaN.")
    informative = torch.isfinite(log_flow) | torch.isfinite(log_fixed)
    log_ratio = (log_fixed - log_flow)[informative]
    if log_ratio.numel() == 0 or _score_slope(log_ratio, min_weight) <= 0.0:
        return float(min_weight)
    if _score_slope(log_ratio, max_weight) >= 0.0:
        return float(max_weight)
    low, high = float(min_weight), float(max_weight)
    for _ in range(_BISECTION_STEPS):
        middle = 0.5 * (low + high)
        if _score_slope(log_ratio, middle) > 0.0:
            low = middle
        else:
            high = middle
    return 0.5 * (low + high)


def fit_mixture(
    log_first: torch.Tensor,
    log_second: torch.Tensor,
    *,
    min_weight: float,
    max_weight: float,
) -> tuple[float, torch.Tensor]:
    """The weight ``a`` of ``(1 - a) p_first + a p_second`` fitted to held-out
    rows (:func:`fit_defensive_weight`) and the mixture's log-density of each
    row at that weight (float64).

    ``log_first`` and ``log_second`` are the two densities' logarithms at
    each held-out row.
    """
    log_first, log_second = log_first.double(), log_second.double()
    weight = fit_defensive_weight(
        log_first, log_second, min_weight=min_weight, max_weight=max_weight
    )
    return weight, defensive_mixture_log_prob(log_first, log_second, weight)


def best_mixture_score(
    log_first: torch.Tensor,
    log_second: torch.Tensor,
    *,
    min_weight: float,
    max_weight: float,
) -> float:
    """Mean held-out log-likelihood of ``(1 - a) p_first + a p_second`` at the
    weight ``a`` that :func:`fit_defensive_weight` fits to the same rows
    (:func:`fit_mixture`).

    As the score of a flow's training (``held_out_score`` of
    :func:`~sktt_flow.training.fit_forward_kl`), it judges the flow by what
    it adds to the mixture it will end in, with the weight it will get.
    """
    _, log_mixture = fit_mixture(
        log_first, log_second, min_weight=min_weight, max_weight=max_weight
    )
    return float(log_mixture.mean())
