"""Weights of two-component mixtures of models: by maximum likelihood on
held-out rows (data mode), or by the ELBO on exact draws (variational
inference)."""

from __future__ import annotations

import math

import torch

from sktt_flow.flows.model import defensive_mixture_log_prob

__all__ = [
    "best_mixture_score",
    "fit_defensive_weight",
    "fit_mixture",
    "fit_variational_mixture_weight",
]

#: Bisection steps: the bracket shrinks by 2**-60, below float64 resolution.
_BISECTION_STEPS = 60

#: Golden-section steps of :func:`fit_variational_mixture_weight`: the bracket
#: shrinks by 0.618**80, about 2e-17.
_GOLDEN_SECTION_STEPS = 80


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


def _elbo_terms(weight: float, first: tuple, second: tuple) -> list[torch.Tensor]:
    """``log h - log q_weight`` at the draws of each model, ``q_weight = (1 -
    weight) q_first + weight q_second`` (see :func:`fit_variational_mixture_weight`)."""
    if weight <= 0.0:
        return [log_target - log_first for log_target, log_first, _ in (first, second)]
    if weight >= 1.0:
        return [log_target - log_second for log_target, _, log_second in (first, second)]
    return [
        log_target - defensive_mixture_log_prob(log_first, log_second, weight)
        for log_target, log_first, log_second in (first, second)
    ]


def _mixture_elbo(weight: float, first: tuple, second: tuple) -> float:
    """The ELBO estimate of ``(1 - weight) q_first + weight q_second`` on the
    draws of each model: ``(1 - weight)`` times the mean over the first's
    draws plus ``weight`` times the mean over the second's."""
    terms = _elbo_terms(weight, first, second)
    means = [float(terms[0].mean()) if weight < 1.0 else 0.0]
    means.append(float(terms[1].mean()) if weight > 0.0 else 0.0)
    return (1.0 - weight) * means[0] + weight * means[1]


def _paired_standard_error(weight: float, end: float, first: tuple, second: tuple) -> float:
    """The standard error of ``ELBO(weight) - ELBO(end)`` (``end`` 0 or 1)
    estimated on the same draws: the difference is a mean over each model's
    draws of ``w_k g_weight - e_k g_end`` (``w = (1 - weight, weight)``, ``e``
    likewise, ``g = log h - log q``), whose variances add."""
    at_weight, at_end = _elbo_terms(weight, first, second), _elbo_terms(end, first, second)
    variance = 0.0
    for k, (share, end_share) in enumerate(((1.0 - weight, 1.0 - end), (weight, end))):
        values = share * at_weight[k]
        if end_share > 0.0:
            values = values - end_share * at_end[k]
        variance += float(values.var()) / values.numel() if values.numel() > 1 else math.inf
    return math.sqrt(variance) if math.isfinite(variance) else math.inf


def fit_variational_mixture_weight(
    first: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    second: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    *,
    ends_only: bool = False,
    standard_errors: float = 0.0,
) -> tuple[float, float]:
    r"""The weight ``a`` in ``[0, 1]`` of ``q_a = (1 - a) q_1 + a q_2`` that
    maximises the ELBO ``E_{q_a}[log h - log q_a]``, and that ELBO.

    Each expectation under ``q_a`` splits into ``(1 - a)`` times one under
    ``q_1`` and ``a`` times one under ``q_2``, so one set of exact draws of
    each model estimates the ELBO at every weight without bias (common random
    numbers across weights). The ELBO is concave in ``a`` (the reverse KL is
    convex in ``q``, and ``q_a`` is linear in ``a``); its estimate is
    maximised by golden-section search, and the better end point (one model
    alone) is returned unless the mixture beats it by ``standard_errors``
    standard errors of the difference on the same draws: where both models
    are near exact, the estimate is flat to Monte Carlo noise and its
    maximiser says nothing.

    Parameters
    ----------
    first, second : tuple of three torch.Tensor of shape (n,)
        For the draws of ``q_1`` (``first``) and of ``q_2`` (``second``):
        ``log h``, ``log q_1`` and ``log q_2`` at each draw, in that order.
        Rows where ``log h`` is ``-inf`` (outside the target's support) are
        kept: they make a weight that puts mass there score ``-inf``.
    ends_only : bool, default=False
        Compare the two models alone (weights 0 and 1) and no mixture.
    standard_errors : float, default=0.0
        How many paired standard errors an interior weight must gain over
        the better model alone to be returned.

    Returns
    -------
    weight : float
    elbo : float
        The estimate at ``weight``.

    Raises
    ------
    ValueError
        For tensors of different shapes, an empty set of draws, a NaN, or a
        model whose log-density is ``-inf`` at one of its own draws.
    """
    checked = []
    for name, triple in (("first", first), ("second", second)):
        if len(triple) != 3:
            raise ValueError(f"{name} must hold (log h, log q_1, log q_2), got {len(triple)}.")
        triple = tuple(torch.as_tensor(values).double() for values in triple)
        shape = triple[0].shape
        if len(shape) != 1 or shape[0] == 0 or any(t.shape != shape for t in triple):
            raise ValueError(
                f"{name}: the three tensors must be 1-D, non-empty and of the same shape, "
                f"got {[tuple(t.shape) for t in triple]}."
            )
        if any(bool(torch.isnan(t).any()) for t in triple):
            raise ValueError(f"{name}: log-densities must not be NaN.")
        checked.append(triple)
    first, second = checked
    if bool(torch.isneginf(first[1]).any()) or bool(torch.isneginf(second[2]).any()):
        raise ValueError("a model's log-density is -inf at one of its own draws.")

    def elbo(weight: float) -> float:
        value = _mixture_elbo(weight, first, second)
        return value if not math.isnan(value) else -math.inf

    ends = [(elbo(0.0), 0.0), (elbo(1.0), 1.0)]
    # a tie goes to the first model (the TT's, in the estimator)
    best_end_value, best_end = ends[1] if ends[1][0] > ends[0][0] else ends[0]
    if ends_only:
        return best_end, best_end_value
    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    low, high = 0.0, 1.0
    left, right = high - ratio * (high - low), low + ratio * (high - low)
    left_value, right_value = elbo(left), elbo(right)
    for _ in range(_GOLDEN_SECTION_STEPS):
        if left_value >= right_value:
            high, right, right_value = right, left, left_value
            left = high - ratio * (high - low)
            left_value = elbo(left)
        else:
            low, left, left_value = left, right, right_value
            right = low + ratio * (high - low)
            right_value = elbo(right)
    middle = 0.5 * (low + high)
    value = elbo(middle)
    gain = value - best_end_value
    # below the round-off of the means, a gain is no gain (identical models)
    rounding = 1e-12 * (1.0 + abs(best_end_value))
    if gain > rounding and gain > standard_errors * _paired_standard_error(
        middle, best_end, first, second
    ):
        return middle, value
    return best_end, best_end_value
