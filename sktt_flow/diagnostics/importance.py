"""Importance-sampling diagnostics of a variational approximation.

With samples ``x_i ~ q`` and log-weights ``log w_i = log h(x_i) - log q(x_i)``
for an unnormalised target ``h`` with normaliser ``Z``:

- ELBO: ``mean(log w)``, a lower bound on ``log Z``; ``log Z - ELBO`` is the
  reverse KL divergence ``KL(q || h / Z)``.
- log Z: ``log mean(w)``, consistent, with the delta-method standard error
  ``sqrt((1 / ESS - 1) / (N - 1))``.
- normalised effective sample size: ``(sum w)^2 / (N sum w^2)`` in (0, 1].

All are computed from the log-weights in float64 with ``logsumexp``, so that
nothing overflows for weights far from 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["ImportanceDiagnostics", "importance_diagnostics"]


@dataclass(frozen=True)
class ImportanceDiagnostics:
    """Summary of importance weights ``w = h / q`` on samples of ``q``.

    Attributes
    ----------
    elbo : float
        ``mean(log w)``.
    elbo_std_error : float
        Standard error of ``elbo`` (sample standard deviation over ``sqrt(N)``).
    log_normalizer : float
        ``log mean(w)``, the estimate of ``log Z``.
    log_normalizer_std_error : float
        Delta-method standard error of ``log_normalizer``.
    ess : float
        Normalised effective sample size, in (0, 1].
    n_samples : int
    """

    elbo: float
    elbo_std_error: float
    log_normalizer: float
    log_normalizer_std_error: float
    ess: float
    n_samples: int


def importance_diagnostics(
    log_target: torch.Tensor, log_proposal: torch.Tensor
) -> ImportanceDiagnostics:
    """Diagnostics from ``log h(x_i)`` and ``log q(x_i)`` at samples ``x_i ~ q``.

    Parameters
    ----------
    log_target, log_proposal : tensors of shape (N,), N >= 2, on one device
        ``log h`` may be ``-inf`` (zero weight; the ELBO is then ``-inf``);
        ``log q`` must be finite, as it is at samples of ``q``.

    Returns
    -------
    ImportanceDiagnostics
    """
    log_target = torch.as_tensor(log_target).detach().double().reshape(-1)
    log_proposal = torch.as_tensor(log_proposal).detach().double().reshape(-1)
    if log_target.device != log_proposal.device:
        raise ValueError(
            f"log_target and log_proposal must be on the same device, got "
            f"{log_target.device} and {log_proposal.device}."
        )
    if log_target.shape != log_proposal.shape:
        raise ValueError(
            f"log_target and log_proposal must have the same length, got "
            f"{log_target.shape[0]} and {log_proposal.shape[0]}."
        )
    n_samples = log_target.shape[0]
    if n_samples < 2:
        raise ValueError(f"At least 2 samples are needed, got {n_samples}.")
    if torch.isnan(log_target).any() or (log_target == math.inf).any():
        raise ValueError("log_target contains NaN or +inf.")
    if not bool(torch.isfinite(log_proposal).all()):
        raise ValueError("log_proposal must be finite at samples of the proposal.")
    log_weights = log_target - log_proposal
    if bool((log_weights == -math.inf).all()):
        raise ValueError("Every importance weight is zero: the target vanishes on all samples.")
    log_normalizer = float(torch.logsumexp(log_weights, 0) - math.log(n_samples))
    normalised = torch.softmax(log_weights, 0)
    inverse_ess = float(n_samples * normalised.square().sum())
    elbo = float(log_weights.mean())
    finite = bool(torch.isfinite(log_weights).all())
    return ImportanceDiagnostics(
        elbo=elbo,
        elbo_std_error=float(log_weights.std() / math.sqrt(n_samples)) if finite else math.inf,
        log_normalizer=log_normalizer,
        log_normalizer_std_error=math.sqrt(max(inverse_ess - 1.0, 0.0) / (n_samples - 1)),
        ess=1.0 / inverse_ess,
        n_samples=n_samples,
    )
