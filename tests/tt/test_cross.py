"""TT-cross: exact recovery of low-rank functions, agreement with full-grid
references, mode discovery from seeds, budgets and the errors a bad callable
gets."""

import math

import numpy as np
import pytest
import torch
from sklearn.exceptions import ConvergenceWarning

from sktt_flow import TTDistribution
from sktt_flow.targets import GinzburgLandau1D, MixtureOfGaussians
from sktt_flow.tt.algebra import tt_ranks, tt_to_full
from sktt_flow.tt.basis import gauss_legendre
from sktt_flow.tt.cross import tt_cross
from tests.conftest import requires_cuda


def grid(d, n, low=-1.0, high=1.0):
    nodes, _ = gauss_legendre(
        n, torch.full((d,), low, dtype=torch.float64), torch.full((d,), high, dtype=torch.float64)
    )
    return nodes


def full_grid_values(function, nodes):
    d, n = nodes.shape
    points = torch.stack(torch.meshgrid(*nodes, indexing="ij"), -1).reshape(-1, d)
    return function(points).reshape([n] * d)


def run_cross(log_h, nodes, **kwargs):
    options = {"max_rank": 6, "tol": 1e-12, "generator": torch.Generator().manual_seed(0)}
    options.update(kwargs)
    return tt_cross(log_h, nodes, **options)


@pytest.mark.parametrize(
    "root, rank",
    [
        (lambda x: torch.prod(1.5 + torch.sin(x), dim=1), 1),
        (lambda x: torch.prod(1 + x**2, dim=1) + torch.prod(torch.cos(x), dim=1), 2),
        (
            lambda x: (
                torch.exp(-((x - 0.3) ** 2).sum(1)) + 0.5 * torch.exp(-((x + 0.4) ** 2).sum(1))
            ),
            2,
        ),
    ],
    ids=["product", "sum-of-two-products", "two-bumps"],
)
@pytest.mark.parametrize("d", [3, 4, 6])
@pytest.mark.parametrize("method", ["one-site", "two-site"])
def test_recovers_low_rank_functions_exactly(root, rank, d, method):
    nodes = grid(d, 7)
    cores, report = run_cross(lambda x: 2 * torch.log(root(x)), nodes, method=method)
    if method == "two-site":  # rank-adaptive: finds the rank itself
        assert max(tt_ranks(cores)) == rank
    # Compare on random grid points (the full grid is too large for d = 6).
    indices = torch.randint(7, (2000, d), generator=torch.Generator().manual_seed(1))
    points = torch.gather(nodes, 1, indices.T).T
    approximation = torch.ones(2000, 1, dtype=torch.float64)
    for k, core in enumerate(cores):
        approximation = torch.einsum("ma,amb->mb", approximation, core[:, indices[:, k], :])
    exact = root(points) * math.exp(-report.log_shift / 2)
    np.testing.assert_allclose(approximation.squeeze(1), exact, rtol=1e-8, atol=1e-12)
    assert report.converged and report.n_evaluations > 0 and report.n_calls > 0


@pytest.mark.parametrize("d", [3, 4])
@pytest.mark.parametrize("method", ["one-site", "two-site"])
def test_matches_the_full_grid_reference(d, method):
    """A function of full rank: cross with enough rank equals the full tensor."""

    def log_h(x):
        return -(x.sum(1) ** 2) - 0.5 * (x**4).sum(1) + torch.sin(3 * x[:, 0] * x[:, -1])

    nodes = grid(d, 6)
    cores, report = run_cross(log_h, nodes, max_rank=36, max_sweeps=6, method=method)
    exact = torch.exp((full_grid_values(log_h, nodes) - report.log_shift) / 2)
    error = float((tt_to_full(cores) - exact).norm() / exact.norm())
    assert error < 1e-8, error


