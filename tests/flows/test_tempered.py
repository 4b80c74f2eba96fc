"""The tempered (layered) base is an exact, normalised density with exact samples,
and its adaptive schedule rescues a target that one train of the same size misses.

Exactness is checked against quadrature of ``exp(log_prob)`` in the whitened
coordinates ``z = matrix^{-1} (x - shift)`` of the outer map, on a composite
Gauss-Legendre rule over ``[-9, 9]^2`` (panels of 0.2, 8 nodes each; the
outer Gaussian puts less than 1e-18 outside it, and the layer densities are
bounded, so the truncation is far below every tolerance).

Sizes: with N = 40,000 samples a correct sampler's KS statistic exceeds
1.95 / sqrt(N) ~ 0.0098 with probability 0.001, and the chi-square test on
25 cells (expected counts above 100 each) rejects a correct sampler with
probability 0.001; both are run at that significance.
"""

import itertools
import math
import warnings

import numpy as np
import pytest
import torch
from scipy import stats
from sklearn.exceptions import ConvergenceWarning

from sktt_flow.flows import TemperedTTBase, fit_tempered_base
from sktt_flow.targets import Banana
from sktt_flow.tt import TTDistribution
from tests.conftest import random_cores, requires_cuda

N_SAMPLES = 40_000
SIGNIFICANCE = 1e-3
SHIFT = torch.tensor([0.5, -1.0], dtype=torch.float64)
MATRIX = torch.tensor([[1.5, 0.0], [0.7, 0.8]], dtype=torch.float64)
#: Cell edges of the chi-square test, in whitened coordinates.
CELL_EDGES = np.array([-9.0, -1.0, -0.4, 0.4, 1.0, 9.0])


@pytest.fixture(scope="module")
def base():
    # Two random layers (rank 3, 8 Legendre functions): strongly non-Gaussian,
    # dependent coordinates; a large uniform weight so that a wrong weighting
    # of the uniform part would show.
    layers = [random_cores((1, 3, 1), 8, seed=seed) for seed in (1, 2)]
    return TemperedTTBase(layers, SHIFT, MATRIX, defensive_weight=0.05)


@pytest.fixture(scope="module")
def quadrature(base):
    """Nodes (m,), weights (m,), panel breaks and the density on the m x m grid
    of whitened coordinates (the Jacobian |det matrix| included)."""
    breaks = np.round(np.arange(-45, 46) / 5.0, 10)
    nodes, weights = np.polynomial.legendre.leggauss(8)
    left, right = breaks[:-1, None], breaks[1:, None]
    grid = ((left + right) / 2 + (right - left) / 2 * nodes).ravel()
    grid_weights = ((right - left) / 2 * weights).ravel()
    z = torch.as_tensor(np.stack(np.meshgrid(grid, grid, indexing="ij"), -1).reshape(-1, 2))
    x = SHIFT + z @ MATRIX.T
    density = base.log_prob(x).exp().reshape(len(grid), len(grid)).numpy()
    density *= abs(float(torch.linalg.det(MATRIX)))
    return grid, grid_weights, breaks, density


@pytest.fixture(scope="module")
def whitened_samples(base):
    x = base.sample(N_SAMPLES, generator=torch.Generator().manual_seed(0))
    return ((x - SHIFT) @ torch.linalg.inv(MATRIX).T).numpy()


def test_density_is_normalised(quadrature):
    """Catches a wrong constant: the d (K - 1) log 2 of the composition, the
    outer map's log-determinant, or a layer density off by its normaliser."""
    _, weights, _, density = quadrature
    assert weights @ density @ weights == pytest.approx(1.0, abs=1e-6)


def test_forward_log_density_equals_log_prob(base):
    """The sampling pass (inverse maps, layer densities read off the solves)
    and the evaluation pass (forward maps) are computed independently: a wrong
    Jacobian in either, or maps that are not inverse, would break the match."""
    x, log_q = base.forward(5000, generator=torch.Generator().manual_seed(1))
    assert x.dtype == torch.float64 and log_q.shape == (5000,)
    assert (log_q - base.log_prob(x)).abs().max() < 1e-9


def test_whitened_marginals_pass_kolmogorov_smirnov(quadrature, whitened_samples):
    assert_marginals_pass_kolmogorov_smirnov(quadrature, whitened_samples)


