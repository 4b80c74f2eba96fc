"""Importance-sampling diagnostics against closed forms.

With ``q = N(0, 1)`` and ``h = Z N(0, sigma^2)``, the weights are
``w = h / q`` and

- ``E_q[w] = Z`` and ``E_q[w^2] = Z^2 / (sigma sqrt(2 - sigma^2))``, so the
  normalised ESS is ``sigma sqrt(2 - sigma^2)`` (finite for sigma^2 < 2);
- the ELBO is ``log Z - KL(N(0, 1) || N(0, sigma^2))`` with
  ``KL = log sigma + 1 / (2 sigma^2) - 1 / 2``.

Tolerances are a few standard errors at the sample size used.
"""

import math
import statistics

import pytest
import torch

from sktt_flow.diagnostics import importance_diagnostics

LOG_Z = 2.5
HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def gaussian_weights(sigma, n, seed):
    """log h and log q at n samples of q = N(0, 1), h = exp(LOG_Z) N(0, sigma^2)."""
    x = torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    log_q = -0.5 * x**2 - HALF_LOG_2PI
    log_h = LOG_Z - 0.5 * (x / sigma) ** 2 - HALF_LOG_2PI - math.log(sigma)
    return log_h, log_q


def test_exact_proposal():
    """h = Z q: every weight is Z, so ESS = 1, log Z exact and both standard
    errors zero up to round-off (the delta-method error is the square root of
    a round-off of order 1e-16, over sqrt(N))."""
    log_q = -0.5 * torch.linspace(-4, 4, 1000, dtype=torch.float64) ** 2 - HALF_LOG_2PI
    result = importance_diagnostics(log_q + LOG_Z, log_q)
    assert result.ess == pytest.approx(1.0, abs=1e-12)
    assert result.log_normalizer == pytest.approx(LOG_Z, abs=1e-12)
    assert result.elbo == pytest.approx(LOG_Z, abs=1e-12)
    assert result.elbo_std_error == pytest.approx(0.0, abs=1e-12)
    assert result.log_normalizer_std_error == pytest.approx(0.0, abs=1e-8)
    assert result.n_samples == 1000


def test_ess_matches_the_closed_form():
    """sigma = 0.7 < 1: the weights are bounded by Z / sigma, so every moment is
    finite and the plug-in ESS has the delta-method standard error used here
    (5 of them, about 2e-3 at 200k samples). With sigma > sqrt(4/3), e.g. 1.2,
    E_q[w^4] is infinite and the ESS estimate converges too erratically for a
    fixed tolerance (its spread over repeated 200k runs was ~0.1)."""
    sigma, n = 0.7, 200_000
    log_h, log_q = gaussian_weights(sigma, n, seed=0)
    result = importance_diagnostics(log_h, log_q)
    expected = sigma * math.sqrt(2 - sigma**2)
    w = (log_h - log_q).exp()
    first, second = w.mean(), w.square().mean()
    # ESS = m1^2 / m2: its gradient in (m1, m2) gives the per-sample influence.
    influence = result.ess * (2 * w / first - w.square() / second)
    standard_error = float(influence.std()) / math.sqrt(n)
    assert result.ess == pytest.approx(float(first**2 / second), rel=1e-10)
    assert result.ess == pytest.approx(expected, abs=5 * standard_error)
    assert standard_error < 1e-3


@pytest.mark.parametrize("sigma", [0.7, 1.2])
def test_elbo_and_log_normalizer_match_the_closed_forms(sigma):
    """ELBO within 5 of its standard errors of log Z - KL; log Z within 5 of its
    reported (delta-method) standard errors, both ~1e-3 at 200k samples."""
    log_h, log_q = gaussian_weights(sigma, 200_000, seed=1)
    result = importance_diagnostics(log_h, log_q)
    kl = math.log(sigma) + 1 / (2 * sigma**2) - 0.5
    assert result.elbo == pytest.approx(LOG_Z - kl, abs=5 * result.elbo_std_error)
    assert result.elbo < result.log_normalizer  # Jensen
    assert result.log_normalizer == pytest.approx(LOG_Z, abs=5 * result.log_normalizer_std_error)
    assert 0 < result.elbo_std_error < 5e-3
    assert 0 < result.log_normalizer_std_error < 5e-3


@pytest.mark.parametrize("sigma", [0.7, 1.2])
def test_reported_standard_errors_match_the_spread_of_repeated_runs(sigma):
    """Over 50 runs of 2000 samples, the standard deviation of the estimates
    and the mean reported standard error agree within a factor 1.5: the
    relative error of a standard deviation from 50 values is 1/sqrt(98) = 10%,
    so 1.5 is four of those."""
    results = [
        importance_diagnostics(*gaussian_weights(sigma, 2000, seed=100 + run)) for run in range(50)
    ]
    for estimate, error in (
        ("log_normalizer", "log_normalizer_std_error"),
        ("elbo", "elbo_std_error"),
    ):
        spread = statistics.stdev(getattr(r, estimate) for r in results)
        reported = statistics.mean(getattr(r, error) for r in results)
        assert 1 / 1.5 < spread / reported < 1.5, (estimate, spread, reported)


def test_a_zero_weight_makes_the_elbo_minus_infinity():
    """log h = -inf is a valid zero weight: log Z and ESS stay finite."""
    log_q = torch.zeros(4, dtype=torch.float64)
    log_h = torch.tensor([0.0, 0.0, -math.inf, 0.0], dtype=torch.float64)
    result = importance_diagnostics(log_h, log_q)
    assert result.elbo == -math.inf and result.elbo_std_error == math.inf
    assert result.log_normalizer == pytest.approx(math.log(3 / 4), abs=1e-15)
    assert result.ess == pytest.approx(3 / 4, abs=1e-15)


@pytest.mark.parametrize(
    ("log_target", "log_proposal", "message"),
    [
        (torch.zeros(5), torch.zeros(4), "same length"),
        (torch.zeros(1), torch.zeros(1), "At least 2"),
        (torch.tensor([0.0, math.nan]), torch.zeros(2), "NaN or \\+inf"),
        (torch.tensor([0.0, math.inf]), torch.zeros(2), "NaN or \\+inf"),
        (torch.zeros(2), torch.tensor([0.0, -math.inf]), "log_proposal must be finite"),
        (torch.zeros(2), torch.tensor([0.0, math.nan]), "log_proposal must be finite"),
        (torch.zeros(2), torch.tensor([0.0, math.inf]), "log_proposal must be finite"),
        (torch.full((3,), -math.inf), torch.zeros(3), "Every importance weight is zero"),
        # tensors on two devices (the meta device stands for a GPU here)
        (torch.zeros(2, device="meta"), torch.zeros(2), "same device"),
    ],
)
def test_invalid_inputs_are_value_errors(log_target, log_proposal, message):
    with pytest.raises(ValueError, match=message):
        importance_diagnostics(log_target, log_proposal)