def importance_diagnostics(target, base, n_samples=20000, seed=1):
    """log Z estimate, reverse KL (log Z - ELBO), normalised ESS and mode masses
    of the base as an importance sampler for the target."""
    samples = base.sample(n_samples, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        log_weights = target.log_prob(samples) - base.log_prob(samples)
    log_z = float(torch.logsumexp(log_weights, 0) - math.log(n_samples))
    elbo = float(log_weights.mean())
    normalised = torch.softmax(log_weights, 0)
    ess = float(1.0 / (n_samples * normalised.square().sum()))
    masses = np.bincount(target.mode_of(samples).numpy(), minlength=target.n_modes) / n_samples
    return log_z, target.log_normalizer - elbo, ess, masses


@pytest.mark.slow
def test_ginzburg_landau_base_alone_is_nearly_exact():
    """GinzburgLandau1D(16): the TT base alone, no flow. With 20,000 samples and
    ESS near 1 the standard errors are ~1e-4 for log Z and ~0.0035 for a mode
    mass, well inside the tolerances."""
    target = GinzburgLandau1D(16)
    base = TTDistribution.from_log_density(
        target.log_prob, [[-2.5, 2.5]] * 16, tt_rank=8, n_basis=24, random_state=0
    )
    log_z, kl, ess, masses = importance_diagnostics(target, base)
    assert abs(log_z - target.log_normalizer) < 0.01
    assert kl <= 0.02
    assert ess >= 0.9
    np.testing.assert_allclose(masses, 0.5, atol=0.03)
    report = base.cross_report
    assert report.converged and 0 < report.n_evaluations < 2_000_000


def test_finds_modes_that_random_starts_miss():
    """Eight narrow modes in 8-D: every one gets mass 1/8 through the seeds."""
    target = MixtureOfGaussians.random_modes(8, 8, low=-4.0, high=4.0, std=0.5, seed=0)
    base = TTDistribution.from_log_density(
        target.log_prob, [[-6.0, 6.0]] * 8, tt_rank=8, n_basis=32, random_state=0
    )
    log_z, kl, ess, masses = importance_diagnostics(target, base)
    # binomial standard error sqrt(1/8 * 7/8 / 20000) ~ 0.0023: 0.03 is 13 SE
    np.testing.assert_allclose(masses, 1 / 8, atol=0.03)
    assert abs(log_z - target.log_normalizer) < 0.05
    assert kl < 0.05 and ess > 0.9
    assert base.cross_report.converged
    assert base.tt_ranks == (1,) + (8,) * 7 + (1,)


@pytest.mark.parametrize("method", ["one-site", "two-site"])
def test_budget_is_honoured(method):
    nodes = grid(5, 8)

    def log_h(x):
        return -(x**2).sum(1) + torch.sin(3 * x.prod(1))

    _, free = run_cross(log_h, nodes, max_rank=4, max_sweeps=8, method=method)
    assert free.n_sweeps > 1
    # A budget that covers the start and one half-sweep but not the rest.
    budget = free.n_evaluations - 1
    _, report = run_cross(log_h, nodes, max_rank=4, max_evals=budget, max_sweeps=8, method=method)
    assert report.n_evaluations <= budget
    assert report.stop_reason == f"max_evals={budget} reached"
    assert report.n_sweeps < free.n_sweeps
    with pytest.raises(ValueError, match="too small for one sweep"):
        run_cross(log_h, nodes, max_rank=4, max_evals=4500, method=method)


def test_one_dimension_is_exact():
    base = TTDistribution.from_log_density(
        lambda x: -0.5 * x[:, 0] ** 2, [[-6.0, 6.0]], n_basis=40, random_state=0
    )
    z = torch.linspace(-2, 2, 9, dtype=torch.float64)[:, None]
    with torch.no_grad():
        np.testing.assert_allclose(
            base.log_prob(z), -0.5 * z[:, 0] ** 2 - 0.5 * math.log(2 * math.pi), atol=1e-6
        )


def test_minus_infinity_is_zero_density():
    def log_h(x):  # a half-space only
        return torch.where(x[:, 0] > 0, -(x**2).sum(1), torch.full_like(x[:, 0], -math.inf))

    base = TTDistribution.from_log_density(log_h, (-3, 3), n_features=2, random_state=0)
    samples = base.sample(2000, generator=torch.Generator().manual_seed(0))
    assert float((samples[:, 0] > -0.3).double().mean()) > 0.97


def test_report_counts_calls_and_batches():
    calls = []

    def log_h(x):
        calls.append(x.shape[0])
        return -(x**2).sum(1)

    base = TTDistribution.from_log_density(
        log_h,
        [[-3, 3]] * 3,
        tt_rank=2,
        n_basis=8,
        batch_size=500,
        random_state=0,
        n_seeds=16,
        n_seed_steps=5,
    )
    report = base.cross_report
    assert report.n_calls == len(calls) and report.n_evaluations == sum(calls)
    assert max(calls) <= 500
    assert report.n_sweeps == len(report.error_history) == len(report.rank_history)


@pytest.mark.parametrize(
    "log_h, error, message",
    [
        ("not callable", TypeError, "must be callable"),
        (lambda x: torch.zeros(x.shape[0] + 1), ValueError, "must return"),
        (lambda x: torch.zeros(x.shape[0], 2), ValueError, "must return"),
        (lambda x: torch.where(x[:, 0] > 0.5, math.nan, 0.0), ValueError, "NaN or \\+inf at"),
        (lambda x: torch.full((x.shape[0],), math.inf), ValueError, "NaN or \\+inf at"),
        (lambda x: ["a"] * x.shape[0], ValueError, "real numbers"),
        (lambda x: torch.full((x.shape[0],), -math.inf), ValueError, "-inf at every"),
    ],
)
def test_bad_callables_get_clear_errors(log_h, error, message):
    with pytest.raises(error, match=message):
        TTDistribution.from_log_density(
            log_h,
            [[-1, 1]] * 2,
            n_basis=4,
            tt_rank=2,
            random_state=0,
            n_seeds=8,
            n_seed_steps=2,
        )


def test_a_callable_that_raises_is_reported_with_its_batch():
    def broken(x):
        raise ZeroDivisionError("boom")

    with pytest.raises(ValueError, match="raised ZeroDivisionError on a batch of") as info:
        TTDistribution.from_log_density(broken, [[-1, 1]] * 2, n_seeds=4, random_state=0)
    assert isinstance(info.value.__cause__, ZeroDivisionError)


def test_numpy_callable_without_gradient_still_works():
    def log_h(x):
        return -np.sum(x.numpy() ** 2, axis=1)

    base = TTDistribution.from_log_density(
        log_h, [[-4, 4]] * 2, tt_rank=2, n_basis=16, random_state=0
    )
    samples = base.sample(4000, generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(samples.std(0), [np.sqrt(0.5)] * 2, rtol=0.05)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"domain": (-1, 1)}, "needs n_features"),
        ({"tt_rank": 0}, "tt_rank"),
        ({"n_basis": 1}, "n_basis"),
        ({"domain": [[1, -1]]}, "low < high"),
    ],
)
def test_parameter_errors(kwargs, message):
    arguments = {"domain": [[-1, 1]], **kwargs}
    with pytest.raises(ValueError, match=message):
        TTDistribution.from_log_density(lambda x: -(x**2).sum(1), **arguments)