def assert_marginals_pass_kolmogorov_smirnov(quadrature, whitened_samples):
    """The KS statistic over the panel breaks, where the quadrature gives the
    CDF exactly: a lower bound of the full statistic, so the p-value of
    ``kstwo`` is conservative (a correct sampler fails less often than 0.001),
    and breaks 0.2 apart see any error of the law worth the name."""
    _, weights, breaks, density = quadrature
    for axis in range(2):
        marginal = (density @ weights) if axis == 0 else (weights @ density)
        panel_mass = (marginal * weights).reshape(len(breaks) - 1, -1).sum(axis=1)
        cdf = np.concatenate([[0.0], np.cumsum(panel_mass)])
        empirical = np.searchsorted(np.sort(whitened_samples[:, axis]), breaks) / N_SAMPLES
        statistic = np.abs(empirical - cdf).max()
        assert stats.kstwo.sf(statistic, N_SAMPLES) > SIGNIFICANCE, (axis, statistic)


def test_two_dimensional_law_passes_chi_square(quadrature, whitened_samples):
    grid, weights, _, density = quadrature
    cell = np.searchsorted(CELL_EDGES, grid) - 1  # every node lies inside one cell
    weighted = density * weights[:, None] * weights[None, :]
    n_cells = len(CELL_EDGES) - 1
    probabilities = np.zeros((n_cells, n_cells))
    np.add.at(probabilities, (cell[:, None], cell[None, :]), weighted)
    assert probabilities.min() * N_SAMPLES > 100
    counts, _, _ = np.histogram2d(*whitened_samples.T, bins=[CELL_EDGES, CELL_EDGES])
    assert counts.sum() == N_SAMPLES
    pvalue = stats.chisquare(counts.ravel(), probabilities.ravel() * N_SAMPLES).pvalue
    assert pvalue > SIGNIFICANCE
    # The same test rejects samples with the right marginals but independent
    # coordinates (the layers make them dependent).
    shuffled = whitened_samples.copy()
    shuffled[:, 1] = np.random.default_rng(0).permutation(shuffled[:, 1])
    counts, _, _ = np.histogram2d(*shuffled.T, bins=[CELL_EDGES, CELL_EDGES])
    assert stats.chisquare(counts.ravel(), probabilities.ravel() * N_SAMPLES).pvalue < 1e-12


