"""Where the mass lies when the modes do not say: a short Langevin exploration.

The Laplace approximation at a mode describes the mass around it only when
the target is near Gaussian there. At the mode of a funnel (Neal's funnel:
``v ~ N(0, 3^2)``, ``x_i | v ~ N(0, e^v)``) it describes the neck, tens of
units away from where the mass is; a hierarchical model in its centred form
has no mode at all (the density grows without bound down the neck). Chains
of the Metropolis-adjusted Langevin algorithm (MALA; Roberts and Tweedie,
Bernoulli 2, 1996) started from standard-normal points go where the mass is
instead, and the quantiles of their states give a box to start from. The
box is a first guess: the TT base built on it is checked on its own exact
draws, and its sides move where the weighted draws say
(:func:`~sktt_flow.geometry.adjust_box`).

Everything is vectorised over chains: one call of the target (values and
gradients) per step for all of them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from sktt_flow.geometry.modes import _DIVERGENCE_FACTOR, _Target

__all__ = ["Exploration", "explore_mass"]

#: Acceptance rate MALA's step sizes are tuned to (optimal scaling of
#: Roberts and Rosenthal, JRSS B 60, 1998).
TARGET_ACCEPTANCE = 0.574


@dataclass
class Exploration:
    """States of a Langevin exploration.

    Attributes
    ----------
    draws : tensor (n_kept, d)
        The states of the second half of every chain that stayed finite,
        float64.
    acceptance : tensor (n_chains,)
        Acceptance rate of each chain over the second half.
    step_sizes : tensor (n_chains,)
        The tuned step size of each chain.
    n_evaluations : int
        Points at which ``log_target`` was evaluated (with its gradient).
    """

    draws: torch.Tensor
    acceptance: torch.Tensor
    step_sizes: torch.Tensor
    n_evaluations: int

    def box(self, *, tail: float = 1e-3, margin: float = 0.25):
        """Per coordinate, the ``tail`` and ``1 - tail`` quantiles of the
        draws, widened by ``margin`` of their distance on each side: an
        ndarray (d, 2), float64."""
        levels = torch.tensor([tail, 1.0 - tail], dtype=self.draws.dtype, device=self.draws.device)
        low, high = torch.quantile(self.draws, levels, dim=0)
        width = (high - low).clamp_min(1e-12)
        return torch.stack([low - margin * width, high + margin * width], dim=1).cpu().numpy()


def explore_mass(
    log_target: Callable,
    starts: torch.Tensor,
    *,
    n_steps: int = 400,
    initial_step_size: float = 0.1,
    generator: torch.Generator | None = None,
) -> Exploration:
    """Run MALA chains from ``starts`` and return the states of their second halves.

    Each chain tunes its own step size during the first half (a
    Robbins-Monro recursion on the log step towards an acceptance rate of
    0.574), so chains in a narrow neck and chains in a wide mouth each move;
    the second half keeps the step fixed, so those states are a valid MALA
    run whose law approaches the target (for a number of steps this short,
    only roughly: the result is a box to start from, not a sample).

    Parameters
    ----------
    log_target : callable
        ``log h`` of a batch (m, d), differentiable in torch; the estimator's
        evaluator (``log_target(points, grad=...)``) or a plain callable.
    starts : tensor (n_chains, d)
        Starting points, one chain each.
    n_steps : int, default=400
        Steps per chain (half to tune, half kept).
    initial_step_size : float, default=0.1
        The step ``h`` of every chain at the start: proposals are
        ``x + h/2 grad log h(x) + sqrt(h) xi``.
    generator : torch.Generator, optional

    Returns
    -------
    Exploration

    Notes
    -----
    Chains whose state is not finite at the end (a start outside the
    support that never found it), or that went a million times further from
    the origin than their start (an improper target, along which the chain
    runs away), are left out of ``draws``; with none left, ``draws`` is
    empty. Chains started
    where ``log h`` is ``-inf`` accept the first finite proposal.
    """
    if n_steps < 2:
        raise ValueError(f"n_steps must be at least 2, got {n_steps!r}.")
    if starts.ndim != 2 or starts.shape[0] == 0:
        raise ValueError(
            f"starts must be a non-empty (n_chains, d) tensor, got {tuple(starts.shape)}."
        )
    n_chains, n_features = starts.shape
    target = _Target(log_target, n_features, torch.float64)
    device = starts.device

    def values_and_gradients(points: torch.Tensor):
        values, gradients, _ = target.derivatives(points, hessian=False)
        # A point outside the support (value -inf) is never accepted, and its
        # NaN gradient must not poison the proposal that follows from it.
        return values, torch.nan_to_num(gradients, nan=0.0, posinf=0.0, neginf=0.0)

    state = starts.detach().double().clone()
    log_value, gradient = values_and_gradients(state)
    log_step = torch.full(
        (n_chains,), math.log(initial_step_size), dtype=torch.float64, device=device
    )
    n_tuning = n_steps // 2
    kept = []
    accepted = torch.zeros(n_chains, dtype=torch.float64, device=device)
    for step in range(n_steps):
        step_size = log_step.exp()[:, None]
        noise = torch.randn(
            n_chains, n_features, generator=generator, dtype=torch.float64, device=device
        )
        forward_mean = state + 0.5 * step_size * gradient
        proposal = forward_mean + step_size.sqrt() * noise
        proposal_value, proposal_gradient = values_and_gradients(proposal)
        backward_mean = proposal + 0.5 * step_size * proposal_gradient
        # log q(x | x') - log q(x' | x) for Gaussian proposals of variance h
        log_ratio = (
            proposal_value
            - log_value
            - (state - backward_mean).square().sum(1) / (2 * step_size[:, 0])
            + (proposal - forward_mean).square().sum(1) / (2 * step_size[:, 0])
        )
        log_ratio = torch.nan_to_num(log_ratio, nan=-math.inf)
        log_ratio = torch.where(
            torch.isfinite(proposal_value), log_ratio, torch.full_like(log_ratio, -math.inf)
        )
        probability = log_ratio.clamp_max(0.0).exp()
        uniform = torch.rand(n_chains, generator=generator, dtype=torch.float64, device=device)
        accept = uniform < probability
        state = torch.where(accept[:, None], proposal, state)
        log_value = torch.where(accept, proposal_value, log_value)
        gradient = torch.where(accept[:, None], proposal_gradient, gradient)
        if step < n_tuning:
            # Gains fall like t^-0.6 so that the step sizes settle, slowly
            # enough at first to cross orders of magnitude (a funnel's mouth
            # wants steps 10^4 times its neck's): they sum to about 60 over
            # 200 tuning steps.
            gain = (1.0 + step / 10.0) ** -0.6
            log_step = log_step + gain * (probability - TARGET_ACCEPTANCE)
        else:
            accepted += accept.double()
            kept.append(state)
    states = torch.stack(kept, dim=1)  # (n_chains, n_kept, d)
    # A chain on an improper target (log h = sum(x)) accepts every step and
    # grows its step without bound: states of 1e17 after the tuning. Chains
    # that went as far as a diverged ascent of the mode search are left out.
    reach = _DIVERGENCE_FACTOR * starts.double().abs().amax(1).clamp_min(1.0)
    finite = torch.isfinite(log_value) & torch.isfinite(states).flatten(1).all(1)
    finite &= states.abs().flatten(1).amax(1) <= reach
    return Exploration(
        draws=states[finite].reshape(-1, n_features),
        acceptance=accepted / (n_steps - n_tuning),
        step_sizes=log_step.exp(),
        n_evaluations=target.n_evaluations,
    )