@requires_cuda
def test_cross_on_cuda_matches_cpu():
    def log_h(x):
        return -0.5 * (x**2).sum(1) + torch.log1p(x[:, 0] ** 2)

    options = {"tt_rank": 3, "n_basis": 12, "random_state": 0, "n_seeds": 32}
    gpu = TTDistribution.from_log_density(log_h, [[-5, 5]] * 3, device="cuda", **options)
    cpu = TTDistribution.from_log_density(log_h, [[-5, 5]] * 3, **options)
    assert gpu.cores[0].is_cuda
    z = cpu.sample(1000, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        np.testing.assert_allclose(
            gpu.log_prob(z.cuda()).cpu().numpy(), cpu.log_prob(z).numpy(), atol=1e-6
        )


def test_warns_when_cross_does_not_converge():
    def log_h(x):  # of high rank: rank 2 cannot reach the tolerance
        return 5 * torch.sin(10 * x.prod(1)) - (x.sum(1) - 0.5) ** 2

    with pytest.warns(ConvergenceWarning, match="without reaching tol"):
        base = TTDistribution.from_log_density(
            log_h, [[-1, 1]] * 3, tt_rank=2, n_basis=6, tol=1e-12, max_sweeps=3, random_state=0
        )
    assert not base.cross_report.converged


def test_returns_the_best_half_sweep():
    """Held-out errors need not decrease; a stop returns the best train, which is
    the one a run ending at the best half-sweep returns (runs are deterministic)."""
    nodes = grid(4, 8)

    def log_h(x):
        return 5 * torch.sin(10 * x.prod(1)) - (x.sum(1) - 0.5) ** 2

    cores, report = run_cross(log_h, nodes, max_rank=3, max_sweeps=6, tol=1e-12)
    history = report.error_history
    assert history[-1] > min(history)  # the case this test is about
    assert report.best_error == min(history)
    best_sweep = history.index(min(history)) + 1
    early, early_report = run_cross(log_h, nodes, max_rank=3, max_sweeps=best_sweep, tol=1e-12)
    assert early_report.error_history == history[:best_sweep]
    for returned, reference in zip(cores, early, strict=True):
        assert torch.equal(returned, reference)