@requires_cuda
def test_cuda_matches_cpu(base, quadrature):
    """Moved to a GPU, the layered base gives the CPU's log-density and draws
    of the same law (the panel KS test above, on the GPU's own generator)."""
    on_gpu = TemperedTTBase(
        [random_cores((1, 3, 1), 8, seed=seed) for seed in (1, 2)],
        SHIFT,
        MATRIX,
        defensive_weight=0.05,
    ).to("cuda")
    assert on_gpu.shift.is_cuda and on_gpu.layers[0].core_0.is_cuda
    x = base.sample(2000, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(
        on_gpu.log_prob(x.cuda()).cpu(), base.log_prob(x), rtol=1e-10, atol=1e-10
    )
    z, log_q = on_gpu.forward(N_SAMPLES, generator=torch.Generator("cuda").manual_seed(0))
    assert z.is_cuda and log_q.is_cuda
    torch.testing.assert_close(log_q.cpu(), base.log_prob(z.cpu()), rtol=1e-9, atol=1e-9)
    whitened = ((z.cpu() - SHIFT) @ torch.linalg.inv(MATRIX).T).numpy()
    assert_marginals_pass_kolmogorov_smirnov(quadrature, whitened)


def test_without_layers_it_is_the_outer_gaussian():
    """Catches a wrong log-determinant of the outer map (the d log 2 and the
    normal density of Phi^{-1})."""
    base = TemperedTTBase([], SHIFT, MATRIX)
    x = torch.randn(100, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    gaussian = torch.distributions.MultivariateNormal(SHIFT, scale_tril=MATRIX)
    assert torch.allclose(base.log_prob(x), gaussian.log_prob(x), atol=1e-10, rtol=0)


def test_affine_outer_map_is_exact_on_its_parallelepiped():
    """Catches a Jacobian of the affine outer map off by the d log 2 of the
    cube, or points outside the parallelepiped given a finite density."""
    empty = TemperedTTBase([], SHIFT, MATRIX, outer="affine")
    inside = SHIFT + torch.tensor([[0.5, -0.2], [0.0, 0.9]], dtype=torch.float64) @ MATRIX.T
    outside = SHIFT + torch.tensor([[1.5, 0.0]], dtype=torch.float64) @ MATRIX.T
    expected = -2 * math.log(2.0) - math.log(abs(float(torch.linalg.det(MATRIX))))
    assert torch.allclose(empty.log_prob(inside), torch.full((2,), expected, dtype=torch.float64))
    assert empty.log_prob(outside).item() == -math.inf
    layers = [random_cores((1, 3, 1), 8, seed=seed) for seed in (1, 2)]
    layered = TemperedTTBase(layers, SHIFT, MATRIX, defensive_weight=0.05, outer="affine")
    x, log_q = layered.forward(2000, generator=torch.Generator().manual_seed(5))
    assert (log_q - layered.log_prob(x)).abs().max() < 1e-9
    # normalised: the density in the cube's coordinates integrates to 1
    nodes, weights = np.polynomial.legendre.leggauss(120)
    grid = torch.as_tensor(np.stack(np.meshgrid(nodes, nodes, indexing="ij"), -1).reshape(-1, 2))
    density = layered.log_prob(SHIFT + grid @ MATRIX.T).exp().reshape(120, 120).numpy()
    total = weights @ density @ weights * abs(float(torch.linalg.det(MATRIX)))
    assert total == pytest.approx(1.0, abs=1e-8)
    with pytest.raises(ValueError, match="outer"):
        TemperedTTBase([], SHIFT, MATRIX, outer="logistic")


def test_sampling_is_reproducible_and_follows_the_dtype(base):
    first = base.sample(50, generator=torch.Generator().manual_seed(3))
    second = base.sample(50, generator=torch.Generator().manual_seed(3))
    assert torch.equal(first, second)
    single = TemperedTTBase([random_cores((1, 3, 1), 8, seed=1)], SHIFT.float(), MATRIX)
    z, log_q = single.forward(10)
    assert z.dtype == log_q.dtype == torch.float32
    assert single.log_prob(z).dtype == torch.float32
    assert base.n_layers == 2 and base.truncated(1).n_layers == 1
    assert "n_layers=2" in repr(base)


def test_bad_arguments_are_refused():
    cores = random_cores((1, 3, 1), 8, seed=1)
    with pytest.raises(ValueError, match="invertible"):
        TemperedTTBase([cores], SHIFT, torch.zeros(2, 2))
    with pytest.raises(ValueError, match="defensive_weight"):
        TemperedTTBase([cores], SHIFT, MATRIX, defensive_weight=0.0)
    with pytest.raises(ValueError, match="cores"):
        TemperedTTBase([cores[:1]], SHIFT, MATRIX)
    with pytest.raises(ValueError, match="shape"):
        TemperedTTBase([cores], SHIFT, torch.eye(3))
    with pytest.raises(TypeError, match="callable"):
        fit_tempered_base("not a function", SHIFT, MATRIX)
    with pytest.raises(ValueError, match="min_ess"):
        fit_tempered_base(Banana().log_prob, SHIFT, MATRIX, min_ess=0.0)


def test_schedule_rescues_a_target_one_small_train_misses():
    """The banana's curved ridge at n_basis=8: one train on the target's box
    has a poor self-check; the tempered layers of the same size reach beta = 1
    with a high ESS and an accurate log Z (the target is normalised).

    Catches a schedule that stalls (betas not increasing to 1), a bridge that
    is not the ratio of consecutive bridges (the layers would not compose to
    h), or a wrong log q (the ESS against h would collapse)."""
    torch.manual_seed(0)
    target = Banana()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        single = TTDistribution.from_log_density(
            target.log_prob, target.domain, tt_rank=4, n_basis=8, random_state=0
        )
    assert single.cross_report.ess < 0.5
    draws = target.sample(20_000, random_state=0)
    shift = draws.mean(0)
    # Three times the target's covariance: the outer Gaussian's tails must
    # cover the banana's arms (see the module docstring of the base).
    matrix = 3.0 * torch.linalg.cholesky(torch.cov(draws.T))
    base = fit_tempered_base(
        target.log_prob,
        shift,
        matrix,
        tt_rank=4,
        n_basis=8,
        defensive_weight=1e-9,
        n_check_samples=10_000,
        random_state=0,
    )
    report = base.report
    betas = report.betas
    assert betas[-1] == 1.0 and report.reached_target
    assert all(a <= b for a, b in itertools.pairwise(betas)) and len(betas) >= 2
    assert report.ess > 0.9
    # log Z = 0; the standard error is about 1e-3 at this ESS and N.
    assert abs(report.log_normalizer) < 5 * report.log_normalizer_std_error + 1e-3
    # every evaluation is counted: the layers' and the final check's
    assert report.n_evaluations >= sum(layer.n_evaluations for layer in report.layers) + 10_000
    assert math.isfinite(report.kl)


def test_largest_beta_bisects_to_the_threshold():
    """Catches a bisection that returns a beta failing the threshold, or one far
    below the largest that passes (a schedule that crawls)."""
    from sktt_flow.flows.tempered import _largest_beta

    def ess(beta):
        return 1.0 - 0.8 * beta  # passes 0.5 up to beta = 0.625

    beta = _largest_beta(ess, 1e-3, 0.5)
    assert ess(beta) >= 0.5 and beta == pytest.approx(0.625, rel=1e-5)
    assert _largest_beta(ess, 1e-3, 0.1) == 1.0
    # nothing passes: the lower end (the next layer refines there)
    assert _largest_beta(ess, 0.7, 0.5) == 0.7
